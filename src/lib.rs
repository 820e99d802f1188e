//! segq: a segment query engine for a messaging platform's user base.
//!
//! Partners (amplitude, mixpanel, …) import cohorts of users over an HTTP
//! API; segq keeps each workspace's users under dense ids, each cohort as a
//! roaring bitmap of them, and answers segment filters (cohorts combined
//! with `and`, `or`, `not` and random-bucket tests) with exact counts,
//! estimates, member pages and one-user checks. Every change is made
//! durable in a group-commit change log before it is answered; snapshots
//! are immutable files, memory-mapped when read.
//!
//! # Layers
//!
//! The top-level modules form layers; each imports only modules below it
//! (ARCHITECTURE.md draws them and lists what each may import; a test
//! holds them), so the graph reads bottom-up as the data path:
//!
//! - **base**: [`ids`] (users, partners, cohort keys), [`error`] (the
//!   library's [`Error`]), [`log`] (the change log's bytes and records),
//!   [`bitmap_view`] (roaring bitmaps read in place from bytes),
//!   [`csv_records`] (the one CSV reader).
//! - **storage**: [`snapshot`] (the snapshot file format, its reader and the
//!   one memory map); it knows bytes and sections, not the domain.
//! - **domain**: [`users`], [`cohorts`], [`segment`] (filters, their plans
//!   and evaluators), [`workspace`] (one workspace's state), [`import`]
//!   (partner cohort requests), [`bulk`] (user files), [`workload`] (a
//!   generated workspace for tests and benchmarks).
//! - **engine**: [`engine`] (data directories, logs, live workspaces, and
//!   the conversion between the domain and its persisted form).
//! - **services**: [`query`] (the query service), [`server`] (the HTTP
//!   API), [`examples`] (the demo's requests), [`sync`] (the partner
//!   sync client: diffing, batching, its state file and retries; the
//!   HTTP is the binary's).
//!
//! # Entry points
//!
//! - [`engine::Engine::open`] opens (or creates) a data directory;
//!   [`engine::WorkspaceHandle`] is one live workspace in it.
//! - [`server::serve`] answers the HTTP API for an engine;
//!   [`server::router_with`] builds the application for tests.
//! - [`query`] counts, estimates and pages a filter on a workspace, as the
//!   server and the CLI do; [`segment::parse`] reads a filter.
//! - [`snapshot::Snapshot`] reads a snapshot file.
//!
//! The `segq` binary (`src/bin/segq/`) is the command line on top of this
//! API.
//!
//! # Unsafe code
//!
//! Denied, with two allowances, each on one module with its contract:
//! `snapshot::mmap` (the one memory map) and `bitmap_view`'s kernels (word
//! kernels compiled for AVX-512 and AVX2, called only once the CPU's
//! features were detected; [`bitmap_view::Kernels`]). The binary denies
//! it too, with no allowance.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod attributes;
pub mod bitmap_view;
pub mod bulk;
pub mod cohorts;
pub mod csv_records;
pub mod engine;
pub mod error;
pub mod examples;
pub mod ids;
pub mod import;
pub mod log;
pub mod query;
pub mod segment;
pub mod server;
pub mod snapshot;
pub mod sync;
pub mod users;
pub mod workload;
pub mod workspace;

pub use error::{Error, Result};
pub use ids::{CohortKey, Partner, UserId, UserRef};
pub use workspace::Workspace;

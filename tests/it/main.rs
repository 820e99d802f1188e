//! The integration test binary: one module per area of the library.

mod cli;
mod cohorts;
mod compaction;
mod demo;
mod engine;
mod eval;
mod eval_props;
mod fast;
mod import;
mod log;
mod matching;
mod segment_parse;
mod segments;
mod snapshot;
mod support;
mod users;
mod workload;

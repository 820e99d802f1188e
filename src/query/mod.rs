//! The segment queries that campaign and Canvas targeting and the segment
//! builder make: exact counts (with an optional plan explanation), sampled
//! estimates with a confidence interval, the builder's per-filter
//! breakdown, member pages with a cursor, and one-user checks; and
//! [`service`], the same queries on a live [`WorkspaceHandle`] as the
//! server answers them (the HTTP layer and the CLI both call it).
//!
//! This is where a workspace meets the chunk evaluator
//! ([`crate::segment::chunk`], which knows plans and bitmap bytes only):
//! [`BitmapSource`] (in [`crate::workspace::source`], below the engine,
//! whose live workspaces keep its cache) serializes a cohort's in-memory
//! members and fetches a plan's leaves from a workspace, [`Frozen`] is a
//! copy of what some filters need, taken under the workspace's lock and evaluated after.
//!
//! | File | Holds |
//! |---|---|
//! | `count.rs` | counts, `explain`, bucket-sampled estimates, breakdown |
//! | `sample.rs` | chunk-sampled estimates of counts and breakdowns |
//! | `members.rs` | member pages, cursors |
//! | `check.rs` | one-user and batch checks |
//! | `frozen.rs` | `Frozen`, the view evaluated without the lock |
//! | `render.rs` | member pages as JSON Lines or CSV |
//! | `service.rs` | the queries on a `WorkspaceHandle`, as JSON answers |
//!
//! [`WorkspaceHandle`]: crate::engine::WorkspaceHandle

mod check;
mod count;
mod frozen;
mod members;
pub mod render;
pub mod sample;
pub mod service;

pub use crate::workspace::source::{serialize, BitmapSource, SerialCache, Uncached};
pub use check::{check, check_many, Check};
pub use count::{
    breakdown, breakdown_in, count, count_in, estimate, estimate_in, wilson, BreakdownRow, Count,
    Estimate, Explain, MAX_ESTIMATE_STRATA,
};
pub use frozen::Frozen;
pub use members::{members_page, Cursor, CursorScope, Page, MAX_PAGE};
pub use sample::{sampled_breakdown, sampled_count, SampledCount, Tradeoff};

use crate::error::Result;
use crate::segment::chunk::Prepared;
use crate::segment::plan::{Catalog, Plan};
use crate::users::Buckets;
use crate::workspace::Workspace;

/// What the counts, estimates and breakdowns read: a workspace (under its
/// lock, [`Live`]) or a [`Frozen`] view of it (evaluated without the
/// lock).
pub trait View: Sync {
    /// The cohorts the filter's leaves are resolved against.
    fn catalog(&self) -> &dyn Catalog;
    /// The plan ready to run.
    fn prepare(&self, plan: &Plan) -> Result<Prepared<'_>>;
    /// Every user's bucket (a frozen view holds them when its filters test
    /// buckets or it was taken with them).
    fn buckets(&self) -> Buckets<'_>;
    /// The workspace's users (ids `0..user_count`).
    fn user_count(&self) -> u32;
}

/// A workspace read in place, with the serialized cohorts of `src`.
#[derive(Clone, Copy)]
pub struct Live<'a> {
    /// The workspace.
    pub ws: &'a Workspace,
    /// The serialized in-memory changes of its cohorts.
    pub src: &'a dyn BitmapSource,
}

impl View for Live<'_> {
    fn catalog(&self) -> &dyn Catalog {
        self.ws
    }
    fn prepare(&self, plan: &Plan) -> Result<Prepared<'_>> {
        Prepared::new(self.ws, plan, self.src)
    }
    fn buckets(&self) -> Buckets<'_> {
        self.ws.users.bucket_slices()
    }
    fn user_count(&self) -> u32 {
        self.ws.users.len()
    }
}

/// A snapshot read in place (its mapped bitmaps and buckets), as `segq
/// bench` and tests read one.
impl View for crate::snapshot::Snapshot {
    fn catalog(&self) -> &dyn Catalog {
        self
    }
    fn prepare(&self, plan: &Plan) -> Result<Prepared<'_>> {
        Prepared::for_snapshot(self, plan)
    }
    fn buckets(&self) -> Buckets<'_> {
        Buckets::contiguous(crate::snapshot::Snapshot::buckets(self).unwrap_or(&[]))
    }
    fn user_count(&self) -> u32 {
        self.meta().map_or(0, |m| m.users)
    }
}

impl View for Frozen {
    fn catalog(&self) -> &dyn Catalog {
        self
    }
    fn prepare(&self, plan: &Plan) -> Result<Prepared<'_>> {
        Prepared::frozen(self, plan)
    }
    fn buckets(&self) -> Buckets<'_> {
        Frozen::buckets(self)
    }
    fn user_count(&self) -> u32 {
        Frozen::user_count(self)
    }
}

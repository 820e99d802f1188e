//! The one place where the domain meets its persisted form: a workspace
//! to and from a snapshot's contents ([`snapshot`]), a [`Change`] to and
//! from a log record's payload ([`record`]), and the conversions they
//! share (filters, days).
//!
//! The persisted types belong to the storage layer (`snapshot::meta`,
//! `snapshot::codec`) and to [`record`]; each enum among them carries
//! explicit, append-only tags, so tidying a domain type never changes a
//! file. The golden fixtures in `fixtures/` prove that old files read.
//!
//! [`Change`]: super::record::Change

pub mod record;
pub mod snapshot;

pub use snapshot::{load_workspace, write_snapshot};

use chrono::{DateTime, NaiveDate};

use crate::segment::{BucketCmp, Filter};
use crate::snapshot::meta::{PBucketCmp, PFilter};

/// A filter's persisted form.
pub(crate) fn to_persisted(f: &Filter) -> PFilter {
    match f {
        Filter::Cohort {
            partner,
            cohort,
            includes,
        } => PFilter::Cohort {
            partner: *partner,
            cohort: cohort.clone(),
            includes: *includes,
        },
        Filter::Bucket(b) => PFilter::Bucket(match *b {
            BucketCmp::Lt(v) => PBucketCmp::Lt(v),
            BucketCmp::Le(v) => PBucketCmp::Le(v),
            BucketCmp::Gt(v) => PBucketCmp::Gt(v),
            BucketCmp::Ge(v) => PBucketCmp::Ge(v),
            BucketCmp::Between(lo, hi) => PBucketCmp::Between(lo, hi),
        }),
        Filter::And(c) => PFilter::And(c.iter().map(to_persisted).collect()),
        Filter::Or(c) => PFilter::Or(c.iter().map(to_persisted).collect()),
        Filter::Not(c) => PFilter::Not(Box::new(to_persisted(c))),
        // Refused before a save (`segment::resolve`); no persisted form yet.
        Filter::Attribute { .. } | Filter::Segment { .. } => unreachable!("{}", f.unsupported()),
    }
}

/// The filter a persisted form holds.
pub(crate) fn from_persisted(f: &PFilter) -> Filter {
    match f {
        PFilter::Cohort {
            partner,
            cohort,
            includes,
        } => Filter::Cohort {
            partner: *partner,
            cohort: cohort.clone(),
            includes: *includes,
        },
        PFilter::Bucket(b) => Filter::Bucket(match *b {
            PBucketCmp::Lt(v) => BucketCmp::Lt(v),
            PBucketCmp::Le(v) => BucketCmp::Le(v),
            PBucketCmp::Gt(v) => BucketCmp::Gt(v),
            PBucketCmp::Ge(v) => BucketCmp::Ge(v),
            PBucketCmp::Between(lo, hi) => BucketCmp::Between(lo, hi),
        }),
        PFilter::And(c) => Filter::And(c.iter().map(from_persisted).collect()),
        PFilter::Or(c) => Filter::Or(c.iter().map(from_persisted).collect()),
        PFilter::Not(c) => Filter::Not(Box::new(from_persisted(c))),
    }
}

fn epoch() -> NaiveDate {
    DateTime::UNIX_EPOCH.date_naive()
}

/// Days since 1970-01-01, as a snapshot stores a day.
pub(crate) fn day_number(d: NaiveDate) -> i32 {
    (d - epoch()).num_days() as i32
}

/// The day a day number names.
pub(crate) fn day_of(n: i32) -> NaiveDate {
    epoch() + chrono::Days::new(n.max(0) as u64)
}

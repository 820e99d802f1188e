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

pub use snapshot::{
    load_workspace, snapshot_contents, verify_attributes, write_snapshot, write_snapshot_at,
};

use chrono::{DateTime, NaiveDate};

use crate::segment::ast::{AttrCmp, Number, Time};
use crate::segment::{BucketCmp, Filter};
use crate::snapshot::codec::{PAttrCmp, PNumber};
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
        Filter::Attribute { attribute, cmp } => PFilter::Attribute {
            attribute: attribute.clone(),
            cmp: cmp_to_persisted(cmp),
        },
        Filter::Segment { id, included } => PFilter::Segment {
            id: id.clone(),
            included: *included,
        },
    }
}

fn number(n: &Number) -> PNumber {
    (n.mantissa(), n.scale())
}

fn cmp_to_persisted(c: &AttrCmp) -> PAttrCmp {
    match c {
        AttrCmp::Equals(v) => PAttrCmp::Equals(v.clone()),
        AttrCmp::DoesNotEqual(v) => PAttrCmp::DoesNotEqual(v.clone()),
        AttrCmp::IsAnyOf(v) => PAttrCmp::IsAnyOf(v.clone()),
        AttrCmp::MatchesRegex(v) => PAttrCmp::MatchesRegex(v.clone()),
        AttrCmp::StartsWith(v) => PAttrCmp::StartsWith(v.clone()),
        AttrCmp::Exists => PAttrCmp::Exists,
        AttrCmp::DoesNotExist => PAttrCmp::DoesNotExist,
        AttrCmp::Eq(n) => PAttrCmp::Eq(number(n)),
        AttrCmp::Ne(n) => PAttrCmp::Ne(number(n)),
        AttrCmp::Lt(n) => PAttrCmp::Lt(number(n)),
        AttrCmp::Le(n) => PAttrCmp::Le(number(n)),
        AttrCmp::Gt(n) => PAttrCmp::Gt(number(n)),
        AttrCmp::Ge(n) => PAttrCmp::Ge(number(n)),
        AttrCmp::Between(lo, hi) => PAttrCmp::Between(number(lo), number(hi)),
        AttrCmp::IsTrue => PAttrCmp::IsTrue,
        AttrCmp::IsFalse => PAttrCmp::IsFalse,
        AttrCmp::Before(t) => PAttrCmp::Before(t.unix()),
        AttrCmp::After(t) => PAttrCmp::After(t.unix()),
        AttrCmp::WithinLastDays(n) => PAttrCmp::WithinLastDays(*n),
        AttrCmp::WithinLastHours(n) => PAttrCmp::WithinLastHours(*n),
        AttrCmp::MoreThanDaysAgo(n) => PAttrCmp::MoreThanDaysAgo(*n),
    }
}

// Decoding checked the scale and the time range, so the fallbacks below
// are never taken.
fn from_number(n: PNumber) -> Number {
    Number::new(n.0, n.1).unwrap_or(Number::int(n.0))
}

fn from_time(t: i64) -> Time {
    Time::from_unix(t).unwrap_or(Time::EPOCH)
}

fn cmp_from_persisted(c: &PAttrCmp) -> AttrCmp {
    match c {
        PAttrCmp::Equals(v) => AttrCmp::Equals(v.clone()),
        PAttrCmp::DoesNotEqual(v) => AttrCmp::DoesNotEqual(v.clone()),
        PAttrCmp::IsAnyOf(v) => AttrCmp::IsAnyOf(v.clone()),
        PAttrCmp::MatchesRegex(v) => AttrCmp::MatchesRegex(v.clone()),
        PAttrCmp::StartsWith(v) => AttrCmp::StartsWith(v.clone()),
        PAttrCmp::Exists => AttrCmp::Exists,
        PAttrCmp::DoesNotExist => AttrCmp::DoesNotExist,
        PAttrCmp::Eq(n) => AttrCmp::Eq(from_number(*n)),
        PAttrCmp::Ne(n) => AttrCmp::Ne(from_number(*n)),
        PAttrCmp::Lt(n) => AttrCmp::Lt(from_number(*n)),
        PAttrCmp::Le(n) => AttrCmp::Le(from_number(*n)),
        PAttrCmp::Gt(n) => AttrCmp::Gt(from_number(*n)),
        PAttrCmp::Ge(n) => AttrCmp::Ge(from_number(*n)),
        PAttrCmp::Between(lo, hi) => AttrCmp::Between(from_number(*lo), from_number(*hi)),
        PAttrCmp::IsTrue => AttrCmp::IsTrue,
        PAttrCmp::IsFalse => AttrCmp::IsFalse,
        PAttrCmp::Before(t) => AttrCmp::Before(from_time(*t)),
        PAttrCmp::After(t) => AttrCmp::After(from_time(*t)),
        PAttrCmp::WithinLastDays(n) => AttrCmp::WithinLastDays(*n),
        PAttrCmp::WithinLastHours(n) => AttrCmp::WithinLastHours(*n),
        PAttrCmp::MoreThanDaysAgo(n) => AttrCmp::MoreThanDaysAgo(*n),
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
        PFilter::Attribute { attribute, cmp } => Filter::Attribute {
            attribute: attribute.clone(),
            cmp: cmp_from_persisted(cmp),
        },
        PFilter::Segment { id, included } => Filter::Segment {
            id: id.clone(),
            included: *included,
        },
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

//! The logical segment filter: what a marketer built, before any planning.
//!
//! Both the JSON form ([`super::json`]) and the text form ([`super::text`])
//! parse to this tree, and [`Filter`]'s `Display` prints the text form, so
//! `text::parse(&f.to_string()) == f` for every tree whose `And`/`Or` nodes
//! have zero or at least two children (a one-child `And` prints as `(x)`,
//! which reads back as `x`) and whose bucket values are buckets (0..=9999,
//! `between` with lo <= hi): the parser refuses the others.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{Partner, BUCKETS};

/// A comparison on the user's random bucket (0..=9999).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BucketCmp {
    /// `random_bucket < v`
    Lt(u16),
    /// `random_bucket <= v`
    Le(u16),
    /// `random_bucket > v`
    Gt(u16),
    /// `random_bucket >= v`
    Ge(u16),
    /// `random_bucket between lo and hi`, both ends included.
    Between(u16, u16),
}

impl BucketCmp {
    /// The inclusive range of buckets this comparison accepts, or `None` when
    /// it accepts none (`< 0`, `> 9999`, or `between 5 and 3`).
    pub fn range(self) -> Option<(u16, u16)> {
        let max = BUCKETS - 1;
        let (lo, hi) = match self {
            BucketCmp::Lt(0) => return None,
            BucketCmp::Lt(v) => (0, v - 1),
            BucketCmp::Le(v) => (0, v),
            BucketCmp::Gt(v) if v >= max => return None,
            BucketCmp::Gt(v) => (v + 1, max),
            BucketCmp::Ge(v) => (v, max),
            BucketCmp::Between(lo, hi) => (lo, hi),
        };
        let hi = hi.min(max);
        (lo <= hi).then_some((lo, hi))
    }

    /// Whether a bucket value satisfies the comparison.
    pub fn accepts(self, bucket: u16) -> bool {
        self.range()
            .is_some_and(|(lo, hi)| (lo..=hi).contains(&bucket))
    }
}

/// A segment filter tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// `{partner}_cohorts includes_value|does_not_include_value <cohort>`.
    ///
    /// `cohort` is the value as written: a cohort_id, or (before
    /// [`crate::segment::resolve`]) a unique cohort name. After resolution it
    /// is always the cohort_id.
    Cohort {
        /// The partner whose cohort is tested.
        partner: Partner,
        /// The cohort value: a cohort_id or a unique cohort name.
        cohort: String,
        /// `includes_value` (true) or `does_not_include_value`.
        includes: bool,
    },
    /// `random_bucket <cmp> <value>`.
    Bucket(BucketCmp),
    /// Every child holds. An empty `And` holds for every user.
    And(Vec<Filter>),
    /// Some child holds. An empty `Or` holds for nobody.
    Or(Vec<Filter>),
    /// The users of the workspace for whom the child does not hold.
    Not(Box<Filter>),
}

impl Filter {
    /// `{partner}_cohorts includes_value cohort`.
    pub fn includes(partner: Partner, cohort: impl Into<String>) -> Filter {
        Filter::Cohort {
            partner,
            cohort: cohort.into(),
            includes: true,
        }
    }

    /// `{partner}_cohorts does_not_include_value cohort`.
    pub fn excludes(partner: Partner, cohort: impl Into<String>) -> Filter {
        Filter::Cohort {
            partner,
            cohort: cohort.into(),
            includes: false,
        }
    }

    /// `not self`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Filter {
        Filter::Not(Box::new(self))
    }

    /// The number of leaves (cohort and bucket filters) in the tree.
    pub fn leaves(&self) -> usize {
        match self {
            Filter::Cohort { .. } | Filter::Bucket(_) => 1,
            Filter::And(c) | Filter::Or(c) => c.iter().map(Filter::leaves).sum(),
            Filter::Not(c) => c.leaves(),
        }
    }

    /// The number of nodes in the tree: leaves (cohort and bucket filters)
    /// and operators (`and`, `or`, `not`). What a query's work is bounded
    /// by (see [`crate::segment::check_size`]).
    pub fn nodes(&self) -> usize {
        match self {
            Filter::Cohort { .. } | Filter::Bucket(_) => 1,
            Filter::And(c) | Filter::Or(c) => 1 + c.iter().map(Filter::nodes).sum::<usize>(),
            Filter::Not(c) => 1 + c.nodes(),
        }
    }

    /// Whether the tree tests the random bucket anywhere.
    pub fn tests_buckets(&self) -> bool {
        match self {
            Filter::Cohort { .. } => false,
            Filter::Bucket(_) => true,
            Filter::And(c) | Filter::Or(c) => c.iter().any(Filter::tests_buckets),
            Filter::Not(c) => c.tests_buckets(),
        }
    }

    /// Whether a user in no cohort may satisfy the filter (its random
    /// bucket unknown): three-valued, cohorts false, buckets unknown. A
    /// segment for which this is false never gains a user by a user being
    /// created (a new user is in no cohort until a cohort change adds it).
    pub fn may_hold_cohortless(&self) -> bool {
        self.cohortless() != Some(false)
    }

    /// The filter's value for a user in no cohort: `None` when it depends
    /// on the bucket.
    fn cohortless(&self) -> Option<bool> {
        match self {
            Filter::Cohort { includes, .. } => Some(!*includes),
            Filter::Bucket(_) => None,
            Filter::Not(c) => c.cohortless().map(|v| !v),
            Filter::And(c) => {
                let mut out = Some(true);
                for v in c.iter().map(Filter::cohortless) {
                    match v {
                        Some(false) => return Some(false),
                        None => out = None,
                        Some(true) => {}
                    }
                }
                out
            }
            Filter::Or(c) => {
                let mut out = Some(false);
                for v in c.iter().map(Filter::cohortless) {
                    match v {
                        Some(true) => return Some(true),
                        None => out = None,
                        Some(false) => {}
                    }
                }
                out
            }
        }
    }

    /// Visits every cohort leaf as `(partner, cohort, includes)`.
    pub fn for_each_cohort<'a>(&'a self, f: &mut impl FnMut(Partner, &'a str, bool)) {
        match self {
            Filter::Cohort {
                partner,
                cohort,
                includes,
            } => f(*partner, cohort, *includes),
            Filter::Bucket(_) => {}
            Filter::And(c) | Filter::Or(c) => c.iter().for_each(|c| c.for_each_cohort(f)),
            Filter::Not(c) => c.for_each_cohort(f),
        }
    }
}

/// Writes a cohort value as a double-quoted string literal of the text form.
pub(crate) fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

impl fmt::Display for BucketCmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketCmp::Lt(v) => write!(f, "random_bucket < {v}"),
            BucketCmp::Le(v) => write!(f, "random_bucket <= {v}"),
            BucketCmp::Gt(v) => write!(f, "random_bucket > {v}"),
            BucketCmp::Ge(v) => write!(f, "random_bucket >= {v}"),
            BucketCmp::Between(lo, hi) => write!(f, "random_bucket between {lo} and {hi}"),
        }
    }
}

/// Prints the text form, fully parenthesised where precedence needs it.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Cohort {
                partner,
                cohort,
                includes,
            } => {
                let cmp = if *includes {
                    "includes_value"
                } else {
                    "does_not_include_value"
                };
                write!(f, "{}_cohorts {cmp} ", partner.as_str())?;
                write_quoted(f, cohort)
            }
            Filter::Bucket(cmp) => write!(f, "{cmp}"),
            Filter::And(children) | Filter::Or(children) => {
                let (op, empty) = if matches!(self, Filter::And(_)) {
                    ("and", "all")
                } else {
                    ("or", "none")
                };
                if children.is_empty() {
                    return f.write_str(empty);
                }
                f.write_str("(")?;
                for (i, c) in children.iter().enumerate() {
                    if i > 0 {
                        write!(f, " {op} ")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str(")")
            }
            Filter::Not(c) => write!(f, "not {c}"),
        }
    }
}

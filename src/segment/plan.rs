//! The planner: from the logical [`Filter`] to a normalised tree that
//! evaluators run.
//!
//! Normalisation, in order:
//! - NOT is pushed down to the leaves (De Morgan), and
//!   `does_not_include_value` becomes NOT of `includes_value`;
//! - nested ANDs and ORs are flattened into one n-ary node;
//! - inside an AND, negated children become its `minus` list, so
//!   `A and not B` is `And { all: [A], minus: [B] }` (AND NOT);
//! - empty branches are dropped: a leaf that matches nobody empties its AND
//!   and vanishes from its OR; `all`/`none` fold away;
//! - AND children are ordered by ascending cardinality (the smallest first,
//!   so chunk-wise evaluation can stop early), OR children by descending.
//!
//! Leaves carry their cardinality, so a plan that is a single cohort leaf
//! is counted without evaluation.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::ast::{BucketCmp, Filter};
use super::attr::Test;
use crate::attributes::bsi::RangeScan;
use crate::attributes::AttrType;
use crate::bitmap_view::SharedBitmap;
use crate::error::{Error, Result};
use crate::ids::Partner;

/// A leaf of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Leaf {
    /// The members of a cohort.
    Cohort {
        /// The cohort's partner.
        partner: Partner,
        /// Its cohort_id.
        cohort_id: String,
        /// Its members.
        cardinality: u64,
    },
    /// Users whose bucket lies in `lo..=hi`.
    Bucket {
        /// The lowest bucket.
        lo: u16,
        /// The highest bucket.
        hi: u16,
        /// The users expected in the range (users times its share of buckets).
        estimate: u64,
    },
    /// Users a custom attribute test selects (always a positive test:
    /// negative comparisons are NOT of one), read from the attribute's
    /// index when the plan is made.
    Attribute {
        /// The attribute.
        attribute: String,
        /// The test, in the text form's words (`equals "BR"`).
        test: String,
        /// The attribute's type.
        #[serde(skip)]
        ty: AttrType,
        /// The test, in the index's units.
        #[serde(skip)]
        what: Test,
        /// The attribute's version when the users were selected.
        version: u64,
        /// The users selected.
        cardinality: u64,
        /// Them.
        #[serde(skip)]
        members: Selected,
    },
    /// Users whose value of a numeric or time attribute lies in a range
    /// that compares the index's bit slices: not selected when the plan
    /// is made but evaluated where the plan reads it (chunk by chunk,
    /// among the users an AND still holds there), like a bucket range.
    AttributeRange {
        /// The attribute.
        attribute: String,
        /// The test, in the text form's words (`between 100 and 500`).
        test: String,
        /// The attribute's type.
        #[serde(skip)]
        ty: AttrType,
        /// The test, in the index's units.
        #[serde(skip)]
        what: Test,
        /// The attribute's version when the plan was made.
        version: u64,
        /// The users with a value: at least as many as the range holds.
        at_most: u64,
        /// The index's slices as they were then.
        #[serde(skip)]
        scan: Scan,
    },
    /// The deleted users: the planner subtracts them from every plan that
    /// reads the users themselves (NOT, every user, a bucket range), so no
    /// deleted user is counted, listed or checked.
    Deleted {
        /// How many users were deleted when the plan was made (they are
        /// only ever added: the count names the set).
        cardinality: u64,
        /// Them.
        #[serde(skip)]
        members: Selected,
    },
}

/// The users an attribute test selected, shared by the plans and views
/// that hold it.
#[derive(Clone, Default)]
pub struct Selected(pub Arc<SharedBitmap>);

impl PartialEq for Selected {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Selected {}

impl fmt::Debug for Selected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Selected({} users)", self.0.len())
    }
}

/// An attribute range's slices, shared by the plans and views that hold
/// it.
#[derive(Clone, Debug)]
pub struct Scan(pub Arc<RangeScan>);

impl PartialEq for Scan {
    fn eq(&self, other: &Self) -> bool {
        self.0.same(&other.0)
    }
}

impl Eq for Scan {}

impl Leaf {
    /// Exact for cohorts, expected for bucket ranges, an upper bound for
    /// attribute ranges.
    pub fn cardinality(&self) -> u64 {
        match self {
            Leaf::Cohort { cardinality, .. } => *cardinality,
            Leaf::Bucket { estimate, .. } => *estimate,
            Leaf::AttributeRange { at_most, .. } => *at_most,
            Leaf::Attribute { cardinality, .. } => *cardinality,
            Leaf::Deleted { cardinality, .. } => *cardinality,
        }
    }
}

/// A normalised filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Plan {
    /// Every user of the workspace.
    All,
    /// Nobody.
    Nothing,
    /// A cohort or bucket test.
    Leaf(Leaf),
    /// The users of the workspace not in the child (only over leaves and
    /// ORs: NOT is pushed down as far as it goes).
    Not {
        /// The plan negated.
        child: Box<Plan>,
    },
    /// In every `all` child (every user when `all` is empty) and in no
    /// `minus` child.
    And {
        /// Plans that must all hold.
        all: Vec<Plan>,
        /// Plans that must not hold.
        minus: Vec<Plan>,
    },
    /// In some child (at least two).
    Or {
        /// Plans of which one must hold.
        any: Vec<Plan>,
    },
}

impl Plan {
    /// An upper bound of the plan's size, for ordering children.
    pub fn upper_bound(&self, users: u64) -> u64 {
        match self {
            Plan::All => users,
            Plan::Nothing => 0,
            Plan::Leaf(l) => l.cardinality().min(users),
            Plan::Not { child } => users - child.lower_bound(users).min(users),
            Plan::And { all, .. } => all
                .iter()
                .map(|c| c.upper_bound(users))
                .min()
                .unwrap_or(users),
            Plan::Or { any } => any
                .iter()
                .map(|c| c.upper_bound(users))
                .sum::<u64>()
                .min(users),
        }
    }

    fn lower_bound(&self, users: u64) -> u64 {
        match self {
            Plan::All => users,
            Plan::Nothing => 0,
            Plan::Leaf(Leaf::Cohort { cardinality, .. })
            | Plan::Leaf(Leaf::Attribute { cardinality, .. })
            | Plan::Leaf(Leaf::Deleted { cardinality, .. }) => *cardinality,
            Plan::Leaf(Leaf::Bucket { .. }) | Plan::Leaf(Leaf::AttributeRange { .. }) => 0,
            Plan::Not { child } => users - child.upper_bound(users),
            Plan::And { .. } => 0,
            Plan::Or { any } => any.iter().map(|c| c.lower_bound(users)).max().unwrap_or(0),
        }
    }

    /// The leaves, in evaluation order.
    pub fn leaves(&self) -> Vec<&Leaf> {
        let mut out = Vec::new();
        self.collect_leaves(&mut out);
        out
    }

    fn collect_leaves<'a>(&'a self, out: &mut Vec<&'a Leaf>) {
        match self {
            Plan::All | Plan::Nothing => {}
            Plan::Leaf(l) => out.push(l),
            Plan::Not { child } => child.collect_leaves(out),
            Plan::And { all, minus } => {
                all.iter().for_each(|c| c.collect_leaves(out));
                minus.iter().for_each(|c| c.collect_leaves(out));
            }
            Plan::Or { any } => any.iter().for_each(|c| c.collect_leaves(out)),
        }
    }
}

/// The expected number of users in `lo..=hi` buckets.
fn bucket_estimate(users: u64, lo: u16, hi: u16) -> u64 {
    let width = u64::from(hi - lo) + 1;
    users * width / u64::from(crate::ids::BUCKETS)
}

/// What planning needs to know: the users, each cohort a filter names,
/// the custom attributes it tests and the saved segments it refers to.
pub trait Catalog {
    /// The number of users.
    fn users(&self) -> u64;
    /// The cohort_id and cardinality of the cohort a filter value names (a
    /// cohort_id, or the unique name of one of the partner's cohorts).
    fn cohort(&self, partner: Partner, value: &str) -> Result<(String, u64)>;
    /// A custom attribute's type ([`Error::UnknownAttribute`] when no user
    /// was ever given it and it was not declared).
    fn attribute_type(&self, name: &str) -> Result<AttrType> {
        Err(Error::UnknownAttribute {
            attribute: name.to_string(),
        })
    }
    /// The users an attribute test selects, with the attribute's version.
    fn select(&self, name: &str, test: &Test) -> Result<(u64, Selected)> {
        let _ = test;
        Err(Error::UnknownAttribute {
            attribute: name.to_string(),
        })
    }
    /// A numeric range test kept for evaluation where the plan reads it,
    /// with the attribute's version (`None`: the catalog selects it with
    /// [`Self::select`]).
    fn scan(&self, name: &str, test: &Test) -> Result<Option<(u64, Scan)>> {
        let _ = (name, test);
        Ok(None)
    }
    /// A saved segment's filter, for `in_segment` tests.
    fn saved_filter(&self, id: &str) -> Result<Filter> {
        Err(Error::UnknownSegment { id: id.to_string() })
    }
    /// The time relative time tests count back from (seconds since the
    /// epoch).
    fn now(&self) -> i64 {
        chrono::Utc::now().timestamp()
    }
    /// The deleted users (`None`: none), which every plan reading the
    /// users themselves leaves out.
    fn deleted(&self) -> Option<Selected> {
        None
    }
}

/// How deeply saved segments may refer to saved segments (a cycle is
/// refused when a segment is saved; this bounds what a query expands).
pub const MAX_SEGMENT_DEPTH: usize = 16;

/// A snapshot's catalog, read from its meta section.
impl Catalog for crate::snapshot::Snapshot {
    fn users(&self) -> u64 {
        self.meta().map_or(0, |m| u64::from(m.users))
    }

    fn cohort(&self, partner: Partner, value: &str) -> Result<(String, u64)> {
        let meta = self.meta()?;
        let by_id = self
            .cohort_with_id(partner, value)?
            .map(|i| &meta.cohorts[i]);
        // The names are looked up only when no cohort_id matches.
        let named = match by_id {
            Some(_) => &[],
            None => self.cohorts_named(partner, value)?,
        };
        let c = crate::ids::resolve_cohort(
            partner,
            value,
            |_| by_id,
            named.iter().map(|&i| {
                let c = &meta.cohorts[i];
                (c.cohort_id.as_str(), c.name.as_str(), c)
            }),
        )?;
        Ok((c.cohort_id.clone(), c.cardinality))
    }
}

/// Plans a filter: resolves cohorts (by id or unique name), looks up
/// cardinalities, and normalises.
pub fn plan(catalog: &dyn Catalog, filter: &Filter) -> Result<Plan> {
    let users = catalog.users();
    let p = lower(catalog, filter, false, users, 0)?;
    let p = match catalog.deleted() {
        Some(d) if !d.0.is_empty() && reads_users(&p) => and_of(vec![
            p,
            Plan::Not {
                child: Box::new(Plan::Leaf(Leaf::Deleted {
                    cardinality: d.0.len(),
                    members: d,
                })),
            },
        ]),
        _ => p,
    };
    Ok(order(p, users))
}

fn leaf_or_nothing(leaf: Leaf, negated: bool) -> Plan {
    // A bucket range is never empty (it is dropped when planned), an
    // attribute range never with users with a value.
    let empty = leaf.cardinality() == 0 && !matches!(leaf, Leaf::Bucket { .. });
    match (empty, negated) {
        (true, false) => Plan::Nothing,
        (true, true) => Plan::All,
        (false, false) => Plan::Leaf(leaf),
        (false, true) => Plan::Not {
            child: Box::new(Plan::Leaf(leaf)),
        },
    }
}

/// Lowers `filter` (negated when `neg`) with NOT pushed to the leaves;
/// `depth` counts the saved segments expanded on the way.
fn lower(ws: &dyn Catalog, filter: &Filter, neg: bool, users: u64, depth: usize) -> Result<Plan> {
    Ok(match filter {
        Filter::Cohort {
            partner,
            cohort,
            includes,
        } => {
            let (cohort_id, cardinality) = ws.cohort(*partner, cohort)?;
            let leaf = Leaf::Cohort {
                partner: *partner,
                cohort_id,
                cardinality,
            };
            leaf_or_nothing(leaf, neg == *includes)
        }
        Filter::Bucket(cmp) => match cmp.range() {
            None if neg => Plan::All,
            None => Plan::Nothing,
            Some((0, hi)) if hi == crate::ids::BUCKETS - 1 => {
                if neg {
                    Plan::Nothing
                } else {
                    Plan::All
                }
            }
            Some((lo, hi)) => {
                let leaf = Leaf::Bucket {
                    lo,
                    hi,
                    estimate: bucket_estimate(users, lo, hi),
                };
                leaf_or_nothing(leaf, neg)
            }
        },
        Filter::Not(c) => lower(ws, c, !neg, users, depth)?,
        Filter::Attribute { attribute, cmp } => {
            let ty = ws.attribute_type(attribute)?;
            let (what, negated) = super::attr::lower(attribute, cmp, ty, ws.now())?;
            if let Some((version, scan)) = ws.scan(attribute, &what)? {
                let leaf = Leaf::AttributeRange {
                    attribute: attribute.clone(),
                    test: what.describe(ty),
                    ty,
                    what,
                    version,
                    at_most: scan.0.at_most(),
                    scan,
                };
                return Ok(leaf_or_nothing(leaf, neg != negated));
            }
            let (version, members) = ws.select(attribute, &what)?;
            let leaf = Leaf::Attribute {
                attribute: attribute.clone(),
                test: what.describe(ty),
                ty,
                what,
                version,
                cardinality: members.0.len(),
                members,
            };
            leaf_or_nothing(leaf, neg != negated)
        }
        Filter::Segment { id, included } => {
            if depth >= MAX_SEGMENT_DEPTH {
                return Err(Error::InvalidArgument(format!(
                    "saved segments refer to saved segments more than {MAX_SEGMENT_DEPTH} deep (at {})",
                    crate::error::prefix(id, 64).unwrap_or(id)
                )));
            }
            let inner = ws.saved_filter(id)?;
            lower(ws, &inner, neg == *included, users, depth + 1)?
        }
        Filter::And(children) | Filter::Or(children) => {
            // not (a and b) = not a or not b; not (a or b) = not a and not b.
            let is_and = matches!(filter, Filter::And(_)) != neg;
            let lowered = children
                .iter()
                .map(|c| lower(ws, c, neg, users, depth))
                .collect::<Result<Vec<_>>>()?;
            if is_and {
                and_of(lowered)
            } else {
                or_of(lowered)
            }
        }
    })
}

/// AND of normalised children: flattens nested ANDs, moves NOTs to `minus`,
/// folds All and Nothing.
fn and_of(children: Vec<Plan>) -> Plan {
    let mut all = Vec::with_capacity(children.len());
    let mut minus = Vec::new();
    let mut stack = children;
    stack.reverse();
    while let Some(c) = stack.pop() {
        match c {
            Plan::All => {}
            Plan::Nothing => return Plan::Nothing,
            Plan::And { all: a, minus: m } => {
                minus.extend(m);
                stack.extend(a.into_iter().rev());
            }
            Plan::Not { child } => minus.push(*child),
            other => all.push(other),
        }
    }
    match (all.len(), minus.len()) {
        (0, 0) => Plan::All,
        (1, 0) => all.pop().unwrap_or(Plan::All),
        (0, 1) => Plan::Not {
            child: Box::new(minus.pop().unwrap_or(Plan::Nothing)),
        },
        _ => Plan::And { all, minus },
    }
}

/// OR of normalised children: flattens nested ORs, folds All and Nothing.
fn or_of(children: Vec<Plan>) -> Plan {
    let mut any = Vec::with_capacity(children.len());
    let mut stack = children;
    stack.reverse();
    while let Some(c) = stack.pop() {
        match c {
            Plan::Nothing => {}
            Plan::All => return Plan::All,
            Plan::Or { any: a } => stack.extend(a.into_iter().rev()),
            other => any.push(other),
        }
    }
    match any.len() {
        0 => Plan::Nothing,
        1 => any.pop().unwrap_or(Plan::Nothing),
        _ => Plan::Or { any },
    }
}

/// Orders AND children smallest first, OR children largest first, and
/// AND NOT children largest first (they remove the most soonest).
fn order(p: Plan, users: u64) -> Plan {
    match p {
        Plan::And { all, minus } => {
            let mut all: Vec<Plan> = all.into_iter().map(|c| order(c, users)).collect();
            let mut minus: Vec<Plan> = minus.into_iter().map(|c| order(c, users)).collect();
            all.sort_by_key(|c| c.upper_bound(users));
            minus.sort_by_key(|c| std::cmp::Reverse(c.upper_bound(users)));
            Plan::And { all, minus }
        }
        Plan::Or { any } => {
            let mut any: Vec<Plan> = any.into_iter().map(|c| order(c, users)).collect();
            any.sort_by_key(|c| std::cmp::Reverse(c.upper_bound(users)));
            Plan::Or { any }
        }
        Plan::Not { child } => Plan::Not {
            child: Box::new(order(*child, users)),
        },
        other => other,
    }
}

/// A plan's identity, whatever the order of its children and the
/// cardinalities it was planned with: two plans with the same key select
/// the same users of the same state. The key of a plan made on a state
/// names the cohorts by cohort_id (each cohort's members as of that
/// state), so keys compare only between plans of one state; live segments
/// and the result cache look counts up by it.
pub fn key(p: &Plan) -> String {
    let mut out = String::new();
    write_key(p, &mut out);
    out
}

fn write_key(p: &Plan, out: &mut String) {
    use std::fmt::Write;
    let sorted = |children: &[Plan]| {
        let mut keys: Vec<String> = children.iter().map(key).collect();
        keys.sort_unstable();
        keys.join(",")
    };
    // Writing into a String cannot fail.
    let _ = match p {
        Plan::All => write!(out, "*"),
        Plan::Nothing => write!(out, "0"),
        // Length-prefixed: a cohort_id may hold any character.
        Plan::Leaf(Leaf::Cohort {
            partner, cohort_id, ..
        }) => write!(out, "c{partner}/{}/{cohort_id}", cohort_id.len()),
        Plan::Leaf(Leaf::Bucket { lo, hi, .. }) => write!(out, "b{lo}-{hi}"),
        // The version: the same test selects other users once a value
        // changed.
        // A range read where it is needed selects the same users.
        Plan::Leaf(Leaf::Attribute {
            attribute,
            test,
            version,
            ..
        })
        | Plan::Leaf(Leaf::AttributeRange {
            attribute,
            test,
            version,
            ..
        }) => write!(
            out,
            "a{}/{attribute}@{version}/{}/{test}",
            attribute.len(),
            test.len()
        ),
        // The number of deleted users names the set: it only grows.
        Plan::Leaf(Leaf::Deleted { cardinality, .. }) => write!(out, "d{cardinality}"),
        Plan::Not { child } => write!(out, "!({})", key(child)),
        Plan::And { all, minus } => write!(out, "&({};{})", sorted(all), sorted(minus)),
        Plan::Or { any } => write!(out, "|({})", sorted(any)),
    };
}

/// The cohorts a plan reads, as `(partner, cohort_id)`, each once.
pub fn cohorts(p: &Plan) -> Vec<(Partner, &str)> {
    let mut out: Vec<(Partner, &str)> = p
        .leaves()
        .into_iter()
        .filter_map(|l| match l {
            Leaf::Cohort {
                partner, cohort_id, ..
            } => Some((*partner, cohort_id.as_str())),
            Leaf::Bucket { .. }
            | Leaf::Attribute { .. }
            | Leaf::AttributeRange { .. }
            | Leaf::Deleted { .. } => None,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether a plan's result depends on the users themselves (their number
/// or their buckets), beyond the members of its cohorts.
pub fn reads_users(p: &Plan) -> bool {
    match p {
        Plan::All | Plan::Not { .. } | Plan::Leaf(Leaf::Bucket { .. }) => true,
        Plan::Nothing
        | Plan::Leaf(Leaf::Cohort { .. })
        | Plan::Leaf(Leaf::Attribute { .. })
        | Plan::Leaf(Leaf::AttributeRange { .. })
        | Plan::Leaf(Leaf::Deleted { .. }) => false,
        Plan::And { all, minus } => all.is_empty() || all.iter().chain(minus).any(reads_users),
        Plan::Or { any } => any.iter().any(reads_users),
    }
}

/// The plan as a filter again (for tests: it must mean the same).
pub fn to_filter(p: &Plan) -> Filter {
    match p {
        Plan::All => Filter::And(vec![]),
        Plan::Nothing => Filter::Or(vec![]),
        Plan::Leaf(Leaf::Cohort {
            partner, cohort_id, ..
        }) => Filter::includes(*partner, cohort_id.clone()),
        Plan::Leaf(Leaf::Bucket { lo, hi, .. }) => Filter::Bucket(BucketCmp::Between(*lo, *hi)),
        Plan::Leaf(Leaf::Attribute {
            attribute,
            ty,
            what,
            ..
        })
        | Plan::Leaf(Leaf::AttributeRange {
            attribute,
            ty,
            what,
            ..
        }) => super::attr::to_filter(attribute, *ty, what),
        // No filter names them: among the users there are, nobody.
        Plan::Leaf(Leaf::Deleted { .. }) => Filter::Or(vec![]),
        Plan::Not { child } => to_filter(child).not(),
        Plan::And { all, minus } => Filter::And(
            all.iter()
                .map(to_filter)
                .chain(minus.iter().map(|m| to_filter(m).not()))
                .collect(),
        ),
        Plan::Or { any } => Filter::Or(any.iter().map(to_filter).collect()),
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", to_filter(self))
    }
}

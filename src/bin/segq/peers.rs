//! The peers that `segq bench --peers` and `benches/evaluator.rs` time
//! beside segq: CRoaring (the `croaring` crate) and roaring-rs (the
//! `roaring` crate), each counting a plan over the same cohort bitmaps,
//! decoded from the snapshot's bytes (the portable format both read).
//!
//! Each gets its best way to count: an n-way OR is one call (CRoaring's
//! `fast_or`, i.e. `roaring_bitmap_or_many`; roaring-rs's `MultiOps`
//! union); the last step of an AND (AND, or AND NOT) is a cardinality
//! that materialises nothing (`and_cardinality`, `andnot_cardinality`;
//! `intersection_len`, `difference_len`), so two ANDed leaves are one
//! `and_cardinality`; the steps before it materialise (the first into a
//! new bitmap, the others in place). A random-bucket leaf is a bitmap of
//! the users whose bucket is in range, built when the plan is prepared (as
//! a platform would precompute it), not while counting; NOT is the
//! difference from a bitmap of every user.
//!
//! One file serves the command line and the criterion bench (which
//! includes it by path).

use std::borrow::Cow;

use segq::segment::plan::{Leaf, Plan};
use segq::snapshot::Snapshot;
use segq::{CohortKey, Error};

/// A roaring library, as the peers use it.
pub trait Algebra {
    type B: Clone;
    /// The name printed.
    const NAME: &'static str;
    /// A bitmap in the portable format (`None`: it does not read).
    fn load(bytes: &[u8]) -> Option<Self::B>;
    /// The bitmap of ascending values.
    fn from_sorted(values: impl Iterator<Item = u32>) -> Self::B;
    /// `0..n`.
    fn range(n: u32) -> Self::B;
    fn len(b: &Self::B) -> u64;
    fn and_len(a: &Self::B, b: &Self::B) -> u64;
    fn andnot_len(a: &Self::B, b: &Self::B) -> u64;
    fn and(a: &Self::B, b: &Self::B) -> Self::B;
    fn andnot(a: &Self::B, b: &Self::B) -> Self::B;
    fn and_assign(a: &mut Self::B, b: &Self::B);
    fn andnot_assign(a: &mut Self::B, b: &Self::B);
    fn or_many(bs: &[&Self::B]) -> Self::B;
}

/// CRoaring, through the `croaring` crate.
pub struct CRoaring;

impl Algebra for CRoaring {
    type B = croaring::Bitmap;
    const NAME: &'static str = "CRoaring";
    fn load(bytes: &[u8]) -> Option<Self::B> {
        croaring::Bitmap::try_deserialize::<croaring::Portable>(bytes)
    }
    fn from_sorted(values: impl Iterator<Item = u32>) -> Self::B {
        let v: Vec<u32> = values.collect();
        let mut b = croaring::Bitmap::of(&v);
        b.run_optimize();
        b
    }
    fn range(n: u32) -> Self::B {
        let mut b = croaring::Bitmap::from_range(0..n);
        b.run_optimize();
        b
    }
    fn len(b: &Self::B) -> u64 {
        b.cardinality()
    }
    fn and_len(a: &Self::B, b: &Self::B) -> u64 {
        a.and_cardinality(b)
    }
    fn andnot_len(a: &Self::B, b: &Self::B) -> u64 {
        a.andnot_cardinality(b)
    }
    fn and(a: &Self::B, b: &Self::B) -> Self::B {
        a.and(b)
    }
    fn andnot(a: &Self::B, b: &Self::B) -> Self::B {
        a.andnot(b)
    }
    fn and_assign(a: &mut Self::B, b: &Self::B) {
        a.and_inplace(b)
    }
    fn andnot_assign(a: &mut Self::B, b: &Self::B) {
        a.andnot_inplace(b)
    }
    fn or_many(bs: &[&Self::B]) -> Self::B {
        croaring::Bitmap::fast_or(bs)
    }
}

/// roaring-rs, the `roaring` crate.
pub struct RoaringRs;

impl Algebra for RoaringRs {
    type B = roaring::RoaringBitmap;
    const NAME: &'static str = "roaring-rs";
    fn load(bytes: &[u8]) -> Option<Self::B> {
        roaring::RoaringBitmap::deserialize_from(bytes).ok()
    }
    fn from_sorted(values: impl Iterator<Item = u32>) -> Self::B {
        let mut b = roaring::RoaringBitmap::new();
        // Ascending values always append.
        let _ = b.append(values);
        b.optimize();
        b
    }
    fn range(n: u32) -> Self::B {
        let mut b = roaring::RoaringBitmap::new();
        b.insert_range(0..n);
        b.optimize();
        b
    }
    fn len(b: &Self::B) -> u64 {
        b.len()
    }
    fn and_len(a: &Self::B, b: &Self::B) -> u64 {
        a.intersection_len(b)
    }
    fn andnot_len(a: &Self::B, b: &Self::B) -> u64 {
        a.difference_len(b)
    }
    fn and(a: &Self::B, b: &Self::B) -> Self::B {
        a & b
    }
    fn andnot(a: &Self::B, b: &Self::B) -> Self::B {
        a - b
    }
    fn and_assign(a: &mut Self::B, b: &Self::B) {
        *a &= b;
    }
    fn andnot_assign(a: &mut Self::B, b: &Self::B) {
        *a -= b;
    }
    fn or_many(bs: &[&Self::B]) -> Self::B {
        use roaring::MultiOps;
        bs.iter().copied().union()
    }
}

/// A plan over a peer's bitmaps: leaves are indexes into `leaves`.
enum Expr {
    All,
    Nothing,
    Leaf(usize),
    Not(Box<Expr>),
    And(Vec<Expr>, Vec<Expr>),
    Or(Vec<Expr>),
}

/// A plan ready for one peer to count: its leaves decoded (cohorts) or
/// built (bucket ranges).
pub struct PeerPlan<A: Algebra> {
    expr: Expr,
    leaves: Vec<A::B>,
    /// Every user (for NOT and "all"; empty when the plan has neither).
    universe: A::B,
    users: u32,
}

fn uses_universe(p: &Plan) -> bool {
    match p {
        Plan::All | Plan::Not { .. } => true,
        Plan::Nothing | Plan::Leaf(_) => false,
        Plan::And { all, minus } => all.is_empty() || all.iter().chain(minus).any(uses_universe),
        Plan::Or { any } => any.iter().any(uses_universe),
    }
}

impl<A: Algebra> PeerPlan<A> {
    /// Decodes the bitmaps of `plan`'s cohorts from `snap` (and builds its
    /// bucket ranges' bitmaps from the snapshot's buckets).
    pub fn new(snap: &Snapshot, plan: &Plan) -> Result<Self, Error> {
        let users = snap.users()?;
        let mut leaves = Vec::new();
        let expr = Self::compile(snap, plan, &mut leaves)?;
        let universe = if uses_universe(plan) {
            A::range(users)
        } else {
            A::from_sorted(std::iter::empty())
        };
        Ok(PeerPlan {
            expr,
            leaves,
            universe,
            users,
        })
    }

    fn compile(snap: &Snapshot, p: &Plan, leaves: &mut Vec<A::B>) -> Result<Expr, Error> {
        let many = |ps: &[Plan], leaves: &mut Vec<A::B>| -> Result<Vec<Expr>, Error> {
            ps.iter().map(|c| Self::compile(snap, c, leaves)).collect()
        };
        Ok(match p {
            Plan::All => Expr::All,
            Plan::Nothing => Expr::Nothing,
            Plan::Leaf(Leaf::Cohort {
                partner, cohort_id, ..
            }) => {
                let key = CohortKey::new(*partner, cohort_id.clone());
                let i = snap
                    .cohort_index(&key)?
                    .ok_or_else(|| Error::UnknownCohort { key: key.clone() })?;
                let b = A::load(snap.bitmap_bytes(i)?).ok_or_else(|| {
                    snap.corrupt(format!("{} cannot read the bitmap of {key}", A::NAME))
                })?;
                leaves.push(b);
                Expr::Leaf(leaves.len() - 1)
            }
            Plan::Leaf(Leaf::Attribute { members, .. })
            | Plan::Leaf(Leaf::Deleted { members, .. }) => {
                leaves.push(A::from_sorted(members.0.iter()));
                Expr::Leaf(leaves.len() - 1)
            }
            Plan::Leaf(Leaf::AttributeRange { scan, .. }) => {
                leaves.push(A::from_sorted(scan.0.users().iter()));
                Expr::Leaf(leaves.len() - 1)
            }
            Plan::Leaf(Leaf::Bucket { lo, hi, .. }) => {
                let buckets = snap.buckets()?;
                let range = *lo..=*hi;
                leaves.push(A::from_sorted(
                    (0u32..)
                        .zip(buckets)
                        .filter(|(_, b)| range.contains(b))
                        .map(|(u, _)| u),
                ));
                Expr::Leaf(leaves.len() - 1)
            }
            Plan::Not { child } => Expr::Not(Box::new(Self::compile(snap, child, leaves)?)),
            Plan::And { all, minus } => {
                let a = many(all, leaves)?;
                Expr::And(a, many(minus, leaves)?)
            }
            Plan::Or { any } => Expr::Or(many(any, leaves)?),
        })
    }

    /// The count.
    pub fn count(&self) -> u64 {
        self.count_of(&self.expr)
    }

    fn count_of(&self, e: &Expr) -> u64 {
        match e {
            Expr::All => u64::from(self.users),
            Expr::Nothing => 0,
            Expr::Leaf(i) => A::len(&self.leaves[*i]),
            // Cohort bitmaps of a snapshot hold only its users.
            Expr::Not(c) => u64::from(self.users) - self.count_of(c),
            Expr::Or(_) => A::len(&self.value(e)),
            Expr::And(all, minus) => match self.and(all, minus, true) {
                Fold::Count(n) => n,
                Fold::Value(v) => A::len(&v),
            },
        }
    }

    fn value(&self, e: &Expr) -> Cow<'_, A::B> {
        match e {
            Expr::All => Cow::Borrowed(&self.universe),
            Expr::Nothing => Cow::Owned(A::from_sorted(std::iter::empty())),
            Expr::Leaf(i) => Cow::Borrowed(&self.leaves[*i]),
            Expr::Not(c) => Cow::Owned(A::andnot(&self.universe, &self.value(c))),
            Expr::Or(any) => {
                let values: Vec<Cow<A::B>> = any.iter().map(|c| self.value(c)).collect();
                let refs: Vec<&A::B> = values.iter().map(|v| v.as_ref()).collect();
                Cow::Owned(A::or_many(&refs))
            }
            Expr::And(all, minus) => match self.and(all, minus, false) {
                Fold::Value(v) => v,
                Fold::Count(_) => unreachable!("a value was asked for"),
            },
        }
    }

    /// `all[0] AND all[1] ... AND NOT minus[0] ...`: the first step into a
    /// new bitmap, the next ones in place; with `count`, the last step is a
    /// cardinality instead.
    fn and<'a>(&'a self, all: &[Expr], minus: &[Expr], count: bool) -> Fold<'a, A::B> {
        let first = match all.first() {
            Some(e) => self.value(e),
            None => Cow::Borrowed(&self.universe),
        };
        let steps: Vec<(bool, &Expr)> = all
            .iter()
            .skip(1)
            .map(|e| (true, e))
            .chain(minus.iter().map(|e| (false, e)))
            .collect();
        let Some(((last_and, last), before)) = steps.split_last() else {
            return Fold::Value(first);
        };
        let mut acc: Option<A::B> = None;
        for &(and, e) in before {
            let v = self.value(e);
            match (&mut acc, and) {
                (None, true) => acc = Some(A::and(&first, &v)),
                (None, false) => acc = Some(A::andnot(&first, &v)),
                (Some(a), true) => A::and_assign(a, &v),
                (Some(a), false) => A::andnot_assign(a, &v),
            }
        }
        let v = self.value(last);
        let base: &A::B = acc.as_ref().unwrap_or(&first);
        if count {
            return Fold::Count(if *last_and {
                A::and_len(base, &v)
            } else {
                A::andnot_len(base, &v)
            });
        }
        Fold::Value(Cow::Owned(match (acc, *last_and) {
            (None, true) => A::and(&first, &v),
            (None, false) => A::andnot(&first, &v),
            (Some(mut a), true) => {
                A::and_assign(&mut a, &v);
                a
            }
            (Some(mut a), false) => {
                A::andnot_assign(&mut a, &v);
                a
            }
        }))
    }
}

enum Fold<'a, B: Clone> {
    Count(u64),
    Value(Cow<'a, B>),
}

/// Both peers' plans of one shape.
pub struct Peers {
    pub croaring: PeerPlan<CRoaring>,
    pub roaring_rs: PeerPlan<RoaringRs>,
}

impl Peers {
    pub fn new(snap: &Snapshot, plan: &Plan) -> Result<Self, Error> {
        Ok(Peers {
            croaring: PeerPlan::new(snap, plan)?,
            roaring_rs: PeerPlan::new(snap, plan)?,
        })
    }
}

// The tests name everything in full: the criterion bench includes this
// file without a test harness, where `use` lines of a test module would be
// unused.
#[cfg(test)]
mod tests {
    /// Every query shape (and filters with NOT, nested ANDs and ORs, all
    /// and nothing), counted by both peers and by segq on one snapshot.
    #[test]
    fn the_peers_count_what_segq_counts() {
        let spec = segq::workload::Spec {
            users: 150_000,
            cohorts: 40,
            seed: 5,
        };
        let (bytes, _) = segq::workload::write_snapshot("peers", spec, Vec::new()).unwrap();
        let snap = super::Snapshot::from_bytes(bytes, "peers").unwrap();
        let mut filters: Vec<(String, segq::segment::Filter)> =
            segq::workload::query_shapes(spec.cohorts)
                .into_iter()
                .map(|(n, f)| (n.to_string(), f))
                .collect();
        for text in [
            "not amplitude_cohorts includes c3",
            "amplitude_cohorts includes c25 or not amplitude_cohorts includes c1",
            "(amplitude_cohorts includes c0 and amplitude_cohorts includes c1) or \
             (amplitude_cohorts includes c2 and not amplitude_cohorts includes c21)",
            "not (amplitude_cohorts includes c2 or random_bucket < 500) and \
             amplitude_cohorts includes c30",
            "random_bucket between 10 and 20 or amplitude_cohorts includes c39",
            "all and not amplitude_cohorts includes c0",
            "none or amplitude_cohorts includes c4",
        ] {
            filters.push((text.to_string(), segq::segment::parse(text).unwrap()));
        }
        for (name, filter) in &filters {
            let p = segq::segment::plan::plan(&snap, filter).unwrap();
            let want = segq::segment::chunk::Prepared::for_snapshot(&snap, &p)
                .unwrap()
                .count()
                .unwrap();
            let peers = super::Peers::new(&snap, &p).unwrap();
            assert_eq!(peers.croaring.count(), want, "CRoaring: {name}");
            assert_eq!(peers.roaring_rs.count(), want, "roaring-rs: {name}");
            assert!(want > 0 && want < u64::from(spec.users), "{name}: {want}");
        }
    }

    #[test]
    fn a_bitmap_that_does_not_read_is_an_error() {
        use super::Algebra;
        assert!(super::CRoaring::load(b"not a bitmap").is_none());
        assert!(super::RoaringRs::load(b"not a bitmap").is_none());
    }
}

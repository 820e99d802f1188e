//! A range of a bit-sliced index evaluated one 2^16-user chunk at a time
//! (see [`crate::attributes::Selection::Range`]): the O'Neil and Quass
//! comparison of every user's offset with the range's two ends, fused in
//! one pass over the chunk's slice containers, read in place, from the
//! top bit down. The chunk's words go in blocks of eight (a cache line per
//! slice); a block stops reading slices once every one of its users is
//! known to be above or below both ends, which for most blocks is within
//! a few of the top bits. No bitmap of the selected users is ever built.

use crate::bitmap_view::{BitmapView, Container, Kernels, Words, CHUNK_WORDS};

/// A range's slices, read in place, and its bounds as offsets from the
/// index's base.
#[derive(Clone)]
pub(crate) struct BsiView<'a> {
    /// `slices[i]`: the users whose offset has bit `i` set.
    pub slices: Vec<BitmapView<'a>>,
    /// The lowest offset selected (`None`: no lower bound).
    pub lo: Option<u64>,
    /// The highest offset selected (`None`: no upper bound).
    pub hi: Option<u64>,
}

/// Words per block.
const BLOCK: usize = 8;

/// One slice's words in a chunk.
enum Src<'a> {
    /// No user of the chunk has the bit.
    Zero,
    /// A bitmap container, read in place (little-endian words).
    Bytes(&'a [u8]),
    /// An array or run container, written out.
    Words(Box<Words>),
}

impl BsiView<'_> {
    /// Keeps in `out` (the chunk's users with a value, or some of them)
    /// the users of chunk `key` whose offset lies in the range. `pool`
    /// lends buffers for slice containers that are not bitmaps.
    pub fn narrow(&self, key: u16, out: &mut Words, k: Kernels, pool: &mut Vec<Box<Words>>) {
        let bits = self.slices.len();
        let srcs: Vec<Src> = self
            .slices
            .iter()
            .map(|v| match v.container_for_key(key) {
                None => Src::Zero,
                Some(Container::Bitmap(b)) => Src::Bytes(b.bytes()),
                Some(c) => {
                    let mut w = pool.pop().unwrap_or_else(|| Box::new([0u64; CHUNK_WORDS]));
                    c.write_into_with(k, &mut w);
                    Src::Words(w)
                }
            })
            .collect();
        // Per bit, every bit of a word set when the end has the bit.
        let mask = |end: Option<u64>, i: usize| -> u64 {
            match end {
                Some(e) if e >> i & 1 == 1 => !0,
                _ => 0,
            }
        };
        let hm: Vec<u64> = (0..bits).map(|i| mask(self.hi, i)).collect();
        let lm: Vec<u64> = (0..bits).map(|i| mask(self.lo, i)).collect();
        for (b, block) in out.chunks_exact_mut(BLOCK).enumerate() {
            let at = b * BLOCK;
            let mut base = [0u64; BLOCK];
            base.copy_from_slice(block);
            if base.iter().all(|&w| w == 0) {
                continue;
            }
            // `eq_*`: equal to the end on the bits seen so far; `lt_*`:
            // found below it. Without an upper end everyone is below it.
            let (mut eq_h, mut lt_h) = match self.hi {
                Some(_) => (base, [0u64; BLOCK]),
                None => ([0u64; BLOCK], base),
            };
            let (mut eq_l, mut lt_l) = match self.lo {
                Some(_) => (base, [0u64; BLOCK]),
                None => ([0u64; BLOCK], [0u64; BLOCK]),
            };
            for i in (0..bits).rev() {
                let mut s = [0u64; BLOCK];
                match &srcs[i] {
                    Src::Zero => {}
                    Src::Bytes(bytes) => {
                        let from = &bytes[at * 8..(at + BLOCK) * 8];
                        for (w, c) in s.iter_mut().zip(from.chunks_exact(8)) {
                            let mut le = [0u8; 8];
                            le.copy_from_slice(c);
                            *w = u64::from_le_bytes(le);
                        }
                    }
                    Src::Words(words) => s.copy_from_slice(&words[at..at + BLOCK]),
                }
                let (h, l) = (hm[i], lm[i]);
                let mut left = 0u64;
                for j in 0..BLOCK {
                    lt_h[j] |= eq_h[j] & !s[j] & h;
                    eq_h[j] &= !(s[j] ^ h);
                    lt_l[j] |= eq_l[j] & !s[j] & l;
                    eq_l[j] &= !(s[j] ^ l);
                    left |= eq_h[j] | eq_l[j];
                }
                if left == 0 {
                    break;
                }
            }
            for j in 0..BLOCK {
                block[j] = (lt_h[j] | eq_h[j]) & !lt_l[j];
            }
        }
        for s in srcs {
            if let Src::Words(w) = s {
                pool.push(w);
            }
        }
    }

    /// Whether user `u` (who has a value) has an offset in the range.
    pub fn contains(&self, u: u32) -> bool {
        let off = self
            .slices
            .iter()
            .enumerate()
            .filter(|(_, v)| v.contains(u))
            .fold(0u64, |acc, (i, _)| acc | 1 << i);
        self.lo.is_none_or(|l| off >= l) && self.hi.is_none_or(|h| off <= h)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use proptest::prelude::*;
    use roaring::RoaringBitmap;

    use crate::attributes::{AttrQuery, AttrType, AttrValue, Attribute, Attributes};
    use crate::segment::attr::Test;
    use crate::segment::chunk::Prepared;
    use crate::segment::plan::{Leaf, Plan, Selected};
    use crate::users::Buckets;

    const USERS: u32 = 200_000;

    fn leaf(a: &Attribute, test: Test) -> Plan {
        let members = Selected(Arc::new(test.selection(a).unwrap()));
        Plan::Leaf(Leaf::Attribute {
            attribute: a.name().to_string(),
            test: String::new(),
            ty: a.ty(),
            what: test,
            version: a.version(),
            cardinality: members.cardinality(),
            exact: members.exact(),
            members,
        })
    }

    fn members(p: &Plan, buckets: &[u16]) -> (RoaringBitmap, u64, Vec<bool>) {
        let prepared =
            Prepared::assemble(p, USERS, Buckets::contiguous(buckets), |_| unreachable!()).unwrap();
        let m = prepared.members().unwrap();
        let checker = prepared.checker().unwrap();
        let checks = (0..USERS)
            .step_by(997)
            .map(|u| checker.contains(crate::ids::UserId(u)))
            .collect();
        (m, prepared.count().unwrap(), checks)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// A range evaluated per chunk over the slices read in place
        /// agrees with the whole-bitmap bit-sliced range and with a scan:
        /// over dense chunks (bitmap containers) and sparse ones, after
        /// changes made since the portable copies were taken, alone and
        /// narrowing another test's users in place.
        #[test]
        fn a_range_per_chunk_agrees_with_the_whole_bitmap_range_and_a_scan(
            base in -50i64..50,
            changes in prop::collection::vec((0u32..USERS, prop::option::of(-3000i64..3000)), 0..300),
            bounds in prop::collection::vec((prop::option::of(-3500i64..3500), prop::option::of(-3500i64..3500)), 1..6),
            wide in any::<bool>(),
        ) {
            let scale = |v: i64| if wide { v.saturating_mul(3_000_000_000_000_000) } else { v };
            // Dense in the first chunk, sparse after it.
            let value = |u: u32| scale(i64::from(u.wrapping_mul(2_654_435_761) % 2000) + base);
            let users = (0..USERS).filter(|u| *u < 70_000 || u % 37 == 0);
            let mut model: BTreeMap<u32, i64> = users.clone().map(|u| (u, value(u))).collect();
            let mut attrs = Attributes::new();
            attrs.insert(Attribute::build_numbers(
                "n",
                AttrType::Integer,
                scale(base),
                users.map(|u| (u, value(u))),
            ));
            attrs.insert(Attribute::build_booleans(
                "b",
                (0..USERS).filter(|u| u % 3 != 0).map(|u| (u, u % 2 == 0)),
            ));
            // Portable copies taken, then changes: the copies must go.
            let _ = Test::Range(Some(0), None).selection(attrs.get("n").unwrap());
            for (u, v) in changes {
                let v = v.map(scale);
                attrs.set(u, &[("n".to_string(), v.map(AttrValue::Integer))]).unwrap();
                match v {
                    Some(v) => { model.insert(u, v); }
                    None => { model.remove(&u); }
                }
            }
            let n = attrs.get("n").unwrap();
            let b = attrs.get("b").unwrap();
            let trues = b.select(&AttrQuery::Is(true)).unwrap();
            let buckets = vec![0u16; USERS as usize];
            for (lo, hi) in bounds {
                let (lo, hi) = (lo.map(scale), hi.map(scale));
                let scan: RoaringBitmap = model
                    .iter()
                    .filter(|(_, &v)| lo.is_none_or(|l| v >= l) && hi.is_none_or(|h| v <= h))
                    .map(|(&u, _)| u)
                    .collect();
                prop_assert_eq!(&n.select(&AttrQuery::Range(lo, hi)).unwrap(), &scan);
                let p = leaf(n, Test::Range(lo, hi));
                let (m, count, checks) = members(&p, &buckets);
                prop_assert_eq!(&m, &scan);
                prop_assert_eq!(count, scan.len());
                let want: Vec<bool> = (0..USERS).step_by(997).map(|u| scan.contains(u)).collect();
                prop_assert_eq!(checks, want);
                // Narrowing another test's users in place, and negated.
                let and = Plan::And { all: vec![leaf(b, Test::Is(true)), p.clone()], minus: vec![] };
                let (m, count, _) = members(&and, &buckets);
                let both = &trues & &scan;
                prop_assert_eq!(&m, &both);
                prop_assert_eq!(count, both.len());
                let minus = Plan::And { all: vec![leaf(b, Test::Is(true))], minus: vec![p] };
                let (m, _, _) = members(&minus, &buckets);
                prop_assert_eq!(m, &trues - &scan);
            }
        }
    }
}

//! A bit-sliced index: integer values of users as one roaring bitmap per
//! bit of `value - base`, so a comparison with a constant takes two bitmap
//! operations per bit (O'Neil and Quass) and never visits a user.
//!
//! A range ([`Bsi::range`]) runs chunk by chunk (2^16 users), the chunks
//! in parallel, and each chunk's users become a bitmap on the thread that
//! found them. Both ends are compared in one pass from the top bit down,
//! in a few words of state per user word: first the sparse top slices
//! move only their users, then the chunk goes block by block (512 users,
//! one cache line of each slice), its state in registers, and a block
//! stops reading slices as soon as none of its users still equals an end
//! on the bits seen. The containers are read in place from the index's
//! portable serialization, made on the first range after a change and
//! kept until the next one.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::bitmap_view::{BitmapView, Container, Words, CHUNK_WORDS};

/// Integer values of users, sliced by bit.
#[derive(Clone, Debug, Default)]
pub struct Bsi {
    /// The smallest value the slices can hold (offsets are from it).
    base: i64,
    /// The users that have a value.
    has: RoaringBitmap,
    /// `slices[i]`: the users whose `value - base` has bit `i` set.
    slices: Vec<RoaringBitmap>,
    /// `has` and the slices serialized, for ranges; emptied by every
    /// change.
    frozen: OnceLock<Arc<Frozen>>,
}

impl PartialEq for Bsi {
    fn eq(&self, other: &Bsi) -> bool {
        self.base == other.base && self.has == other.has && self.slices == other.slices
    }
}

/// `has`, then each slice, in the portable roaring format, back to back.
struct Frozen {
    bytes: Vec<u8>,
    /// Where each part ends.
    ends: Vec<usize>,
}

impl fmt::Debug for Frozen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Frozen({} bytes, {} parts)",
            self.bytes.len(),
            self.ends.len()
        )
    }
}

impl Frozen {
    fn of<'a>(bitmaps: impl Iterator<Item = &'a RoaringBitmap>) -> Frozen {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for b in bitmaps {
            bytes.reserve(b.serialized_size());
            // Writing to a Vec cannot fail.
            let _ = b.serialize_into(&mut bytes);
            ends.push(bytes.len());
        }
        Frozen { bytes, ends }
    }

    /// Each part's view; `None` if one does not parse (never for bytes
    /// `roaring` wrote).
    fn views(&self) -> Option<Vec<BitmapView<'_>>> {
        let mut start = 0;
        let mut out = Vec::with_capacity(self.ends.len());
        for &end in &self.ends {
            out.push(BitmapView::parse(self.bytes.get(start..end)?).ok()?);
            start = end;
        }
        Some(out)
    }
}

/// One chunk's comparison state: per user, whether the value still equals
/// each end on the bits seen (`eq_*`), and whether it is already known
/// below the upper end (`below_hi`) or above the lower one (`above_lo`).
/// An end that is absent starts as "known": all of `has`, nobody equal.
struct State {
    eq_hi: Words,
    below_hi: Words,
    eq_lo: Words,
    above_lo: Words,
    /// The words of slices that are not bitmap containers, as
    /// little-endian bytes (one buffer a slice, reused chunk to chunk).
    scratch: Vec<Box<[u8; BYTES]>>,
}

/// A container's bytes when it is a bitmap.
const BYTES: usize = CHUNK_WORDS * 8;

/// No member in the chunk.
static ZERO: [u8; BYTES] = [0; BYTES];

/// Words a block: one cache line of each slice. (16, 32 and 64 words
/// were each slower on the medium workload's ranges: the state leaves the
/// registers and a block stops later.)
const BLOCK: usize = 8;

impl State {
    fn new() -> Box<State> {
        let zero = [0u64; CHUNK_WORDS];
        Box::new(State {
            eq_hi: zero,
            below_hi: zero,
            eq_lo: zero,
            above_lo: zero,
            scratch: Vec::new(),
        })
    }
}

/// The bit of an end at slice `i` as a mask (all ones for a one bit);
/// an absent end's is 0 (its `eq` is empty, so it never matters).
fn mask_of(end: Option<u64>, i: usize) -> u64 {
    match end {
        Some(c) if c >> i & 1 == 1 => u64::MAX,
        _ => 0,
    }
}

/// The block's 8 words of a slice's little-endian bytes.
#[inline(always)]
fn block_of(bytes: &[u8; BYTES], b: usize) -> [u64; BLOCK] {
    let mut x = [0u64; BLOCK];
    for (k, x) in x.iter_mut().enumerate() {
        let at = 8 * (b * BLOCK + k);
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        *x = u64::from_le_bytes(w);
    }
    x
}

/// The users of one chunk with `lo <= value - base <= hi` (offsets; an
/// end `None`: none), as the chunk's words: `has` is the chunk's
/// container of users with a value, `slices` each slice's container there.
///
/// From the top bit down, slices where neither end has a one bit and that
/// hold few users (arrays) only move those users, word by word. From the
/// first other slice on, the chunk goes block by block (8 words, one
/// cache line of each slice): a block's state stays in registers through
/// the remaining slices, and the block stops reading them as soon as none
/// of its users still equals an end.
fn range_chunk(
    has: Container<'_>,
    slices: &[Option<Container<'_>>],
    lo: Option<u64>,
    hi: Option<u64>,
    st: &mut State,
) -> Words {
    let mut h = [0u64; CHUNK_WORDS];
    has.write_into(&mut h);
    let zero = [0u64; CHUNK_WORDS];
    (st.eq_hi, st.below_hi) = if hi.is_some() { (h, zero) } else { (zero, h) };
    (st.eq_lo, st.above_lo) = if lo.is_some() { (h, zero) } else { (zero, h) };
    let mut rest = slices.len();
    while rest > 0 {
        let i = rest - 1;
        let (hb, lb) = (mask_of(hi, i), mask_of(lo, i));
        let sparse = match &slices[i] {
            None => true,
            Some(Container::Array(_)) => true,
            Some(_) => false,
        };
        if hb != 0 || lb != 0 || !sparse {
            break;
        }
        rest = i;
        // Neither end has the bit: only the users with it change (they
        // leave `eq_hi`, and pass from `eq_lo` to `above_lo`).
        if let Some(Container::Array(a)) = &slices[i] {
            for v in a.iter() {
                let (w, m) = (usize::from(v >> 6), 1u64 << (v & 63));
                st.eq_hi[w] &= !m;
                st.above_lo[w] |= st.eq_lo[w] & m;
                st.eq_lo[w] &= !m;
            }
            if st.eq_hi.iter().zip(&st.eq_lo).all(|(h, l)| h | l == 0) {
                rest = 0;
            }
        }
    }
    // The remaining slices, top first: their bytes (in place for a
    // bitmap container, else written out) and the ends' bits.
    fn in_place<'a>(c: &Option<Container<'a>>) -> Option<&'a [u8; BYTES]> {
        match c {
            None => Some(&ZERO),
            Some(Container::Bitmap(b)) => <&[u8; BYTES]>::try_from(b.bytes()).ok(),
            Some(_) => None,
        }
    }
    let mut used = 0;
    let mut words = [0u64; CHUNK_WORDS];
    for c in slices[..rest].iter().flatten() {
        if in_place(&Some(*c)).is_none() {
            if st.scratch.len() == used {
                st.scratch.push(Box::new([0; BYTES]));
            }
            c.write_into(&mut words);
            for (b, w) in st.scratch[used].chunks_exact_mut(8).zip(&words) {
                b.copy_from_slice(&w.to_le_bytes());
            }
            used += 1;
        }
    }
    let mut written = st.scratch.iter();
    let mut srcs: Vec<(&[u8; BYTES], u64, u64)> = slices[..rest]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let bytes = match in_place(c) {
                Some(b) => b,
                None => written.next().map_or(&ZERO, |b| &**b),
            };
            (bytes, mask_of(hi, i), mask_of(lo, i))
        })
        .collect();
    srcs.reverse();
    let mut out = [0u64; CHUNK_WORDS];
    // Only the ends given are compared (a one-ended range does half the
    // work a word).
    match (hi.is_some(), lo.is_some()) {
        (true, true) => blocks::<true, true>(st, &srcs, &mut out),
        (true, false) => blocks::<true, false>(st, &srcs, &mut out),
        (false, true) => blocks::<false, true>(st, &srcs, &mut out),
        (false, false) => blocks::<false, false>(st, &srcs, &mut out),
    }
    out
}

/// The block-by-block pass of [`range_chunk`] over the slices `srcs`
/// (top first: each one's bytes, and the upper and lower ends' bits as
/// masks), from the state the sparse pass left, into `out`.
fn blocks<const HI: bool, const LO: bool>(
    st: &State,
    srcs: &[(&[u8; BYTES], u64, u64)],
    out: &mut Words,
) {
    const B: usize = BLOCK;
    for b in 0..CHUNK_WORDS / B {
        let r = b * B..(b + 1) * B;
        let mut eh = [0u64; B];
        let mut bh = [0u64; B];
        let mut el = [0u64; B];
        let mut al = [0u64; B];
        eh.copy_from_slice(&st.eq_hi[r.clone()]);
        bh.copy_from_slice(&st.below_hi[r.clone()]);
        el.copy_from_slice(&st.eq_lo[r.clone()]);
        al.copy_from_slice(&st.above_lo[r.clone()]);
        for &(bytes, hm, lm) in srcs {
            let live = (0..B).fold(0, |a, k| {
                a | if HI { eh[k] } else { 0 } | if LO { el[k] } else { 0 }
            });
            if live == 0 {
                break;
            }
            let x = block_of(bytes, b);
            for k in 0..B {
                // A one bit of an end keeps the users with the bit in its
                // `eq`; a zero bit those without. Below the upper end:
                // equal so far, its bit one and theirs zero; above the
                // lower: equal so far, its bit zero and theirs one.
                if HI {
                    bh[k] |= eh[k] & !x[k] & hm;
                    eh[k] &= !(x[k] ^ hm);
                }
                if LO {
                    al[k] |= el[k] & x[k] & !lm;
                    el[k] &= !(x[k] ^ lm);
                }
            }
        }
        for k in 0..B {
            out[b * B + k] = (bh[k] | eh[k]) & (al[k] | el[k]);
        }
    }
}

fn offset(v: i64, base: i64) -> u64 {
    // Both are i64, so the difference of v >= base fits in u64.
    (i128::from(v) - i128::from(base)) as u64
}

/// The users with `lo <= value - base <= hi` (offsets, at least one end
/// given), chunk by chunk in parallel over the views of `has` and the
/// slices.
fn range_views(
    has: &BitmapView<'_>,
    slices: &[BitmapView<'_>],
    lo: Option<u64>,
    hi: Option<u64>,
) -> RoaringBitmap {
    let chunks: Vec<(u16, Container<'_>)> = has.iter_containers().collect();
    // Each chunk's users become its own bitmap on the thread that found
    // them; putting the chunks together then only moves containers.
    let parts: Vec<RoaringBitmap> = chunks
        .par_iter()
        .map_init(
            || (State::new(), vec![0u8; BYTES]),
            |(st, bytes), &(key, c)| {
                let in_chunk: Vec<Option<Container<'_>>> =
                    slices.iter().map(|s| s.container_for_key(key)).collect();
                let words = range_chunk(c, &in_chunk, lo, hi, st);
                if words.iter().all(|&w| w == 0) {
                    return RoaringBitmap::new();
                }
                for (b, w) in bytes.chunks_exact_mut(8).zip(words) {
                    b.copy_from_slice(&w.to_le_bytes());
                }
                RoaringBitmap::from_lsb0_bytes(u32::from(key) << 16, bytes)
            },
        )
        .collect();
    let mut out = RoaringBitmap::new();
    for p in parts {
        out |= p;
    }
    out
}

impl Bsi {
    /// An index from its parts, as persisted. Slices past the highest
    /// significant bit may be empty.
    pub fn from_parts(base: i64, has: RoaringBitmap, slices: Vec<RoaringBitmap>) -> Bsi {
        Bsi {
            base,
            has,
            slices,
            frozen: OnceLock::new(),
        }
    }

    /// Its parts: the base, the users with a value, the bit slices.
    pub fn parts(&self) -> (i64, &RoaringBitmap, &[RoaringBitmap]) {
        (self.base, &self.has, &self.slices)
    }

    /// The users that have a value.
    pub fn has(&self) -> &RoaringBitmap {
        &self.has
    }

    /// One user's value.
    pub fn get(&self, user: u32) -> Option<i64> {
        if !self.has.contains(user) {
            return None;
        }
        let mut off = 0u64;
        for (i, s) in self.slices.iter().enumerate() {
            if s.contains(user) {
                off |= 1 << i;
            }
        }
        Some((i128::from(self.base) + i128::from(off)) as i64)
    }

    /// Takes the values of `users` out.
    pub fn remove_many(&mut self, users: &RoaringBitmap) {
        self.frozen.take();
        self.has -= users;
        for s in &mut self.slices {
            if !s.is_disjoint(users) {
                *s -= users;
            }
        }
    }

    /// Removes a user's value; whether it had one.
    pub fn remove(&mut self, user: u32) -> bool {
        if !self.has.remove(user) {
            return false;
        }
        self.frozen.take();
        for s in &mut self.slices {
            s.remove(user);
        }
        true
    }

    /// Sets a user's value. A value below the base re-slices every value
    /// from the new base (rare: the base is the first value, lowered).
    pub fn set(&mut self, user: u32, v: i64) {
        self.frozen.take();
        self.remove(user);
        if self.has.is_empty() {
            self.base = v;
            self.slices.clear();
        } else if v < self.base {
            let all: Vec<(u32, i64)> = self
                .has
                .iter()
                .filter_map(|u| self.get(u).map(|x| (u, x)))
                .collect();
            *self = Bsi {
                base: v,
                ..Bsi::default()
            };
            for (u, x) in all {
                self.put(u, x);
            }
        }
        self.put(user, v);
    }

    fn put(&mut self, user: u32, v: i64) {
        self.frozen.take();
        let off = offset(v, self.base);
        self.has.insert(user);
        let bits = 64 - off.leading_zeros() as usize;
        if self.slices.len() < bits {
            self.slices.resize_with(bits, RoaringBitmap::new);
        }
        for (i, s) in self.slices.iter_mut().enumerate().take(bits) {
            if off >> i & 1 == 1 {
                s.insert(user);
            }
        }
    }

    /// The users whose value is at most `c`.
    pub fn le(&self, c: i64) -> RoaringBitmap {
        if self.has.is_empty() || c < self.base {
            return RoaringBitmap::new();
        }
        let off = offset(c, self.base);
        let bits = self.slices.len();
        if bits < 64 && off >> bits != 0 {
            return self.has.clone();
        }
        // Walking from the top bit: `eq` holds the users equal to `c` on
        // the bits seen so far, `lt` those already found below it.
        let mut lt = RoaringBitmap::new();
        let mut eq = self.has.clone();
        for i in (0..bits).rev() {
            let s = &self.slices[i];
            if off >> i & 1 == 1 {
                lt |= &eq - s;
                eq &= s;
            } else {
                eq -= s;
            }
            if eq.is_empty() {
                break;
            }
        }
        lt | eq
    }

    /// The users whose value is exactly `c`.
    pub fn eq(&self, c: i64) -> RoaringBitmap {
        if self.has.is_empty() || c < self.base {
            return RoaringBitmap::new();
        }
        let off = offset(c, self.base);
        let bits = self.slices.len();
        if bits < 64 && off >> bits != 0 {
            return RoaringBitmap::new();
        }
        let mut eq = self.has.clone();
        for i in (0..bits).rev() {
            if eq.is_empty() {
                break;
            }
            if off >> i & 1 == 1 {
                eq &= &self.slices[i];
            } else {
                eq -= &self.slices[i];
            }
        }
        eq
    }

    /// The users whose value lies in `lo..=hi` (an end `None`: unbounded).
    pub fn range(&self, lo: Option<i64>, hi: Option<i64>) -> RoaringBitmap {
        let none = RoaringBitmap::new;
        if self.has.is_empty() {
            return none();
        }
        let bits = self.slices.len();
        let top = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        // The ends as offsets; an end every value meets is dropped.
        let lo = match lo {
            Some(l) if l > self.base => match offset(l, self.base) {
                o if o > top => return none(),
                o => Some(o),
            },
            _ => None,
        };
        let hi = match hi {
            Some(h) if h < self.base => return none(),
            Some(h) => Some(offset(h, self.base)).filter(|&o| o < top),
            None => None,
        };
        match (lo, hi) {
            (None, None) => return self.has.clone(),
            (Some(l), Some(h)) if l > h => return none(),
            _ => {}
        }
        let frozen = self
            .frozen
            .get_or_init(|| {
                Arc::new(Frozen::of(
                    std::iter::once(&self.has).chain(self.slices.iter()),
                ))
            })
            .clone();
        match frozen.views() {
            Some(views) => range_views(&views[0], &views[1..], lo, hi),
            None => self.range_by_bitmaps(lo, hi),
        }
    }

    /// [`Self::range`] by whole-bitmap operations (offsets as there).
    fn range_by_bitmaps(&self, lo: Option<u64>, hi: Option<u64>) -> RoaringBitmap {
        let at = |o: u64| (i128::from(self.base) + i128::from(o)) as i64;
        let upto = match hi {
            Some(h) => self.le(at(h)),
            None => self.has.clone(),
        };
        match lo {
            Some(l) => upto - self.le(at(l - 1)),
            None => upto,
        }
    }

    /// The smallest value (`None`: no user has one).
    pub fn min(&self) -> Option<i64> {
        self.extreme(false)
    }

    /// The largest value.
    pub fn max(&self) -> Option<i64> {
        self.extreme(true)
    }

    /// From the top bit down, keeps the users with the bit set (largest)
    /// or clear (smallest) whenever some are: one operation per bit.
    fn extreme(&self, largest: bool) -> Option<i64> {
        if self.has.is_empty() {
            return None;
        }
        let mut at = self.has.clone();
        let mut off = 0u64;
        for i in (0..self.slices.len()).rev() {
            let s = &self.slices[i];
            let with = if largest { &at & s } else { &at - s };
            if !with.is_empty() {
                at = with;
                if largest {
                    off |= 1 << i;
                }
            } else if !largest {
                off |= 1 << i;
            }
        }
        Some((i128::from(self.base) + i128::from(off)) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn scan(m: &BTreeMap<u32, i64>, lo: Option<i64>, hi: Option<i64>) -> RoaringBitmap {
        m.iter()
            .filter(|(_, &v)| lo.is_none_or(|l| v >= l) && hi.is_none_or(|h| v <= h))
            .map(|(&u, _)| u)
            .collect()
    }

    proptest! {
        #[test]
        fn ranges_agree_with_a_full_scan(
            ops in prop::collection::vec((0u32..3000, prop::option::of(-1000i64..1000)), 1..400),
            bounds in prop::collection::vec((prop::option::of(-1100i64..1100), prop::option::of(-1100i64..1100)), 1..20),
            wide in any::<bool>(),
        ) {
            let mut b = Bsi::default();
            let mut m = BTreeMap::new();
            for (u, v) in ops {
                // Wide values reach both ends of i64.
                let v = v.map(|v| if wide { v.saturating_mul(9_000_000_000_000_000) } else { v });
                match v {
                    Some(v) => { b.set(u, v); m.insert(u, v); }
                    None => { b.remove(u); m.remove(&u); }
                }
            }
            for (&u, &v) in &m {
                prop_assert_eq!(b.get(u), Some(v));
            }
            prop_assert_eq!(b.has(), &m.keys().copied().collect::<RoaringBitmap>());
            for (lo, hi) in bounds {
                let (lo, hi) = if wide {
                    (lo.map(|v| v.saturating_mul(9_000_000_000_000_000)), hi.map(|v| v.saturating_mul(9_000_000_000_000_000)))
                } else { (lo, hi) };
                prop_assert_eq!(b.range(lo, hi), scan(&m, lo, hi));
                if let Some(c) = lo {
                    prop_assert_eq!(b.eq(c), scan(&m, Some(c), Some(c)));
                    prop_assert_eq!(b.le(c), scan(&m, None, Some(c)));
                }
            }
            prop_assert_eq!(b.le(i64::MAX), b.has().clone());
            prop_assert_eq!(b.min(), m.values().min().copied());
            prop_assert_eq!(b.max(), m.values().max().copied());
            prop_assert_eq!(b.range(Some(i64::MIN), None), b.has().clone());
        }

        /// Users over several chunks (dense and sparse containers), ranges
        /// asked between the changes: a range after a change never reads
        /// the serialization made before it.
        #[test]
        fn ranges_between_changes_see_every_change(
            ops in prop::collection::vec(
                (prop_oneof![0u32..3000, 60_000u32..70_000, 131_000u32..131_100], prop::option::of(0i64..5000)),
                1..600,
            ),
            every in 1usize..50,
            bounds in prop::collection::vec((prop::option::of(-10i64..5100), prop::option::of(-10i64..5100)), 1..8),
            dense in 0u32..2,
        ) {
            let mut b = Bsi::default();
            let mut m = BTreeMap::new();
            // Bitmap containers in the first chunk: many users with values.
            for u in 0..dense * 20_000 {
                let v = i64::from(u % 4099);
                b.set(u, v);
                m.insert(u, v);
            }
            for (i, (u, v)) in ops.into_iter().enumerate() {
                match v {
                    Some(v) => { b.set(u, v); m.insert(u, v); }
                    None => { b.remove(u); m.remove(&u); }
                }
                if i % every == 0 {
                    let (lo, hi) = bounds[i % bounds.len()];
                    prop_assert_eq!(b.range(lo, hi), scan(&m, lo, hi));
                }
                if i % (every * 7) == 3 {
                    let gone: RoaringBitmap = m.keys().copied().step_by(5).collect();
                    b.remove_many(&gone);
                    m.retain(|u, _| !gone.contains(*u));
                }
            }
            for (lo, hi) in bounds {
                prop_assert_eq!(b.range(lo, hi), scan(&m, lo, hi));
                // A clone answers from the same serialization, then
                // changes apart from it.
                let mut c = b.clone();
                c.set(65_000, 4_000);
                let mut cm = m.clone();
                cm.insert(65_000, 4_000);
                prop_assert_eq!(c.range(lo, hi), scan(&cm, lo, hi));
                prop_assert_eq!(b.range(lo, hi), scan(&m, lo, hi));
            }
        }
    }
}

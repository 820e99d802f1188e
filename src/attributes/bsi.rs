//! A bit-sliced index: integer values of users as one roaring bitmap per
//! bit of `value - base`, so a comparison with a constant takes two bitmap
//! operations per bit (O'Neil and Quass) and never visits a user.
//!
//! A range ([`Bsi::range`]) runs chunk by chunk (2^16 users), the chunks
//! in parallel: both ends are compared in one pass over the chunk's slice
//! containers, from the top bit down, in a few words of state per user
//! word, and a chunk stops as soon as no user there still equals an end
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

/// A slice's words in one chunk.
trait Src {
    fn word(&self, w: usize) -> u64;
}

/// No member in the chunk.
struct Zero;

impl Src for Zero {
    #[inline(always)]
    fn word(&self, _: usize) -> u64 {
        0
    }
}

impl Src for Words {
    #[inline(always)]
    fn word(&self, w: usize) -> u64 {
        self[w]
    }
}

/// A bitmap container's 8,192 bytes, read in place.
struct Le<'a>(&'a [u8; CHUNK_WORDS * 8]);

impl Src for Le<'_> {
    #[inline(always)]
    fn word(&self, w: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[8 * w..8 * w + 8]);
        u64::from_le_bytes(b)
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
}

/// The bit of an end at the current slice: 0 no such end, 1 a zero bit, 2
/// a one bit.
fn bit_of(end: Option<u64>, i: usize) -> u8 {
    match end {
        None => 0,
        Some(c) => 1 + (c >> i & 1) as u8,
    }
}

/// One slice's step over a chunk (the ends' bits `HI` and `LO`, as
/// [`bit_of`] gives them); whether some user still equals an end.
fn step<S: Src, const HI: u8, const LO: u8>(s: &S, st: &mut State) -> bool {
    let mut any = 0u64;
    for w in 0..CHUNK_WORDS {
        let x = s.word(w);
        match HI {
            1 => st.eq_hi[w] &= !x,
            2 => {
                st.below_hi[w] |= st.eq_hi[w] & !x;
                st.eq_hi[w] &= x;
            }
            _ => {}
        }
        match LO {
            1 => {
                st.above_lo[w] |= st.eq_lo[w] & x;
                st.eq_lo[w] &= !x;
            }
            2 => st.eq_lo[w] &= x,
            _ => {}
        }
        any |= st.eq_hi[w] | st.eq_lo[w];
    }
    any != 0
}

fn step_bits<S: Src>(s: &S, hi: u8, lo: u8, st: &mut State) -> bool {
    match (hi, lo) {
        (0, 1) => step::<S, 0, 1>(s, st),
        (0, 2) => step::<S, 0, 2>(s, st),
        (1, 0) => step::<S, 1, 0>(s, st),
        (1, 1) => step::<S, 1, 1>(s, st),
        (1, 2) => step::<S, 1, 2>(s, st),
        (2, 0) => step::<S, 2, 0>(s, st),
        (2, 1) => step::<S, 2, 1>(s, st),
        (2, 2) => step::<S, 2, 2>(s, st),
        _ => false,
    }
}

/// The users of one chunk with `lo <= value - base <= hi` (offsets; an
/// end `None`: none), as the chunk's words: `has` is the chunk's
/// container of users with a value, `slices` each slice's container there.
fn range_chunk(
    has: Container<'_>,
    slices: &[Option<Container<'_>>],
    lo: Option<u64>,
    hi: Option<u64>,
    st: &mut State,
    scratch: &mut Words,
) -> Words {
    let mut h = [0u64; CHUNK_WORDS];
    has.write_into(&mut h);
    let zero = [0u64; CHUNK_WORDS];
    (st.eq_hi, st.below_hi) = if hi.is_some() { (h, zero) } else { (zero, h) };
    (st.eq_lo, st.above_lo) = if lo.is_some() { (h, zero) } else { (zero, h) };
    for (i, s) in slices.iter().enumerate().rev() {
        let (hb, lb) = (bit_of(hi, i), bit_of(lo, i));
        if hb != 2 && lb != 2 {
            // Neither end has the bit: only the users with it change
            // (they leave `eq_hi`, and pass from `eq_lo` to `above_lo`).
            match s {
                None => continue,
                Some(Container::Array(a)) => {
                    for v in a.iter() {
                        let (w, m) = (usize::from(v >> 6), 1u64 << (v & 63));
                        if hb == 1 {
                            st.eq_hi[w] &= !m;
                        }
                        if lb == 1 {
                            st.above_lo[w] |= st.eq_lo[w] & m;
                            st.eq_lo[w] &= !m;
                        }
                    }
                    if st.eq_hi.iter().zip(&st.eq_lo).all(|(h, l)| h | l == 0) {
                        break;
                    }
                    continue;
                }
                Some(_) => {}
            }
        }
        let in_place = match s {
            Some(Container::Bitmap(b)) => <&[u8; CHUNK_WORDS * 8]>::try_from(b.bytes()).ok(),
            _ => None,
        };
        let more = match (s, in_place) {
            (None, _) => step_bits(&Zero, hb, lb, st),
            (_, Some(bytes)) => step_bits(&Le(bytes), hb, lb, st),
            (Some(c), None) => {
                c.write_into(scratch);
                step_bits(&*scratch, hb, lb, st)
            }
        };
        if !more {
            break;
        }
    }
    let mut out = [0u64; CHUNK_WORDS];
    for (w, o) in out.iter_mut().enumerate() {
        *o = (st.below_hi[w] | st.eq_hi[w]) & (st.above_lo[w] | st.eq_lo[w]);
    }
    out
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
    let parts: Vec<(u16, Words)> = chunks
        .par_iter()
        .map_init(
            || {
                let zero = [0u64; CHUNK_WORDS];
                let st = State {
                    eq_hi: zero,
                    below_hi: zero,
                    eq_lo: zero,
                    above_lo: zero,
                };
                (Box::new(st), Box::new(zero))
            },
            |(st, scratch), &(key, c)| {
                let in_chunk: Vec<Option<Container<'_>>> =
                    slices.iter().map(|s| s.container_for_key(key)).collect();
                (key, range_chunk(c, &in_chunk, lo, hi, st, scratch))
            },
        )
        .collect();
    let mut out = RoaringBitmap::new();
    let mut bytes = vec![0u8; CHUNK_WORDS * 8];
    for (key, words) in parts {
        if words.iter().all(|&w| w == 0) {
            continue;
        }
        for (b, w) in bytes.chunks_exact_mut(8).zip(words) {
            b.copy_from_slice(&w.to_le_bytes());
        }
        out |= RoaringBitmap::from_lsb0_bytes(u32::from(key) << 16, &bytes);
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

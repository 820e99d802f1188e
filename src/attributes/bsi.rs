//! A bit-sliced index: integer values of users as one roaring bitmap per
//! bit of `value - base`, so a comparison with a constant takes two bitmap
//! operations per bit (O'Neil and Quass) and never visits a user.
//!
//! A range is compared one chunk (2^16 users) at a time, both ends in one
//! pass from the top bit down: the top slices where neither end has a one
//! bit (sparse: arrays) only name users above both ends; the other slices
//! go block by block (512 users, one cache line of each slice,
//! [`crate::bitmap_view::Kernels::range_pass`]), the state in registers,
//! and a block stops reading slices as soon as none of its users still
//! equals an end on the bits seen. The containers are read in place from
//! the index's portable serialization, made on the first range after a
//! change and kept until the next one, beside which the large array
//! containers of slices are kept written out once compared.
//!
//! [`Bsi::range`] runs every chunk, in parallel, each chunk's users
//! becoming a bitmap on the thread that found them. [`Bsi::scan`] keeps a
//! range for the chunk evaluator ([`RangeScan`]): it compares a chunk
//! among the users it still holds there ([`ScanViews::chunk`]), so a
//! block none of them is in reads no slice.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rayon::prelude::*;
use roaring::RoaringBitmap;

use crate::bitmap_view::{
    BitmapView, Container, Kernels, Words, CHUNK_WORDS, RANGE_DROP, RANGE_HI, RANGE_KEEP, RANGE_LO,
};

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
    /// Per part and container, the container written out as a bitmap's
    /// bytes, for the large array containers of slices a range compares
    /// (made on first use: writing one out costs about a nanosecond an
    /// element every time, reading it a cache line a block).
    dense: Vec<Vec<OnceLock<Box<[u8; BYTES]>>>>,
    /// Whether every part parsed when it was made.
    parsed: bool,
}

/// An array container of a slice with at least this many values is kept
/// written out once compared ([`Frozen::dense`]): at most four times its
/// own bytes.
const DENSE_MIN: usize = 1024;

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
        let mut frozen = Frozen {
            bytes,
            ends,
            dense: Vec::new(),
            parsed: false,
        };
        let dense: Option<Vec<Vec<_>>> = frozen.views().map(|views| {
            views
                .iter()
                .map(|v| (0..v.containers()).map(|_| OnceLock::new()).collect())
                .collect()
        });
        if let Some(dense) = dense {
            frozen.dense = dense;
            frozen.parsed = true;
        }
        frozen
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

/// Buffers of [`range_chunk`], reused chunk to chunk on a thread.
struct State {
    /// `has` in the chunk, when it is not a bitmap container.
    has: Box<[u8; BYTES]>,
    /// The users with a bit set in the top slices that neither end has
    /// (see [`range_chunk`]).
    high: Box<[u8; BYTES]>,
    /// The slices that are not bitmaps (arrays, runs), written out.
    scratch: Vec<Box<[u8; BYTES]>>,
    /// Each compared slice's end bits, two masks a slice.
    ends: Vec<u64>,
}

/// A container's bytes when it is a bitmap.
const BYTES: usize = CHUNK_WORDS * 8;

/// No member in the chunk.
static ZERO: [u8; BYTES] = [0; BYTES];

impl State {
    fn new() -> Box<State> {
        Box::new(State {
            has: Box::new([0; BYTES]),
            high: Box::new([0; BYTES]),
            scratch: Vec::new(),
            ends: Vec::new(),
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

/// `c` written out as a bitmap container's bytes.
fn write_bytes(c: &Container<'_>, out: &mut [u8; BYTES]) {
    let mut w = [0u64; CHUNK_WORDS];
    c.write_into(&mut w);
    for (b, w) in out.chunks_exact_mut(8).zip(&w) {
        b.copy_from_slice(&w.to_le_bytes());
    }
}

/// What [`range_chunk`] does with the words it is given.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Mode {
    /// They are ignored and become the chunk's users in the range.
    Write,
    /// They are users; those in the range are kept.
    Keep,
    /// They are users; those in the range are dropped.
    Drop,
}

/// The users of one chunk with `lo <= value - base <= hi` (offsets; an
/// end `None`: none): with [`Mode::Write`], written into `words`; with
/// [`Mode::Keep`] or [`Mode::Drop`], `words` are users and those in the
/// range are kept or dropped. How many users `words` then hold. `has` is
/// the chunk's container of users with a value, `slices` each slice's
/// container there.
///
/// Slices from the top down where neither end has a one bit and that hold
/// few users (arrays) only name users above both ends: they are gathered
/// once (`high`). The other slices are compared top first by
/// [`Kernels::range_pass`], block by block (8 words, one cache line of
/// each slice), the comparison's state in registers: a block stops
/// reading slices as soon as none of its users still equals an end, and a
/// block with no user to compare reads none.
fn range_chunk<'d>(
    has: Container<'_>,
    slices: &[Option<Container<'_>>],
    dense: &dyn Fn(usize) -> Option<&'d [u8; BYTES]>,
    (lo, hi): (Option<u64>, Option<u64>),
    words: &mut Words,
    mode: Mode,
    st: &mut State,
) -> u32 {
    let has: &[u8; BYTES] = match has {
        Container::Bitmap(b) => <&[u8; BYTES]>::try_from(b.bytes()).unwrap_or(&ZERO),
        c => {
            write_bytes(&c, &mut st.has);
            &st.has
        }
    };
    let mut rest = slices.len();
    let mut any_high = false;
    while rest > 0 {
        let i = rest - 1;
        let a = match &slices[i] {
            _ if mask_of(hi, i) != 0 || mask_of(lo, i) != 0 => break,
            None => None,
            Some(Container::Array(a)) => Some(a),
            Some(_) => break,
        };
        rest = i;
        if let Some(a) = a {
            if !any_high {
                st.high.fill(0);
                any_high = true;
            }
            for v in a.iter() {
                st.high[usize::from(v >> 3)] |= 1 << (v & 7);
            }
        }
    }
    // The other containers written out (or kept so: `dense`).
    let kept: Vec<Option<&[u8; BYTES]>> = (0..rest)
        .map(|i| match &slices[i] {
            Some(Container::Bitmap(_)) | None => None,
            Some(_) => dense(i),
        })
        .collect();
    let mut used = 0;
    for (c, k) in slices[..rest].iter().zip(&kept) {
        if let (Some(c), None) = (c, k) {
            if !matches!(c, Container::Bitmap(_)) {
                if st.scratch.len() == used {
                    st.scratch.push(Box::new([0; BYTES]));
                }
                write_bytes(c, &mut st.scratch[used]);
                used += 1;
            }
        }
    }
    // Written bottom up; read top first.
    let mut written = st.scratch[..used].iter().rev();
    let mut srcs: Vec<&[u8]> = Vec::with_capacity(rest);
    st.ends.clear();
    for (i, c) in slices[..rest].iter().enumerate().rev() {
        srcs.push(match (c, kept[i]) {
            (None, _) => &ZERO,
            (Some(Container::Bitmap(b)), _) => b.bytes(),
            (Some(_), Some(k)) => &k[..],
            (Some(_), None) => written.next().map_or(&ZERO[..], |b| &b[..]),
        });
        st.ends.push(mask_of(hi, i));
        st.ends.push(mask_of(lo, i));
    }
    let high: &[u8] = if any_high { &st.high[..] } else { &[] };
    let mut how = match mode {
        Mode::Write => 0,
        Mode::Keep => RANGE_KEEP,
        Mode::Drop => RANGE_DROP,
    };
    if hi.is_some() {
        how |= RANGE_HI;
    }
    if lo.is_some() {
        how |= RANGE_LO;
    }
    Kernels::active().range_pass(has, high, &srcs, &st.ends, words, how)
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
                let mut words = [0u64; CHUNK_WORDS];
                if range_chunk(
                    c,
                    &in_chunk,
                    &|_| None,
                    (lo, hi),
                    &mut words,
                    Mode::Write,
                    st,
                ) == 0
                {
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

/// What a range asks of the slices (see [`Bsi::ends`]).
enum Ends {
    Nobody,
    Has,
    Compare((Option<u64>, Option<u64>)),
}

/// A range over a bit-sliced index, evaluated where it is needed: chunk
/// by chunk and among the users an evaluator still holds there
/// ([`ScanViews::chunk`]), so a range ANDed with smaller sets reads only
/// the slices' cache lines that hold those users' bits, or whole (the
/// users, made once on first use). It holds the index's serialization
/// as it was, so later changes do not reach it.
pub struct RangeScan {
    frozen: Arc<Frozen>,
    /// `lo` and `hi` as offsets from the base.
    ends: (Option<u64>, Option<u64>),
    at_most: u64,
    users: OnceLock<RoaringBitmap>,
}

impl fmt::Debug for RangeScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RangeScan({:?} of {} users)", self.ends, self.at_most)
    }
}

impl RangeScan {
    /// Whether both select the same users: the same ends over the same
    /// serialization of the index.
    pub fn same(&self, other: &RangeScan) -> bool {
        Arc::ptr_eq(&self.frozen, &other.frozen) && self.ends == other.ends
    }

    /// The users with a value: at least as many as the range holds.
    pub fn at_most(&self) -> u64 {
        self.at_most
    }

    /// The index's parts read in place, for chunk by chunk evaluation.
    pub fn views(&self) -> ScanViews<'_> {
        // `Bsi::scan` parsed them once already.
        let views = self.frozen.views().unwrap_or_default();
        let (has, slices) = match views.split_first() {
            Some((has, slices)) => (*has, slices.to_vec()),
            None => (BitmapView::empty(), Vec::new()),
        };
        ScanViews {
            scan: self,
            has,
            slices,
        }
    }

    /// The users in the range, all of them (computed on first use).
    pub fn users(&self) -> &RoaringBitmap {
        self.users.get_or_init(|| {
            let v = self.views();
            range_views(&v.has, &v.slices, self.ends.0, self.ends.1)
        })
    }
}

/// A [`RangeScan`]'s bitmaps parsed.
#[derive(Clone)]
pub struct ScanViews<'a> {
    scan: &'a RangeScan,
    has: BitmapView<'a>,
    slices: Vec<BitmapView<'a>>,
}

/// Reusable buffers of [`ScanViews::chunk`], one per thread.
pub struct ScanState(Box<State>);

impl Default for ScanState {
    fn default() -> Self {
        ScanState(State::new())
    }
}

impl ScanViews<'_> {
    /// The users of chunk `key` in the range, as `mode` says (see
    /// [`Mode`]): written into `words`, or kept or dropped from them. How
    /// many users `words` then hold.
    pub fn chunk(&self, key: u16, words: &mut Words, mode: Mode, st: &mut ScanState) -> u32 {
        let Some(has) = self.has.container_for_key(key) else {
            return match mode {
                Mode::Write | Mode::Keep => {
                    words.fill(0);
                    0
                }
                Mode::Drop => words.iter().map(|w| w.count_ones()).sum(),
            };
        };
        let at: Vec<Option<usize>> = self.slices.iter().map(|s| s.find(key)).collect();
        let in_chunk: Vec<Option<Container<'_>>> = self
            .slices
            .iter()
            .zip(&at)
            .map(|(s, i)| i.map(|i| s.container(i)))
            .collect();
        // A large array is written out once and kept (part 0 is `has`).
        let dense = |j: usize| -> Option<&[u8; BYTES]> {
            let (i, c) = (at[j]?, in_chunk[j]?);
            match c {
                Container::Array(a) if a.len() >= DENSE_MIN => {
                    let kept = self.scan.frozen.dense.get(j + 1)?.get(i)?;
                    Some(&**kept.get_or_init(|| {
                        let mut b = Box::new([0; BYTES]);
                        write_bytes(&c, &mut b);
                        b
                    }))
                }
                _ => None,
            }
        };
        range_chunk(
            has,
            &in_chunk,
            &dense,
            self.scan.ends,
            words,
            mode,
            &mut st.0,
        )
    }

    /// Whether user `u`'s value is in the range.
    pub fn contains(&self, u: u32) -> bool {
        if !self.has.contains(u) {
            return false;
        }
        let v = self
            .slices
            .iter()
            .enumerate()
            .filter(|(_, s)| s.contains(u))
            .fold(0u64, |v, (i, _)| v | 1 << i);
        let (lo, hi) = self.scan.ends;
        lo.is_none_or(|l| v >= l) && hi.is_none_or(|h| v <= h)
    }

    /// The range's users, all of them ([`RangeScan::users`]).
    pub fn users(&self) -> &RoaringBitmap {
        self.scan.users()
    }
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

    /// What a range `lo..=hi` (an end `None`: unbounded) asks of the
    /// slices: nobody, every user with a value, or a comparison with
    /// these ends as offsets (an end every value meets dropped).
    fn ends(&self, lo: Option<i64>, hi: Option<i64>) -> Ends {
        if self.has.is_empty() {
            return Ends::Nobody;
        }
        let bits = self.slices.len();
        let top = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let lo = match lo {
            Some(l) if l > self.base => match offset(l, self.base) {
                o if o > top => return Ends::Nobody,
                o => Some(o),
            },
            _ => None,
        };
        let hi = match hi {
            Some(h) if h < self.base => return Ends::Nobody,
            Some(h) => Some(offset(h, self.base)).filter(|&o| o < top),
            None => None,
        };
        match (lo, hi) {
            (None, None) => Ends::Has,
            (Some(l), Some(h)) if l > h => Ends::Nobody,
            ends => Ends::Compare(ends),
        }
    }

    /// `has` and the slices serialized (made on the first range after a
    /// change).
    fn frozen(&self) -> Arc<Frozen> {
        self.frozen
            .get_or_init(|| {
                Arc::new(Frozen::of(
                    std::iter::once(&self.has).chain(self.slices.iter()),
                ))
            })
            .clone()
    }

    /// The users whose value lies in `lo..=hi` (an end `None`: unbounded).
    pub fn range(&self, lo: Option<i64>, hi: Option<i64>) -> RoaringBitmap {
        let (lo, hi) = match self.ends(lo, hi) {
            Ends::Nobody => return RoaringBitmap::new(),
            Ends::Has => return self.has.clone(),
            Ends::Compare(ends) => ends,
        };
        match self.frozen().views() {
            Some(views) => range_views(&views[0], &views[1..], lo, hi),
            None => self.range_by_bitmaps(lo, hi),
        }
    }

    /// The range `lo..=hi` (an end `None`: unbounded) kept for evaluating
    /// chunk by chunk ([`RangeScan`]), when it needs the slices compared
    /// (`None`: it selects nobody or every user with a value, which
    /// [`Self::range`] answers at once). Shares the index's serialization.
    pub fn scan(&self, lo: Option<i64>, hi: Option<i64>) -> Option<RangeScan> {
        let Ends::Compare(ends) = self.ends(lo, hi) else {
            return None;
        };
        let frozen = self.frozen();
        // Never fails for bytes `roaring` wrote; `range` falls back then.
        if !frozen.parsed {
            return None;
        }
        Some(RangeScan {
            frozen,
            ends,
            at_most: self.has.len(),
            users: OnceLock::new(),
        })
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

    /// Chunk `key` of `b` as words.
    fn chunk_words(b: &RoaringBitmap, key: u32) -> Words {
        let mut w = [0u64; CHUNK_WORDS];
        for u in b.range(key << 16..(key + 1) << 16) {
            let low = (u & 0xFFFF) as usize;
            w[low / 64] |= 1 << (low % 64);
        }
        w
    }

    proptest! {
        /// A range evaluated chunk by chunk (`RangeScan`), among random
        /// users of every density, kept or dropped: exactly a full scan's
        /// users there, twice (the second time through the large arrays
        /// written out by the first), and one user at a time.
        #[test]
        fn scans_agree_with_a_full_scan_among_any_users(
            sparse in prop::collection::vec(prop::option::of(0i64..5000), 0..400),
            dense in 0u32..2,
            seed in any::<u64>(),
            bounds in prop::collection::vec((prop::option::of(-10i64..5100), prop::option::of(-10i64..5100)), 1..6),
        ) {
            let mut b = Bsi::default();
            let mut m = BTreeMap::new();
            // Chunk 0: bitmap containers for the low slices, arrays of
            // over a thousand values for bit 12.
            for u in 0..dense * 20_000 {
                let v = i64::from(u.wrapping_mul(2_654_435_761) % 5000);
                b.set(u, v);
                m.insert(u, v);
            }
            // Chunk 1: arrays (and absent slices); chunk 2: one user.
            for (i, v) in sparse.iter().enumerate() {
                let u = 65_536 + 37 * i as u32;
                if let Some(v) = v {
                    b.set(u, *v);
                    m.insert(u, *v);
                }
            }
            b.set(140_000, 77);
            m.insert(140_000, 77);
            let mut r = seed | 1;
            let mut next = move || {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                r
            };
            for (lo, hi) in bounds {
                let want = scan(&m, lo, hi);
                let Some(sc) = b.scan(lo, hi) else {
                    prop_assert_eq!(b.range(lo, hi), want);
                    continue;
                };
                prop_assert!(sc.at_most() >= want.len());
                let views = sc.views();
                let mut st = ScanState::default();
                for _ in 0..2 {
                    for key in 0..3u32 {
                        let all = chunk_words(&want, key);
                        let mut w = [0u64; CHUNK_WORDS];
                        let n = views.chunk(key as u16, &mut w, Mode::Write, &mut st);
                        prop_assert_eq!(&w[..], &all[..]);
                        prop_assert_eq!(n, all.iter().map(|w| w.count_ones()).sum::<u32>());
                        // Users of no, few, half and every user.
                        for share in 0..4 {
                            let among: Words = std::array::from_fn(|_| match share {
                                0 => 0,
                                1 => next() & next() & next(),
                                2 => next(),
                                _ => u64::MAX,
                            });
                            for (mode, expect) in [
                                (Mode::Keep, std::array::from_fn::<u64, CHUNK_WORDS, _>(|i| among[i] & all[i])),
                                (Mode::Drop, std::array::from_fn(|i| among[i] & !all[i])),
                            ] {
                                let mut w = among;
                                let n = views.chunk(key as u16, &mut w, mode, &mut st);
                                prop_assert_eq!(&w[..], &expect[..], "{:?}", mode);
                                prop_assert_eq!(n, expect.iter().map(|w| w.count_ones()).sum::<u32>());
                            }
                        }
                    }
                }
                for &u in m.keys().chain([1u32, 65_537, 200_000].iter()) {
                    prop_assert_eq!(views.contains(u), want.contains(u), "user {}", u);
                }
                prop_assert_eq!(sc.users(), &want);
            }
        }

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

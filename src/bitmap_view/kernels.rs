//! The hot word kernels of the chunk evaluator, picked once at run time
//! for the CPU that is there: AVX-512, AVX2 or a portable version, with no
//! build flag.
//!
//! Each kernel is written once, as an `#[inline(always)]` body over plain
//! slices; the x86-64 modules instantiate every body inside a function
//! compiled with `#[target_feature(enable = ...)]`, so LLVM vectorises the
//! same code for each instruction set (512-bit vectors and `VPOPCNTQ`,
//! 256-bit vectors and a `VPSHUFB` popcount, or baseline SSE2), and BMI2
//! shifts set array bits. The multi-input count adds its blocks' popcounts
//! with carry-save adders ([`Tally`]) where popcount is a table lookup
//! (AVX2, portable); at AVX-512 it is written with explicit vectors, a
//! `VPOPCNTQ` per cache line (LLVM vectorised the shared body across
//! blocks there, gathering each word). The bucket masks use explicit
//! AVX-512BW compares (64 buckets give a 64-bit mask in two instructions).
//!
//! # Contract (why the `unsafe` here is sound)
//!
//! A [`Kernels`] value names one [`Level`], and one is only made for a
//! level whose every feature `is_x86_feature_detected!` found on this CPU
//! ([`Kernels::new`], [`Kernels::active`]). Calling a `#[target_feature]`
//! function is `unsafe` because it is undefined on a CPU without the
//! features; every such call below goes through a [`Kernels`] of that level,
//! so the features were detected. Apart from that, the only `unsafe` is
//! the unaligned vector loads and stores of the explicit AVX-512 kernels,
//! each inside a slice checked to hold the bytes it moves.
//!
//! `SEGQ_KERNELS=portable` (or `avx2`) caps the level [`Kernels::active`]
//! picks, to compare the paths on a real workload; a level the CPU lacks is
//! never picked.

use std::sync::OnceLock;

use super::Words;

/// An instruction-set level of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain Rust for the build's baseline target.
    Portable,
    /// AVX2, BMI1/2, POPCNT, LZCNT.
    Avx2,
    /// AVX-512 F/BW/VL/VPOPCNTDQ on top of [`Level::Avx2`].
    Avx512,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    /// The level's name, as `SEGQ_KERNELS` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Whether this CPU has every feature the level is compiled for.
    pub fn detected(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("bmi1")
                    && std::is_x86_feature_detected!("bmi2")
                    && std::is_x86_feature_detected!("popcnt")
                    && std::is_x86_feature_detected!("lzcnt")
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Level::Avx2.detected()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vpopcntdq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The kernels of one [`Level`] the CPU has (see the module's contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernels {
    level: Level,
}

impl Kernels {
    /// The portable kernels (every CPU).
    pub const PORTABLE: Kernels = Kernels {
        level: Level::Portable,
    };

    /// The kernels of `level`, if this CPU has its features.
    pub fn new(level: Level) -> Option<Kernels> {
        level.detected().then_some(Kernels { level })
    }

    /// The highest level this CPU has, capped by `SEGQ_KERNELS` (a level
    /// name); detected once per process.
    pub fn active() -> Kernels {
        static ACTIVE: OnceLock<Kernels> = OnceLock::new();
        *ACTIVE.get_or_init(|| Kernels::pick(std::env::var("SEGQ_KERNELS").ok().as_deref()))
    }

    /// The highest level this CPU has at or below the level named `cap`
    /// (no cap, or a name that is no level: the highest it has).
    pub fn pick(cap: Option<&str>) -> Kernels {
        let cap = cap
            .and_then(|v| Level::ALL.into_iter().find(|l| l.name() == v.trim()))
            .unwrap_or(Level::Avx512);
        Level::ALL
            .into_iter()
            .rev()
            .filter(|&l| l <= cap)
            .find_map(Kernels::new)
            .unwrap_or(Kernels::PORTABLE)
    }

    /// Every level this CPU has, lowest first.
    pub fn available() -> Vec<Kernels> {
        Level::ALL.into_iter().filter_map(Kernels::new).collect()
    }

    /// The level.
    pub fn level(self) -> Level {
        self.level
    }
}

#[inline(always)]
fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

/// Words per block of the multi-input kernels: the block's running value
/// stays in registers while each input is read once. Their inputs are
/// whole bitmap containers, or the same window of each: a window's words
/// must be a multiple of it.
pub const BLOCK: usize = 16;

/// How a kernel adds up the popcounts of its blocks of [`BLOCK`] words
/// without summing across a vector's lanes at every block (that sum, a
/// chain of shuffles, cost more than the block's AND).
pub(crate) trait Tally: Default {
    fn add(&mut self, block: &[u64; BLOCK]);
    fn total(&self) -> u32;
}

/// A quarter of a block: one 256-bit vector.
type Quad = [u64; 4];

const _: () = assert!(BLOCK == 16, "CarrySave adds a block as four quads");

/// Harley–Seal carry-save adding: a block's four quads go through a tree
/// of full adders (ones, twos, fours) and only the fours are popcounted,
/// one popcount per block instead of four: for CPUs whose popcount is a
/// table lookup per byte (AVX2's VPSHUFB, or the portable bit tricks).
#[derive(Default)]
pub(crate) struct CarrySave {
    ones: Quad,
    twos: Quad,
    fours: Quad,
}

/// A full adder per bit: `(carry, sum)` of `a + b + c`.
#[inline(always)]
fn csa(a: Quad, b: Quad, c: Quad) -> (Quad, Quad) {
    let mut carry = [0; 4];
    let mut sum = [0; 4];
    for i in 0..4 {
        let u = a[i] ^ b[i];
        sum[i] = u ^ c[i];
        carry[i] = (a[i] & b[i]) | (u & c[i]);
    }
    (carry, sum)
}

#[inline(always)]
fn quad(block: &[u64; BLOCK], i: usize) -> Quad {
    [
        block[4 * i],
        block[4 * i + 1],
        block[4 * i + 2],
        block[4 * i + 3],
    ]
}

impl Tally for CarrySave {
    #[inline(always)]
    fn add(&mut self, block: &[u64; BLOCK]) {
        let (twos_a, ones) = csa(self.ones, quad(block, 0), quad(block, 1));
        let (twos_b, ones) = csa(ones, quad(block, 2), quad(block, 3));
        let (fours, twos) = csa(self.twos, twos_a, twos_b);
        self.ones = ones;
        self.twos = twos;
        for (f, x) in self.fours.iter_mut().zip(fours) {
            *f += u64::from(x.count_ones());
        }
    }

    #[inline(always)]
    fn total(&self) -> u32 {
        let pop = |q: &Quad| q.iter().map(|x| u64::from(x.count_ones())).sum::<u64>();
        (4 * self.fours.iter().sum::<u64>() + 2 * pop(&self.twos) + pop(&self.ones)) as u32
    }
}

/// Words a block of [`Kernels::range_pass`]: one cache line of each
/// slice, one 512-bit vector. (16, 32 and 64 words were each slower on the
/// medium workload's ranges: the state leaves the registers and a block
/// stops later.)
pub const RANGE_BLOCK: usize = 8;

/// [`Kernels::range_pass`]'s `how`: the range has an upper end.
pub const RANGE_HI: u32 = 1;
/// [`Kernels::range_pass`]'s `how`: the range has a lower end.
pub const RANGE_LO: u32 = 2;
/// [`Kernels::range_pass`]'s `how`: `words` are users, those in the range
/// are kept (else they are ignored and become the users in the range).
pub const RANGE_KEEP: u32 = 4;
/// [`Kernels::range_pass`]'s `how`: `words` are users, those in the range
/// are dropped.
pub const RANGE_DROP: u32 = 8;

/// `$f::<HI, LO>(args)`, the block pass compiled for the ends `$how`
/// names ([`RANGE_HI`], [`RANGE_LO`]).
macro_rules! by_ends {
    ($how:expr, $f:ident($($arg:expr),*)) => {
        match ($how & RANGE_HI != 0, $how & RANGE_LO != 0) {
            (true, true) => $f::<true, true>($($arg),*),
            (true, false) => $f::<true, false>($($arg),*),
            (false, true) => $f::<false, true>($($arg),*),
            (false, false) => $f::<false, false>($($arg),*),
        }
    };
}

/// The kernel bodies, each compiled once per level.
mod body {
    use super::{le64, CarrySave, Tally, Words, BLOCK};
    use super::{RANGE_BLOCK, RANGE_DROP, RANGE_HI, RANGE_KEEP, RANGE_LO};

    #[inline(always)]
    fn line(bytes: &[u8], b: usize) -> [u64; RANGE_BLOCK] {
        // One bounds check and one vector load for the whole line.
        const LINE: usize = 8 * RANGE_BLOCK;
        let at = LINE * b;
        let line: &[u8; LINE] = match bytes[at..at + LINE].try_into() {
            Ok(line) => line,
            Err(_) => unreachable!("a range of LINE bytes"),
        };
        std::array::from_fn(|k| le64(&line[8 * k..8 * k + 8]))
    }

    #[inline(always)]
    pub fn range_pass(
        has: &[u8],
        high: &[u8],
        slices: &[&[u8]],
        ends: &[u64],
        words: &mut Words,
        how: u32,
    ) -> u32 {
        by_ends!(how, range_blocks(has, high, slices, ends, words, how))
    }

    #[inline(always)]
    fn range_blocks<const HI: bool, const LO: bool>(
        has: &[u8],
        high: &[u8],
        slices: &[&[u8]],
        ends: &[u64],
        words: &mut Words,
        how: u32,
    ) -> u32 {
        const B: usize = RANGE_BLOCK;
        let given_users = how & (RANGE_KEEP | RANGE_DROP) != 0;
        let mut count = 0;
        for b in 0..words.len() / B {
            let r = b * B..(b + 1) * B;
            let mut given = [0u64; B];
            given.copy_from_slice(&words[r.clone()]);
            if given_users && given == [0; B] {
                // Nobody to keep or drop: the words stay empty.
                continue;
            }
            let mut h = line(has, b);
            if given_users {
                for k in 0..B {
                    h[k] &= given[k];
                }
            }
            let u = if high.is_empty() {
                [0; B]
            } else {
                line(high, b)
            };
            // Users with a bit above both ends are above both: out of
            // the range when it has an upper end, in it otherwise.
            let mut eh = [0u64; B];
            let mut bh = [0u64; B];
            let mut el = [0u64; B];
            let mut al = [0u64; B];
            for k in 0..B {
                if HI {
                    eh[k] = h[k] & !u[k];
                } else {
                    bh[k] = h[k];
                }
                if LO {
                    el[k] = h[k] & !u[k];
                    al[k] = h[k] & u[k];
                } else {
                    al[k] = h[k];
                }
            }
            for (bytes, m) in slices.iter().zip(ends.chunks_exact(2)) {
                let live = (0..B).fold(0, |a, k| {
                    a | if HI { eh[k] } else { 0 } | if LO { el[k] } else { 0 }
                });
                if live == 0 {
                    break;
                }
                let x = line(bytes, b);
                let (hm, lm) = (m[0], m[1]);
                for k in 0..B {
                    // A one bit of an end keeps the users with the bit in
                    // its `eq`; a zero bit those without. Below the upper
                    // end: equal so far, its bit one and theirs zero;
                    // above the lower: equal so far, its bit zero and
                    // theirs one.
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
                let inside = (bh[k] | eh[k]) & (al[k] | el[k]);
                let w = if how & RANGE_DROP != 0 {
                    given[k] & !inside
                } else {
                    inside
                };
                words[b * B + k] = w;
                count += w.count_ones();
            }
        }
        count
    }

    #[inline(always)]
    pub fn popcount(w: &Words) -> u32 {
        window_popcount(w)
    }

    #[inline(always)]
    pub fn window_popcount(w: &[u64]) -> u32 {
        w.iter().map(|x| x.count_ones()).sum()
    }

    #[inline(always)]
    pub fn window_and_count(w: &[u64], x: &[u64]) -> u32 {
        w.iter().zip(x).map(|(a, b)| (a & b).count_ones()).sum()
    }

    #[inline(always)]
    pub fn window_and_bytes(out: &mut [u64], c: &[u8]) -> u64 {
        let mut any = 0;
        for (o, b) in out.iter_mut().zip(c.chunks_exact(8)) {
            *o &= le64(b);
            any |= *o;
        }
        any
    }

    #[inline(always)]
    pub fn bitmap_copy(out: &mut Words, c: &[u8]) {
        for (o, b) in out.iter_mut().zip(c.chunks_exact(8)) {
            *o = le64(b);
        }
    }

    #[inline(always)]
    pub fn bitmap_and(out: &mut Words, c: &[u8]) {
        for (o, b) in out.iter_mut().zip(c.chunks_exact(8)) {
            *o &= le64(b);
        }
    }

    #[inline(always)]
    pub fn bitmap_or(out: &mut Words, c: &[u8]) {
        for (o, b) in out.iter_mut().zip(c.chunks_exact(8)) {
            *o |= le64(b);
        }
    }

    #[inline(always)]
    pub fn bitmap_andnot(out: &mut Words, c: &[u8]) {
        for (o, b) in out.iter_mut().zip(c.chunks_exact(8)) {
            *o &= !le64(b);
        }
    }

    #[inline(always)]
    pub fn bitmap_and_count(w: &Words, c: &[u8]) -> u32 {
        w.iter()
            .zip(c.chunks_exact(8))
            .map(|(o, b)| (o & le64(b)).count_ones())
            .sum()
    }

    #[inline(always)]
    pub fn bitmap_or_count(w: &Words, c: &[u8]) -> u32 {
        w.iter()
            .zip(c.chunks_exact(8))
            .map(|(o, b)| (o | le64(b)).count_ones())
            .sum()
    }

    #[inline(always)]
    pub fn bitmap_andnot_count(w: &Words, c: &[u8]) -> u32 {
        w.iter()
            .zip(c.chunks_exact(8))
            .map(|(o, b)| (o & !le64(b)).count_ones())
            .sum()
    }

    /// Popcount of `AND(all) & !OR(minus)`, a block of words at a time.
    #[inline(always)]
    pub fn bitmaps_count(all: &[&[u8]], minus: &[&[u8]]) -> u32 {
        bitmaps_count_by::<CarrySave>(all, minus)
    }

    #[inline(always)]
    fn bitmaps_count_by<T: Tally>(all: &[&[u8]], minus: &[&[u8]]) -> u32 {
        let Some((first, rest)) = all.split_first() else {
            return 0;
        };
        let mut n = T::default();
        // Two inputs of one length, the commonest: one stream of pairs,
        // with no per-block look-ups of the other inputs.
        if let ([c], []) = (rest, minus) {
            if c.len() == first.len() {
                for (f, c) in first.chunks_exact(8 * BLOCK).zip(c.chunks_exact(8 * BLOCK)) {
                    let mut acc = [0u64; BLOCK];
                    for ((a, x), y) in acc.iter_mut().zip(f.chunks_exact(8)).zip(c.chunks_exact(8))
                    {
                        *a = le64(x) & le64(y);
                    }
                    n.add(&acc);
                }
                return n.total();
            }
        }
        for (k, f) in first.chunks_exact(8 * BLOCK).enumerate() {
            let mut acc = [0u64; BLOCK];
            for (a, b) in acc.iter_mut().zip(f.chunks_exact(8)) {
                *a = le64(b);
            }
            let at = k * 8 * BLOCK..(k + 1) * 8 * BLOCK;
            for c in rest {
                let Some(c) = c.get(at.clone()) else { continue };
                for (a, b) in acc.iter_mut().zip(c.chunks_exact(8)) {
                    *a &= le64(b);
                }
            }
            for c in minus {
                let Some(c) = c.get(at.clone()) else { continue };
                for (a, b) in acc.iter_mut().zip(c.chunks_exact(8)) {
                    *a &= !le64(b);
                }
            }
            n.add(&acc);
        }
        n.total()
    }

    /// `out |= OR(cs)`, a block of words at a time.
    #[inline(always)]
    pub fn bitmaps_or(out: &mut Words, cs: &[&[u8]]) {
        for (k, o) in out.chunks_exact_mut(BLOCK).enumerate() {
            let mut acc = [0u64; BLOCK];
            acc.copy_from_slice(o);
            let at = k * 8 * BLOCK..(k + 1) * 8 * BLOCK;
            for c in cs {
                let Some(c) = c.get(at.clone()) else { continue };
                for (a, b) in acc.iter_mut().zip(c.chunks_exact(8)) {
                    *a |= le64(b);
                }
            }
            o.copy_from_slice(&acc);
        }
    }

    #[inline(always)]
    pub fn words_and(out: &mut Words, x: &Words) {
        out.iter_mut().zip(x).for_each(|(o, x)| *o &= x);
    }

    #[inline(always)]
    pub fn words_or(out: &mut Words, x: &Words) {
        out.iter_mut().zip(x).for_each(|(o, x)| *o |= x);
    }

    #[inline(always)]
    pub fn words_andnot(out: &mut Words, x: &Words) {
        out.iter_mut().zip(x).for_each(|(o, x)| *o &= !x);
    }

    #[inline(always)]
    pub fn words_not_within(out: &mut Words, universe: &Words) {
        out.iter_mut().zip(universe).for_each(|(o, m)| *o = !*o & m);
    }

    #[inline(always)]
    pub fn words_and_count(w: &Words, x: &Words) -> u32 {
        w.iter().zip(x).map(|(a, b)| (a & b).count_ones()).sum()
    }

    #[inline(always)]
    pub fn words_or_count(w: &Words, x: &Words) -> u32 {
        w.iter().zip(x).map(|(a, b)| (a | b).count_ones()).sum()
    }

    #[inline(always)]
    pub fn words_andnot_count(w: &Words, x: &Words) -> u32 {
        w.iter().zip(x).map(|(a, b)| (a & !b).count_ones()).sum()
    }

    /// Sets the bits of an array container's values (little-endian u16s),
    /// four values per 8-byte load. The two halves of the array go in
    /// turn: consecutive values often share a word, and interleaving two
    /// far-apart streams gives the read-modify-writes of one word time to
    /// complete (about 10% faster than one stream; four streams were
    /// slower).
    #[inline(always)]
    pub fn array_or(out: &mut Words, a: &[u8]) {
        #[inline(always)]
        fn set4(out: &mut Words, x: u64) {
            for k in 0..4 {
                let v = (x >> (16 * k)) as u16;
                out[usize::from(v >> 6)] |= 1u64 << (v & 63);
            }
        }
        let half = a.len() / 16 * 8;
        let (p, q) = a.split_at(half);
        let mut qs = q.chunks_exact(8);
        for (x, y) in p.chunks_exact(8).zip(&mut qs) {
            set4(out, le64(x));
            set4(out, le64(y));
        }
        for y in &mut qs {
            set4(out, le64(y));
        }
        for v in qs.remainder().chunks_exact(2) {
            let v = u16::from_le_bytes([v[0], v[1]]);
            out[usize::from(v >> 6)] |= 1u64 << (v & 63);
        }
    }

    #[inline(always)]
    pub fn array_andnot(out: &mut Words, a: &[u8]) {
        let mut quads = a.chunks_exact(8);
        for q in &mut quads {
            let x = le64(q);
            for k in 0..4 {
                let v = (x >> (16 * k)) as u16;
                out[usize::from(v >> 6)] &= !(1u64 << (v & 63));
            }
        }
        for v in quads.remainder().chunks_exact(2) {
            let v = u16::from_le_bytes([v[0], v[1]]);
            out[usize::from(v >> 6)] &= !(1u64 << (v & 63));
        }
    }

    /// How many of an array container's values are set in `w`
    /// (branch-free bit tests).
    #[inline(always)]
    pub fn array_count_in(w: &Words, a: &[u8]) -> u32 {
        let mut n = 0u32;
        let mut quads = a.chunks_exact(8);
        for q in &mut quads {
            let x = le64(q);
            for k in 0..4 {
                let v = (x >> (16 * k)) as u16;
                n += (w[usize::from(v >> 6)] >> (v & 63)) as u32 & 1;
            }
        }
        for v in quads.remainder().chunks_exact(2) {
            let v = u16::from_le_bytes([v[0], v[1]]);
            n += (w[usize::from(v >> 6)] >> (v & 63)) as u32 & 1;
        }
        n
    }

    /// Bit `j` of the result: whether `lo <= block[j] <= lo + span`
    /// (wrapping subtraction turns the two comparisons into one).
    ///
    /// User `j = 8 k + i` becomes bit `k` of byte `j`; ORing the eight
    /// 8-byte groups gives byte `i` bit `k` = user `8 k + i`, and the
    /// transpose moves it to bit `8 k + i`. Written this way (a byte
    /// array, constant shifts) the compiler keeps it in SIMD registers up
    /// to the transpose.
    #[inline(always)]
    pub fn mask(block: &[u16], lo: u16, span: u16) -> u64 {
        let mut bytes = [0u8; 64];
        for (j, (b, &x)) in bytes.iter_mut().zip(block).enumerate() {
            *b = u8::from(x.wrapping_sub(lo) <= span) << (j / 8);
        }
        let mut u = 0;
        for eight in bytes.chunks_exact(8) {
            u |= le64(eight);
        }
        transpose8(u)
    }

    /// Transposes a word as an 8x8 bit matrix: bit `8 r + c` goes to bit
    /// `8 c + r` (three rounds of swapping blocks, Hacker's Delight 7-3).
    #[inline(always)]
    pub fn transpose8(mut x: u64) -> u64 {
        let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
        x ^= t ^ (t << 7);
        let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
        x ^= t ^ (t << 14);
        let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
        x ^ t ^ (t << 28)
    }

    /// `out[i] = mask(buckets[64 i..64 i + 64])`; the bits set.
    #[inline(always)]
    pub fn bucket_masks(buckets: &[u16], lo: u16, span: u16, out: &mut [u64]) -> u32 {
        let mut n = 0;
        for (o, b) in out.iter_mut().zip(buckets.chunks_exact(64)) {
            *o = mask(b, lo, span);
            n += o.count_ones();
        }
        n
    }

    /// `out[i] &= mask(buckets[64 i..64 i + 64]) ^ flip`; the bits left.
    #[inline(always)]
    pub fn bucket_masks_and(
        buckets: &[u16],
        lo: u16,
        span: u16,
        flip: u64,
        out: &mut [u64],
    ) -> u32 {
        let mut n = 0;
        for (o, b) in out.iter_mut().zip(buckets.chunks_exact(64)) {
            *o &= mask(b, lo, span) ^ flip;
            n += o.count_ones();
        }
        n
    }
}

/// [`Kernels::bitmaps_count`] on 512-bit vectors, a cache line of each
/// input per register. The portable body compiled for this level was seen
/// vectorised across blocks instead (each word of eight blocks gathered
/// into one register), slower than plain loads.
#[cfg(target_arch = "x86_64")]
mod avx512_count {
    use super::BLOCK;
    use std::arch::x86_64::{
        __m512i, _mm512_add_epi64, _mm512_and_si512, _mm512_andnot_si512, _mm512_loadu_si512,
        _mm512_popcnt_epi64, _mm512_reduce_add_epi64, _mm512_setzero_si512,
    };

    /// Bytes of a line: one register.
    const LINE: usize = 64;
    /// Bytes of a block (of [`BLOCK`] words): the body's unit, kept so
    /// that an input too short for a block is skipped as the body skips it.
    const BYTES: usize = 8 * BLOCK;
    const _: () = assert!(BYTES == 2 * LINE);

    /// The two lines of the block at `at` in `b`, if `b` holds it.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn block(b: &[u8], at: usize) -> Option<(__m512i, __m512i)> {
        let l = b.get(at..at + BYTES)?;
        let p = l.as_ptr().cast::<__m512i>();
        // SAFETY: `l` is 128 bytes: both 64-byte unaligned loads are
        // inside it.
        Some(unsafe { (_mm512_loadu_si512(p), _mm512_loadu_si512(p.add(1))) })
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    pub fn bitmaps_count(all: &[&[u8]], minus: &[&[u8]]) -> u32 {
        let Some((first, rest)) = all.split_first() else {
            return 0;
        };
        let mut total = _mm512_setzero_si512();
        let blocks = first.len() / BYTES;
        // Two inputs of one length, the commonest: no per-block look-up
        // of the other inputs.
        if let ([c], []) = (rest, minus) {
            if c.len() == first.len() {
                for at in (0..blocks).map(|b| b * BYTES) {
                    if let (Some((a0, a1)), Some((c0, c1))) = (block(first, at), block(c, at)) {
                        let x = _mm512_popcnt_epi64(_mm512_and_si512(a0, c0));
                        let y = _mm512_popcnt_epi64(_mm512_and_si512(a1, c1));
                        total = _mm512_add_epi64(total, _mm512_add_epi64(x, y));
                    }
                }
                return _mm512_reduce_add_epi64(total) as u32;
            }
        }
        for at in (0..blocks).map(|b| b * BYTES) {
            let Some((mut x, mut y)) = block(first, at) else {
                continue;
            };
            for c in rest {
                if let Some((c0, c1)) = block(c, at) {
                    x = _mm512_and_si512(x, c0);
                    y = _mm512_and_si512(y, c1);
                }
            }
            for c in minus {
                if let Some((c0, c1)) = block(c, at) {
                    x = _mm512_andnot_si512(c0, x);
                    y = _mm512_andnot_si512(c1, y);
                }
            }
            let n = _mm512_add_epi64(_mm512_popcnt_epi64(x), _mm512_popcnt_epi64(y));
            total = _mm512_add_epi64(total, n);
        }
        _mm512_reduce_add_epi64(total) as u32
    }
}

/// [`Kernels::range_pass`] on 512-bit vectors: a block (one cache line of
/// each slice) is one register, its "any user still undecided" test one
/// mask instruction. The portable body, compiled for this level, keeps
/// the block as eight words and splits it over narrower registers.
#[cfg(target_arch = "x86_64")]
mod avx512_range {
    use super::{Words, RANGE_BLOCK, RANGE_DROP, RANGE_HI, RANGE_KEEP, RANGE_LO};
    use std::arch::x86_64::{
        __m512i, _mm512_add_epi64, _mm512_and_si512, _mm512_andnot_si512, _mm512_loadu_si512,
        _mm512_or_si512, _mm512_popcnt_epi64, _mm512_reduce_add_epi64, _mm512_set1_epi64,
        _mm512_setzero_si512, _mm512_storeu_si512, _mm512_test_epi64_mask, _mm512_xor_si512,
    };

    /// Bytes of a block's line.
    const LINE: usize = 8 * RANGE_BLOCK;
    // A block is one 512-bit register.
    const _: () = assert!(LINE == 64);

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn line(bytes: &[u8], b: usize) -> __m512i {
        let l = &bytes[LINE * b..LINE * b + LINE];
        // SAFETY: `l` is 64 bytes, the width of the unaligned load.
        unsafe { _mm512_loadu_si512(l.as_ptr().cast::<__m512i>()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn any(x: __m512i) -> bool {
        _mm512_test_epi64_mask(x, x) != 0
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    pub fn range_pass(
        has: &[u8],
        high: &[u8],
        slices: &[&[u8]],
        ends: &[u64],
        words: &mut Words,
        how: u32,
    ) -> u32 {
        by_ends!(how, blocks(has, high, slices, ends, words, how))
    }

    /// The portable body's steps (see its comments), a block per register.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    fn blocks<const HI: bool, const LO: bool>(
        has: &[u8],
        high: &[u8],
        slices: &[&[u8]],
        ends: &[u64],
        words: &mut Words,
        how: u32,
    ) -> u32 {
        let given_users = how & (RANGE_KEEP | RANGE_DROP) != 0;
        let drop = how & RANGE_DROP != 0;
        let zero = _mm512_setzero_si512();
        let mut total = zero;
        for (b, out) in words.chunks_exact_mut(RANGE_BLOCK).enumerate() {
            // SAFETY: `out` is RANGE_BLOCK words, 64 bytes, the width of
            // the unaligned load (and of the store below).
            let given = unsafe { _mm512_loadu_si512(out.as_ptr().cast::<__m512i>()) };
            if given_users && !any(given) {
                // Nobody to keep or drop: the words stay empty.
                continue;
            }
            let mut h = line(has, b);
            if given_users {
                h = _mm512_and_si512(h, given);
            }
            let u = if high.is_empty() { zero } else { line(high, b) };
            let (mut eh, mut bh) = if HI {
                (_mm512_andnot_si512(u, h), zero)
            } else {
                (zero, h)
            };
            let (mut el, mut al) = if LO {
                (_mm512_andnot_si512(u, h), _mm512_and_si512(h, u))
            } else {
                (zero, h)
            };
            for (bytes, m) in slices.iter().zip(ends.chunks_exact(2)) {
                if !any(_mm512_or_si512(eh, el)) {
                    break;
                }
                let x = line(bytes, b);
                if HI {
                    let hm = _mm512_set1_epi64(m[0] as i64);
                    bh = _mm512_or_si512(bh, _mm512_and_si512(_mm512_andnot_si512(x, eh), hm));
                    eh = _mm512_andnot_si512(_mm512_xor_si512(x, hm), eh);
                }
                if LO {
                    let lm = _mm512_set1_epi64(m[1] as i64);
                    al = _mm512_or_si512(al, _mm512_andnot_si512(lm, _mm512_and_si512(el, x)));
                    el = _mm512_andnot_si512(_mm512_xor_si512(x, lm), el);
                }
            }
            let inside = _mm512_and_si512(_mm512_or_si512(bh, eh), _mm512_or_si512(al, el));
            let w = if drop {
                _mm512_andnot_si512(inside, given)
            } else {
                inside
            };
            // SAFETY: as for the load above.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast::<__m512i>(), w) };
            total = _mm512_add_epi64(total, _mm512_popcnt_epi64(w));
        }
        _mm512_reduce_add_epi64(total) as u32
    }
}

/// The AVX-512BW bucket masks: one unsigned compare of 32 buckets gives 32
/// bits in user order, no transpose.
#[cfg(target_arch = "x86_64")]
mod avx512_buckets {
    use std::arch::x86_64::{
        __m512i, _mm512_cmple_epu16_mask, _mm512_loadu_si512, _mm512_set1_epi16, _mm512_sub_epi16,
    };

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn mask(b: &[u16], lo: __m512i, span: __m512i) -> u64 {
        debug_assert_eq!(b.len(), 64);
        let p = b.as_ptr();
        // SAFETY: `b` holds 64 u16s (the callers pass `chunks_exact(64)`
        // items), 128 bytes: both 64-byte unaligned loads are inside it. The
        // callers are compiled with avx512f and avx512bw (see the module's
        // contract).
        let (x, y) = unsafe {
            (
                _mm512_loadu_si512(p.cast::<__m512i>()),
                _mm512_loadu_si512(p.add(32).cast::<__m512i>()),
            )
        };
        let mx = _mm512_cmple_epu16_mask(_mm512_sub_epi16(x, lo), span);
        let my = _mm512_cmple_epu16_mask(_mm512_sub_epi16(y, lo), span);
        u64::from(mx) | u64::from(my) << 32
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn splat(v: u16) -> __m512i {
        _mm512_set1_epi16(v as i16)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub fn bucket_masks(buckets: &[u16], lo: u16, span: u16, out: &mut [u64]) -> u32 {
        let (l, s) = (splat(lo), splat(span));
        let mut n = 0;
        for (o, b) in out.iter_mut().zip(buckets.chunks_exact(64)) {
            *o = mask(b, l, s);
            n += o.count_ones();
        }
        n
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub fn bucket_masks_and(
        buckets: &[u16],
        lo: u16,
        span: u16,
        flip: u64,
        out: &mut [u64],
    ) -> u32 {
        let (l, s) = (splat(lo), splat(span));
        let mut n = 0;
        for (o, b) in out.iter_mut().zip(buckets.chunks_exact(64)) {
            *o &= mask(b, l, s) ^ flip;
            n += o.count_ones();
        }
        n
    }
}

/// Declares every kernel: the portable instance, one per x86-64 level
/// (the same body compiled with the level's features, or an override),
/// and the [`Kernels`] method that dispatches on the level.
macro_rules! kernels {
    ($(
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?
            $(=> avx512: $avx512:path)?;
    )*) => {
        #[cfg(target_arch = "x86_64")]
        mod avx2 {
            use super::*;
            $(
                #[target_feature(enable = "avx2,bmi1,bmi2,popcnt,lzcnt")]
                pub fn $name($($arg: $ty),*) $(-> $ret)? {
                    body::$name($($arg),*)
                }
            )*
        }

        #[cfg(target_arch = "x86_64")]
        mod avx512 {
            use super::*;
            $(
                #[target_feature(
                    enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx2,bmi1,bmi2,popcnt,lzcnt"
                )]
                pub fn $name($($arg: $ty),*) $(-> $ret)? {
                    let f = kernels!(@pick body::$name $(, $avx512)?);
                    f($($arg),*)
                }
            )*
        }

        impl Kernels {
            $(
                $(#[$doc])*
                #[inline]
                pub fn $name(self, $($arg: $ty),*) $(-> $ret)? {
                    match self.level {
                        Level::Portable => body::$name($($arg),*),
                        // SAFETY: a `Kernels` of this level exists only if
                        // the CPU has its features (`Kernels::new`).
                        #[cfg(target_arch = "x86_64")]
                        Level::Avx2 => unsafe { avx2::$name($($arg),*) },
                        // SAFETY: as above.
                        #[cfg(target_arch = "x86_64")]
                        Level::Avx512 => unsafe { avx512::$name($($arg),*) },
                        #[cfg(not(target_arch = "x86_64"))]
                        _ => body::$name($($arg),*),
                    }
                }
            )*
        }
    };
    (@pick $default:path) => { $default };
    (@pick $default:path, $over:path) => { $over };
}

kernels! {
    /// Popcount of a chunk bitset.
    fn popcount(w: &Words) -> u32;
    /// Popcount of a window (a slice of a chunk's words).
    fn window_popcount(w: &[u64]) -> u32;
    /// Popcount of `w & x`, two windows of one width.
    fn window_and_count(w: &[u64], x: &[u64]) -> u32;
    /// `out &=` the words of a bitmap container's window (`c`: their
    /// bytes, eight per word of `out`); the OR of the words left (0: the
    /// window is empty).
    fn window_and_bytes(out: &mut [u64], c: &[u8]) -> u64;
    /// `out = bitmap container` (its 8,192 bytes).
    fn bitmap_copy(out: &mut Words, c: &[u8]);
    /// `out &= bitmap container`.
    fn bitmap_and(out: &mut Words, c: &[u8]);
    /// `out |= bitmap container`.
    fn bitmap_or(out: &mut Words, c: &[u8]);
    /// `out &= !bitmap container`.
    fn bitmap_andnot(out: &mut Words, c: &[u8]);
    /// Popcount of `w & bitmap container`, nothing written.
    fn bitmap_and_count(w: &Words, c: &[u8]) -> u32;
    /// Popcount of `w | bitmap container`, nothing written.
    fn bitmap_or_count(w: &Words, c: &[u8]) -> u32;
    /// Popcount of `w & !bitmap container`, nothing written.
    fn bitmap_andnot_count(w: &Words, c: &[u8]) -> u32;
    /// Popcount of the AND of the `all` bitmap containers (at least one)
    /// without any of the `minus` ones, each input read once, nothing
    /// written. The inputs may instead be the same window of each
    /// container, of a multiple of [`BLOCK`] words.
    fn bitmaps_count(all: &[&[u8]], minus: &[&[u8]]) -> u32
        => avx512: avx512_count::bitmaps_count;
    /// `out |=` the OR of bitmap containers, each read once and `out`
    /// written once.
    fn bitmaps_or(out: &mut Words, cs: &[&[u8]]);
    /// `out &= x`.
    fn words_and(out: &mut Words, x: &Words);
    /// `out |= x`.
    fn words_or(out: &mut Words, x: &Words);
    /// `out &= !x`.
    fn words_andnot(out: &mut Words, x: &Words);
    /// `out = !out & universe`.
    fn words_not_within(out: &mut Words, universe: &Words);
    /// Popcount of `w & x`.
    fn words_and_count(w: &Words, x: &Words) -> u32;
    /// Popcount of `w | x`.
    fn words_or_count(w: &Words, x: &Words) -> u32;
    /// Popcount of `w & !x`.
    fn words_andnot_count(w: &Words, x: &Words) -> u32;
    /// Sets the bits of an array container's values (its bytes).
    fn array_or(out: &mut Words, a: &[u8]);
    /// Clears the bits of an array container's values.
    fn array_andnot(out: &mut Words, a: &[u8]);
    /// How many of an array container's values are set in `w`.
    fn array_count_in(w: &Words, a: &[u8]) -> u32;
    /// A bit-sliced range's comparison over one chunk (the bit-sliced
    /// index's `range_chunk` calls it): `has` the users with a value,
    /// `high` (8,192 bytes or empty) users above both ends, `slices` the
    /// slices to compare, top first (8,192 bytes each), `ends` each one's
    /// upper and lower end bit as masks, two per slice; `how` the
    /// `RANGE_*` flags. Block by block ([`RANGE_BLOCK`] words, one cache
    /// line of each slice), the state in registers; a block stops reading
    /// slices once none of its users still equals an end. Writes the users
    /// in the range into `words`, or keeps or drops them from the users
    /// there; how many `words` then hold.
    fn range_pass(has: &[u8], high: &[u8], slices: &[&[u8]], ends: &[u64], words: &mut Words, how: u32) -> u32
        => avx512: avx512_range::range_pass;
    /// `out[i]` = the users of `buckets[64 i..64 i + 64]` whose bucket is
    /// in `lo..=lo + span` (bit `j`: user `64 i + j`); `buckets` holds 64
    /// per word of `out`. How many bits are set.
    fn bucket_masks(buckets: &[u16], lo: u16, span: u16, out: &mut [u64]) -> u32
        => avx512: avx512_buckets::bucket_masks;
    /// `out[i] &=` that mask `^ flip`. How many bits are left.
    fn bucket_masks_and(buckets: &[u16], lo: u16, span: u16, flip: u64, out: &mut [u64]) -> u32
        => avx512: avx512_buckets::bucket_masks_and;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap_view::CHUNK_WORDS;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Chunk bitsets of every shape the kernels meet: empty, full, one bit
    /// (at word edges), word-boundary patterns, random densities.
    fn word_sets() -> Vec<Box<Words>> {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        let mut sets = vec![
            Box::new([0u64; CHUNK_WORDS]),
            Box::new([!0u64; CHUNK_WORDS]),
        ];
        for bit in [0usize, 63, 64, 65_535, 32_768] {
            let mut w = Box::new([0u64; CHUNK_WORDS]);
            w[bit / 64] |= 1 << (bit % 64);
            sets.push(w);
        }
        let mut edges = Box::new([0u64; CHUNK_WORDS]);
        for (i, x) in edges.iter_mut().enumerate() {
            *x = if i % 2 == 0 {
                1 | 1 << 63
            } else {
                0x8000_0000_0000_0001 >> 1
            };
        }
        sets.push(edges);
        for shift in [1u32, 3, 6, 20] {
            let mut w = Box::new([0u64; CHUNK_WORDS]);
            for x in w.iter_mut() {
                // Density about 2^-shift .. 1/2.
                let mut v = r.next();
                for _ in 1..shift.min(6) {
                    v &= r.next();
                }
                *x = if shift == 20 {
                    v & r.next() & r.next()
                } else {
                    v
                };
            }
            sets.push(w);
        }
        sets
    }

    fn bytes_of(w: &Words) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Array containers (sorted, distinct values, as bytes): empty, one
    /// value at each edge, word-edge values, random sizes up to 4096.
    fn arrays() -> Vec<Vec<u8>> {
        let mut r = Rng(0xD1B5_4A32_D192_ED03);
        let mut out: Vec<Vec<u16>> = vec![
            vec![],
            vec![0],
            vec![65_535],
            vec![63, 64],
            vec![0, 1, 2, 3, 4, 63, 64, 127, 128, 65_534, 65_535],
            (0..4096).map(|i| i * 16).collect(),
        ];
        for n in [5usize, 17, 300, 1000, 4096] {
            let mut v: Vec<u16> = (0..n).map(|_| r.next() as u16).collect();
            v.sort_unstable();
            v.dedup();
            out.push(v);
        }
        // Values crowded into a few words (same-word read-modify-writes).
        out.push((1000..1400).collect());
        out.into_iter()
            .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect()
    }

    /// Every level but the portable one this CPU has; says which it skips.
    fn others() -> Vec<Kernels> {
        for l in Level::ALL {
            if !l.detected() {
                eprintln!("kernels: this CPU lacks {}: not tested", l.name());
            }
        }
        Kernels::available()
            .into_iter()
            .filter(|k| k.level() != Level::Portable)
            .collect()
    }

    const P: Kernels = Kernels::PORTABLE;

    #[test]
    fn the_active_level_is_detected_and_portable_is_always_there() {
        assert!(Kernels::active().level().detected());
        assert_eq!(Kernels::available()[0], Kernels::PORTABLE);
        assert_eq!(Kernels::new(Level::Portable), Some(Kernels::PORTABLE));
        for l in Level::ALL {
            assert_eq!(Kernels::new(l).is_some(), l.detected());
        }
        let best = *Kernels::available().last().expect("portable");
        assert_eq!(Kernels::pick(None), best);
        assert_eq!(Kernels::pick(Some("no such level")), best);
        assert_eq!(Kernels::pick(Some("avx512")), best);
        assert_eq!(Kernels::pick(Some("portable")), Kernels::PORTABLE);
        assert_eq!(Kernels::pick(Some(" portable\n")), Kernels::PORTABLE);
        let avx2 = Kernels::pick(Some("avx2"));
        assert!(avx2.level() <= Level::Avx2);
        assert_eq!(avx2.level() == Level::Avx2, Level::Avx2.detected());
    }

    #[test]
    fn portable_kernels_match_a_plain_model() {
        let sets = word_sets();
        for a in &sets {
            assert_eq!(P.popcount(a), a.iter().map(|x| x.count_ones()).sum::<u32>());
            assert_eq!(P.window_popcount(&a[..]), P.popcount(a));
            for b in &sets {
                let c = bytes_of(b);
                for (from, to) in [(0, 1024), (0, 64), (5, 6), (960, 1024)] {
                    let want: Vec<u64> = (from..to).map(|i| a[i] & b[i]).collect();
                    let n: u32 = want.iter().map(|x| x.count_ones()).sum();
                    assert_eq!(P.window_and_count(&a[from..to], &b[from..to]), n);
                    let mut w = a[from..to].to_vec();
                    let any = P.window_and_bytes(&mut w, &c[8 * from..8 * to]);
                    assert_eq!(w, want);
                    assert_eq!(any, want.iter().fold(0, |x, y| x | y));
                }
                let mut w = a.clone();
                P.bitmap_andnot(&mut w, &c);
                let want: Vec<u64> = a.iter().zip(b.iter()).map(|(x, y)| x & !y).collect();
                assert_eq!(&w[..], &want[..]);
                assert_eq!(
                    P.bitmaps_count(&[&bytes_of(a)], &[&c]),
                    want.iter().map(|x| x.count_ones()).sum::<u32>()
                );
            }
        }
        for arr in arrays() {
            let vals: Vec<u16> = arr
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            let mut w = Box::new([0u64; CHUNK_WORDS]);
            P.array_or(&mut w, &arr);
            assert_eq!(P.popcount(&w) as usize, vals.len());
            for &v in &vals {
                assert_eq!(w[usize::from(v >> 6)] >> (v & 63) & 1, 1);
            }
            assert_eq!(P.array_count_in(&w, &arr) as usize, vals.len());
            P.array_andnot(&mut w, &arr);
            assert_eq!(P.popcount(&w), 0);
        }
    }

    #[test]
    fn transpose8_moves_bit_8r_plus_c_to_8c_plus_r() {
        for r in 0..8 {
            for c in 0..8 {
                assert_eq!(body::transpose8(1 << (8 * r + c)), 1 << (8 * c + r));
            }
        }
        assert_eq!(body::transpose8(u64::MAX), u64::MAX);
    }

    #[test]
    fn every_level_matches_the_portable_kernels_on_bitmaps() {
        let sets = word_sets();
        let bytes: Vec<Vec<u8>> = sets.iter().map(|w| bytes_of(w)).collect();
        for k in others() {
            for (a, ab) in sets.iter().zip(&bytes) {
                assert_eq!(k.popcount(a), P.popcount(a), "{k:?}");
                for (from, to) in [(0, 1024), (0, 64), (5, 6), (128, 256), (960, 1024)] {
                    let wa = &a[from..to];
                    assert_eq!(k.window_popcount(wa), P.window_popcount(wa), "{k:?}");
                }
                let mut w = a.clone();
                k.bitmap_copy(&mut w, ab);
                assert_eq!(w, *a, "{k:?} copy");
                for (b, bb) in sets.iter().zip(&bytes) {
                    type Into = fn(Kernels, &mut Words, &[u8]);
                    let ops: [(&str, Into); 3] = [
                        ("and", Kernels::bitmap_and),
                        ("or", Kernels::bitmap_or),
                        ("andnot", Kernels::bitmap_andnot),
                    ];
                    for (name, op) in ops {
                        let (mut x, mut y) = (a.clone(), a.clone());
                        op(k, &mut x, bb);
                        op(P, &mut y, bb);
                        assert_eq!(x, y, "{k:?} bitmap {name}");
                    }
                    type Count = fn(Kernels, &Words, &[u8]) -> u32;
                    let counts: [(&str, Count); 3] = [
                        ("and", Kernels::bitmap_and_count),
                        ("or", Kernels::bitmap_or_count),
                        ("andnot", Kernels::bitmap_andnot_count),
                    ];
                    for (name, op) in counts {
                        assert_eq!(op(k, a, bb), op(P, a, bb), "{k:?} {name} count");
                    }
                    for (from, to) in [(0, 1024), (0, 64), (5, 6), (960, 1024)] {
                        let (wa, wb) = (&a[from..to], &b[from..to]);
                        assert_eq!(
                            k.window_and_count(wa, wb),
                            P.window_and_count(wa, wb),
                            "{k:?} window and count"
                        );
                        let (mut x, mut y) = (wa.to_vec(), wa.to_vec());
                        let rb = &bb[8 * from..8 * to];
                        assert_eq!(
                            k.window_and_bytes(&mut x, rb),
                            P.window_and_bytes(&mut y, rb),
                            "{k:?} window and"
                        );
                        assert_eq!(x, y, "{k:?} window and");
                    }
                    type Words2 = fn(Kernels, &mut Words, &Words);
                    let ops: [(&str, Words2); 4] = [
                        ("and", Kernels::words_and),
                        ("or", Kernels::words_or),
                        ("andnot", Kernels::words_andnot),
                        ("not within", Kernels::words_not_within),
                    ];
                    for (name, op) in ops {
                        let (mut x, mut y) = (a.clone(), a.clone());
                        op(k, &mut x, b);
                        op(P, &mut y, b);
                        assert_eq!(x, y, "{k:?} words {name}");
                    }
                    type WCount = fn(Kernels, &Words, &Words) -> u32;
                    let counts: [(&str, WCount); 3] = [
                        ("and", Kernels::words_and_count),
                        ("or", Kernels::words_or_count),
                        ("andnot", Kernels::words_andnot_count),
                    ];
                    for (name, op) in counts {
                        assert_eq!(op(k, a, b), op(P, a, b), "{k:?} words {name} count");
                    }
                }
            }
            // Several inputs at once: every prefix of the sets from a few
            // starts (the empty set, all ones, the edges, and the random
            // sets, so that the ANDs are not all empty), as the AND side
            // and as the minus side.
            for (start, n) in [0, 1, 7, 8]
                .into_iter()
                .flat_map(|start| (1..=(bytes.len() - start).min(8)).map(move |n| (start, n)))
            {
                let bytes = &bytes[start..];
                let all: Vec<&[u8]> = bytes[..n].iter().map(Vec::as_slice).collect();
                let minus: Vec<&[u8]> = bytes[n..].iter().take(3).map(Vec::as_slice).collect();
                for m in [&minus[..], &[]] {
                    let want: u32 = (0..CHUNK_WORDS)
                        .map(|i| {
                            let word = |b: &[u8]| le64(&b[8 * i..8 * i + 8]);
                            let and = all.iter().fold(u64::MAX, |w, b| w & word(b));
                            (and & !m.iter().fold(0, |w, b| w | word(b))).count_ones()
                        })
                        .sum();
                    assert_eq!(
                        k.bitmaps_count(&all, m),
                        want,
                        "{k:?} {n} inputs from {start}"
                    );
                    assert_eq!(
                        P.bitmaps_count(&all, m),
                        want,
                        "portable {n} inputs from {start}"
                    );
                }
                // The same window of each input, as a windowed sample
                // counts an AND: against the words ANDed one by one.
                for (from, to) in [(0, 16), (16, 80), (512, 640), (896, 1024)] {
                    let span = 8 * from..8 * to;
                    let wa: Vec<&[u8]> = all.iter().map(|b| &b[span.clone()]).collect();
                    let wm: Vec<&[u8]> = minus.iter().map(|b| &b[span.clone()]).collect();
                    let want: u32 = (from..to)
                        .map(|i| {
                            let word = |b: &[u8]| le64(&b[8 * i..8 * i + 8]);
                            let and = all.iter().fold(u64::MAX, |w, b| w & word(b));
                            (and & !minus.iter().fold(0, |w, b| w | word(b))).count_ones()
                        })
                        .sum();
                    assert_eq!(
                        k.bitmaps_count(&wa, &wm),
                        want,
                        "{k:?} {n} windows from {start}"
                    );
                    assert_eq!(
                        P.bitmaps_count(&wa, &wm),
                        want,
                        "portable {n} windows from {start}"
                    );
                }
                for start in [&sets[0], &sets[6]] {
                    let (mut x, mut y) = (start.clone(), start.clone());
                    k.bitmaps_or(&mut x, &all);
                    P.bitmaps_or(&mut y, &all);
                    assert_eq!(x, y, "{k:?} or of {n}");
                }
            }
        }
    }

    #[test]
    fn the_carry_save_tally_adds_up_popcounts_exactly() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Random blocks, blocks of all ones (every carry set at once),
        // and blocks of few bits, in runs long enough that the carry-save
        // levels fill and spill many times.
        for kind in 0..4 {
            let (mut carry, mut want) = (CarrySave::default(), 0u32);
            for i in 0..300 {
                let mut block = [0u64; BLOCK];
                for w in block.iter_mut() {
                    *w = match kind {
                        0 => rng.next(),
                        1 => u64::MAX,
                        2 => rng.next() & rng.next() & rng.next(),
                        _ if i % 3 == 0 => u64::MAX,
                        _ => rng.next(),
                    };
                }
                want += block.iter().map(|w| w.count_ones()).sum::<u32>();
                carry.add(&block);
                assert_eq!(carry.total(), want, "carry-save, kind {kind}, block {i}");
            }
        }
    }

    #[test]
    fn every_level_matches_the_portable_kernels_on_arrays() {
        let sets = word_sets();
        for k in others() {
            for arr in arrays() {
                for a in &sets {
                    let (mut x, mut y) = (a.clone(), a.clone());
                    k.array_or(&mut x, &arr);
                    P.array_or(&mut y, &arr);
                    assert_eq!(x, y, "{k:?} array or");
                    let (mut x, mut y) = (a.clone(), a.clone());
                    k.array_andnot(&mut x, &arr);
                    P.array_andnot(&mut y, &arr);
                    assert_eq!(x, y, "{k:?} array andnot");
                    assert_eq!(k.array_count_in(a, &arr), P.array_count_in(a, &arr));
                }
            }
        }
    }

    #[test]
    fn every_level_matches_the_portable_kernels_on_range_passes() {
        let sets = word_sets();
        let bytes = |w: &Words| -> Vec<u8> { w.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let all: Vec<Vec<u8>> = sets.iter().map(|w| bytes(w)).collect();
        let mut r = Rng(0x1234_5678_9ABC_DEF1);
        for k in others() {
            for round in 0..40 {
                let pick = |r: &mut Rng| &all[(r.next() % all.len() as u64) as usize][..];
                let has = pick(&mut r);
                let high: &[u8] = if round % 3 == 0 { &[] } else { pick(&mut r) };
                let n = (r.next() % 12) as usize;
                let slices: Vec<&[u8]> = (0..n).map(|_| pick(&mut r)).collect();
                let ends: Vec<u64> = (0..2 * n)
                    .map(|_| if r.next() & 1 == 1 { u64::MAX } else { 0 })
                    .collect();
                let given = &sets[(r.next() % sets.len() as u64) as usize];
                for mode in [0, RANGE_KEEP, RANGE_DROP] {
                    for which in 0..4 {
                        let how = mode | which;
                        let (mut x, mut y) = (given.clone(), given.clone());
                        let a = k.range_pass(has, high, &slices, &ends, &mut x, how);
                        let b = P.range_pass(has, high, &slices, &ends, &mut y, how);
                        assert_eq!((a, &x), (b, &y), "{k:?} range pass {how}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_level_matches_the_portable_kernels_on_bucket_masks() {
        let mut r = Rng(0x2545_F491_4F6C_DD1D);
        let buckets: Vec<u16> = (0..65_536)
            .map(|i| match i % 101 {
                0 => 0,
                1 => u16::MAX,
                2 => 9_999,
                _ => (r.next() % 10_000) as u16,
            })
            .collect();
        let ranges = [
            (0u16, 0u16),
            (0, 9_999),
            (1_000, 5_999),
            (9_999, 9_999),
            (0, u16::MAX),
            (u16::MAX, u16::MAX),
        ];
        let sets = word_sets();
        for k in others() {
            for (lo, hi) in ranges {
                let span = hi - lo;
                for words in [1usize, 16, 1024] {
                    let b = &buckets[..64 * words];
                    let (mut x, mut y) = (vec![7u64; words], vec![7u64; words]);
                    let nx = k.bucket_masks(b, lo, span, &mut x);
                    let ny = P.bucket_masks(b, lo, span, &mut y);
                    assert_eq!((nx, &x), (ny, &y), "{k:?} masks {lo}..={hi}");
                    for a in &sets {
                        for flip in [0, u64::MAX] {
                            let (mut x, mut y) = (a[..words].to_vec(), a[..words].to_vec());
                            let nx = k.bucket_masks_and(b, lo, span, flip, &mut x);
                            let ny = P.bucket_masks_and(b, lo, span, flip, &mut y);
                            assert_eq!((nx, &x), (ny, &y), "{k:?} and {lo}..={hi} {flip}");
                        }
                    }
                }
            }
        }
    }
}

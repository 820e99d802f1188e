//! Random-bucket leaves over one chunk of users: which users have a bucket
//! in `lo..=hi`, 64 users to a word (bit `j` of word `i` is user `64 i + j`
//! of the chunk).
//!
//! A dense scan turns 64 buckets into a word with no branch and no
//! per-user shift ([`Kernels::bucket_masks`]): with AVX-512BW two unsigned
//! compares of 32 buckets give the word; otherwise LLVM compiles the
//! comparisons into SIMD subtract, compare, pack and mask, and an 8x8 bit
//! transpose puts the bits in user order. An AND with a set already computed only looks at
//! what it needs: the members of a sparse set one by one, and for a denser
//! set the blocks of 1,024 users that hold a member.

use crate::bitmap_view::{Kernels, Words};

/// At most this many non-zero words (a quarter of a chunk) and an AND tests
/// members one by one; more, and it scans whole blocks of buckets.
const SPARSE_WORDS: usize = 256;

/// A word with at most this many members is tested member by member (on
/// the sparse path); more, and its 64 buckets are compared at once.
const FEW_BITS: u32 = 8;

/// Words per block the dense AND skips when it holds no member: 1,024
/// users, large enough that a random set at the sparse threshold almost
/// never leaves a block empty (so the branch predicts well), small enough
/// to skip the gaps of clustered sets.
const BLOCK_WORDS: usize = 16;

/// The mask of a block of fewer than 64 users, one at a time.
fn partial_mask(block: &[u16], lo: u16, span: u16) -> u64 {
    block.iter().enumerate().fold(0, |m, (j, &x)| {
        m | u64::from(x.wrapping_sub(lo) <= span) << j
    })
}

/// Word `i`'s users in range: the last word of a partial chunk covers only
/// the users that exist; a word past them is 0.
#[inline]
fn word(k: Kernels, buckets: &[u16], i: usize, lo: u16, span: u16) -> u64 {
    let rest = buckets.get(i * 64..).unwrap_or(&[]);
    match rest.first_chunk::<64>() {
        Some(b) => {
            let mut w = [0u64];
            k.bucket_masks(b, lo, span, &mut w);
            w[0]
        }
        None => partial_mask(rest, lo, span),
    }
}

/// The users (bit set) of a word past which no user exists.
#[inline]
fn existing(buckets: &[u16], i: usize) -> u64 {
    match buckets.len().saturating_sub(i * 64) {
        0 => 0,
        n if n >= 64 => u64::MAX,
        n => (1 << n) - 1,
    }
}

/// Writes into `w` the users of the chunk whose bucket is in `lo..=hi`;
/// `buckets` are the chunk's users' buckets (at most 2^16), words past them
/// are 0. How many users are in range.
pub(crate) fn write(k: Kernels, buckets: &[u16], lo: u16, hi: u16, w: &mut Words) -> u32 {
    debug_assert!(lo <= hi && buckets.len() <= w.len() * 64);
    let span = hi - lo;
    let full = buckets.len() / 64;
    let (head, tail) = w.split_at_mut(full);
    let mut n = k.bucket_masks(&buckets[..full * 64], lo, span, head);
    if let Some((o, rest)) = tail.split_first_mut() {
        *o = partial_mask(&buckets[full * 64..], lo, span);
        n += o.count_ones();
        rest.fill(0);
    }
    n
}

/// Keeps in `w` the members whose bucket is in `lo..=hi` (`outside`:
/// whose bucket is not), in place; members past the chunk's users are
/// dropped. How many members remain.
pub(crate) fn and(
    k: Kernels,
    buckets: &[u16],
    lo: u16,
    hi: u16,
    outside: bool,
    w: &mut Words,
) -> u32 {
    debug_assert!(lo <= hi && buckets.len() <= w.len() * 64);
    let span = hi - lo;
    let flip = if outside { u64::MAX } else { 0 };
    let keep = |i: usize| (word(k, buckets, i, lo, span) ^ flip) & existing(buckets, i);
    let mut n = 0;
    if w.iter().filter(|&&x| x != 0).count() <= SPARSE_WORDS {
        for (i, o) in w.iter_mut().enumerate() {
            if *o == 0 {
                continue;
            }
            if o.count_ones() <= FEW_BITS {
                let mut rest = *o;
                while rest != 0 {
                    let j = rest.trailing_zeros();
                    rest &= rest - 1;
                    let inside = buckets
                        .get(i * 64 + j as usize)
                        .map(|&x| (x.wrapping_sub(lo) <= span) != outside);
                    if inside != Some(true) {
                        *o &= !(1 << j);
                    }
                }
            } else {
                *o &= keep(i);
            }
            n += o.count_ones();
        }
    } else {
        for (b, block) in w.chunks_exact_mut(BLOCK_WORDS).enumerate() {
            if block.iter().fold(0, |a, &x| a | x) == 0 {
                continue;
            }
            let first = b * BLOCK_WORDS;
            match buckets.get(first * 64..(first + BLOCK_WORDS) * 64) {
                Some(users) => n += k.bucket_masks_and(users, lo, span, flip, block),
                None => {
                    for (j, o) in block.iter_mut().enumerate() {
                        *o &= keep(first + j);
                        n += o.count_ones();
                    }
                }
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap_view::CHUNK_WORDS;

    /// A deterministic spread of buckets, with the extreme u16 values too.
    fn buckets(n: usize, seed: u64) -> Vec<u16> {
        let mut s = seed | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                match i % 97 {
                    0 => 0,
                    1 => 9_999,
                    2 => u16::MAX,
                    _ => (s % 10_000) as u16,
                }
            })
            .collect()
    }

    fn model(b: &[u16], lo: u16, hi: u16) -> Box<Words> {
        let mut w = Box::new([0u64; CHUNK_WORDS]);
        for (u, &x) in b.iter().enumerate() {
            if (lo..=hi).contains(&x) {
                w[u / 64] |= 1 << (u % 64);
            }
        }
        w
    }

    /// A random set of members of the given density (over the whole
    /// chunk, past the users of a partial one too).
    fn set(density: f64, seed: u64) -> Box<Words> {
        let mut w = Box::new([0u64; CHUNK_WORDS]);
        let mut s = seed | 1;
        for u in 0..CHUNK_WORDS * 64 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if ((s >> 11) as f64) < density * (1u64 << 53) as f64 {
                w[u / 64] |= 1 << (u % 64);
            }
        }
        w
    }

    const RANGES: [(u16, u16); 8] = [
        (0, 0),
        (0, 9_998),
        (0, 9_999),
        (1, 9_999),
        (1_000, 5_999),
        (4_321, 4_321),
        (9_999, 9_999),
        (0, u16::MAX),
    ];

    // Chunk lengths: full, partial at a word edge and inside a word, one
    // user, none.
    const LENS: [usize; 6] = [65_536, 65_472, 40_000, 63, 1, 0];

    /// Every kernel level this CPU has (the portable one always).
    fn levels() -> Vec<Kernels> {
        Kernels::available()
    }

    #[test]
    fn write_matches_a_plain_scan_with_every_kernel_level() {
        for k in levels() {
            for len in LENS {
                let b = buckets(len, 7);
                for (lo, hi) in RANGES {
                    let mut w = Box::new([u64::MAX; CHUNK_WORDS]);
                    let n = write(k, &b, lo, hi, &mut w);
                    let want = model(&b, lo, hi);
                    assert_eq!(w, want, "{k:?} len {len} {lo}..={hi}");
                    let count: u32 = want.iter().map(|x| x.count_ones()).sum();
                    assert_eq!(n, count, "{k:?} len {len} {lo}..={hi}");
                }
            }
        }
    }

    #[test]
    fn and_matches_a_plain_intersection_on_sparse_and_dense_sets() {
        // Densities on both sides of the sparse threshold, a full set, and
        // sets with members past the chunk's users.
        let densities = [0.0, 0.0005, 0.002, 0.004, 0.01, 0.1, 0.5, 1.0];
        for (k, len) in levels().into_iter().flat_map(|k| LENS.map(|l| (k, l))) {
            let b = buckets(len, 11);
            for (di, &d) in densities.iter().enumerate() {
                let acc = set(d, di as u64 + 3);
                for (lo, hi) in RANGES {
                    let inside = model(&b, lo, hi);
                    for outside in [false, true] {
                        let mut w = acc.clone();
                        let n = and(k, &b, lo, hi, outside, &mut w);
                        let mut want = acc.clone();
                        for (i, o) in want.iter_mut().enumerate() {
                            let keep = if outside { !inside[i] } else { inside[i] };
                            *o &= keep & existing(&b, i);
                        }
                        assert_eq!(w, want, "{k:?} len {len} density {d} {lo}..={hi} {outside}");
                        assert_eq!(n, want.iter().map(|x| x.count_ones()).sum::<u32>());
                    }
                }
            }
        }
    }

    #[test]
    fn and_skips_blocks_and_handles_crowded_words_of_a_sparse_set() {
        let b = buckets(65_536, 5);
        // A few full words (crowded, on the sparse path), runs of members
        // with empty blocks between them (on the dense path).
        let mut crowded = Box::new([0u64; CHUNK_WORDS]);
        crowded[3] = u64::MAX;
        crowded[500] = 0xF0F0_F0F0_0000_0001;
        crowded[1023] = 1 << 63;
        let mut runs = Box::new([0u64; CHUNK_WORDS]);
        for i in (0..CHUNK_WORDS).filter(|i| (i / 48) % 3 == 1) {
            runs[i] = u64::MAX;
        }
        for (k, acc) in levels()
            .into_iter()
            .flat_map(|k| [(k, crowded.clone()), (k, runs.clone())])
        {
            for (lo, hi) in RANGES {
                let inside = model(&b, lo, hi);
                let mut w = acc.clone();
                and(k, &b, lo, hi, false, &mut w);
                let want: Vec<u64> = acc.iter().zip(inside.iter()).map(|(a, m)| a & m).collect();
                assert_eq!(&w[..], &want[..], "{lo}..={hi}");
            }
        }
    }
}

//! Random-bucket leaves over one chunk of users: which users have a bucket
//! in `lo..=hi`, 64 users to a word (bit `j` of word `i` is user `64 i + j`
//! of the chunk).
//!
//! A dense scan turns 64 buckets into a word with no branch and no
//! per-user shift: LLVM compiles the comparisons into SIMD subtract,
//! compare, pack and mask, and an 8x8 bit transpose puts the bits in user
//! order (see [`mask`]). An AND with a set already computed only looks at
//! what it needs: the members of a sparse set one by one, and for a denser
//! set the blocks of 1,024 users that hold a member.

use crate::bitmap_view::Words;

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

/// Bit `j`: whether `lo <= block[j] <= lo + span` (wrapping subtraction
/// turns the two comparisons into one, for any u16).
///
/// User `j = 8 k + i` becomes bit `k` of byte `j`; ORing the eight 8-byte
/// groups gives byte `i` bit `k` = user `8 k + i`, and the transpose moves
/// it to bit `8 k + i`. Written this way (a byte array, constant shifts)
/// the compiler keeps it in SIMD registers up to the transpose. On 10M
/// buckets, one core: a shift per user takes 6 times as long, 16-bit masks
/// built bit by bit 2.5 times, gathering each 8 bytes with a multiplication
/// 1.2 times.
#[inline(always)]
fn mask(block: &[u16; 64], lo: u16, span: u16) -> u64 {
    let mut bytes = [0u8; 64];
    for (j, (b, &x)) in bytes.iter_mut().zip(block).enumerate() {
        *b = u8::from(x.wrapping_sub(lo) <= span) << (j / 8);
    }
    let mut u = 0;
    for eight in bytes.chunks_exact(8) {
        let mut le = [0u8; 8];
        le.copy_from_slice(eight);
        u |= u64::from_le_bytes(le);
    }
    transpose8(u)
}

/// Transposes a word as an 8x8 bit matrix: bit `8 r + c` goes to bit
/// `8 c + r` (three rounds of swapping blocks, Hacker's Delight 7-3).
#[inline(always)]
fn transpose8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^ t ^ (t << 28)
}

/// The mask of a block of fewer than 64 users, one at a time.
fn partial_mask(block: &[u16], lo: u16, span: u16) -> u64 {
    block.iter().enumerate().fold(0, |m, (j, &x)| {
        m | u64::from(x.wrapping_sub(lo) <= span) << j
    })
}

/// Word `i`'s users in range: the last word of a partial chunk covers only
/// the users that exist; a word past them is 0.
#[inline]
fn word(buckets: &[u16], i: usize, lo: u16, span: u16) -> u64 {
    let rest = buckets.get(i * 64..).unwrap_or(&[]);
    match rest.first_chunk::<64>() {
        Some(b) => mask(b, lo, span),
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
/// are 0. Whether any user is in range.
pub(crate) fn write(buckets: &[u16], lo: u16, hi: u16, w: &mut Words) -> bool {
    debug_assert!(lo <= hi && buckets.len() <= w.len() * 64);
    let span = hi - lo;
    let full = buckets.len() / 64;
    let (head, tail) = w.split_at_mut(full);
    let mut any = 0;
    for (o, b) in head.iter_mut().zip(buckets.as_chunks::<64>().0) {
        *o = mask(b, lo, span);
        any |= *o;
    }
    if let Some((o, rest)) = tail.split_first_mut() {
        *o = partial_mask(&buckets[full * 64..], lo, span);
        any |= *o;
        rest.fill(0);
    }
    any != 0
}

/// Keeps in `w` the members whose bucket is in `lo..=hi` (`outside`:
/// whose bucket is not), in place; members past the chunk's users are
/// dropped. Whether any member remains.
pub(crate) fn and(buckets: &[u16], lo: u16, hi: u16, outside: bool, w: &mut Words) -> bool {
    debug_assert!(lo <= hi && buckets.len() <= w.len() * 64);
    let span = hi - lo;
    let flip = if outside { u64::MAX } else { 0 };
    let keep = |i: usize| (word(buckets, i, lo, span) ^ flip) & existing(buckets, i);
    let mut any = 0;
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
            any |= *o;
        }
    } else {
        for (k, block) in w.chunks_exact_mut(BLOCK_WORDS).enumerate() {
            if block.iter().fold(0, |a, &x| a | x) == 0 {
                continue;
            }
            let first = k * BLOCK_WORDS;
            match buckets.get(first * 64..(first + BLOCK_WORDS) * 64) {
                Some(users) => {
                    for (o, b) in block.iter_mut().zip(users.as_chunks::<64>().0) {
                        *o &= mask(b, lo, span) ^ flip;
                        any |= *o;
                    }
                }
                None => {
                    for (j, o) in block.iter_mut().enumerate() {
                        *o &= keep(first + j);
                        any |= *o;
                    }
                }
            }
        }
    }
    any != 0
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

    #[test]
    fn transpose8_moves_bit_8r_plus_c_to_8c_plus_r() {
        for r in 0..8 {
            for c in 0..8 {
                assert_eq!(transpose8(1 << (8 * r + c)), 1 << (8 * c + r));
            }
        }
        assert_eq!(transpose8(u64::MAX), u64::MAX);
    }

    #[test]
    fn write_matches_a_plain_scan() {
        for len in LENS {
            let b = buckets(len, 7);
            for (lo, hi) in RANGES {
                let mut w = Box::new([u64::MAX; CHUNK_WORDS]);
                let any = write(&b, lo, hi, &mut w);
                let want = model(&b, lo, hi);
                assert_eq!(w, want, "len {len} {lo}..={hi}");
                assert_eq!(any, want.iter().any(|&x| x != 0), "len {len} {lo}..={hi}");
            }
        }
    }

    #[test]
    fn and_matches_a_plain_intersection_on_sparse_and_dense_sets() {
        // Densities on both sides of the sparse threshold, a full set, and
        // sets with members past the chunk's users.
        let densities = [0.0, 0.0005, 0.002, 0.004, 0.01, 0.1, 0.5, 1.0];
        for len in LENS {
            let b = buckets(len, 11);
            for (di, &d) in densities.iter().enumerate() {
                let acc = set(d, di as u64 + 3);
                for (lo, hi) in RANGES {
                    let inside = model(&b, lo, hi);
                    for outside in [false, true] {
                        let mut w = acc.clone();
                        let any = and(&b, lo, hi, outside, &mut w);
                        let mut want = acc.clone();
                        for (i, o) in want.iter_mut().enumerate() {
                            let keep = if outside { !inside[i] } else { inside[i] };
                            *o &= keep & existing(&b, i);
                        }
                        assert_eq!(w, want, "len {len} density {d} {lo}..={hi} {outside}");
                        assert_eq!(any, want.iter().any(|&x| x != 0));
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
        for acc in [crowded, runs] {
            for (lo, hi) in RANGES {
                let inside = model(&b, lo, hi);
                let mut w = acc.clone();
                and(&b, lo, hi, false, &mut w);
                let want: Vec<u64> = acc.iter().zip(inside.iter()).map(|(a, m)| a & m).collect();
                assert_eq!(&w[..], &want[..], "{lo}..={hi}");
            }
        }
    }
}

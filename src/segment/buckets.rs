//! Random-bucket leaves over one chunk of users: which users have a bucket
//! in `lo..=hi`, 64 users to a word (bit `j` of word `i` is user `64 i + j`
//! of the chunk).
//!
//! A dense scan compares 64 buckets into 64 bytes of 0 or 1, which LLVM
//! turns into SIMD subtract, compare and pack, then gathers each 8 bytes
//! into 8 bits with one multiplication.

use crate::bitmap_view::Words;

/// Multiplying a word whose bytes are 0 or 1 by this puts byte `k` on bit
/// `56 + k`: the eight products that land in the top byte come from
/// distinct bytes, and no two products share a bit, so nothing carries.
const GATHER: u64 = 0x0102_0408_1020_4080;

/// Bit `j`: whether `lo <= block[j] <= lo + span` (wrapping subtraction
/// turns the two comparisons into one, for any u16).
#[inline(always)]
fn mask(block: &[u16; 64], lo: u16, span: u16) -> u64 {
    let mut bytes = [0u8; 64];
    for (b, &x) in bytes.iter_mut().zip(block) {
        *b = u8::from(x.wrapping_sub(lo) <= span);
    }
    let mut m = 0;
    for (k, eight) in bytes.chunks_exact(8).enumerate() {
        let mut le = [0u8; 8];
        le.copy_from_slice(eight);
        m |= (u64::from_le_bytes(le).wrapping_mul(GATHER) >> 56) << (8 * k);
    }
    m
}

/// The mask of a block of fewer than 64 users, one at a time.
fn partial_mask(block: &[u16], lo: u16, span: u16) -> u64 {
    block.iter().enumerate().fold(0, |m, (j, &x)| {
        m | u64::from(x.wrapping_sub(lo) <= span) << j
    })
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
    for (o, b) in head.iter_mut().zip(buckets.chunks_exact(64)) {
        *o = mask(b.try_into().expect("64 buckets"), lo, span);
        any |= *o;
    }
    if let Some((o, rest)) = tail.split_first_mut() {
        *o = partial_mask(&buckets[full * 64..], lo, span);
        any |= *o;
        rest.fill(0);
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
}

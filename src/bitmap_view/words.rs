//! The chunk bitset ([`Words`]) the evaluator combines containers into, its
//! popcount, and the bit and bit-range helpers the container kinds share.

use super::Kernels;

/// Number of u64 words that cover one 2^16-value chunk.
pub const CHUNK_WORDS: usize = 1024;

/// One 2^16-value chunk as a plain bitset: bit `b` of word `w` is the low
/// value `w * 64 + b`.
pub type Words = [u64; CHUNK_WORDS];

/// Popcount of a chunk bitset (with the [`Kernels`] this CPU has).
#[inline]
pub fn popcount(words: &Words) -> u32 {
    Kernels::active().popcount(words)
}

/// Word index and mask of the bit for low value `low`.
#[inline(always)]
pub(super) fn bit(low: u16) -> (usize, u64) {
    (usize::from(low >> 6), 1u64 << (low & 63))
}

/// Sets the bits `lo..=hi` (low values) in `words`, a word at a time.
#[inline]
pub(super) fn set_range(words: &mut Words, lo: u16, hi: u16) {
    if lo > hi {
        return;
    }
    let (lw, hw) = (usize::from(lo >> 6), usize::from(hi >> 6));
    let lmask = !0u64 << (lo & 63);
    let hmask = !0u64 >> (63 - (hi & 63));
    if lw == hw {
        words[lw] |= lmask & hmask;
    } else {
        words[lw] |= lmask;
        words[lw + 1..hw].fill(!0);
        words[hw] |= hmask;
    }
}

/// Clears the bits `lo..=hi` (low values) in `words`, a word at a time.
#[inline]
pub(super) fn clear_range(words: &mut Words, lo: u16, hi: u16) {
    if lo > hi {
        return;
    }
    let (lw, hw) = (usize::from(lo >> 6), usize::from(hi >> 6));
    let lmask = !0u64 << (lo & 63);
    let hmask = !0u64 >> (63 - (hi & 63));
    if lw == hw {
        words[lw] &= !(lmask & hmask);
    } else {
        words[lw] &= !lmask;
        words[lw + 1..hw].fill(0);
        words[hw] &= !hmask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_helpers_set_and_clear_exact_bits() {
        let cases = [
            (0u16, 0u16),
            (0, 63),
            (0, 64),
            (1, 62),
            (63, 64),
            (5, 65535),
            (65535, 65535),
            (64, 127),
            (100, 9000),
        ];
        for (lo, hi) in cases {
            let mut w = Box::new([0u64; CHUNK_WORDS]);
            set_range(&mut w, lo, hi);
            assert_eq!(popcount(&w), u32::from(hi - lo) + 1);
            for v in (0..=u16::MAX).step_by(1) {
                let set = w[usize::from(v >> 6)] >> (v & 63) & 1 == 1;
                assert_eq!(set, (lo..=hi).contains(&v), "{lo}..={hi} at {v}");
            }
            let mut w = Box::new([!0u64; CHUNK_WORDS]);
            clear_range(&mut w, lo, hi);
            assert_eq!(popcount(&w), 65536 - (u32::from(hi - lo) + 1));
        }
    }
}

//! Bitmap container: a chunk stored as 1024 little-endian u64 words (more
//! than 4096 values, no run flag).

use std::iter::FusedIterator;

use super::words::bit;
use super::{Kernels, ViewError, Words, CHUNK_WORDS};

/// Bytes of a bitmap container.
pub(super) const BITMAP_BYTES: usize = CHUNK_WORDS * 8;

#[inline(always)]
fn le_u64(chunk: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(chunk);
    u64::from_le_bytes(b)
}

/// Bitmap container: 1024 little-endian u64 words.
#[derive(Debug, Clone, Copy)]
pub struct BitmapC<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) card: u32,
}

impl<'a> BitmapC<'a> {
    /// Word `i` (0..1024).
    ///
    /// # Panics
    /// If `i >= 1024`.
    #[inline]
    pub fn word(&self, i: usize) -> u64 {
        le_u64(&self.bytes[8 * i..8 * i + 8])
    }

    /// The 1024 words in order.
    #[inline]
    pub fn words(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        self.bytes.chunks_exact(8).map(le_u64)
    }

    /// Whether `low` is set (one bit test).
    #[inline]
    pub fn contains(&self, low: u16) -> bool {
        let (w, m) = bit(low);
        self.word(w) & m != 0
    }

    /// The set low values in increasing order.
    pub fn iter(&self) -> BitmapIter<'a> {
        BitmapIter {
            bytes: self.bytes,
            next_word: 0,
            base: 0,
            bits: 0,
        }
    }

    /// The container's 8,192 bytes (1024 little-endian words), for the
    /// [`Kernels`] that combine several containers at once.
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// `words |= bitmap`.
    pub fn or_into(&self, k: Kernels, words: &mut Words) {
        k.bitmap_or(words, self.bytes);
    }

    /// `words &= bitmap`.
    pub fn and_into(&self, k: Kernels, words: &mut Words) {
        k.bitmap_and(words, self.bytes);
    }

    /// `words &= !bitmap`.
    pub fn andnot_into(&self, k: Kernels, words: &mut Words) {
        k.bitmap_andnot(words, self.bytes);
    }

    /// `words = bitmap`.
    pub fn write_into(&self, k: Kernels, words: &mut Words) {
        k.bitmap_copy(words, self.bytes);
    }

    /// Checks that the popcount equals the header cardinality; `index` is
    /// the container's index and `at` its byte offset in the view.
    pub(super) fn verify(&self, index: usize, at: usize) -> Result<(), ViewError> {
        let found = self.words().map(u64::count_ones).sum::<u32>();
        if found != self.card {
            return Err(ViewError::BitmapCardinality {
                offset: at,
                index,
                expected: self.card,
                found,
            });
        }
        Ok(())
    }
}

/// Set bits of a [`BitmapC`].
#[derive(Debug, Clone)]
pub struct BitmapIter<'a> {
    bytes: &'a [u8],
    next_word: usize,
    base: u32,
    bits: u64,
}

impl Iterator for BitmapIter<'_> {
    type Item = u16;
    #[inline]
    fn next(&mut self) -> Option<u16> {
        while self.bits == 0 {
            let chunk = self.bytes.get(8 * self.next_word..8 * self.next_word + 8)?;
            self.bits = le_u64(chunk);
            self.base = (self.next_word as u32) << 6;
            self.next_word += 1;
        }
        let low = self.base + self.bits.trailing_zeros();
        self.bits &= self.bits - 1;
        Some(low as u16)
    }
}

impl FusedIterator for BitmapIter<'_> {}

#[cfg(test)]
mod tests {
    use crate::bitmap_view::tests::{exercise, serialize};
    use crate::bitmap_view::{BitmapView, ViewError};
    use roaring::RoaringBitmap;

    #[test]
    fn verify_catches_wrong_cardinality() {
        // Bitmap cardinality: clear one bit of a bitmap container.
        let rb: RoaringBitmap = (0..10_000).collect();
        let mut bytes = serialize(&rb);
        let at = 8 + 8;
        bytes[at] &= !1;
        let view = BitmapView::parse(&bytes).unwrap();
        assert_eq!(
            view.verify().unwrap_err(),
            ViewError::BitmapCardinality {
                offset: at,
                index: 0,
                expected: 10_000,
                found: 9_999
            }
        );
        exercise(&bytes);
    }
}

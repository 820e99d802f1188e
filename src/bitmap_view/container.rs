//! [`Container`]: one container of a view, whatever its kind, and its value
//! iterator; each call dispatches to the kind's own file.

use std::iter::FusedIterator;

use super::{ArrayC, ArrayIter, BitmapC, BitmapIter, Kernels, RunC, RunValues, Words};

/// One container (one 2^16-value chunk) borrowed from a
/// [`BitmapView`](super::BitmapView).
#[derive(Debug, Clone, Copy)]
pub enum Container<'a> {
    /// An array container: up to 4096 sorted values.
    Array(ArrayC<'a>),
    /// A bitmap container: 1024 words of 64 bits.
    Bitmap(BitmapC<'a>),
    /// A run container: sorted runs of values.
    Run(RunC<'a>),
}

impl<'a> Container<'a> {
    /// A container over bytes the crate built itself (not read from a
    /// file): an array of `bytes.len() / 2` sorted little-endian values
    /// when `card` is at most 4,096, else a bitmap of 1,024 little-endian
    /// words holding `card` values. `None` when the length does not fit
    /// the kind.
    pub(crate) fn from_parts(bytes: &'a [u8], card: u32) -> Option<Container<'a>> {
        if card as usize <= super::ARRAY_MAX_CARDINALITY as usize {
            (bytes.len() == 2 * card as usize).then_some(Container::Array(ArrayC { bytes }))
        } else {
            (bytes.len() == super::CHUNK_WORDS * 8)
                .then_some(Container::Bitmap(BitmapC { bytes, card }))
        }
    }

    /// Number of values (for arrays the stored length; for bitmaps and runs
    /// the header cardinality).
    #[inline]
    pub fn cardinality(&self) -> u32 {
        match self {
            Container::Array(a) => a.len() as u32,
            Container::Bitmap(b) => b.card,
            Container::Run(r) => r.card,
        }
    }

    /// Whether the low value is in the container.
    #[inline]
    pub fn contains(&self, low: u16) -> bool {
        match self {
            Container::Array(a) => a.contains(low),
            Container::Bitmap(b) => b.contains(low),
            Container::Run(r) => r.contains(low),
        }
    }

    /// `words |= container`.
    pub fn or_into(&self, words: &mut Words) {
        self.or_into_with(Kernels::active(), words);
    }

    /// [`Self::or_into`] with these kernels.
    pub fn or_into_with(&self, k: Kernels, words: &mut Words) {
        match self {
            Container::Array(a) => a.or_into(k, words),
            Container::Bitmap(b) => b.or_into(k, words),
            Container::Run(r) => r.or_into(words),
        }
    }

    /// `words &= container`.
    pub fn and_into(&self, words: &mut Words) {
        self.and_into_with(Kernels::active(), words);
    }

    /// [`Self::and_into`] with these kernels.
    pub fn and_into_with(&self, k: Kernels, words: &mut Words) {
        match self {
            Container::Array(a) => a.and_into(k, words),
            Container::Bitmap(b) => b.and_into(k, words),
            Container::Run(r) => r.and_into(words),
        }
    }

    /// `words &= !container`.
    pub fn andnot_into(&self, words: &mut Words) {
        self.andnot_into_with(Kernels::active(), words);
    }

    /// [`Self::andnot_into`] with these kernels.
    pub fn andnot_into_with(&self, k: Kernels, words: &mut Words) {
        match self {
            Container::Array(a) => a.andnot_into(k, words),
            Container::Bitmap(b) => b.andnot_into(k, words),
            Container::Run(r) => r.andnot_into(words),
        }
    }

    /// `words = container` (every other bit cleared).
    pub fn write_into(&self, words: &mut Words) {
        self.write_into_with(Kernels::active(), words);
    }

    /// [`Self::write_into`] with these kernels.
    pub fn write_into_with(&self, k: Kernels, words: &mut Words) {
        match self {
            Container::Array(a) => a.write_into(k, words),
            Container::Bitmap(b) => b.write_into(k, words),
            Container::Run(r) => r.write_into(words),
        }
    }

    /// `out = container` on the window of words `first..first + out.len()`
    /// of the chunk (word `i` holds the low values `64 * i..64 * i + 64`):
    /// only the part of the container inside the window is read (a binary
    /// search finds where an array's or a run's values enter it).
    ///
    /// # Panics
    /// If the window passes the chunk's 1024 words.
    pub fn write_window(&self, first: usize, out: &mut [u64]) {
        let end = first + out.len();
        assert!(end <= super::CHUNK_WORDS, "window {first}..{end}");
        match self {
            Container::Bitmap(b) => {
                let bytes = &b.bytes()[8 * first..8 * end];
                for (w, x) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                    *w = u64::from_le_bytes(x.try_into().expect("eight bytes"));
                }
            }
            Container::Array(a) => {
                out.fill(0);
                let (lo, hi) = (first * 64, end * 64);
                let bytes = a.bytes();
                let value =
                    |i: usize| usize::from(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]));
                // The first value at or past the window's start.
                let (mut l, mut h) = (0usize, a.len());
                while l < h {
                    let mid = l + (h - l) / 2;
                    if value(mid) < lo {
                        l = mid + 1;
                    } else {
                        h = mid;
                    }
                }
                for i in l..a.len() {
                    let v = value(i);
                    if v >= hi {
                        break;
                    }
                    let at = v - lo;
                    out[at / 64] |= 1 << (at % 64);
                }
            }
            Container::Run(r) => {
                out.fill(0);
                let (lo, hi) = (first * 64, end * 64);
                // The first run that ends at or past the window's start.
                let (mut l, mut h) = (0usize, r.run_count());
                while l < h {
                    let mid = l + (h - l) / 2;
                    if usize::from(r.run(mid).1) < lo {
                        l = mid + 1;
                    } else {
                        h = mid;
                    }
                }
                for i in l..r.run_count() {
                    let (a, b) = r.run(i);
                    let (a, b) = (usize::from(a).max(lo), usize::from(b).min(hi - 1));
                    if a >= hi {
                        break;
                    }
                    set_bits(out, a - lo, b - lo);
                }
            }
        }
    }

    /// The container's low values in increasing order (for a verified view).
    pub fn iter(&self) -> ContainerIter<'a> {
        ContainerIter(match *self {
            Container::Array(a) => IterInner::Array(a.iter()),
            Container::Bitmap(b) => IterInner::Bitmap(b.iter()),
            Container::Run(r) => IterInner::Run(r.iter()),
        })
    }
}

impl Container<'_> {
    /// `out &= container` on the window of words `first..` (see
    /// [`Self::write_window`]); a bitmap is read word by word into `out`
    /// (with `k`'s kernel), another kind written to `scratch` first (of
    /// `out`'s length). Whether any bit is left.
    ///
    /// # Panics
    /// If the window passes the chunk's 1024 words, or `scratch` is
    /// shorter than `out`.
    pub fn and_window(
        &self,
        k: Kernels,
        first: usize,
        out: &mut [u64],
        scratch: &mut [u64],
    ) -> bool {
        match self {
            Container::Bitmap(b) => {
                let end = first + out.len();
                k.window_and_bytes(out, &b.bytes()[8 * first..8 * end]) != 0
            }
            _ => {
                let t = &mut scratch[..out.len()];
                self.write_window(first, t);
                let mut any = 0;
                for (o, x) in out.iter_mut().zip(t.iter()) {
                    *o &= x;
                    any |= *o;
                }
                any != 0
            }
        }
    }
}

/// Sets bits `a..=b` of `out`.
fn set_bits(out: &mut [u64], a: usize, b: usize) {
    let (wa, wb) = (a / 64, b / 64);
    let from = |bit: usize| u64::MAX << (bit % 64);
    let upto = |bit: usize| u64::MAX >> (63 - bit % 64);
    if wa == wb {
        out[wa] |= from(a) & upto(b);
        return;
    }
    out[wa] |= from(a);
    out[wa + 1..wb].fill(u64::MAX);
    out[wb] |= upto(b);
}

impl<'a> IntoIterator for Container<'a> {
    type Item = u16;
    type IntoIter = ContainerIter<'a>;
    fn into_iter(self) -> ContainerIter<'a> {
        self.iter()
    }
}

/// Low values of one [`Container`].
#[derive(Debug, Clone)]
pub struct ContainerIter<'a>(IterInner<'a>);

#[derive(Debug, Clone)]
enum IterInner<'a> {
    Array(ArrayIter<'a>),
    Bitmap(BitmapIter<'a>),
    Run(RunValues<'a>),
}

impl Iterator for ContainerIter<'_> {
    type Item = u16;
    #[inline]
    fn next(&mut self) -> Option<u16> {
        match &mut self.0 {
            IterInner::Array(i) => i.next(),
            IterInner::Bitmap(i) => i.next(),
            IterInner::Run(i) => i.next(),
        }
    }
}

impl FusedIterator for ContainerIter<'_> {}

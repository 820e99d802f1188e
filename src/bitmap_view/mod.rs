//! Zero-copy reader of one bitmap in the portable roaring serialization.
//!
//! The `roaring` crate can only deserialize into owned containers. The query
//! path instead reads containers straight from the memory-mapped snapshot:
//! [`BitmapView::parse`] validates the header (O(number of containers), no
//! allocation) and every later call borrows the original bytes. The bytes may
//! sit at any alignment, so every integer is read with `from_le_bytes`.
//!
//! # Byte layout (RoaringFormatSpec, all integers little-endian)
//!
//! ```text
//! Without run containers (cookie 12346):
//!   offset 0      u32   cookie = 12346
//!   offset 4      u32   n = number of containers (0..=65536)
//!   offset 8      n x { u16 key, u16 cardinality - 1 }   keys strictly increasing
//!   8 + 4n        n x u32 container offset (from byte 0 of the bitmap)
//!   8 + 8n        containers, back to back
//!
//! With run containers (low 16 bits of the cookie = 12347):
//!   offset 0      u32   cookie = 12347 | (n - 1) << 16      (n = 1..=65536)
//!   offset 4      ceil(n / 8) bytes: run bitset, bit i (LSB first) set when
//!                 container i is a run container; padding bits are zero
//!   r = 4 + ceil(n / 8)
//!   offset r      n x { u16 key, u16 cardinality - 1 }
//!   r + 4n        n x u32 container offset, ONLY when n >= 4
//!                 (NO_OFFSET_THRESHOLD); otherwise offsets follow from sizes
//!   then          containers, back to back
//!
//! Containers (one per 2^16-value chunk; value = key << 16 | low):
//!   run      (flag set)               u16 n_runs, n_runs x { u16 start, u16 length - 1 }
//!   array    (no flag, card <= 4096)  card x u16 low value, strictly increasing
//!   bitmap   (no flag, card >  4096)  1024 x u64 words; bit b of word w = low w*64+b
//! ```
//!
//! # What is checked, and when
//!
//! [`BitmapView::parse`] checks everything the header determines: the cookie,
//! the container count, strictly increasing keys, zero run-bitset padding,
//! each run container's run count (`1..=cardinality`), the offset header
//! against the layout computed from the container sizes, and that every
//! container lies inside the input. After that, no call on the view can read
//! out of bounds or panic, whatever the container *contents* are.
//!
//! [`BitmapView::verify`] (opt-in, O(size)) checks the contents: array values
//! strictly increasing, bitmap popcounts equal to the header cardinality, runs
//! ordered, non-overlapping, inside the chunk, and summing to the cardinality.
//! Operations on a view that parses but does not verify are well defined (no
//! panic, no out-of-bounds read) but their results are unspecified.
//!
//! Byte offsets in [`ViewError`] are relative to the start of the slice given
//! to [`BitmapView::parse`]; trailing bytes after the bitmap are allowed and
//! ignored ([`BitmapView::serialized_len`] tells where the bitmap ends).
//!
//! # Files
//!
//! This file holds [`BitmapView`] and its value iterator. `header.rs` holds
//! the format constants, the field readers and [`BitmapView::parse`];
//! `error.rs` the [`ViewError`]; `container.rs` the [`Container`] that
//! dispatches to one file per container kind (`array.rs`, `bitmap.rs`,
//! `run.rs`: access, iteration, word operations, content check); `words.rs`
//! the chunk bitset ([`Words`]) and the bit-range helpers the kinds share.
//! `shared.rs` holds in-memory bitmaps in the form the evaluator reads
//! ([`Serialized`], [`SharedBitmap`]: serialized once, shared after).

use std::iter::FusedIterator;

mod array;
mod bitmap;
mod container;
mod error;
mod header;
#[allow(unsafe_code)] // run-time CPU dispatch: see the module's contract
mod kernels;
mod run;
mod shared;
mod words;

#[cfg(test)]
mod tests;

pub use array::{ArrayC, ArrayIter};
pub use bitmap::{BitmapC, BitmapIter};
pub use container::{Container, ContainerIter};
pub use error::ViewError;
pub use header::{
    Header, ARRAY_MAX_CARDINALITY, MAX_CONTAINERS, NO_OFFSET_THRESHOLD, SERIAL_COOKIE,
    SERIAL_COOKIE_NO_RUNCONTAINER,
};
pub use kernels::{
    Kernels, Level, BLOCK as KERNEL_BLOCK, RANGE_BLOCK, RANGE_DROP, RANGE_HI, RANGE_KEEP, RANGE_LO,
};
pub use run::{RunC, RunValues};
pub use shared::{portable, Serialized, SharedBitmap};
pub use words::{popcount, Words, CHUNK_WORDS};

use bitmap::BITMAP_BYTES;
use header::{le_u16, le_u32, Offsets};

/// The portable serialization of the empty bitmap: the no-run cookie and
/// zero containers.
static EMPTY: [u8; 8] = [0x3A, 0x30, 0, 0, 0, 0, 0, 0];

/// A container's key and cardinality from its four header bytes (the
/// key, then the cardinality minus one, little-endian).
#[inline]
fn descriptor(d: &[u8]) -> (u16, u32) {
    (le_u16(d, 0), u32::from(le_u16(d, 2)) + 1)
}

/// A validated, borrowed view of one portable roaring bitmap.
#[derive(Debug, Clone, Copy)]
pub struct BitmapView<'a> {
    /// The bitmap's bytes, exactly `serialized_len` long.
    bytes: &'a [u8],
    count: usize,
    /// Position of the run bitset, when the cookie announces run containers.
    run_bitset: Option<usize>,
    /// Position of the key/cardinality header.
    desc: usize,
    offsets: Offsets,
    len: u64,
}

impl<'a> BitmapView<'a> {
    /// The empty bitmap.
    pub fn empty() -> BitmapView<'static> {
        BitmapView {
            bytes: &EMPTY,
            count: 0,
            run_bitset: None,
            desc: 8,
            offsets: Offsets::Header(8),
            len: 0,
        }
    }

    /// The largest value, if any.
    pub fn max(&self) -> Option<u32> {
        let last = self.count.checked_sub(1)?;
        let low = match self.container(last) {
            Container::Run(r) => r.runs().last().map(|(_, last)| last),
            c => c.iter().last(),
        }?;
        Some(u32::from(self.key(last)) << 16 | u32::from(low))
    }

    /// Number of values (sum of the header cardinalities).
    #[inline]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the bitmap holds no value.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of containers (non-empty 2^16-value chunks).
    #[inline]
    pub fn containers(&self) -> usize {
        self.count
    }

    /// Bytes the bitmap occupies at the start of the parsed slice.
    #[inline]
    pub fn serialized_len(&self) -> usize {
        self.bytes.len()
    }

    /// The bitmap's own bytes (exactly [`serialized_len`](Self::serialized_len)).
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Key (high 16 bits of its values) of container `i`.
    ///
    /// # Panics
    /// If `i >= self.containers()`.
    #[inline]
    pub fn key(&self, i: usize) -> u16 {
        assert!(i < self.count, "container index {i} out of range");
        le_u16(self.bytes, self.desc + 4 * i)
    }

    /// Cardinality of container `i`, from the header.
    ///
    /// # Panics
    /// If `i >= self.containers()`.
    #[inline]
    pub fn cardinality(&self, i: usize) -> u32 {
        assert!(i < self.count, "container index {i} out of range");
        u32::from(le_u16(self.bytes, self.desc + 4 * i + 2)) + 1
    }

    /// Whether container `i` is a run container.
    ///
    /// # Panics
    /// If `i >= self.containers()`.
    #[inline]
    pub fn is_run(&self, i: usize) -> bool {
        assert!(i < self.count, "container index {i} out of range");
        match self.run_bitset {
            Some(at) => self.bytes[at + i / 8] >> (i % 8) & 1 == 1,
            None => false,
        }
    }

    #[inline]
    fn offset(&self, i: usize) -> usize {
        match self.offsets {
            Offsets::Header(at) => le_u32(self.bytes, at + 4 * i) as usize,
            Offsets::Inline(ref offsets) => offsets[i],
        }
    }

    /// Index of the container with `key`, by binary search over the keys.
    /// The keys rise strictly, so `key`'s index is at most `key`: a
    /// bitmap with a container in every chunk up to `key` answers at
    /// once, and any other searches no further than `key`.
    pub fn find(&self, key: u16) -> Option<usize> {
        let hi = self.count.min(usize::from(key) + 1);
        if hi == 0 {
            return None;
        }
        let last = le_u16(self.bytes, self.desc + 4 * (hi - 1));
        if last == key {
            return Some(hi - 1);
        }
        if last < key {
            return None;
        }
        let (mut lo, mut hi) = (0usize, hi - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let k = le_u16(self.bytes, self.desc + 4 * mid);
            match k.cmp(&key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The key and cardinality of every container, in key order, read
    /// from the header alone (no container is touched).
    #[inline]
    pub fn keys_and_cardinalities(&self) -> impl ExactSizeIterator<Item = (u16, u32)> + 'a {
        self.bytes[self.desc..self.desc + 4 * self.count]
            .chunks_exact(4)
            .map(descriptor)
    }

    /// Container `i`'s key and cardinality, from the header, if the
    /// bitmap has a container `i`.
    #[inline]
    pub fn key_and_cardinality(&self, i: usize) -> Option<(u16, u32)> {
        (i < self.count).then(|| descriptor(&self.bytes[self.desc + 4 * i..self.desc + 4 * i + 4]))
    }

    /// Looks `key` up among the containers from index `from` on, for a
    /// walk over rising keys: `Ok(i)`, container `i` has it; `Err(i)`, it
    /// would go at `i` (the `from` of the next, larger key). Galloping
    /// from `from`: a key a few containers on costs a few reads.
    pub fn seek(&self, key: u16, from: usize) -> std::result::Result<usize, usize> {
        let key_at = |i: usize| le_u16(self.bytes, self.desc + 4 * i);
        if from < self.count && key_at(from) == key {
            // The next container: a walk over a bitmap's own keys.
            return Ok(from);
        }
        let mut lo = from.min(self.count);
        let mut step = 1;
        let mut hi = lo;
        // Grow [lo, hi) until key(hi) >= key or hi reaches the end.
        while hi < self.count && key_at(hi) < key {
            lo = hi + 1;
            hi = (hi + step).min(self.count);
            step *= 2;
        }
        // key(lo - 1) < key (or lo = from) and key <= key(hi) (or the end).
        let mut hi = (hi + 1).min(self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match key_at(mid).cmp(&key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// Container `i`, borrowing the bytes.
    ///
    /// # Panics
    /// If `i >= self.containers()`.
    pub fn container(&self, i: usize) -> Container<'a> {
        let card = self.cardinality(i);
        let at = self.offset(i);
        if self.is_run(i) {
            let runs = usize::from(le_u16(self.bytes, at));
            Container::Run(RunC {
                bytes: &self.bytes[at + 2..at + 2 + 4 * runs],
                card,
            })
        } else if card <= ARRAY_MAX_CARDINALITY {
            Container::Array(ArrayC {
                bytes: &self.bytes[at..at + 2 * card as usize],
            })
        } else {
            Container::Bitmap(BitmapC {
                bytes: &self.bytes[at..at + BITMAP_BYTES],
                card,
            })
        }
    }

    /// The container holding chunk `key`, if any.
    pub fn container_for_key(&self, key: u16) -> Option<Container<'a>> {
        self.find(key).map(|i| self.container(i))
    }

    /// `(key, container)` pairs in key order.
    pub fn iter_containers(&self) -> impl ExactSizeIterator<Item = (u16, Container<'a>)> + '_ {
        (0..self.count).map(move |i| (self.key(i), self.container(i)))
    }

    /// Whether `x` is in the bitmap. No allocation.
    pub fn contains(&self, x: u32) -> bool {
        match self.find((x >> 16) as u16) {
            Some(i) => self.container(i).contains(x as u16),
            None => false,
        }
    }

    /// All values in increasing order (for a view that verifies).
    pub fn iter(&self) -> Iter<'a> {
        Iter {
            view: *self,
            next: 0,
            base: 0,
            current: None,
        }
    }

    /// Checks the container contents (see the module docs). O(size).
    pub fn verify(&self) -> Result<(), ViewError> {
        for i in 0..self.count {
            let at = self.offset(i);
            match self.container(i) {
                Container::Array(a) => a.verify(i, at)?,
                Container::Bitmap(b) => b.verify(i, at)?,
                Container::Run(r) => r.verify(i, at)?,
            }
        }
        Ok(())
    }

    /// Decodes into an owned bitmap (tests and tools; allocates).
    pub fn to_roaring(&self) -> roaring::RoaringBitmap {
        let mut out = roaring::RoaringBitmap::new();
        for (key, c) in self.iter_containers() {
            let base = u32::from(key) << 16;
            match c {
                Container::Run(r) => {
                    for (start, last) in r.runs() {
                        out.insert_range(base + u32::from(start)..=base + u32::from(last));
                    }
                }
                other => {
                    let values = other.iter().map(|low| base | u32::from(low));
                    if out.append(values.clone()).is_err() {
                        // Unsorted (unverified) contents: insert one by one.
                        out.extend(values);
                    }
                }
            }
        }
        out
    }
}

impl<'a> IntoIterator for &BitmapView<'a> {
    type Item = u32;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Values of a [`BitmapView`], as u32, in container order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    view: BitmapView<'a>,
    next: usize,
    base: u32,
    current: Option<ContainerIter<'a>>,
}

impl Iterator for Iter<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        loop {
            if let Some(current) = &mut self.current {
                if let Some(low) = current.next() {
                    return Some(self.base | u32::from(low));
                }
                self.current = None;
            }
            if self.next >= self.view.count {
                return None;
            }
            self.base = u32::from(self.view.key(self.next)) << 16;
            self.current = Some(self.view.container(self.next).iter());
            self.next += 1;
        }
    }
}

impl FusedIterator for Iter<'_> {}

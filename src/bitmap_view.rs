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

use std::iter::FusedIterator;

/// Number of u64 words that cover one 2^16-value chunk.
pub const CHUNK_WORDS: usize = 1024;

/// One 2^16-value chunk as a plain bitset: bit `b` of word `w` is the low
/// value `w * 64 + b`.
pub type Words = [u64; CHUNK_WORDS];

/// Cookie of a bitmap without run containers.
pub const SERIAL_COOKIE_NO_RUNCONTAINER: u32 = 12346;
/// Low 16 bits of the cookie of a bitmap with run containers.
pub const SERIAL_COOKIE: u16 = 12347;
/// With run containers, the offset header is present only from this many
/// containers on.
pub const NO_OFFSET_THRESHOLD: usize = 4;
/// Largest cardinality stored as an array container (without the run flag).
pub const ARRAY_MAX_CARDINALITY: u32 = 4096;
/// Most containers a bitmap can have (one per key).
pub const MAX_CONTAINERS: usize = 1 << 16;

const BITMAP_BYTES: usize = CHUNK_WORDS * 8;

/// A malformed portable roaring bitmap. `offset` is the byte position, from
/// the start of the parsed slice, of the field that is wrong; `index` is the
/// container concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The input ends before a field or container that the header announces.
    #[error("truncated roaring bitmap: {what} at byte {offset} needs {expected} bytes, only {found} remain")]
    Truncated {
        what: &'static str,
        offset: usize,
        expected: usize,
        found: usize,
    },
    /// The first four bytes are not a portable roaring cookie.
    #[error("not a portable roaring bitmap: cookie at byte {offset} is {found:#010x}, expected 12346 or 12347 in the low 16 bits")]
    BadCookie { offset: usize, found: u32 },
    /// The container count exceeds 65536.
    #[error("container count at byte {offset} is {found}, at most {expected} allowed")]
    TooManyContainers {
        offset: usize,
        expected: u64,
        found: u64,
    },
    /// The run bitset has bits set past the last container.
    #[error("run bitset byte at {offset} is {found:#04x}, only bits {expected:#04x} may be set")]
    RunBitsetPadding {
        offset: usize,
        expected: u8,
        found: u8,
    },
    /// A key is not greater than the one before it.
    #[error("container {index}: key {found} at byte {offset} is not greater than the previous key {previous}")]
    KeysNotIncreasing {
        offset: usize,
        index: usize,
        previous: u16,
        found: u16,
    },
    /// The offset header disagrees with the layout computed from the sizes.
    #[error("container {index}: offset at byte {offset} is {found}, expected {expected}")]
    BadOffset {
        offset: usize,
        index: usize,
        expected: u64,
        found: u32,
    },
    /// A run container's run count is 0 or larger than its cardinality.
    #[error(
        "container {index}: run count at byte {offset} is {found}, expected 1..={expected_max}"
    )]
    BadRunCount {
        offset: usize,
        index: usize,
        expected_max: u32,
        found: u16,
    },
    /// (verify) An array container's values are not strictly increasing.
    #[error("container {index}: array value {found} at byte {offset} does not follow {previous}")]
    ArrayNotSorted {
        offset: usize,
        index: usize,
        previous: u16,
        found: u16,
    },
    /// (verify) A bitmap container's popcount differs from the header.
    #[error(
        "container {index}: bitmap at byte {offset} holds {found} values, header says {expected}"
    )]
    BitmapCardinality {
        offset: usize,
        index: usize,
        expected: u32,
        found: u32,
    },
    /// (verify) A run starts at or before the end of the previous run.
    #[error("container {index}: run at byte {offset} starts at {found}, not after the previous run's end {previous_end}")]
    RunsOverlap {
        offset: usize,
        index: usize,
        previous_end: u16,
        found: u16,
    },
    /// (verify) A run extends past the end of the chunk (low value 65535).
    #[error("container {index}: run at byte {offset} starts at {start} with length-1 {found}, past 65535")]
    RunOverflow {
        offset: usize,
        index: usize,
        start: u16,
        found: u16,
    },
    /// (verify) The runs' total length differs from the header.
    #[error(
        "container {index}: runs at byte {offset} hold {found} values, header says {expected}"
    )]
    RunCardinality {
        offset: usize,
        index: usize,
        expected: u32,
        found: u32,
    },
}

#[inline]
fn need(bytes: &[u8], offset: usize, len: usize, what: &'static str) -> Result<(), ViewError> {
    let found = bytes.len().saturating_sub(offset);
    if found < len {
        return Err(ViewError::Truncated {
            what,
            offset,
            expected: len,
            found,
        });
    }
    Ok(())
}

#[inline]
fn try_u16(bytes: &[u8], offset: usize, what: &'static str) -> Result<u16, ViewError> {
    need(bytes, offset, 2, what)?;
    Ok(le_u16(bytes, offset))
}

#[inline]
fn try_u32(bytes: &[u8], offset: usize, what: &'static str) -> Result<u32, ViewError> {
    need(bytes, offset, 4, what)?;
    Ok(le_u32(bytes, offset))
}

/// Reads a u16 at a position that the caller has already bounds-checked.
#[inline(always)]
fn le_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

#[inline(always)]
fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

#[inline(always)]
fn le_u64(chunk: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(chunk);
    u64::from_le_bytes(b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offsets {
    /// Position of the offset header (validated against the layout).
    Header(usize),
    /// Computed offsets when the format omits the header (< 4 containers).
    Inline([usize; NO_OFFSET_THRESHOLD - 1]),
}

/// The portable serialization of the empty bitmap: the no-run cookie and
/// zero containers.
static EMPTY: [u8; 8] = [0x3A, 0x30, 0, 0, 0, 0, 0, 0];

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
    /// Parses and validates the header of the bitmap at the start of `bytes`.
    ///
    /// O(number of containers), no allocation. Trailing bytes are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ViewError> {
        let cookie = try_u32(bytes, 0, "cookie")?;
        let (count, run_bitset, mut pos) = if cookie == SERIAL_COOKIE_NO_RUNCONTAINER {
            let n = try_u32(bytes, 4, "container count")?;
            if n as usize > MAX_CONTAINERS {
                return Err(ViewError::TooManyContainers {
                    offset: 4,
                    expected: MAX_CONTAINERS as u64,
                    found: u64::from(n),
                });
            }
            (n as usize, None, 8usize)
        } else if cookie as u16 == SERIAL_COOKIE {
            let n = (cookie >> 16) as usize + 1;
            let bitset_len = n.div_ceil(8);
            need(bytes, 4, bitset_len, "run bitset")?;
            if !n.is_multiple_of(8) {
                let at = 4 + bitset_len - 1;
                let allowed = (1u8 << (n % 8)) - 1;
                let found = bytes[at];
                if found & !allowed != 0 {
                    return Err(ViewError::RunBitsetPadding {
                        offset: at,
                        expected: allowed,
                        found,
                    });
                }
            }
            (n, Some(4usize), 4 + bitset_len)
        } else {
            return Err(ViewError::BadCookie {
                offset: 0,
                found: cookie,
            });
        };

        let desc = pos;
        need(bytes, desc, 4 * count, "key/cardinality header")?;
        pos += 4 * count;
        let has_offset_header = run_bitset.is_none() || count >= NO_OFFSET_THRESHOLD;
        let offsets_at = pos;
        if has_offset_header {
            need(bytes, offsets_at, 4 * count, "offset header")?;
            pos += 4 * count;
        }

        let is_run = |i: usize| match run_bitset {
            Some(at) => bytes[at + i / 8] >> (i % 8) & 1 == 1,
            None => false,
        };
        let mut inline = [0usize; NO_OFFSET_THRESHOLD - 1];
        let mut len = 0u64;
        let mut previous: Option<u16> = None;
        for i in 0..count {
            let key = le_u16(bytes, desc + 4 * i);
            let card = u32::from(le_u16(bytes, desc + 4 * i + 2)) + 1;
            if let Some(previous) = previous {
                if key <= previous {
                    return Err(ViewError::KeysNotIncreasing {
                        offset: desc + 4 * i,
                        index: i,
                        previous,
                        found: key,
                    });
                }
            }
            previous = Some(key);
            if has_offset_header {
                let at = offsets_at + 4 * i;
                let found = le_u32(bytes, at);
                if found as usize != pos {
                    return Err(ViewError::BadOffset {
                        offset: at,
                        index: i,
                        expected: pos as u64,
                        found,
                    });
                }
            } else {
                // Only reached with count < NO_OFFSET_THRESHOLD, so always Some.
                if let Some(slot) = inline.get_mut(i) {
                    *slot = pos;
                }
            }
            let size = if is_run(i) {
                let runs = try_u16(bytes, pos, "run count")?;
                if runs == 0 || u32::from(runs) > card {
                    return Err(ViewError::BadRunCount {
                        offset: pos,
                        index: i,
                        expected_max: card,
                        found: runs,
                    });
                }
                2 + 4 * usize::from(runs)
            } else if card <= ARRAY_MAX_CARDINALITY {
                2 * card as usize
            } else {
                BITMAP_BYTES
            };
            need(bytes, pos, size, "container")?;
            pos += size;
            len += u64::from(card);
        }

        Ok(Self {
            bytes: &bytes[..pos],
            count,
            run_bitset,
            desc,
            offsets: if has_offset_header {
                Offsets::Header(offsets_at)
            } else {
                Offsets::Inline(inline)
            },
            len,
        })
    }

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
    pub fn find(&self, key: u16) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.count);
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
                Container::Array(a) => {
                    let mut previous: Option<u16> = None;
                    for (j, v) in a.iter().enumerate() {
                        if let Some(previous) = previous {
                            if v <= previous {
                                return Err(ViewError::ArrayNotSorted {
                                    offset: at + 2 * j,
                                    index: i,
                                    previous,
                                    found: v,
                                });
                            }
                        }
                        previous = Some(v);
                    }
                }
                Container::Bitmap(b) => {
                    let found = b.words().map(u64::count_ones).sum::<u32>();
                    if found != b.card {
                        return Err(ViewError::BitmapCardinality {
                            offset: at,
                            index: i,
                            expected: b.card,
                            found,
                        });
                    }
                }
                Container::Run(r) => {
                    let mut previous_end: Option<u16> = None;
                    let mut total = 0u32;
                    for j in 0..r.run_count() {
                        let run_at = at + 2 + 4 * j;
                        let start = le_u16(r.bytes, 4 * j);
                        let length = le_u16(r.bytes, 4 * j + 2);
                        if let Some(previous_end) = previous_end {
                            if start <= previous_end {
                                return Err(ViewError::RunsOverlap {
                                    offset: run_at,
                                    index: i,
                                    previous_end,
                                    found: start,
                                });
                            }
                        }
                        let end = u32::from(start) + u32::from(length);
                        if end > u32::from(u16::MAX) {
                            return Err(ViewError::RunOverflow {
                                offset: run_at,
                                index: i,
                                start,
                                found: length,
                            });
                        }
                        previous_end = Some(end as u16);
                        total += u32::from(length) + 1;
                    }
                    if total != r.card {
                        return Err(ViewError::RunCardinality {
                            offset: at,
                            index: i,
                            expected: r.card,
                            found: total,
                        });
                    }
                }
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

/// One container (one 2^16-value chunk) borrowed from a [`BitmapView`].
#[derive(Debug, Clone, Copy)]
pub enum Container<'a> {
    Array(ArrayC<'a>),
    Bitmap(BitmapC<'a>),
    Run(RunC<'a>),
}

impl<'a> Container<'a> {
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
        match self {
            Container::Array(a) => a.or_into(words),
            Container::Bitmap(b) => b.or_into(words),
            Container::Run(r) => r.or_into(words),
        }
    }

    /// `words &= container`.
    pub fn and_into(&self, words: &mut Words) {
        match self {
            Container::Array(a) => a.and_into(words),
            Container::Bitmap(b) => b.and_into(words),
            Container::Run(r) => r.and_into(words),
        }
    }

    /// `words &= !container`.
    pub fn andnot_into(&self, words: &mut Words) {
        match self {
            Container::Array(a) => a.andnot_into(words),
            Container::Bitmap(b) => b.andnot_into(words),
            Container::Run(r) => r.andnot_into(words),
        }
    }

    /// `words = container` (every other bit cleared).
    pub fn write_into(&self, words: &mut Words) {
        match self {
            Container::Array(a) => a.write_into(words),
            Container::Bitmap(b) => b.write_into(words),
            Container::Run(r) => r.write_into(words),
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

/// Popcount of a chunk bitset.
#[inline]
pub fn popcount(words: &Words) -> u32 {
    words.iter().map(|w| w.count_ones()).sum()
}

#[inline(always)]
fn bit(low: u16) -> (usize, u64) {
    (usize::from(low >> 6), 1u64 << (low & 63))
}

/// Sets the bits `lo..=hi` (low values) in `words`, a word at a time.
#[inline]
fn set_range(words: &mut Words, lo: u16, hi: u16) {
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
fn clear_range(words: &mut Words, lo: u16, hi: u16) {
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

/// Array container: sorted u16 low values.
#[derive(Debug, Clone, Copy)]
pub struct ArrayC<'a> {
    bytes: &'a [u8],
}

impl<'a> ArrayC<'a> {
    /// Number of values.
    #[inline]
    pub fn len(&self) -> usize {
        self.bytes.len() / 2
    }

    /// Whether the array is empty (never, in a parsed view).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Value `i`, or `None` past the end.
    #[inline]
    pub fn get(&self, i: usize) -> Option<u16> {
        let b = self.bytes.get(2 * i..2 * i + 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    /// Whether `low` is present (binary search).
    pub fn contains(&self, low: u16) -> bool {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let v = le_u16(self.bytes, 2 * mid);
            match v.cmp(&low) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    /// The values in stored order.
    #[inline]
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            chunks: self.bytes.chunks_exact(2),
        }
    }

    /// `words |= array`: four values per 8-byte load (about 5% faster
    /// than one value per 2-byte load).
    pub fn or_into(&self, words: &mut Words) {
        let mut quads = self.bytes.chunks_exact(8);
        for q in &mut quads {
            let x = u64::from_le_bytes([q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]]);
            for k in 0..4 {
                let (w, m) = bit((x >> (16 * k)) as u16);
                words[w] |= m;
            }
        }
        for v in quads.remainder().chunks_exact(2) {
            let (w, m) = bit(u16::from_le_bytes([v[0], v[1]]));
            words[w] |= m;
        }
    }

    /// `words &= !array`, like [`Self::or_into`].
    pub fn andnot_into(&self, words: &mut Words) {
        let mut quads = self.bytes.chunks_exact(8);
        for q in &mut quads {
            let x = u64::from_le_bytes([q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]]);
            for k in 0..4 {
                let (w, m) = bit((x >> (16 * k)) as u16);
                words[w] &= !m;
            }
        }
        for v in quads.remainder().chunks_exact(2) {
            let (w, m) = bit(u16::from_le_bytes([v[0], v[1]]));
            words[w] &= !m;
        }
    }

    /// `words = array`.
    pub fn write_into(&self, words: &mut Words) {
        words.fill(0);
        self.or_into(words);
    }

    /// `words &= array`: the array's bits go into a scratch chunk on the
    /// stack (branch-free, unlike a merge walk), then one AND pass.
    pub fn and_into(&self, words: &mut Words) {
        let mut mask = [0u64; CHUNK_WORDS];
        self.or_into(&mut mask);
        for (w, m) in words.iter_mut().zip(mask.iter()) {
            *w &= m;
        }
    }
}

/// Values of an [`ArrayC`].
#[derive(Debug, Clone)]
pub struct ArrayIter<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl Iterator for ArrayIter<'_> {
    type Item = u16;
    #[inline]
    fn next(&mut self) -> Option<u16> {
        self.chunks.next().map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for ArrayIter<'_> {}
impl FusedIterator for ArrayIter<'_> {}

/// Bitmap container: 1024 little-endian u64 words.
#[derive(Debug, Clone, Copy)]
pub struct BitmapC<'a> {
    bytes: &'a [u8],
    card: u32,
}

impl<'a> BitmapC<'a> {
    /// Cardinality from the header.
    #[inline]
    pub fn cardinality(&self) -> u32 {
        self.card
    }

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

    /// `words |= bitmap`.
    pub fn or_into(&self, words: &mut Words) {
        for (w, c) in words.iter_mut().zip(self.words()) {
            *w |= c;
        }
    }

    /// `words &= bitmap`.
    pub fn and_into(&self, words: &mut Words) {
        for (w, c) in words.iter_mut().zip(self.words()) {
            *w &= c;
        }
    }

    /// `words &= !bitmap`.
    pub fn andnot_into(&self, words: &mut Words) {
        for (w, c) in words.iter_mut().zip(self.words()) {
            *w &= !c;
        }
    }

    /// `words = bitmap`.
    pub fn write_into(&self, words: &mut Words) {
        for (w, c) in words.iter_mut().zip(self.words()) {
            *w = c;
        }
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

/// Run container: `(start, length - 1)` pairs.
#[derive(Debug, Clone, Copy)]
pub struct RunC<'a> {
    bytes: &'a [u8],
    card: u32,
}

impl<'a> RunC<'a> {
    /// Cardinality from the header.
    #[inline]
    pub fn cardinality(&self) -> u32 {
        self.card
    }

    /// Number of runs.
    #[inline]
    pub fn run_count(&self) -> usize {
        self.bytes.len() / 4
    }

    /// Run `i` as `(first, last)`, both inclusive; `last` is clamped to 65535
    /// (a run past the chunk end only occurs in views that fail `verify`).
    ///
    /// # Panics
    /// If `i >= self.run_count()`.
    #[inline]
    pub fn run(&self, i: usize) -> (u16, u16) {
        let start = le_u16(self.bytes, 4 * i);
        let length = le_u16(self.bytes, 4 * i + 2);
        (start, start.saturating_add(length))
    }

    /// The runs as `(first, last)` inclusive pairs.
    pub fn runs(&self) -> impl ExactSizeIterator<Item = (u16, u16)> + 'a {
        let this = *self;
        (0..this.run_count()).map(move |i| this.run(i))
    }

    /// Whether `low` is in a run (binary search over the run starts).
    pub fn contains(&self, low: u16) -> bool {
        // Number of runs whose start is <= low.
        let (mut lo, mut hi) = (0usize, self.run_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if le_u16(self.bytes, 4 * mid) <= low {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo > 0 && self.run(lo - 1).1 >= low
    }

    /// The low values, run by run.
    pub fn iter(&self) -> RunValues<'a> {
        RunValues {
            run: *self,
            next_run: 0,
            next: 1,
            last: 0,
        }
    }

    /// `words |= runs`.
    pub fn or_into(&self, words: &mut Words) {
        for (first, last) in self.runs() {
            set_range(words, first, last);
        }
    }

    /// `words &= !runs`.
    pub fn andnot_into(&self, words: &mut Words) {
        for (first, last) in self.runs() {
            clear_range(words, first, last);
        }
    }

    /// `words = runs`.
    pub fn write_into(&self, words: &mut Words) {
        words.fill(0);
        self.or_into(words);
    }

    /// `words &= runs`: clears the gaps between the runs.
    pub fn and_into(&self, words: &mut Words) {
        // First low value not yet known to be covered or cleared.
        let mut from = 0u32;
        for (first, last) in self.runs() {
            if u32::from(first) > from {
                clear_range(words, from as u16, first - 1);
            }
            from = from.max(u32::from(last) + 1);
        }
        if from <= u32::from(u16::MAX) {
            clear_range(words, from as u16, u16::MAX);
        }
    }
}

/// Low values of a [`RunC`].
#[derive(Debug, Clone)]
pub struct RunValues<'a> {
    run: RunC<'a>,
    next_run: usize,
    /// Next value of the current run, as u32 so that 65536 marks the end.
    next: u32,
    last: u32,
}

impl Iterator for RunValues<'_> {
    type Item = u16;
    #[inline]
    fn next(&mut self) -> Option<u16> {
        if self.next > self.last {
            if self.next_run >= self.run.run_count() {
                return None;
            }
            let (first, last) = self.run.run(self.next_run);
            self.next_run += 1;
            self.next = u32::from(first);
            self.last = u32::from(last);
        }
        let v = self.next as u16;
        self.next += 1;
        Some(v)
    }
}

impl FusedIterator for RunValues<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use roaring::RoaringBitmap;

    fn serialize(rb: &RoaringBitmap) -> Vec<u8> {
        let mut out = Vec::new();
        rb.serialize_into(&mut out).unwrap();
        assert_eq!(out.len(), rb.serialized_size());
        out
    }

    /// The bytes at an odd offset inside a larger buffer, with trailing
    /// garbage: returns the buffer and the bitmap's start.
    fn misaligned(bytes: &[u8]) -> (Vec<u8>, usize) {
        let pad = 3;
        let mut buf = vec![0xA5u8; pad];
        buf.extend_from_slice(bytes);
        buf.extend_from_slice(&[0x5A; 5]);
        (buf, pad)
    }

    fn zero_words() -> Box<Words> {
        Box::new([0u64; CHUNK_WORDS])
    }

    /// Chunk `key` of `rb` as words.
    fn chunk_words(rb: &RoaringBitmap, key: u16) -> Box<Words> {
        let base = u32::from(key) << 16;
        let mut words = zero_words();
        for v in rb.range(base..=base | 0xFFFF) {
            let low = v as u16;
            words[usize::from(low >> 6)] |= 1 << (low & 63);
        }
        words
    }

    fn chunk_values(rb: &RoaringBitmap, key: u16) -> Vec<u16> {
        let base = u32::from(key) << 16;
        rb.range(base..=base | 0xFFFF).map(|v| v as u16).collect()
    }

    fn kinds(view: &BitmapView<'_>) -> (usize, usize, usize) {
        let mut k = (0, 0, 0);
        for (_, c) in view.iter_containers() {
            match c {
                Container::Array(_) => k.0 += 1,
                Container::Bitmap(_) => k.1 += 1,
                Container::Run(_) => k.2 += 1,
            }
        }
        k
    }

    fn range_set(ranges: &[std::ops::RangeInclusive<u32>]) -> RoaringBitmap {
        let mut rb = RoaringBitmap::new();
        for r in ranges {
            rb.insert_range(r.clone());
        }
        rb
    }

    /// Bitmaps covering every container kind and the chunk edges.
    fn fixtures() -> Vec<(&'static str, RoaringBitmap)> {
        let mut out = vec![
            ("empty", RoaringBitmap::new()),
            (
                "edges",
                [
                    0,
                    1,
                    63,
                    64,
                    65535,
                    65536,
                    131071,
                    1 << 31,
                    u32::MAX - 1,
                    u32::MAX,
                ]
                .into_iter()
                .collect(),
            ),
            ("sparse", (0..10_000_000).step_by(997).collect()),
            ("dense", (0..300_000).step_by(3).collect()),
            (
                "array_bitmap_boundary",
                (0..65536u32)
                    .step_by(16)
                    .chain((65536..65536 + 4097 * 15).step_by(15))
                    .collect(),
            ),
            ("alternating_chunk", (7 << 16..8 << 16).step_by(2).collect()),
        ];
        let mut runs_few = range_set(&[10..=5000, u32::MAX - 100..=u32::MAX]);
        runs_few.optimize();
        out.push(("runs_few", runs_few));
        let mut runs_three = range_set(&[0..=65535, 70_000..=70_099, 200_000..=210_000]);
        runs_three.optimize();
        out.push(("runs_three", runs_three));
        let mut runs_four = range_set(&[0..=99, 65536..=65635, 131072..=140000, 196608..=262143]);
        runs_four.optimize();
        out.push(("runs_four", runs_four));
        let mut mixed = range_set(&[10..=5000, 70_000..=140_000, 65536 * 9 + 1..=65536 * 9 + 3]);
        mixed.extend((65536 * 3..65536 * 4).step_by(3));
        mixed.extend((65536 * 5..65536 * 6).step_by(101));
        mixed.extend([u32::MAX, u32::MAX - 2, 1 << 20]);
        mixed.optimize();
        out.push(("mixed", mixed));
        let mut full_run = range_set(&[0..=65535, 5 * 65536..=6 * 65536 - 1]);
        full_run.optimize();
        out.push(("full_chunk_run", full_run));
        let mut full_bitmap = range_set(&[0..=65535, 5 * 65536..=6 * 65536 - 1]);
        full_bitmap.remove_run_compression();
        out.push(("full_chunk_bitmap", full_bitmap));
        out
    }

    fn others() -> Vec<RoaringBitmap> {
        vec![
            RoaringBitmap::new(),
            (0..8 * 65536u32).filter(|v| v % 7 < 3).collect(),
            range_set(&[0..=u32::MAX]),
            range_set(&[
                100..=65_000,
                65536 * 9..=65536 * 9 + 2,
                u32::MAX - 50..=u32::MAX,
            ]),
        ]
    }

    /// Checks a view of `rb` (parsed from misaligned bytes) against roaring,
    /// including the word ops against `other`'s chunks.
    fn check_against(rb: &RoaringBitmap, others: &[RoaringBitmap]) {
        let bytes = serialize(rb);
        let (buf, pad) = misaligned(&bytes);
        let view = BitmapView::parse(&buf[pad..]).unwrap();
        view.verify().unwrap();
        assert_eq!(view.serialized_len(), bytes.len());
        assert_eq!(view.as_bytes(), &bytes[..]);
        assert_eq!(view.len(), rb.len());
        assert_eq!(view.is_empty(), rb.is_empty());
        let keys: Vec<u16> = {
            let mut k: Vec<u16> = rb.iter().map(|v| (v >> 16) as u16).collect();
            k.dedup();
            k
        };
        assert_eq!(view.containers(), keys.len());
        assert!(view.iter().eq(rb.iter()));
        assert_eq!(&view.to_roaring(), rb);

        // contains: members, their neighbours, chunk edges.
        let step = (rb.len() / 50_000).max(1) as usize;
        for v in rb.iter().step_by(step) {
            assert!(view.contains(v), "{v}");
            for n in [v.wrapping_sub(1), v.wrapping_add(1)] {
                assert_eq!(view.contains(n), rb.contains(n), "{n}");
            }
        }
        for v in [0, 1, 65535, 65536, 65537, 1 << 31, u32::MAX - 1, u32::MAX] {
            assert_eq!(view.contains(v), rb.contains(v), "{v}");
        }
        for k in 0..=255u32 {
            let v = k.wrapping_mul(0x9E37_79B9);
            assert_eq!(view.contains(v), rb.contains(v), "{v}");
        }

        let ors: Vec<RoaringBitmap> = others.iter().map(|o| o | rb).collect();
        let ands: Vec<RoaringBitmap> = others.iter().map(|o| o & rb).collect();
        let diffs: Vec<RoaringBitmap> = others.iter().map(|o| o - rb).collect();
        for (i, key) in keys.iter().copied().enumerate() {
            assert_eq!(view.key(i), key);
            assert_eq!(view.find(key), Some(i));
            let c = view.container(i);
            let values = chunk_values(rb, key);
            assert_eq!(c.cardinality() as usize, values.len());
            assert_eq!(view.cardinality(i), c.cardinality());
            assert!(c.iter().eq(values.iter().copied()));
            let expected = chunk_words(rb, key);
            for low in (0..=u16::MAX)
                .step_by(61)
                .chain([0, 1, 63, 64, 65534, 65535])
            {
                let want = expected[usize::from(low >> 6)] >> (low & 63) & 1 == 1;
                assert_eq!(c.contains(low), want, "key {key} low {low}");
            }
            for (j, o) in others.iter().enumerate() {
                let start = chunk_words(o, key);
                let mut w = start.clone();
                c.or_into(&mut w);
                let want = chunk_words(&ors[j], key);
                assert_eq!(w, want, "or key {key}");
                assert_eq!(
                    u64::from(popcount(&w)),
                    ors[j].range_cardinality(chunk_range(key))
                );
                let mut w = start.clone();
                c.and_into(&mut w);
                assert_eq!(w, chunk_words(&ands[j], key), "and key {key}");
                assert_eq!(
                    u64::from(popcount(&w)),
                    ands[j].range_cardinality(chunk_range(key))
                );
                let mut w = start.clone();
                c.andnot_into(&mut w);
                assert_eq!(w, chunk_words(&diffs[j], key), "andnot key {key}");
                assert_eq!(
                    u64::from(popcount(&w)),
                    diffs[j].range_cardinality(chunk_range(key))
                );
                let mut w = start.clone();
                c.write_into(&mut w);
                assert_eq!(w, expected, "write key {key}");
                assert_eq!(popcount(&w), c.cardinality());
            }
        }
        // Keys between and around the containers are absent.
        for k in [0u16, 1, 2, 100, 65534, 65535] {
            assert_eq!(view.find(k), keys.binary_search(&k).ok());
        }
    }

    fn chunk_range(key: u16) -> std::ops::RangeInclusive<u32> {
        let base = u32::from(key) << 16;
        base..=base | 0xFFFF
    }

    /// Runs every accessor on whatever `bytes` parse to; must never panic.
    /// A view that also verifies must be self-consistent and agree with
    /// roaring's own decoder.
    fn exercise(bytes: &[u8]) {
        let Ok(view) = BitmapView::parse(bytes) else {
            return;
        };
        assert!(view.serialized_len() <= bytes.len());
        let verified = view.verify().is_ok();
        let mut total = 0u64;
        let mut words = zero_words();
        for i in 0..view.containers() {
            let key = view.key(i);
            assert_eq!(view.find(key), Some(i));
            let c = view.container(i);
            assert_eq!(c.cardinality(), view.cardinality(i));
            total += u64::from(c.cardinality());
            for low in [0u16, 1, 64, 4096, 32767, 65535] {
                let _ = c.contains(low);
                let _ = view.contains(u32::from(key) << 16 | u32::from(low));
            }
            words.fill(!0);
            c.and_into(&mut words);
            c.or_into(&mut words);
            c.andnot_into(&mut words);
            c.write_into(&mut words);
            let pc = popcount(&words);
            let n = c.iter().take(70_000).count();
            if let Container::Run(r) = c {
                let _ = r.runs().count();
            }
            if verified {
                assert_eq!(pc, c.cardinality());
                assert_eq!(n, c.cardinality() as usize);
                assert!(c.iter().all(|low| c.contains(low)));
                let mut prev: Option<u16> = None;
                for low in c.iter() {
                    if let Some(p) = prev {
                        assert!(p < low);
                    }
                    assert!(words[usize::from(low >> 6)] >> (low & 63) & 1 == 1);
                    prev = Some(low);
                }
            }
        }
        assert_eq!(total, view.len());
        if verified {
            let rb = view.to_roaring();
            assert_eq!(rb.len(), view.len());
            assert!(view.iter().eq(rb.iter()));
            if let Ok(theirs) = RoaringBitmap::deserialize_from(view.as_bytes()) {
                assert_eq!(theirs, rb);
            }
        }
    }

    #[test]
    fn fixtures_agree_with_roaring() {
        let others = others();
        for (name, rb) in fixtures() {
            eprintln!("fixture {name}");
            check_against(&rb, &others);
            check_against(&rb, std::slice::from_ref(&rb));
        }
    }

    #[test]
    fn fixtures_cover_every_container_kind_and_header_form() {
        let all = fixtures();
        let get = |name: &str| &all.iter().find(|(n, _)| *n == name).unwrap().1;
        let view_of = |name: &str| serialize(get(name));

        let bytes = view_of("empty");
        assert_eq!(bytes.len(), 8);
        let view = BitmapView::parse(&bytes).unwrap();
        assert_eq!(
            (view.len(), view.containers(), view.serialized_len()),
            (0, 0, 8)
        );
        assert!(view.iter().next().is_none());
        assert!(!view.contains(0) && !view.contains(u32::MAX));

        let bytes = view_of("edges");
        assert_eq!(le_u32(&bytes, 0), SERIAL_COOKIE_NO_RUNCONTAINER);
        let view = BitmapView::parse(&bytes).unwrap();
        assert_eq!(kinds(&view), (4, 0, 0));
        assert_eq!(view.key(view.containers() - 1), u16::MAX);

        let view_kinds = |name: &str| {
            let bytes = view_of(name);
            kinds(&BitmapView::parse(&bytes).unwrap())
        };
        assert_eq!(view_kinds("dense"), (0, 5, 0));
        assert_eq!(view_kinds("array_bitmap_boundary"), (1, 1, 0));
        assert_eq!(view_kinds("alternating_chunk"), (0, 1, 0));
        assert_eq!(view_kinds("full_chunk_bitmap"), (0, 2, 0));
        assert_eq!(view_kinds("full_chunk_run"), (0, 0, 2));
        let (a, b, r) = view_kinds("mixed");
        assert!(a >= 1 && b >= 1 && r >= 2, "{a} {b} {r}");

        // Run cookie without offset header (< 4 containers) and with it.
        for (name, n) in [("runs_few", 2usize), ("runs_three", 3), ("runs_four", 4)] {
            let bytes = view_of(name);
            assert_eq!(le_u16(&bytes, 0), SERIAL_COOKIE, "{name}");
            assert_eq!(usize::from(le_u16(&bytes, 2)) + 1, n, "{name}");
            let view = BitmapView::parse(&bytes).unwrap();
            assert_eq!(view.containers(), n);
            assert!(view
                .iter_containers()
                .any(|(_, c)| matches!(c, Container::Run(_))));
            let has_header = matches!(view.offsets, Offsets::Header(_));
            assert_eq!(has_header, n >= NO_OFFSET_THRESHOLD, "{name}");
        }

        // A full chunk stored as one run: cardinality 65536 (header 65535).
        let bytes = view_of("full_chunk_run");
        let view = BitmapView::parse(&bytes).unwrap();
        let Container::Run(r) = view.container(0) else {
            panic!("expected a run container");
        };
        assert_eq!(
            (r.cardinality(), r.run_count(), r.run(0)),
            (65536, 1, (0, 65535))
        );
        let mut w = zero_words();
        r.or_into(&mut w);
        assert!(w.iter().all(|&x| x == !0));
    }

    #[test]
    fn view_works_at_every_alignment() {
        let all = fixtures();
        let rb = &all.iter().find(|(n, _)| *n == "mixed").unwrap().1;
        let bytes = serialize(rb);
        for pad in 0..16 {
            let mut buf = vec![0xFFu8; pad];
            buf.extend_from_slice(&bytes);
            let view = BitmapView::parse(&buf[pad..]).unwrap();
            view.verify().unwrap();
            assert!(view.iter().eq(rb.iter()));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for (name, rb) in fixtures() {
            let bytes = serialize(&rb);
            let (buf, pad) = misaligned(&bytes);
            for cut in 0..bytes.len() {
                let err = BitmapView::parse(&buf[pad..pad + cut]);
                assert!(
                    matches!(err, Err(ViewError::Truncated { .. })),
                    "{name} cut at {cut}: {err:?}"
                );
            }
            assert!(BitmapView::parse(&buf[pad..pad + bytes.len()]).is_ok());
        }
    }

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
            let mut w = zero_words();
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

    // ---- malformed headers: each error, with its fields ----

    fn edges_bytes() -> Vec<u8> {
        serialize(&[1u32, 2, 70_000, 200_000, 300_000].into_iter().collect())
    }

    #[test]
    fn bad_cookie() {
        let mut bytes = edges_bytes();
        bytes[0] ^= 0xFF;
        assert!(matches!(
            BitmapView::parse(&bytes),
            Err(ViewError::BadCookie { offset: 0, .. })
        ));
        // 12346 in the low bits with a non-zero high half is not a cookie.
        bytes = edges_bytes();
        bytes[2] = 1;
        assert!(matches!(
            BitmapView::parse(&bytes),
            Err(ViewError::BadCookie { .. })
        ));
        assert!(matches!(
            BitmapView::parse(&[]),
            Err(ViewError::Truncated {
                offset: 0,
                expected: 4,
                found: 0,
                ..
            })
        ));
    }

    #[test]
    fn too_many_containers() {
        let mut bytes = edges_bytes();
        bytes[4..8].copy_from_slice(&65537u32.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap_err(),
            ViewError::TooManyContainers {
                offset: 4,
                expected: 65536,
                found: 65537
            }
        );
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BitmapView::parse(&bytes).is_err());
    }

    #[test]
    fn keys_must_increase() {
        // Containers: keys 0, 1, 3, 4 (4 containers, no runs).
        let mut bytes = edges_bytes();
        assert_eq!(le_u32(&bytes, 4), 4);
        bytes[8 + 4 * 2..8 + 4 * 2 + 2].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap_err(),
            ViewError::KeysNotIncreasing {
                offset: 16,
                index: 2,
                previous: 1,
                found: 1
            }
        );
    }

    #[test]
    fn offsets_must_match_layout() {
        let mut bytes = edges_bytes();
        let at = 8 + 4 * 4 + 4; // offset of container 1
        let good = le_u32(&bytes, at);
        bytes[at..at + 4].copy_from_slice(&(good + 2).to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap_err(),
            ViewError::BadOffset {
                offset: at,
                index: 1,
                expected: u64::from(good),
                found: good + 2
            }
        );
    }

    #[test]
    fn cardinality_past_the_end_is_truncation() {
        let mut bytes = edges_bytes();
        // Container 3 (last) claims 3 values but has 2 bytes.
        bytes[8 + 4 * 3 + 2] = 2;
        let err = BitmapView::parse(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                ViewError::Truncated {
                    what: "container",
                    expected: 6,
                    found: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    fn runs_few_bytes() -> Vec<u8> {
        let mut rb = range_set(&[10..=5000, u32::MAX - 100..=u32::MAX]);
        rb.optimize();
        serialize(&rb)
    }

    #[test]
    fn run_bitset_padding_and_run_count() {
        let mut bytes = runs_few_bytes();
        // 2 containers: bitset is byte 4, only bits 0b11 may be set.
        assert_eq!(bytes[4], 0b11);
        bytes[4] |= 0b100;
        assert_eq!(
            BitmapView::parse(&bytes).unwrap_err(),
            ViewError::RunBitsetPadding {
                offset: 4,
                expected: 0b11,
                found: 0b111
            }
        );
        // Containers start at 4 + 1 + 2 * 4 = 13 (no offset header).
        let mut bytes = runs_few_bytes();
        bytes[13..15].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap_err(),
            ViewError::BadRunCount {
                offset: 13,
                index: 0,
                expected_max: 4991,
                found: 0
            }
        );
    }

    #[test]
    fn verify_catches_bad_contents() {
        // Array not sorted: swap container 0's two values (1, 2).
        let mut bytes = edges_bytes();
        let at = le_u32(&bytes, 8 + 16) as usize;
        bytes[at..at + 4].copy_from_slice(&[2, 0, 1, 0]);
        let view = BitmapView::parse(&bytes).unwrap();
        assert_eq!(
            view.verify().unwrap_err(),
            ViewError::ArrayNotSorted {
                offset: at + 2,
                index: 0,
                previous: 2,
                found: 1
            }
        );
        exercise(&bytes);

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

        // Runs: container 0 is one run 10 (length-1 4990) at byte 15.
        let good = runs_few_bytes();
        assert_eq!(
            (le_u16(&good, 13), le_u16(&good, 15), le_u16(&good, 17)),
            (1, 10, 4990)
        );
        let mut bytes = good.clone();
        bytes[17..19].copy_from_slice(&4989u16.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap().verify().unwrap_err(),
            ViewError::RunCardinality {
                offset: 13,
                index: 0,
                expected: 4991,
                found: 4990
            }
        );
        exercise(&bytes);
        let mut bytes = good.clone();
        bytes[15..17].copy_from_slice(&65000u16.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap().verify().unwrap_err(),
            ViewError::RunOverflow {
                offset: 15,
                index: 0,
                start: 65000,
                found: 4990
            }
        );
        exercise(&bytes);

        // Overlapping runs: two runs in one container.
        let mut rb = range_set(&[0..=9, 20..=29]);
        rb.optimize();
        let mut bytes = serialize(&rb);
        // 1 container: cookie 4, bitset 1, header 4 -> container at 9.
        assert_eq!(le_u16(&bytes, 9), 2);
        bytes[15..17].copy_from_slice(&5u16.to_le_bytes());
        assert_eq!(
            BitmapView::parse(&bytes).unwrap().verify().unwrap_err(),
            ViewError::RunsOverlap {
                offset: 15,
                index: 0,
                previous_end: 9,
                found: 5
            }
        );
        exercise(&bytes);
    }

    #[test]
    fn error_messages_name_the_field() {
        let err = BitmapView::parse(&[0x3A, 0x30, 0, 0, 1, 0, 0, 0]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("key/cardinality header") && msg.contains("byte 8"),
            "{msg}"
        );
    }

    /// Seeded header mutations: every outcome occurs, and whatever parses
    /// and verifies is accepted by roaring's own decoder with the same set.
    #[test]
    fn seeded_mutations_agree_with_roaring_decoder() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5E6_0001);
        let (mut parse_err, mut verify_err, mut verified) = (0, 0, 0);
        for _ in 0..4000 {
            let mut rb = RoaringBitmap::new();
            for _ in 0..rng.gen_range(0..6) {
                let start = rng.gen_range(0..4 * 65536u32);
                if rng.gen_bool(0.5) {
                    rb.insert_range(start..=start + rng.gen_range(0..20_000));
                } else {
                    rb.insert(start);
                }
            }
            if rng.gen_bool(0.5) {
                rb.optimize();
            }
            let mut bytes = serialize(&rb);
            for _ in 0..rng.gen_range(1..3) {
                let i = rng.gen_range(0..bytes.len().min(80));
                bytes[i] = rng.gen();
            }
            exercise(&bytes);
            match BitmapView::parse(&bytes) {
                Err(_) => parse_err += 1,
                Ok(view) => match view.verify() {
                    Err(_) => verify_err += 1,
                    Ok(()) => {
                        verified += 1;
                        let theirs = RoaringBitmap::deserialize_from(view.as_bytes()).unwrap();
                        assert_eq!(theirs, view.to_roaring());
                    }
                },
            }
        }
        assert!(
            parse_err > 100 && verify_err > 100 && verified > 100,
            "{parse_err} {verify_err} {verified}"
        );
    }

    // ---- property tests ----

    fn arb_bitmap() -> impl Strategy<Value = RoaringBitmap> {
        let low_value = (0u32..6 * 65536).boxed();
        let any_value = any::<u32>().boxed();
        let item = prop_oneof![
            3 => low_value.clone().prop_map(|v| (v, 0u32)),
            1 => any_value.prop_map(|v| (v, 0u32)),
            2 => (low_value, 0u32..70_000).prop_map(|(v, n)| (v, n)),
            1 => (0u32..70_000).prop_map(|n| (u32::MAX - n, n)),
            1 => ((0u32..8).prop_map(|k| k << 16), 0u32..8000)
                .prop_map(|(base, n)| (base, n)),
        ];
        (prop::collection::vec(item, 0..40), any::<bool>(), 0u32..4).prop_map(
            |(items, optimize, stride)| {
                let mut rb = RoaringBitmap::new();
                for (start, n) in items {
                    let end = start.saturating_add(n);
                    if stride == 0 || n < 4 {
                        rb.insert_range(start..=end);
                    } else {
                        rb.extend((start..=end).step_by(stride as usize + 1));
                    }
                }
                if optimize {
                    rb.optimize();
                }
                rb
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn prop_view_agrees_with_roaring(rb in arb_bitmap(), other in arb_bitmap()) {
            check_against(&rb, &[other]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

        #[test]
        fn prop_mutated_bytes_never_panic(
            rb in arb_bitmap(),
            mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let mut bytes = serialize(&rb);
            for (i, b) in mutations {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let (buf, pad) = misaligned(&bytes);
            exercise(&buf[pad..pad + bytes.len()]);
        }

        #[test]
        fn prop_mutated_header_never_panics(
            rb in arb_bitmap(),
            mutations in prop::collection::vec((0usize..64, any::<u8>()), 1..4),
        ) {
            // Mutations aimed at the header, where the structure is decided.
            let mut bytes = serialize(&rb);
            for (i, b) in mutations {
                if i < bytes.len() {
                    bytes[i] = b;
                }
            }
            exercise(&bytes);
        }

        #[test]
        fn prop_random_bytes_never_panic(
            cookie in prop_oneof![
                Just(SERIAL_COOKIE_NO_RUNCONTAINER),
                (0u32..8).prop_map(|n| u32::from(SERIAL_COOKIE) | n << 16),
                any::<u32>(),
            ],
            tail in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = cookie.to_le_bytes().to_vec();
            bytes.extend_from_slice(&tail);
            exercise(&bytes);
        }
    }

    #[test]
    fn the_empty_view_is_the_empty_bitmap() {
        let parsed = BitmapView::parse(&EMPTY).unwrap();
        let e = BitmapView::empty();
        assert_eq!((parsed.len(), parsed.containers()), (0, 0));
        assert_eq!((e.len(), e.containers(), e.max()), (0, 0, None));
        assert!(!e.contains(0) && e.as_bytes() == serialize(&RoaringBitmap::new()));
    }

    #[test]
    fn max_is_the_largest_value_of_every_container_kind() {
        let mut run: RoaringBitmap = (0..10).collect();
        run.insert_range(131_000..=131_071);
        run.optimize();
        for rb in [
            [5u32, 70_000, 1 << 20]
                .into_iter()
                .collect::<RoaringBitmap>(),
            (0..100_000).step_by(3).collect(),
            run,
        ] {
            let bytes = serialize(&rb);
            assert_eq!(BitmapView::parse(&bytes).unwrap().max(), rb.max());
        }
    }
}

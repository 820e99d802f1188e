//! [`ViewError`]: what is wrong with a malformed bitmap, and where.

/// A malformed portable roaring bitmap. `offset` is the byte position, from
/// the start of the parsed slice, of the field that is wrong; `index` is the
/// container concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The input ends before a field or container that the header announces.
    #[error("truncated roaring bitmap: {what} at byte {offset} needs {expected} bytes, only {found} remain")]
    Truncated {
        /// The field or container that is cut off.
        what: &'static str,
        /// Where it starts (bytes from the start of the slice).
        offset: usize,
        /// The bytes it needs.
        expected: usize,
        /// The bytes that remain.
        found: usize,
    },
    /// The first four bytes are not a portable roaring cookie.
    #[error("not a portable roaring bitmap: cookie at byte {offset} is {found:#010x}, expected 12346 or 12347 in the low 16 bits")]
    BadCookie {
        /// Where the cookie is (bytes from the start of the slice).
        offset: usize,
        /// The cookie read.
        found: u32,
    },
    /// The container count exceeds 65536.
    #[error("container count at byte {offset} is {found}, at most {expected} allowed")]
    TooManyContainers {
        /// Where the count is (bytes from the start of the slice).
        offset: usize,
        /// The most containers a bitmap can have (65536).
        expected: u64,
        /// The count read.
        found: u64,
    },
    /// The run bitset has bits set past the last container.
    #[error("run bitset byte at {offset} is {found:#04x}, only bits {expected:#04x} may be set")]
    RunBitsetPadding {
        /// Where the byte is (bytes from the start of the slice).
        offset: usize,
        /// The bits that may be set in it.
        expected: u8,
        /// The byte read.
        found: u8,
    },
    /// A key is not greater than the one before it.
    #[error("container {index}: key {found} at byte {offset} is not greater than the previous key {previous}")]
    KeysNotIncreasing {
        /// Where the key is (bytes from the start of the slice).
        offset: usize,
        /// The container.
        index: usize,
        /// The previous container's key.
        previous: u16,
        /// The key read.
        found: u16,
    },
    /// The offset header disagrees with the layout computed from the sizes.
    #[error("container {index}: offset at byte {offset} is {found}, expected {expected}")]
    BadOffset {
        /// Where the offset field is (bytes from the start of the slice).
        offset: usize,
        /// The container.
        index: usize,
        /// The offset the sizes give.
        expected: u64,
        /// The offset read.
        found: u32,
    },
    /// A run container's run count is 0 or larger than its cardinality.
    #[error(
        "container {index}: run count at byte {offset} is {found}, expected 1..={expected_max}"
    )]
    BadRunCount {
        /// Where the run count is (bytes from the start of the slice).
        offset: usize,
        /// The container.
        index: usize,
        /// The largest count that fits its cardinality.
        expected_max: u32,
        /// The count read.
        found: u16,
    },
    /// (verify) An array container's values are not strictly increasing.
    #[error("container {index}: array value {found} at byte {offset} does not follow {previous}")]
    ArrayNotSorted {
        /// Where the value is (bytes from the start of the slice).
        offset: usize,
        /// The container.
        index: usize,
        /// The value before it.
        previous: u16,
        /// The value read.
        found: u16,
    },
    /// (verify) A bitmap container's popcount differs from the header.
    #[error(
        "container {index}: bitmap at byte {offset} holds {found} values, header says {expected}"
    )]
    BitmapCardinality {
        /// Where the container's words are (bytes from the start of the slice).
        offset: usize,
        /// The container.
        index: usize,
        /// The cardinality in the header.
        expected: u32,
        /// The values its words hold.
        found: u32,
    },
    /// (verify) A run starts at or before the end of the previous run.
    #[error("container {index}: run at byte {offset} starts at {found}, not after the previous run's end {previous_end}")]
    RunsOverlap {
        /// Where the run is (bytes from the start of the slice).
        offset: usize,
        /// The container.
        index: usize,
        /// The last value of the previous run.
        previous_end: u16,
        /// The run's start.
        found: u16,
    },
    /// (verify) A run extends past the end of the chunk (low value 65535).
    #[error("container {index}: run at byte {offset} starts at {start} with length-1 {found}, past 65535")]
    RunOverflow {
        /// Where the run is (bytes from the start of the slice).
        offset: usize,
        /// The container.
        index: usize,
        /// The run's start.
        start: u16,
        /// The run's length minus one.
        found: u16,
    },
    /// (verify) The runs' total length differs from the header.
    #[error(
        "container {index}: runs at byte {offset} hold {found} values, header says {expected}"
    )]
    RunCardinality {
        /// Where the container's runs are (bytes from the start of the slice).
        offset: usize,
        /// The container.
        index: usize,
        /// The cardinality in the header.
        expected: u32,
        /// The values its runs hold.
        found: u32,
    },
}

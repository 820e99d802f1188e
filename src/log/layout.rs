//! The log format's constants, shared by the encoding ([`super::format`])
//! and the errors that name them ([`super::error`]).

/// The first 8 bytes of every log file.
pub const MAGIC: [u8; 8] = *b"SEGQLOG\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Size of the file header: magic, version, first_seq, header checksum.
pub const HEADER_LEN: u64 = 24;
/// Size of a record's frame before its payload: len, seq, crc.
pub const RECORD_HEADER_LEN: u64 = 16;
/// The largest payload one record may carry (64 MiB). Larger payloads are
/// refused on append; a length field above it is damage on replay.
pub const MAX_PAYLOAD: usize = 64 << 20;

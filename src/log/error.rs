//! The log's error type. Every variant names the file (`path`: a filesystem
//! path, or `memory:NAME` for the in-memory test file) and, where it applies,
//! the byte offset and what was expected versus what was found.

use std::io;
use std::sync::Arc;

use super::layout::{MAGIC, MAX_PAYLOAD};

/// An error of the change log: opening, reading, appending or resetting it.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O call on the log file failed outside a commit (create, open,
    /// recovery). `op` is what was being done: "read", "truncate", ...
    #[error("{path}: I/O error during {op}: {source}")]
    Io {
        /// The log file.
        path: String,
        /// What was being done: "read", "truncate", …
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The file is shorter than a header: it is empty, or it was never fully
    /// created (a crash while creating it).
    #[error(
        "{path}: not a segq log: expected a {expected}-byte header, found only {found} bytes \
         (an empty file, or one whose creation never completed)"
    )]
    TruncatedHeader {
        /// The log file.
        path: String,
        /// The header's size in bytes.
        expected: u64,
        /// The file's size in bytes.
        found: u64,
    },

    /// The first 8 bytes are not the magic bytes.
    #[error(
        "{path}: not a segq log: expected magic bytes {:?} at offset 0, found {:?}",
        String::from_utf8_lossy(&MAGIC),
        String::from_utf8_lossy(found)
    )]
    BadMagic {
        /// The log file.
        path: String,
        /// The first bytes read.
        found: Vec<u8>,
    },

    /// A format version this build cannot read.
    #[error("{path}: unsupported log format version {found} at offset 8: this build reads version {expected}")]
    UnsupportedVersion {
        /// The log file.
        path: String,
        /// The version this build reads.
        expected: u32,
        /// The version in the header.
        found: u32,
    },

    /// The header's own checksum does not match its bytes: the header is
    /// damaged, and the first sequence number it holds cannot be trusted.
    #[error(
        "{path}: damaged log header: checksum at offset 20 is {stored:#010x}, \
         the header bytes hash to {computed:#010x}"
    )]
    HeaderChecksum {
        /// The log file.
        path: String,
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the header's bytes.
        computed: u32,
    },

    /// `create` was given a file that already holds bytes.
    #[error("{path}: cannot create a log here: expected an empty file, found {found} bytes")]
    NotEmpty {
        /// The log file.
        path: String,
        /// The file's size in bytes.
        found: u64,
    },

    /// `create_file` was given a path that already exists.
    #[error("{path}: cannot create a log here: the file already exists")]
    AlreadyExists {
        /// The path given.
        path: String,
    },

    /// A payload larger than [`MAX_PAYLOAD`] was refused; nothing was appended.
    #[error("log payload of {found} bytes refused: at most {max} bytes per record", max = MAX_PAYLOAD)]
    PayloadTooLarge {
        /// The payload's size in bytes.
        found: usize,
    },

    /// The sequence numbers ran out (the next one would not fit in a u64).
    #[error("{path}: sequence numbers exhausted: cannot append {count} more record(s) after seq {next_seq}")]
    SeqExhausted {
        /// The log file.
        path: String,
        /// The next seq it would hand out.
        next_seq: u64,
        /// The records asked for.
        count: u64,
    },

    /// `wait_durable` was asked about a sequence number never handed out.
    #[error("{path}: seq {seq} was never submitted: the next seq to be handed out is {next_seq}")]
    NotSubmitted {
        /// The log file.
        path: String,
        /// The seq asked about.
        seq: u64,
        /// The next seq to be handed out.
        next_seq: u64,
    },

    /// The write or fsync of the batch holding this record failed, or the
    /// record was submitted after such a batch: it is not durable and never
    /// will be (its seq is abandoned, never handed out again). After a
    /// crash the file may still hold part of it; recovery cuts what does
    /// not follow the durable records, and [`LogWriter::reset`] cuts it
    /// before anything else is appended. The writer refuses appends until
    /// it is reset.
    ///
    /// [`LogWriter::reset`]: super::LogWriter::reset
    #[error(
        "{path}: log {op} failed for records {first_seq}..={last_seq}, which are not durable: \
         {source}; the log refuses appends until it is reset at its durable end"
    )]
    CommitFailed {
        /// The log file.
        path: String,
        /// What failed: "write", "fsync", …
        op: &'static str,
        /// The first seq of the records that are not durable.
        first_seq: u64,
        /// The last seq of them.
        last_seq: u64,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },

    /// An earlier write or fsync failed, and the log was not reset since:
    /// the file may hold bytes of records that are not durable, so nothing
    /// is appended until [`LogWriter::reset`] has cut the file back to its
    /// durable end.
    ///
    /// [`LogWriter::reset`]: super::LogWriter::reset
    #[error(
        "{path}: the log refuses appends since a {op} failed ({source}); \
         it must be reset at its durable end first"
    )]
    Poisoned {
        /// The log file.
        path: String,
        /// What failed first: "write", "fsync", …
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
}

impl LogError {
    pub(crate) fn io(path: &str, op: &'static str, source: io::Error) -> Self {
        LogError::Io {
            path: path.to_string(),
            op,
            source,
        }
    }

    /// True for the errors that say the file is not a readable segq log
    /// (as opposed to an I/O failure or a refused append).
    pub fn is_bad_header(&self) -> bool {
        matches!(
            self,
            LogError::TruncatedHeader { .. }
                | LogError::BadMagic { .. }
                | LogError::UnsupportedVersion { .. }
                | LogError::HeaderChecksum { .. }
        )
    }

    /// The failed operation and its I/O error, for the errors of a failed
    /// commit (no path: fit for a message to a client).
    pub fn commit_failure(&self) -> Option<(&'static str, &io::Error)> {
        match self {
            LogError::CommitFailed { op, source, .. } | LogError::Poisoned { op, source, .. } => {
                Some((op, source))
            }
            _ => None,
        }
    }

    /// True when a write or fsync of the log failed: the record is not
    /// durable, and the writer refuses appends until it is
    /// [reset](super::LogWriter::reset).
    pub fn is_poisoned(&self) -> bool {
        matches!(
            self,
            LogError::CommitFailed { .. } | LogError::Poisoned { .. }
        )
    }
}

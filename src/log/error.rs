//! The log's error type. Every variant names the file (`path`: a filesystem
//! path, or `memory:NAME` for the in-memory test file) and, where it applies,
//! the byte offset and what was expected versus what was found.

use std::io;
use std::sync::Arc;

use super::format::{MAGIC, MAX_PAYLOAD};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O call on the log file failed outside a commit (create, open,
    /// recovery). `op` is what was being done: "read", "truncate", ...
    #[error("{path}: I/O error during {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
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
        path: String,
        expected: u64,
        found: u64,
    },

    /// The first 8 bytes are not the magic bytes.
    #[error(
        "{path}: not a segq log: expected magic bytes {:?} at offset 0, found {:?}",
        String::from_utf8_lossy(&MAGIC),
        String::from_utf8_lossy(found)
    )]
    BadMagic { path: String, found: Vec<u8> },

    /// A format version this build cannot read.
    #[error("{path}: unsupported log format version {found} at offset 8: this build reads version {expected}")]
    UnsupportedVersion {
        path: String,
        expected: u32,
        found: u32,
    },

    /// The header's own checksum does not match its bytes: the header is
    /// damaged, and the first sequence number it holds cannot be trusted.
    #[error(
        "{path}: damaged log header: checksum at offset 20 is {stored:#010x}, \
         the header bytes hash to {computed:#010x}"
    )]
    HeaderChecksum {
        path: String,
        stored: u32,
        computed: u32,
    },

    /// `create` was given a file that already holds bytes.
    #[error("{path}: cannot create a log here: expected an empty file, found {found} bytes")]
    NotEmpty { path: String, found: u64 },

    /// `create_file` was given a path that already exists.
    #[error("{path}: cannot create a log here: the file already exists")]
    AlreadyExists { path: String },

    /// A payload larger than [`MAX_PAYLOAD`] was refused; nothing was appended.
    #[error("log payload of {found} bytes refused: at most {max} bytes per record", max = MAX_PAYLOAD)]
    PayloadTooLarge { found: usize },

    /// The sequence numbers ran out (the next one would not fit in a u64).
    #[error("{path}: sequence numbers exhausted: cannot append {count} more record(s) after seq {next_seq}")]
    SeqExhausted {
        path: String,
        next_seq: u64,
        count: u64,
    },

    /// `wait_durable` was asked about a sequence number never handed out.
    #[error("{path}: seq {seq} was never submitted: the next seq to be handed out is {next_seq}")]
    NotSubmitted {
        path: String,
        seq: u64,
        next_seq: u64,
    },

    /// The write or fsync of the batch holding this record failed. The
    /// record is not acknowledged: after a restart it may or may not be in
    /// the log. The writer is poisoned from now on.
    #[error(
        "{path}: log {op} failed for records {first_seq}..={last_seq}, which are not durable: \
         {source}; the log is poisoned: restart and replay it"
    )]
    CommitFailed {
        path: String,
        op: &'static str,
        first_seq: u64,
        last_seq: u64,
        #[source]
        source: Arc<io::Error>,
    },

    /// An earlier write or fsync failed: after a failed fsync the file's
    /// state cannot be trusted (the kernel may have dropped the dirty pages),
    /// so every later append is refused until the process restarts and
    /// replays the log.
    #[error(
        "{path}: the log is poisoned since a {op} failed ({source}); \
         no more records can be appended: restart and replay it"
    )]
    Poisoned {
        path: String,
        op: &'static str,
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

    /// True when the writer is poisoned (this error or any later append
    /// will fail the same way): the process must restart and replay.
    pub fn is_poisoned(&self) -> bool {
        matches!(
            self,
            LogError::CommitFailed { .. } | LogError::Poisoned { .. }
        )
    }
}

//! The durable change log: one append-only file of records per workspace.
//! A change is acknowledged only once its record is fsynced; after a crash
//! the log is replayed to rebuild what the last snapshot does not hold.
//!
//! The payload of a record is opaque bytes: the caller serialises its own
//! record type. This module depends on nothing else in the crate.
//!
//! # File format (version 1, all integers little-endian)
//!
//! ```text
//! offset  0                8          12                  20         24
//!         +----------------+----------+-------------------+----------+
//! header  | magic          | version  | first_seq         | hdr_crc  |
//!         | "SEGQLOG\0"    | u32 = 1  | u64               | u32      |
//!         +----------------+----------+-------------------+----------+
//!
//! then, until the end of the file, records:
//!
//!         0        4                  12         16               16 + len
//!         +--------+------------------+----------+-----------------+
//! record  | len    | seq              | crc      | payload         |
//!         | u32    | u64              | u32      | len bytes       |
//!         +--------+------------------+----------+-----------------+
//! ```
//!
//! | Part   | Offset | Size | Field       | Meaning |
//! |--------|--------|------|-------------|---------|
//! | header | 0      | 8    | `magic`     | the bytes `SEGQLOG\0` |
//! | header | 8      | 4    | `version`   | format version, u32 LE; this build reads and writes 1 |
//! | header | 12     | 8    | `first_seq` | u64 LE: seq of the first record of this file (a log started after a snapshot covering seq N has N + 1) |
//! | header | 20     | 4    | `hdr_crc`   | u32 LE: CRC-32 of header bytes 0..20 |
//! | record | +0     | 4    | `len`       | u32 LE: payload length, at most [`MAX_PAYLOAD`] (64 MiB) |
//! | record | +4     | 8    | `seq`       | u64 LE: `first_seq` for the first record, then +1 for each |
//! | record | +12    | 4    | `crc`       | u32 LE: CRC-32 of record bytes +0..+12 (`len`, `seq`) followed by the payload |
//! | record | +16    | len  | `payload`   | opaque bytes |
//!
//! CRC-32 is the IEEE polynomial (zlib's `crc32`, computed by `crc32fast`).
//! The header carries its own checksum beyond the magic, version and first
//! seq: a flipped bit in `first_seq` would otherwise make every record look
//! out of sequence, and recovery would cut the whole log.
//!
//! # Recovery
//!
//! [`LogWriter::open`] rejects a bad header with an error naming the file
//! (nothing is changed), then reads records in order and stops at the first
//! one that is torn (the file ends inside it), oversized, fails its checksum
//! or does not carry the next seq. It cuts the file there, syncs, and
//! reports a [`Recovery`]. Damage in the middle of the file is cut the same
//! way as a torn tail, together with every record after it: by design,
//! since a record after a bad one cannot be trusted to follow it. The report
//! says how many bytes were cut. [`LogWriter::scan`] reports the same
//! without changing the file.
//!
//! # Writing
//!
//! [`LogWriter`] is shared by threads (`Arc<LogWriter>`) and commits in
//! groups: concurrent appends share one write and one fsync (see
//! `writer.rs` for the protocol, the failure rules and the async story).
//!
//! After a failed write or fsync the writer refuses appends until
//! [`LogWriter::reset`]: that cuts the file back to its durable length and
//! writes an ordinary record (a payload its owner chooses) for each seq
//! it abandoned, so seqs stay consecutive and the format is unchanged: a
//! recovery reads the fillers as records like any other.
//!
//! # Storage
//!
//! The log reads and writes through the [`LogFile`] trait: [`FsFile`] is the
//! real file; [`FaultyFile`] is an in-memory file that models page cache
//! versus disk, so tests can crash it after any write or sync, keep any
//! prefix of the unsynced bytes, or make the n-th write or sync fail.
//!
//! # Rotation
//!
//! A log file starts at the seq in its header. After a snapshot that covers
//! seq N, compaction starts a new file with [`create_file`] (or
//! [`LogWriter::create`]) at `first_seq = N + 1` and removes the old one
//! once the snapshot's manifest is published.

mod error;
#[cfg(any(test, feature = "test-support"))]
mod faulty;
mod format;
mod layout;
mod storage;
mod writer;

use std::fs;
use std::io;
use std::path::Path;

pub use error::LogError;
#[cfg(any(test, feature = "test-support"))]
pub use faulty::{DiskFull, FaultStats, FaultyFile, OnDisk};
pub use format::{
    encode_record, Damage, Recovery, HEADER_LEN, MAGIC, MAX_PAYLOAD, RECORD_HEADER_LEN, VERSION,
};
pub use storage::{FsFile, LogFile};
pub use writer::{LogRecord, LogWriter, Replay, WriterStats};

/// Creates a log file at `path` whose first record will get `first_seq`,
/// crash-safely: the header is written and synced in `PATH.tmp`, which is
/// then renamed to `path`, and the directory is synced. So `path` either
/// does not exist or holds a complete header. Fails if `path` exists.
pub fn create_file(path: impl AsRef<Path>, first_seq: u64) -> Result<LogWriter, LogError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    if path.exists() {
        return Err(LogError::AlreadyExists { path: name });
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(LogError::io(&tmp.display().to_string(), "remove", e)),
    }
    let file = FsFile::create_new(&tmp)
        .map_err(|e| LogError::io(&tmp.display().to_string(), "create", e))?;
    drop(LogWriter::create(file, first_seq)?);
    fs::rename(&tmp, path).map_err(|e| LogError::io(&name, "rename into place", e))?;
    sync_parent_dir(path).map_err(|e| LogError::io(&name, "sync directory", e))?;
    let (writer, _) = open_file(path)?;
    Ok(writer)
}

/// Opens and recovers the log file at `path` (see [`LogWriter::open`]).
pub fn open_file(path: impl AsRef<Path>) -> Result<(LogWriter, Replay), LogError> {
    let path = path.as_ref();
    let file =
        FsFile::open(path).map_err(|e| LogError::io(&path.display().to_string(), "open", e))?;
    LogWriter::open(file)
}

#[cfg(unix)]
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)?.sync_all()
}

#[cfg(not(unix))]
fn sync_parent_dir(_path: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing here; the rename is durable
    // once the filesystem commits its metadata.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_then_wait_and_counters() {
        let f = FaultyFile::new();
        let w = LogWriter::create(f.clone(), 5).unwrap();
        assert_eq!(w.durable_seq(), None);
        let a = w.submit(b"a").unwrap();
        let b = w.submit(b"b").unwrap();
        assert_eq!((a, b), (5, 6));
        assert_eq!(f.stats().writes, 1, "only the header is written so far");
        w.wait_durable(a).unwrap();
        // Both went out in one commit.
        assert_eq!(w.durable_seq(), Some(6));
        assert_eq!(
            w.stats(),
            WriterStats {
                commits: 1,
                records: 2
            }
        );
        w.wait_durable(3).unwrap(); // before this file: durable already
        assert!(matches!(
            w.wait_durable(7),
            Err(LogError::NotSubmitted {
                seq: 7,
                next_seq: 7,
                ..
            })
        ));
        assert_eq!(w.append_batch::<&[u8]>(&[]).unwrap(), 7..7);
    }

    #[test]
    fn create_refuses_a_non_empty_file() {
        let f = FaultyFile::from_disk(vec![1, 2, 3]);
        assert!(matches!(
            LogWriter::create(f, 1),
            Err(LogError::NotEmpty { found: 3, .. })
        ));
    }
}

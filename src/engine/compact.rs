//! Compaction: folding a workspace's log into a new snapshot generation,
//! and the manifest that says which snapshot and log make up the state.
//!
//! ```text
//! DATA/workspaces/NAME/
//!   MANIFEST                       {"version":1,"generation":G,"seq":S,
//!                                   "snapshot":"snap-G.segqsnap",
//!                                   "log":"log-(S+1).segqlog","crc32":…}
//!   snap-00000000000000000003.segqsnap   the state up to log seq S
//!   log-00000000000000001235.segqlog     the changes after S
//! ```
//!
//! Compaction. Writers are held off only for step 1:
//! 1. under the workspace's read lock (no change is applied or logged
//!    meanwhile): make the log durable up to its last record S, start the
//!    next log `log-(S+1).segqlog` (header fsynced, renamed in) and switch
//!    writers to it, and freeze the state: a clone of the workspace, whose
//!    snapshot part is shared and whose in-memory part is what changed
//!    since the last snapshot;
//! 2. with no lock held, writes going on into the new log: write the
//!    frozen state to `snap-G.segqsnap.tmp`, fsync, rename, fsync the
//!    folder;
//! 3. write `MANIFEST.tmp`, fsync, rename over `MANIFEST`, fsync the folder:
//!    **the commit point**;
//! 4. map the new snapshot and, under the write lock, move the live state
//!    onto it (what changed after S stays in memory); remove the old
//!    snapshot and the logs before `log-(S+1)`.
//!
//! Start-up reads the manifest's snapshot and log, then follows the chain
//! of logs: after a log whose records end at seq N comes `log-(N+1)` if it
//! exists, so records written into a log started by a compaction that
//! never committed are replayed too.
//!
//! A crash before step 3's rename leaves the old manifest (or none) in
//! force, with the new log chained after the old; the new snapshot is
//! litter that start-up removes. After it, the new generation is in force
//! and the old files are litter. Every file operation goes through [`Fs`],
//! so tests crash compaction after any write, fsync or rename.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::log::{self, LogWriter};
use crate::snapshot::Snapshot;

/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST";

/// The file operations compaction performs, so a test can stop after any.
pub trait Fs: Send {
    /// Writes `bytes` to a new file at `path`.
    fn write(&mut self, path: &Path, bytes: &[u8]) -> Result<()>;
    /// Writes a new file at `path` with what `fill` writes to the writer
    /// it is given; the file's size. By default the bytes are gathered and
    /// given to [`Fs::write`]; the real file system streams them to the
    /// file, so a compaction does not hold the laid-out file besides the
    /// contents it is written from.
    fn write_from(
        &mut self,
        path: &Path,
        fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<u64> {
        let mut bytes = Vec::new();
        fill(&mut bytes)?;
        self.write(path, &bytes)?;
        Ok(bytes.len() as u64)
    }
    /// Fsyncs the file at `path` (its contents).
    fn fsync(&mut self, path: &Path) -> Result<()>;
    /// Renames `from` to `to`.
    fn rename(&mut self, from: &Path, to: &Path) -> Result<()>;
    /// Fsyncs the directory `dir`.
    fn fsync_dir(&mut self, dir: &Path) -> Result<()>;
    /// Creates a log at `path` whose first record will be `first_seq`.
    fn create_log(&mut self, path: &Path, first_seq: u64) -> Result<LogWriter>;
    /// Removes the file at `path`.
    fn remove(&mut self, path: &Path) -> Result<()>;
}

/// The real file system.
#[derive(Debug, Default)]
pub struct RealFs;

impl Fs for RealFs {
    fn write(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut f = fs::File::create(path).map_err(Error::io_at(path))?;
        f.write_all(bytes).map_err(Error::io_at(path))
    }

    fn write_from(
        &mut self,
        path: &Path,
        fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
    ) -> Result<u64> {
        let f = fs::File::create(path).map_err(Error::io_at(path))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        fill(&mut out)?;
        let f = out
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        Ok(f.metadata().map_err(Error::io_at(path))?.len())
    }

    fn fsync(&mut self, path: &Path) -> Result<()> {
        fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(Error::io_at(path))
    }

    fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        fs::rename(from, to).map_err(Error::io_at(to))
    }

    fn fsync_dir(&mut self, dir: &Path) -> Result<()> {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io_at(dir))
    }

    fn create_log(&mut self, path: &Path, first_seq: u64) -> Result<LogWriter> {
        Ok(log::create_file(path, first_seq)?)
    }

    fn remove(&mut self, path: &Path) -> Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io_at(path)(e)),
            _ => Ok(()),
        }
    }
}

/// Which snapshot and log make up a workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format's version.
    pub version: u32,
    /// The generation: numbers the snapshot and grows with each compaction.
    pub generation: u64,
    /// The last log seq the snapshot holds; the log starts at seq + 1.
    pub seq: u64,
    /// The snapshot file's name, in the workspace's folder.
    pub snapshot: String,
    /// The log file's name, in the workspace's folder.
    pub log: String,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    manifest: Manifest,
    crc32: u32,
}

fn manifest_crc(m: &Manifest) -> u32 {
    crc32fast::hash(
        format!(
            "{}|{}|{}|{}|{}",
            m.version, m.generation, m.seq, m.snapshot, m.log
        )
        .as_bytes(),
    )
}

impl Manifest {
    /// Reads `dir/MANIFEST`: `None` if there is none, an error naming the
    /// path if it is damaged.
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io_at(&path)(e)),
        };
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let stored: Stored =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a manifest: {e}")))?;
        let m = stored.manifest;
        let computed = manifest_crc(&m);
        if stored.crc32 != computed {
            return Err(Error::checksum_mismatch(
                path,
                "manifest",
                stored.crc32,
                computed,
            ));
        }
        if m.version != 1 {
            return Err(corrupt(format!(
                "manifest version {} is not supported",
                m.version
            )));
        }
        for name in [&m.snapshot, &m.log] {
            if name.contains('/') || name.contains("..") {
                return Err(corrupt(format!("file name {name:?} leaves the folder")));
            }
        }
        Ok(Some(m))
    }

    fn bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(&Stored {
            manifest: self.clone(),
            crc32: manifest_crc(self),
        })
        .map_err(|e| Error::Internal(format!("encoding the manifest: {e}")))
    }
}

/// Writes `dir/MANIFEST` atomically (temporary file, fsync, rename, fsync
/// of the folder), outside a compaction (a restore).
pub(crate) fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    super::write_atomically(&dir.join(MANIFEST), &m.bytes()?)
}

/// The snapshot file of generation `g`.
pub fn snapshot_name(g: u64) -> String {
    format!("snap-{g:020}.segqsnap")
}

/// The log file whose first record is `first_seq`.
pub fn log_name(first_seq: u64) -> String {
    format!("log-{first_seq:020}.segqlog")
}

/// What one compaction produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Compacted {
    /// The new generation.
    pub generation: u64,
    /// The last log seq the snapshot holds.
    pub seq: u64,
    /// The snapshot file's name.
    pub snapshot: String,
    /// Its size in bytes.
    pub snapshot_bytes: u64,
    /// How long the compaction took, in milliseconds, from freezing the
    /// state to serving from the new snapshot.
    pub took_ms: u64,
    /// How long writers were kept out, in milliseconds: while the state
    /// was frozen and the log switched, and while the changes made since
    /// were moved onto the new snapshot. Queries are never kept out.
    pub writers_held_ms: u64,
}

/// How far a failed compaction got.
#[derive(Debug)]
pub(crate) enum Failed {
    /// Before the manifest's rename: the old generation is in force.
    Before(Error),
    /// At or after it: which generation is in force is for start-up to
    /// find out; the workspace must take no more writes.
    During(Error),
}

/// The first seq of a log named by [`log_name`].
pub(crate) fn log_first_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("log-")?.strip_suffix(".segqlog")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Starts the next log, `log-(seq+1)`, for the records after `seq` (in
/// step 1; the caller has made the current log durable up to `seq`).
pub(crate) fn rotate(fs: &mut dyn Fs, dir: &Path, seq: u64) -> Result<(PathBuf, LogWriter)> {
    let path = dir.join(log_name(seq + 1));
    // Left by a rotation at this seq that failed before it was used.
    fs.remove(&path)?;
    let writer = fs.create_log(&path, seq + 1)?;
    Ok((path, writer))
}

/// Writes the snapshot of `ws` (the state up to `seq`, durable) as the
/// next generation and publishes it with `log` (the log holding the
/// records after `seq`) in a new manifest: steps 2 and 3. `current` is the
/// manifest in force, if any.
pub(crate) fn publish(
    fs: &mut dyn Fs,
    dir: &Path,
    ws: &crate::workspace::Workspace,
    seq: u64,
    current: Option<&Manifest>,
    log: &str,
) -> std::result::Result<(Manifest, Compacted), Failed> {
    let before = |e: Error| Failed::Before(e);
    let t = std::time::Instant::now();
    let generation = current.map_or(1, |m| m.generation + 1);
    let mut contents = Some(
        super::persist::snapshot_contents(ws, seq, crate::snapshot::format::VERSION)
            .map_err(before)?,
    );
    let snap_name = snapshot_name(generation);
    let snap = dir.join(&snap_name);
    let tmp: PathBuf = dir.join(format!("{snap_name}.tmp"));
    let snapshot_bytes = fs
        .write_from(&tmp, &mut |out| {
            let c = contents
                .take()
                .ok_or_else(|| Error::Internal("a snapshot's contents written twice".into()))?;
            c.write_to(out).map(drop)
        })
        .map_err(before)?;
    fs.fsync(&tmp).map_err(before)?;
    fs.rename(&tmp, &snap).map_err(before)?;
    fs.fsync_dir(dir).map_err(before)?;

    let manifest = Manifest {
        version: 1,
        generation,
        seq,
        snapshot: snap_name.clone(),
        log: log.to_string(),
    };
    let mtmp = dir.join(format!("{MANIFEST}.tmp"));
    fs.write(&mtmp, &manifest.bytes().map_err(before)?)
        .map_err(before)?;
    fs.fsync(&mtmp).map_err(before)?;
    fs.rename(&mtmp, &dir.join(MANIFEST))
        .map_err(Failed::During)?;
    fs.fsync_dir(dir).map_err(Failed::During)?;
    Ok((
        manifest,
        Compacted {
            generation,
            seq,
            snapshot: snap_name,
            snapshot_bytes,
            took_ms: t.elapsed().as_millis() as u64,
            writers_held_ms: 0,
        },
    ))
}

/// After the commit point: removes the previous snapshot and the logs
/// before `new.log` (the end of step 4).
pub(crate) fn cleanup(
    fs: &mut dyn Fs,
    dir: &Path,
    new: &Manifest,
    old: Option<&Manifest>,
    old_logs: &[PathBuf],
) -> Result<()> {
    let keep = dir.join(&new.log);
    for p in old_logs.iter().filter(|p| **p != keep) {
        fs.remove(p)?;
    }
    if let Some(old) = old {
        if old.snapshot != new.snapshot {
            fs.remove(&dir.join(&old.snapshot))?;
        }
    }
    Ok(())
}

/// Removes what a crashed compaction or a finished one left behind: any
/// snapshot but `snapshot`, any log not in `chain` (the logs in use), and
/// temporary files.
pub(crate) fn remove_litter(dir: &Path, snapshot: Option<&str>, chain: &[PathBuf]) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(Error::io_at(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let ours = name.starts_with("snap-")
            || name.starts_with("log-")
            || name.ends_with(".tmp")
            || name == super::LOG_FILE;
        let p = entry.path();
        if ours && Some(name.as_str()) != snapshot && !chain.contains(&p) {
            fs::remove_file(&p).map_err(Error::io_at(&p))?;
        }
    }
    Ok(())
}

/// Opens the snapshot a manifest names, checking every checksum by
/// reading the file (not through the map, so it stays out of the
/// process's resident memory). Never serves from a file that fails.
pub(crate) fn open_snapshot(dir: &Path, m: &Manifest) -> Result<Snapshot> {
    let path = dir.join(&m.snapshot);
    let snap = Snapshot::open(&path)?;
    snap.verify_streaming(&path)?;
    let meta = snap.meta()?;
    if meta.seq != m.seq {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("holds log seq {}, the manifest says {}", meta.seq, m.seq),
        });
    }
    Ok(snap)
}

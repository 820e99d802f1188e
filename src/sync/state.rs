//! A sync's local state: the members of the last successful sync, and the
//! sync under way, if any, with a journal of its acknowledged batches.
//!
//! Two files:
//! - `STATE` (JSON, [`State`]): which cohort on which server it is for,
//!   the members last synced, and the pending sync (the members it is
//!   bringing the cohort to, and its batch size, from which its batches
//!   follow). It is replaced whole and atomically: written to
//!   `STATE.tmp`, fsynced, renamed over `STATE`, and the folder fsynced.
//! - `STATE.acks` (the [`Journal`]): one line `PENDING-ID BATCH` for each
//!   batch the server acknowledged, appended and fsynced as the answer
//!   arrives. Only lines of the pending sync's id count: a journal left by
//!   an older sync is ignored (and a torn last line too).
//!
//! A sync writes its pending plan before its first request and commits
//! (the members become the pending target, the pending sync is cleared)
//! only once every batch was acknowledged; a sync killed in between
//! resumes from the journal.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The `format` field of a state file.
pub const FORMAT: &str = "segq-sync-state";
/// The version this code writes and reads.
pub const VERSION: u32 = 1;

/// What a state file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The server's base URL (without a trailing `/`).
    pub server: String,
    /// The partner, lower case.
    pub partner: String,
    /// The cohort.
    pub cohort_id: String,
    /// The identifiers' kind: `external_id`, `device_id` or
    /// `alias:LABEL`.
    pub id_type: String,
    /// When the last successful sync ended (RFC 3339), if one did.
    pub synced_at: Option<String>,
    /// The members of the last successful sync, sorted.
    pub members: Vec<String>,
    /// The sync under way, if one was interrupted.
    pub pending: Option<Pending>,
}

/// A sync that was started and not yet committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Names it in the journal: random, fresh for every sync.
    pub id: String,
    /// The members it brings the cohort to, sorted.
    pub target: Vec<String>,
    /// Whether everyone in `target` is sent as entered (a full sync).
    pub full: bool,
    /// Identifiers per batch.
    pub batch_size: usize,
}

/// Which cohort a state file is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The server's base URL (a trailing `/` is ignored).
    pub server: String,
    /// The partner, lower case.
    pub partner: String,
    /// The cohort.
    pub cohort_id: String,
    /// As [`State::id_type`].
    pub id_type: String,
}

impl State {
    /// The state before a cohort's first sync.
    pub fn new(id: &Identity) -> State {
        State {
            format: FORMAT.into(),
            version: VERSION,
            server: id.server.trim_end_matches('/').to_string(),
            partner: id.partner.clone(),
            cohort_id: id.cohort_id.clone(),
            id_type: id.id_type.clone(),
            synced_at: None,
            members: Vec::new(),
            pending: None,
        }
    }

    /// The state at `path`, a new one if there is no file, or an error if
    /// the file is not a state file or is for another cohort, server or
    /// identifier kind (its diff would be wrong there).
    pub fn load(path: &Path, id: &Identity) -> Result<State> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::new(id)),
            Err(e) => return Err(Error::io(path, e)),
        };
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let state: State = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("not a sync state file: {e}")))?;
        // The lists are diffed by one merge: they must be sorted, without
        // repeats, as this code writes them.
        let ascending = |v: &[String]| v.windows(2).all(|w| w[0] < w[1]);
        if !ascending(&state.members)
            || !state.pending.as_ref().is_none_or(|p| ascending(&p.target))
        {
            return Err(corrupt(
                "its member lists are not sorted without repeats, as segq writes them".into(),
            ));
        }
        if state.format != FORMAT || state.version != VERSION {
            return Err(corrupt(format!(
                "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                state.format, state.version
            )));
        }
        let mine = State::new(id);
        let theirs = (
            &state.server,
            &state.partner,
            &state.cohort_id,
            &state.id_type,
        );
        if theirs != (&mine.server, &mine.partner, &mine.cohort_id, &mine.id_type) {
            return Err(Error::InvalidArgument(format!(
                "state file {} is for {}/{} ({}) on {}, not {}/{} ({}) on {}: pass another --state",
                path.display(),
                state.partner,
                state.cohort_id,
                state.id_type,
                state.server,
                mine.partner,
                mine.cohort_id,
                mine.id_type,
                mine.server
            )));
        }
        Ok(state)
    }

    /// Writes the state to `path` atomically: a temporary file beside it,
    /// fsynced, renamed over it, then the folder fsynced.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes =
            serde_json::to_vec(self).map_err(|e| Error::Internal(format!("sync state: {e}")))?;
        write_atomically(path, &bytes)
    }

    /// The members of the last successful sync, as a set.
    pub fn synced(&self) -> BTreeSet<String> {
        self.members.iter().cloned().collect()
    }
}

/// Writes `bytes` to `path` through `PATH.tmp`, fsync and rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path);
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = with_suffix(path, ".tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(&dir)
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The journal of acknowledged batches beside a state file
/// (`STATE.acks`).
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// The journal's path for the state file at `state`.
    pub fn path_for(state: &Path) -> PathBuf {
        with_suffix(state, ".acks")
    }

    /// The batches of pending sync `id` the journal beside `state` records
    /// as acknowledged (none if there is no journal).
    pub fn acknowledged(state: &Path, id: &str) -> Result<BTreeSet<usize>> {
        let path = Journal::path_for(state);
        let text = match fs::read(&path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        // Complete lines only: a torn last line was never acknowledged
        // to anyone.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        Ok(complete
            .lines()
            .filter_map(|l| {
                let (pending, batch) = l.split_once(' ')?;
                (pending == id).then(|| batch.trim().parse().ok()).flatten()
            })
            .collect())
    }

    /// Opens the journal beside `state` for appending (created if
    /// missing).
    pub fn open(state: &Path) -> Result<Journal> {
        let path = Journal::path_for(state);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // A torn last line (a crash in the middle of an append) was never
        // an acknowledgement: cut it off, so that the next record does not
        // complete it.
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if bytes.last().is_some_and(|b| *b != b'\n') {
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            file.set_len(keep as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io(&path, e))?;
        }
        let j = Journal { path, file };
        Ok(j)
    }

    /// Records batch `batch` of pending sync `id` as acknowledged, durably.
    pub fn record(&mut self, id: &str, batch: usize) -> Result<()> {
        self.write(format!("{id} {batch}\n").as_bytes())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Removes the journal beside `state` (once its sync is committed).
    pub fn remove(state: &Path) -> Result<()> {
        let path = Journal::path_for(state);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}

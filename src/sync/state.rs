//! A sync's local state: the members of the last successful sync, and the
//! sync under way, if any, with a journal of its acknowledged batches.
//!
//! Three files:
//! - `STATE` (JSON, [`State`]): which cohort on which server it is for,
//!   the members, and the pending sync, as of log record `seq`. It is
//!   replaced whole and atomically (written to `STATE.tmp`, fsynced,
//!   renamed over `STATE`, the folder fsynced), but only now and then:
//!   before the first record (a new state), when the log has grown past
//!   it, and when a sync with nothing to send is marked done.
//! - `STATE.log` (the [`Ledger`]'s log, JSON Lines, version 2): what
//!   happened since, one fsynced line per step: `begin` (a sync's
//!   pending plan: who enters, who leaves, its batch size) before its
//!   first request, and `commit` once every batch was acknowledged. So a
//!   sync writes what it changes, not the whole cohort. Records numbered
//!   `seq` or lower are already in `STATE` and skipped; a torn last line
//!   was never acted on and is ignored.
//! - `STATE.acks` (the [`Journal`]): one line `PENDING-ID BATCH` for each
//!   batch the server acknowledged, appended and fsynced as the answer
//!   arrives. Only lines of the pending sync's id count: a journal left by
//!   an older sync is ignored (and a torn last line too).
//!
//! A sync killed between its `begin` and its `commit` resumes from the
//! journal. Version 1 state files (the pending sync kept as its whole
//! target list, no log) still read: their pending sync becomes the same
//! plan, with the same batches, so their journals stay valid.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::plan::{Batch, Places, Plan};

/// The `format` field of a state file.
pub const FORMAT: &str = "segq-sync-state";
/// The version this code writes (it reads 1 and 2).
pub const VERSION: u32 = 2;

/// The log is folded into the state file once it is larger than the state
/// file and than this.
const FOLD_AFTER_BYTES: u64 = 1 << 20;

/// A cohort's sync state, as the state file and its log give it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] (1 in a version 1 file just read).
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
    /// The last log record this state holds (0: none).
    #[serde(default)]
    pub seq: u64,
}

/// A sync that was started and not yet committed: its plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Names it in the journal: random, fresh for every sync.
    pub id: String,
    /// Who it sends as entered, sorted (everyone, for a full sync).
    pub entered: Vec<String>,
    /// Who it sends as left, sorted.
    pub left: Vec<String>,
    /// Whether everyone is sent as entered (a full sync).
    pub full: bool,
    /// Identifiers per batch.
    pub batch_size: usize,
}

impl Pending {
    /// Its batches, as [`Plan::batches`] numbers them.
    pub fn batches(&self) -> Vec<Batch<'_>> {
        Plan::batches_of(&self.entered, &self.left, self.batch_size)
    }
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

/// A state file as read: version 1's pending sync holds its target list,
/// version 2's its plan.
#[derive(Deserialize)]
struct OnDisk {
    format: String,
    version: u32,
    server: String,
    partner: String,
    cohort_id: String,
    id_type: String,
    synced_at: Option<String>,
    members: Vec<String>,
    pending: Option<PendingOnDisk>,
    #[serde(default)]
    seq: u64,
}

#[derive(Deserialize)]
struct PendingOnDisk {
    id: String,
    full: bool,
    batch_size: usize,
    /// Version 1.
    target: Option<Vec<String>>,
    /// Version 2.
    entered: Option<Vec<String>>,
    /// Version 2.
    left: Option<Vec<String>>,
}

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
enum Record {
    /// A sync started: its plan.
    Begin { seq: u64, pending: Pending },
    /// The pending sync `id` was acknowledged whole at `synced_at`.
    Commit {
        seq: u64,
        id: String,
        synced_at: String,
    },
}

impl Record {
    fn seq(&self) -> u64 {
        match self {
            Record::Begin { seq, .. } | Record::Commit { seq, .. } => *seq,
        }
    }
}

/// Whether `v` is sorted without repeats.
fn ascending(v: &[String]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
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
            seq: 0,
        }
    }

    /// The state at `path` with its log applied, a new one if there is no
    /// state file, or an error if the file is not a state file, is for
    /// another cohort, server or identifier kind (its diff would be wrong
    /// there), or its log does not follow from it.
    pub fn load(path: &Path, id: &Identity) -> Result<State> {
        Ok(Ledger::open(path, id)?.state)
    }

    /// The state file alone, without its log.
    fn read_base(path: &Path, id: &Identity) -> Result<Option<(State, u64)>> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let disk: OnDisk = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(format!("not a sync state file: {e}")))?;
        if disk.format != FORMAT || !(1..=VERSION).contains(&disk.version) {
            return Err(corrupt(format!(
                "format {:?} version {}, expected {FORMAT:?} version 1 to {VERSION}",
                disk.format, disk.version
            )));
        }
        let not_sorted = || {
            corrupt("its member lists are not sorted without repeats, as segq writes them".into())
        };
        // The lists are diffed by one merge: they must be sorted, without
        // repeats, as this code writes them.
        if !ascending(&disk.members) {
            return Err(not_sorted());
        }
        let pending = match disk.pending {
            None => None,
            Some(p) => {
                let (entered, left) = match (disk.version, p.target, p.entered, p.left) {
                    (1, Some(target), None, None) => {
                        if !ascending(&target) {
                            return Err(not_sorted());
                        }
                        // The plan version 1 derived its batches from.
                        let plan = Plan::between(&disk.members, &target, p.full, p.batch_size);
                        (plan.entered, plan.left)
                    }
                    (2, None, Some(entered), Some(left)) => (entered, left),
                    _ => {
                        return Err(corrupt(format!(
                            "its pending sync does not have the fields of version {}",
                            disk.version
                        )))
                    }
                };
                if !ascending(&entered) || !ascending(&left) {
                    return Err(not_sorted());
                }
                Some(Pending {
                    id: p.id,
                    entered,
                    left,
                    full: p.full,
                    batch_size: p.batch_size,
                })
            }
        };
        let state = State {
            format: disk.format,
            version: disk.version,
            server: disk.server,
            partner: disk.partner,
            cohort_id: disk.cohort_id,
            id_type: disk.id_type,
            synced_at: disk.synced_at,
            members: disk.members,
            pending,
            seq: disk.seq,
        };
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
        Ok(Some((state, bytes.len() as u64)))
    }

    /// Writes the state to `path` atomically (a temporary file beside it,
    /// fsynced, renamed over it, then the folder fsynced) as version
    /// [`VERSION`], then removes the log it holds. The size written.
    pub fn save(&self, path: &Path) -> Result<u64> {
        // As version VERSION, whatever version it was read as.
        #[derive(Serialize)]
        struct Out<'a> {
            format: &'a str,
            version: u32,
            server: &'a str,
            partner: &'a str,
            cohort_id: &'a str,
            id_type: &'a str,
            synced_at: &'a Option<String>,
            members: &'a [String],
            pending: &'a Option<Pending>,
            seq: u64,
        }
        let out = Out {
            format: &self.format,
            version: VERSION,
            server: &self.server,
            partner: &self.partner,
            cohort_id: &self.cohort_id,
            id_type: &self.id_type,
            synced_at: &self.synced_at,
            members: &self.members,
            pending: &self.pending,
            seq: self.seq,
        };
        let bytes =
            serde_json::to_vec(&out).map_err(|e| Error::Internal(format!("sync state: {e}")))?;
        write_atomically(path, &bytes)?;
        // Every record of the log is in the file now (numbered `seq` or
        // lower): a crash before this removal only leaves records that
        // are skipped. (A log left from a removed state file is removed
        // when the ledger opens, before a new state file is written.)
        remove_log(path)?;
        Ok(bytes.len() as u64)
    }

    /// The members of the last successful sync, as a set.
    pub fn synced(&self) -> BTreeSet<String> {
        self.members.iter().cloned().collect()
    }

    /// Applies `r`, the record after [`State::seq`]; a commit moves the
    /// members by `places` when they are its plan's.
    fn apply(&mut self, r: Record, places: Option<Places>) -> std::result::Result<(), String> {
        if r.seq() != self.seq + 1 {
            return Err(format!(
                "record {} follows record {}: the log is missing records",
                r.seq(),
                self.seq
            ));
        }
        match r {
            Record::Begin { seq, pending } => {
                if let Some(p) = &self.pending {
                    return Err(format!(
                        "record {seq} begins a sync while sync {} is pending",
                        p.id
                    ));
                }
                if !ascending(&pending.entered) || !ascending(&pending.left) {
                    return Err(format!("record {seq}: its lists are not sorted"));
                }
                self.pending = Some(pending);
                self.seq = seq;
            }
            Record::Commit { seq, id, synced_at } => {
                match self.pending.take() {
                    Some(p) if p.id == id => {
                        let members = std::mem::take(&mut self.members);
                        self.members = match places {
                            Some(pl) if pl.fit(members.len(), p.entered.len(), p.left.len()) => {
                                pl.apply(members, p.entered)
                            }
                            _ => applied(members, p),
                        }
                    }
                    other => {
                        return Err(format!(
                            "record {seq} commits sync {id}, but {} is pending",
                            other.map_or("none".to_string(), |p| p.id)
                        ))
                    }
                }
                self.synced_at = Some(synced_at);
                self.seq = seq;
            }
        }
        Ok(())
    }
}

/// `members` after `p`: without who left, with who entered (both sorted).
fn applied(members: Vec<String>, p: Pending) -> Vec<String> {
    let mut left = p.left.iter().peekable();
    let kept = members.into_iter().filter(|m| {
        while left.next_if(|l| *l < m).is_some() {}
        left.next_if(|l| *l == m).is_none()
    });
    let mut out = Vec::with_capacity(p.entered.len());
    let mut entered = p.entered.into_iter().peekable();
    for m in kept {
        while let Some(e) = entered.next_if(|e| *e < m) {
            out.push(e);
        }
        // A full sync sends members who stay as entered: one copy.
        entered.next_if(|e| *e == m);
        out.push(m);
    }
    out.extend(entered);
    out
}

/// A state file with its log, open for a sync's steps: the state in
/// memory, each step appended to the log (fsynced) as it happens, and the
/// log folded into the state file once it outgrows it.
pub struct Ledger {
    path: PathBuf,
    state: State,
    /// The state file's size (0 while there is none).
    base_bytes: u64,
    /// The log's size.
    log_bytes: u64,
    /// The log, opened on the first append.
    log: Option<File>,
    /// Where the pending sync's plan falls among the members, when it was
    /// begun here.
    places: Option<Places>,
}

impl Ledger {
    /// The log's path beside the state file at `state`.
    pub fn log_path(state: &Path) -> PathBuf {
        with_suffix(state, ".log")
    }

    /// The state at `path` with its log applied (a new one if there is no
    /// state file: a log without one is left from a removed state and is
    /// removed).
    pub fn open(path: &Path, id: &Identity) -> Result<Ledger> {
        let Some((mut state, base_bytes)) = State::read_base(path, id)? else {
            // Removed now, durably: the new state file starts again at
            // record 0, and the old records must never be read after it.
            remove_log(path)?;
            return Ok(Ledger {
                path: path.to_path_buf(),
                state: State::new(id),
                base_bytes: 0,
                log_bytes: 0,
                log: None,
                places: None,
            });
        };
        let log = Ledger::log_path(path);
        let bytes = match fs::read(&log) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&log, e)),
        };
        // Complete lines only: a torn last line was never acted on.
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for (n, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let corrupt = |reason: String| Error::Corrupt {
                path: log.clone(),
                reason: format!("line {}: {reason}", n + 1),
            };
            let r: Record = serde_json::from_slice(line)
                .map_err(|e| corrupt(format!("not a sync log record: {e}")))?;
            if r.seq() <= state.seq {
                continue;
            }
            state.apply(r, None).map_err(corrupt)?;
        }
        Ok(Ledger {
            path: path.to_path_buf(),
            state,
            base_bytes,
            log_bytes: complete as u64,
            log: None,
            places: None,
        })
    }

    /// The state: the members of the last successful sync, and the pending
    /// sync.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Records that sync `pending` starts (before its first request);
    /// `places` are where its plan falls among the members, if known.
    pub fn begin(&mut self, pending: Pending, places: Option<Places>) -> Result<()> {
        if self.base_bytes == 0 {
            // The log's records follow a state file: write it first.
            self.base_bytes = self.state.save(&self.path)?;
        }
        let r = Record::Begin {
            seq: self.state.seq + 1,
            pending,
        };
        self.append(&r)?;
        self.places = places;
        self.state
            .apply(r, None)
            .map_err(|reason| Error::Internal(format!("sync state: {reason}")))
    }

    /// Records that the pending sync was acknowledged whole at `synced_at`:
    /// its target becomes the members.
    pub fn commit(&mut self, synced_at: String) -> Result<()> {
        let Some(p) = &self.state.pending else {
            return Err(Error::Internal(
                "sync state: nothing pending to commit".into(),
            ));
        };
        let r = Record::Commit {
            seq: self.state.seq + 1,
            id: p.id.clone(),
            synced_at,
        };
        self.append(&r)?;
        let places = self.places.take();
        self.state
            .apply(r, places)
            .map_err(|reason| Error::Internal(format!("sync state: {reason}")))?;
        if self.log_bytes > self.base_bytes.max(FOLD_AFTER_BYTES) {
            self.fold()?;
        }
        Ok(())
    }

    /// Records a sync with nothing to send (a first sync of an empty
    /// cohort) as done at `synced_at`.
    pub fn mark_synced(&mut self, synced_at: String) -> Result<()> {
        self.state.synced_at = Some(synced_at);
        self.fold()
    }

    /// Writes the state file whole and empties the log.
    fn fold(&mut self) -> Result<()> {
        self.log = None;
        self.base_bytes = self.state.save(&self.path)?;
        self.state.version = VERSION;
        self.log_bytes = 0;
        Ok(())
    }

    fn append(&mut self, r: &Record) -> Result<()> {
        let path = Ledger::log_path(&self.path);
        let mut line =
            serde_json::to_vec(r).map_err(|e| Error::Internal(format!("sync log: {e}")))?;
        line.push(b'\n');
        if self.log.is_none() {
            // A torn last line was never acted on.
            let file = open_appending(&path, self.log_bytes)?;
            sync_dir(&parent_of(&path))?;
            self.log = Some(file);
        }
        let file = self.log.as_mut().expect("opened above");
        if let Err(e) = file.write_all(&line).and_then(|()| file.sync_data()) {
            // Part of the line may be written: reopen (and cut it off)
            // before the next record.
            self.log = None;
            return Err(Error::io(&path, e));
        }
        self.log_bytes += line.len() as u64;
        Ok(())
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

/// Removes the log beside the state file at `path`, if any, and fsyncs
/// the folder.
fn remove_log(path: &Path) -> Result<()> {
    if remove_if_there(&Ledger::log_path(path))? {
        sync_dir(&parent_of(path))?;
    }
    Ok(())
}

/// Removes the file at `path`; whether there was one.
fn remove_if_there(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Opens the JSON Lines file at `path` for appending (created if
/// missing), cut to its first `complete` bytes if it is longer: a torn
/// last line (a crash in the middle of an append) is cut off, so that the
/// next line does not complete it.
fn open_appending(path: &Path, complete: u64) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len != complete {
        file.set_len(complete)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(file)
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
        // A torn last line was never an acknowledgement.
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let file = open_appending(&path, complete as u64)?;
        Ok(Journal { path, file })
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
        remove_if_there(&Journal::path_for(state)).map(drop)
    }
}

//! The storage engine: a data directory of workspaces, each a change log
//! replayed into memory at start-up, plus the server's configuration, the
//! admin token and the data import keys.
//!
//! ```text
//! DATA/                       0700 (Unix), like every folder below
//!   segq.json                 configuration (partner_api_keys, limits), 0600
//!   admin-token.sha256        hex SHA-256 of the admin bearer token, 0600
//!   workspaces/NAME/
//!     changes.segqlog         the workspace's change log (see crate::log)
//! ```
//!
//! Every method may wait for an fsync: async callers run them on a blocking
//! thread.
//!
//! # Lock order
//!
//! A thread that holds more than one lock took them in this order, and
//! never takes an engine lock while it holds a workspace's:
//!
//! 1. `Engine::workspaces` (the table of workspaces and reserved names);
//! 2. `Engine::keys` (the index of valid data import keys);
//! 3. `Engine::api_keys` (the index of valid workspace API keys);
//! 4. `Engine::last_used`;
//! 5. a workspace's locks, in the order `WorkspaceHandle` documents
//!    (`files`, then `state`, then `log`, then the small mutexes).
//!
//! Most methods hold one lock at a time: `authorize` copies what it needs
//! out of the key index and releases it before it looks up the workspace,
//! and `restore_workspace` reserves the name, checks and copies the file
//! with no lock held, and takes the table, the index and `last_used`
//! together (in this order) only to publish the workspace.
//!
//! # Read-only
//!
//! [`Engine::open_read_only`] serves queries from a data directory without
//! creating, changing or deleting a file, and without its `LOCK`, so it
//! also reads a directory a server is serving: a torn log tail (a record
//! being written) is ignored in memory, not cut, and every write is
//! refused.

pub mod audit;
pub mod compact;
mod config;
mod handle;
mod job;
pub mod keys;
mod memory;
pub mod persist;
pub mod priority;
pub mod record;
pub mod replica;
pub mod store;

pub use compact::{Compacted, Fs, Manifest, RealFs};
pub use config::{
    Config, Durability, DEFAULT_COMPACTION_NICE, DEFAULT_IMPORT_NICE, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_COHORTS_PER_PARTNER, DEFAULT_RATE_LIMIT_PER_HOUR,
};
pub use handle::{BatchReport, CompactionStats, DeletedUsers, MergedUsers, WorkspaceHandle};
pub use memory::MemoryFile;
pub use record::Change;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use hashbrown::HashMap;
use rand::RngCore;
use serde::Serialize;

use crate::access::Scope;
use crate::error::{Error, Result};
use crate::ids::Partner;
use crate::import::{texts, Credentials, ProtocolError};
use crate::log::{self, LogWriter, Recovery};
use crate::snapshot::Snapshot;
use crate::workspace::Workspace;
use record::{from_ms, to_ms};

/// The workspaces whose changes [`Engine::sync_all`] could not make
/// durable, each with its error.
#[derive(Debug)]
pub struct SyncFailed {
    /// Each workspace not synced, by name, with its error.
    pub failures: Vec<(String, Error)>,
}

impl std::fmt::Display for SyncFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} workspace(s) not synced", self.failures.len())?;
        for (name, e) in &self.failures {
            write!(f, "; {name}: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SyncFailed {}

impl SyncFailed {
    /// The first workspace's error (for a caller that reports one).
    pub fn into_first(self) -> Error {
        self.failures
            .into_iter()
            .next()
            .map(|(_, e)| e)
            .unwrap_or_else(|| Error::Internal("no workspace failed to sync".into()))
    }
}

/// The log file of a workspace, inside its folder.
pub const LOG_FILE: &str = "changes.segqlog";

/// A data import key as generated: the only time the key itself is seen.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "key_5f2c9e0b7a1d4c3e", "key": "dik_9b1f…", "prefix": "dik_9b1f",
    "partner": "amplitude", "created_at": "2026-11-01T10:00:00Z"}))]
pub struct NewKey {
    /// The key's id.
    pub id: String,
    /// The key itself (the client secret): shown once, never stored.
    pub key: String,
    /// Its first characters, kept to recognise it by.
    pub prefix: String,
    /// The partner it is for.
    #[schema(value_type = String, example = "amplitude")]
    pub partner: Partner,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A data import key as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KeyInfo {
    /// The key's id.
    pub id: String,
    /// The partner it is for.
    #[schema(value_type = String, example = "amplitude")]
    pub partner: Partner,
    /// Its first characters, to recognise it by.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used (to the minute), if ever.
    pub last_used: Option<DateTime<Utc>>,
    /// When it was invalidated, if it was.
    pub invalidated_at: Option<DateTime<Utc>>,
}

/// How often a key's use is logged, at most: `last_used` is durable to
/// this resolution (a minute).
pub const KEY_USE_RESOLUTION_MS: i64 = 60_000;

/// When a data import key was used, shared by the key's index entry and
/// `Engine::last_used`.
#[derive(Debug, Default)]
struct KeyUse {
    /// The last use, in milliseconds since the epoch; 0 = never.
    last_ms: AtomicI64,
    /// The use last logged (`Change::KeyUsed`), or the durable value read
    /// at start-up; 0 = never.
    logged_ms: AtomicI64,
}

impl KeyUse {
    fn from_durable(at: Option<DateTime<Utc>>) -> Arc<KeyUse> {
        let ms = at.map_or(0, to_ms);
        Arc::new(KeyUse {
            last_ms: AtomicI64::new(ms),
            logged_ms: AtomicI64::new(ms),
        })
    }

    /// Notes a use at `now`; true when it is to be logged (the first use
    /// since the last logged one that is a minute or more after it).
    fn used(&self, now: i64) -> bool {
        self.last_ms.fetch_max(now, Ordering::Relaxed);
        let logged = self.logged_ms.load(Ordering::Relaxed);
        now.saturating_sub(logged) >= KEY_USE_RESOLUTION_MS
            && self
                .logged_ms
                .compare_exchange(logged, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Where a valid data import key leads.
struct KeyEntry {
    workspace: String,
    key_id: String,
    partner: Partner,
    used: Arc<KeyUse>,
}

/// A valid workspace API key, as the index holds it.
#[derive(Clone, Debug)]
struct ApiKeyEntry {
    workspace: String,
    key_id: String,
    scopes: Vec<Scope>,
}

/// Who a bearer token is ([`Engine::caller`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The server admin token.
    Admin,
    /// A valid workspace API key.
    Key {
        /// The workspace it belongs to.
        workspace: String,
        /// Its id.
        key_id: String,
        /// Its scopes.
        scopes: Vec<Scope>,
    },
    /// Neither: no such token, or a revoked key.
    Unknown,
}

/// A workspace API key as created: the only time the key itself is seen.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "ak_5f2c9e0b7a1d4c3e", "key": "sqk_…", "name": "ops",
    "scopes": ["segments:read"], "created_at": "2026-11-01T10:00:00Z"}))]
pub struct NewApiKey {
    /// The key's id.
    pub id: String,
    /// The key itself: shown once, never stored.
    pub key: String,
    /// Its name.
    pub name: String,
    /// Its scopes' names.
    #[schema(value_type = Vec<String>)]
    pub scopes: Vec<&'static str>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A workspace API key as listed (never the key or its digest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKeyInfo {
    /// The key's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its scopes' names.
    #[schema(value_type = Vec<String>)]
    pub scopes: Vec<&'static str>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The workspaces, and the names being restored (taken, not yet served).
#[derive(Default)]
struct Table {
    live: BTreeMap<String, Arc<WorkspaceHandle>>,
    reserved: std::collections::BTreeSet<String>,
}

impl Table {
    /// Refuses `name` if it is served, being restored, or differs only in
    /// case from such a name (one folder on a case-insensitive file
    /// system). `Ok(true)`: `name` itself is served.
    fn check_free(&self, name: &str) -> Result<bool> {
        if self.live.contains_key(name) {
            return Ok(true);
        }
        let clash = self
            .live
            .keys()
            .chain(self.reserved.iter())
            .find(|other| other.eq_ignore_ascii_case(name));
        match clash {
            Some(other) if other == name => Err(Error::InvalidArgument(format!(
                "workspace {name} is being restored"
            ))),
            Some(other) => Err(Error::WorkspaceNameClash {
                name: name.to_string(),
                existing: other.clone(),
            }),
            None => Ok(false),
        }
    }
}

/// A data directory, open.
pub struct Engine {
    dir: PathBuf,
    config: Config,
    /// None only read-only, when the directory has no admin token yet.
    /// A read replica takes a new one from the store's server state.
    admin_digest: RwLock<Option<[u8; 32]>>,
    workspaces: RwLock<Table>,
    /// Digest of every valid data import key.
    keys: RwLock<HashMap<[u8; 32], KeyEntry>>,
    /// Digest of every valid workspace API key.
    api_keys: RwLock<HashMap<[u8; 32], ApiKeyEntry>>,
    recoveries: Vec<Recovery>,
    /// When each key (valid or not) was last used, by (workspace, key id).
    last_used: RwLock<HashMap<(String, String), Arc<KeyUse>>>,
    /// Held for the engine's life: one process per data directory (None
    /// read-only).
    _lock: Option<fs::File>,
    read_only: bool,
    /// The object store's counters, once a shipper is attached.
    store: std::sync::OnceLock<Arc<store::StoreStatus>>,
    /// Refuses writes once another node took the object store's lease.
    fence: Arc<store::Fence>,
    /// A read replica's follower status (`segq serve --replica-of`).
    replica: std::sync::OnceLock<Arc<replica::ReplicaStatus>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Writes a small file so that it is either wholly there or not at all:
/// a temporary file, fsynced, renamed over the target, directory fsynced.
/// The file is readable by its owner only (0600 on Unix): these are the
/// configuration with the partner_api_keys, the admin token's digest and
/// manifests.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(PRIVATE_FILE);
    }
    let mut f = options.open(&tmp).map_err(Error::io_at(&tmp))?;
    #[cfg(unix)]
    {
        // A temporary file left behind may have been created looser.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))
            .map_err(Error::io_at(&tmp))?;
    }
    f.write_all(bytes).map_err(Error::io_at(&tmp))?;
    f.sync_all().map_err(Error::io_at(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(Error::io_at(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io_at(dir))
}

/// The mode of secrets files (Unix).
const PRIVATE_FILE: u32 = 0o600;
/// The mode of the data directory and its folders (Unix).
const PRIVATE_DIR: u32 = 0o700;

/// Creates a folder (and its missing parents) readable by its owner only,
/// or makes an existing one so.
fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(PRIVATE_DIR);
    }
    builder.create(dir).map_err(Error::io_at(dir))?;
    restrict(dir, PRIVATE_DIR);
    Ok(())
}

/// The permission bits of `path` beyond `mode`, if any (Unix; never
/// elsewhere). A missing file has none.
fn looser_than(path: &Path, mode: u32) -> Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match fs::metadata(path) {
            Ok(m) => {
                let bits = m.permissions().mode() & 0o777;
                Ok((bits & !mode != 0).then_some(bits))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io_at(path)(e)),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(None)
    }
}

/// Takes from `path` every permission beyond `mode` (Unix), saying so on
/// stderr when it had more. Best effort: a file segq may not change (not
/// its owner) is only warned about.
fn restrict(path: &Path, mode: u32) {
    let bits = match looser_than(path, mode) {
        Ok(Some(bits)) => bits,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("cannot read the mode of {}: {e}", path.display());
            return;
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match fs::set_permissions(path, fs::Permissions::from_mode(bits & mode)) {
            Ok(()) => tracing::warn!(
                "{} was open to others ({bits:o}); now {:o}",
                path.display(),
                bits & mode
            ),
            Err(e) => tracing::warn!(
                "{} is open to others ({bits:o}) and cannot be made {:o}: {e}",
                path.display(),
                bits & mode
            ),
        }
    }
}

/// Says on stderr that `path` is readable by others (read-only: nothing is
/// changed).
fn warn_if_loose(path: &Path, mode: u32) {
    if let Ok(Some(bits)) = looser_than(path, mode) {
        tracing::warn!(
            "{} is open to others ({bits:o}); segq makes it {:o} when it \
             opens the data directory for writing",
            path.display(),
            bits & mode
        );
    }
}

/// Whether `name` is made of the characters a workspace name may hold (1
/// to 64 ASCII letters, digits, `_`, `-`): a folder found at start-up is
/// loaded if so.
fn name_characters_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `name` is a device name Windows reserves (`con`, `prn`, `aux`,
/// `nul`, `com0`–`com9`, `lpt0`–`lpt9`), in any case, with or without an
/// extension: no file or folder can have it there.
pub fn reserved_device_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).to_ascii_lowercase();
    let stem = stem.trim_end_matches(' ');
    match stem.as_bytes() {
        b"con" | b"prn" | b"aux" | b"nul" => true,
        [b'c', b'o', b'm', d] | [b'l', b'p', b't', d] => d.is_ascii_digit(),
        _ => false,
    }
}

/// Whether a workspace name is usable as a folder name everywhere: 1 to 64
/// ASCII letters, digits, `_` or `-`, and not a reserved device name. (That
/// it differs from every other workspace's name in more than case is
/// checked when the workspace is created.)
pub fn valid_workspace_name(name: &str) -> bool {
    name_characters_ok(name) && !reserved_device_name(name)
}

/// [`valid_workspace_name`], as an error saying why not.
fn check_workspace_name(name: &str) -> Result<()> {
    if !name_characters_ok(name) {
        return Err(Error::InvalidWorkspaceName { name: name.into() });
    }
    if reserved_device_name(name) {
        return Err(Error::ReservedWorkspaceName { name: name.into() });
    }
    Ok(())
}

/// How a data directory is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    ReadWrite,
    /// Nothing on disk is created, changed or deleted.
    ReadOnly,
}

/// A log file opened for reading only: a damaged tail is cut in memory
/// (the file keeps it), and every append fails.
struct ReadOnlyLog {
    file: fs::File,
    path: PathBuf,
    /// Where the records the scan kept end (the cut), once known.
    len: Option<u64>,
}

impl ReadOnlyLog {
    fn open(path: &Path) -> Result<ReadOnlyLog> {
        Ok(ReadOnlyLog {
            file: fs::File::open(path).map_err(Error::io_at(path))?,
            path: path.to_path_buf(),
            len: None,
        })
    }
}

impl log::LogFile for ReadOnlyLog {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn len(&self) -> std::io::Result<u64> {
        let on_disk = self.file.metadata()?.len();
        Ok(self.len.map_or(on_disk, |l| l.min(on_disk)))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Read, Seek, SeekFrom};
        let end = self.len()?;
        if offset >= end {
            return Ok(0);
        }
        let n = buf
            .len()
            .min(usize::try_from(end - offset).unwrap_or(usize::MAX));
        self.file.seek(SeekFrom::Start(offset))?;
        loop {
            match self.file.read(&mut buf[..n]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn append(&mut self, _bytes: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the data directory was opened read-only",
        ))
    }

    fn sync(&mut self) -> std::io::Result<()> {
        // Nothing was appended: nothing to make durable.
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.len = Some(len);
        Ok(())
    }
}

/// Opens a log and reads its records: read-write, its damaged tail is cut
/// and synced; read-only, ignored.
fn open_log(path: &Path, mode: Mode) -> Result<(LogWriter, log::Replay)> {
    match mode {
        Mode::ReadWrite => Ok(log::open_file(path)?),
        Mode::ReadOnly => {
            let mut file = ReadOnlyLog::open(path)?;
            let replay = LogWriter::scan(&mut file)?;
            let writer = LogWriter::recover(file, &replay.recovery)?;
            Ok((writer, replay))
        }
    }
}

/// Loads a workspace: the snapshot its manifest names, served in place,
/// then the logs after it; before its first compaction, its first log.
/// `Ok(None)`: the workspace's creation was never acknowledged.
fn load_workspace(
    name: &str,
    dir: &Path,
    mode: Mode,
) -> Result<Option<(WorkspaceHandle, Vec<Recovery>)>> {
    let Some(m) = compact::Manifest::read(dir)? else {
        return load_first_log(name, dir, mode);
    };
    let snap = Arc::new(compact::open_snapshot(dir, &m)?);
    let mut ws = persist::load_workspace(snap)?;
    // A restored snapshot may come from a workspace of another name.
    ws.set_name(name);
    let path = dir.join(&m.log);
    let (writer, replay) = open_log(&path, mode)?;
    if writer.first_seq() != m.seq + 1 {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "starts at seq {}, the manifest's snapshot ends at {}",
                writer.first_seq(),
                m.seq
            ),
        });
    }
    replay_records(&mut ws, &path, replay.records)?;
    let mut recoveries = vec![replay.recovery];
    let (writer, chain) = follow_chain(&mut ws, dir, path, writer, &mut recoveries, mode)?;
    if mode == Mode::ReadWrite {
        compact::remove_litter(dir, Some(&m.snapshot), &chain)?;
    }
    let handle = WorkspaceHandle::new(ws, writer, dir.to_path_buf(), Some(m), chain);
    Ok(Some((handle, recoveries)))
}

fn replay_records(ws: &mut Workspace, path: &Path, records: Vec<log::LogRecord>) -> Result<()> {
    let shown = path.display().to_string();
    for r in records {
        let change = Change::decode(&r.payload, &shown, r.seq)?;
        record::apply(ws, &change).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("record {} does not apply: {e}", r.seq),
        })?;
    }
    Ok(())
}

/// After the log at `path` (replayed, `writer` open on it): the logs a
/// compaction started (`log-N` where N is the next seq), in order. Returns
/// the writer of the last and the whole chain. A log that starts past the
/// chain's end means a change is missing between them: refused.
fn follow_chain(
    ws: &mut Workspace,
    dir: &Path,
    path: PathBuf,
    mut writer: LogWriter,
    recoveries: &mut Vec<Recovery>,
    mode: Mode,
) -> Result<(LogWriter, Vec<PathBuf>)> {
    let mut chain = vec![path];
    loop {
        let next = dir.join(compact::log_name(writer.next_seq()));
        if chain.contains(&next) || !next.exists() {
            break;
        }
        let (w, replay) = open_log(&next, mode)?;
        if w.first_seq() != writer.next_seq() {
            return Err(Error::Corrupt {
                path: next.to_path_buf(),
                reason: format!(
                    "starts at seq {}, its name says {}",
                    w.first_seq(),
                    writer.next_seq()
                ),
            });
        }
        replay_records(ws, &next, replay.records)?;
        recoveries.push(replay.recovery);
        writer = w;
        chain.push(next);
    }
    let end = writer.next_seq();
    for entry in fs::read_dir(dir).map_err(Error::io_at(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(first) = compact::log_first_seq(&name) {
            if first > end {
                return Err(Error::Corrupt {
                    path: entry.path(),
                    reason: format!(
                        "starts at seq {first}, but the logs before it end at seq {}",
                        end - 1
                    ),
                });
            }
        }
    }
    Ok((writer, chain))
}

/// Removes every file of a workspace folder that holds no workspace (no
/// manifest and no acknowledged log): snapshots, logs and temporary files
/// left by a creation never acknowledged or a restore that stopped. A
/// folder with a manifest is refused: it holds a workspace that did not
/// load.
fn clear_unused_folder(folder: &Path) -> Result<()> {
    let manifest = folder.join(compact::MANIFEST);
    if manifest.exists() {
        return Err(Error::Corrupt {
            path: manifest.to_path_buf(),
            reason: "a workspace's manifest, but the workspace is not loaded; \
                     move the folder away to reuse its name"
                .into(),
        });
    }
    compact::remove_litter(folder, None, &[])
}

/// Adds a workspace's valid data import keys to the engine's index, and
/// every key's durable `last_used` to `last_used`.
fn index_keys(
    handle: &WorkspaceHandle,
    key_index: &mut HashMap<[u8; 32], KeyEntry>,
    last_used: &mut HashMap<(String, String), Arc<KeyUse>>,
) {
    for k in handle.read().keys.values() {
        let used = KeyUse::from_durable(k.last_used);
        last_used.insert((handle.name().to_string(), k.id.clone()), used.clone());
        if k.invalidated_at.is_none() {
            key_index.insert(
                k.digest,
                KeyEntry {
                    workspace: handle.name().to_string(),
                    key_id: k.id.clone(),
                    partner: k.partner,
                    used,
                },
            );
        }
    }
}

/// Adds a workspace's valid API keys to the engine's index. A digest
/// already indexed (a folder copied by hand) stays with the workspace
/// that had it first: a key never reaches two workspaces.
fn index_api_keys(handle: &WorkspaceHandle, index: &mut HashMap<[u8; 32], ApiKeyEntry>) {
    for k in handle.read().api_keys.values() {
        if k.revoked_at.is_none() {
            index.entry(k.digest).or_insert_with(|| ApiKeyEntry {
                workspace: handle.name().to_string(),
                key_id: k.id.clone(),
                scopes: k.scopes.clone(),
            });
        }
    }
}

/// Loads a workspace for reading only. A server serving the directory may
/// compact the workspace meanwhile and remove the files just found: the
/// load is tried again (a few times) while the manifest changes under it.
fn load_read_only(name: &str, dir: &Path) -> Result<Option<(WorkspaceHandle, Vec<Recovery>)>> {
    let mut tries = 0;
    loop {
        let before = compact::Manifest::read(dir)?;
        match load_workspace(name, dir, Mode::ReadOnly) {
            Ok(x) => return Ok(x),
            Err(e) => {
                tries += 1;
                if tries >= 5 || compact::Manifest::read(dir)? == before {
                    return Err(e);
                }
            }
        }
    }
}

/// Replays a workspace's first log (no snapshot yet), and the logs after it.
fn load_first_log(
    name: &str,
    dir: &Path,
    mode: Mode,
) -> Result<Option<(WorkspaceHandle, Vec<Recovery>)>> {
    let path = dir.join(LOG_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let shown = path.display().to_string();
    // Look before anything is cut: a log whose first record is damaged
    // (not merely torn off by a crash) is corruption, never a creation that
    // did not happen.
    let mut file: Box<dyn log::LogFile> = match mode {
        Mode::ReadWrite => Box::new(log::FsFile::open(&path).map_err(Error::io_at(&path))?),
        Mode::ReadOnly => Box::new(ReadOnlyLog::open(&path)?),
    };
    let replay = LogWriter::scan(&mut file)?;
    if replay.records.is_empty() {
        return match replay.recovery.reason {
            Some(damage) if !damage.is_torn_tail() => Err(Error::Corrupt {
                path: shown.into(),
                reason: format!("the workspace's first record is damaged: {damage}"),
            }),
            _ => Ok(None),
        };
    }
    let writer = LogWriter::recover(file, &replay.recovery)?;
    let mut records = replay.records.into_iter();
    let Some(first) = records.next() else {
        return Ok(None);
    };
    let seed = match Change::decode(&first.payload, &shown, first.seq)? {
        Change::WorkspaceCreated { seed, .. } => seed,
        other => {
            return Err(Error::Corrupt {
                path: shown.into(),
                reason: format!("the first record is {other:?}, not WorkspaceCreated"),
            })
        }
    };
    let mut ws = Workspace::new(name, seed);
    replay_records(&mut ws, &path, records.collect())?;
    let mut recoveries = vec![replay.recovery];
    let (writer, chain) = follow_chain(&mut ws, dir, path, writer, &mut recoveries, mode)?;
    if mode == Mode::ReadWrite {
        compact::remove_litter(dir, None, &chain)?;
    }
    let handle = WorkspaceHandle::new(ws, writer, dir.to_path_buf(), None, chain);
    Ok(Some((handle, recoveries)))
}

/// Takes a data directory's `LOCK`: one process per directory.
fn lock_dir(dir: &Path) -> Result<fs::File> {
    let lock_path = dir.join("LOCK");
    let mut lock_options = fs::OpenOptions::new();
    lock_options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        lock_options.mode(PRIVATE_FILE);
    }
    let lock = lock_options
        .open(&lock_path)
        .map_err(Error::io_at(&lock_path))?;
    // A child process being spawned holds a copy of the lock's file
    // descriptor between its fork and its exec; a lock released just
    // before may look held for that instant, so retry for a moment.
    let mut tries = 0;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: lock_path.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io_at(&lock_path)(e)),
        }
    }
    Ok(lock)
}

/// A loaded workspace set up as the configuration says, its writes
/// refused by `fence` once it is lost.
fn configured(
    handle: WorkspaceHandle,
    config: &Config,
    fence: &Arc<store::Fence>,
) -> WorkspaceHandle {
    let handle = handle
        .with_max_filter_nodes(config.max_filter_nodes)
        .with_cohort_limit(config.max_cohorts_per_partner)
        .with_result_cache(config.result_cache_bytes)
        .with_bucket_mask_cache(config.bucket_mask_cache_bytes);
    handle.set_fence(fence.clone());
    handle
}

/// Reads the admin token's digest; `None` if the file does not exist.
fn read_admin_digest(path: &Path) -> Result<Option<[u8; 32]>> {
    match fs::read_to_string(path) {
        Ok(text) => keys::unhex32(&text).map(Some).ok_or_else(|| Error::Config {
            path: path.to_path_buf(),
            reason: "expected the 64 hex digits of a SHA-256 digest".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io_at(path)(e)),
    }
}

impl Engine {
    /// Opens a data directory, creating it if needed: loads (or creates)
    /// the configuration and the admin token, and replays every workspace's
    /// log. Returns the admin token when it was generated now (it is shown
    /// this once; only its digest is stored). The directory and its folders
    /// are made readable by their owner only (0700 on Unix), and so are
    /// `segq.json` and the admin token's digest (0600); looser ones found
    /// are tightened, with a line on stderr.
    pub fn open(dir: impl AsRef<Path>) -> Result<(Arc<Engine>, Option<String>)> {
        Self::open_with_env(dir, &|_| None)
    }

    /// [`Engine::open`] with configuration fields set by environment
    /// variables (`var` looks one up) over `segq.json`'s values, as
    /// [`Config::apply_env`] says; the file is left as it is. A bad
    /// variable is refused before anything is created.
    pub fn open_with_env(
        dir: impl AsRef<Path>,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Arc<Engine>, Option<String>)> {
        Self::open_with_store(dir, var, None).map(|(e, t, _)| (e, t))
    }

    /// [`Engine::open_with_env`] from an object store: once the directory
    /// is locked, and before anything in it is read, what `bucket` holds
    /// past the local files is restored ([`store::restore`]: the server's
    /// state when there is none, every workspace that is missing or
    /// behind). A bucket that does not check out is refused, the directory
    /// unchanged. Returns what was restored too.
    pub fn open_with_store(
        dir: impl AsRef<Path>,
        var: &dyn Fn(&str) -> Option<String>,
        bucket: Option<&dyn store::Bucket>,
    ) -> Result<(Arc<Engine>, Option<String>, store::Restored)> {
        Self::open_inner(dir.as_ref(), var, bucket, None).map(|(e, t, r, _)| (e, t, r))
    }

    /// [`Engine::open_with_store`] for the store's primary: once the
    /// directory is locked, and before anything is restored, the store's
    /// lease is taken for this data directory's node id
    /// ([`store::Lease::take`]: refused, naming the holder, while another
    /// node holds it; refused on a store without conditional puts), and
    /// its epoch is noted in `store-epoch` once the restore is done. The
    /// lease lasts `store_lease_secs` of the local `segq.json` (or the
    /// default, on an empty directory) until the shipper renews it.
    #[allow(clippy::type_complexity)]
    pub fn open_primary(
        dir: impl AsRef<Path>,
        var: &dyn Fn(&str) -> Option<String>,
        bucket: Arc<dyn store::Bucket>,
    ) -> Result<(
        Arc<Engine>,
        Option<String>,
        store::Restored,
        Arc<store::Lease>,
    )> {
        let (e, t, r, lease) = Self::open_inner(dir.as_ref(), var, Some(&*bucket), Some(&bucket))?;
        let lease = lease.ok_or_else(|| Error::Internal("no lease was taken".into()))?;
        Ok((e, t, r, lease))
    }

    #[allow(clippy::type_complexity)]
    fn open_inner(
        dir: &Path,
        var: &dyn Fn(&str) -> Option<String>,
        bucket: Option<&dyn store::Bucket>,
        primary: Option<&Arc<dyn store::Bucket>>,
    ) -> Result<(
        Arc<Engine>,
        Option<String>,
        store::Restored,
        Option<Arc<store::Lease>>,
    )> {
        let dir = dir.to_path_buf();
        let existing = Config::load_existing(&dir.join("segq.json")).ok().flatten();
        let mut before = existing.unwrap_or_else(Config::generate);
        before.apply_env(var)?;
        create_private_dir(&dir)?;
        create_private_dir(&dir.join("workspaces"))?;
        let lock = lock_dir(&dir)?;
        let lease = match primary {
            Some(b) => {
                let node = store::node_id(&dir)?;
                let d = std::time::Duration::from_secs(before.store_lease_secs);
                Some(Arc::new(store::Lease::take(b.clone(), &node, d)?))
            }
            None => None,
        };
        let restored = match bucket {
            Some(b) => store::restore(&dir, b)?,
            None => store::Restored::default(),
        };
        if let Some(l) = &lease {
            store::write_local_epoch(&dir, l.epoch())?;
        }
        let config_path = dir.join("segq.json");
        restrict(&config_path, PRIVATE_FILE);
        let mut config = Config::load_or_create(&config_path)?;
        config.apply_env(var)?;

        let token_path = dir.join("admin-token.sha256");
        restrict(&token_path, PRIVATE_FILE);
        let (admin_digest, new_token) = match read_admin_digest(&token_path)? {
            Some(d) => (d, None),
            None => {
                let token = keys::new_admin_token();
                let d = keys::digest(&token);
                write_atomically(&token_path, keys::hex(&d).as_bytes())?;
                (d, Some(token))
            }
        };
        let engine = Self::load(dir, config, Some(admin_digest), Some(lock), Mode::ReadWrite)?;
        Ok((engine, new_token, restored, lease))
    }

    /// Opens `dir` as a read replica of the object store `bucket`
    /// (`segq serve --replica-of`): the directory becomes a copy of the
    /// bucket (the server's state and every workspace, downloaded and
    /// checked whole; see [`store::mirror`]), and the engine serves it
    /// read-only: every write is refused with `NotPrimary`, naming the
    /// store and its primary. A directory holding workspaces that is not
    /// a replica's (no `replica-of` file) is refused, never overwritten.
    /// [`replica::Follower`] then keeps it up with the bucket.
    pub fn open_replica(
        dir: impl AsRef<Path>,
        var: &dyn Fn(&str) -> Option<String>,
        bucket: &dyn store::Bucket,
    ) -> Result<(Arc<Engine>, Vec<store::StoreManifest>)> {
        let dir = dir.as_ref().to_path_buf();
        create_private_dir(&dir)?;
        create_private_dir(&dir.join("workspaces"))?;
        let lock = lock_dir(&dir)?;
        let marker = dir.join(replica::MARKER_FILE);
        if !marker.exists() {
            let ws = dir.join("workspaces");
            let held = fs::read_dir(&ws)
                .map_err(Error::io_at(&ws))?
                .flatten()
                .any(|e| e.path().is_dir());
            if held {
                return Err(Error::Config {
                    path: dir.clone(),
                    reason: "holds workspaces and is not a read replica's data directory: \
                             a replica replaces its directory's contents with the store's; \
                             give it an empty directory"
                        .into(),
                });
            }
        }
        write_atomically(&marker, bucket.describe().as_bytes())?;
        let (restored, manifests) = store::mirror(&dir, bucket)?;
        let config_path = dir.join("segq.json");
        let mut config = Config::load_existing(&config_path)?.ok_or_else(|| Error::Config {
            path: config_path.clone(),
            reason: "missing after the store's server state was copied".into(),
        })?;
        config.apply_env(var)?;
        let admin_digest = read_admin_digest(&dir.join("admin-token.sha256"))?;
        let engine = Self::load(dir, config, admin_digest, Some(lock), Mode::ReadWrite)?;
        let status = Arc::new(replica::ReplicaStatus::new(
            bucket.describe(),
            engine.config.replica_max_lag_ms,
        ));
        status
            .bytes
            .fetch_add(restored.bytes, std::sync::atomic::Ordering::Relaxed);
        engine.fence.lose(status.refusal(None));
        for h in engine.handles() {
            h.become_follower();
        }
        let _ = engine.replica.set(status);
        Ok((engine, manifests))
    }

    /// A read replica's follower status; `None` on a primary.
    pub fn replica_status(&self) -> Option<&Arc<replica::ReplicaStatus>> {
        self.replica.get()
    }

    /// A read replica: serves `handle` (loaded from `dir/workspaces/NAME`,
    /// a follower) as workspace `name` in place of the one served, if any,
    /// with its keys in the indexes in place of the old one's.
    pub(crate) fn replica_install(&self, name: &str, handle: WorkspaceHandle) {
        drop(self.replica_put(name, self.replica_prepare(handle)));
    }

    /// A read replica: `handle`, loaded from its files, configured as the
    /// engine's and following from its last record.
    pub(crate) fn replica_prepare(&self, handle: WorkspaceHandle) -> WorkspaceHandle {
        let handle = configured(handle, &self.config, &self.fence);
        handle.become_follower();
        handle
    }

    /// A read replica: serves `handle` ([`Self::replica_prepare`]d) as
    /// workspace `name`, in place of the one served.
    /// Returns the one it replaced.
    pub(crate) fn replica_put(
        &self,
        name: &str,
        handle: WorkspaceHandle,
    ) -> Option<Arc<WorkspaceHandle>> {
        let handle = Arc::new(handle);
        let mut table = self.workspaces.write().unwrap_or_else(|p| p.into_inner());
        let replaced = table.live.insert(name.to_string(), handle);
        drop(table);
        self.replica_reindex(name);
        replaced
    }

    /// A read replica: stops serving workspace `name` (gone from the
    /// store) and drops its keys.
    pub(crate) fn replica_remove(&self, name: &str) {
        let mut table = self.workspaces.write().unwrap_or_else(|p| p.into_inner());
        table.live.remove(name);
        drop(table);
        self.replica_reindex(name);
    }

    /// A read replica: indexes workspace `name`'s keys as its state now
    /// holds them (created and revoked by the records it followed).
    pub(crate) fn replica_reindex(&self, name: &str) {
        let handle = self.workspace(name);
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut api_keys = self.api_keys.write().unwrap_or_else(|p| p.into_inner());
        let mut last_used = self.last_used.write().unwrap_or_else(|p| p.into_inner());
        keys.retain(|_, e| e.workspace != name);
        api_keys.retain(|_, e| e.workspace != name);
        last_used.retain(|(w, _), _| w != name);
        if let Some(h) = handle {
            index_keys(&h, &mut keys, &mut last_used);
            index_api_keys(&h, &mut api_keys);
        }
    }

    /// A read replica: takes the admin token's digest of the store's
    /// server state.
    pub(crate) fn set_admin_digest(&self, digest: [u8; 32]) {
        *self.admin_digest.write().unwrap_or_else(|p| p.into_inner()) = Some(digest);
    }

    /// Opens a data directory for queries only: nothing on disk is
    /// created, changed or deleted (a torn or damaged log tail is ignored
    /// in memory, litter stays, no `segq.json` or admin token is made), and
    /// the `LOCK` is not taken, so a directory a server is serving can be
    /// read (what its logs held when they were read). Every write through
    /// it is refused. A directory without a `workspaces` folder is refused.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Arc<Engine>> {
        Self::open_read_only_with_env(dir, &|_| None)
    }

    /// [`Engine::open_read_only`] with configuration fields set by
    /// environment variables, as [`Engine::open_with_env`].
    pub fn open_read_only_with_env(
        dir: impl AsRef<Path>,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Arc<Engine>> {
        let dir = dir.as_ref().to_path_buf();
        let ws_dir = dir.join("workspaces");
        if !ws_dir.is_dir() {
            return Err(Error::Config {
                path: dir.to_path_buf(),
                reason: "not a segq data directory (no workspaces folder)".into(),
            });
        }
        warn_if_loose(&dir, PRIVATE_DIR);
        let config_path = dir.join("segq.json");
        warn_if_loose(&config_path, PRIVATE_FILE);
        let mut config = match Config::load_existing(&config_path)? {
            Some(c) => c,
            None => Config {
                partner_api_keys: BTreeMap::new(),
                ..Config::generate()
            },
        };
        config.apply_env(var)?;
        let token_path = dir.join("admin-token.sha256");
        warn_if_loose(&token_path, PRIVATE_FILE);
        let admin_digest = read_admin_digest(&token_path)?;
        Self::load(dir, config, admin_digest, None, Mode::ReadOnly)
    }

    /// Loads every workspace of an opened data directory.
    fn load(
        dir: PathBuf,
        config: Config,
        admin_digest: Option<[u8; 32]>,
        lock: Option<fs::File>,
        mode: Mode,
    ) -> Result<Arc<Engine>> {
        let fence = Arc::new(store::Fence::default());
        let mut table = Table::default();
        let mut key_index = HashMap::new();
        let mut api_key_index = HashMap::new();
        let mut last_used = HashMap::new();
        let mut recoveries = Vec::new();
        let ws_dir = dir.join("workspaces");
        let mut names: Vec<String> = fs::read_dir(&ws_dir)
            .map_err(Error::io_at(&ws_dir))?
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.path().join(LOG_FILE).exists() || e.path().join(compact::MANIFEST).exists()
            })
            .filter_map(|e| e.file_name().into_string().ok())
            // Folders made before reserved names were refused still load.
            .filter(|n| name_characters_ok(n))
            .collect();
        names.sort();
        for name in names {
            let dir = ws_dir.join(&name);
            let loaded = match mode {
                Mode::ReadWrite => {
                    restrict(&dir, PRIVATE_DIR);
                    load_workspace(&name, &dir, mode)?
                }
                Mode::ReadOnly => load_read_only(&name, &dir)?,
            };
            let Some((handle, recovery)) = loaded else {
                // Never acknowledged: clear it so the name can be created.
                let path = dir.join(LOG_FILE);
                if mode == Mode::ReadWrite && path.exists() {
                    fs::remove_file(&path).map_err(Error::io_at(&path))?;
                }
                continue;
            };
            if mode == Mode::ReadOnly {
                handle.refuse_writes("the data directory was opened read-only");
            }
            index_keys(&handle, &mut key_index, &mut last_used);
            index_api_keys(&handle, &mut api_key_index);
            recoveries.extend(recovery.into_iter().filter(|r| !r.is_clean()));
            table
                .live
                .insert(name, Arc::new(configured(handle, &config, &fence)));
        }
        Ok(Arc::new(Engine {
            dir,
            config,
            admin_digest: RwLock::new(admin_digest),
            workspaces: RwLock::new(table),
            keys: RwLock::new(key_index),
            api_keys: RwLock::new(api_key_index),
            recoveries,
            last_used: RwLock::new(last_used),
            _lock: lock,
            read_only: mode == Mode::ReadOnly,
            store: std::sync::OnceLock::new(),
            fence,
            replica: std::sync::OnceLock::new(),
        }))
    }

    /// Notes the object store shipping this data directory (its status is
    /// shown by `/metrics` and `/readyz`); the first one attached stays.
    pub(crate) fn attach_store(&self, status: Arc<store::StoreStatus>) {
        let _ = self.store.set(status);
    }

    /// The object store's counters, when the data directory is shipped to
    /// one.
    pub fn store_status(&self) -> Option<&Arc<store::StoreStatus>> {
        self.store.get()
    }

    /// Whether the engine was opened with [`Engine::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// What refuses writes once this node lost the object store's lease.
    pub fn fence(&self) -> &Arc<store::Fence> {
        &self.fence
    }

    fn check_not_replica(&self) -> Result<()> {
        match self.replica.get() {
            Some(r) => Err(Error::NotPrimary {
                reason: r.refusal(None),
            }),
            None => Ok(()),
        }
    }

    fn check_writable(&self) -> Result<()> {
        self.fence.check()?;
        if self.read_only {
            return Err(Error::InvalidArgument(format!(
                "{} was opened read-only",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration (`segq.json`).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Logs whose tail was cut when they were opened (torn or corrupt).
    pub fn recoveries(&self) -> &[Recovery] {
        &self.recoveries
    }

    /// Whether `token` is the admin token (constant time).
    pub fn check_admin_token(&self, token: &str) -> bool {
        let digest = *self.admin_digest.read().unwrap_or_else(|p| p.into_inner());
        digest.is_some_and(|d| keys::same_digest(&keys::digest(token), &d))
    }

    /// Creates a workspace. Returns false if it exists already. Refused:
    /// a name not usable as a folder name everywhere, or one that differs
    /// only in case from a workspace's (or a restore's) name.
    pub fn create_workspace(&self, name: &str) -> Result<bool> {
        check_workspace_name(name)?;
        self.check_writable()?;
        let mut table = self.workspaces.write().unwrap_or_else(|p| p.into_inner());
        if table.check_free(name)? {
            return Ok(false);
        }
        let folder = self.dir.join("workspaces").join(name);
        create_private_dir(&folder)?;
        sync_dir(&self.dir.join("workspaces"))?;
        // Left by a creation that was never acknowledged, or a restore
        // that stopped before its manifest.
        clear_unused_folder(&folder)?;
        let path = folder.join(LOG_FILE);
        let writer = log::create_file(&path, 1)?;
        let seed = rand::rngs::OsRng.next_u64();
        let change = Change::WorkspaceCreated {
            seed,
            at_ms: to_ms(Utc::now()),
        };
        let mut ws = Workspace::new(name, seed);
        let mut payloads = vec![change.encode()?];
        // Created by a request: its audit entry is the log's second
        // record, durable with the first.
        if let Some((ctx, action)) = audit::current() {
            let entry = audit::new_entry(&ctx, action, 1, name, serde_json::Map::new());
            let audited = Change::Audited(entry);
            payloads.push(audited.encode()?);
            record::apply(&mut ws, &audited)?;
        }
        writer.append_batch(&payloads)?;
        let handle = WorkspaceHandle::new(ws, writer, folder, None, vec![path])
            .with_max_filter_nodes(self.config.max_filter_nodes)
            .with_cohort_limit(self.config.max_cohorts_per_partner)
            .with_result_cache(self.config.result_cache_bytes)
            .with_bucket_mask_cache(self.config.bucket_mask_cache_bytes);
        handle.set_fence(self.fence.clone());
        table.live.insert(name.to_string(), Arc::new(handle));
        Ok(true)
    }

    /// Refuses a snapshot whose valid keys are valid keys of a workspace
    /// here: a backup restored beside its original must not take over the
    /// original's imports.
    fn check_restored_keys(
        index: &HashMap<[u8; 32], KeyEntry>,
        keys: &[crate::snapshot::meta::KeyMeta],
    ) -> Result<()> {
        for k in keys {
            if let Some(other) = index.get(&k.digest) {
                return Err(Error::InvalidArgument(format!(
                    "data import key {} of the snapshot is a key of workspace {}; \
                     invalidate it there first",
                    k.id, other.workspace
                )));
            }
        }
        Ok(())
    }

    /// Refuses a restored workspace whose valid API keys are (or were)
    /// keys of a workspace here: a key never reaches two workspaces, and a
    /// key revoked in the original does not come back in its copy.
    fn check_restored_api_keys(table: &Table, handle: &WorkspaceHandle) -> Result<()> {
        let restored: Vec<([u8; 32], String)> = handle
            .read()
            .api_keys
            .values()
            .filter(|k| k.revoked_at.is_none())
            .map(|k| (k.digest, k.id.clone()))
            .collect();
        if restored.is_empty() {
            return Ok(());
        }
        for (name, other) in &table.live {
            let ws = other.read();
            for (digest, id) in &restored {
                if ws.api_keys.values().any(|k| k.digest == *digest) {
                    return Err(Error::InvalidArgument(format!(
                        "API key {id} of the snapshot is (or was) a key of workspace {name}; \
                         a key never reaches two workspaces"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Creates workspace `name` from a snapshot file (a backup, or a
    /// generated workload): the file is checked whole (`verify`), copied in
    /// as the first generation with an empty log after it, and served from
    /// at once. Refused if the workspace exists (or its name is refused as
    /// by [`Engine::create_workspace`]). The name is reserved while the file
    /// is checked and copied, with no lock held: other workspaces go on
    /// serving meanwhile.
    pub fn restore_workspace(&self, name: &str, file: &Path) -> Result<Arc<WorkspaceHandle>> {
        check_workspace_name(name)?;
        self.check_writable()?;
        {
            let mut table = self.workspaces.write().unwrap_or_else(|p| p.into_inner());
            if table.check_free(name)? {
                return Err(Error::InvalidArgument(format!(
                    "workspace {name} exists already"
                )));
            }
            table.reserved.insert(name.to_string());
        }
        let restored = self.restore_reserved(name, file);
        let mut table = self.workspaces.write().unwrap_or_else(|p| p.into_inner());
        table.reserved.remove(name);
        let (handle, snapshot_keys) = restored?;
        let folder = self.dir.join("workspaces").join(name);
        let mut key_index = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut api_key_index = self.api_keys.write().unwrap_or_else(|p| p.into_inner());
        // Keys may have been created while the file was copied.
        let checked = Self::check_restored_keys(&key_index, &snapshot_keys)
            .and_then(|()| Self::check_restored_api_keys(&table, &handle));
        if let Err(e) = checked {
            drop(handle);
            let _ = fs::remove_file(folder.join(compact::MANIFEST));
            let _ = clear_unused_folder(&folder);
            return Err(e);
        }
        let mut last_used = self.last_used.write().unwrap_or_else(|p| p.into_inner());
        index_keys(&handle, &mut key_index, &mut last_used);
        index_api_keys(&handle, &mut api_key_index);
        handle.set_fence(self.fence.clone());
        table.live.insert(name.to_string(), handle.clone());
        Ok(handle)
    }

    /// The work of a restore, `name` reserved, no lock held. Returns the
    /// loaded workspace and the snapshot's keys.
    fn restore_reserved(
        &self,
        name: &str,
        file: &Path,
    ) -> Result<(Arc<WorkspaceHandle>, Vec<crate::snapshot::meta::KeyMeta>)> {
        let folder = self.dir.join("workspaces").join(name);
        let (seq, snapshot_keys) = {
            let snap = Snapshot::open(file)?;
            snap.verify()?;
            persist::verify_attributes(&snap)?;
            let meta = snap.meta()?;
            {
                let index = self.keys.read().unwrap_or_else(|p| p.into_inner());
                Self::check_restored_keys(&index, &meta.keys)?;
            }
            (meta.seq, meta.keys.clone())
        };
        create_private_dir(&folder)?;
        // Left by a creation never acknowledged, or a restore that stopped.
        clear_unused_folder(&folder)?;
        let snap_name = compact::snapshot_name(1);
        let tmp = folder.join(format!("{snap_name}.tmp"));
        fs::copy(file, &tmp).map_err(Error::io_at(&tmp))?;
        let mut real = compact::RealFs;
        real.fsync(&tmp)?;
        real.rename(&tmp, &folder.join(&snap_name))?;
        // The empty log after the snapshot, as a compaction starts one.
        drop(compact::rotate(&mut real, &folder, seq)?);
        let log_name = compact::log_name(seq + 1);
        compact::write_manifest(
            &folder,
            &compact::Manifest {
                version: 1,
                generation: 1,
                seq,
                snapshot: snap_name,
                log: log_name,
            },
        )?;
        sync_dir(&self.dir.join("workspaces"))?;
        let loaded = load_workspace(name, &folder, Mode::ReadWrite).and_then(|h| {
            h.ok_or_else(|| {
                Error::Internal(format!("workspace {name} did not load after its restore"))
            })
        });
        match loaded {
            Ok((handle, _)) => Ok((
                Arc::new(
                    handle
                        .with_max_filter_nodes(self.config.max_filter_nodes)
                        .with_cohort_limit(self.config.max_cohorts_per_partner)
                        .with_result_cache(self.config.result_cache_bytes)
                        .with_bucket_mask_cache(self.config.bucket_mask_cache_bytes),
                ),
                snapshot_keys,
            )),
            Err(e) => {
                // Undo, so that neither a start-up nor a later creation
                // meets a half-restored folder.
                let _ = fs::remove_file(folder.join(compact::MANIFEST));
                let _ = clear_unused_folder(&folder);
                Err(e)
            }
        }
    }

    /// The workspaces, by name.
    pub fn workspace_names(&self) -> Vec<String> {
        let table = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
        table.live.keys().cloned().collect()
    }

    /// Every live workspace.
    pub fn handles(&self) -> Vec<Arc<WorkspaceHandle>> {
        let table = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
        table.live.values().cloned().collect()
    }

    /// The live workspace of this name, if there is one.
    pub fn workspace(&self, name: &str) -> Option<Arc<WorkspaceHandle>> {
        let table = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
        table.live.get(name).cloned()
    }

    fn existing(&self, name: &str) -> Result<Arc<WorkspaceHandle>> {
        self.workspace(name)
            .ok_or_else(|| Error::UnknownWorkspace { name: name.into() })
    }

    /// Checks a partner request's credentials: the partner_api_key against
    /// the configuration, the client_secret against the valid data import
    /// keys, and the key's partner against the URL's. Returns the workspace
    /// the key names and the key's id.
    pub fn authorize(
        &self,
        partner: Partner,
        creds: &Credentials,
    ) -> Result<(Arc<WorkspaceHandle>, String), ProtocolError> {
        self.authorize_at(partner, creds, Utc::now())
    }

    /// [`Engine::authorize`] of a request made at `now`: the key's
    /// `last_used`. A use a minute or more after the last one logged is
    /// logged (`Change::KeyUsed`) with the workspace's next write, in the
    /// same group commit.
    pub fn authorize_at(
        &self,
        partner: Partner,
        creds: &Credentials,
        now: DateTime<Utc>,
    ) -> Result<(Arc<WorkspaceHandle>, String), ProtocolError> {
        let expected = self.config.partner_api_keys.get(&partner);
        if !expected.is_some_and(|k| keys::same_secret(k, &creds.partner_api_key)) {
            return Err(ProtocolError::Unauthorized(texts::BAD_PARTNER_KEY));
        }
        let digest = keys::digest(&creds.client_secret);
        // Copied out, so that the index is not held while the table of
        // workspaces is read (see the lock order).
        let (workspace, key_id, key_partner, used) = {
            let index = self.keys.read().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = index.get(&digest) else {
                return Err(ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET));
            };
            (
                entry.workspace.clone(),
                entry.key_id.clone(),
                entry.partner,
                entry.used.clone(),
            )
        };
        let Some(handle) = self.workspace(&workspace) else {
            return Err(ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET));
        };
        let enabled = key_partner == partner && handle.read().enabled_partners.contains(&partner);
        if !enabled {
            return Err(ProtocolError::Unauthorized(texts::PARTNER_NOT_ENABLED));
        }
        let now = to_ms(now);
        if used.used(now) && self.replica.get().is_none() {
            handle.note_key_used(&key_id, now);
        }
        Ok((handle, key_id))
    }

    /// Generates a data import key for a partner of a workspace; the first
    /// one enables the partner. The key is in the result and nowhere else.
    pub fn create_key(&self, workspace: &str, partner: Partner) -> Result<NewKey> {
        let handle = self.existing(workspace)?;
        let key = keys::new_data_import_key();
        let id = keys::new_key_id();
        let prefix = key[..12].to_string();
        let digest = keys::digest(&key);
        let now = Utc::now();
        // Hold the index while logging, so the key is usable exactly when
        // it is acknowledged.
        let mut index = self.keys.write().unwrap_or_else(|p| p.into_inner());
        handle.commit(Change::KeyCreated {
            id: id.clone(),
            partner,
            digest,
            prefix: prefix.clone(),
            at_ms: to_ms(now),
        })?;
        let used = KeyUse::from_durable(None);
        self.last_used
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((workspace.to_string(), id.clone()), used.clone());
        index.insert(
            digest,
            KeyEntry {
                workspace: workspace.to_string(),
                key_id: id.clone(),
                partner,
                used,
            },
        );
        Ok(NewKey {
            id,
            key,
            prefix,
            partner,
            created_at: from_ms(to_ms(now)),
        })
    }

    /// The keys of a workspace (of one partner, if given), oldest first.
    /// `last_used` is exact while segq runs, and kept across restarts to
    /// the minute ([`KEY_USE_RESOLUTION_MS`]).
    pub fn list_keys(&self, workspace: &str, partner: Option<Partner>) -> Result<Vec<KeyInfo>> {
        let handle = self.existing(workspace)?;
        let last_used = self.last_used.read().unwrap_or_else(|p| p.into_inner());
        let ws = handle.read();
        let mut out: Vec<KeyInfo> = ws
            .keys
            .values()
            .filter(|k| partner.is_none_or(|p| p == k.partner))
            .map(|k| {
                let in_memory = last_used
                    .get(&(workspace.to_string(), k.id.clone()))
                    .map_or(0, |u| u.last_ms.load(Ordering::Relaxed));
                let used = k.last_used.map_or(in_memory, |d| in_memory.max(to_ms(d)));
                KeyInfo {
                    id: k.id.clone(),
                    partner: k.partner,
                    prefix: k.prefix.clone(),
                    created_at: k.created_at,
                    last_used: (used > 0).then(|| from_ms(used)),
                    invalidated_at: k.invalidated_at,
                }
            })
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Invalidates a key: its next request fails with 401; the other keys
    /// of the workspace keep working.
    pub fn invalidate_key(&self, workspace: &str, key_id: &str) -> Result<()> {
        let handle = self.existing(workspace)?;
        let mut index = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let digest = {
            let ws = handle.read();
            let k = ws.keys.get(key_id).ok_or_else(|| Error::UnknownKey {
                id: key_id.to_string(),
            })?;
            if k.invalidated_at.is_some() {
                return Ok(());
            }
            k.digest
        };
        // Refuse the key before the change is durable: a key must never
        // work after its invalidation was acknowledged.
        let entry = index.remove(&digest);
        let result = handle.commit(Change::KeyInvalidated {
            id: key_id.to_string(),
            at_ms: to_ms(Utc::now()),
        });
        if result.is_err() {
            // Not durable, so undone: the key stays valid, as memory says.
            let valid = handle
                .read()
                .keys
                .get(key_id)
                .is_some_and(|k| k.invalidated_at.is_none());
            if let Some(entry) = entry.filter(|_| valid) {
                index.insert(digest, entry);
            }
        }
        result
    }

    /// Enables a partner for a workspace without generating a key.
    pub fn enable_partner(&self, workspace: &str, partner: Partner) -> Result<()> {
        let handle = self.existing(workspace)?;
        if handle.read().enabled_partners.contains(&partner) {
            return Ok(());
        }
        handle.commit(Change::PartnerEnabled { partner })
    }

    /// Who a bearer token is: the admin token, a valid workspace API key
    /// (digests compared, the admin token's in constant time), or neither.
    pub fn caller(&self, token: &str) -> Caller {
        if self.check_admin_token(token) {
            return Caller::Admin;
        }
        let digest = keys::digest(token);
        let index = self.api_keys.read().unwrap_or_else(|p| p.into_inner());
        match index.get(&digest) {
            Some(e) => Caller::Key {
                workspace: e.workspace.clone(),
                key_id: e.key_id.clone(),
                scopes: e.scopes.clone(),
            },
            None => Caller::Unknown,
        }
    }

    /// Creates a workspace API key: `name` checked (1 to 100 characters),
    /// `scopes` as [`crate::access::parse_scopes`] gives them. The key is
    /// in the result and nowhere else; it works once this returns.
    pub fn create_api_key(
        &self,
        workspace: &str,
        name: &str,
        scopes: Vec<Scope>,
    ) -> Result<NewApiKey> {
        crate::access::check_name(name).map_err(Error::InvalidArgument)?;
        if scopes.is_empty() {
            return Err(Error::InvalidArgument(
                "scopes must name at least one scope".into(),
            ));
        }
        let handle = self.existing(workspace)?;
        let key = keys::new_api_key();
        let id = keys::new_api_key_id();
        let digest = keys::digest(&key);
        let now = from_ms(to_ms(Utc::now()));
        // Held while logging: the key works exactly when it is acknowledged.
        let mut index = self.api_keys.write().unwrap_or_else(|p| p.into_inner());
        handle.commit(Change::ApiKeyCreated {
            id: id.clone(),
            name: name.to_string(),
            scopes: scopes.clone(),
            digest,
            at_ms: to_ms(now),
        })?;
        index.insert(
            digest,
            ApiKeyEntry {
                workspace: workspace.to_string(),
                key_id: id.clone(),
                scopes: scopes.clone(),
            },
        );
        Ok(NewApiKey {
            id,
            key,
            name: name.to_string(),
            scopes: scopes.iter().map(|s| s.name()).collect(),
            created_at: now,
        })
    }

    /// The API keys of a workspace, revoked ones included, oldest first.
    pub fn list_api_keys(&self, workspace: &str) -> Result<Vec<ApiKeyInfo>> {
        let handle = self.existing(workspace)?;
        let ws = handle.read();
        let mut out: Vec<ApiKeyInfo> = ws
            .api_keys
            .values()
            .map(|k| ApiKeyInfo {
                id: k.id.clone(),
                name: k.name.clone(),
                scopes: k.scopes.iter().map(|s| s.name()).collect(),
                created_at: k.created_at,
                revoked_at: k.revoked_at,
            })
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Revokes a workspace API key: refused from this call on, before the
    /// revocation is durable (undone if it cannot be made durable).
    /// Revoking a revoked key changes nothing.
    pub fn revoke_api_key(&self, workspace: &str, key_id: &str) -> Result<()> {
        let handle = self.existing(workspace)?;
        let mut index = self.api_keys.write().unwrap_or_else(|p| p.into_inner());
        let digest = {
            let ws = handle.read();
            let k = ws
                .api_keys
                .get(key_id)
                .ok_or_else(|| Error::UnknownApiKey {
                    id: key_id.to_string(),
                })?;
            if k.revoked_at.is_some() {
                return Ok(());
            }
            k.digest
        };
        let entry = index.remove(&digest);
        let result = handle.commit(Change::ApiKeyRevoked {
            id: key_id.to_string(),
            at_ms: to_ms(Utc::now()),
        });
        if result.is_err() {
            let valid = handle
                .read()
                .api_keys
                .get(key_id)
                .is_some_and(|k| k.revoked_at.is_none());
            if let Some(entry) = entry.filter(|_| valid) {
                index.insert(digest, entry);
            }
        }
        result
    }

    /// Folds a workspace's log into a new snapshot generation now.
    pub fn compact(&self, workspace: &str) -> Result<Compacted> {
        self.check_not_replica()?;
        self.existing(workspace)?.compact()
    }

    /// Compacts every workspace whose log passed a threshold of the
    /// configuration; returns what was done.
    pub fn compact_due(&self) -> Vec<(String, Result<Compacted>)> {
        if self.replica.get().is_some() {
            // The primary compacts; its snapshots arrive through the store.
            return Vec::new();
        }
        let all: Vec<Arc<WorkspaceHandle>> = {
            let table = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
            table.live.values().cloned().collect()
        };
        all.into_iter()
            .filter(|h| h.compaction_due(&self.config))
            .map(|h| (h.name().to_string(), h.compact()))
            .collect()
    }

    /// Starts a thread (`segq-compactor`, at the nice value
    /// `compaction_nice`) that compacts due workspaces every `every`,
    /// until the engine is dropped; returns once that thread runs at its
    /// priority.
    pub fn start_compactor(
        self: &Arc<Self>,
        every: std::time::Duration,
    ) -> Result<std::thread::JoinHandle<()>> {
        let weak = Arc::downgrade(self);
        let nice = self.config.compaction_nice;
        // Its freeze and its move to the new snapshot run there, at the
        // normal priority.
        priority::start_lock_holders()?;
        let thread = std::thread::Builder::new().name("segq-compactor".into());
        let (lowered, is_lowered) = std::sync::mpsc::sync_channel(1);
        let started = thread.spawn(move || {
            // Compactions yield to queries (`priority`); one that could
            // not be lowered runs as it is.
            if let Err(e) = priority::lower_current_thread(nice) {
                tracing::warn!("compactions at normal priority: {e}");
            }
            let _ = lowered.send(());
            loop {
                std::thread::sleep(every);
                let Some(engine) = weak.upgrade() else {
                    return;
                };
                for (name, r) in engine.compact_due() {
                    match r {
                        Ok(c) => tracing::info!(
                            workspace = %name,
                            "compacted: generation {} up to seq {} ({} bytes, {} ms)",
                            c.generation, c.seq, c.snapshot_bytes, c.took_ms
                        ),
                        Err(e) => tracing::error!(workspace = %name, "compacting: {e}"),
                    }
                }
            }
        });
        let started =
            started.map_err(|e| Error::Internal(format!("starting the compactor: {e}")))?;
        // Back once the thread runs under its name at its priority, so
        // what follows (a server taking requests) finds it settled.
        let _ = is_lowered.recv();
        Ok(started)
    }

    /// Waits until everything submitted to every log is durable
    /// (shutdown). Tries every workspace, and reports each one that failed.
    pub fn sync_all(&self) -> Result<(), SyncFailed> {
        let all: Vec<Arc<WorkspaceHandle>> = {
            let table = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
            table.live.values().cloned().collect()
        };
        // Key uses noted since the last write, so `last_used` survives.
        for h in &all {
            if let Err(e) = h.log_key_uses() {
                tracing::error!(workspace = h.name(), "logging key uses: {e}");
            }
        }
        let failures: Vec<(String, Error)> = all
            .iter()
            .filter_map(|h| h.sync().err().map(|e| (h.name().to_string(), e)))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(SyncFailed { failures })
        }
    }
}

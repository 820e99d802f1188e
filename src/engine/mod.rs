//! The storage engine: a data directory of workspaces, each a change log
//! replayed into memory at start-up, plus the server's configuration, the
//! admin token and the data import keys.
//!
//! ```text
//! DATA/
//!   segq.json                 configuration (partner_api_keys, limits)
//!   admin-token.sha256        hex SHA-256 of the admin bearer token
//!   workspaces/NAME/
//!     changes.segqlog         the workspace's change log (see crate::log)
//! ```
//!
//! Every method may wait for an fsync: async callers run them on a blocking
//! thread.

pub mod compact;
mod config;
mod handle;
pub mod keys;
pub mod record;

pub use compact::{Compacted, Fs, Manifest, RealFs};
pub use config::{Config, DEFAULT_MAX_BODY_BYTES, DEFAULT_RATE_LIMIT_PER_HOUR};
pub use handle::{BatchReport, WorkspaceHandle};
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
#[derive(Clone, Debug, Serialize)]
pub struct NewKey {
    pub id: String,
    pub key: String,
    pub prefix: String,
    pub partner: Partner,
    pub created_at: DateTime<Utc>,
}

/// A data import key as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub partner: Partner,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used: Option<DateTime<Utc>>,
    pub invalidated_at: Option<DateTime<Utc>>,
}

/// Where a valid data import key leads.
struct KeyEntry {
    workspace: String,
    key_id: String,
    partner: Partner,
    /// Milliseconds since the epoch; 0 = never. Kept in memory only: it
    /// says when the key was last used since segq started.
    last_used_ms: Arc<AtomicI64>,
}

/// A data directory, open.
pub struct Engine {
    dir: PathBuf,
    config: Config,
    admin_digest: [u8; 32],
    workspaces: RwLock<BTreeMap<String, Arc<WorkspaceHandle>>>,
    /// Digest of every valid data import key.
    keys: RwLock<HashMap<[u8; 32], KeyEntry>>,
    recoveries: Vec<Recovery>,
    /// When each key (valid or not) was last used since segq started, in
    /// milliseconds since the epoch; shared with the key's index entry.
    last_used: RwLock<HashMap<String, Arc<AtomicI64>>>,
    /// Held for the engine's life: one process per data directory.
    _lock: fs::File,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a small file so that it is either wholly there or not at all:
/// a temporary file, fsynced, renamed over the target, directory fsynced.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_error(&tmp))?;
    f.write_all(bytes).map_err(io_error(&tmp))?;
    f.sync_all().map_err(io_error(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_error(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Whether a workspace name is usable as a folder name everywhere.
pub fn valid_workspace_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Loads a workspace: the snapshot its manifest names, served in place,
/// then the logs after it; before its first compaction, its first log.
/// `Ok(None)`: the workspace's creation was never acknowledged.
fn load_workspace(name: &str, dir: &Path) -> Result<Option<(WorkspaceHandle, Vec<Recovery>)>> {
    let Some(m) = compact::Manifest::read(dir)? else {
        return load_first_log(name, dir);
    };
    let snap = Arc::new(compact::open_snapshot(dir, &m)?);
    let mut ws = Snapshot::load(snap)?;
    // A restored snapshot may come from a workspace of another name.
    ws.set_name(name);
    let path = dir.join(&m.log);
    let (writer, replay) = log::open_file(&path)?;
    if writer.first_seq() != m.seq + 1 {
        return Err(Error::Corrupt {
            path: path.display().to_string(),
            reason: format!(
                "starts at seq {}, the manifest's snapshot ends at {}",
                writer.first_seq(),
                m.seq
            ),
        });
    }
    replay_records(&mut ws, &path, replay.records)?;
    let mut recoveries = vec![replay.recovery];
    let (writer, chain) = follow_chain(&mut ws, dir, path, writer, &mut recoveries)?;
    compact::remove_litter(dir, Some(&m.snapshot), &chain)?;
    let handle = WorkspaceHandle::new(ws, writer, dir.to_path_buf(), Some(m), chain);
    Ok(Some((handle, recoveries)))
}

fn replay_records(ws: &mut Workspace, path: &Path, records: Vec<log::LogRecord>) -> Result<()> {
    let shown = path.display().to_string();
    for r in records {
        let change = Change::decode(&r.payload, &shown, r.seq)?;
        record::apply(ws, &change).map_err(|e| Error::Corrupt {
            path: shown.clone(),
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
) -> Result<(LogWriter, Vec<PathBuf>)> {
    let mut chain = vec![path];
    loop {
        let next = dir.join(compact::log_name(writer.next_seq()));
        if chain.contains(&next) || !next.exists() {
            break;
        }
        let (w, replay) = log::open_file(&next)?;
        if w.first_seq() != writer.next_seq() {
            return Err(Error::Corrupt {
                path: next.display().to_string(),
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
    for entry in fs::read_dir(dir).map_err(io_error(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(first) = compact::log_first_seq(&name) {
            if first > end {
                return Err(Error::Corrupt {
                    path: entry.path().display().to_string(),
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
            path: manifest.display().to_string(),
            reason: "a workspace's manifest, but the workspace is not loaded; \
                     move the folder away to reuse its name"
                .into(),
        });
    }
    compact::remove_litter(folder, None, &[])
}

/// Adds a workspace's valid data import keys to the engine's index.
fn index_keys(
    handle: &WorkspaceHandle,
    key_index: &mut HashMap<[u8; 32], KeyEntry>,
    last_used: &mut HashMap<String, Arc<AtomicI64>>,
) {
    for k in handle.read().keys.values() {
        let used = Arc::new(AtomicI64::new(0));
        last_used.insert(k.id.clone(), used.clone());
        if k.invalidated_at.is_none() {
            key_index.insert(
                k.digest,
                KeyEntry {
                    workspace: handle.name().to_string(),
                    key_id: k.id.clone(),
                    partner: k.partner,
                    last_used_ms: used,
                },
            );
        }
    }
}

/// Replays a workspace's first log (no snapshot yet), and the logs after it.
fn load_first_log(name: &str, dir: &Path) -> Result<Option<(WorkspaceHandle, Vec<Recovery>)>> {
    let path = dir.join(LOG_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let shown = path.display().to_string();
    // Look before anything is cut: a log whose first record is damaged
    // (not merely torn off by a crash) is corruption, never a creation that
    // did not happen.
    let mut file = log::FsFile::open(&path).map_err(io_error(&path))?;
    let replay = LogWriter::scan(&mut file)?;
    if replay.records.is_empty() {
        return match replay.recovery.reason {
            Some(damage) if !damage.is_torn_tail() => Err(Error::Corrupt {
                path: shown,
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
                path: shown,
                reason: format!("the first record is {other:?}, not WorkspaceCreated"),
            })
        }
    };
    let mut ws = Workspace::new(name, seed);
    replay_records(&mut ws, &path, records.collect())?;
    let mut recoveries = vec![replay.recovery];
    let (writer, chain) = follow_chain(&mut ws, dir, path, writer, &mut recoveries)?;
    compact::remove_litter(dir, None, &chain)?;
    let handle = WorkspaceHandle::new(ws, writer, dir.to_path_buf(), None, chain);
    Ok(Some((handle, recoveries)))
}

impl Engine {
    /// Opens a data directory, creating it if needed: loads (or creates)
    /// the configuration and the admin token, and replays every workspace's
    /// log. Returns the admin token when it was generated now (it is shown
    /// this once; only its digest is stored).
    pub fn open(dir: impl AsRef<Path>) -> Result<(Arc<Engine>, Option<String>)> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(dir.join("workspaces")).map_err(io_error(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
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
                        path: lock_path.display().to_string(),
                    })
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
            }
        }
        let config = Config::load_or_create(&dir.join("segq.json"))?;

        let token_path = dir.join("admin-token.sha256");
        let (admin_digest, new_token) = match fs::read_to_string(&token_path) {
            Ok(text) => {
                let d = keys::unhex32(&text).ok_or_else(|| Error::Config {
                    path: token_path.display().to_string(),
                    reason: "expected the 64 hex digits of a SHA-256 digest".into(),
                })?;
                (d, None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = keys::new_admin_token();
                let d = keys::digest(&token);
                write_atomically(&token_path, keys::hex(&d).as_bytes())?;
                (d, Some(token))
            }
            Err(e) => return Err(io_error(&token_path)(e)),
        };

        let mut workspaces = BTreeMap::new();
        let mut key_index = HashMap::new();
        let mut last_used = HashMap::new();
        let mut recoveries = Vec::new();
        let ws_dir = dir.join("workspaces");
        let mut names: Vec<String> = fs::read_dir(&ws_dir)
            .map_err(io_error(&ws_dir))?
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.path().join(LOG_FILE).exists() || e.path().join(compact::MANIFEST).exists()
            })
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_workspace_name(n))
            .collect();
        names.sort();
        for name in names {
            let dir = ws_dir.join(&name);
            let Some((handle, recovery)) = load_workspace(&name, &dir)? else {
                // Never acknowledged: clear it so the name can be created.
                let path = dir.join(LOG_FILE);
                if path.exists() {
                    fs::remove_file(&path).map_err(io_error(&path))?;
                }
                continue;
            };
            index_keys(&handle, &mut key_index, &mut last_used);
            recoveries.extend(recovery.into_iter().filter(|r| !r.is_clean()));
            let handle = handle.with_max_filter_nodes(config.max_filter_nodes);
            workspaces.insert(name, Arc::new(handle));
        }
        let engine = Engine {
            dir,
            config,
            admin_digest,
            workspaces: RwLock::new(workspaces),
            keys: RwLock::new(key_index),
            recoveries,
            last_used: RwLock::new(last_used),
            _lock: lock,
        };
        Ok((Arc::new(engine), new_token))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Logs whose tail was cut when they were opened (torn or corrupt).
    pub fn recoveries(&self) -> &[Recovery] {
        &self.recoveries
    }

    /// Whether `token` is the admin token (constant time).
    pub fn check_admin_token(&self, token: &str) -> bool {
        keys::same_digest(&keys::digest(token), &self.admin_digest)
    }

    /// Creates a workspace. Returns false if it exists already.
    pub fn create_workspace(&self, name: &str) -> Result<bool> {
        if !valid_workspace_name(name) {
            return Err(Error::InvalidWorkspaceName { name: name.into() });
        }
        let mut all = self.workspaces.write().unwrap_or_else(|p| p.into_inner());
        if all.contains_key(name) {
            return Ok(false);
        }
        let folder = self.dir.join("workspaces").join(name);
        fs::create_dir_all(&folder).map_err(io_error(&folder))?;
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
        writer.append(&change.encode()?)?;
        all.insert(
            name.to_string(),
            Arc::new(
                WorkspaceHandle::new(Workspace::new(name, seed), writer, folder, None, vec![path])
                    .with_max_filter_nodes(self.config.max_filter_nodes),
            ),
        );
        Ok(true)
    }

    /// Creates workspace `name` from a snapshot file (a backup, or a
    /// generated workload): the file is checked whole (`verify`), copied in
    /// as the first generation with an empty log after it, and served from
    /// at once. Refused if the workspace exists. Meant for an engine not
    /// serving requests (`segq snapshot restore`): it holds the table of
    /// workspaces while it copies and checks the file.
    pub fn restore_workspace(&self, name: &str, file: &Path) -> Result<Arc<WorkspaceHandle>> {
        if !valid_workspace_name(name) {
            return Err(Error::InvalidWorkspaceName { name: name.into() });
        }
        let mut all = self.workspaces.write().unwrap_or_else(|p| p.into_inner());
        let folder = self.dir.join("workspaces").join(name);
        if all.contains_key(name) {
            return Err(Error::InvalidArgument(format!(
                "workspace {name} exists already"
            )));
        }
        let seq = {
            let snap = Snapshot::open(file)?;
            snap.verify()?;
            // A backup restored beside its original must not take over the
            // original's imports.
            let index = self.keys.read().unwrap_or_else(|p| p.into_inner());
            for k in &snap.meta()?.keys {
                if let Some(other) = index.get(&k.digest) {
                    return Err(Error::InvalidArgument(format!(
                        "data import key {} of the snapshot is a key of workspace {}; \
                         invalidate it there first",
                        k.id, other.workspace
                    )));
                }
            }
            snap.meta()?.seq
        };
        fs::create_dir_all(&folder).map_err(io_error(&folder))?;
        // Left by a creation never acknowledged, or a restore that stopped.
        clear_unused_folder(&folder)?;
        let snap_name = compact::snapshot_name(1);
        let tmp = folder.join(format!("{snap_name}.tmp"));
        fs::copy(file, &tmp).map_err(io_error(&tmp))?;
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
        let loaded = load_workspace(name, &folder).and_then(|h| {
            h.ok_or_else(|| {
                Error::Internal(format!("workspace {name} did not load after its restore"))
            })
        });
        let (handle, _) = match loaded {
            Ok(x) => x,
            Err(e) => {
                // Undo, so that neither a start-up nor a later creation
                // meets a half-restored folder.
                let _ = fs::remove_file(folder.join(compact::MANIFEST));
                let _ = clear_unused_folder(&folder);
                return Err(e);
            }
        };
        let handle = Arc::new(handle.with_max_filter_nodes(self.config.max_filter_nodes));
        {
            let mut key_index = self.keys.write().unwrap_or_else(|p| p.into_inner());
            let mut last_used = self.last_used.write().unwrap_or_else(|p| p.into_inner());
            index_keys(&handle, &mut key_index, &mut last_used);
        }
        all.insert(name.to_string(), handle.clone());
        Ok(handle)
    }

    /// The workspaces, by name.
    pub fn workspace_names(&self) -> Vec<String> {
        let all = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
        all.keys().cloned().collect()
    }

    pub fn workspace(&self, name: &str) -> Option<Arc<WorkspaceHandle>> {
        let all = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
        all.get(name).cloned()
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
        let expected = self.config.partner_api_keys.get(&partner);
        if !expected.is_some_and(|k| keys::same_secret(k, &creds.partner_api_key)) {
            return Err(ProtocolError::Unauthorized(texts::BAD_PARTNER_KEY));
        }
        let digest = keys::digest(&creds.client_secret);
        let index = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = index.get(&digest) else {
            return Err(ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET));
        };
        let Some(handle) = self.workspace(&entry.workspace) else {
            return Err(ProtocolError::Unauthorized(texts::BAD_CLIENT_SECRET));
        };
        let enabled = entry.partner == partner && handle.read().enabled_partners.contains(&partner);
        if !enabled {
            return Err(ProtocolError::Unauthorized(texts::PARTNER_NOT_ENABLED));
        }
        entry
            .last_used_ms
            .store(to_ms(Utc::now()), Ordering::Relaxed);
        Ok((handle, entry.key_id.clone()))
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
        let used = Arc::new(AtomicI64::new(0));
        self.last_used
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), used.clone());
        index.insert(
            digest,
            KeyEntry {
                workspace: workspace.to_string(),
                key_id: id.clone(),
                partner,
                last_used_ms: used,
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
    pub fn list_keys(&self, workspace: &str, partner: Option<Partner>) -> Result<Vec<KeyInfo>> {
        let handle = self.existing(workspace)?;
        let last_used = self.last_used.read().unwrap_or_else(|p| p.into_inner());
        let ws = handle.read();
        let mut out: Vec<KeyInfo> = ws
            .keys
            .values()
            .filter(|k| partner.is_none_or(|p| p == k.partner))
            .map(|k| {
                let used = last_used
                    .get(&k.id)
                    .map(|u| u.load(Ordering::Relaxed))
                    .filter(|&ms| ms > 0)
                    .map(from_ms);
                KeyInfo {
                    id: k.id.clone(),
                    partner: k.partner,
                    prefix: k.prefix.clone(),
                    created_at: k.created_at,
                    last_used: used,
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

    /// Folds a workspace's log into a new snapshot generation now.
    pub fn compact(&self, workspace: &str) -> Result<Compacted> {
        self.existing(workspace)?.compact()
    }

    /// Compacts every workspace whose log passed a threshold of the
    /// configuration; returns what was done.
    pub fn compact_due(&self) -> Vec<(String, Result<Compacted>)> {
        let all: Vec<Arc<WorkspaceHandle>> = {
            let map = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
            map.values().cloned().collect()
        };
        all.into_iter()
            .filter(|h| h.compaction_due(&self.config))
            .map(|h| (h.name().to_string(), h.compact()))
            .collect()
    }

    /// Starts a thread that compacts due workspaces every `every`, until
    /// the engine is dropped.
    pub fn start_compactor(
        self: &Arc<Self>,
        every: std::time::Duration,
    ) -> std::thread::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        std::thread::spawn(move || loop {
            std::thread::sleep(every);
            let Some(engine) = weak.upgrade() else {
                return;
            };
            for (name, r) in engine.compact_due() {
                match r {
                    Ok(c) => eprintln!(
                        "segq: compacted {name}: generation {} up to seq {} ({} bytes, {} ms)",
                        c.generation, c.seq, c.snapshot_bytes, c.took_ms
                    ),
                    Err(e) => eprintln!("segq: compacting {name}: {e}"),
                }
            }
        })
    }

    /// Waits until everything submitted to every log is durable
    /// (shutdown). Tries every workspace, and reports each one that failed.
    pub fn sync_all(&self) -> Result<(), SyncFailed> {
        let all: Vec<Arc<WorkspaceHandle>> = {
            let map = self.workspaces.read().unwrap_or_else(|p| p.into_inner());
            map.values().cloned().collect()
        };
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

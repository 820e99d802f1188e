//! A read replica: a data directory kept a copy of an object store that a
//! primary ships to (`segq serve --replica-of URL`).
//!
//! [`Engine::open_replica`] copies the bucket whole ([`store::mirror`]);
//! then a [`Follower`] looks at the bucket every `replica_poll_ms`
//! ([`Follower::poll_once`]):
//!
//! ```text
//! server/LEASE              who the primary is (named when writes are refused)
//! server/STATE              changed: segq.json and the admin digest rewritten,
//!                           the admin token taken at once
//! workspaces/NAME/MANIFEST  the same as last seen:  caught up
//!                           the same snapshot, the same epoch, each log
//!                           the last seen one's pieces and more:
//!                             the new pieces appended to the local logs
//!                             (size and SHA-256 checked, fsynced), their
//!                             records read from where the last ones ended
//!                             and applied under the workspace's write lock
//!                             (WorkspaceHandle::follow, as log replay does)
//!                           a new snapshot generation whose first log the
//!                           one followed names too (the primary compacted
//!                           while it shipped): the records after it
//!                           applied from those logs as above, while the
//!                           new snapshot downloads on a thread of its own
//!                           (`replica-prefetch/`); once it is here, the
//!                           workspace is loaded from it and swapped in
//!                           anything else (a new snapshot generation, a
//!                           new epoch, pieces merged, a new workspace):
//!                             downloaded whole and checked, swapped in for
//!                             the workspace served, which serves until then
//!                           gone: the workspace is no longer served
//! ```
//!
//! A replica's answers are the primary's at the same generation (the seq
//! of the last record applied, which every answer carries). Its lag is the
//! time since it last held everything the bucket held: at each poll that
//! ends with a workspace applied up to its manifest, the poll's start time
//! is noted; `/metrics`, `/readyz` and the `X-Replica-Lag-Ms` header give
//! now less the oldest such time. What the primary acknowledged and has
//! not shipped yet (at most `ship_interval_ms`) is not in the bucket, so
//! not counted: the end-to-end delay is the two together.

use std::collections::BTreeMap;
use std::fs;
use std::io::Seek;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::store::{self, Bucket, LeaseRecord, StoreManifest};
use super::{Engine, Mode};
use crate::error::{Error, Result};
use crate::log::{FsFile, LogWriter};

/// In a replica's data directory: the store it is a copy of. Its absence
/// in a directory holding workspaces says the directory is not a
/// replica's, and it is never overwritten.
pub const MARKER_FILE: &str = "replica-of";

/// Where a workspace downloaded whole waits to be swapped in.
const STAGING_DIR: &str = "replica-staging";
/// The folder of the data directory where new snapshots download while
/// the logs are followed (see [`Follower::poll_once`]).
const PREFETCH_DIR: &str = "replica-prefetch";

/// A primary's new snapshot downloading on a thread of its own.
struct Prefetch {
    object: store::ObjectRef,
    path: std::path::PathBuf,
    /// Set when the download ended: the bytes fetched, or why not.
    result: Arc<Mutex<Option<Result<u64>>>>,
}

/// Where a replica stands with one workspace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Following {
    /// The seq of the last record applied: the generation answered.
    pub seq: u64,
    /// The last seq the bucket's manifest names.
    pub bucket_seq: u64,
    /// The lease epoch of that manifest.
    pub epoch: u64,
    /// When the replica last held everything the bucket held of the
    /// workspace (ms since the epoch: the start of that poll).
    pub caught_up_ms: i64,
}

/// A replica's counters and lag, shown by `/metrics` and `/readyz`.
#[derive(Debug)]
pub struct ReplicaStatus {
    url: String,
    max_lag_ms: u64,
    /// Looks at the bucket.
    pub polls: AtomicU64,
    /// Looks that failed (the bucket unreachable, an object that does not
    /// check out); the replica serves what it has.
    pub poll_errors: AtomicU64,
    /// Bytes downloaded since the start (the first copy included).
    pub bytes: AtomicU64,
    /// Records applied from the primary's logs.
    pub records: AtomicU64,
    /// Workspaces downloaded whole and swapped in after the first copy.
    pub reloads: AtomicU64,
    started_ms: i64,
    last_error: Mutex<Option<String>>,
    primary: Mutex<Option<String>>,
    following: Mutex<BTreeMap<String, Following>>,
}

impl ReplicaStatus {
    pub(crate) fn new(url: String, max_lag_ms: u64) -> ReplicaStatus {
        ReplicaStatus {
            url,
            max_lag_ms,
            polls: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            started_ms: now_ms(),
            last_error: Mutex::new(None),
            primary: Mutex::new(None),
            following: Mutex::new(BTreeMap::new()),
        }
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The primary as the store's lease last named it.
    pub fn primary(&self) -> Option<String> {
        self.primary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why a write is refused here: names the store and the primary.
    pub fn refusal(&self, primary: Option<&str>) -> String {
        let primary = primary.map(str::to_string).or_else(|| self.primary());
        match primary {
            Some(p) => format!(
                "this is a read replica of {}; send writes to its primary, {p}",
                self.url
            ),
            None => format!(
                "this is a read replica of {}; send writes to the node serving it with --store",
                self.url
            ),
        }
    }

    /// By workspace: where the replica stands.
    pub fn following(&self) -> BTreeMap<String, Following> {
        self.following
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last poll's error, while the polls fail.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Milliseconds since the replica last held everything the bucket
    /// held (the workspace furthest behind; with no workspace, since the
    /// last poll that went through, or the start).
    pub fn lag_ms(&self, now_ms: i64) -> u64 {
        let f = self.following.lock().unwrap_or_else(|p| p.into_inner());
        let since = f
            .values()
            .map(|w| w.caught_up_ms)
            .min()
            .unwrap_or(self.started_ms);
        u64::try_from(now_ms.saturating_sub(since)).unwrap_or(0)
    }

    /// Why the replica is degraded: its lag past `replica_max_lag_ms`,
    /// or its polls failing.
    pub fn degraded(&self, now_ms: i64) -> Option<String> {
        let lag = self.lag_ms(now_ms);
        let err = self.last_error();
        if lag <= self.max_lag_ms && err.is_none() {
            return None;
        }
        let mut m = format!(
            "{lag} ms behind {} (replica_max_lag_ms {})",
            self.url, self.max_lag_ms
        );
        if let Some(e) = err {
            m.push_str(&format!("; the last look failed: {e}"));
        }
        Some(m)
    }

    fn set(&self, name: &str, f: Following) {
        self.following
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), f);
    }

    fn forget(&self, name: &str) {
        self.following
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What one [`Follower::poll_once`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Records applied, all workspaces together.
    pub records: u64,
    /// Workspaces downloaded whole and swapped in (new ones included).
    pub reloaded: Vec<String>,
    /// Workspaces no longer served (gone from the bucket).
    pub removed: Vec<String>,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// Keeps a replica's engine up with the bucket (see the module's text).
pub struct Follower {
    engine: Arc<Engine>,
    bucket: Arc<dyn Bucket>,
    status: Arc<ReplicaStatus>,
    /// By workspace: the manifest its served state is of (None: to be
    /// downloaded whole at the next poll).
    seen: Mutex<BTreeMap<String, Option<StoreManifest>>>,
    /// The server state last taken (its bytes' digest).
    server: Mutex<Option<String>>,
    /// By workspace: a new snapshot generation downloading beside.
    prefetch: Mutex<BTreeMap<String, Prefetch>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("url", &self.status.url)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// A follower of `bucket` for `engine`, opened by
    /// [`Engine::open_replica`] from the same bucket, which returned
    /// `manifests` (what it copied).
    pub fn new(
        engine: Arc<Engine>,
        bucket: Arc<dyn Bucket>,
        manifests: Vec<StoreManifest>,
    ) -> Result<Arc<Follower>> {
        let status = engine
            .replica_status()
            .cloned()
            .ok_or_else(|| Error::Internal("the engine is not a read replica's".into()))?;
        // Snapshots a previous run was downloading: started afresh.
        let prefetch = engine.dir().join(PREFETCH_DIR);
        if prefetch.exists() {
            fs::remove_dir_all(&prefetch).map_err(Error::io_at(&prefetch))?;
        }
        let started = now_ms();
        let mut seen = BTreeMap::new();
        for m in manifests {
            let seq = engine
                .workspace(&m.workspace)
                .and_then(|h| h.followed_seq())
                .unwrap_or(0);
            status.set(
                &m.workspace,
                Following {
                    seq,
                    bucket_seq: m.end_seq,
                    epoch: m.epoch,
                    caught_up_ms: started,
                },
            );
            seen.insert(m.workspace.clone(), Some(m));
        }
        Ok(Arc::new(Follower {
            engine,
            bucket,
            status,
            seen: Mutex::new(seen),
            server: Mutex::new(None),
            prefetch: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The status this follower keeps.
    pub fn status(&self) -> &Arc<ReplicaStatus> {
        &self.status
    }

    /// Looks at the bucket once and applies what is new (see the
    /// module's text). A workspace that fails keeps serving what it had
    /// and is tried again at the next poll; the first error is returned
    /// once every workspace was tried.
    pub fn poll_once(&self) -> Result<Polled> {
        let started = now_ms();
        self.status.polls.fetch_add(1, Ordering::Relaxed);
        let r = self.poll(started);
        match &r {
            Ok(p) => {
                self.status.bytes.fetch_add(p.bytes, Ordering::Relaxed);
                self.status.records.fetch_add(p.records, Ordering::Relaxed);
                *self
                    .status
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) => {
                self.status.poll_errors.fetch_add(1, Ordering::Relaxed);
                *self
                    .status
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
        r
    }

    fn poll(&self, started: i64) -> Result<Polled> {
        let mut out = Polled::default();
        self.look_at_lease()?;
        self.look_at_server()?;
        let manifests = store::bucket_manifests(&*self.bucket)?;
        let mut first_err = None;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let names: Vec<String> = manifests.iter().map(|m| m.workspace.clone()).collect();
        for m in manifests {
            let name = m.workspace.clone();
            let prev = seen.get(&name).cloned().flatten();
            let served = self.engine.workspace(&name).is_some();
            let step = match prev.as_ref() {
                Some(p) if served && same(p, &m) => Ok(m.clone()),
                Some(p) if served => match appended(p, &m) {
                    Some(new) => self.append(&m, p, new, &mut out).map(|()| m.clone()),
                    None => self.rebase(p, &m, &mut out),
                },
                _ => self.reload(&m, None, &mut out).map(|()| m.clone()),
            };
            match step {
                Ok(followed) => {
                    let seq = self
                        .engine
                        .workspace(&name)
                        .and_then(|h| h.followed_seq())
                        .unwrap_or(0);
                    self.status.set(
                        &name,
                        Following {
                            seq,
                            bucket_seq: m.end_seq,
                            epoch: m.epoch,
                            caught_up_ms: started,
                        },
                    );
                    seen.insert(name, Some(followed));
                }
                Err(e) => {
                    tracing::warn!(workspace = %name, "following {}: {e}", self.status.url);
                    // Nothing applied (a download that failed is cut back):
                    // the next poll tries the same again. Else the local
                    // files or the state moved part way: downloaded whole.
                    let untouched = prev.filter(|p| {
                        self.engine.workspace(&name).is_some_and(|h| {
                            h.followed_seq() == Some(p.end_seq) && h.write_trouble().is_none()
                        })
                    });
                    seen.insert(name.clone(), untouched);
                    let mut f = self
                        .status
                        .following
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if let Some(w) = f.get_mut(&name) {
                        w.bucket_seq = m.end_seq;
                    }
                    first_err.get_or_insert(Error::Store {
                        location: format!("{}/{}", self.status.url, store::manifest_key(&name)),
                        reason: e.to_string(),
                    });
                }
            }
        }
        let gone: Vec<String> = seen
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in gone {
            seen.remove(&name);
            self.engine.replica_remove(&name);
            self.status.forget(&name);
            let dir = self.engine.dir().join("workspaces").join(&name);
            if dir.exists() {
                if let Err(e) = fs::remove_dir_all(&dir) {
                    tracing::warn!(workspace = %name, "removing {}: {e}", dir.display());
                }
            }
            out.removed.push(name);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Names the lease's holder in the refusal of writes.
    fn look_at_lease(&self) -> Result<()> {
        let Some(bytes) = self.bucket.get(store::LEASE)? else {
            return Ok(());
        };
        let at = format!("{}/{}", self.status.url, store::LEASE);
        let l = LeaseRecord::from_bytes(&at, &bytes)?;
        let who = format!(
            "node {} (lease epoch {}, expiring {})",
            l.node,
            l.epoch,
            l.expires_at.to_rfc3339()
        );
        let mut p = self
            .status
            .primary
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if p.as_deref() != Some(who.as_str()) {
            self.engine
                .fence()
                .refuse_with(self.status.refusal(Some(&who)));
            *p = Some(who);
        }
        Ok(())
    }

    /// Takes a changed server state: the files, and the admin token.
    /// Limits and partner keys take effect when the replica restarts.
    fn look_at_server(&self) -> Result<()> {
        let Some(state) = store::bucket_server_state(&*self.bucket)? else {
            return Ok(());
        };
        let digest = format!("{}\n{}", state.config, state.admin_token_sha256);
        let mut last = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(digest.as_str()) {
            return Ok(());
        }
        let dir = self.engine.dir();
        super::write_atomically(&dir.join("segq.json"), state.config.as_bytes())?;
        super::write_atomically(
            &dir.join("admin-token.sha256"),
            state.admin_token_sha256.as_bytes(),
        )?;
        if let Some(d) = super::keys::unhex32(&state.admin_token_sha256) {
            self.engine.set_admin_digest(d);
        }
        *last = Some(digest);
        Ok(())
    }

    /// Appends the new pieces to the local logs (or, for a log whose
    /// pieces the primary merged, replaces it by the merged one, checked
    /// to hold the local bytes) and applies their records.
    fn append(
        &self,
        m: &StoreManifest,
        prev: &StoreManifest,
        new: Vec<Grow>,
        out: &mut Polled,
    ) -> Result<()> {
        let handle =
            self.engine
                .workspace(&m.workspace)
                .ok_or_else(|| Error::UnknownWorkspace {
                    name: m.workspace.clone(),
                })?;
        let dir = self.engine.dir().join("workspaces").join(&m.workspace);
        for Grow {
            log: i,
            from,
            merged,
        } in new
        {
            let log = &m.logs[i];
            let path = dir.join(&log.name);
            let had = prev.logs.get(i).map_or(0, |l| l.len());
            if merged {
                self.replace_log(&path, log, had, &mut out.bytes)?;
            }
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&path)
                .map_err(Error::io_at(&path))?;
            let len = f
                .seek(std::io::SeekFrom::End(0))
                .map_err(Error::io_at(&path))?;
            let expected = if merged { log.len() } else { had };
            if len != expected {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    reason: format!("{len} bytes, {expected} expected"),
                });
            }
            let pieces = log.pieces.get(from..).unwrap_or_default();
            let fetched = store::fetch_pieces(&*self.bucket, pieces, &mut f, &path, &mut out.bytes)
                .and_then(|()| f.sync_data().map_err(Error::io_at(&path)));
            if let Err(e) = fetched {
                // Back to what was applied: the next poll starts there.
                let _ = f.set_len(had);
                let _ = f.sync_data();
                return Err(e);
            }
            drop(f);
            let mut file = FsFile::open(&path).map_err(Error::io_at(&path))?;
            let next = handle.followed_seq().unwrap_or(0) + 1;
            let replay = if had == 0 {
                LogWriter::scan(&mut file)?
            } else {
                LogWriter::scan_from(&mut file, had, next)?
            };
            let r = &replay.recovery;
            if !r.is_clean() || r.valid_len != log.len() {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    reason: format!("does not read back whole: {r}"),
                });
            }
            if had == 0 && r.first_seq != next {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    reason: format!(
                        "starts at seq {}, the records applied end at {}",
                        r.first_seq,
                        next - 1
                    ),
                });
            }
            let shown = path.display().to_string();
            handle.follow(&shown, &replay.records)?;
            out.records += replay.records.len() as u64;
        }
        let seq = handle.followed_seq().unwrap_or(0);
        if seq != m.end_seq {
            return Err(Error::Store {
                location: format!("{}/{}", self.status.url, store::manifest_key(&m.workspace)),
                reason: format!("names seq {}, its logs end at {seq}", m.end_seq),
            });
        }
        // Keys created or revoked by the records: a handful a workspace.
        self.engine.replica_reindex(&m.workspace);
        Ok(())
    }

    /// Replaces the local log at `path` (its first `had` bytes applied) by
    /// the bucket's `log`, whose pieces the primary merged: downloaded
    /// beside it, checked (sizes, SHA-256, its first `had` bytes the local
    /// ones), then renamed over it. Only the bytes past `had` are new.
    fn replace_log(
        &self,
        path: &std::path::Path,
        log: &store::StoredLog,
        had: u64,
        bytes: &mut u64,
    ) -> Result<()> {
        let tmp = path.with_extension("replica-tmp");
        let r = (|| {
            let mut f = fs::File::create(&tmp).map_err(Error::io_at(&tmp))?;
            store::fetch_pieces(&*self.bucket, &log.pieces, &mut f, &tmp, bytes)?;
            f.sync_data().map_err(Error::io_at(&tmp))?;
            let mut local = fs::File::open(path).map_err(Error::io_at(path))?;
            let mut fresh = fs::File::open(&tmp).map_err(Error::io_at(&tmp))?;
            let shown = path.display().to_string();
            if store::sha256_file(&mut local, 0, had, &shown)?
                != store::sha256_file(&mut fresh, 0, had, &shown)?
            {
                return Err(Error::Store {
                    location: format!("{}/{}", self.status.url, log.name),
                    reason: format!("its first {had} bytes differ from the log followed"),
                });
            }
            fs::rename(&tmp, path).map_err(Error::io_at(path))
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    /// Follows `m`, which does not only add to `prev`, the manifest
    /// followed: downloaded whole, unless it is a new snapshot generation
    /// whose logs continue those of `prev` (the primary compacted, and
    /// `prev` named its fresh log): then the records after `prev` are
    /// applied from those logs at once, as if `m` named `prev`'s snapshot
    /// (returned: the manifest followed now), while the new snapshot
    /// downloads on a thread of its own; once it is here, the workspace is
    /// loaded from it and the logs and swapped in.
    fn rebase(
        &self,
        prev: &StoreManifest,
        m: &StoreManifest,
        out: &mut Polled,
    ) -> Result<StoreManifest> {
        let Some(bridge) = bridged(prev, m) else {
            return self.reload(m, None, out).map(|()| m.clone());
        };
        let Some(new) = appended(prev, &bridge) else {
            return self.reload(m, None, out).map(|()| m.clone());
        };
        if let Some(snapshot) = self.prefetched(m, out)? {
            self.reload(m, Some(&snapshot), out)?;
            return Ok(m.clone());
        }
        self.append(&bridge, prev, new, out)?;
        Ok(bridge)
    }

    /// The path of `m`'s snapshot once downloaded beside and checked;
    /// `None` while it downloads (started here if it was not). A download
    /// of an older snapshot is let finish first; a failed one is started
    /// again at the next poll.
    fn prefetched(
        &self,
        m: &StoreManifest,
        out: &mut Polled,
    ) -> Result<Option<std::path::PathBuf>> {
        let Some(object) = m.snapshot.clone() else {
            return Ok(None);
        };
        let mut all = self.prefetch.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = all.get(&m.workspace) {
            let Some(r) = p.result.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                return Ok(None);
            };
            let p = all.remove(&m.workspace).expect("looked up");
            match r {
                Ok(bytes) if p.object == object => {
                    out.bytes += bytes;
                    return Ok(Some(p.path));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(workspace = %m.workspace, "downloading {}: {e}", object.key)
                }
            }
            let _ = fs::remove_file(&p.path);
        }
        let dir = self.engine.dir().join(PREFETCH_DIR);
        fs::create_dir_all(&dir).map_err(Error::io_at(&dir))?;
        let path = dir.join(format!("{}.{}", m.workspace, &object.sha256[..16]));
        let mut f = fs::File::create(&path).map_err(Error::io_at(&path))?;
        let result = Arc::new(Mutex::new(None));
        let (slot, bucket, o) = (result.clone(), self.bucket.clone(), object.clone());
        std::thread::Builder::new()
            .name("segq-replica-snapshot".into())
            .spawn(move || {
                let mut bytes = 0;
                let r = store::fetch(&*bucket, &o, &mut f, &mut bytes)
                    .and_then(|()| f.sync_data().map_err(Error::io_at(o.key.as_str())))
                    .map(|()| bytes);
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            })
            .map_err(|e| Error::Internal(format!("starting a download: {e}")))?;
        all.insert(
            m.workspace.clone(),
            Prefetch {
                object,
                path,
                result,
            },
        );
        Ok(None)
    }

    /// Downloads the workspace whole (but its snapshot, when `snapshot`
    /// holds it already, checked), checks it, and swaps it in.
    fn reload(
        &self,
        m: &StoreManifest,
        snapshot: Option<&std::path::Path>,
        out: &mut Polled,
    ) -> Result<()> {
        let data = self.engine.dir();
        let staging = data.join(STAGING_DIR);
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(Error::io_at(&staging))?;
        }
        let fresh = staging.join(&m.workspace);
        let r = store::download(&*self.bucket, m, &fresh, snapshot, &mut out.bytes);
        if let Err(e) = r {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        let ws = data.join("workspaces");
        let target = ws.join(&m.workspace);
        let old = staging.join(format!("{}.replaced", m.workspace));
        // The workspace served keeps its files open and mapped: it serves
        // until the new one is in the table.
        if target.exists() {
            fs::rename(&target, &old).map_err(Error::io_at(&target))?;
        }
        fs::rename(&fresh, &target).map_err(Error::io_at(&target))?;
        super::sync_dir(&ws)?;
        let loaded = super::load_workspace(&m.workspace, &target, Mode::ReadWrite)?;
        let Some((handle, _)) = loaded else {
            return Err(Error::Corrupt {
                path: target,
                reason: "holds no workspace after its download".into(),
            });
        };
        self.engine.replica_install(&m.workspace, handle);
        let _ = fs::remove_dir_all(&staging);
        self.status.reloads.fetch_add(1, Ordering::Relaxed);
        out.reloaded.push(m.workspace.clone());
        Ok(())
    }

    /// Polls every `every` on a thread of its own until stopped.
    pub fn start(self: &Arc<Self>, every: Duration) -> FollowerThread {
        let (tx, rx) = mpsc::channel::<()>();
        let me = self.clone();
        let thread = std::thread::Builder::new()
            .name("segq-replica".into())
            .spawn(move || loop {
                match rx.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(e) = me.poll_once() {
                            tracing::warn!("following {}: {e}", me.status.url);
                        }
                    }
                    _ => return,
                }
            })
            .expect("spawning the replica's thread");
        FollowerThread {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

/// Whether the bucket's manifest is the one the state is of.
fn same(a: &StoreManifest, b: &StoreManifest) -> bool {
    a.serial == b.serial && a.epoch == b.epoch && a.end_seq == b.end_seq && a.logs == b.logs
}

/// How one log of a manifest grew since the one followed.
struct Grow {
    /// Its index in the manifest.
    log: usize,
    /// Its first piece not appended locally yet.
    from: usize,
    /// Its pieces were merged (the log uploaded whole again): the local
    /// log is replaced, then the pieces from `from` (none) appended.
    merged: bool,
}

/// `m` as the continuation of `prev`'s chain when `m` is a later snapshot
/// generation whose first log `prev` names too (after the logs it sealed):
/// `prev`'s snapshot and logs up to that one, then `m`'s logs.
fn bridged(prev: &StoreManifest, m: &StoreManifest) -> Option<StoreManifest> {
    let later = match (&prev.manifest, &m.manifest) {
        (Some(a), Some(b)) => b.generation > a.generation && b.seq >= a.seq,
        (None, Some(_)) => true,
        _ => false,
    };
    if !later || prev.epoch != m.epoch || prev.end_seq > m.end_seq {
        return None;
    }
    let first = &m.logs.first()?.name;
    let k = prev.logs.iter().position(|l| &l.name == first)?;
    let mut logs = prev.logs[..k].to_vec();
    logs.extend(m.logs.iter().cloned());
    Some(StoreManifest {
        manifest: prev.manifest.clone(),
        snapshot: prev.snapshot.clone(),
        logs,
        ..m.clone()
    })
}

/// When `m` only adds to `prev` (the same snapshot, the same epoch, each
/// log of `prev` at least as long in `m`, maybe new logs after them): the
/// logs of `m` that grew. `None`: `m` must be downloaded whole.
fn appended(prev: &StoreManifest, m: &StoreManifest) -> Option<Vec<Grow>> {
    if prev.epoch != m.epoch
        || prev.manifest != m.manifest
        || prev.snapshot != m.snapshot
        || m.logs.len() < prev.logs.len()
        || m.end_seq < prev.end_seq
    {
        return None;
    }
    let mut new = Vec::new();
    for (i, log) in m.logs.iter().enumerate() {
        let grow = match prev.logs.get(i) {
            Some(p) if p.name != log.name || log.len() < p.len() => return None,
            Some(p) if log.pieces.starts_with(&p.pieces) => Grow {
                log: i,
                from: p.pieces.len(),
                merged: false,
            },
            // Merged, no byte more: the local log holds them all.
            Some(p) if log.len() == p.len() => continue,
            Some(_) => Grow {
                log: i,
                from: log.pieces.len(),
                merged: true,
            },
            None => Grow {
                log: i,
                from: 0,
                merged: false,
            },
        };
        if grow.merged || log.pieces.len() > grow.from {
            new.push(grow);
        }
    }
    Some(new)
}

/// A running [`Follower::start`]; stops it when dropped.
pub struct FollowerThread {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FollowerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowerThread").finish_non_exhaustive()
    }
}

impl FollowerThread {
    /// Stops polling (a poll under way finishes first).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FollowerThread {
    fn drop(&mut self) {
        self.halt();
    }
}

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
//!                           new generation comes in beside, each step on
//!                           a thread of its own: the snapshot downloads
//!                           (`replica-prefetch/`), then a workspace loads
//!                           from it and copies of the local logs and
//!                           catches up with the bucket; a poll applies
//!                           the few records since to it and swaps it in
//!                           (no log downloaded again, no poll waiting on
//!                           a download or a load)
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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::job::Job;
use super::store::{self, Bucket, LeaseRecord, StoreManifest};
use super::{compact, Engine, Mode, WorkspaceHandle};
use crate::error::{Error, Result};
use crate::log::{FsFile, LogWriter};

/// In a replica's data directory: the store it is a copy of. Its absence
/// in a directory holding workspaces says the directory is not a
/// replica's, and it is never overwritten.
pub const MARKER_FILE: &str = "replica-of";

/// A workspace loaded beside the one served catches up with the bucket
/// on its own thread in at most this many rounds, and stops once a round
/// applies at most [`CAUGHT_UP_RECORDS`].
const CATCH_UP_ROUNDS: usize = 16;
const CAUGHT_UP_RECORDS: u64 = 50;

/// Where a workspace downloaded whole waits to be swapped in.
const STAGING_DIR: &str = "replica-staging";
/// Where the folder of a workspace swapped out waits to be removed.
const RETIRED_DIR: &str = "replica-retired";
/// The folder of the data directory where new snapshots download, and
/// workspaces load from them, while the logs are followed (see
/// [`Follower::rebase`]).
const PREFETCH_DIR: &str = "replica-prefetch";

/// Files fetched or built beside the workspace served (a snapshot, a
/// workspace's folder): removed when dropped, unless kept.
struct Staged(Option<PathBuf>);

impl Staged {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// The files stay: they were moved where they belong.
    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

/// A workspace loaded beside the one served, from a primary's new
/// snapshot and the logs the replica followed.
struct Built {
    handle: WorkspaceHandle,
    dir: Staged,
    /// The manifest it holds: the bucket's, or a bridge from it into a
    /// newer generation's logs.
    manifest: StoreManifest,
}

/// A primary's new snapshot generation on its way in, beside the
/// workspace served (see [`Follower::rebase`]).
enum Swap {
    /// The snapshot downloading, checked against the manifest: the file
    /// and the bytes fetched.
    Download {
        object: store::ObjectRef,
        job: Job<(Staged, u64)>,
    },
    /// The workspace loading from it.
    Build { job: Job<Built> },
}

/// The bucket followed, as each thread that reads it holds it.
#[derive(Clone)]
struct Source {
    bucket: Arc<dyn Bucket>,
    url: String,
}

impl Source {
    /// Appends the new pieces to the logs in `handle`'s folder (or, for a
    /// log whose pieces the primary merged, replaces it by the merged one,
    /// checked to hold the local bytes) and applies their records.
    fn append_to(
        &self,
        handle: &WorkspaceHandle,
        m: &StoreManifest,
        prev: &StoreManifest,
        new: Vec<Grow>,
        out: &mut Polled,
    ) -> Result<()> {
        let dir = handle.folder();
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
                location: format!("{}/{}", self.url, store::manifest_key(&m.workspace)),
                reason: format!("names seq {}, its logs end at {seq}", m.end_seq),
            });
        }
        Ok(())
    }

    /// Replaces the local log at `path` (its first `had` bytes applied) by
    /// the bucket's `log`, whose pieces the primary merged: downloaded
    /// beside it, checked (sizes, SHA-256, its first `had` bytes the local
    /// ones), then renamed over it. Only the bytes past `had` are new.
    fn replace_log(
        &self,
        path: &Path,
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
                    location: format!("{}/{}", self.url, log.name),
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
    /// New snapshot generations taken in without a whole download: the
    /// snapshot fetched and the workspace loaded beside, while the logs
    /// were followed.
    pub swaps: AtomicU64,
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
            swaps: AtomicU64::new(0),
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
    /// By workspace: a new snapshot generation on its way in.
    swaps: Mutex<BTreeMap<String, Swap>>,
    /// Numbers the folders workspaces are built in.
    builds: AtomicU64,
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
        // Snapshots a previous run was bringing in: started afresh; and
        // what it had swapped out.
        for dir in [PREFETCH_DIR, RETIRED_DIR] {
            let dir = engine.dir().join(dir);
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(Error::io_at(&dir))?;
            }
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
            swaps: Mutex::new(BTreeMap::new()),
            builds: AtomicU64::new(0),
        }))
    }

    fn source(&self) -> Source {
        Source {
            bucket: self.bucket.clone(),
            url: self.status.url.clone(),
        }
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
        let t = std::time::Instant::now();
        let r = self.poll_inner(started);
        let ms = t.elapsed().as_millis() as u64;
        if ms >= 500 {
            tracing::info!(ms, "a look at {} took long", self.status.url);
        }
        r
    }

    fn poll_inner(&self, started: i64) -> Result<Polled> {
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
                Some(p) if served => match self.built(&name) {
                    Some(b) => match self.swap(b, &m, &mut out) {
                        Ok(Some(followed)) => Ok(followed),
                        Ok(None) => self.follow(p, &m, &mut out),
                        Err(e) => Err(e),
                    },
                    None => self.follow(p, &m, &mut out),
                },
                _ => self.reload(&m, &mut out).map(|()| m.clone()),
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
            self.swaps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
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

    /// Follows `m` from `prev`, the manifest followed, in the workspace
    /// served: its records applied when it only adds to `prev`, else
    /// [`Self::rebase`]. Returns the manifest followed now.
    fn follow(
        &self,
        prev: &StoreManifest,
        m: &StoreManifest,
        out: &mut Polled,
    ) -> Result<StoreManifest> {
        if same(prev, m) {
            return Ok(m.clone());
        }
        let Some(new) = appended(prev, m) else {
            return self.rebase(prev, m, out);
        };
        self.append(m, prev, new, out)?;
        Ok(m.clone())
    }

    /// [`Source::append_to`] the workspace served, whose keys are then
    /// indexed again.
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
        self.source().append_to(&handle, m, prev, new, out)?;
        // Keys created or revoked by the records: a handful a workspace.
        self.engine.replica_reindex(&m.workspace);
        Ok(())
    }

    /// Follows `m`, which does not only add to `prev`, the manifest
    /// followed: downloaded whole, unless it is a new snapshot generation
    /// whose logs continue those of `prev` (the primary compacted, and
    /// `prev` named its fresh log). Then the records after `prev` are
    /// applied from those logs at once, as if `m` named `prev`'s snapshot
    /// (returned: the manifest followed now), and the new generation is
    /// brought in beside ([`Self::advance`]).
    fn rebase(
        &self,
        prev: &StoreManifest,
        m: &StoreManifest,
        out: &mut Polled,
    ) -> Result<StoreManifest> {
        // `m` does not only add to `prev`: onward, if at all, by a bridge.
        let Some((bridge, new)) = onward(prev, m) else {
            return self.reload(m, out).map(|()| m.clone());
        };
        self.append(&bridge, prev, new, out)?;
        self.advance(m, out);
        Ok(bridge)
    }

    /// Brings `m`'s snapshot generation in beside the workspace served,
    /// one step a poll, each on a thread of its own: the snapshot is
    /// downloaded into `replica-prefetch/` (checked against `m`); then a
    /// workspace is loaded from it and copies of the local logs as `m`
    /// names them (`m`'s logs are those the bridge followed), and catches
    /// up with the bucket; a later poll swaps it in ([`Self::swap`]).
    /// A download of an older snapshot is let finish first; a step that
    /// failed is started again at the next poll.
    fn advance(&self, m: &StoreManifest, out: &mut Polled) {
        let Some(object) = m.snapshot.clone() else {
            return;
        };
        let name = &m.workspace;
        let mut swaps = self.swaps.lock().unwrap_or_else(|p| p.into_inner());
        match swaps.remove(name) {
            Some(Swap::Download { object: o, job }) => match job.result(false) {
                Err(job) => {
                    swaps.insert(name.clone(), Swap::Download { object: o, job });
                    return;
                }
                Ok(Ok((file, bytes))) => {
                    out.bytes += bytes;
                    if o == object {
                        match self.build(m, file) {
                            Ok(job) => {
                                swaps.insert(name.clone(), Swap::Build { job });
                            }
                            Err(e) => tracing::warn!(workspace = %name, "loading {}: {e}", o.key),
                        }
                        return;
                    }
                }
                Ok(Err(e)) => tracing::warn!(workspace = %name, "downloading {}: {e}", o.key),
            },
            Some(build) => {
                // Swapped in at the start of a poll, once loaded.
                swaps.insert(name.clone(), build);
                return;
            }
            None => {}
        }
        match self.download(m, object) {
            Ok(swap) => {
                swaps.insert(name.clone(), swap);
            }
            Err(e) => tracing::warn!(workspace = %name, "downloading a snapshot: {e}"),
        }
    }

    /// Starts downloading `object`, `m`'s snapshot.
    fn download(&self, m: &StoreManifest, object: store::ObjectRef) -> Result<Swap> {
        let dir = self.engine.dir().join(PREFETCH_DIR);
        fs::create_dir_all(&dir).map_err(Error::io_at(&dir))?;
        let n = self.builds.fetch_add(1, Ordering::Relaxed);
        // Named by a counter: nothing of the manifest's text goes into it.
        let path = dir.join(format!("{}.snapshot-{n}", m.workspace));
        let mut f = fs::File::create(&path).map_err(Error::io_at(&path))?;
        let file = Staged(Some(path));
        let (bucket, o) = (self.bucket.clone(), object.clone());
        let job = Job::spawn(
            "segq-replica-snapshot",
            move || {
                let mut bytes = 0;
                store::fetch(&*bucket, &o, &mut f, &mut bytes)?;
                f.sync_data().map_err(Error::io_at(file.path()))?;
                Ok((file, bytes))
            },
            || {},
        )?;
        Ok(Swap::Download { object, job })
    }

    /// Starts loading a workspace from `snapshot`, `m`'s, downloaded, and
    /// copies of the local logs `m` names (as long as `m` names them).
    fn build(&self, m: &StoreManifest, snapshot: Staged) -> Result<Job<Built>> {
        let served = self.engine.workspace(&m.workspace).map(|h| h.folder());
        let (Some(served), Some(lm)) = (served, m.manifest.clone()) else {
            return Err(Error::UnknownWorkspace {
                name: m.workspace.clone(),
            });
        };
        // Opened here: a later poll may append to them (past these
        // lengths) or rename a merged log over one.
        let mut logs = Vec::with_capacity(m.logs.len());
        for log in &m.logs {
            let path = served.join(&log.name);
            let f = fs::File::open(&path).map_err(Error::io_at(&path))?;
            logs.push((log.name.clone(), f, log.len()));
        }
        let n = self.builds.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .engine
            .dir()
            .join(PREFETCH_DIR)
            .join(format!("{}.build-{n}", m.workspace));
        let (engine, m) = (self.engine.clone(), m.clone());
        let (source, status) = (self.source(), self.status.clone());
        Job::spawn(
            "segq-replica-build",
            move || {
                fs::create_dir_all(&dir).map_err(Error::io_at(&dir))?;
                let staged = Staged(Some(dir.clone()));
                let path = dir.join(&lm.snapshot);
                fs::rename(snapshot.path(), &path).map_err(Error::io_at(&path))?;
                snapshot.keep();
                for (name, f, len) in logs {
                    let path = dir.join(&name);
                    let mut copy = fs::File::create(&path).map_err(Error::io_at(&path))?;
                    let copied = std::io::copy(&mut std::io::Read::take(f, len), &mut copy)
                        .map_err(Error::io_at(&path))?;
                    if copied != len {
                        return Err(Error::Corrupt {
                            path,
                            reason: format!("{copied} bytes of the log followed, {len} expected"),
                        });
                    }
                    copy.sync_data().map_err(Error::io_at(&path))?;
                }
                compact::write_manifest(&dir, &lm)?;
                super::sync_dir(&dir)?;
                let loaded = super::load_workspace(&m.workspace, &dir, Mode::ReadWrite)?;
                let Some((handle, _)) = loaded else {
                    return Err(Error::Corrupt {
                        path: dir,
                        reason: "holds no workspace".into(),
                    });
                };
                let handle = engine.replica_prepare(handle);
                if handle.followed_seq() != Some(m.end_seq) {
                    return Err(Error::Corrupt {
                        path: dir,
                        reason: format!(
                            "ends at seq {:?}, the manifest at {}",
                            handle.followed_seq(),
                            m.end_seq
                        ),
                    });
                }
                // The records the bucket gained while it loaded: applied
                // here, until a round finds few, so that the poll that
                // swaps it in has little left to apply.
                let mut from = m;
                for _ in 0..CATCH_UP_ROUNDS {
                    let Some(now) = store::bucket_manifest(&*source.bucket, &from.workspace)?
                    else {
                        break;
                    };
                    let Some((followed, new)) = onward(&from, &now) else {
                        break;
                    };
                    let mut done = Polled::default();
                    let r = source.append_to(&handle, &followed, &from, new, &mut done);
                    status.bytes.fetch_add(done.bytes, Ordering::Relaxed);
                    r?;
                    from = followed;
                    if done.records <= CAUGHT_UP_RECORDS {
                        break;
                    }
                }
                Ok(Built {
                    handle,
                    dir: staged,
                    manifest: from,
                })
            },
            || {},
        )
    }

    /// A workspace loaded beside the one served, once it is ([`Self::advance`]).
    fn built(&self, name: &str) -> Option<Built> {
        let mut swaps = self.swaps.lock().unwrap_or_else(|p| p.into_inner());
        match swaps.remove(name)? {
            Swap::Build { job } => match job.result(false) {
                Ok(Ok(built)) => Some(built),
                Ok(Err(e)) => {
                    tracing::warn!(workspace = %name, "loading the new snapshot: {e}");
                    None
                }
                Err(running) => {
                    swaps.insert(name.into(), Swap::Build { job: running });
                    None
                }
            },
            download => {
                swaps.insert(name.into(), download);
                None
            }
        }
    }

    /// Swaps `b` in for the workspace served, once its records reach
    /// `m` (the bucket's manifest now; applied from the logs in its own
    /// folder first, so no answer goes back a generation). Returns the
    /// manifest followed then, or `None` (`b` dropped) when `m` does not
    /// continue what `b` holds.
    fn swap(&self, b: Built, m: &StoreManifest, out: &mut Polled) -> Result<Option<StoreManifest>> {
        let from = &b.manifest;
        let Some((followed, new)) = onward(from, m) else {
            return Ok(None);
        };
        self.source()
            .append_to(&b.handle, &followed, from, new, out)?;
        let ws = self.engine.dir().join("workspaces");
        let target = ws.join(&m.workspace);
        let retired = self.engine.dir().join(RETIRED_DIR);
        fs::create_dir_all(&retired).map_err(Error::io_at(&retired))?;
        // The workspace served keeps its files open and mapped: it serves
        // until the new one is in the table.
        let n = self.builds.fetch_add(1, Ordering::Relaxed);
        let old = retired.join(format!("{}.{n}", m.workspace));
        if target.exists() {
            fs::rename(&target, &old).map_err(Error::io_at(&target))?;
        }
        let Built { handle, dir, .. } = b;
        match fs::rename(dir.path(), &target) {
            Ok(()) => {
                dir.keep();
                handle.relocate(&target);
            }
            // Followed where it was built (a replica's folders are copied
            // from the bucket again when it starts).
            Err(e) => {
                tracing::warn!(workspace = %m.workspace, "moving {} in: {e}", dir.path().display());
                dir.keep();
            }
        }
        tracing::info!(
            workspace = %m.workspace,
            seq = followed.end_seq,
            snapshot = from.manifest.as_ref().map(|lm| lm.snapshot.as_str()),
            "a new snapshot generation swapped in"
        );
        let replaced = self.engine.replica_put(&m.workspace, handle);
        // Freeing the old state and unlinking its snapshot take a while:
        // on a thread of their own (inline if none starts).
        let _ = std::thread::Builder::new()
            .name("segq-replica-retire".into())
            .spawn(move || {
                drop(replaced);
                let _ = fs::remove_dir_all(&old);
            });
        self.status.swaps.fetch_add(1, Ordering::Relaxed);
        Ok(Some(followed))
    }

    /// Downloads the workspace whole, checks it, and swaps it in.
    fn reload(&self, m: &StoreManifest, out: &mut Polled) -> Result<()> {
        // Whatever was on its way in is of another state.
        self.swaps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&m.workspace);
        let data = self.engine.dir();
        let staging = data.join(STAGING_DIR);
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(Error::io_at(&staging))?;
        }
        let fresh = staging.join(&m.workspace);
        let r = store::download(&*self.bucket, m, &fresh, &mut out.bytes);
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
        tracing::info!(workspace = %m.workspace, seq = m.end_seq, "downloaded whole and swapped in");
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
    let logs = store::continued(&prev.logs, &m.logs.first()?.name, m.logs.iter().cloned())?;
    Some(StoreManifest {
        manifest: prev.manifest.clone(),
        snapshot: prev.snapshot.clone(),
        logs,
        ..m.clone()
    })
}

/// How to follow `m` from `prev`: `m` itself when it only adds to `prev`,
/// else the bridge from `prev` into `m`'s generation ([`bridged`]); with
/// the logs that grew. `None`: `m` must be downloaded whole.
fn onward(prev: &StoreManifest, m: &StoreManifest) -> Option<(StoreManifest, Vec<Grow>)> {
    if let Some(new) = appended(prev, m) {
        return Some((m.clone(), new));
    }
    let bridge = bridged(prev, m)?;
    let new = appended(prev, &bridge)?;
    Some((bridge, new))
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

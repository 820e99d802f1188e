//! A live workspace: its state behind a lock, and its log.
//!
//! Every write takes the write lock, changes the in-memory state through the
//! same checked operations the library offers (so a refused change changes
//! nothing and logs nothing), describes the effect as a [`Change`], submits
//! it to the log (no I/O yet) and releases the lock; only then does it wait
//! for the group commit that makes the record durable, and return. Log
//! order is therefore apply order, and concurrent writers share fsyncs.
//!
//! A change is visible to queries from the moment it is applied, slightly
//! before it is acknowledged; an acknowledged change is always visible.
//!
//! If a log write or fsync fails, the log abandons the failed batch and
//! everything submitted after it (see `crate::log`), and the changes of
//! those records are undone before any of their writers is answered
//! (`Error::NotDurable`, a 503): under the write lock, the state is
//! rebuilt as start-up builds it, from the mapped snapshot and the durable
//! records of the logs after it ([`WorkspaceHandle::restore`]). The log is
//! then reset: cut back to its durable end, with a filler record for each
//! abandoned seq and one for the undo itself, so that no seq a query may
//! have reported as its generation is given to another change, and the
//! state after the undo has a generation of its own. While the disk still
//! refuses, the reset fails, and each write tries it again before it
//! changes anything: the workspace takes writes again as soon as the disk
//! does, without a restart. Only when the durable state cannot be read
//! back does the workspace refuse writes until a restart
//! (`Error::WorkspaceFailed`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::audit;
use super::compact::{self, Compacted, Fs, Manifest, RealFs};
use super::priority;
use super::record::{self, to_ms, Applied, Change};
use crate::attributes::{AttrInput, AttrInputs, AttrType, AttrValue};
use crate::cohorts::{self, ChangeReport, CohortChange, ResolvedChanges};
use crate::error::{Error, Result};
use crate::ids::{Partner, UserId, UserRef};
use crate::import::{CohortRequest, UsersRequest};
use crate::log::{LogError, LogWriter};
use crate::segment::{self, Filter};
use crate::users::{NewUser, Stamp, UpsertPlan, Upserted};
use crate::workspace::cache::ResultCache;
use crate::workspace::live::{LiveSegments, Touched};
use crate::workspace::{SavedSegment, Workspace};

/// Identifiers a partner request's matching takes per hold of the read
/// lock ([`WorkspaceHandle::resolve_ahead`]): some tens of microseconds.
const RESOLVE_STEP: usize = 64;

/// Bulk loads cut their log records at about this many bytes, far below
/// the log's record limit.
pub const RECORD_BUDGET: usize = 4 << 20;

/// How [`WorkspaceHandle::write_locked`] left the write lock.
enum Locked<T> {
    /// The log was failed, or another write's change waits to be undone:
    /// undo (and reset the log), then again.
    LogFailed,
    /// Refused with nothing applied.
    Refused(Error),
    /// Applied and not to be logged: to be undone, then the error.
    Undo(Error),
    /// Nothing to log; the log's last seq when the lock was let go.
    Unlogged(T, u64),
    /// Submitted up to this seq, to wait for.
    Logged(T, u64, Arc<LogWriter>),
}

/// What a bulk upsert did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchReport {
    /// Users created.
    pub created: u64,
    /// Users that existed already (found by an identifier).
    pub updated: u64,
    /// `(index in the batch, why)` of each user refused.
    pub failed: Vec<(usize, String)>,
}

/// One workspace, shared by the server's tasks. Its locks are taken in the
/// order `files`, `state`, `log`, then the small mutexes (`failed`,
/// `compacted_at`, `key_uses`), after any engine lock (see `super`).
pub struct WorkspaceHandle {
    name: String,
    state: RwLock<Workspace>,
    /// The current log; compaction replaces it by a fresh one.
    log: RwLock<Arc<LogWriter>>,
    failed: Mutex<Option<String>>,
    /// Set (under the write lock) when memory holds a change the log will
    /// never hold: the next [`Self::restore`] rebuilds the state.
    stale: AtomicBool,
    /// The log failure (`LogWriter::failure_id`) whose changes were last
    /// undone, so a reset retried later does not undo them again.
    undone: Mutex<Option<u64>>,
    bitmaps: crate::workspace::source::SerialCache,
    /// Every saved segment, materialised; refreshed under the write lock
    /// after a write's changes are applied (lock order: `state`, then
    /// this).
    live: RwLock<LiveSegments>,
    /// Counts of filters that are not saved segments.
    results: ResultCache,
    /// The workspace's folder (see [`Self::relocate`]).
    dir: RwLock<PathBuf>,
    /// The manifest in force (None before the first compaction) and the
    /// logs after its snapshot, oldest first (the last is in use). Held
    /// only briefly: a compaction takes it to switch the log and again to
    /// commit, so the shipper's view never waits for a snapshot write.
    files: Mutex<(Option<Manifest>, Vec<PathBuf>)>,
    /// Serialises compactions, log seals and the undo of a failed write
    /// (taken before `files`).
    compacting: Mutex<()>,
    /// When the state was last folded into a snapshot (or loaded).
    compacted_at: Mutex<std::time::Instant>,
    /// What the compactions of this workspace did since it was opened.
    compactions: CompactionCounters,
    /// The most nodes a segment filter may have (`max_filter_nodes`).
    max_filter_nodes: usize,
    /// Key uses to log with the next write (`Change::KeyUsed`), by key id:
    /// milliseconds since the epoch.
    key_uses: Mutex<std::collections::BTreeMap<String, i64>>,
    /// The most cohorts one partner may create through the partner
    /// endpoints (`max_cohorts_per_partner` of the configuration).
    cohort_limit: usize,
    /// For a workspace in memory ([`Self::in_memory`]): the state its log
    /// starts from, which takes the place of a snapshot.
    memory: Option<Box<Workspace>>,
    /// The engine's: refuses writes once the node lost the object
    /// store's lease.
    fence: std::sync::OnceLock<Arc<super::store::Fence>>,
    /// Set on a read replica's workspace: the seq of the last record
    /// applied from the primary's log ([`Self::follow`]), which its
    /// answers' generation is (the local log writer never writes).
    followed: std::sync::OnceLock<AtomicU64>,
}

impl std::fmt::Debug for WorkspaceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl WorkspaceHandle {
    /// The workspace's folder.
    pub(crate) fn folder(&self) -> PathBuf {
        self.dir.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A read replica's workspace built beside the one served, whose
    /// folder was then renamed to `dir`: its paths follow.
    pub(crate) fn relocate(&self, dir: &Path) {
        let _compacting = self.compacting.lock().unwrap_or_else(|p| p.into_inner());
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        for log in files.1.iter_mut() {
            if let Some(name) = log.file_name() {
                *log = dir.join(name);
            }
        }
        *self.dir.write().unwrap_or_else(|p| p.into_inner()) = dir.to_path_buf();
    }

    pub(crate) fn new(
        ws: Workspace,
        log: LogWriter,
        dir: PathBuf,
        manifest: Option<Manifest>,
        logs: Vec<PathBuf>,
    ) -> Self {
        let bitmaps = crate::workspace::source::SerialCache::with_bucket_masks(
            crate::segment::masks::DEFAULT_BYTES,
        );
        let live = RwLock::new(LiveSegments::build(&ws, &bitmaps));
        WorkspaceHandle {
            dir: RwLock::new(dir),
            files: Mutex::new((manifest, logs)),
            compacting: Mutex::new(()),
            compacted_at: Mutex::new(std::time::Instant::now()),
            compactions: CompactionCounters::default(),
            name: ws.name().to_string(),
            state: RwLock::new(ws),
            log: RwLock::new(Arc::new(log)),
            failed: Mutex::new(None),
            stale: AtomicBool::new(false),
            undone: Mutex::new(None),
            bitmaps,
            live,
            results: ResultCache::default(),
            max_filter_nodes: crate::segment::DEFAULT_MAX_FILTER_NODES,
            key_uses: Mutex::default(),
            cohort_limit: super::config::DEFAULT_MAX_COHORTS_PER_PARTNER,
            memory: None,
            fence: std::sync::OnceLock::new(),
            followed: std::sync::OnceLock::new(),
        }
    }

    /// A workspace served from memory: `ws` is the state it starts from
    /// (as a snapshot would be; `Workspace::new` for an empty one) and its
    /// log is a file in memory. Writes take the path they take in a data
    /// directory (computed from the state, applied as log replay applies
    /// them, logged), so it answers what the server answers; nothing
    /// touches the disk, and it is never compacted. The demo and tests
    /// serve from it.
    pub fn in_memory(ws: Workspace) -> Result<WorkspaceHandle> {
        let file = super::memory::MemoryFile::new(ws.name());
        let name = crate::log::LogFile::name(&file);
        let log = LogWriter::create(file, 1)?;
        let mut handle = WorkspaceHandle::new(
            ws.clone(),
            log,
            PathBuf::new(),
            None,
            vec![PathBuf::from(name)],
        );
        handle.memory = Some(Box::new(ws));
        Ok(handle)
    }

    /// The workspace's state, giving the handle up.
    pub fn into_workspace(self) -> Workspace {
        self.state.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// The state the log holds, rebuilt as start-up builds it: the
    /// snapshot (or, in memory, the starting state) and the durable
    /// records of the logs after it, each applied by the function live
    /// writes use. Equal to [`Self::read`] once every write is answered.
    pub fn durable_state(&self) -> Result<Workspace> {
        let _compacting = self.compacting.lock().unwrap_or_else(|p| p.into_inner());
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let ws = self.read();
        rebuild(
            &self.name,
            &self.folder(),
            &files,
            &self.log(),
            &ws,
            self.memory.as_deref(),
        )
    }

    /// Bounds the filters of this workspace's queries and saved segments
    /// to `max_filter_nodes` nodes (the configuration's value).
    pub(crate) fn with_max_filter_nodes(mut self, max_filter_nodes: usize) -> Self {
        self.max_filter_nodes = max_filter_nodes;
        self
    }

    /// Refuses a filter past the configured number of nodes
    /// ([`crate::segment::check_size`]).
    pub fn check_filter(&self, filter: &Filter) -> Result<()> {
        crate::segment::check_size(filter, self.max_filter_nodes)
    }

    /// Gives the result cache a budget of `bytes` (the configuration's
    /// `result_cache_bytes`; 0 turns it off).
    pub(crate) fn with_result_cache(mut self, bytes: usize) -> Self {
        self.results = ResultCache::new(bytes);
        self
    }

    /// Gives the bucket-range mask cache a budget of `bytes` (the
    /// configuration's `bucket_mask_cache_bytes`; 0 turns it off).
    pub(crate) fn with_bucket_mask_cache(mut self, bytes: usize) -> Self {
        self.bitmaps.set_bucket_masks(bytes);
        self
    }

    /// The live segments. Take it after [`Self::read`] or [`Self::view`]
    /// when both are wanted (a writer holds the state, then this).
    pub fn live(&self) -> RwLockReadGuard<'_, LiveSegments> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    /// [`Self::live`] if no writer holds (or waits for) it now.
    pub fn try_live(&self) -> Option<RwLockReadGuard<'_, LiveSegments>> {
        match self.live.try_read() {
            Ok(l) => Some(l),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn live_mut(&self) -> std::sync::RwLockWriteGuard<'_, LiveSegments> {
        self.live.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The result cache of counts.
    pub fn results(&self) -> &ResultCache {
        &self.results
    }

    /// Refuses every later write, saying why (a read-only engine).
    pub(crate) fn refuse_writes(&self, reason: &str) {
        let _ = self.fail(reason.to_string());
    }

    /// Notes that data import key `id` was used at `at_ms`, to be logged
    /// with the next write of the workspace (or at shutdown, see
    /// [`Self::log_key_uses`]): no fsync of its own.
    pub(crate) fn note_key_used(&self, id: &str, at_ms: i64) {
        let mut uses = self.key_uses.lock().unwrap_or_else(|p| p.into_inner());
        let at = uses.entry(id.to_string()).or_insert(at_ms);
        *at = (*at).max(at_ms);
    }

    /// Applies the noted key uses as changes of `tx` (under the write
    /// lock); a use of a key the workspace does not hold is dropped.
    fn take_key_uses(&self, tx: &mut Tx<'_>) -> Result<()> {
        let uses = std::mem::take(&mut *self.key_uses.lock().unwrap_or_else(|p| p.into_inner()));
        for (id, at_ms) in uses {
            if tx.state().keys.contains_key(&id) {
                tx.apply(Change::KeyUsed { id, at_ms })?;
            }
        }
        Ok(())
    }

    /// Logs the noted key uses now, if any (shutdown).
    pub(crate) fn log_key_uses(&self) -> Result<()> {
        let pending = !self
            .key_uses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if !pending || self.check_failed().is_err() {
            return Ok(());
        }
        self.write(|tx| self.take_key_uses(tx))
    }

    /// Bounds the cohorts one partner may create in this workspace
    /// through [`Self::upsert_cohort`] and [`Self::import_users`] to `max`
    /// (the configuration's `max_cohorts_per_partner`). Log replay and
    /// snapshots are never refused by it.
    pub(crate) fn with_cohort_limit(mut self, max: usize) -> Self {
        self.cohort_limit = max;
        self
    }

    /// Refuses a partner's new cohort past the limit.
    fn check_cohort_room(&self, ws: &Workspace, partner: Partner, cohort_id: &str) -> Result<()> {
        let max = self.cohort_limit;
        let exists = ws
            .cohorts
            .get(&crate::ids::CohortKey::new(partner, cohort_id))
            .is_some();
        if !exists && ws.cohorts.count(partner) >= max {
            return Err(Error::TooManyCohorts { partner, max });
        }
        Ok(())
    }

    /// Why the workspace cannot take writes now, `None` when it can: it
    /// failed for good, or a write or fsync of its log failed and the log
    /// has not been reset since (the next write, or [`Self::recover`],
    /// resets it once the disk takes writes again). Takes only small
    /// locks, never the state's, and does no I/O: readiness checks call it.
    pub fn write_trouble(&self) -> Option<String> {
        if let Some(reason) = &*self.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(reason.clone());
        }
        self.log()
            .is_poisoned()
            .then(|| "a write or fsync of the change log failed; not reset yet".to_string())
    }

    /// Undoes what a failed log write left in memory and resets the log,
    /// as the next write would do first: a workspace whose disk takes
    /// writes again is writable without waiting for a write. Does nothing
    /// when all is well; an error says the log still refuses.
    pub fn recover(&self) -> Result<()> {
        self.check_failed()?;
        self.restore()
    }

    /// The workspace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A read view for queries and observability. Holding it blocks writers
    /// of this workspace: keep it short.
    pub fn read(&self) -> RwLockReadGuard<'_, Workspace> {
        // A poisoned lock means a writer panicked; the failed flag (set
        // below) stops writes, and reads see the state as it was left.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn log(&self) -> Arc<LogWriter> {
        self.log.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The commits and records of the current log since it was opened.
    pub fn log_stats(&self) -> crate::log::WriterStats {
        self.log().stats()
    }

    /// The manifest in force, if the workspace was ever compacted.
    pub fn manifest(&self) -> Option<Manifest> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// What is to be shipped to an object store (see [`super::store`]): the
    /// manifest in force, its snapshot and the logs after it opened (an
    /// open file stays readable after a compaction removes it), each log
    /// with the length of its durable part, and the seq after the last
    /// durable record. Taken under `files`, which a running compaction
    /// holds only to switch the log and to commit (between the two, the
    /// view is the previous snapshot, the sealed logs and the fresh log);
    /// it never waits for a writer. `None` for a workspace in memory.
    pub(crate) fn ship_view(&self) -> Result<Option<super::store::LocalFiles>> {
        if self.memory.is_some() {
            return Ok(None);
        }
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let log = self.log();
        let (live_len, end) = log.durable_position();
        let open = |p: &std::path::Path| std::fs::File::open(p).map_err(Error::io_at(p));
        let snapshot = match &files.0 {
            Some(m) => Some((m.snapshot.clone(), open(&self.folder().join(&m.snapshot))?)),
            None => None,
        };
        let mut logs = Vec::with_capacity(files.1.len());
        for (i, p) in files.1.iter().enumerate() {
            let f = open(p)?;
            let len = if i + 1 == files.1.len() {
                live_len
            } else {
                f.metadata().map_err(Error::io_at(p))?.len()
            };
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .ok_or_else(|| Error::Internal(format!("a log without a name: {}", p.display())))?;
            logs.push((name, f, len));
        }
        Ok(Some(super::store::LocalFiles {
            manifest: files.0.clone(),
            snapshot,
            logs,
            end_seq: end.saturating_sub(1),
        }))
    }

    /// Log records since the last snapshot, and the size in bytes of the
    /// logs holding them.
    pub fn log_backlog(&self) -> (u64, u64) {
        let (base_seq, logs) = {
            let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            (files.0.as_ref().map_or(0, |m| m.seq), files.1.clone())
        };
        let records = self.log().next_seq().saturating_sub(base_seq + 1);
        let bytes = logs
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        (records, bytes)
    }

    /// Whether the log has grown past the configured thresholds; never
    /// while a compaction runs (it folds that backlog already, though
    /// until it commits the backlog still counts the logs it sealed).
    pub fn compaction_due(&self, config: &super::Config) -> bool {
        if matches!(
            self.compacting.try_lock(),
            Err(std::sync::TryLockError::WouldBlock)
        ) {
            return false;
        }
        let (records, bytes) = self.log_backlog();
        let age = self
            .compacted_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        records >= config.compact_after_records
            || bytes >= config.compact_after_bytes
            || (records > 0 && age.as_secs() >= config.compact_interval_secs)
    }

    /// Folds the changes since the last snapshot into a new snapshot
    /// generation (see [`super::compact`]). Writers wait only while the
    /// log is switched and the state frozen; queries go on throughout.
    pub fn compact(&self) -> Result<Compacted> {
        self.compact_with(&mut RealFs)
    }

    /// [`Self::compact`] through the given file operations.
    pub fn compact_with(&self, fs: &mut dyn Fs) -> Result<Compacted> {
        let started = std::time::Instant::now();
        let running = self.compactions.start();
        let mut held = std::time::Duration::ZERO;
        let mut r = self.compact_timed(fs, &mut held);
        if let Ok(c) = &mut r {
            c.took_ms = started.elapsed().as_millis() as u64;
            c.writers_held_ms = held.as_millis() as u64;
        }
        running.finish(r.as_ref().ok(), held);
        r
    }

    /// Seals the log in use, as a compaction's first step does without
    /// the snapshot: once every record submitted is durable, writers are
    /// switched to a fresh log (`log-N`, N the next seq) that continues
    /// the chain after the manifest's snapshot. The object-store shipper
    /// seals a live log once it is shipped in `MAX_PIECES - 1` pieces, so
    /// no log is uploaded twice. Returns the fresh log's path, or `None`
    /// when the log in use holds no record (nothing to seal).
    /// A running compaction is not waited for: it switches the log itself,
    /// so `None` is returned then too.
    pub(crate) fn seal_log(&self) -> Result<Option<PathBuf>> {
        self.check_failed()?;
        if self.memory.is_some() || self.followed.get().is_some() {
            return Err(Error::InvalidArgument(format!(
                "workspace {} has no log of its own to seal",
                self.name
            )));
        }
        let _compacting = match self.compacting.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
        };
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        // The read lock keeps writers out while the log is switched.
        let _ws = self.read();
        let log = self.log();
        if self.stale.load(Ordering::SeqCst) || log.is_poisoned() {
            return Err(Error::NotDurable {
                name: self.name.clone(),
                reason: "a change that is not durable is being undone".into(),
            });
        }
        if log.next_seq() == log.first_seq() {
            return Ok(None);
        }
        let seq = log.next_seq() - 1;
        log.wait_durable(seq).map_err(|e| self.not_durable(&e))?;
        let (path, writer) = compact::rotate(&mut RealFs, &self.folder(), seq)?;
        *self.log.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(writer);
        files.1.push(path.clone());
        Ok(Some(path))
    }

    /// What this workspace's compactions did since it was opened.
    pub fn compaction_stats(&self) -> CompactionStats {
        self.compactions.stats()
    }

    fn compact_timed(&self, fs: &mut dyn Fs, held: &mut std::time::Duration) -> Result<Compacted> {
        self.check_failed()?;
        if self.followed.get().is_some() {
            return Err(Error::InvalidArgument(format!(
                "workspace {} is a read replica's: its primary compacts it",
                self.name
            )));
        }
        if self.memory.is_some() {
            return Err(Error::InvalidArgument(format!(
                "workspace {} is kept in memory: it has no files to compact",
                self.name
            )));
        }
        let _compacting = self.compacting.lock().unwrap_or_else(|p| p.into_inner());
        // Fixed while the compacting lock is held (see `relocate`).
        let dir = self.folder();
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        // 1. Freeze. The read lock keeps writers out, so the state is
        //    exactly the log up to `seq`. It runs at the normal priority
        //    (`priority::holding_locks`): the writers it keeps out keep
        //    the queries out.
        let (frozen, seq, rotated) = priority::holding_locks(|| {
            let ws = self.read();
            let frozen_at = std::time::Instant::now();
            let _held = Held(held, frozen_at);
            let log = self.log();
            if self.stale.load(Ordering::SeqCst) || log.is_poisoned() {
                // Memory may hold a change that is not durable: it must
                // not reach a snapshot. The writer undoing it is waiting.
                return Err(Error::NotDurable {
                    name: self.name.clone(),
                    reason: "a change that is not durable is being undone".into(),
                });
            }
            let seq = log.next_seq().saturating_sub(1);
            let mut rotated = None;
            if log.next_seq() > log.first_seq() {
                // On a failure, the writers whose records failed undo them
                // (they wait for this lock); the compaction just stops.
                log.wait_durable(seq).map_err(|e| self.not_durable(&e))?;
                let (path, writer) = compact::rotate(fs, &dir, seq)?;
                *self.log.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(writer);
                rotated = Some(path);
            }
            Ok((ws.clone(), seq, rotated))
        })?;
        files.1.extend(rotated);
        let log_name = files
            .1
            .last()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .ok_or_else(|| Error::Internal("the workspace has no log".into()))?;
        // 2–3. Write the snapshot and commit it, writers going on. `files`
        //    is let go meanwhile: the shipper reads the previous snapshot,
        //    the sealed logs and the fresh one (`compacting` keeps every
        //    other switch of the log out).
        let (old, old_logs) = files.clone();
        drop(files);
        let (manifest, done) =
            match compact::publish(fs, &dir, &frozen, seq, old.as_ref(), &log_name) {
                Ok(x) => x,
                Err(compact::Failed::Before(e)) => return Err(e),
                Err(compact::Failed::During(e)) => {
                    return Err(self.fail(format!(
                        "compaction failed at its commit point ({e}); restart to recover"
                    )))
                }
            };
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) =
            (Some(manifest.clone()), vec![dir.join(&manifest.log)]);
        *self.compacted_at.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        // 4. Serve from the new snapshot. Should it not open, the old one
        //    (still mapped) goes on serving; a restart reads the new one.
        let path = dir.join(&manifest.snapshot);
        let moved = crate::snapshot::Snapshot::open(&path).and_then(|snap| {
            // Found and checked before the lock: under it, only what
            // changed since the freeze is moved.
            let prepared = crate::workspace::Rebase::prepare(&frozen, Arc::new(snap))?;
            priority::holding_locks(|| {
                let mut ws = self.write_lock()?;
                let _held = Held(held, std::time::Instant::now());
                ws.apply_rebase(&frozen, prepared)
            })
        });
        if let Err(e) = moved {
            tracing::error!(
                workspace = %self.name,
                "serving from {} failed, the previous snapshot goes on: {e}",
                path.display()
            );
        }
        drop(frozen);
        if let Err(e) = compact::cleanup(fs, &dir, &manifest, old.as_ref(), &old_logs) {
            // Litter only: start-up removes it.
            tracing::warn!(
                workspace = %self.name,
                "removing the previous generation: {e}"
            );
        }
        Ok(done)
    }

    fn fail(&self, reason: String) -> Error {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(reason.clone());
        Error::WorkspaceFailed {
            name: self.name.clone(),
            reason,
        }
    }

    /// Makes this a read replica's workspace: from now on its state moves
    /// only by [`Self::follow`], and its generation is the last record
    /// followed (now: what its log holds).
    pub(crate) fn become_follower(&self) {
        let seq = self.log().next_seq().saturating_sub(1);
        let _ = self.followed.set(AtomicU64::new(seq));
    }

    /// The seq of the last record a follower applied; `None` for a
    /// workspace that is not a read replica's.
    pub fn followed_seq(&self) -> Option<u64> {
        self.followed.get().map(|f| f.load(Ordering::SeqCst))
    }

    /// Applies records of the primary's log that follow the last one
    /// applied ([`Self::become_follower`]), as log replay applies them,
    /// under the write lock, and refreshes the saved segments they touch;
    /// the generation becomes the last one's seq. `records` must continue
    /// the seqs with no gap. A record that does not apply leaves the state
    /// part way: the error says so, and the workspace must be reloaded
    /// (the caller drops this handle).
    pub(crate) fn follow(&self, shown: &str, records: &[crate::log::LogRecord]) -> Result<u64> {
        let followed = self
            .followed
            .get()
            .ok_or_else(|| Error::Internal(format!("workspace {} follows no log", self.name)))?;
        let mut ws = self.write_lock()?;
        let mut last = followed.load(Ordering::SeqCst);
        let mut tx = Tx::new(&mut ws);
        let mut failed = None;
        for r in records {
            if r.seq != last + 1 {
                failed = Some(Error::Corrupt {
                    path: shown.into(),
                    reason: format!("record {} follows record {last}", r.seq),
                });
                break;
            }
            let applied = Change::decode(&r.payload, shown, r.seq)
                .and_then(|change| tx.apply_only(&change).map(drop));
            if let Err(e) = applied {
                failed = Some(Error::Corrupt {
                    path: shown.into(),
                    reason: format!("record {} does not apply: {e}", r.seq),
                });
                break;
            }
            last = r.seq;
        }
        let touched = std::mem::take(&mut tx.touched);
        let dirty = tx.dirty;
        drop(tx);
        if !touched.is_empty() {
            // Under the write lock, before any reader sees the state.
            self.live_mut().refresh(&ws, &touched, &self.bitmaps);
        }
        followed.store(last, Ordering::SeqCst);
        match failed {
            Some(e) if dirty => Err(self.fail(format!("following the primary's log: {e}"))),
            Some(e) => Err(e),
            None => Ok(last),
        }
    }

    /// Refuses this workspace's writes once `fence` does (the first one
    /// set stays).
    pub(crate) fn set_fence(&self, fence: Arc<super::store::Fence>) {
        let _ = self.fence.set(fence);
    }

    fn check_failed(&self) -> Result<()> {
        let f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match &*f {
            Some(reason) => Err(Error::WorkspaceFailed {
                name: self.name.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn write_lock(&self) -> Result<RwLockWriteGuard<'_, Workspace>> {
        self.state
            .write()
            .map_err(|_| self.fail("a writer panicked while changing the workspace".into()))
    }

    /// The error for a change that did not become durable (and was, or
    /// will be, undone). The reason names the failed operation and the
    /// OS error, never a path.
    fn not_durable(&self, e: &LogError) -> Error {
        let reason = match e.commit_failure() {
            Some((op, source)) => format!("the log {op} failed: {source}"),
            None => match e {
                LogError::PayloadTooLarge { .. } => e.to_string(),
                _ => "the change log refused the record".to_string(),
            },
        };
        Error::NotDurable {
            name: self.name.clone(),
            reason,
        }
    }

    /// Runs `f` under the write lock; `f` computes each change from the
    /// state ([`Tx::state`], without changing it: matching, validation,
    /// user ids and buckets happen there) and applies it with
    /// [`Tx::apply`], the function log replay uses, or refuses, applying
    /// nothing. Then the applied changes are logged; returns once they are
    /// durable.
    ///
    /// A change whose record the log does not make durable (a failed
    /// write or fsync, of its own batch or an earlier one, or a record the
    /// log refuses) is undone before the error is returned: once a write
    /// is refused, its change is not visible. So is a change that failed
    /// to apply part way, or one applied before `f` refused.
    ///
    /// The steps under the lock run at the normal priority even when the
    /// caller is lowered ([`priority::holding_locks`]); the undoing and
    /// the waits for the log do not.
    pub(crate) fn write<T: Send>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T> + Send,
    ) -> Result<T> {
        self.check_failed()?;
        if let Some(fence) = self.fence.get() {
            fence.check()?;
        }
        let mut f = Some(f);
        // The log takes appends once what a failed commit left in memory
        // is undone and the log reset ([`Self::restore`]); a commit may
        // fail again between the reset and the lock: a few rounds, then
        // the caller is told to come back.
        for _ in 0..3 {
            self.restore()?;
            match priority::holding_locks(|| self.write_locked(&mut f)) {
                Locked::LogFailed => continue,
                Locked::Refused(e) => return Err(e),
                Locked::Undo(e) => {
                    self.restore()?;
                    return Err(e);
                }
                Locked::Unlogged(out, last) => {
                    // Nothing to log: the state it read, though, may hold
                    // a change not shipped yet (this very request, made
                    // before and refused with `NotShipped`): with
                    // object-store durability, acknowledged once that is
                    // shipped.
                    if last > 0 {
                        self.wait_shipped(last)?;
                    }
                    return Ok(out);
                }
                Locked::Logged(out, last, log) => {
                    if let Err(e) = log.wait_durable(last) {
                        let err = self.not_durable(&e);
                        self.restore()?;
                        return Err(err);
                    }
                    self.wait_shipped(last)?;
                    return Ok(out);
                }
            }
        }
        Err(Error::NotDurable {
            name: self.name.clone(),
            reason: "the log keeps failing".into(),
        })
    }

    /// [`Self::write`]'s steps under the write lock: runs `f` (taken once
    /// the log takes appends) and submits its changes.
    fn write_locked<T, F>(&self, f: &mut Option<F>) -> Locked<T>
    where
        F: FnOnce(&mut Tx<'_>) -> Result<T>,
    {
        let mut ws = match self.write_lock() {
            Ok(ws) => ws,
            Err(e) => return Locked::Refused(e),
        };
        let log = self.log();
        // Also when another write's change is still to be undone: it let
        // go of the lock before its restore, and nothing may build on it.
        if log.is_poisoned() || self.stale.load(Ordering::SeqCst) {
            return Locked::LogFailed;
        }
        let Some(f) = f.take() else {
            return Locked::Refused(Error::Internal("a write ran twice".into()));
        };
        let mut tx = Tx::new(&mut ws);
        let mut result = f(&mut tx);
        if result.is_ok() && tx.changed() {
            // Key uses ride along: no fsync of their own.
            if let Err(e) = self.take_key_uses(&mut tx) {
                result = Err(e);
            }
        }
        if result.is_ok() && tx.changed() {
            // The audit entry of a request's changes goes last, in the
            // same commit: durable exactly when they are.
            if let Err(e) = tx.audit() {
                result = Err(e);
            }
        }
        if tx.dirty || (result.is_err() && tx.changed()) {
            // Applied, never to be logged: undone by the caller.
            self.stale.store(true, Ordering::SeqCst);
            return Locked::Undo(result.err().unwrap_or_else(|| {
                Error::Internal("a change failed to apply and was undone".into())
            }));
        }
        let out = match result {
            Ok(out) => out,
            Err(e) => return Locked::Refused(e),
        };
        if !tx.touched.is_empty() {
            // Under the write lock, before any reader sees the state.
            self.live_mut().refresh(tx.ws, &tx.touched, &self.bitmaps);
        }
        let changes = tx.finish();
        if changes.is_empty() {
            return Locked::Unlogged(out, log.next_seq().saturating_sub(1));
        }
        let submitted = changes
            .iter()
            .map(Change::encode)
            .collect::<Result<Vec<_>>>()
            .and_then(|payloads| {
                log.submit_batch(&payloads)
                    .map_err(|e| self.not_durable(&e))
            });
        match submitted {
            Ok(seqs) => Locked::Logged(out, seqs.end - 1, log),
            Err(e) => {
                // Applied, never to be logged: undone by the caller.
                self.stale.store(true, Ordering::SeqCst);
                Locked::Undo(e)
            }
        }
    }

    /// With object-store durability, returns once record `last` (submitted
    /// to the log) is in the object store; at once otherwise.
    fn wait_shipped(&self, last: u64) -> Result<()> {
        match (self.fence.get(), &self.memory) {
            (Some(fence), None) => fence.shipped(&self.name, last),
            _ => Ok(()),
        }
    }

    /// Makes memory equal the durable log again after a log failure (or a
    /// change applied but never logged), and resets the log so that it
    /// takes appends. Does nothing when all is well.
    ///
    /// Under the compaction lock and then the write lock: everything
    /// submitted is made durable or fails; if memory may hold a change
    /// that is not durable, the state is rebuilt from the snapshot and the
    /// durable records (as at start-up) and one seq is burned for the undo;
    /// then the log is reset. An error says the log still refuses (the
    /// undo is done; the state is the durable one), or, as
    /// `WorkspaceFailed`, that the durable state could not be read back.
    fn restore(&self) -> Result<()> {
        if !self.log().is_poisoned() && !self.stale.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Lock order: compaction lock, then the state. A running
        // compaction finishes first (or stops at the failed log).
        let _compacting = self.compacting.lock().unwrap_or_else(|p| p.into_inner());
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let mut ws = self.write_lock()?;
        let log = self.log();
        if let Some(last) = log.next_seq().checked_sub(1) {
            if last >= log.first_seq() {
                // Ok, or it failed and the log is poisoned now: either way
                // nothing submitted is in flight any more.
                let _ = log.wait_durable(last);
            }
        }
        let failure = log.failure_id();
        let mut undone = self.undone.lock().unwrap_or_else(|p| p.into_inner());
        let undo = self.stale.load(Ordering::SeqCst) || (failure.is_some() && *undone != failure);
        if undo {
            let rebuilt = rebuild(
                &self.name,
                &self.folder(),
                &files,
                &log,
                &ws,
                self.memory.as_deref(),
            )
            .map_err(|e| {
                self.fail(format!(
                    "a change that is not durable could not be undone: {e}"
                ))
            })?;
            *ws = rebuilt;
            // Users created and abandoned may come back with other buckets.
            self.bitmaps.clear_bucket_masks();
            *self.live_mut() = LiveSegments::build(&ws, &self.bitmaps);
            self.results.clear();
            self.stale.store(false, Ordering::SeqCst);
            if failure.is_some() {
                *undone = failure;
                log.burn_seq();
            }
        }
        drop(undone);
        log.reset(|seqs| {
            Change::SeqsAbandoned {
                first: seqs.start,
                last: seqs.end.saturating_sub(1),
            }
            .encode()
        })
        .map_err(|e| match e {
            Error::Log(e) => self.not_durable(&e),
            other => other,
        })?;
        Ok(())
    }

    /// Makes every change submitted so far durable (shutdown). After a
    /// log failure, undoes what is not durable and tries to reset the log
    /// first; an error says what could not be made durable.
    pub fn sync(&self) -> Result<()> {
        self.check_failed()?;
        self.restore()?;
        let log = self.log();
        if let Some(last) = log.next_seq().checked_sub(1) {
            if last >= log.first_seq() {
                if let Err(e) = log.wait_durable(last) {
                    let err = self.not_durable(&e);
                    self.restore()?;
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// `POST /partners/{partner}/cohorts`, after authorization. Returns
    /// whether the cohort was created.
    pub fn upsert_cohort(&self, partner: Partner, req: &CohortRequest) -> Result<bool> {
        self.write(|tx| {
            let ws = tx.state();
            cohorts::check_cohort_id(&req.cohort_id)?;
            cohorts::check_cohort_name(&req.name)?;
            self.check_cohort_room(ws, partner, &req.cohort_id)?;
            let key = crate::ids::CohortKey::new(partner, &req.cohort_id);
            let created = ws.cohorts.get(&key).is_none();
            tx.apply(Change::CohortUpserted {
                partner,
                cohort_id: req.cohort_id.clone(),
                name: req.name.clone(),
                created_at: crate::import::format_created_at(&req.created_at),
            })?;
            Ok(created)
        })
    }

    /// `POST /partners/{partner}/cohorts/users`, after authorization:
    /// matches the identifiers under the protocol's rules, then applies
    /// the membership operations they resolved to. A request without
    /// identifiers (a credentials test) changes nothing and does not
    /// create the cohort.
    pub fn import_users(
        &self,
        partner: Partner,
        req: &UsersRequest,
        now: DateTime<Utc>,
    ) -> Result<ChangeReport> {
        let ahead = self.resolve_ahead(&req.cohort_changes);
        self.import_resolved(partner, req, now, ahead)
    }

    /// [`Self::import_users`] with its identifiers matched ahead: used if
    /// the users are as they were then, matched again otherwise.
    fn import_resolved(
        &self,
        partner: Partner,
        req: &UsersRequest,
        now: DateTime<Utc>,
        mut ahead: Option<(Stamp, ResolvedChanges)>,
    ) -> Result<ChangeReport> {
        self.write(|tx| {
            let ws = tx.state();
            cohorts::check_cohort_id(&req.cohort_id)?;
            if req.identifiers() == 0 {
                return Ok(ChangeReport::default());
            }
            self.check_cohort_room(ws, partner, &req.cohort_id)?;
            let resolved = match ahead.take() {
                Some((stamp, resolved)) if stamp == ws.users.stamp() => resolved,
                // A user or an identifier changed since: again, here.
                _ => cohorts::resolve(&ws.users, &req.cohort_changes),
            };
            let change = Change::CohortChanged {
                partner,
                cohort_id: req.cohort_id.clone(),
                // Records keep milliseconds: live and replay apply the same.
                at_ms: to_ms(now),
                resolved,
            };
            tx.apply(change)?
                .report
                .ok_or_else(|| Error::Internal("a cohort change reported nothing".into()))
        })
    }

    /// Matches a partner request's identifiers before its write: under the
    /// read lock, [`RESOLVE_STEP`] identifiers at a time, so that neither
    /// a write waiting for the lock nor the queries queued behind that
    /// write wait for a whole request's matching (it runs on a lowered
    /// import thread, which busy cores may keep waiting). The stamp is the
    /// users' as every step saw them; `None` if they changed part way.
    fn resolve_ahead(&self, changes: &[CohortChange]) -> Option<(Stamp, ResolvedChanges)> {
        let mut resolving = cohorts::Resolving::new(changes);
        let mut first = None;
        loop {
            let ws = self.read();
            let stamp = ws.users.stamp();
            if *first.get_or_insert(stamp) != stamp {
                return None;
            }
            if resolving.step(&ws.users, RESOLVE_STEP) {
                return Some((stamp, resolving.finish()));
            }
        }
    }

    /// Deletes a partner cohort (its partner's request, or an admin's).
    /// Refused while a saved segment names it ([`Error::CohortInUse`]).
    pub fn delete_cohort(&self, partner: Partner, cohort_id: &str) -> Result<()> {
        self.write(|tx| {
            tx.state().check_delete_cohort(partner, cohort_id)?;
            tx.apply(Change::CohortDeleted {
                partner,
                cohort_id: cohort_id.to_string(),
                at_ms: to_ms(Utc::now()),
            })?;
            Ok(())
        })
    }

    /// Creates a user, or adds identifiers to the user with that
    /// external_id.
    pub fn upsert_user(&self, new: NewUser) -> Result<Upserted> {
        self.upsert_user_with(new, &[])
    }

    /// [`Self::upsert_user`], also setting (or unsetting) custom
    /// attributes. The values are typed and checked before anything is
    /// applied: a value of the wrong type refuses the whole request.
    pub fn upsert_user_with(
        &self,
        new: NewUser,
        attributes: &[(String, AttrInput)],
    ) -> Result<Upserted> {
        self.write(|tx| {
            let values = tx.state().attributes.parse_inputs(attributes)?;
            let (up, change) = user_change(tx.state(), new)?;
            if let Some(c) = change {
                tx.apply(c)?;
            }
            if !values.is_empty() {
                tx.apply(Change::AttributesSet {
                    user: up.user,
                    values,
                })?;
            }
            Ok(up)
        })
    }

    /// Sets (or, with `null`, unsets) custom attributes of an existing
    /// user; returns the user and all its values after the change.
    pub fn set_attributes(
        &self,
        user: &UserRef,
        attributes: &[(String, AttrInput)],
    ) -> Result<(UserId, std::collections::BTreeMap<String, AttrValue>)> {
        self.write(|tx| {
            let id = Self::find(tx.state(), user)?;
            let values = tx.state().attributes.parse_inputs(attributes)?;
            if !values.is_empty() {
                tx.apply(Change::AttributesSet { user: id, values })?;
            }
            Ok((id, tx.state().attributes.values_of(id.0)))
        })
    }

    /// Declares a custom attribute's type before any user has it (a no-op
    /// when it has that type; another type is refused).
    pub fn declare_attribute(&self, name: &str, ty: AttrType) -> Result<()> {
        self.write(|tx| {
            if tx.state().attributes.check_declare(name, ty)? {
                tx.apply(Change::AttributeDeclared {
                    name: name.to_string(),
                    ty,
                })?;
            }
            Ok(())
        })
    }

    /// Upserts many users; each is applied or refused on its own, and the
    /// applied ones are logged as few records (each under
    /// [`RECORD_BUDGET`]), acknowledged together.
    pub fn upsert_users(&self, batch: Vec<NewUser>) -> Result<BatchReport> {
        self.upsert_users_with(batch.into_iter().map(|u| (u, Vec::new())).collect())
    }

    /// [`Self::upsert_users`] with each user's custom attributes (a user
    /// whose values do not fit is refused whole).
    pub fn upsert_users_with(&self, batch: Vec<(NewUser, AttrInputs)>) -> Result<BatchReport> {
        self.write(|tx| {
            let mut report = BatchReport::default();
            for (i, (new, attributes)) in batch.into_iter().enumerate() {
                let typed = tx
                    .state()
                    .attributes
                    .parse_inputs(&attributes)
                    .and_then(|values| Ok((values, user_change(tx.state(), new)?)));
                match typed {
                    Ok((values, (u, change))) => {
                        if let Some(c) = change {
                            tx.apply_grouped(c)?;
                        }
                        if !values.is_empty() {
                            tx.apply_grouped(Change::AttributesSet {
                                user: u.user,
                                values,
                            })?;
                        }
                        if u.created {
                            report.created += 1;
                        } else {
                            report.updated += 1;
                        }
                    }
                    Err(e) => report.failed.push((i, e.to_string())),
                }
            }
            Ok(report)
        })
    }

    fn find(ws: &Workspace, user: &UserRef) -> Result<UserId> {
        ws.users
            .lookup(user)
            .ok_or_else(|| Error::UnknownUser(user.to_string()))
    }

    /// Gives the user an alias (a no-op if it holds it already).
    pub fn add_alias(&self, user: &UserRef, label: &str, name: &str) -> Result<UserId> {
        self.write(|tx| {
            let id = Self::find(tx.state(), user)?;
            if tx.state().users.check_alias(id, label, name)? {
                tx.apply(Change::AliasAdded {
                    user: id,
                    label: label.into(),
                    name: name.into(),
                })?;
            }
            Ok(id)
        })
    }

    /// Gives the user a device (a no-op if it holds it already).
    pub fn add_device(&self, user: &UserRef, device_id: &str) -> Result<UserId> {
        self.write(|tx| {
            let id = Self::find(tx.state(), user)?;
            if tx.state().users.check_device(id, device_id)? {
                tx.apply(Change::DeviceAdded {
                    user: id,
                    device_id: device_id.into(),
                })?;
            }
            Ok(id)
        })
    }

    /// Identifies an anonymous user.
    pub fn identify(&self, user: &UserRef, external_id: &str) -> Result<UserId> {
        self.write(|tx| {
            let id = Self::find(tx.state(), user)?;
            if tx.state().users.check_identify(id, external_id)? {
                tx.apply(Change::UserIdentified {
                    user: id,
                    external_id: external_id.into(),
                })?;
            }
            Ok(id)
        })
    }

    /// Deletes the users the identifiers name (several may name one
    /// user; an identifier nobody holds is counted, not an error): out of
    /// every cohort, attribute and saved segment, their identifiers free
    /// for reuse, their ids never given again. Durable before it returns.
    pub fn delete_users(&self, refs: &[UserRef]) -> Result<DeletedUsers> {
        self.write(|tx| {
            let ws = tx.state();
            let mut users = Vec::new();
            let mut seen = roaring::RoaringBitmap::new();
            let mut not_found = Vec::new();
            for (i, r) in refs.iter().enumerate() {
                match ws.users.lookup(r) {
                    Some(u) => {
                        if seen.insert(u.0) {
                            users.push(u);
                        }
                    }
                    None => not_found.push(i),
                }
            }
            let mut report = DeletedUsers {
                deleted: users.len() as u64,
                user_ids: users.iter().map(|u| u.0).collect(),
                not_found,
                ..DeletedUsers::default()
            };
            if !users.is_empty() {
                let applied = tx.apply(Change::UsersDeleted {
                    users,
                    at_ms: to_ms(Utc::now()),
                })?;
                let done = applied.lifecycle.unwrap_or_default();
                report.memberships_removed = done.memberships;
                report.values_removed = done.values;
            }
            Ok(report)
        })
    }

    /// Merges the user `source` names into the one `target` names (the
    /// platform's merge, see [`Workspace::merge_users`]): the source is
    /// deleted. An unknown source or target is [`Error::UnknownUser`]
    /// saying which; the same user for both is refused.
    pub fn merge_users(&self, source: &UserRef, target: &UserRef) -> Result<MergedUsers> {
        self.write(|tx| {
            let ws = tx.state();
            let s = ws
                .users
                .lookup(source)
                .ok_or_else(|| Error::UnknownUser(format!("{source} (the source)")))?;
            let t = ws
                .users
                .lookup(target)
                .ok_or_else(|| Error::UnknownUser(format!("{target} (the target)")))?;
            ws.check_merge(s, t)?;
            let applied = tx.apply(Change::UserMerged {
                source: s,
                target: t,
                at_ms: to_ms(Utc::now()),
            })?;
            let done = applied.lifecycle.unwrap_or_default();
            Ok(MergedUsers {
                source_user_id: s.0,
                target_user_id: t.0,
                cohorts_joined: done.memberships,
                attributes_taken: done.values,
                devices_moved: done.devices,
                aliases_moved: done.aliases,
            })
        })
    }

    /// Renames an identified user's external_id: the user holding `old`
    /// holds `new` from now on, and `old` is free. Unknown `old`:
    /// [`Error::UnknownUser`]; `new` held by another user:
    /// [`Error::DuplicateExternalId`]. Renaming to the same id is a no-op.
    pub fn rename_external_id(&self, old: &str, new: &str) -> Result<UserId> {
        self.write(|tx| {
            let ws = tx.state();
            let user = ws
                .users
                .match_external_id(old)
                .ok_or_else(|| Error::UnknownUser(UserRef::ExternalId(old.into()).to_string()))?;
            if ws.users.check_rename(user, new)? {
                tx.apply(Change::ExternalIdRenamed {
                    user,
                    from: old.into(),
                    to: new.into(),
                })?;
            }
            Ok(user)
        })
    }

    /// Saves a segment: creates it (`id` None: a new id is made) or
    /// replaces the name and filter of an existing one. Cohorts named by
    /// name are stored by cohort_id; a filter naming a cohort that does not
    /// exist is refused. Returns the stored segment.
    pub fn save_segment(
        &self,
        id: Option<&str>,
        name: &str,
        filter: &Filter,
    ) -> Result<SavedSegment> {
        self.store_segment(id, Some(name), Some(filter))
    }

    /// Renames a saved segment and/or replaces its filter (what is `None`
    /// is kept), in one change: concurrent updates of different parts do
    /// not undo each other.
    pub fn update_segment(
        &self,
        id: &str,
        name: Option<&str>,
        filter: Option<&Filter>,
    ) -> Result<SavedSegment> {
        self.store_segment(Some(id), name, filter)
    }

    fn store_segment(
        &self,
        id: Option<&str>,
        name: Option<&str>,
        filter: Option<&Filter>,
    ) -> Result<SavedSegment> {
        if let Some(f) = filter {
            self.check_filter(f)?;
        }
        if let Some(name) = name {
            if name.trim().is_empty() || name.len() > crate::cohorts::MAX_NAME_BYTES {
                return Err(Error::InvalidArgument(
                    "a segment name must be a non-empty string of at most 1024 bytes".into(),
                ));
            }
        }
        self.write(|tx| {
            let ws = tx.state();
            let (id, existing) = match id {
                Some(id) => match ws.segments.get(id) {
                    Some(s) => (id.to_string(), Some(s)),
                    None => return Err(Error::UnknownSegment { id: id.into() }),
                },
                None => (format!("seg_{}", super::keys::random_hex(8)), None),
            };
            let name = match (name, existing) {
                (Some(n), _) => n.to_string(),
                (None, Some(s)) => s.name.clone(),
                (None, None) => {
                    return Err(Error::InvalidArgument("a new segment needs a name".into()))
                }
            };
            let filter = match (filter, existing) {
                (Some(f), _) => {
                    let f = segment::resolve(ws, f)?;
                    segment::check_references(ws, Some(&id), &f)?;
                    f
                }
                (None, Some(s)) => s.filter.clone(),
                (None, None) => {
                    return Err(Error::InvalidArgument(
                        "a new segment needs a filter".into(),
                    ))
                }
            };
            tx.apply(Change::SegmentSaved {
                id: id.clone(),
                name,
                filter,
                at_ms: to_ms(Utc::now()),
            })?;
            tx.state()
                .segments
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::UnknownSegment { id: id.clone() })
        })
    }

    /// Records an audit entry of its own (`action` on `target`, by
    /// `ctx`): for a request whose changes were made by several writes
    /// (a bulk import), once they are made. Returns once it is durable.
    pub fn record_audit(
        &self,
        ctx: &audit::AuditContext,
        action: &str,
        target: &str,
        detail: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        self.write(|tx| {
            let seq = tx.state().audit.next_seq();
            let entry = audit::new_entry(ctx, action, seq, target, detail);
            tx.apply(Change::Audited(entry)).map(drop)
        })
    }

    /// Deletes a saved segment.
    pub fn delete_segment(&self, id: &str) -> Result<()> {
        self.write(|tx| {
            if !tx.state().segments.contains_key(id) {
                return Err(Error::UnknownSegment { id: id.into() });
            }
            let users: Vec<String> = tx
                .state()
                .segments
                .values()
                .filter(|s| s.id != id && s.filter.refers_to(id))
                .map(|s| s.id.clone())
                .collect();
            if !users.is_empty() {
                return Err(Error::SegmentInUse {
                    id: id.into(),
                    segments: users,
                });
            }
            tx.apply(Change::SegmentDeleted { id: id.into() })?;
            Ok(())
        })
    }

    /// A read view and the log sequence number of the last change it
    /// holds: the generation a query was computed on. A change undone
    /// after a log failure keeps its seq (never given to another change),
    /// and the undone state gets a new one.
    pub fn view(&self) -> (RwLockReadGuard<'_, Workspace>, u64) {
        let ws = self.read();
        if let Some(f) = self.followed.get() {
            // Stored under the write lock with the records applied.
            return (ws, f.load(Ordering::SeqCst));
        }
        // Changes are applied and submitted under the write lock, so while
        // the read lock is held the view holds exactly the records up to
        // the last one submitted.
        let seq = self.log().next_seq().saturating_sub(1);
        (ws, seq)
    }

    /// [`Self::view`] if it can be had without waiting: `None` while a
    /// writer holds (or waits for) the workspace's lock or its log is being
    /// switched. For answers given on a thread that must not block.
    pub fn try_view(&self) -> Option<(RwLockReadGuard<'_, Workspace>, u64)> {
        let ws = match self.state.try_read() {
            Ok(ws) => ws,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        if let Some(f) = self.followed.get() {
            return Some((ws, f.load(Ordering::SeqCst)));
        }
        let seq = match self.log.try_read() {
            Ok(log) => log.next_seq(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().next_seq(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some((ws, seq.saturating_sub(1)))
    }

    /// Serialized cohort bitmaps for the chunk evaluator, reused while a
    /// cohort does not change.
    pub fn bitmaps(&self) -> &crate::workspace::source::SerialCache {
        &self.bitmaps
    }

    /// Applies and logs a change the engine computed from the state
    /// (keys, partners). On an error the change is not applied (or was
    /// undone).
    pub(crate) fn commit(&self, change: Change) -> Result<()> {
        self.write(|tx| tx.apply(change).map(drop))
    }
}

/// The changes of one write, under the write lock: the state can be read,
/// and changed only by applying a change ([`record::apply`], as log replay
/// does), which is then logged with the write.
pub(crate) struct Tx<'a> {
    ws: &'a mut Workspace,
    /// Applied changes, to log in this order.
    records: Vec<Change>,
    /// Applied changes to log as one `Batch` record, and its size.
    group: (Vec<Change>, usize),
    /// A change failed to apply: the state may be part way through it.
    dirty: bool,
    /// What the applied changes touched, for the live segments.
    touched: Touched,
}

impl<'a> Tx<'a> {
    fn new(ws: &'a mut Workspace) -> Self {
        Tx {
            ws,
            records: Vec::new(),
            group: (Vec::new(), 0),
            dirty: false,
            touched: Touched::default(),
        }
    }

    /// The state, with every change applied so far.
    pub(crate) fn state(&self) -> &Workspace {
        self.ws
    }

    /// Applies a change computed from [`Self::state`], to be logged as a
    /// record of its own.
    pub(crate) fn apply(&mut self, change: Change) -> Result<Applied> {
        self.flush_group();
        let applied = self.apply_only(&change)?;
        self.records.push(change);
        Ok(applied)
    }

    /// Applies a change computed from [`Self::state`], to be logged in a
    /// `Batch` record with the changes applied by this before (up to
    /// [`RECORD_BUDGET`] bytes each).
    fn apply_grouped(&mut self, change: Change) -> Result<Applied> {
        let applied = self.apply_only(&change)?;
        self.group.1 += change.size_hint();
        self.group.0.push(change);
        if self.group.1 >= RECORD_BUDGET {
            self.flush_group();
        }
        Ok(applied)
    }

    fn apply_only(&mut self, change: &Change) -> Result<Applied> {
        let applied = record::apply(self.ws, change).inspect_err(|_| self.dirty = true)?;
        record::touched(change, &mut self.touched);
        Ok(applied)
    }

    fn flush_group(&mut self) {
        if !self.group.0.is_empty() {
            let (changes, _) = std::mem::take(&mut self.group);
            self.records.push(Change::Batch(changes));
        }
    }

    /// Applies (to be logged last) the audit entry of the changes applied
    /// so far, when [`audit::audited`] set a context on this thread.
    fn audit(&mut self) -> Result<()> {
        let Some((ctx, action)) = audit::current() else {
            return Ok(());
        };
        let seq = self.ws.audit.next_seq();
        let entry = audit::entry(
            &ctx,
            action,
            seq,
            self.records.iter().chain(self.group.0.iter()),
        );
        if let Some(entry) = entry {
            self.apply(Change::Audited(entry))?;
        }
        Ok(())
    }

    /// Whether a change was applied.
    fn changed(&self) -> bool {
        !self.records.is_empty() || !self.group.0.is_empty()
    }

    /// The records to log.
    fn finish(mut self) -> Vec<Change> {
        self.flush_group();
        self.records
    }
}

/// What [`WorkspaceHandle::delete_users`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeletedUsers {
    /// Users deleted (each once, however many identifiers named it).
    pub deleted: u64,
    /// Their ids, in the order first named.
    pub user_ids: Vec<u32>,
    /// The positions (from 0) of the identifiers nobody held.
    pub not_found: Vec<usize>,
    /// Cohort memberships removed with them.
    pub memberships_removed: u64,
    /// Custom attribute values removed with them.
    pub values_removed: u64,
}

/// What [`WorkspaceHandle::merge_users`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MergedUsers {
    /// The user merged away (deleted).
    pub source_user_id: u32,
    /// The user that stays.
    pub target_user_id: u32,
    /// Cohorts the target joined (the source's, less its own).
    pub cohorts_joined: u64,
    /// Attribute values the target took from the source.
    pub attributes_taken: u64,
    /// Device_ids moved to the target.
    pub devices_moved: u64,
    /// Aliases moved to the target.
    pub aliases_moved: u64,
}

/// What upserting `new` would do, as a change (none if the user holds
/// every identifier already), computed from the state without changing it:
/// the new user's id and bucket are chosen here.
fn user_change(ws: &Workspace, new: NewUser) -> Result<(Upserted, Option<Change>)> {
    Ok(match ws.users.plan_upsert(new)? {
        UpsertPlan::Create {
            user,
            external_id,
            devices,
            aliases,
            bucket,
        } => (
            Upserted {
                user,
                created: true,
            },
            Some(Change::UserCreated {
                user,
                external_id,
                devices,
                aliases,
                bucket,
            }),
        ),
        UpsertPlan::Extend {
            user,
            devices,
            aliases,
        } => {
            let mut added: Vec<Change> = devices
                .into_iter()
                .map(|device_id| Change::DeviceAdded { user, device_id })
                .collect();
            added.extend(aliases.into_iter().map(|(label, name)| Change::AliasAdded {
                user,
                label,
                name,
            }));
            let change = match added.len() {
                0 => None,
                1 => added.pop(),
                _ => Some(Change::Batch(added)),
            };
            (
                Upserted {
                    user,
                    created: false,
                },
                change,
            )
        }
    })
}

/// The durable state of a workspace, rebuilt as start-up builds it: the
/// snapshot of the manifest in force (the one `live` is served from, when
/// it is that one) and the durable records of the logs after it, the last
/// being `log`, the one in use. Called with the compaction lock
/// (`compacting`), `files` and the write lock held.
fn rebuild(
    name: &str,
    dir: &Path,
    files: &(Option<Manifest>, Vec<PathBuf>),
    log: &LogWriter,
    live: &Workspace,
    base: Option<&Workspace>,
) -> Result<Workspace> {
    let (manifest, chain) = files;
    let mut ws = match manifest {
        Some(m) => {
            let mapped = live
                .users
                .snapshot()
                .filter(|s| s.meta().is_ok_and(|meta| meta.seq == m.seq))
                .cloned();
            let snap = match mapped {
                Some(s) => s,
                None => Arc::new(compact::open_snapshot(dir, m)?),
            };
            let mut ws = super::persist::load_workspace(snap)?;
            ws.set_name(name);
            Some(ws)
        }
        // A workspace in memory: its log follows the state it started from.
        None => base.cloned(),
    };
    let mut replay = |path: &str, seq: u64, payload: &[u8]| -> Result<()> {
        let change = Change::decode(payload, path, seq)?;
        match (&mut ws, change) {
            (None, Change::WorkspaceCreated { seed, .. }) => {
                ws = Some(Workspace::new(name, seed));
                Ok(())
            }
            (None, other) => Err(Error::Corrupt {
                path: path.into(),
                reason: format!("the first record is {other:?}, not WorkspaceCreated"),
            }),
            (Some(w), change) => record::apply(w, &change)
                .map(drop)
                .map_err(|e| Error::Corrupt {
                    path: path.into(),
                    reason: format!("record {seq} does not apply: {e}"),
                }),
        }
    };
    let (current, before) = chain.split_last().ok_or_else(|| Error::Corrupt {
        path: dir.to_path_buf(),
        reason: "the workspace has no log".into(),
    })?;
    for path in before {
        // Logs before the one in use are complete; read, never cut.
        let shown = path.display().to_string();
        let mut file = crate::log::FsFile::open(path).map_err(Error::io_at(path))?;
        for r in LogWriter::scan(&mut file)?.records {
            replay(&shown, r.seq, &r.payload)?;
        }
    }
    let shown = current.display().to_string();
    let mut failed = Ok(());
    log.read_durable(&mut |seq, payload| {
        if failed.is_ok() {
            failed = replay(&shown, seq, payload);
        }
    })?;
    failed?;
    ws.ok_or_else(|| Error::Corrupt {
        path: shown.into(),
        reason: "no WorkspaceCreated record is durable".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_view_does_not_wait_for_a_writer() {
        let h = WorkspaceHandle::in_memory(Workspace::new("tv", 1)).expect("served");
        let seq = h.view().1;
        assert_eq!(h.try_view().map(|(_, s)| s), Some(seq));
        {
            // Readers share the lock.
            let _reader = h.read();
            assert!(h.try_view().is_some());
        }
        let writer = h.state.write().expect("the write lock");
        assert!(h.try_view().is_none());
        drop(writer);
        let log = h.log.write().expect("the log's lock");
        assert!(h.try_view().is_none());
        drop(log);
        assert!(h.try_view().is_some());
    }

    /// A write that takes the lock while another write's refused change
    /// is still in the state (marked stale, its undo not run yet) does not
    /// build on it: it goes back to undo it first.
    #[test]
    fn a_write_does_not_build_on_a_change_waiting_to_be_undone() {
        let h = WorkspaceHandle::in_memory(Workspace::new("stale", 1)).expect("served");
        let user = |ext: &str| NewUser {
            external_id: Some(ext.into()),
            ..NewUser::default()
        };
        h.upsert_user(user("a")).expect("created");
        // Another write applied a change never to be logged and let go of
        // the lock before undoing it.
        h.write_lock()
            .expect("locked")
            .users
            .create(user("ghost"))
            .expect("created");
        h.stale.store(true, Ordering::SeqCst);
        let mut f = Some(|_: &mut Tx<'_>| -> Result<()> { Ok(()) });
        assert!(matches!(h.write_locked(&mut f), Locked::LogFailed));
        assert!(f.is_some(), "not run on the state to be undone");
        // Through `write`: undone first, then applied.
        h.upsert_user(user("b")).expect("created");
        let ws = h.read();
        assert_eq!(ws.users.match_external_id("ghost"), None);
        assert_eq!(ws.users.match_external_id("b"), Some(UserId(1)));
        assert!(!h.stale.load(Ordering::SeqCst));
    }

    /// Identifiers matched before the write lock are matched again under
    /// it when a user changed in between.
    #[test]
    fn identifiers_matched_ahead_are_matched_again_after_a_user_change() {
        let h = WorkspaceHandle::in_memory(Workspace::new("ahead", 1)).expect("served");
        for ext in ["a", "c"] {
            h.upsert_user(NewUser {
                external_id: Some(ext.into()),
                ..NewUser::default()
            })
            .expect("created");
        }
        let body = serde_json::json!({
            "client_secret": "s", "partner_api_key": "k", "cohort_id": "c1",
            "cohort_changes": [{"user_ids": ["a", "b"]}],
        });
        let req = crate::import::parse_users_request(body.to_string().as_bytes()).expect("parsed");
        let now = Utc::now();
        let amp = Partner::Amplitude;
        let members = |h: &WorkspaceHandle| -> Vec<u32> {
            let ws = h.read();
            let key = crate::ids::CohortKey::new(amp, "c1");
            ws.cohorts.get(&key).map_or(Vec::new(), |c| {
                c.members.iter().expect("readable").collect()
            })
        };

        // Nothing changed in between: what was matched ahead is applied.
        let ahead = h.resolve_ahead(&req.cohort_changes);
        assert!(ahead.as_ref().is_some_and(|(_, r)| r.matched == 1));
        let report = h.import_resolved(amp, &req, now, ahead).expect("applied");
        assert_eq!((report.matched, report.unmatched), (1, 1));
        assert_eq!(members(&h), vec![0]);

        // `a` becomes `b` after the matching: the write matches again.
        let remove = serde_json::json!({
            "client_secret": "s", "partner_api_key": "k", "cohort_id": "c1",
            "cohort_changes": [{"user_ids": ["a", "c"], "should_remove": true}],
        });
        let remove =
            crate::import::parse_users_request(remove.to_string().as_bytes()).expect("parsed");
        let ahead = h.resolve_ahead(&remove.cohort_changes);
        assert!(ahead.as_ref().is_some_and(|(_, r)| r.matched == 2));
        h.rename_external_id("a", "b").expect("renamed");
        let report = h
            .import_resolved(amp, &remove, now, ahead)
            .expect("applied");
        assert_eq!((report.matched, report.unmatched), (1, 1));
        // User 0 (now `b`) stays: `a` matches nobody any more.
        assert_eq!(members(&h), vec![0]);
    }
}

/// Adds the time from its start to its drop to a total: how long a lock
/// that keeps writers out was held.
struct Held<'a>(&'a mut std::time::Duration, std::time::Instant);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.0 += self.1.elapsed();
    }
}

/// A workspace's compactions since it was opened (`/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Compactions that committed a snapshot.
    pub done: u64,
    /// Compactions that failed.
    pub failed: u64,
    /// Compactions under way now (0 or 1: they are serialised).
    pub running: u64,
    /// Time spent compacting, committed or not, in milliseconds.
    pub millis: u64,
    /// Of that, how long writers were kept out, in milliseconds.
    pub writers_held_millis: u64,
    /// The last committed compaction's time, in milliseconds.
    pub last_millis: u64,
}

#[derive(Default)]
struct CompactionCounters {
    done: AtomicU64,
    failed: AtomicU64,
    running: AtomicU64,
    millis: AtomicU64,
    writers_held_millis: AtomicU64,
    last_millis: AtomicU64,
}

/// One compaction under way: counted as running until finished (or
/// dropped, as a failure, should it unwind).
struct Running<'a> {
    counters: &'a CompactionCounters,
    started: std::time::Instant,
    finished: bool,
}

impl CompactionCounters {
    fn start(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::SeqCst);
        Running {
            counters: self,
            started: std::time::Instant::now(),
            finished: false,
        }
    }

    fn stats(&self) -> CompactionStats {
        CompactionStats {
            done: self.done.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            running: self.running.load(Ordering::SeqCst),
            millis: self.millis.load(Ordering::SeqCst),
            writers_held_millis: self.writers_held_millis.load(Ordering::SeqCst),
            last_millis: self.last_millis.load(Ordering::SeqCst),
        }
    }
}

impl Running<'_> {
    fn finish(mut self, done: Option<&Compacted>, held: std::time::Duration) {
        let c = self.counters;
        c.writers_held_millis
            .fetch_add(held.as_millis() as u64, Ordering::SeqCst);
        match done {
            Some(d) => {
                c.last_millis.store(d.took_ms, Ordering::SeqCst);
                c.done.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                c.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.finished = true;
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let c = self.counters;
        if !self.finished {
            c.failed.fetch_add(1, Ordering::SeqCst);
        }
        c.millis
            .fetch_add(self.started.elapsed().as_millis() as u64, Ordering::SeqCst);
        c.running.fetch_sub(1, Ordering::SeqCst);
    }
}

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
//! before it is acknowledged; an acknowledged change is always visible. If
//! a log write or fsync fails, the workspace refuses every later write
//! (`Error::WorkspaceFailed`) until segq restarts and replays its log: after
//! a failed fsync, what is on disk cannot be trusted to match memory.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::compact::{self, Compacted, Fs, Manifest, RealFs};
use super::record::{from_ms, to_ms, Change};
use crate::cohorts::{self, ChangeReport};
use crate::error::{Error, Result};
use crate::ids::{Partner, UserId, UserRef};
use crate::import::{CohortRequest, UsersRequest};
use crate::log::LogWriter;
use crate::segment::{self, Filter};
use crate::users::{NewUser, Upserted};
use crate::workspace::{SavedSegment, Workspace};

/// Bulk loads cut their log records at about this many bytes, far below
/// the log's record limit.
pub const RECORD_BUDGET: usize = 4 << 20;

/// What a bulk upsert did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchReport {
    pub created: u64,
    pub updated: u64,
    /// `(index in the batch, why)` of each user refused.
    pub failed: Vec<(usize, String)>,
}

/// One workspace, shared by the server's tasks.
pub struct WorkspaceHandle {
    name: String,
    state: RwLock<Workspace>,
    /// The current log; compaction replaces it by a fresh one.
    log: RwLock<Arc<LogWriter>>,
    failed: Mutex<Option<String>>,
    bitmaps: crate::segment::fast::SerialCache,
    /// The workspace's folder.
    dir: PathBuf,
    /// The manifest in force (None before the first compaction) and the
    /// logs after its snapshot, oldest first (the last is in use); also
    /// serialises compactions.
    files: Mutex<(Option<Manifest>, Vec<PathBuf>)>,
    /// When the state was last folded into a snapshot (or loaded).
    compacted_at: Mutex<std::time::Instant>,
    /// The most nodes a segment filter may have (`max_filter_nodes`).
    max_filter_nodes: usize,
}

impl std::fmt::Debug for WorkspaceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkspaceHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl WorkspaceHandle {
    pub(crate) fn new(
        ws: Workspace,
        log: LogWriter,
        dir: PathBuf,
        manifest: Option<Manifest>,
        logs: Vec<PathBuf>,
    ) -> Self {
        WorkspaceHandle {
            dir,
            files: Mutex::new((manifest, logs)),
            compacted_at: Mutex::new(std::time::Instant::now()),
            name: ws.name().to_string(),
            state: RwLock::new(ws),
            log: RwLock::new(Arc::new(log)),
            failed: Mutex::new(None),
            bitmaps: Default::default(),
            max_filter_nodes: crate::segment::DEFAULT_MAX_FILTER_NODES,
        }
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

    /// The manifest in force, if the workspace was ever compacted.
    pub fn manifest(&self) -> Option<Manifest> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
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

    /// Whether the log has grown past the configured thresholds.
    pub fn compaction_due(&self, config: &super::Config) -> bool {
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
        self.check_failed()?;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        // 1. Freeze. The read lock keeps writers out, so the state is
        //    exactly the log up to `seq`.
        let (frozen, seq) = {
            let ws = self.read();
            let log = self.log();
            let seq = log.next_seq().saturating_sub(1);
            if log.next_seq() > log.first_seq() {
                log.wait_durable(seq)
                    .map_err(|e| self.fail(format!("the log could not be made durable: {e}")))?;
                let (path, writer) = compact::rotate(fs, &self.dir, seq)?;
                *self.log.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(writer);
                files.1.push(path);
            }
            (ws.clone(), seq)
        };
        let log_name = files
            .1
            .last()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().to_string())
            .ok_or_else(|| Error::InvalidArgument("the workspace has no log".into()))?;
        // 2–3. Write the snapshot and commit it, writers going on.
        let (old, old_logs) = files.clone();
        let (manifest, done) =
            match compact::publish(fs, &self.dir, &frozen, seq, old.as_ref(), &log_name) {
                Ok(x) => x,
                Err(compact::Failed::Before(e)) => return Err(e),
                Err(compact::Failed::During(e)) => {
                    return Err(self.fail(format!(
                        "compaction failed at its commit point ({e}); restart to recover"
                    )))
                }
            };
        *files = (Some(manifest.clone()), vec![self.dir.join(&manifest.log)]);
        *self.compacted_at.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        // 4. Serve from the new snapshot. Should it not open, the old one
        //    (still mapped) goes on serving; a restart reads the new one.
        let path = self.dir.join(&manifest.snapshot);
        let moved = crate::snapshot::Snapshot::open(&path).and_then(|snap| {
            // Found and checked before the lock: under it, only what
            // changed since the freeze is moved.
            let prepared = crate::workspace::Rebase::prepare(&frozen, Arc::new(snap))?;
            let mut ws = self.write_lock()?;
            ws.apply_rebase(&frozen, prepared)
        });
        if let Err(e) = moved {
            eprintln!(
                "segq: workspace {}: serving from {} failed, the previous snapshot goes on: {e}",
                self.name,
                path.display()
            );
        }
        drop(frozen);
        if let Err(e) = compact::cleanup(fs, &self.dir, &manifest, old.as_ref(), &old_logs) {
            // Litter only: start-up removes it.
            eprintln!(
                "segq: workspace {}: removing the previous generation: {e}",
                self.name
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

    /// Runs `f` under the write lock; `f` changes the state (or refuses,
    /// changing nothing) and returns the records to log, if any. Returns
    /// once they are durable.
    ///
    /// Identifier and name lengths are bounded where they are checked, and
    /// bulk loads split their records (see [`RECORD_BUDGET`]), so a record
    /// always fits the log; should the log still refuse one, the workspace
    /// is marked failed, since memory would hold a change the log does not.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Workspace) -> Result<(T, Vec<Change>)>,
    ) -> Result<T> {
        self.check_failed()?;
        let (out, last, log) = {
            let mut ws = self.write_lock()?;
            let log = self.log();
            let (out, changes) = f(&mut ws)?;
            if changes.is_empty() {
                return Ok(out);
            }
            let payloads = changes
                .iter()
                .map(Change::encode)
                .collect::<Result<Vec<_>>>()
                .map_err(|e| self.fail(format!("a change applied but not logged: {e}")))?;
            match log.submit_batch(&payloads) {
                Ok(seqs) => (out, seqs.end - 1, log),
                Err(e) => return Err(self.fail(format!("a change applied but not logged: {e}"))),
            }
        };
        log.wait_durable(last)
            .map_err(|e| self.fail(format!("the log could not be made durable: {e}")))?;
        Ok(out)
    }

    /// `POST /partners/{partner}/cohorts`, after authorization. Returns
    /// whether the cohort was created.
    pub fn upsert_cohort(&self, partner: Partner, req: &CohortRequest) -> Result<bool> {
        self.write(|ws| {
            let created =
                ws.upsert_cohort(partner, &req.cohort_id, &req.name, Some(req.created_at))?;
            let change = Change::CohortUpserted {
                partner,
                cohort_id: req.cohort_id.clone(),
                name: req.name.clone(),
                created_at: req.created_at.to_rfc3339(),
            };
            Ok((created, vec![change]))
        })
    }

    /// `POST /partners/{partner}/cohorts/users`, after authorization.
    pub fn import_users(
        &self,
        partner: Partner,
        req: &UsersRequest,
        now: DateTime<Utc>,
    ) -> Result<ChangeReport> {
        // Records keep milliseconds: apply what replay will apply.
        let now = from_ms(to_ms(now));
        self.write(|ws| {
            cohorts::check_cohort_id(&req.cohort_id)?;
            if req.identifiers() == 0 {
                return Ok((ChangeReport::default(), Vec::new()));
            }
            let resolved = cohorts::resolve(&ws.users, &req.cohort_changes);
            let report = ws.apply_resolved(partner, &req.cohort_id, &resolved, now)?;
            let change = Change::CohortChanged {
                partner,
                cohort_id: req.cohort_id.clone(),
                at_ms: to_ms(now),
                resolved,
            };
            Ok((report, vec![change]))
        })
    }

    /// Creates a user, or adds identifiers to the user with that
    /// external_id.
    pub fn upsert_user(&self, new: NewUser) -> Result<Upserted> {
        self.write(|ws| upsert_logged(ws, new).map(|(u, c)| (u, c.into_iter().collect())))
    }

    /// Upserts many users; each is applied or refused on its own, and the
    /// applied ones are logged as few records (each under
    /// [`RECORD_BUDGET`]), acknowledged together.
    pub fn upsert_users(&self, batch: Vec<NewUser>) -> Result<BatchReport> {
        self.write(|ws| {
            let mut report = BatchReport::default();
            let mut records = Vec::new();
            let mut pending = Vec::new();
            let mut pending_bytes = 0;
            for (i, new) in batch.into_iter().enumerate() {
                match upsert_logged(ws, new) {
                    Ok((u, change)) => {
                        if u.created {
                            report.created += 1;
                        } else {
                            report.updated += 1;
                        }
                        if let Some(c) = change {
                            pending_bytes += c.size_hint();
                            pending.push(c);
                        }
                        if pending_bytes >= RECORD_BUDGET {
                            records.push(Change::Batch(std::mem::take(&mut pending)));
                            pending_bytes = 0;
                        }
                    }
                    Err(e) => report.failed.push((i, e.to_string())),
                }
            }
            if !pending.is_empty() {
                records.push(Change::Batch(pending));
            }
            Ok((report, records))
        })
    }

    fn find(ws: &Workspace, user: &UserRef) -> Result<UserId> {
        ws.users
            .lookup(user)
            .ok_or_else(|| Error::UnknownUser(user.to_string()))
    }

    /// Gives the user an alias (a no-op if it holds it already).
    pub fn add_alias(&self, user: &UserRef, label: &str, name: &str) -> Result<UserId> {
        self.write(|ws| {
            let id = Self::find(ws, user)?;
            if ws.users.lookup(&UserRef::Alias {
                label: label.into(),
                name: name.into(),
            }) == Some(id)
            {
                return Ok((id, Vec::new()));
            }
            ws.users.add_alias(id, label, name)?;
            let change = Change::AliasAdded {
                user: id,
                label: label.into(),
                name: name.into(),
            };
            Ok((id, vec![change]))
        })
    }

    /// Gives the user a device (a no-op if it holds it already).
    pub fn add_device(&self, user: &UserRef, device_id: &str) -> Result<UserId> {
        self.write(|ws| {
            let id = Self::find(ws, user)?;
            if ws.users.lookup(&UserRef::DeviceId(device_id.into())) == Some(id) {
                return Ok((id, Vec::new()));
            }
            ws.users.add_device(id, device_id)?;
            let change = Change::DeviceAdded {
                user: id,
                device_id: device_id.into(),
            };
            Ok((id, vec![change]))
        })
    }

    /// Identifies an anonymous user.
    pub fn identify(&self, user: &UserRef, external_id: &str) -> Result<UserId> {
        self.write(|ws| {
            let id = Self::find(ws, user)?;
            let already = ws.users.external_id(id) == Some(external_id);
            ws.users.identify(id, external_id)?;
            let change = (!already).then(|| Change::UserIdentified {
                user: id,
                external_id: external_id.into(),
            });
            Ok((id, change.into_iter().collect()))
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
        self.write(|ws| {
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
                (Some(f), _) => segment::resolve(ws, f)?,
                (None, Some(s)) => s.filter.clone(),
                (None, None) => {
                    return Err(Error::InvalidArgument(
                        "a new segment needs a filter".into(),
                    ))
                }
            };
            let change = Change::SegmentSaved {
                id: id.clone(),
                name,
                filter,
                at_ms: to_ms(Utc::now()),
            };
            super::record::apply(ws, &change)?;
            let saved = ws
                .segments
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::UnknownSegment { id: id.clone() })?;
            Ok((saved, vec![change]))
        })
    }

    /// Deletes a saved segment.
    pub fn delete_segment(&self, id: &str) -> Result<()> {
        self.write(|ws| {
            if ws.segments.remove(id).is_none() {
                return Err(Error::UnknownSegment { id: id.into() });
            }
            Ok(((), vec![Change::SegmentDeleted { id: id.into() }]))
        })
    }

    /// A read view and the log sequence number of the last change it
    /// holds: the generation a query was computed on.
    pub fn view(&self) -> (RwLockReadGuard<'_, Workspace>, u64) {
        let ws = self.read();
        // Changes are applied and submitted under the write lock, so while
        // the read lock is held the view holds exactly the records up to
        // the last one submitted.
        let seq = self.log().next_seq().saturating_sub(1);
        (ws, seq)
    }

    /// Serialized cohort bitmaps for the chunk evaluator, reused while a
    /// cohort does not change.
    pub fn bitmaps(&self) -> &crate::segment::fast::SerialCache {
        &self.bitmaps
    }

    /// Logs and applies a change computed by the engine (keys, partners).
    pub(crate) fn commit(&self, change: Change) -> Result<()> {
        self.write(|ws| {
            super::record::apply(ws, &change)?;
            Ok(((), vec![change]))
        })
    }
}

/// Upserts a user and describes what changed, if anything.
fn upsert_logged(ws: &mut Workspace, new: NewUser) -> Result<(Upserted, Option<Change>)> {
    let before = new
        .external_id
        .as_deref()
        .and_then(|e| ws.users.match_external_id(e))
        .and_then(|u| ws.users.get(u))
        .map(|r| (r.devices.len(), r.aliases.len()));
    let up = ws.users.upsert(new)?;
    let rec = ws
        .users
        .get(up.user)
        .ok_or_else(|| Error::UnknownUser(format!("with id {}", up.user)))?;
    let change = match before {
        None => Some(Change::UserCreated {
            user: up.user,
            external_id: rec.external_id.as_deref().map(str::to_string),
            devices: rec.devices.iter().map(|d| d.to_string()).collect(),
            aliases: rec
                .aliases
                .iter()
                .map(|(l, n)| (l.to_string(), n.to_string()))
                .collect(),
            bucket: rec.bucket,
        }),
        Some((devices, aliases)) => {
            let mut added: Vec<Change> = rec.devices[devices..]
                .iter()
                .map(|d| Change::DeviceAdded {
                    user: up.user,
                    device_id: d.to_string(),
                })
                .collect();
            added.extend(
                rec.aliases[aliases..]
                    .iter()
                    .map(|(l, n)| Change::AliasAdded {
                        user: up.user,
                        label: l.to_string(),
                        name: n.to_string(),
                    }),
            );
            match added.len() {
                0 => None,
                1 => added.pop(),
                _ => Some(Change::Batch(added)),
            }
        }
    };
    Ok((up, change))
}

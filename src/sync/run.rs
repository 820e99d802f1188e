//! One sync: create or rename the cohort, finish an interrupted sync,
//! then send what changed since the last one, a few batches in flight.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::import::format_created_at;

use super::plan::{Batch, Plan};
use super::retry::{verdict, Verdict};
use super::state::{Identity, Journal, Ledger, Pending, State};
use super::{IdKind, Job};

/// An HTTP response as a sync needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status.
    pub status: u16,
    /// The `Retry-After` header, when it has one that reads.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: String,
}

/// A request that got no response: a timeout, a refused or dropped
/// connection. Always retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoReply(pub String);

/// Sends a sync's requests: `POST {server}{path}` with a JSON body (its
/// bytes, serialized once and sent again as they are on a retry). The
/// command line's is an HTTP client; tests use scripted ones.
pub trait Transport: Sync {
    /// Sends one request and reads its whole response.
    fn post(&self, path: &str, body: &[u8]) -> std::result::Result<Reply, NoReply>;

    /// Waits `d` (the backoff between attempts); tests record instead.
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// What a sync reports while it runs (a progress bar, a log).
pub trait Observer: Sync {
    /// Batches and identifiers about to be sent.
    fn planned(&self, _batches: usize, _ids: usize) {}
    /// A batch of `ids` identifiers was acknowledged.
    fn acknowledged(&self, _ids: usize) {}
    /// `what` failed with `why` and is sent again after `wait`.
    fn retrying(&self, _what: &str, _why: &str, _wait: Duration) {}
}

/// An [`Observer`] that says nothing.
pub struct Quiet;

impl Observer for Quiet {}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Identifiers sent as entered (adds) by the plans this run carried
    /// out (an interrupted one it finished, then its own).
    pub entered: u64,
    /// Identifiers sent as left (removes) by those plans.
    pub left: u64,
    /// Batches sent and acknowledged in this run.
    pub batches: u64,
    /// Batches of an interrupted sync acknowledged before, not sent again.
    pub skipped_batches: u64,
    /// Identifiers the server matched to a user (its responses' sum).
    pub matched: u64,
    /// Identifiers that matched nobody.
    pub unmatched: u64,
    /// Device ids refused because their user is identified.
    pub refused: u64,
    /// Requests sent again after a retryable failure.
    pub retries: u64,
    /// Whether an interrupted sync was finished first.
    pub resumed: bool,
    /// Whether the run was stopped (Ctrl-C) before it was done: what was
    /// acknowledged is saved, the rest is sent by the next run.
    pub interrupted: bool,
    /// Seconds the run took.
    pub seconds: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: entered {}, left {}, batches {} (skipped {} acknowledged before), matched {}, unmatched {}, refused {}, retries {}, time {:.2}s",
            if self.interrupted { "interrupted" } else { "synced" },
            self.entered,
            self.left,
            self.batches,
            self.skipped_batches,
            self.matched,
            self.unmatched,
            self.refused,
            self.retries,
            self.seconds
        )
    }
}

/// Runs one sync of `members` for `job`: creates or renames the cohort,
/// finishes the interrupted sync the state file holds (sending only the
/// batches its journal does not hold), then sends who entered and who
/// left since the last successful sync, and commits the state. When
/// `stop` is set, no new batch is started: the batches in flight finish,
/// are journaled, and the summary says `interrupted`. (A [`Syncer`] does
/// the same and keeps the state in memory for the next run.)
pub fn sync_once(
    job: &Job,
    members: &BTreeSet<String>,
    transport: &dyn Transport,
    observer: &dyn Observer,
    stop: &AtomicBool,
) -> Result<Summary> {
    Syncer::new(job.clone()).sync(members, transport, observer, stop)
}

/// The identity of `job`'s state file.
pub fn identity(job: &Job) -> Identity {
    Identity {
        server: job.server.trim_end_matches('/').to_string(),
        partner: job.partner.as_str().to_string(),
        cohort_id: job.cohort_id.clone(),
        id_type: job.kind.tag(),
    }
}

/// One cohort's syncs, run after run, with the state read once and kept
/// in memory: a run then reads and writes only what changed (its plan in
/// the state's log), besides the one pass over the members that finds
/// the change. After a failed run the state is read again from its files
/// by the next one.
pub struct Syncer {
    job: Job,
    /// The state, while it is known to equal its files.
    ledger: Option<Ledger>,
}

impl Syncer {
    /// The syncs of `job` (nothing is read yet).
    pub fn new(job: Job) -> Syncer {
        Syncer { job, ledger: None }
    }

    /// The job.
    pub fn job(&self) -> &Job {
        &self.job
    }

    fn ledger(&mut self) -> Result<&mut Ledger> {
        if self.ledger.is_none() {
            self.ledger = Some(Ledger::open(&self.job.state, &identity(&self.job))?);
        }
        Ok(self.ledger.as_mut().expect("opened above"))
    }

    /// The state: the members of the last successful sync and the pending
    /// sync, if any.
    pub fn state(&mut self) -> Result<&State> {
        Ok(self.ledger()?.state())
    }

    /// One sync (as [`sync_once`]) to `members`, given in ascending order
    /// without repeats (a `BTreeSet`'s or a sorted list's order; anything
    /// else is refused before a request is sent).
    pub fn sync<'m>(
        &mut self,
        members: impl IntoIterator<Item = &'m String>,
        transport: &dyn Transport,
        observer: &dyn Observer,
        stop: &AtomicBool,
    ) -> Result<Summary> {
        let started = Instant::now();
        self.ledger()?;
        let mut ledger = self.ledger.take().expect("opened above");
        let run = Run {
            job: &self.job,
            transport,
            observer,
            stop,
            retries: AtomicU64::new(0),
        };
        let mut summary = Summary::default();
        let out = run.sync(&mut ledger, members, &mut summary);
        if out.is_ok() {
            self.ledger = Some(ledger);
        }
        summary.retries = run.retries.load(Ordering::Relaxed);
        summary.seconds = started.elapsed().as_secs_f64();
        out.map(|()| summary)
    }
}

struct Run<'a> {
    job: &'a Job,
    transport: &'a dyn Transport,
    observer: &'a dyn Observer,
    stop: &'a AtomicBool,
    retries: AtomicU64,
}

impl Run<'_> {
    fn sync<'m>(
        &self,
        ledger: &mut Ledger,
        members: impl IntoIterator<Item = &'m String>,
        summary: &mut Summary,
    ) -> Result<()> {
        let job = self.job;
        self.upsert_cohort()?;
        if ledger.state().pending.is_some() {
            summary.resumed = true;
            if !self.carry_out(ledger, summary)? {
                return Ok(());
            }
        }
        let mut unsorted = false;
        let mut previous: Option<&String> = None;
        let checked = members.into_iter().inspect(|m| {
            unsorted |= previous.is_some_and(|p| p >= *m);
            previous = Some(m);
        });
        let (plan, places) =
            Plan::placed(&ledger.state().members, checked, job.full, job.batch_size);
        if unsorted {
            // Before the plan is begun: nothing of it is sent.
            return Err(Error::InvalidArgument(
                "sync members must be given in ascending order without repeats".into(),
            ));
        }
        if plan.is_empty() {
            if ledger.state().synced_at.is_none() {
                // A first sync of an empty cohort: remember it was done.
                ledger.mark_synced(now())?;
            }
            return Ok(());
        }
        ledger.begin(
            Pending {
                id: format!("{:016x}", rand::random::<u64>()),
                entered: plan.entered,
                left: plan.left,
                full: job.full,
                batch_size: plan.batch_size,
            },
            Some(places),
        )?;
        self.carry_out(ledger, summary)?;
        Ok(())
    }

    /// Sends the batches of the pending sync its journal does not hold,
    /// then commits it; `false` when stopped before the end.
    fn carry_out(&self, ledger: &mut Ledger, summary: &mut Summary) -> Result<bool> {
        let path = &self.job.state;
        {
            let Some(pending) = ledger.state().pending.as_ref() else {
                return Ok(true);
            };
            summary.entered += pending.entered.len() as u64;
            summary.left += pending.left.len() as u64;
            let batches = pending.batches();
            let done = Journal::acknowledged(path, &pending.id)?;
            let todo: Vec<Batch<'_>> = batches
                .iter()
                .filter(|b| !done.contains(&b.index))
                .copied()
                .collect();
            summary.skipped_batches += (batches.len() - todo.len()) as u64;
            self.observer
                .planned(todo.len(), todo.iter().map(|b| b.ids.len()).sum());
            if !todo.is_empty() {
                let journal = Mutex::new(Journal::open(path)?);
                let sent = self.send_batches(&todo, &pending.id, &journal, summary)?;
                if sent < todo.len() {
                    summary.interrupted = true;
                    return Ok(false);
                }
            }
        }
        ledger.commit(now())?;
        Journal::remove(path)?;
        Ok(true)
    }

    /// Sends `todo` with `in_flight` requests at a time, journaling each
    /// acknowledgement; the number acknowledged. The first refusal stops
    /// new batches (those in flight finish) and is returned.
    fn send_batches(
        &self,
        todo: &[Batch<'_>],
        pending_id: &str,
        journal: &Mutex<Journal>,
        summary: &mut Summary,
    ) -> Result<usize> {
        let next = AtomicUsize::new(0);
        let acked = AtomicUsize::new(0);
        let halt = AtomicBool::new(false);
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        let totals = Mutex::new((0u64, 0u64, 0u64, 0u64));
        let workers = self.job.in_flight.clamp(1, todo.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if self.stop.load(Ordering::SeqCst) || halt.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(batch) = todo.get(i) else { return };
                    let outcome = self.send_batch(batch).and_then(|reply| match reply {
                        None => Ok(None),
                        Some(r) => {
                            let mut j = journal.lock().unwrap_or_else(|p| p.into_inner());
                            j.record(pending_id, batch.index).map(|()| Some(r))
                        }
                    });
                    match outcome {
                        Ok(Some(reply)) => {
                            let counts = counts(&reply.body);
                            let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                            t.0 += 1;
                            t.1 += counts.0;
                            t.2 += counts.1;
                            t.3 += counts.2;
                            drop(t);
                            acked.fetch_add(1, Ordering::SeqCst);
                            self.observer.acknowledged(batch.ids.len());
                        }
                        Ok(None) => return,
                        Err(e) => {
                            halt.store(true, Ordering::SeqCst);
                            let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
                            f.get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        let t = totals.into_inner().unwrap_or_else(|p| p.into_inner());
        summary.batches += t.0;
        summary.matched += t.1;
        summary.unmatched += t.2;
        summary.refused += t.3;
        if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        Ok(acked.into_inner())
    }

    fn send_batch(&self, batch: &Batch<'_>) -> Result<Option<Reply>> {
        let job = self.job;
        let body = UsersBody {
            partner_api_key: &job.partner_api_key,
            client_secret: &job.data_import_key,
            cohort_id: &job.cohort_id,
            cohort_changes: [job.kind.change_body(batch.ids, batch.remove)],
        };
        let path = format!("/partners/{}/cohorts/users", job.partner);
        self.send(&format!("batch {}", batch.index), &path, &to_bytes(&body)?)
    }

    fn upsert_cohort(&self) -> Result<()> {
        let job = self.job;
        let body = json!({
            "partner_api_key": job.partner_api_key,
            "client_secret": job.data_import_key,
            "cohort_id": job.cohort_id,
            "name": job.name,
            "created_at": now(),
        });
        let path = format!("/partners/{}/cohorts", job.partner);
        match self.send("create cohort", &path, &to_bytes(&body)?)? {
            Some(_) => Ok(()),
            // Stopped while retrying: nothing was sent; the batches
            // are not started either.
            None => Ok(()),
        }
    }

    /// Sends one request until it is acknowledged (`Some`), refused, out
    /// of attempts, or the run is stopped while it waits to retry
    /// (`None`: not acknowledged).
    fn send(&self, what: &str, path: &str, body: &[u8]) -> Result<Option<Reply>> {
        let policy = self.job.retry;
        let attempts = policy.attempts.max(1);
        let mut rng = rand::thread_rng();
        for attempt in 1..=attempts {
            let (after, why) = match self.transport.post(path, body) {
                Ok(reply) => match verdict(reply.status, reply.retry_after) {
                    Verdict::Done => return Ok(Some(reply)),
                    Verdict::Refuse => {
                        return Err(Error::SyncRefused {
                            what: what.to_string(),
                            status: reply.status,
                            message: message_of(&reply.body),
                        })
                    }
                    Verdict::Retry { after } => (
                        after,
                        format!("{} {}", reply.status, message_of(&reply.body)),
                    ),
                },
                Err(NoReply(why)) => (None, why),
            };
            if attempt == attempts {
                return Err(Error::SyncGaveUp {
                    what: what.to_string(),
                    attempts,
                    last: why,
                });
            }
            let wait = after.unwrap_or_else(|| policy.backoff(attempt - 1, &mut rng));
            self.retries.fetch_add(1, Ordering::Relaxed);
            self.observer.retrying(what, &why, wait);
            if !self.wait(wait) {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Waits `d` in slices, giving up (`false`) once the run is stopped.
    fn wait(&self, d: Duration) -> bool {
        const SLICE: Duration = Duration::from_millis(100);
        let mut left = d;
        while !left.is_zero() {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            let step = left.min(SLICE);
            self.transport.sleep(step);
            left -= step;
        }
        !self.stop.load(Ordering::SeqCst)
    }
}

/// A response's `message`, or its text (cut) when it is not JSON.
fn message_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// A users response's (matched, unmatched, refused_device_ids); 0 where a
/// server does not say.
fn counts(body: &str) -> (u64, u64, u64) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    (n("matched"), n("unmatched"), n("refused_device_ids"))
}

fn now() -> String {
    format_created_at(&chrono::Utc::now().fixed_offset())
}

/// A body's bytes.
fn to_bytes(body: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(body).map_err(|e| Error::Internal(format!("sync request body: {e}")))
}

/// A users request's body, borrowing the batch's identifiers.
#[derive(Serialize)]
struct UsersBody<'a> {
    partner_api_key: &'a str,
    client_secret: &'a str,
    cohort_id: &'a str,
    cohort_changes: [ChangeBody<'a>; 1],
}

/// A `cohort_changes` object, borrowing its identifiers.
#[derive(Serialize)]
pub struct ChangeBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user_ids: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_ids: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aliases: Option<AliasesBody<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    should_remove: bool,
}

/// Alias names, all with one label, as `[{"alias_name", "alias_label"}]`.
struct AliasesBody<'a> {
    names: &'a [String],
    label: &'a str,
}

impl Serialize for AliasesBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct One<'a> {
            alias_name: &'a str,
            alias_label: &'a str,
        }
        s.collect_seq(self.names.iter().map(|name| One {
            alias_name: name,
            alias_label: self.label,
        }))
    }
}

impl IdKind {
    /// A `cohort_changes` object adding (or removing) `ids`, as sent.
    pub fn change_body<'a>(&'a self, ids: &'a [String], remove: bool) -> ChangeBody<'a> {
        let mut c = ChangeBody {
            user_ids: None,
            device_ids: None,
            aliases: None,
            should_remove: remove,
        };
        match self {
            IdKind::ExternalId => c.user_ids = Some(ids),
            IdKind::DeviceId => c.device_ids = Some(ids),
            IdKind::Alias { label } => c.aliases = Some(AliasesBody { names: ids, label }),
        }
        c
    }
}

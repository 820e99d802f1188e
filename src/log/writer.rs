//! [`LogWriter`]: appends records and makes them durable with group commit.
//!
//! # Group commit (leader/follower, no extra thread)
//!
//! One mutex guards the writer's state: the next seq to hand out, the
//! encoded records waiting to be written (`pending`), the highest durable
//! seq, whether a commit is in progress, and the poison flag. The file
//! itself is owned by whichever thread is committing.
//!
//! 1. *Submit*: a caller copies and checksums its payload **outside** the
//!    lock, then, under it, takes the next seq, stamps it into the record
//!    and pushes the record onto `pending`. Seqs are therefore handed out in
//!    the order records enter the file.
//! 2. *Wait*: while its seq is not durable, the caller looks at the state.
//!    If no commit is running it becomes the **leader**: it takes all of
//!    `pending` and the file, releases the lock, writes the batch with one
//!    `append`, calls `sync` once, then re-locks, publishes the new durable
//!    seq and wakes every waiter. If a commit is running, it waits on the
//!    condvar; records submitted meanwhile pile up in `pending` and go out
//!    together in the next leader's batch, so under load one fsync covers
//!    many records. A would-be leader yields its time slice once before
//!    taking the batch, so that the appenders the last commit just woke can
//!    add their next records to it (without this, batches alternate between
//!    one record and the rest: 8 appenders averaged about 4 records per
//!    fsync in the tests; with it, about 7).
//! 3. *Failure*: if the write or the sync fails, the writer is poisoned:
//!    the failed batch and every record submitted after it are abandoned
//!    (their waiters get [`LogError::CommitFailed`]; their seqs are never
//!    handed out again, nor acknowledged later), and every later submit
//!    fails with [`LogError::Poisoned`] until the owner calls
//!    [`reset`](LogWriter::reset). A record is acknowledged (its `append`
//!    returns `Ok`) only after a sync that covered it succeeded.
//! 4. *Reset*: cuts the file back to its durable length (the bytes of the
//!    failed batch, whole or torn, go) and syncs the cut, appends one filler record per
//!    abandoned seq (a payload the owner chooses, saying they were
//!    abandoned: the log's seqs stay consecutive, and a recovery or replay
//!    reads them as ordinary records), and syncs. Only then does the
//!    writer take appends again, counting on from where it stopped. If the
//!    disk still refuses, the file is cut back again and the writer stays
//!    poisoned: reset can be retried. Until a reset succeeds, a crash may
//!    leave part of a failed record in the file; recovery cuts it, since
//!    it does not follow the durable records (or replays it whole, if a
//!    write reached the disk whose sync failed: as for any crash, a record
//!    that got an error may still be found by the next recovery).
//!
//! # Async callers
//!
//! The API blocks. The tokio server calls it inside
//! `tokio::task::spawn_blocking(move || log.append(&bytes))` with an
//! `Arc<LogWriter>`. To keep the log order equal to the order in which it
//! applies changes in memory, a caller can [`submit`](LogWriter::submit)
//! under its own lock (cheap, no I/O) and then
//! [`wait_durable`](LogWriter::wait_durable) outside it, in
//! `spawn_blocking`, before acknowledging.

use std::io;
use std::mem;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use super::error::LogError;
use super::format::{self, encode_header, PreparedRecord, Recovery};
use super::storage::LogFile;

/// One record read back from a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// Its sequence number.
    pub seq: u64,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// What [`LogWriter::open`] read: the good records in order, and the
/// recovery report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// The good records, in seq order.
    pub records: Vec<LogRecord>,
    /// What recovery found and cut.
    pub recovery: Recovery,
}

/// Counters of a writer since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Successful commits (one write and one sync each).
    pub commits: u64,
    /// Records made durable by them.
    pub records: u64,
}

/// The append side of a log. Share it as `Arc<LogWriter>`; every method
/// takes `&self`.
pub struct LogWriter {
    path: String,
    first_seq: u64,
    state: Mutex<State>,
    committed: Condvar,
}

struct State {
    /// `None` only while a leader holds it, or after a leader panicked.
    file: Option<Box<dyn LogFile>>,
    next_seq: u64,
    /// Every seq below this is durable.
    durable_end: u64,
    /// Length of the file up to the last durable record: where a reset
    /// cuts it.
    durable_len: u64,
    /// Encoded records with seqs from the end of the running commit (or
    /// `durable_end`) up to `next_seq`.
    pending: Vec<Vec<u8>>,
    committing: bool,
    poison: Option<Poison>,
    /// The seqs given up by failed commits, oldest first: never
    /// acknowledged, even once later seqs are durable.
    abandoned: Vec<Abandoned>,
    stats: WriterStats,
}

struct Poison {
    op: &'static str,
    source: Arc<io::Error>,
    /// Identifies this failure among all failures of all writers.
    id: u64,
}

struct Abandoned {
    seqs: Range<u64>,
    op: &'static str,
    source: Arc<io::Error>,
}

/// Numbers failures, so that an owner can tell whether it has handled
/// the current one already (see [`LogWriter::failure_id`]).
static FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_failure_id() -> u64 {
    FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl LogWriter {
    /// Starts a new log in an empty `file`: writes the header and syncs it.
    /// The first record appended gets seq `first_seq` (after a snapshot
    /// that covers seq N, start the next log at N + 1).
    pub fn create(file: impl LogFile + 'static, first_seq: u64) -> Result<LogWriter, LogError> {
        let mut file = file;
        let path = file.name();
        let len = file.len().map_err(|e| LogError::io(&path, "stat", e))?;
        if len != 0 {
            return Err(LogError::NotEmpty { path, found: len });
        }
        file.append(&encode_header(first_seq))
            .map_err(|e| LogError::io(&path, "write header", e))?;
        file.sync()
            .map_err(|e| LogError::io(&path, "sync header", e))?;
        Ok(Self::from_parts(
            Box::new(file),
            path,
            first_seq,
            first_seq,
            format::HEADER_LEN,
        ))
    }

    /// Opens an existing log: checks the header, reads every good record,
    /// and cuts the file after the last good one (see
    /// [`open_with`](Self::open_with)).
    pub fn open(file: impl LogFile + 'static) -> Result<(LogWriter, Replay), LogError> {
        let mut records = Vec::new();
        let (writer, recovery) = Self::open_with(file, |seq, payload| {
            records.push(LogRecord {
                seq,
                payload: payload.to_vec(),
            })
        })?;
        Ok((writer, Replay { records, recovery }))
    }

    /// Opens an existing log, handing each good record to `visit` in order
    /// (without collecting them), and recovers:
    ///
    /// - a header that is short, has the wrong magic, an unsupported version
    ///   or a bad checksum is an error naming the file; nothing is changed;
    /// - records are read until the first one that is torn, oversized, fails
    ///   its checksum or does not carry the next seq. That one and all bytes
    ///   after it are cut (truncate), even if good-looking records follow:
    ///   a record after a bad one cannot be trusted to belong after the
    ///   records before it, and replaying around a hole would apply changes
    ///   out of order. The [`Recovery`] says where, why, and how many bytes;
    /// - then the file is synced, whether or not it was cut, so that every
    ///   record replayed is durable before anything acts on it (a record
    ///   written by a process that died before its fsync may still be only
    ///   in the page cache).
    pub fn open_with(
        file: impl LogFile + 'static,
        mut visit: impl FnMut(u64, &[u8]),
    ) -> Result<(LogWriter, Recovery), LogError> {
        let mut file = file;
        let path = file.name();
        let recovery = format::scan(&mut file, &path, &mut visit)?;
        let writer = Self::recover(file, &recovery)?;
        Ok((writer, recovery))
    }

    /// Makes a log that [`scan`](Self::scan) read into a writer: cuts the
    /// file where the scan's `recovery` says, syncs it, and continues after
    /// the last good record. `open` is `scan` then `recover`; a caller that
    /// must look at the records before anything is cut scans first and
    /// calls this, instead of reading the file twice.
    pub fn recover(
        file: impl LogFile + 'static,
        recovery: &Recovery,
    ) -> Result<LogWriter, LogError> {
        let mut file = file;
        let path = file.name();
        if recovery.bytes_cut > 0 {
            file.truncate(recovery.valid_len)
                .map_err(|e| LogError::io(&path, "truncate damaged tail", e))?;
        }
        file.sync()
            .map_err(|e| LogError::io(&path, "sync after recovery", e))?;
        Ok(Self::from_parts(
            Box::new(file),
            path,
            recovery.first_seq,
            recovery.next_seq(),
            recovery.valid_len,
        ))
    }

    /// Reads a log without changing it: the records `open` would replay,
    /// and the cut it would make.
    pub fn scan(file: &mut dyn LogFile) -> Result<Replay, LogError> {
        let path = file.name();
        let mut records = Vec::new();
        let recovery = format::scan(file, &path, &mut |seq, payload| {
            records.push(LogRecord {
                seq,
                payload: payload.to_vec(),
            })
        })?;
        Ok(Replay { records, recovery })
    }

    /// [`Self::scan`] of the records from byte `offset` on, the first
    /// expected to be `first_seq`: the new bytes of a log that grew since
    /// it was read up to `offset` (a record boundary).
    pub fn scan_from(
        file: &mut dyn LogFile,
        offset: u64,
        first_seq: u64,
    ) -> Result<Replay, LogError> {
        let path = file.name();
        let mut records = Vec::new();
        let recovery = format::scan_from(file, &path, offset, first_seq, &mut |seq, payload| {
            records.push(LogRecord {
                seq,
                payload: payload.to_vec(),
            })
        })?;
        Ok(Replay { records, recovery })
    }

    fn from_parts(
        file: Box<dyn LogFile>,
        path: String,
        first_seq: u64,
        next_seq: u64,
        durable_len: u64,
    ) -> Self {
        LogWriter {
            path,
            first_seq,
            state: Mutex::new(State {
                file: Some(file),
                next_seq,
                durable_end: next_seq,
                durable_len,
                pending: Vec::new(),
                committing: false,
                poison: None,
                abandoned: Vec::new(),
                stats: WriterStats::default(),
            }),
            committed: Condvar::new(),
        }
    }

    /// Appends one record and returns its seq once it is durable.
    pub fn append(&self, payload: &[u8]) -> Result<u64, LogError> {
        let seq = self.submit(payload)?;
        self.wait_durable(seq)?;
        Ok(seq)
    }

    /// Appends records with consecutive seqs (nothing else is interleaved)
    /// and returns their seqs once all are durable. They usually go out in
    /// one write and one sync. If any payload is too large, nothing is
    /// appended. An empty batch returns an empty range at once.
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Range<u64>, LogError> {
        let seqs = self.submit_batch(payloads)?;
        if !seqs.is_empty() {
            self.wait_durable(seqs.end - 1)?;
        }
        Ok(seqs)
    }

    /// Queues one record without waiting and returns its seq. It is not
    /// durable, and must not be acknowledged, until
    /// [`wait_durable`](Self::wait_durable) for it (or a later seq) returns
    /// `Ok`. Records only submitted are written by the next commit that
    /// anyone waits for; if no one waits, they are lost when the writer is
    /// dropped.
    pub fn submit(&self, payload: &[u8]) -> Result<u64, LogError> {
        Ok(self.submit_batch(&[payload])?.start)
    }

    /// [`submit`](Self::submit) for several records with consecutive seqs.
    pub fn submit_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Range<u64>, LogError> {
        let prepared = payloads
            .iter()
            .map(|p| PreparedRecord::new(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut st = self.lock();
        if let Some(p) = &st.poison {
            return Err(self.poisoned(p));
        }
        let first = st.next_seq;
        let count = prepared.len() as u64;
        let end = first.checked_add(count).ok_or(LogError::SeqExhausted {
            path: self.path.clone(),
            next_seq: first,
            count,
        })?;
        st.pending.reserve(prepared.len());
        for (seq, record) in (first..end).zip(prepared) {
            st.pending.push(record.seal(seq));
        }
        st.next_seq = end;
        Ok(first..end)
    }

    /// Blocks until the record with this seq (and every earlier one) is
    /// durable, leading a commit if none is running. Seqs below the log's
    /// first seq are durable by definition. A seq abandoned by a failed
    /// commit gets [`LogError::CommitFailed`], also after a reset.
    pub fn wait_durable(&self, seq: u64) -> Result<(), LogError> {
        let mut st = self.lock();
        if seq >= st.next_seq {
            return Err(LogError::NotSubmitted {
                path: self.path.clone(),
                seq,
                next_seq: st.next_seq,
            });
        }
        let mut yielded = false;
        loop {
            if let Some(a) = st.abandoned.iter().rev().find(|a| a.seqs.contains(&seq)) {
                return Err(LogError::CommitFailed {
                    path: self.path.clone(),
                    op: a.op,
                    first_seq: a.seqs.start,
                    last_seq: a.seqs.end - 1,
                    source: a.source.clone(),
                });
            }
            if seq < st.durable_end {
                return Ok(());
            }
            if let Some(p) = &st.poison {
                // Only a seq burned for an undo can get here: nobody waits
                // for those.
                return Err(self.poisoned(p));
            }
            if st.committing {
                st = self
                    .committed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            } else if !yielded {
                // About to lead. First let the appenders that the last
                // commit just woke add their next records, so they join this
                // batch instead of waiting for the one after it. Costs one
                // sched_yield, nothing next to an fsync.
                yielded = true;
                drop(st);
                std::thread::yield_now();
                st = self.lock();
            } else {
                yielded = false;
                st = self.commit(st);
            }
        }
    }

    /// Leads one commit: writes and syncs everything pending. Called with
    /// the lock held and no commit running; returns with the lock held.
    fn commit<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let Some(mut file) = st.file.take() else {
            // Only possible after a leader panicked; that poisoned the log.
            self.fail_pending(
                &mut st,
                "commit",
                Arc::new(io::Error::other("the log file was lost")),
            );
            return st;
        };
        let batch = mem::take(&mut st.pending);
        let batch_end = st.next_seq;
        let batch_len: u64 = batch.iter().map(|r| r.len() as u64).sum();
        st.committing = true;
        drop(st);

        let mut guard = PanicGuard {
            writer: self,
            armed: true,
        };
        let result = write_and_sync(&mut *file, &batch);
        guard.armed = false;

        let mut st = self.lock();
        st.file = Some(file);
        st.committing = false;
        match result {
            Ok(()) => {
                st.stats.commits += 1;
                st.stats.records += batch.len() as u64;
                st.durable_end = batch_end;
                st.durable_len += batch_len;
            }
            Err((op, source)) => self.fail_pending(&mut st, op, Arc::new(source)),
        }
        self.committed.notify_all();
        st
    }

    /// Poisons the writer after a failed commit: every seq not durable is
    /// abandoned, and what is pending is dropped.
    fn fail_pending(&self, st: &mut State, op: &'static str, source: Arc<io::Error>) {
        st.pending.clear();
        if st.durable_end < st.next_seq {
            let seqs = st.durable_end..st.next_seq;
            st.abandoned.push(Abandoned {
                seqs,
                op,
                source: source.clone(),
            });
        }
        if st.poison.is_none() {
            st.poison = Some(Poison {
                op,
                source,
                id: next_failure_id(),
            });
        }
    }

    /// Identifies the failure the writer is poisoned by, `None` when it is
    /// not: an owner that undid the changes of the abandoned records keeps
    /// it, so that it undoes them once however often it retries a reset.
    pub fn failure_id(&self) -> Option<u64> {
        self.lock().poison.as_ref().map(|p| p.id)
    }

    /// While the writer is poisoned, hands out one more seq that no record
    /// will carry (the reset fills it with a filler) and returns it. The
    /// owner takes one after undoing the abandoned changes, so that the
    /// undone state has a seq of its own, never reported for another
    /// state. `None` when the writer is not poisoned.
    pub fn burn_seq(&self) -> Option<u64> {
        let mut st = self.lock();
        st.poison.as_ref()?;
        let seq = st.next_seq;
        st.next_seq = seq.checked_add(1)?;
        Some(seq)
    }

    /// Makes a poisoned writer take appends again (see the module
    /// documentation): cuts the file to its durable length, appends one
    /// record with `filler(abandoned)` as payload for each seq not durable
    /// (abandoned or burned) and syncs. Returns those seqs; the next record
    /// gets the seq after them. A writer that is not poisoned is left
    /// alone (an empty range). On an error the file is cut back again, as
    /// far as the disk allows, and the writer stays poisoned: call again
    /// later. An error of `filler` is returned as it is, nothing done.
    pub fn reset<E: From<LogError>>(
        &self,
        filler: impl FnOnce(Range<u64>) -> Result<Vec<u8>, E>,
    ) -> Result<Range<u64>, E> {
        let mut st = self.lock();
        while st.committing {
            st = self
                .committed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if st.poison.is_none() {
            return Ok(st.next_seq..st.next_seq);
        }
        let seqs = st.durable_end..st.next_seq;
        let payload = filler(seqs.clone())?;
        let mut bytes = Vec::new();
        for seq in seqs.clone() {
            bytes.extend(PreparedRecord::new(&payload)?.seal(seq));
        }
        let durable_len = st.durable_len;
        let Some(file) = st.file.as_mut() else {
            return Err(self.file_lost(None).into());
        };
        // The cut is synced on its own first: a crash from here on finds
        // no byte of an abandoned record, whatever becomes of the fillers.
        let result = file
            .truncate(durable_len)
            .map_err(|e| ("truncate", e))
            .and_then(|()| file.sync().map_err(|e| ("sync", e)))
            .and_then(|()| write_and_sync(&mut **file, std::slice::from_ref(&bytes)));
        if result.is_err() {
            // Leave no filler bytes behind: the next reset starts from the
            // durable length again.
            let _ = file.truncate(durable_len).and_then(|()| file.sync());
        }
        match result {
            Ok(()) => {
                st.durable_end = seqs.end;
                st.durable_len += bytes.len() as u64;
                st.poison = None;
                st.stats.commits += 1;
                st.stats.records += seqs.end - seqs.start;
                Ok(seqs)
            }
            Err((op, source)) => {
                let source = Arc::new(source);
                if let Some(p) = st.poison.as_mut() {
                    p.op = op;
                    p.source = source.clone();
                }
                Err(LogError::Poisoned {
                    path: self.path.clone(),
                    op,
                    source,
                }
                .into())
            }
        }
    }

    /// Reads back the records of this file that are durable, in order,
    /// handing each to `visit` (for an owner that rebuilds its state after
    /// a failure). Waits for a running commit to end; appends wait while it
    /// reads. Fails if the durable part does not read back whole.
    pub fn read_durable(&self, visit: &mut dyn FnMut(u64, &[u8])) -> Result<(), LogError> {
        let mut st = self.lock();
        while st.committing {
            st = self
                .committed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let State {
            file,
            durable_len,
            durable_end,
            poison,
            ..
        } = &mut *st;
        let (durable_len, durable_end) = (*durable_len, *durable_end);
        let Some(file) = file.as_mut() else {
            return Err(self.file_lost(poison.as_ref()));
        };
        let mut prefix = Prefix {
            file: &mut **file,
            len: durable_len,
        };
        let recovery = format::scan(&mut prefix, &self.path, visit)?;
        if recovery.valid_len != durable_len || recovery.next_seq() != durable_end {
            return Err(LogError::io(
                &self.path,
                "read back",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the durable records end at seq {} and offset {durable_len}, \
                         but they read back as {recovery}",
                        durable_end.saturating_sub(1)
                    ),
                ),
            ));
        }
        Ok(())
    }

    fn file_lost(&self, poison: Option<&Poison>) -> LogError {
        match poison {
            Some(p) => self.poisoned(p),
            None => LogError::io(
                &self.path,
                "commit",
                io::Error::other("the log file was lost"),
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is updated in small steps that cannot panic halfway;
        // a panic elsewhere while the lock was held leaves it usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poisoned(&self, p: &Poison) -> LogError {
        LogError::Poisoned {
            path: self.path.clone(),
            op: p.op,
            source: p.source.clone(),
        }
    }

    /// The file's name (path, or `memory:NAME`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The seq of the first record this file holds (from its header).
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The seq the next submitted record will get.
    pub fn next_seq(&self) -> u64 {
        self.lock().next_seq
    }

    /// The highest durable seq, if any record of this file is durable.
    pub fn durable_seq(&self) -> Option<u64> {
        let end = self.lock().durable_end;
        (end > self.first_seq).then(|| end - 1)
    }

    /// The durable part of the file: its length in bytes (header
    /// included) and the seq after its last durable record. Bytes past
    /// the length may be a commit under way or a failed one: only this
    /// prefix is ever to be copied elsewhere.
    pub fn durable_position(&self) -> (u64, u64) {
        let st = self.lock();
        (st.durable_len, st.durable_end)
    }

    /// True after a failed write or sync, until a successful
    /// [`reset`](Self::reset): every append fails meanwhile.
    pub fn is_poisoned(&self) -> bool {
        self.lock().poison.is_some()
    }

    /// The writer's counters since it was opened.
    pub fn stats(&self) -> WriterStats {
        self.lock().stats
    }
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("LogWriter")
            .field("path", &self.path)
            .field("first_seq", &self.first_seq)
            .field("next_seq", &st.next_seq)
            .field("durable_end", &st.durable_end)
            .field("poisoned", &st.poison.is_some())
            .finish()
    }
}

/// One `append` for the whole batch, then one `sync`.
fn write_and_sync(
    file: &mut dyn LogFile,
    batch: &[Vec<u8>],
) -> Result<(), (&'static str, io::Error)> {
    match batch {
        [] => {}
        [one] => file.append(one).map_err(|e| ("write", e))?,
        many => {
            let total = many.iter().map(Vec::len).sum();
            let mut buf = Vec::with_capacity(total);
            for r in many {
                buf.extend_from_slice(r);
            }
            file.append(&buf).map_err(|e| ("write", e))?;
        }
    }
    file.sync().map_err(|e| ("sync", e))
}

/// If the leader panics during I/O, poison the log and wake the waiters
/// instead of leaving them blocked behind a commit that never ends.
struct PanicGuard<'a> {
    writer: &'a LogWriter,
    armed: bool,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.writer.lock();
            st.committing = false;
            // The file went with the panicking leader: the writer stays
            // poisoned (a reset finds no file).
            self.writer.fail_pending(
                &mut st,
                "commit",
                Arc::new(io::Error::other("a thread panicked while committing")),
            );
            self.writer.committed.notify_all();
        }
    }
}

/// The first `len` bytes of a file, read-only: what a scan of the durable
/// records sees.
struct Prefix<'a> {
    file: &'a mut dyn LogFile,
    len: u64,
}

impl LogFile for Prefix<'_> {
    fn name(&self) -> String {
        self.file.name()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.len()?.min(self.len))
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.len.saturating_sub(offset);
        let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.file.read_at(offset, &mut buf[..n])
    }
    fn append(&mut self, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("read-only view of a log"))
    }
    fn sync(&mut self) -> io::Result<()> {
        Err(io::Error::other("read-only view of a log"))
    }
    fn truncate(&mut self, _: u64) -> io::Result<()> {
        Err(io::Error::other("read-only view of a log"))
    }
}

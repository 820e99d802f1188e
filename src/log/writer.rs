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
//!    every waiter whose record is not durable gets an error
//!    ([`LogError::CommitFailed`] for records in or before the failed batch,
//!    [`LogError::Poisoned`] for the rest) and every later append fails. A
//!    record is acknowledged (its `append` returns `Ok`) only after a sync
//!    that covered it succeeded. An error does not say the record is absent:
//!    a record that got an error may still be found by the next recovery.
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
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// What [`LogWriter::open`] read: the good records in order, and the
/// recovery report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    pub records: Vec<LogRecord>,
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
    /// Encoded records with seqs from the end of the running commit (or
    /// `durable_end`) up to `next_seq`.
    pending: Vec<Vec<u8>>,
    committing: bool,
    poison: Option<Poison>,
    stats: WriterStats,
}

struct Poison {
    op: &'static str,
    source: Arc<io::Error>,
    /// Seqs `durable_end..batch_end` were in or before the failed batch.
    batch_end: u64,
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
        Ok(Self::from_parts(Box::new(file), path, first_seq, first_seq))
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

    fn from_parts(file: Box<dyn LogFile>, path: String, first_seq: u64, next_seq: u64) -> Self {
        LogWriter {
            path,
            first_seq,
            state: Mutex::new(State {
                file: Some(file),
                next_seq,
                durable_end: next_seq,
                pending: Vec::new(),
                committing: false,
                poison: None,
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
    /// first seq are durable by definition.
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
            if seq < st.durable_end {
                return Ok(());
            }
            if let Some(p) = &st.poison {
                return Err(if seq < p.batch_end {
                    LogError::CommitFailed {
                        path: self.path.clone(),
                        op: p.op,
                        first_seq: st.durable_end,
                        last_seq: p.batch_end - 1,
                        source: p.source.clone(),
                    }
                } else {
                    self.poisoned(p)
                });
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
            let batch_end = st.next_seq;
            st.poison.get_or_insert_with(|| Poison {
                op: "commit",
                source: Arc::new(io::Error::other("the log file was lost")),
                batch_end,
            });
            return st;
        };
        let batch = mem::take(&mut st.pending);
        let batch_end = st.next_seq;
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
            }
            Err((op, source)) => {
                st.poison = Some(Poison {
                    op,
                    source: Arc::new(source),
                    batch_end,
                });
            }
        }
        self.committed.notify_all();
        st
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

    /// True after a failed write or sync: every append fails from now on.
    pub fn is_poisoned(&self) -> bool {
        self.lock().poison.is_some()
    }

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
            let batch_end = st.next_seq;
            st.poison.get_or_insert_with(|| Poison {
                op: "commit",
                source: Arc::new(io::Error::other("a thread panicked while committing")),
                batch_end,
            });
            self.writer.committed.notify_all();
        }
    }
}

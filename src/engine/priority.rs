//! Thread priorities: the work that can wait gives way to queries.
//!
//! On a busy machine every runnable thread gets its share of the cores in
//! turn, so a one-user check that takes microseconds can wait for several
//! import and compaction threads' time slices. The threads that apply
//! partner imports and write compactions therefore run at a higher nice
//! value (`import_nice`, `compaction_nice` in `segq.json`): they still
//! get every idle cycle, but a query thread that wakes up runs first. Nice
//! values only go up without privileges, so a thread is lowered once, when
//! it starts, and threads it starts inherit its value: a lowered thread
//! must not be the first to start a shared pool (the server starts
//! rayon's before its import threads).
//!
//! A lowered thread must not hold a lock queries wait for: busy cores may
//! keep it from running while it holds it (a priority inversion: a check
//! waits for the import's time slice). So the steps a lowered thread
//! takes under a workspace's write lock (or under the read lock that
//! keeps writers, and so the queries queued behind them, out) are handed
//! to the lock holders, threads at the normal priority started before
//! any is lowered ([`start_lock_holders`], [`holding_locks`]).

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// The highest nice value (the lowest priority).
pub const MAX_NICE: i32 = 19;

/// The lock holders: a pool at the nice value of the thread that started
/// it, and the gate its jobs pass one at a time.
struct Holders {
    pool: rayon::ThreadPool,
    nice: Option<i32>,
    gate: Mutex<()>,
}

static HOLDERS: OnceLock<Holders> = OnceLock::new();

thread_local! {
    /// Whether this thread runs below the lock holders' priority.
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// Starts the lock holders (once; later calls do nothing): as many
/// threads as rayon's global pool has (steps that run in parallel inside,
/// such as a live segment's refresh, keep the cores), named
/// `segq-locks-N`, at the calling thread's priority. Call it on a thread
/// that is not lowered, before lowering any.
pub fn start_lock_holders() -> Result<()> {
    if HOLDERS.get().is_some() {
        return Ok(());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads().max(1))
        .thread_name(|i| format!("segq-locks-{i}"))
        .build()
        .map_err(|e| Error::Internal(format!("starting the lock holders: {e}")))?;
    let _ = HOLDERS.set(Holders {
        pool,
        nice: current_nice(),
        gate: Mutex::new(()),
    });
    Ok(())
}

/// Runs `f`, which takes a lock queries may wait for, at the normal
/// priority: on a lowered thread ([`lower_current_thread`] after
/// [`start_lock_holders`]), on a lock holder, the caller waiting; at once
/// anywhere else. `f` should do no more than needs its lock: while a
/// holder waits, every lowered thread's next step waits with it. (A
/// compaction's freeze waits there for the log's last fsync, which a
/// lowered writer may be doing, and rotates the log: both must happen
/// under its read lock.)
///
/// One step at a time: lowered threads wait for their turn at a gate no
/// query waits for, so that at most one of them waits for a workspace's
/// lock at once and readers get in between two writes (a lock that
/// always has the next writer waiting lets no reader in).
pub fn holding_locks<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match HOLDERS.get() {
        Some(h) if LOWERED.get() => {
            let _turn = h.gate.lock().unwrap_or_else(|p| p.into_inner());
            h.pool.install(f)
        }
        _ => f(),
    }
}

/// Sets the calling thread's nice value to `nice` (0..=19) if it is
/// lower; never raises a thread's priority. A no-op where the platform
/// has no per-thread nice value (outside Linux).
pub fn lower_current_thread(nice: i32) -> Result<()> {
    if !(0..=MAX_NICE).contains(&nice) {
        return Err(Error::InvalidArgument(format!(
            "a nice value is 0 to {MAX_NICE}, not {nice}"
        )));
    }
    imp::lower(nice)?;
    if let (Some(h), Some(now)) = (HOLDERS.get(), current_nice()) {
        LOWERED.set(h.nice.is_some_and(|base| now > base));
    }
    Ok(())
}

/// The calling thread's nice value (`None` outside Linux).
pub fn current_nice() -> Option<i32> {
    imp::current()
}

#[cfg(target_os = "linux")]
mod imp {
    use crate::error::{Error, Result};
    use rustix::process::{getpriority_process, setpriority_process};
    use rustix::thread::gettid;

    // On Linux the nice value belongs to the thread: PRIO_PROCESS with a
    // thread id sets that thread's alone.
    pub(super) fn lower(nice: i32) -> Result<()> {
        let me = Some(gettid());
        let now = getpriority_process(me)
            .map_err(|e| Error::Internal(format!("reading the thread's priority: {e}")))?;
        if now >= nice {
            return Ok(());
        }
        setpriority_process(me, nice)
            .map_err(|e| Error::Internal(format!("lowering the thread's priority to {nice}: {e}")))
    }

    pub(super) fn current() -> Option<i32> {
        getpriority_process(Some(gettid())).ok()
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use crate::error::Result;

    pub(super) fn lower(_nice: i32) -> Result<()> {
        Ok(())
    }

    pub(super) fn current() -> Option<i32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_lowered_alone_and_never_raised() {
        let before = current_nice();
        let seen = std::thread::spawn(|| {
            lower_current_thread(7).unwrap();
            let lowered = current_nice();
            // Asking for a higher priority changes nothing.
            lower_current_thread(3).unwrap();
            // A thread it starts inherits its value.
            let child = std::thread::spawn(current_nice).join().unwrap();
            (lowered, current_nice(), child)
        })
        .join()
        .unwrap();
        if cfg!(target_os = "linux") {
            let base = before.unwrap();
            let want = Some(base.max(7));
            assert_eq!(seen, (want, want, want));
            // The spawning thread kept its own.
            assert_eq!(current_nice(), before);
        } else {
            assert_eq!(seen, (None, None, None));
        }
        assert!(lower_current_thread(20).is_err());
        assert!(lower_current_thread(-1).is_err());
    }

    #[test]
    fn lowered_threads_take_locks_at_the_normal_priority_one_at_a_time() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        start_lock_holders().unwrap();
        // A thread that is not lowered runs the step itself.
        let me = std::thread::current().id();
        assert_eq!(holding_locks(|| std::thread::current().id()), me);
        let base = current_nice();
        if !cfg!(target_os = "linux") || base.is_some_and(|b| b >= MAX_NICE) {
            return;
        }
        let (inside, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let seen: Vec<_> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        lower_current_thread(MAX_NICE).unwrap();
                        holding_locks(|| {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            inside.fetch_sub(1, Ordering::SeqCst);
                            let name = std::thread::current().name().map(str::to_string);
                            (current_nice(), name)
                        })
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for (nice, name) in &seen {
            assert_eq!(*nice, base, "{seen:?}");
            assert!(
                name.as_deref()
                    .is_some_and(|n| n.starts_with("segq-locks-")),
                "{seen:?}"
            );
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "one step at a time");
    }
}

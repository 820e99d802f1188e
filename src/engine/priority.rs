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

use crate::error::{Error, Result};

/// The highest nice value (the lowest priority).
pub const MAX_NICE: i32 = 19;

/// Sets the calling thread's nice value to `nice` (0..=19) if it is
/// lower; never raises a thread's priority. A no-op where the platform
/// has no per-thread nice value (outside Linux).
pub fn lower_current_thread(nice: i32) -> Result<()> {
    if !(0..=MAX_NICE).contains(&nice) {
        return Err(Error::InvalidArgument(format!(
            "a nice value is 0 to {MAX_NICE}, not {nice}"
        )));
    }
    imp::lower(nice)
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
}

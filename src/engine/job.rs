//! Work that runs on a thread of its own and whose result is collected
//! later, by whoever polls for it: the primary's snapshot uploads
//! (`store`) and a replica's snapshot downloads and workspace builds
//! (`replica`).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// A result slot filled by a thread of its own.
pub(crate) struct Job<T> {
    result: Arc<Mutex<Option<Result<T>>>>,
    thread: JoinHandle<()>,
}

impl<T: Send + 'static> Job<T> {
    /// Runs `work` on a thread named `name`; once it ended, its result is
    /// in the slot and only then `then` runs (a wake-up sent by `then`
    /// always finds the result). A job dropped before its result was
    /// taken lets the thread finish, and the result is dropped with the
    /// thread's end.
    pub(crate) fn spawn(
        name: &str,
        work: impl FnOnce() -> Result<T> + Send + 'static,
        then: impl FnOnce() + Send + 'static,
    ) -> Result<Job<T>> {
        let result = Arc::new(Mutex::new(None));
        let slot = result.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let r = work();
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                drop(slot);
                then();
            })
            .map_err(|e| Error::Internal(format!("starting {name}: {e}")))?;
        Ok(Job { result, thread })
    }

    /// The result once the work ended (with `wait`, waits for it); the
    /// job back while it runs.
    pub(crate) fn result(self, wait: bool) -> std::result::Result<Result<T>, Job<T>> {
        let taken = self.result.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(r) => Ok(r),
            None if wait => {
                let name = self.thread.thread().name().unwrap_or("a job").to_string();
                let _ = self.thread.join();
                let r = self.result.lock().unwrap_or_else(|p| p.into_inner()).take();
                Ok(r.unwrap_or_else(|| Err(Error::Internal(format!("{name} panicked")))))
            }
            None => Err(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_result_is_there_before_the_wake_up_and_running_jobs_come_back() {
        let (go, gate) = mpsc::channel::<()>();
        let (woke, woken) = mpsc::channel::<bool>();
        type Slot = Arc<Mutex<Option<Result<u32>>>>;
        let seen: Arc<Mutex<Option<Slot>>> = Arc::default();
        let job = Job::spawn(
            "test-job",
            move || {
                gate.recv().unwrap();
                Ok(7)
            },
            {
                let seen = seen.clone();
                move || {
                    let slot = seen.lock().unwrap().clone().unwrap();
                    let there = slot.lock().unwrap().is_some();
                    woke.send(there).unwrap();
                }
            },
        )
        .unwrap();
        *seen.lock().unwrap() = Some(job.result.clone());
        let job = job.result(false).expect_err("still running");
        go.send(()).unwrap();
        assert!(woken.recv_timeout(Duration::from_secs(10)).unwrap());
        assert_eq!(job.result(false).ok().unwrap().unwrap(), 7);
    }

    #[test]
    fn waiting_joins_and_a_panic_is_an_error() {
        let job = Job::<u32>::spawn("panicking-job", || panic!("on purpose"), || {}).unwrap();
        let r = job.result(true).ok().expect("waited");
        let e = r.unwrap_err().to_string();
        assert!(e.contains("panicking-job panicked"), "{e}");
        let job = Job::spawn("slow-job", || Ok(3u8), || {}).unwrap();
        assert_eq!(job.result(true).ok().unwrap().unwrap(), 3);
    }
}

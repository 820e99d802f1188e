//! The threads that apply imports: partner cohort requests and bulk user
//! imports run here, at the nice value `import_nice` of `segq.json`, so
//! that on busy cores queries (on the HTTP and query threads) run first
//! and imports take the cycles left ([`crate::engine::priority`]).
//!
//! A pool of its own (a tokio runtime used for its blocking pool alone:
//! threads started on demand, each lowered as it starts, and ended after
//! a while idle), because a thread's priority cannot be raised back
//! without privileges: the shared blocking pool's threads serve queries
//! too.

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

use crate::engine::priority;

/// The most import requests applied at once; more wait for a thread.
/// Each one mostly waits for its log record's fsync, which is shared by
/// every request of a group commit: the more at once, the larger the
/// group.
pub const MAX_THREADS: usize = 256;

/// The import threads.
#[derive(Debug)]
pub struct ImportThreads {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl ImportThreads {
    /// Threads at nice value `nice` (0 to 19; 0: as the caller's). A
    /// thread that cannot be lowered runs as it is, with a warning.
    pub fn new(nice: i32) -> std::io::Result<ImportThreads> {
        // Threads inherit their starter's nice value: rayon's global pool
        // (the queries') and the lock holders the import threads hand
        // their locked steps to are started here if they were not, so
        // that no import thread is the first to use them.
        let _ = rayon::current_num_threads();
        priority::start_lock_holders().map_err(std::io::Error::other)?;
        let runtime = Builder::new_current_thread()
            .thread_name("segq-import")
            .max_blocking_threads(MAX_THREADS)
            .on_thread_start(move || {
                if let Err(e) = priority::lower_current_thread(nice) {
                    tracing::warn!("an import thread at normal priority: {e}");
                }
            })
            .build()?;
        let handle = runtime.handle().clone();
        Ok(ImportThreads {
            runtime: Some(runtime),
            handle,
        })
    }

    /// Runs `f` on an import thread.
    pub fn spawn<F, R>(&self, f: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.handle.spawn_blocking(f)
    }
}

impl Drop for ImportThreads {
    fn drop(&mut self) {
        // Dropped from async code too (the server's state): no waiting.
        // Work still running (its request's client went away) finishes on
        // its thread; it was never acknowledged.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of a thread of rayon's global pool.
    fn on_rayon() -> Option<i32> {
        let (tx, rx) = std::sync::mpsc::channel();
        rayon::spawn_fifo(move || {
            let _ = tx.send(priority::current_nice());
        });
        rx.recv().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn imports_run_lowered_and_what_they_use_does_not() {
        let threads = ImportThreads::new(6).unwrap();
        let base = priority::current_nice();
        let on_import = threads.spawn(priority::current_nice).await.unwrap();
        // rayon used first from an import thread still runs at the
        // queries' priority.
        let rayon_from_import = threads.spawn(on_rayon).await.unwrap();
        let on_blocking = tokio::task::spawn_blocking(priority::current_nice)
            .await
            .unwrap();
        if cfg!(target_os = "linux") {
            let base = base.unwrap();
            assert_eq!(on_import, Some(base.max(6)));
            assert_eq!(rayon_from_import, Some(base));
            assert_eq!(on_blocking, Some(base));
        } else {
            assert_eq!(on_import, None);
        }
        drop(threads);
    }
}

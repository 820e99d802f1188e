//! Work shared between the calling thread and pool threads that join as
//! they wake, where the caller never waits for a thread that has not
//! woken.
//!
//! A count's chunks are spread over the caller and the pool (see
//! `spread_sum`). Rayon's scopes would have the caller wait until every
//! job it spawned has run, and a sleeping pool thread takes from tens of
//! microseconds to milliseconds to wake on a virtual machine (measured
//! here: 28–32 µs at the median after 50–300 µs idle, past 1.9 ms after
//! 2 ms idle): more than a whole count of two large cohorts. Here a
//! helper must pass a gate before it touches the caller's work, and the
//! caller, once it has run out of work, closes the gate and waits only
//! for the helpers inside (each finishing the piece it holds). A helper
//! that wakes after that finds the gate closed and returns without
//! touching anything of the caller's.
//!
//! # Contract (the module's `unsafe`)
//! The helpers are `'static` pool jobs, yet they call the caller's
//! borrowed closure through a pointer whose lifetime is erased. That is
//! sound because:
//! - a helper calls it only between a successful [`Gate::enter`] and its
//!   [`Gate::leave`], and `enter` fails once the gate is closed;
//! - [`with_helpers`] does not return, nor unwind, before the gate is
//!   closed with no helper inside (a drop guard closes and waits on
//!   unwinding too), so the closure and everything it borrows outlive
//!   every call;
//! - a helper's panic is caught, carried to the caller and resumed there
//!   once the gate is empty.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The gate's closed bit; the bits below count the helpers inside.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// Who may still touch the caller's work.
#[derive(Default)]
struct Gate {
    state: AtomicUsize,
    /// The first panic of a helper, for the caller to resume.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Gate {
    /// Enters unless the gate is closed.
    fn enter(&self) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & CLOSED != 0 {
                return false;
            }
            match self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }

    fn leave(&self) {
        self.state.fetch_sub(1, Ordering::Release);
    }

    /// Admits no more helpers and waits until those inside have left.
    fn close_and_wait(&self) {
        let mut s = self.state.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while s & !CLOSED != 0 {
            // A helper inside is finishing the piece it took: usually
            // short; past a few spins the core is offered to the helper,
            // should both be on it.
            if spins < 64 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            s = self.state.load(Ordering::Acquire);
        }
    }
}

/// The caller's closure, its lifetime erased (see the contract).
struct Work(*const (dyn Fn() + Sync + 'static));

// SAFETY: the closure is `Sync`, so calling it from another thread is
// allowed; the pointer is only followed while the gate admits the caller.
unsafe impl Send for Work {}

impl Work {
    /// # Safety
    /// Only between a successful `enter` of the gate of the
    /// [`with_helpers`] call that made it and the matching `leave`.
    unsafe fn call(&self) {
        // SAFETY: the caller of `call` holds the gate (see above), so the
        // closure is alive.
        unsafe { (*self.0)() }
    }
}

/// Closes the gate and waits for the helpers inside when dropped: on
/// return and on unwinding alike.
struct Closing<'a>(&'a Gate);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.close_and_wait();
    }
}

/// Runs `work` on the calling thread and on up to `helpers` pool threads
/// (of the current pool) that join as they wake; returns once the caller's
/// call has returned and no helper is inside `work`. `work` must itself
/// share out what is left (each call taking pieces until none is left),
/// so that the caller alone would finish everything.
pub(super) fn with_helpers(helpers: usize, work: &(dyn Fn() + Sync)) {
    with_helpers_via(&|job| rayon::spawn(job), helpers, work);
}

/// A helper's job, for the pool to run.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// [`with_helpers`], the helpers started by `spawn` (tests start them on
/// a pool of their own).
fn with_helpers_via(spawn: &dyn Fn(Job), helpers: usize, work: &(dyn Fn() + Sync)) {
    if helpers == 0 {
        work();
        return;
    }
    let gate = Arc::new(Gate::default());
    let ptr: *const (dyn Fn() + Sync + '_) = work;
    // SAFETY: only the lifetime changes; the contract above says why no
    // call outlives `work`.
    let ptr: *const (dyn Fn() + Sync + 'static) = unsafe { std::mem::transmute(ptr) };
    for _ in 0..helpers {
        let gate = Arc::clone(&gate);
        let job = Work(ptr);
        spawn(Box::new(move || {
            if !gate.enter() {
                return;
            }
            // SAFETY: inside the gate.
            let r = panic::catch_unwind(AssertUnwindSafe(|| unsafe { job.call() }));
            if let Err(p) = r {
                let mut first = gate.panic.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert(p);
            }
            gate.leave();
        }));
    }
    let closing = Closing(&gate);
    work();
    drop(closing);
    let p = gate.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = p {
        panic::resume_unwind(p);
    }
}

#[cfg(test)]
mod tests {
    use super::{with_helpers, with_helpers_via, Gate};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn a_closed_gate_admits_nobody_and_waits_for_who_is_inside() {
        let gate = Gate::default();
        assert!(gate.enter());
        let left = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                left.store(true, Ordering::Release);
                gate.leave();
            });
            gate.close_and_wait();
            assert!(
                left.load(Ordering::Acquire),
                "closed before the helper left"
            );
        });
        assert!(!gate.enter(), "a closed gate let a helper in");
    }

    /// The caller finishes the work alone and returns while the pool's
    /// only thread is busy elsewhere; its helper runs much later, finds
    /// the gate closed and touches nothing.
    #[test]
    fn the_caller_does_not_wait_for_a_helper_that_has_not_woken() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.spawn(|| std::thread::sleep(Duration::from_secs(2)));
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        with_helpers_via(&|job| pool.spawn(job), 1, &|| {
            calls.fetch_add(1, Ordering::Relaxed);
            while next.fetch_add(1, Ordering::Relaxed) < 1000 {
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
        let waited = started.elapsed();
        assert_eq!(done.load(Ordering::Relaxed), 1000);
        assert_eq!(calls.load(Ordering::Relaxed), 1, "only the caller ran");
        assert!(
            waited < Duration::from_secs(1),
            "the caller waited {waited:?} for a helper still asleep"
        );
        // The late helper finds the gate closed: the pool ends cleanly.
        drop(pool);
    }

    #[test]
    fn a_helpers_panic_reaches_the_caller_after_it_left() {
        let caller = std::thread::current().id();
        let entered = AtomicBool::new(false);
        let r = catch_unwind(AssertUnwindSafe(|| {
            with_helpers(1, &|| {
                if std::thread::current().id() != caller {
                    entered.store(true, Ordering::Release);
                    panic!("helper fails");
                }
                // Keep the work open until the helper is in.
                let t = Instant::now();
                while !entered.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        }));
        assert!(entered.load(Ordering::Acquire), "the helper never ran");
        let p = r.expect_err("the helper's panic reaches the caller");
        assert_eq!(p.downcast_ref::<&str>(), Some(&"helper fails"));
    }
}

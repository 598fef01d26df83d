//! An elastic pool of OS threads that runs at most `max_workers` jobs at a
//! time. A job that blocks on another run gives its slot away while it waits
//! (like Dask's `secede`/`rejoin`), so nested waits never deadlock the pool.
//!
//! Jobs go into a lock-free queue. Waking a sleeping thread costs a system
//! call, so a submission wakes one only when no thread is already searching
//! for work; a thread that runs out of work searches briefly before it
//! sleeps. Bursts of short jobs then run without a wake-up per job.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::plumbing::{lock, wait_timeout};
use crossbeam_queue::SegQueue;

/// Something the pool can run attempts of: a run's driver, shared (no
/// allocation per job).
pub(crate) trait Runnable: Send + Sync {
    /// Runs attempt `attempt`, or reports `refusal` for it.
    fn run(self: Arc<Self>, attempt: u32, refusal: Option<crate::run::error::TaskError>);
}

/// A unit of work for the pool: an attempt of a shared runnable.
pub(crate) struct Job {
    pub(crate) target: Arc<dyn Runnable>,
    pub(crate) attempt: u32,
}

impl Job {
    pub(crate) fn run(self) {
        self.target.run(self.attempt, None)
    }

    /// A job that runs `f` once.
    pub(crate) fn once(f: impl FnOnce() + Send + 'static) -> Job {
        struct Once<F>(Mutex<Option<F>>);
        impl<F: FnOnce() + Send> Runnable for Once<F> {
            fn run(self: Arc<Self>, _attempt: u32, _refusal: Option<crate::run::error::TaskError>) {
                let f = lock(&self.0).take();
                if let Some(f) = f {
                    f()
                }
            }
        }
        Job {
            target: Arc::new(Once(Mutex::new(Some(f)))),
            attempt: 0,
        }
    }
}

/// How long a thread with nothing to do stays around.
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// How many times a thread looks for work before it sleeps.
const SEARCH_ROUNDS: u32 = 64;

pub(crate) struct Pool {
    name: String,
    queue: SegQueue<Job>,
    closed: AtomicBool,
    max: usize,
    /// Threads alive.
    threads: AtomicUsize,
    /// Threads looking for work without sleeping.
    searching: AtomicUsize,
    /// Threads asleep, and the wake-ups owed to them.
    sleep: Mutex<Sleep>,
    wake: Condvar,
    /// Jobs that gave their slot away while they block.
    seceded: AtomicUsize,
}

#[derive(Default)]
struct Sleep {
    sleepers: usize,
    wakeups: usize,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Pool>>> = const { RefCell::new(None) };
}

impl Pool {
    pub(crate) fn new(name: impl Into<String>, max: usize) -> Arc<Pool> {
        Arc::new(Pool {
            name: name.into(),
            queue: SegQueue::new(),
            closed: AtomicBool::new(false),
            max: max.max(1),
            threads: AtomicUsize::new(0),
            searching: AtomicUsize::new(0),
            sleep: Mutex::new(Sleep::default()),
            wake: Condvar::new(),
            seceded: AtomicUsize::new(0),
        })
    }

    fn limit(&self) -> usize {
        self.max + self.seceded.load(Ordering::Acquire)
    }

    /// Queues `job`. Returns it back if the pool was shut down.
    pub(crate) fn spawn(self: &Arc<Self>, job: Job) -> Result<(), Job> {
        if self.closed.load(Ordering::Acquire) {
            return Err(job);
        }
        self.queue.push(job);
        self.notify();
        Ok(())
    }

    /// Makes sure someone will pick the queued work up: a searching thread,
    /// a sleeping one woken, or a new one.
    fn notify(self: &Arc<Self>) {
        // Orders the push before this check, so a thread that stops
        // searching right after still sees the job in its last look.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.searching.load(Ordering::SeqCst) > 0 {
            return;
        }
        {
            let mut s = lock(&self.sleep);
            if s.sleepers > s.wakeups {
                s.wakeups += 1;
                drop(s);
                self.wake.notify_one();
                return;
            }
        }
        self.start_thread();
    }

    fn start_thread(self: &Arc<Self>) {
        // The OS may refuse a thread; the jobs then stay queued for the
        // threads that exist.
        let pool = self.clone();
        crate::plumbing::spawn_below_limit(
            &self.threads,
            || self.limit(),
            |n| format!("{}-{}", self.name, n),
            move |_| pool.work(),
        );
    }

    /// Leaves if the pool has more threads than its limit (after a seceded
    /// job came back). Returns whether this thread left.
    fn shrink(&self) -> bool {
        let mut n = self.threads.load(Ordering::Acquire);
        while n > self.limit() {
            match self
                .threads
                .compare_exchange(n, n - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    /// The next job: searching briefly, then sleeping until woken. `None`
    /// when the thread should exit.
    fn next(self: &Arc<Self>) -> Option<Job> {
        if let Some(job) = self.queue.pop() {
            return Some(job);
        }
        self.searching.fetch_add(1, Ordering::SeqCst);
        let backoff = crossbeam_utils::Backoff::new();
        for _ in 0..SEARCH_ROUNDS {
            if let Some(job) = self.queue.pop() {
                // The last searcher to find work hands the search on, so
                // more queued work is not left waiting.
                if self.searching.fetch_sub(1, Ordering::SeqCst) == 1 && !self.queue.is_empty() {
                    self.notify();
                }
                return Some(job);
            }
            backoff.snooze();
        }
        self.searching.fetch_sub(1, Ordering::SeqCst);
        let mut s = lock(&self.sleep);
        loop {
            // Re-checked under the lock: a submitter that saw nobody
            // searching wakes a sleeper under this same lock.
            if let Some(job) = self.queue.pop() {
                return Some(job);
            }
            if self.closed.load(Ordering::Acquire) {
                self.threads.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
            s.sleepers += 1;
            let (guard, timed_out) = wait_timeout(&self.wake, s, IDLE_EXIT);
            s = guard;
            s.sleepers -= 1;
            if s.wakeups > 0 {
                s.wakeups -= 1;
            } else if timed_out && self.queue.is_empty() {
                self.threads.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        }
    }

    fn work(self: Arc<Self>) {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        loop {
            if self.shrink() {
                break;
            }
            match self.next() {
                Some(job) => job.run(),
                None => break,
            }
        }
        CURRENT.with(|c| *c.borrow_mut() = None);
    }

    /// Stops accepting jobs; threads exit once the queue is empty.
    pub(crate) fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let _s = lock(&self.sleep);
        self.wake.notify_all();
    }

    pub(crate) fn threads(&self) -> usize {
        self.threads.load(Ordering::Acquire)
    }
}

/// Runs `wait` (a blocking wait for another run). On a pool thread, the job
/// gives its slot away for the duration, so another job can use it.
pub(crate) fn blocking<R>(wait: impl FnOnce() -> R) -> R {
    let _guard = secede();
    wait()
}

/// Gives the current job's slot away until dropped: on a pool thread another
/// thread may take it; on a worker executor the worker's hook tells the
/// scheduler the slot is free.
pub(crate) struct SecedeGuard {
    pool: Option<Arc<Pool>>,
    hook: Option<BlockingHook>,
}

impl std::fmt::Debug for SecedeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecedeGuard")
            .field("pooled", &self.pool.is_some())
            .finish()
    }
}

pub(crate) fn secede() -> SecedeGuard {
    let pool = CURRENT.with(|c| c.borrow().clone());
    if let Some(pool) = &pool {
        pool.seceded.fetch_add(1, Ordering::AcqRel);
        if !pool.queue.is_empty() {
            pool.notify();
        }
    }
    let hook = HOOK.with(|h| *h.borrow());
    if let Some(hook) = hook {
        hook(true);
    }
    SecedeGuard { pool, hook }
}

impl Drop for SecedeGuard {
    fn drop(&mut self) {
        if let Some(hook) = self.hook {
            hook(false);
        }
        if let Some(pool) = &self.pool {
            pool.seceded.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Other executors (such as a cluster's worker slots) register a hook that
/// frees their slot while a task blocks; see [`set_blocking_hook`].
pub type BlockingHook = fn(bool);

thread_local! {
    static HOOK: RefCell<Option<BlockingHook>> = const { RefCell::new(None) };
}

/// Installs, for the current thread, a function called with `true` before a
/// task blocks on another run and with `false` after. Worker processes use it
/// to release and retake the slot of the task that waits.
pub fn set_blocking_hook(hook: Option<BlockingHook>) {
    HOOK.with(|h| *h.borrow_mut() = hook);
}

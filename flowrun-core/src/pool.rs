//! An elastic pool of OS threads that runs at most `max_workers` jobs at a
//! time. A job that blocks on another run gives its slot away while it waits
//! (like Dask's `secede`/`rejoin`), so nested waits never deadlock the pool.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// A unit of work for the pool.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// How long a thread with nothing to do stays around.
const IDLE_EXIT: Duration = Duration::from_secs(10);

pub(crate) struct Pool {
    name: String,
    tx: Mutex<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    max: usize,
    /// Threads alive.
    threads: AtomicUsize,
    /// Threads waiting for a job.
    idle: AtomicUsize,
    /// Jobs that gave their slot away while they block.
    seceded: AtomicUsize,
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Pool>>> = const { RefCell::new(None) };
}

impl Pool {
    pub(crate) fn new(name: impl Into<String>, max: usize) -> Arc<Pool> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Arc::new(Pool {
            name: name.into(),
            tx: Mutex::new(Some(tx)),
            rx,
            max: max.max(1),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            seceded: AtomicUsize::new(0),
        })
    }

    fn limit(&self) -> usize {
        self.max + self.seceded.load(Ordering::Acquire)
    }

    /// Queues `job`. Returns it back if the pool was shut down.
    pub(crate) fn spawn(self: &Arc<Self>, job: Job) -> Result<(), Job> {
        {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            match tx.as_ref() {
                Some(tx) => {
                    if let Err(e) = tx.send(job) {
                        return Err(e.into_inner());
                    }
                }
                None => return Err(job),
            }
        }
        self.ensure_thread();
        Ok(())
    }

    /// Starts a thread when work is queued, no thread is idle, and the pool
    /// is below its limit.
    fn ensure_thread(self: &Arc<Self>) {
        loop {
            if self.idle.load(Ordering::Acquire) > 0 || self.rx.is_empty() {
                return;
            }
            let threads = self.threads.load(Ordering::Acquire);
            if threads >= self.limit() {
                return;
            }
            if self
                .threads
                .compare_exchange(threads, threads + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let pool = self.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("{}-{}", self.name, threads))
                    .spawn(move || pool.work());
                if spawned.is_err() {
                    // The OS refused a thread; the jobs stay queued for the
                    // threads that exist.
                    self.threads.fetch_sub(1, Ordering::AcqRel);
                }
                return;
            }
        }
    }

    fn work(self: Arc<Self>) {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        loop {
            if self.threads.load(Ordering::Acquire) > self.limit() {
                // Over the limit after a seceded job came back: shrink.
                let mut n = self.threads.load(Ordering::Acquire);
                let mut exited = false;
                while n > self.limit() {
                    match self.threads.compare_exchange(
                        n,
                        n - 1,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            exited = true;
                            break;
                        }
                        Err(now) => n = now,
                    }
                }
                if exited {
                    break;
                }
            }
            self.idle.fetch_add(1, Ordering::AcqRel);
            let next = self.rx.recv_timeout(IDLE_EXIT);
            self.idle.fetch_sub(1, Ordering::AcqRel);
            match next {
                Ok(job) => {
                    // More work may be waiting for another thread.
                    if !self.rx.is_empty() {
                        self.ensure_thread();
                    }
                    job();
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.rx.is_empty() {
                        self.threads.fetch_sub(1, Ordering::AcqRel);
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.threads.fetch_sub(1, Ordering::AcqRel);
                    break;
                }
            }
        }
        CURRENT.with(|c| *c.borrow_mut() = None);
    }

    /// Stops accepting jobs; threads exit once the queue is empty.
    pub(crate) fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
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

pub(crate) fn secede() -> SecedeGuard {
    let pool = CURRENT.with(|c| c.borrow().clone());
    if let Some(pool) = &pool {
        pool.seceded.fetch_add(1, Ordering::AcqRel);
        pool.ensure_thread();
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

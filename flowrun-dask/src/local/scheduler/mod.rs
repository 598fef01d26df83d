//! The scheduler of a local cluster: one thread that owns every decision.
//! README.md beside this file states the policy (ordering, prefetch,
//! resources, death accounting, adaptivity) and why.
//!
//! - [`state`]: tasks, workers, and the per-task state machine;
//! - [`queue`]: the ready queue, grouped by resource request;
//! - [`policy`]: placement and sizing as pure functions;
//! - [`reactor`]: one handler per event;
//! - [`lifecycle`]: launching, start-up, retiring, closing and adapting
//!   workers;
//! - [`report`]: status, task stream, worker output.
//!
//! The transport (accept, authenticate, read loop) lives apart: it turns a
//! worker's connection into [`Event`]s and a `Sender` of messages to it, so
//! tests drive the scheduler with channels and a fake [`Launcher`].

mod lifecycle;
mod policy;
mod queue;
mod reactor;
mod report;
mod state;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use flowrun_core::Resources;
use rustc_hash::FxHashMap as HashMap;

use super::wire::{ToScheduler, ToWorkerOut};
use crate::cluster::{ClusterStatus, TaskStream};

pub(crate) use policy::Adapt;
pub(crate) use state::{Attempt, Call};

use queue::ReadyQueue;
use report::Bar;
use state::{TaskTable, Worker};

/// Something the scheduler thread reacts to.
pub(crate) enum Event<A> {
    /// An attempt to run, with its priority and the resources it needs.
    Submit {
        attempt: A,
        priority: i64,
        needs: Option<Resources>,
    },
    /// Stop the attempt of run `run_id` if it has not started; it was cancelled.
    Cancel {
        run_id: u64,
    },
    Connected {
        worker: u32,
        pid: u32,
        writer: Sender<ToWorkerOut>,
    },
    Messages {
        worker: u32,
        batch: Vec<ToScheduler>,
    },
    /// The worker's connection ended.
    Disconnected {
        worker: u32,
    },
    /// The worker's process (or thread) ended.
    Exited {
        worker: u32,
        status: String,
        output_tail: String,
    },
    /// A connection was refused (bad secret, other build...).
    Refused {
        worker: Option<u32>,
        reason: String,
    },
    Status(Sender<ClusterStatus>),
    /// Task stream entries after a position.
    Stream(u64, Sender<TaskStream>),
    Scale(usize),
    /// The flow run this cluster serves, for work submitted from workers.
    BindFlow(flowrun_core::FlowHandle),
    Close,
}

/// Starts worker processes (or threads) for the scheduler.
pub(crate) trait Launcher: Send + 'static {
    /// Starts worker `id`; its exit must be reported as [`Event::Exited`].
    fn launch(&mut self, id: u32, name: &str) -> Result<u32, String>;
    /// Stops worker `id` at once (SIGKILL for a process).
    fn kill(&mut self, id: u32);
    /// The PID of worker `id`, if it is a process.
    fn pid(&self, id: u32) -> Option<u32>;
    /// Resident memory of worker `id` in bytes, if known.
    fn memory(&self, id: u32) -> Option<u64>;
}

pub(crate) struct Config {
    pub address: String,
    pub n_workers: usize,
    pub nthreads: usize,
    pub resources: Resources,
    pub allowed_failures: u32,
    pub no_workers_timeout: Option<Duration>,
    pub startup_timeout: Duration,
    pub memory_limit: Option<u64>,
    pub adapt: Option<Adapt>,
}

/// How long a worker told to leave may take before it is killed.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_millis(1000);
/// How long a worker whose connection ended may take to exit (it is killed
/// at once; its exit says why it died) before it is counted dead anyway.
const EXIT_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Scheduler<L: Launcher, A: Attempt> {
    cfg: Config,
    launcher: L,
    workers: HashMap<u32, Worker>,
    tasks: TaskTable<A>,
    queue: ReadyQueue,
    next_worker: u32,
    target: usize,
    closing: Option<Instant>,
    broken: Option<String>,
    /// Failed launches in a row, and when the next launch may happen.
    launch_failures: u32,
    next_launch: Option<Instant>,
    deaths: usize,
    finished: u64,
    last_waiting_log: Instant,
    /// Measured duration per task key (moving average).
    durations: HashMap<&'static str, Duration>,
    /// Tasks queued or on workers, per key: the work ahead.
    pending_keys: HashMap<&'static str, usize>,
    flow: Option<flowrun_core::FlowHandle>,
    /// Runs cancelled since the last round, by id.
    to_cancel: rustc_hash::FxHashSet<u64>,
    /// Concurrency slots held for workers' task code.
    slots: super::slots::Leases,
    /// Submissions from workers, by (worker, its id): the flow's run, and
    /// its future, which holds its result until the submitting task ends.
    forwarded: HashMap<(u32, u64), (flowrun_core::RunRef, Forwarded)>,
    history: Vec<(std::time::SystemTime, usize)>,
    running_workers: usize,
    stream: std::collections::VecDeque<Bar>,
    /// Every worker's name by id, for task stream bars of gone workers.
    worker_names: HashMap<u32, Arc<str>>,
    /// Position of the first entry in `stream`.
    stream_base: u64,
    /// Placement steps taken, for tests that count work.
    #[cfg(test)]
    steps: u64,
}

impl<L: Launcher, A: Attempt> Scheduler<L, A> {
    pub(crate) fn new(cfg: Config, launcher: L) -> Self {
        let target = match &cfg.adapt {
            Some(a) => a.clamp(cfg.n_workers),
            None => cfg.n_workers,
        };
        Scheduler {
            cfg,
            launcher,
            workers: HashMap::default(),
            tasks: TaskTable::default(),
            queue: ReadyQueue::default(),
            next_worker: 0,
            target,
            closing: None,
            broken: None,
            launch_failures: 0,
            next_launch: None,
            deaths: 0,
            finished: 0,
            last_waiting_log: Instant::now(),
            durations: HashMap::default(),
            pending_keys: HashMap::default(),
            flow: None,
            to_cancel: Default::default(),
            forwarded: HashMap::default(),
            slots: Default::default(),
            history: vec![(std::time::SystemTime::now(), 0)],
            running_workers: 0,
            stream: std::collections::VecDeque::new(),
            worker_names: HashMap::default(),
            stream_base: 0,
            #[cfg(test)]
            steps: 0,
        }
    }

    /// Runs until the cluster is closed and every worker is gone.
    pub(crate) fn run(mut self, events: Receiver<Event<A>>, done: Sender<()>) {
        self.fill_to_target(Instant::now());
        let ticker = crossbeam_channel::tick(Duration::from_millis(100));
        let adapt_ticker = match &self.cfg.adapt {
            Some(a) => crossbeam_channel::tick(a.interval),
            None => crossbeam_channel::never(),
        };
        loop {
            crossbeam_channel::select! {
                recv(events) -> ev => match ev {
                    Ok(ev) => self.handle(ev),
                    Err(_) => self.close(Instant::now()),
                },
                recv(ticker) -> _ => self.tick(Instant::now()),
                recv(adapt_ticker) -> _ => self.adapt_down(),
            }
            // Take everything already queued before scheduling, so bursts
            // are batched into few frames.
            while let Ok(ev) = events.try_recv() {
                self.handle(ev);
            }
            self.pump(Instant::now());
            if self.closing.is_some() && self.workers.is_empty() {
                break;
            }
        }
        self.fail_everything("the cluster was closed before this task run finished");
        let _ = done.send(());
    }

    /// After a batch of events: scale, place, send.
    fn pump(&mut self, now: Instant) {
        if !self.to_cancel.is_empty() {
            self.cancel_runs();
        }
        if self.next_launch.is_some_and(|at| now >= at) {
            self.fill_to_target(now);
        }
        self.adapt_up(now);
        self.schedule();
        self.flush();
    }
}

/// The future of a run submitted from a worker.
type Forwarded = flowrun_core::TaskFuture<bytes::Bytes>;

/// Shared by the acceptor: which worker ids may still connect.
pub(crate) type Expected = Arc<std::sync::Mutex<HashSet<u32>>>;

//! What a cluster reports about itself: workers, queues, waiting task runs
//! and the task stream. Both the local cluster and the bridge to a real
//! Dask cluster fill these in.

use flowrun_core::Resources;

/// A worker as the cluster's status reports it.
#[derive(Debug, Clone)]
pub struct WorkerStatus {
    /// Its name, such as `worker-0`.
    pub name: String,
    /// Its process id (`None` for a worker thread).
    pub pid: Option<u32>,
    /// `starting`, `running`, `closing`.
    pub state: &'static str,
    /// Threads executing tasks.
    pub nthreads: usize,
    /// Resources it offers.
    pub resources: Resources,
    /// Resources not held by running tasks.
    pub free_resources: Resources,
    /// Task runs it is executing.
    pub running: Vec<String>,
    /// Task runs queued on it, not started.
    pub queued: usize,
}

/// A task run that waits, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingTask {
    /// The task run's name.
    pub run: String,
    /// Why it cannot start.
    pub reason: String,
}

/// One task run's time on a worker thread: a bar of the task stream.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStreamEntry {
    /// The task run's name, such as `shout-3`.
    pub run: String,
    /// The task's name, such as `shout`.
    pub task: String,
    /// The worker, such as `worker-1`.
    pub worker: String,
    /// The worker's executor thread.
    pub thread: u32,
    /// Start, in microseconds since the epoch.
    pub start_us: u64,
    /// End, in microseconds since the epoch.
    pub end_us: u64,
    /// `completed`, `failed` or `crashed` (the worker died under it).
    pub outcome: &'static str,
}

/// Entries of the task stream after a position, and the next position.
#[derive(Debug, Clone, Default)]
pub struct TaskStream {
    /// Bars in the order they ended.
    pub entries: Vec<TaskStreamEntry>,
    /// Ask for entries after this position next time.
    pub next: u64,
}

/// A snapshot of a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterStatus {
    /// The scheduler's address (loopback).
    pub address: String,
    /// Every worker that is starting, running or closing.
    pub workers: Vec<WorkerStatus>,
    /// Task runs queued in the scheduler for a free worker.
    pub queued: usize,
    /// Task runs that cannot start, with the reason.
    pub waiting: Vec<WaitingTask>,
    /// Workers that died since the cluster started.
    pub deaths: usize,
    /// Task runs completed (or failed) on this cluster.
    pub finished: u64,
    /// Every change of the number of running workers: when, and how many.
    pub worker_count_history: Vec<(std::time::SystemTime, usize)>,
}

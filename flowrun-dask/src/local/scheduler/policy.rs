//! Placement policy as pure functions: which worker takes a task, how many
//! short tasks a worker may hold ahead of its threads, how many workers the
//! work ahead needs, how long to wait after a failed launch, and which tasks
//! a dead worker was executing. README.md says why.

use std::cmp::Reverse;
use std::time::Duration;

use flowrun_core::Resources;

use super::state::{Rank, WState, Worker};

/// Tasks whose measured duration is below this may be queued on a worker
/// ahead of its free threads (prefetched), to hide the round trip.
pub(crate) const PREFETCH_BELOW: Duration = Duration::from_millis(2);
/// At most this many prefetched tasks per worker...
pub(crate) const PREFETCH_DEPTH: usize = 256;
/// ...and at most about this much estimated work, so that a more urgent
/// task that arrives later waits behind little.
pub(crate) const PREFETCH_BUDGET: Duration = Duration::from_millis(20);

/// The duration assumed for a task that has never been measured (Dask's
/// `unknown-task-duration`).
pub(crate) const UNKNOWN_DURATION: Duration = Duration::from_millis(500);

/// Consecutive start-up failures, with no worker running, after which the
/// cluster gives up.
pub(crate) const MAX_STARTUP_FAILURES: u32 = 3;
/// Consecutive start-up failures after which the cluster gives up even with
/// workers running: it cannot keep its size.
pub(crate) const MAX_LAUNCH_FAILURES: u32 = 8;

/// How many tasks of a key measured at `duration` a worker may hold beyond
/// its threads: none for unmeasured or long tasks.
pub(crate) fn prefetch_depth(duration: Option<Duration>) -> usize {
    match duration {
        Some(d) if d < PREFETCH_BELOW => {
            let by_budget = PREFETCH_BUDGET.as_nanos() / d.as_nanos().max(1);
            (by_budget as usize).min(PREFETCH_DEPTH)
        }
        _ => 0,
    }
}

/// Free places on a worker for one more task, counting `prefetch` places
/// beyond its threads. Seceded tasks (blocked in a client call) free their
/// thread.
pub(crate) fn free_slots(w: &Worker, prefetch: usize) -> usize {
    (w.nthreads + w.seceded + prefetch).saturating_sub(w.tasks.len())
}

/// The running worker with the most free places that can hold a task
/// needing `needs` (ties: the lowest id), unless `home`, the worker that
/// keeps the task's largest stored arguments in memory, has a place: then
/// `home`, where the task takes them without reading and decoding them
/// (Dask's `worker_objective` weighs the bytes to move the same way; a
/// busy home is not waited for, the task reads its arguments elsewhere).
/// Tasks with resources never wait in a worker's queue: they need a free
/// thread, since they hold their resources from the moment they are placed.
pub(crate) fn pick_worker<'a>(
    workers: impl Iterator<Item = (&'a u32, &'a Worker)>,
    needs: Option<&Resources>,
    prefetch: usize,
    home: Option<u32>,
) -> Option<u32> {
    let prefetch = if needs.is_some() { 0 } else { prefetch };
    let mut best: Option<(usize, Reverse<u32>)> = None;
    for (id, w) in workers {
        if w.state != WState::Running {
            continue;
        }
        let slots = free_slots(w, prefetch);
        if slots == 0 || needs.is_some_and(|n| !w.free.covers(n)) {
            continue;
        }
        if home == Some(*id) {
            return home;
        }
        let key = (slots, Reverse(*id));
        if best.is_none_or(|b| key > b) {
            best = Some(key);
        }
    }
    best.map(|(_, Reverse(id))| id)
}

/// Whether any running worker has a thread free (not counting prefetch).
pub(crate) fn any_free_thread<'a>(mut workers: impl Iterator<Item = &'a Worker>) -> bool {
    workers.any(|w| w.state == WState::Running && free_slots(w, 0) > 0)
}

/// Adaptive bounds, resolved from `AdaptKwargs`.
#[derive(Debug, Clone)]
pub(crate) struct Adapt {
    pub minimum: usize,
    pub maximum: Option<usize>,
    pub interval: Duration,
    pub wait_count: u32,
    pub target_duration: Duration,
}

impl Adapt {
    /// `n` within the bounds.
    pub(crate) fn clamp(&self, n: usize) -> usize {
        n.max(self.minimum).min(self.maximum.unwrap_or(usize::MAX))
    }
}

/// How many workers `tasks` queued or running tasks with `work` estimated
/// work need to finish within the target duration, within the bounds. Any
/// work at all needs one worker (scaling up from zero).
pub(crate) fn desired_workers(work: Duration, tasks: usize, nthreads: usize, a: &Adapt) -> usize {
    let per_worker = a.target_duration.as_secs_f64() * nthreads.max(1) as f64;
    let for_work = (work.as_secs_f64() / per_worker).ceil() as usize;
    // Never more workers than there are tasks to fill their threads.
    let fillable = tasks.div_ceil(nthreads.max(1));
    a.clamp(for_work.min(fillable).max(usize::from(tasks > 0)))
}

/// How long to wait before launching again after `failures` failed
/// launches in a row: 100 ms, doubling, at most 2 s.
pub(crate) fn launch_backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(5);
    Duration::from_millis(100 << exp).min(Duration::from_secs(2))
}

/// Which of a dead worker's tasks it was executing: those it reported
/// started, plus, up to its thread count, those it would have started
/// first (a task can kill its worker before "started" leaves it).
/// `held` is `(started, rank, id)` for each task it held.
pub(crate) fn executing(mut held: Vec<(bool, Rank, u64)>, threads: usize) -> Vec<u64> {
    let started = held.iter().filter(|h| h.0).count();
    held.sort_unstable_by_key(|h| Reverse((h.0, h.1)));
    held.into_iter()
        .take(threads.max(started))
        .map(|h| h.2)
        .collect()
}

/// Whether a task that was running on `deaths` workers that died has
/// exhausted `allowed_failures` (Dask's KilledWorker).
pub(crate) fn killed_worker(deaths: usize, allowed_failures: u32) -> bool {
    deaths > allowed_failures as usize
}

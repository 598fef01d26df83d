//! Task and worker state. Every task has an explicit [`TaskState`] that
//! records which worker owns it; a worker's message about a task is applied
//! only if that worker owns it now (see [`Task::owned_by`]).

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::Sender;
use flowrun_core::{ArgSlot, Resources, RunRef, SerializedJob, TaskError};
use rustc_hash::FxHashSet;

use super::super::wire::{AssignmentOut, ToWorkerOut};

/// An attempt of a task run, as the scheduler sees it. The local cluster
/// schedules [`Call`]s; unit tests schedule fakes that record what happens.
pub(crate) trait Attempt: Send + 'static {
    /// The task's registry key.
    fn key(&self) -> &'static str;
    /// The task's name, shared.
    fn task_name(&self) -> Arc<str>;
    /// The run's number among the runs of its task.
    fn index(&self) -> u64;
    /// The run's id: the tie-break after [`Attempt::order`].
    fn run_id(&self) -> u64;
    /// The run's place in the submitted graph (lower first).
    fn order(&self) -> u64;
    /// The serialized arguments.
    fn args(&self) -> Arc<[ArgSlot]>;
    /// The run's name from `task_run_name`, if it has one.
    fn run_name(&self) -> Option<Arc<str>> {
        None
    }
    /// What the worker needs to call the task's hooks, if it calls them.
    fn task_hooks(&self) -> Option<flowrun_core::TaskHookCall> {
        None
    }
    /// The worker that holds most of its stored arguments in memory, where
    /// it runs without reading them (see `policy::pick_worker`).
    fn home(&self) -> Option<u32> {
        None
    }
    /// The attempt started on `worker`.
    fn started(&self, worker: Arc<str>);
    /// A flow run the attempt called on its worker started or ended.
    fn subflow(&self, _report: flowrun_core::SubflowReport) {}
    /// Calls `f` as the attempt's run (see [`SerializedJob::in_run`]): the
    /// lines it emits are that run's.
    fn in_run<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
    /// The attempt's outcome.
    fn finish(self, result: Result<Bytes, TaskError>);
}

/// An attempt the flow handed to the local cluster.
pub(crate) struct Call {
    run: RunRef,
    job: SerializedJob,
}

impl Call {
    pub(crate) fn new(run: RunRef, job: SerializedJob) -> Call {
        Call { run, job }
    }
}

impl Attempt for Call {
    fn key(&self) -> &'static str {
        self.job.task_key()
    }
    fn task_name(&self) -> Arc<str> {
        self.job.shared_task_name()
    }
    fn index(&self) -> u64 {
        self.run.index()
    }
    fn run_id(&self) -> u64 {
        self.run.id().get()
    }
    fn order(&self) -> u64 {
        self.run.order()
    }
    fn args(&self) -> Arc<[ArgSlot]> {
        self.job.shared_args()
    }
    fn run_name(&self) -> Option<Arc<str>> {
        self.job.run_name()
    }
    fn task_hooks(&self) -> Option<flowrun_core::TaskHookCall> {
        self.job.task_hooks()
    }
    fn home(&self) -> Option<u32> {
        super::super::store::home(&self.job.shared_args())
    }
    fn started(&self, worker: Arc<str>) {
        self.job.started_at(worker);
    }
    fn subflow(&self, report: flowrun_core::SubflowReport) {
        self.job.report_subflow(report);
    }
    fn in_run<R>(&self, f: impl FnOnce() -> R) -> R {
        self.job.in_run(f)
    }
    fn finish(self, result: Result<Bytes, TaskError>) {
        self.job.finish(result);
    }
}

/// Queue order: priority (higher first), then the run's place in the graph
/// and its id (lower first). Larger is more urgent.
pub(crate) type Rank = (i64, Reverse<u64>, Reverse<u64>);

/// Where a task is. The only moves are
/// `Queued -> Assigned -> Running -> (finished, removed)`,
/// `Assigned | Running -> Queued` (its worker died) and
/// `Queued | NoWorker -> (cancelled or expired, removed)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TaskState {
    /// In the ready queue.
    Queued,
    /// It needs resources no worker of this cluster offers; it waits.
    NoWorker,
    /// Sent to `worker`, not reported started.
    Assigned { worker: u32 },
    /// Reported started by `worker`.
    Running { worker: u32 },
}

/// One attempt the scheduler holds.
pub(crate) struct Task<A> {
    /// Taken when the outcome is reported.
    pub attempt: Option<A>,
    pub key: &'static str,
    pub task_name: Arc<str>,
    pub index: u64,
    pub priority: i64,
    pub rank: Rank,
    /// Boxed: most tasks need no resources, and this lives per task.
    pub needs: Option<Box<Resources>>,
    pub state: TaskState,
    /// How many times it was placed on a worker (1 unless workers died).
    pub placements: u32,
    /// Executor thread and start time, once the worker started it.
    pub started: Option<(u32, u64)>,
    /// Workers that died while running it, each with the cause. Boxed like
    /// `needs`: one pointer instead of an almost always empty `Vec`.
    #[allow(clippy::box_collection)]
    pub deaths: Option<Box<Vec<String>>>,
    /// A cancel was sent to its worker; its slot frees when the worker answers.
    pub cancelled: bool,
    /// The worker that keeps its largest stored arguments in memory.
    pub home: Option<u32>,
    /// When it began to wait for a worker that offers its resources (set
    /// for `NoWorker` only: reading the clock for every task cost the
    /// scheduler thread 2%).
    pub since: Option<Instant>,
}

impl<A: Attempt> Task<A> {
    /// Whether its run is the one named `name` (`<task>-<index>`, or the
    /// name `task_run_name` gave it).
    pub(super) fn is_run_named(&self, name: &str) -> bool {
        match self.attempt.as_ref().and_then(Attempt::run_name) {
            Some(custom) => *custom == *name,
            None => {
                name.strip_prefix(&*self.task_name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .and_then(|index| index.parse::<u64>().ok())
                    == Some(self.index)
            }
        }
    }
}

impl<A> Task<A> {
    /// The worker that owns it, if any.
    pub(super) fn owner(&self) -> Option<u32> {
        match self.state {
            TaskState::Assigned { worker } | TaskState::Running { worker } => Some(worker),
            TaskState::Queued | TaskState::NoWorker => None,
        }
    }

    /// Whether `worker` owns it now: the check every worker message passes.
    /// Worker ids are never reused, so the owner names the placement.
    pub(super) fn owned_by(&self, worker: u32) -> bool {
        self.owner() == Some(worker)
    }

    /// `Queued -> Assigned`.
    pub(super) fn assign(&mut self, worker: u32) {
        debug_assert_eq!(
            self.state,
            TaskState::Queued,
            "assigning a task that is not queued"
        );
        self.state = TaskState::Assigned { worker };
        self.placements += 1;
    }

    /// `Assigned -> Running`, if `worker` owns it and it has not started.
    pub(super) fn start(&mut self, worker: u32, thread: u32, at_us: u64) -> bool {
        if self.state != (TaskState::Assigned { worker }) {
            return false;
        }
        self.state = TaskState::Running { worker };
        self.started = Some((thread, at_us));
        true
    }

    /// `Assigned | Running -> Queued`: its worker is gone.
    pub(super) fn requeue(&mut self) {
        debug_assert!(self.owner().is_some(), "requeueing a task no worker holds");
        self.state = TaskState::Queued;
        self.started = None;
    }
}

/// The scheduler's tasks in a slab: no hashing, no table slack. An id is
/// the slot plus a generation, so an id of a finished task never finds the
/// task that reuses its slot.
pub(crate) struct TaskTable<A> {
    slab: slab::Slab<(u64, Task<A>)>,
    generation: u32,
}

impl<A> Default for TaskTable<A> {
    fn default() -> Self {
        TaskTable {
            slab: slab::Slab::new(),
            generation: 0,
        }
    }
}

impl<A> TaskTable<A> {
    /// The id the next inserted task gets.
    pub(super) fn next_id(&mut self) -> u64 {
        self.generation = self.generation.wrapping_add(1);
        (u64::from(self.generation) << 32) | self.slab.vacant_key() as u64
    }

    fn slot(id: u64) -> usize {
        (id & 0xffff_ffff) as usize
    }

    pub(super) fn insert(&mut self, id: u64, task: Task<A>) {
        debug_assert_eq!(self.slab.vacant_key(), Self::slot(id));
        self.slab.insert((id, task));
    }

    pub(super) fn get(&self, id: u64) -> Option<&Task<A>> {
        self.slab
            .get(Self::slot(id))
            .filter(|(i, _)| *i == id)
            .map(|(_, t)| t)
    }

    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Task<A>> {
        self.slab
            .get_mut(Self::slot(id))
            .filter(|(i, _)| *i == id)
            .map(|(_, t)| t)
    }

    pub(super) fn remove(&mut self, id: u64) -> Option<Task<A>> {
        self.get(id)?;
        Some(self.slab.remove(Self::slot(id)).1)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Task<A>)> {
        self.slab.iter().map(|(_, (id, t))| (*id, t))
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = (u64, Task<A>)> + '_ {
        self.slab.drain()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum WState {
    /// Launched, not connected yet.
    Starting,
    /// Connected; it runs tasks.
    Running,
    /// Its connection ended; it is being stopped and its exit awaited,
    /// which says why it died.
    Gone,
    /// Told to leave (scaled down, or the cluster closes).
    Closing,
}

pub(crate) struct Worker {
    pub name: Arc<str>,
    pub state: WState,
    /// When it entered its state.
    pub since: Instant,
    pub pid: Option<u32>,
    pub writer: Option<Sender<ToWorkerOut>>,
    pub nthreads: usize,
    pub seceded: usize,
    pub free: Resources,
    /// Tasks assigned here (queued on the worker or running).
    pub tasks: FxHashSet<u64>,
    pub outbox: Vec<AssignmentOut>,
    pub cancels: Vec<u64>,
    pub idle_checks: u32,
    /// Why the scheduler stopped it, when it did (memory limit...).
    pub cause: Option<String>,
}

impl Worker {
    pub(super) fn new(
        name: Arc<str>,
        nthreads: usize,
        resources: Resources,
        now: Instant,
    ) -> Worker {
        Worker {
            name,
            state: WState::Starting,
            since: now,
            pid: None,
            writer: None,
            nthreads,
            seceded: 0,
            free: resources,
            tasks: FxHashSet::default(),
            outbox: Vec::new(),
            cancels: Vec::new(),
            idle_checks: 0,
            cause: None,
        }
    }

    /// Counts toward the cluster's size (not leaving, not dead).
    pub(super) fn alive(&self) -> bool {
        matches!(self.state, WState::Starting | WState::Running)
    }

    /// Takes `needs` out of its free resources.
    pub(super) fn acquire(&mut self, needs: &Resources) {
        for (k, v) in needs.iter() {
            let have = self.free.get(k).unwrap_or(0.0);
            self.free.insert(k, have - v);
        }
    }

    /// Gives `needs` back.
    pub(super) fn release(&mut self, needs: &Resources) {
        for (k, v) in needs.iter() {
            let have = self.free.get(k).unwrap_or(0.0);
            self.free.insert(k, have + v);
        }
    }
}

//! The scheduler of a local cluster: one thread that owns every decision.
//! It queues submitted attempts by priority (higher first, then submission
//! order), hands them to workers with free slots and free resources, and
//! handles workers that connect, report, secede, rejoin or die.
//!
//! It never preempts: a running task keeps its slot until it finishes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use rustc_hash::{FxHashMap as HashMap, FxHashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use flowrun_core::{ArgSlot, RemoteJob, Resources, TaskCall, TaskError, TaskErrorKind, Work};
use serde_bytes::ByteBuf;

use super::wire::{
    AssignmentOut, Completion, LogLine, OutputLine, ToScheduler, ToWorker, ToWorkerOut,
};

/// Something the scheduler thread reacts to.
pub(crate) enum Event {
    Submit(TaskCall),
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

/// A task stream entry as the scheduler keeps it: names are shared, the
/// run's name is formatted only when someone asks.
struct Bar {
    task: Arc<str>,
    index: u64,
    worker: u32,
    thread: u32,
    start_us: u64,
    end_us: u64,
    outcome: &'static str,
}

impl Bar {
    fn entry(&self, workers: &HashMap<u32, Arc<str>>) -> TaskStreamEntry {
        TaskStreamEntry {
            run: format!("{}-{}", self.task, self.index),
            task: self.task.to_string(),
            worker: workers
                .get(&self.worker)
                .map(|w| w.to_string())
                .unwrap_or_default(),
            thread: self.thread,
            start_us: self.start_us,
            end_us: self.end_us,
            outcome: self.outcome,
        }
    }
}

/// How many task stream entries a cluster keeps (the oldest go first).
const STREAM_CAPACITY: usize = 100_000;

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

/// Adaptive scaling, resolved from `AdaptKwargs`.
#[derive(Debug, Clone)]
pub(crate) struct Adapt {
    pub minimum: usize,
    pub maximum: Option<usize>,
    pub interval: Duration,
    pub wait_count: u32,
    pub target_duration: Duration,
}

/// The duration assumed for a task that has never been measured (Dask's
/// `unknown-task-duration`).
const UNKNOWN_DURATION: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WState {
    Starting,
    Running,
    Closing,
}

struct Worker {
    name: String,
    state: WState,
    since: Instant,
    pid: Option<u32>,
    writer: Option<Sender<ToWorkerOut>>,
    nthreads: usize,
    seceded: usize,
    free: Resources,
    /// Tasks assigned here (queued on the worker or running).
    tasks: FxHashSet<u64>,
    /// The worker's name, shared with the runs it executes.
    shared_name: Arc<str>,
    outbox: Vec<AssignmentOut>,
    idle_checks: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    Queued,
    NoWorker,
    Assigned(u32),
    Running(u32),
}

struct Task {
    job: Option<RemoteJob>,
    key: &'static str,
    run: flowrun_core::RunRef,
    task_name: Arc<str>,
    /// Executor thread and start time, once the worker started it.
    started: Option<(u32, u64)>,
    priority: i64,
    seq: u64,
    /// Boxed: most tasks need no resources, and this lives per task.
    needs: Option<Box<Resources>>,
    group: usize,
    place: Place,
    /// Workers that died while running it, if any. Boxed like `needs`:
    /// one pointer per task instead of a three-word `Vec` that is almost
    /// always empty.
    #[allow(clippy::box_collection)]
    deaths: Option<Box<Vec<String>>>,
    since: Instant,
}

/// The scheduler's tasks in a slab: no hashing, no table slack. An id is
/// the slot plus a generation, so an id of a finished task never finds the
/// task that reuses its slot.
#[derive(Default)]
struct TaskTable {
    slab: slab::Slab<(u64, Task)>,
    generation: u32,
}

impl TaskTable {
    /// The id the next inserted task gets.
    fn next_id(&mut self) -> u64 {
        self.generation = self.generation.wrapping_add(1);
        (u64::from(self.generation) << 32) | self.slab.vacant_key() as u64
    }

    fn slot(id: u64) -> usize {
        (id & 0xffff_ffff) as usize
    }

    fn insert(&mut self, id: u64, task: Task) {
        debug_assert_eq!(self.slab.vacant_key(), Self::slot(id));
        self.slab.insert((id, task));
    }

    fn get(&self, id: &u64) -> Option<&Task> {
        self.slab
            .get(Self::slot(*id))
            .filter(|(i, _)| i == id)
            .map(|(_, t)| t)
    }

    fn get_mut(&mut self, id: &u64) -> Option<&mut Task> {
        self.slab
            .get_mut(Self::slot(*id))
            .filter(|(i, _)| i == id)
            .map(|(_, t)| t)
    }

    fn remove(&mut self, id: &u64) -> Option<Task> {
        self.get(id)?;
        Some(self.slab.remove(Self::slot(*id)).1)
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Task)> {
        self.slab.iter().map(|(_, (id, t))| (*id, t))
    }

    fn values(&self) -> impl Iterator<Item = &Task> {
        self.slab.iter().map(|(_, (_, t))| t)
    }

    fn drain(&mut self) -> impl Iterator<Item = (u64, Task)> + '_ {
        self.slab.drain()
    }
}

/// Queue order: priority (higher first), then submission order, then id.
type QueueKey = (i64, Reverse<u64>, u64);

struct Group {
    needs: Option<Resources>,
    heap: BinaryHeap<QueueKey>,
}

pub(crate) struct Scheduler<L: Launcher> {
    cfg: Config,
    launcher: L,
    workers: HashMap<u32, Worker>,
    tasks: TaskTable,
    groups: Vec<Group>,
    group_index: HashMap<String, usize>,
    next_seq: u64,
    next_worker: u32,
    target: usize,
    closing: bool,
    broken: Option<String>,
    startup_failures: u32,
    deaths: usize,
    finished: u64,
    /// Moving average of task durations, to decide whether to queue tasks
    /// on workers ahead of free threads.
    mean_duration: Option<Duration>,
    last_waiting_log: Instant,
    /// Measured duration per task key (moving average).
    durations: HashMap<&'static str, Duration>,
    /// Tasks queued or on workers, per key: the work ahead.
    pending_keys: HashMap<&'static str, usize>,
    flow: Option<flowrun_core::FlowHandle>,
    /// Submissions from workers, by (worker, its id): the flow's run.
    forwarded: HashMap<(u32, u64), flowrun_core::RunRef>,
    history: Vec<(std::time::SystemTime, usize)>,
    running_workers: usize,
    stream: std::collections::VecDeque<Bar>,

    /// Every worker's name by id, for task stream bars of gone workers.
    worker_names: HashMap<u32, Arc<str>>,
    /// Position of the first entry in `stream`.
    stream_base: u64,
}

fn signature(needs: &Option<Resources>) -> String {
    match needs {
        None => String::new(),
        Some(r) => r.to_string(),
    }
}

fn subtract(free: &mut Resources, needs: &Resources) {
    for (k, v) in needs.iter() {
        let have = free.get(k).unwrap_or(0.0);
        free.insert(k, have - v);
    }
}

fn add(free: &mut Resources, needs: &Resources) {
    for (k, v) in needs.iter() {
        let have = free.get(k).unwrap_or(0.0);
        free.insert(k, have + v);
    }
}

/// Tasks shorter than this are queued on workers ahead of free threads.
const PREFETCH_BELOW: Duration = Duration::from_millis(2);
/// How many tasks a worker may hold beyond its threads when they are short.
const PREFETCH_DEPTH: usize = 256;
/// Consecutive start-up failures after which the cluster gives up.
const MAX_STARTUP_FAILURES: u32 = 3;

impl<L: Launcher> Scheduler<L> {
    pub(crate) fn new(cfg: Config, launcher: L) -> Self {
        let target = match &cfg.adapt {
            Some(a) => cfg
                .n_workers
                .max(a.minimum)
                .min(a.maximum.unwrap_or(usize::MAX)),
            None => cfg.n_workers,
        };
        Scheduler {
            cfg,
            launcher,
            workers: HashMap::default(),
            tasks: TaskTable::default(),
            groups: Vec::new(),
            group_index: HashMap::default(),
            next_seq: 0,
            next_worker: 0,
            target,
            closing: false,
            broken: None,
            startup_failures: 0,
            deaths: 0,
            finished: 0,
            mean_duration: None,
            last_waiting_log: Instant::now(),
            durations: HashMap::default(),
            pending_keys: HashMap::default(),
            flow: None,
            forwarded: HashMap::default(),
            history: vec![(std::time::SystemTime::now(), 0)],
            running_workers: 0,
            stream: std::collections::VecDeque::new(),
            worker_names: HashMap::default(),
            stream_base: 0,
        }
    }

    /// Runs until the cluster is closed and every worker is gone.
    pub(crate) fn run(mut self, events: Receiver<Event>, done: Sender<()>) {
        self.fill_to_target();
        let ticker = crossbeam_channel::tick(Duration::from_millis(250));
        let adapt_ticker = match &self.cfg.adapt {
            Some(a) => crossbeam_channel::tick(a.interval),
            None => crossbeam_channel::never(),
        };
        loop {
            crossbeam_channel::select! {
                recv(events) -> ev => match ev {
                    Ok(ev) => self.handle(ev),
                    Err(_) => self.closing = true,
                },
                recv(ticker) -> _ => self.tick(),
                recv(adapt_ticker) -> _ => self.adapt_down(),
            }
            // Take everything already queued before scheduling, so bursts
            // are batched into few frames.
            while let Ok(ev) = events.try_recv() {
                self.handle(ev);
            }
            self.adapt_up();
            self.schedule();
            self.flush();
            if self.closing && self.workers.is_empty() {
                break;
            }
        }
        self.fail_everything("the cluster was closed before this task run finished");
        let _ = done.send(());
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Submit(call) => self.submit(call),
            Event::Connected {
                worker,
                pid,
                writer,
            } => self.connected(worker, pid, writer),
            Event::Messages { worker, batch } => {
                for m in batch {
                    self.message(worker, m);
                }
            }
            Event::Disconnected { worker } => self.lost(worker, "its connection closed".to_owned()),
            Event::Exited {
                worker,
                status,
                output_tail,
            } => {
                let starting = self
                    .workers
                    .get(&worker)
                    .is_some_and(|w| w.state == WState::Starting);
                if starting && !self.closing {
                    self.startup_failed(
                        worker,
                        format!("it exited during start-up ({status}){}", tail(&output_tail)),
                    );
                } else {
                    self.lost(worker, format!("its process exited ({status})"));
                }
            }
            Event::Refused { worker, reason } => {
                // A worker still starting when the cluster closes knocks
                // after it stopped expecting anyone: not worth a warning.
                if self.closing {
                    tracing::debug!(target: "flowrun_dask::cluster", "Refused a connection to the closing cluster: {reason}");
                } else {
                    tracing::warn!(target: "flowrun_dask::cluster", "Refused a connection to the cluster: {reason}");
                }
                if let Some(id) = worker {
                    if self
                        .workers
                        .get(&id)
                        .is_some_and(|w| w.state == WState::Starting)
                    {
                        self.launcher.kill(id);
                        self.startup_failed(id, reason);
                    }
                }
            }
            Event::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Event::Scale(n) => {
                self.target = n;
                self.fill_to_target();
                self.retire_extra();
            }
            Event::BindFlow(handle) => self.flow = Some(handle),
            Event::Stream(since, reply) => {
                let first = since.max(self.stream_base);
                let entries = self
                    .stream
                    .iter()
                    .skip((first - self.stream_base) as usize)
                    .map(|bar| bar.entry(&self.worker_names))
                    .collect();
                let _ = reply.send(TaskStream {
                    entries,
                    next: self.stream_base + self.stream.len() as u64,
                });
            }
            Event::Close => self.close(),
        }
    }

    fn submit(&mut self, call: TaskCall) {
        let (run, annotations, work) = call.into_parts();
        let job = match work {
            Work::Remote(job) => job,
            Work::Local(job) => {
                job.refuse("DaskTaskRunner runs serialized calls only");
                return;
            }
        };
        if let Some(why) = &self.broken {
            job.refuse(why.clone());
            return;
        }
        if self.closing {
            job.refuse("the cluster is closing");
            return;
        }
        let needs = annotations.resources.filter(|r| !r.is_empty());
        let sig = signature(&needs);
        let group = match self.group_index.get(&sig) {
            Some(g) => *g,
            None => {
                self.groups.push(Group {
                    needs: needs.clone(),
                    heap: BinaryHeap::new(),
                });
                self.group_index.insert(sig, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let id = self.tasks.next_id();
        let seq = self.next_seq;
        self.next_seq += 1;
        let priority = annotations.priority.unwrap_or(0);
        let key = job.task_key();
        let mut task = Task {
            task_name: job.shared_task_name(),
            started: None,
            job: Some(job),
            key,
            run,
            priority,
            seq,
            needs: needs.clone().map(Box::new),
            group,
            place: Place::Queued,
            deaths: None,
            since: Instant::now(),
        };
        if let Some(n) = &needs {
            if !self.cfg.resources.covers(n) {
                task.place = Place::NoWorker;
                tracing::warn!(
                    target: "flowrun_dask::cluster",
                                        { flowrun.run = format!("Task run '{}'", task.run.name()) },
                    "Waits: it needs {n}, and no worker of this cluster offers that (each offers {})",
                    self.cfg.resources
                );
                self.tasks.insert(id, task);
                return;
            }
        }
        self.groups[group].heap.push((priority, Reverse(seq), id));
        *self.pending_keys.entry(key).or_insert(0) += 1;
        self.tasks.insert(id, task);
    }

    fn connected(&mut self, id: u32, pid: u32, writer: Sender<ToWorkerOut>) {
        let Some(w) = self.workers.get_mut(&id) else {
            let _ = writer.send(ToWorker::Shutdown);
            return;
        };
        w.state = if self.closing {
            WState::Closing
        } else {
            WState::Running
        };
        w.pid = Some(pid);
        w.since = Instant::now();
        if self.closing {
            let _ = writer.send(ToWorker::Shutdown);
        }
        w.writer = Some(writer);
        tracing::debug!(target: "flowrun_dask::cluster", "Worker '{}' (pid {pid}) joined", w.name);
        self.startup_failures = 0;
        if !self.closing {
            self.running_changed(1);
        }
    }

    fn message(&mut self, worker: u32, msg: ToScheduler) {
        match msg {
            ToScheduler::Started(ids) => {
                let name = self
                    .workers
                    .get(&worker)
                    .map(|w| w.shared_name.clone())
                    .unwrap_or_else(|| Arc::from(""));
                for s in ids {
                    if let Some(t) = self.tasks.get_mut(&s.id) {
                        if t.place == Place::Assigned(worker) {
                            t.place = Place::Running(worker);
                            t.started = Some((s.thread, s.at_us));
                            if let Some(job) = &t.job {
                                job.started_at(name.clone());
                            }
                        }
                    }
                }
            }
            ToScheduler::Done(done) => {
                for c in done {
                    self.done(worker, c);
                }
            }
            ToScheduler::Output(lines) => {
                let name = self
                    .workers
                    .get(&worker)
                    .map(|w| w.name.clone())
                    .unwrap_or_default();
                for l in lines {
                    emit_output(&name, l);
                }
            }
            ToScheduler::Log(lines) => {
                for l in lines {
                    emit_log(l);
                }
            }
            ToScheduler::Secede(_) => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.seceded += 1;
                }
            }
            ToScheduler::Rejoin(_) => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.seceded = w.seceded.saturating_sub(1);
                }
            }
            ToScheduler::Submit(subs) => {
                for s in subs {
                    self.forward(worker, s);
                }
            }
            ToScheduler::Handled(ids) => {
                for id in ids {
                    if let Some(run) = self.forwarded.remove(&(worker, id)) {
                        run.mark_handled();
                    }
                }
            }
            ToScheduler::Hello { .. } => {}
        }
    }

    /// Runs a task a worker's task submitted, in the flow run, and sends the
    /// outcome back to that worker.
    fn forward(&mut self, worker: u32, s: super::wire::Submission) {
        use super::wire::WireError;
        let writer = self.workers.get(&worker).and_then(|w| w.writer.clone());
        let reply = move |result: Result<ByteBuf, WireError>| {
            if let Some(w) = &writer {
                let _ = w.send(ToWorker::Resolved(vec![(s.id, result)]));
            }
        };
        let Some(flow) = &self.flow else {
            reply(Err(WireError::from_task_error(&TaskError::new(
                TaskErrorKind::Runner,
                "this cluster serves no flow run, so it cannot run work submitted from a task",
            ))));
            return;
        };
        let mut options = flowrun_core::TaskOptions::new();
        if let Some(p) = s.priority {
            options = options.priority(p);
        }
        if let Some(r) = s.resources {
            options = options.resources(r.into_iter().collect::<Resources>());
        }
        let args = s
            .args
            .into_iter()
            .map(|b| ArgSlot::Bytes(bytes::Bytes::from(b.into_vec())))
            .collect();
        match flow.submit_encoded(&s.key, args, options) {
            Err(e) => reply(Err(WireError::from_task_error(&e))),
            Ok(future) => {
                let run = future.run_ref();
                self.forwarded.insert((worker, s.id), run.clone());
                let done = run.clone();
                run.on_final(move || {
                    let result = match done.error() {
                        Some(e) => Err(WireError::from_task_error(&e)),
                        None => done
                            .encoded_result()
                            .and_then(|b| super::store::Payload::inline(&b))
                            .map_err(|e| WireError::from_task_error(&e)),
                    };
                    reply(result);
                });
            }
        }
    }

    fn done(&mut self, worker: u32, c: Completion) {
        let Some(mut task) = self.tasks.remove(&c.id) else {
            return;
        };
        if let Some(w) = self.workers.get_mut(&worker) {
            w.tasks.remove(&c.id);
            if let Some(n) = &task.needs {
                add(&mut w.free, n);
            }
        }
        self.finished += 1;
        self.unpend(task.key);
        let d = Duration::from_micros(c.duration_us);
        self.mean_duration = Some(match self.mean_duration {
            None => d,
            Some(m) => (m * 7 + d) / 8,
        });
        let per_key = self.durations.entry(task.key).or_insert(d);
        *per_key = (*per_key * 3 + d) / 4;
        let outcome = if c.result.is_ok() {
            "completed"
        } else {
            "failed"
        };
        self.record(&task, worker, d, outcome);
        if let Some(job) = task.job.take() {
            let result = c
                .result
                .map_err(super::wire::WireError::into_task_error)
                .and_then(super::store::Payload::into_bytes);
            job.finish(result);
        }
    }

    /// A worker is gone: reschedule what it held, count deaths of tasks
    /// that were running on it, and start a replacement.
    fn lost(&mut self, id: u32, why: String) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        self.launcher.kill(id);
        if w.state == WState::Running {
            self.running_changed(-1);
        }
        self.forwarded.retain(|(worker, _), _| *worker != id);
        let expected = w.state == WState::Closing || self.closing;
        if !expected {
            self.deaths += 1;
        }
        let mut rescheduled = 0;
        let mut crashed = 0;
        let mut crashed_bars = Vec::new();
        // The tasks the worker was executing: those it reported started,
        // plus, up to its thread count, the ones it would have started first
        // (a task can kill its worker before the "started" message leaves).
        let mut ranked: Vec<(i64, Reverse<u64>, u64, bool)> = w
            .tasks
            .iter()
            .filter_map(|tid| {
                self.tasks.get(tid).map(|t| {
                    (
                        t.priority,
                        Reverse(t.seq),
                        *tid,
                        t.place == Place::Running(id),
                    )
                })
            })
            .collect();
        ranked.sort_by_key(|r| Reverse((r.3, r.0, r.1)));
        let executing: HashSet<u64> = ranked
            .iter()
            .take((w.nthreads + w.seceded).max(ranked.iter().filter(|r| r.3).count()))
            .map(|r| r.2)
            .collect();
        for tid in w.tasks {
            let Some(t) = self.tasks.get_mut(&tid) else {
                continue;
            };
            let was_running = executing.contains(&tid);
            if was_running {
                t.deaths.get_or_insert_with(Default::default).push(format!(
                    "{} (pid {})",
                    w.name,
                    w.pid.unwrap_or(0)
                ));
            }
            let suspicious = t.deaths.as_ref().map_or(0, |d| d.len() as u32);
            if let Some((thread, start)) = t.started.take() {
                let end = super::worker::now_us();
                crashed_bars.push(Bar {
                    task: t.task_name.clone(),
                    index: t.run.index(),
                    worker: id,
                    thread,
                    start_us: start,
                    end_us: end.max(start),
                    outcome: "crashed",
                });
            }
            if was_running && suspicious > self.cfg.allowed_failures {
                let t = self.tasks.remove(&tid).expect("present");
                self.unpend(t.key);
                crashed += 1;
                if let Some(job) = t.job {
                    job.finish(Err(TaskError::new(
                        TaskErrorKind::KilledWorker,
                        format!(
                            "KilledWorker: attempted to run task run '{}' on {} different workers, but all those workers died while running it: {}",
                                                                    t.run.name(),
                            suspicious,
                            t.deaths.as_deref().map(|d| d.join(", ")).unwrap_or_default()
                        ),
                    )));
                }
            } else {
                t.place = Place::Queued;
                let key = (t.priority, Reverse(t.seq), tid);
                self.groups[t.group].heap.push(key);
                rescheduled += 1;
            }
        }
        for bar in crashed_bars {
            self.push_stream(bar);
        }
        if !expected {
            tracing::warn!(
                target: "flowrun_dask::cluster",
                "Worker '{}'{} was lost: {why}; {rescheduled} task run(s) rescheduled{}",
                w.name,
                w.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                if crashed > 0 {
                    format!(", {crashed} crashed after too many worker deaths")
                } else {
                    String::new()
                }
            );
            self.fill_to_target();
        }
    }

    fn startup_failed(&mut self, id: u32, reason: String) {
        if let Some(w) = self.workers.remove(&id) {
            if w.state == WState::Running {
                self.running_changed(-1);
            }
        }
        self.launcher.kill(id);
        if self.closing {
            return;
        }
        self.startup_failures += 1;
        tracing::warn!(target: "flowrun_dask::cluster", "A worker failed to start: {reason}");
        let any_running = self.workers.values().any(|w| w.state == WState::Running);
        if self.startup_failures >= MAX_STARTUP_FAILURES && !any_running {
            let why = format!(
                "the cluster's worker processes fail to start ({} attempts in a row); the last one: {reason}",
                self.startup_failures
            );
            tracing::error!(target: "flowrun_dask::cluster", "{why}");
            self.broken = Some(why.clone());
            self.fail_everything(&why);
        } else {
            self.fill_to_target();
        }
    }

    fn fail_everything(&mut self, why: &str) {
        for (_, t) in self.tasks.drain() {
            if let Some(job) = t.job {
                job.finish(Err(TaskError::new(TaskErrorKind::Crashed, why)));
            }
        }
        for g in &mut self.groups {
            g.heap.clear();
        }
    }

    fn alive(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.state != WState::Closing)
            .count()
    }

    fn fill_to_target(&mut self) {
        if self.closing || self.broken.is_some() {
            return;
        }
        while self.alive() < self.target {
            let id = self.next_worker;
            self.next_worker += 1;
            let name = format!("worker-{id}");
            self.worker_names.insert(id, Arc::from(name.as_str()));
            self.workers.insert(
                id,
                Worker {
                    name: name.clone(),
                    state: WState::Starting,
                    since: Instant::now(),
                    pid: None,
                    writer: None,
                    nthreads: self.cfg.nthreads,
                    seceded: 0,
                    free: self.cfg.resources.clone(),
                    tasks: FxHashSet::default(),
                    shared_name: Arc::from(name.as_str()),
                    outbox: Vec::new(),
                    idle_checks: 0,
                },
            );
            match self.launcher.launch(id, &name) {
                Ok(pid) => {
                    if let Some(w) = self.workers.get_mut(&id) {
                        w.pid = (pid != 0).then_some(pid);
                    }
                }
                Err(reason) => {
                    self.startup_failed(id, format!("it could not be started: {reason}"));
                    return;
                }
            }
        }
    }

    /// Closes idle workers above the target (scaling down).
    fn retire_extra(&mut self) {
        let mut extra = self.alive().saturating_sub(self.target);
        if extra == 0 {
            return;
        }
        let mut idle: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state != WState::Closing && w.tasks.is_empty())
            .map(|(id, _)| *id)
            .collect();
        idle.sort_unstable_by(|a, b| b.cmp(a));
        for id in idle {
            if extra == 0 {
                break;
            }
            self.retire(id);
            extra -= 1;
        }
    }

    fn retire(&mut self, id: u32) {
        let was_running = self
            .workers
            .get(&id)
            .is_some_and(|w| w.state == WState::Running);
        if was_running {
            // Counted as gone from now on, in status and history alike.
            self.running_changed(-1);
        }
        if let Some(w) = self.workers.get_mut(&id) {
            w.state = WState::Closing;
            match &w.writer {
                Some(tx) => {
                    let _ = tx.send(ToWorker::Shutdown);
                }
                None => self.launcher.kill(id),
            }
        }
    }

    fn close(&mut self) {
        self.closing = true;
        let ids: Vec<u32> = self.workers.keys().copied().collect();
        for id in ids {
            self.retire(id);
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        // Workers that take too long to start are killed and replaced.
        let slow: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.state == WState::Starting && now - w.since > self.cfg.startup_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in slow {
            self.launcher.kill(id);
            let t = self.cfg.startup_timeout;
            self.startup_failed(
                id,
                format!("it did not connect within {t:?} (client_kwargs.startup_timeout)"),
            );
        }
        // Workers above their memory limit are restarted, like Dask's nanny does.
        if let Some(limit) = self.cfg.memory_limit {
            let over: Vec<(u32, u64)> = self
                .workers
                .iter()
                .filter(|(_, w)| w.state == WState::Running)
                .filter_map(|(id, _)| {
                    self.launcher
                        .memory(*id)
                        .filter(|m| *m > limit)
                        .map(|m| (*id, m))
                })
                .collect();
            for (id, used) in over {
                let name = self
                    .workers
                    .get(&id)
                    .map(|w| w.name.clone())
                    .unwrap_or_default();
                tracing::warn!(
                    target: "flowrun_dask::cluster",
                    "Worker '{name}' uses {} MB, above its memory limit of {} MB: restarting it",
                    used / 1_000_000,
                    limit / 1_000_000
                );
                self.launcher.kill(id);
            }
        }
        // Tasks no worker can run fail after no_workers_timeout, if set.
        if let Some(limit) = self.cfg.no_workers_timeout {
            let expired: Vec<u64> = self
                .tasks
                .iter()
                .filter(|(_, t)| t.place == Place::NoWorker && now - t.since > limit)
                .map(|(id, _)| id)
                .collect();
            for id in expired {
                if let Some(t) = self.tasks.remove(&id) {
                    self.unpend(t.key);
                    if let Some(job) = t.job {
                        let needs = t.needs.map(|n| n.to_string()).unwrap_or_default();
                        job.finish(Err(TaskError::new(
                            TaskErrorKind::Runner,
                            format!(
                                "no worker could run it within {limit:?} (cluster_kwargs.no_workers_timeout): it needs {needs}"
                            ),
                        )));
                    }
                }
            }
        }
        if now - self.last_waiting_log > Duration::from_secs(30) {
            let waiting = self.waiting();
            if !waiting.is_empty() {
                self.last_waiting_log = now;
                tracing::warn!(
                    target: "flowrun_dask::cluster",
                    "{} task run(s) are waiting for a worker that can run them: {}",
                    waiting.len(),
                    waiting.iter().take(5).map(|w| format!("'{}' ({})", w.run, w.reason)).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }

    fn record(&mut self, task: &Task, worker: u32, duration: Duration, outcome: &'static str) {
        let Some((thread, start_us)) = task.started else {
            return;
        };
        self.push_stream(Bar {
            task: task.task_name.clone(),
            index: task.run.index(),
            worker,
            thread,
            start_us,
            end_us: start_us + duration.as_micros() as u64,
            outcome,
        });
    }

    fn push_stream(&mut self, entry: Bar) {
        if self.stream.len() == STREAM_CAPACITY {
            self.stream.pop_front();
            self.stream_base += 1;
        }
        self.stream.push_back(entry);
    }

    fn unpend(&mut self, key: &'static str) {
        if let Some(n) = self.pending_keys.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.pending_keys.remove(key);
            }
        }
    }

    fn running_changed(&mut self, delta: i64) {
        self.running_workers = (self.running_workers as i64 + delta).max(0) as usize;
        self.history
            .push((std::time::SystemTime::now(), self.running_workers));
        if self.cfg.adapt.is_some() && !self.closing {
            tracing::info!(
                target: "flowrun_dask::adaptive",
                "The cluster has {} worker{} now",
                self.running_workers,
                if self.running_workers == 1 { "" } else { "s" }
            );
        }
    }

    /// Estimated work queued or running, and how many tasks.
    fn pending_work(&self) -> (Duration, usize) {
        let mut work = Duration::ZERO;
        let mut tasks = 0;
        for (key, n) in &self.pending_keys {
            let each = self.durations.get(key).copied().unwrap_or(UNKNOWN_DURATION);
            work += each * (*n as u32);
            tasks += n;
        }
        (work, tasks)
    }

    /// How many workers the work ahead needs, within the adaptive bounds.
    fn desired_workers(&self, a: &Adapt) -> usize {
        let (work, tasks) = self.pending_work();
        let per_worker = a.target_duration.as_secs_f64() * self.cfg.nthreads as f64;
        let for_work = (work.as_secs_f64() / per_worker).ceil() as usize;
        // Never more workers than there are tasks to fill their threads.
        let fillable = tasks.div_ceil(self.cfg.nthreads.max(1));
        let wanted = for_work.min(fillable).max(usize::from(tasks > 0));
        wanted.max(a.minimum).min(a.maximum.unwrap_or(usize::MAX))
    }

    /// Scales up as soon as the work ahead exceeds what the workers can do
    /// within the target duration.
    fn adapt_up(&mut self) {
        let Some(a) = self.cfg.adapt.clone() else {
            return;
        };
        if self.closing || self.broken.is_some() {
            return;
        }
        let desired = self.desired_workers(&a);
        if desired > self.alive() {
            let (work, tasks) = self.pending_work();
            tracing::info!(
                target: "flowrun_dask::adaptive",
                "Scaling up from {} to {desired} workers: {tasks} task run(s) with about {:.1} s of work ahead",
                self.alive(),
                work.as_secs_f64()
            );
            self.target = desired;
            self.fill_to_target();
        }
    }

    /// Scales down workers that stayed idle for `wait_count` checks in a row,
    /// never below the minimum or what the work ahead needs.
    fn adapt_down(&mut self) {
        let Some(a) = self.cfg.adapt.clone() else {
            return;
        };
        if self.closing {
            return;
        }
        for w in self.workers.values_mut() {
            if w.state == WState::Running && w.tasks.is_empty() && w.seceded == 0 {
                w.idle_checks += 1;
            } else {
                w.idle_checks = 0;
            }
        }
        let keep = self.desired_workers(&a).max(a.minimum);
        let mut alive = self.alive();
        if alive <= keep {
            return;
        }
        let mut idle: Vec<(u32, u32)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WState::Running && w.idle_checks >= a.wait_count)
            .map(|(id, w)| (*id, w.idle_checks))
            .collect();
        idle.sort_by_key(|(id, checks)| (Reverse(*checks), Reverse(*id)));
        for (id, _) in idle {
            if alive <= keep {
                break;
            }
            tracing::info!(
                target: "flowrun_dask::adaptive",
                "Scaling down: worker '{}' was idle for {} checks",
                self.workers.get(&id).map(|w| w.name.as_str()).unwrap_or("?"),
                a.wait_count
            );
            self.retire(id);
            alive -= 1;
        }
        self.target = alive;
    }

    fn prefetch(&self) -> usize {
        match self.mean_duration {
            Some(d) if d < PREFETCH_BELOW => PREFETCH_DEPTH,
            _ => 0,
        }
    }

    fn free_slots(&self, w: &Worker, prefetch: usize) -> usize {
        (w.nthreads + w.seceded + prefetch).saturating_sub(w.tasks.len())
    }

    fn pick_worker(&self, needs: &Option<Resources>, prefetch: usize) -> Option<u32> {
        let mut best: Option<(usize, std::cmp::Reverse<u32>)> = None;
        for (id, w) in &self.workers {
            if w.state != WState::Running {
                continue;
            }
            // Resource-holding tasks wait for a real thread, so a queue of
            // short tasks never sits in front of them.
            let slots = self.free_slots(w, if needs.is_some() { 0 } else { prefetch });
            if slots == 0 {
                continue;
            }
            if let Some(n) = needs {
                if !w.free.covers(n) {
                    continue;
                }
            }
            let key = (slots, std::cmp::Reverse(*id));
            if best.is_none_or(|b| key > b) {
                best = Some(key);
            }
        }
        best.map(|(_, Reverse(id))| id)
    }

    pub(crate) fn schedule(&mut self) {
        let prefetch = self.prefetch();
        loop {
            let mut best: Option<(QueueKey, usize, u32)> = None;
            for (gi, g) in self.groups.iter().enumerate() {
                let Some(top) = g.heap.peek() else { continue };
                if best.is_some_and(|(b, _, _)| *top <= b) {
                    continue;
                }
                if let Some(w) = self.pick_worker(&g.needs, prefetch) {
                    best = Some((*top, gi, w));
                }
            }
            let Some((_, gi, wid)) = best else { break };
            let (_, _, tid) = self.groups[gi].heap.pop().expect("peeked");
            let Some(task) = self.tasks.get_mut(&tid) else {
                continue;
            };
            let Some(job) = &task.job else { continue };
            task.place = Place::Assigned(wid);
            let args = job.shared_args();
            let assignment = AssignmentOut {
                id: tid,
                key: job.task_key(),
                name: task.task_name.clone(),
                index: task.run.index(),
                priority: task.priority,
                seq: task.seq,
                args,
            };
            let w = self.workers.get_mut(&wid).expect("picked");
            if let Some(n) = &task.needs {
                subtract(&mut w.free, n);
            }
            w.tasks.insert(tid);
            w.outbox.push(assignment);
        }
    }

    fn flush(&mut self) {
        for w in self.workers.values_mut() {
            if w.outbox.is_empty() {
                continue;
            }
            if let Some(tx) = &w.writer {
                let _ = tx.send(ToWorker::Run(std::mem::take(&mut w.outbox)));
            }
        }
    }

    fn waiting(&self) -> Vec<WaitingTask> {
        self.tasks
            .values()
            .filter(|t| t.place == Place::NoWorker)
            .map(|t| WaitingTask {
                run: t.run.name(),
                reason: format!(
                    "it needs {}, and no worker of this cluster offers that (each offers {})",
                    t.needs.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                    self.cfg.resources
                ),
            })
            .collect()
    }

    fn status(&self) -> ClusterStatus {
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|(id, w)| {
                let running: Vec<String> = w
                    .tasks
                    .iter()
                    .filter_map(|t| self.tasks.get(t))
                    .filter(|t| t.place == Place::Running(*id))
                    .map(|t| t.run.name())
                    .collect();
                WorkerStatus {
                    name: w.name.clone(),
                    pid: w.pid.or_else(|| self.launcher.pid(*id)),
                    state: match w.state {
                        WState::Starting => "starting",
                        WState::Running => "running",
                        WState::Closing => "closing",
                    },
                    nthreads: w.nthreads,
                    resources: self.cfg.resources.clone(),
                    free_resources: w.free.clone(),
                    queued: w.tasks.len() - running.len(),
                    running,
                }
            })
            .collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterStatus {
            address: self.cfg.address.clone(),
            workers,
            queued: self.groups.iter().map(|g| g.heap.len()).sum(),
            waiting: self.waiting(),
            deaths: self.deaths,
            finished: self.finished,
            worker_count_history: self.history.clone(),
        }
    }
}

fn tail(output: &str) -> String {
    let t = output.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!("; its output ended with:\n{t}")
    }
}

/// Re-emits a line a task printed in a worker, attributed to its run.
fn emit_output(worker: &str, l: OutputLine) {
    let who = match l.runs.len() {
        1 => format!("Task run '{}'", l.runs[0]),
        0 => format!("Worker '{worker}'"),
        _ => format!("Worker '{worker}' (running {})", l.runs.join(", ")),
    };
    let line = l.line.as_str();
    if l.runs.is_empty() {
        tracing::debug!(target: "flowrun_dask::worker_output", { flowrun.run = who.as_str() }, "{line}");
    } else if l.stderr {
        if tracing::enabled!(target: "flowrun_dask::task_output", tracing::Level::WARN) {
            tracing::warn!(target: "flowrun_dask::task_output", { flowrun.run = who.as_str() }, "{line}");
        } else {
            eprintln!("{line}");
        }
    } else if tracing::enabled!(target: "flowrun_dask::task_output", tracing::Level::INFO) {
        tracing::info!(target: "flowrun_dask::task_output", { flowrun.run = who.as_str() }, "{line}");
    } else {
        println!("{line}");
    }
}

/// Re-emits a log event from a worker with its run's name.
fn emit_log(l: LogLine) {
    let who = l
        .run
        .map(|r| format!("Task run '{r}'"))
        .unwrap_or_else(|| "flowrun_dask::worker".into());
    let m = l.message.as_str();
    let w = who.as_str();
    match l.level {
        0 => tracing::error!(target: "flowrun_dask::worker_log", { flowrun.run = w }, "{m}"),
        1 => tracing::warn!(target: "flowrun_dask::worker_log", { flowrun.run = w }, "{m}"),
        2 => tracing::info!(target: "flowrun_dask::worker_log", { flowrun.run = w }, "{m}"),
        3 => tracing::debug!(target: "flowrun_dask::worker_log", { flowrun.run = w }, "{m}"),
        _ => tracing::trace!(target: "flowrun_dask::worker_log", { flowrun.run = w }, "{m}"),
    }
}

/// Shared by the acceptor: which worker ids may still connect.
pub(crate) type Expected = Arc<std::sync::Mutex<HashSet<u32>>>;

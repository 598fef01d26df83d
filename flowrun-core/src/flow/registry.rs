//! The shared record of one flow run: its task runs that are not final, their
//! counts and failures, cancellation, observers, and waiting until it is idle.
//! Every task run of a flow run holds it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::Waker;

use crate::flow::outcome::TaskRunCounts;
use crate::names;
use crate::observe::{RunEvent, RunObserver};
use crate::plumbing::{lock, wait};
use crate::run::error::{TaskError, TaskErrorKind, TaskRunFailure};
use crate::run::record::{AnyRun, RunId, RunRef, SequenceHasher};
use crate::run::state::{State, StateKind};
use crate::runner::thread_pool::ThreadPoolTaskRunner;
use crate::runner::{Execution, FlowRunInfo, TaskRunner};

/// The runs of a flow run that are not final, so a failing or timed-out flow
/// can cancel them. Sharded: the submitting thread inserts and worker
/// threads remove at the same time. Shard `id % 16` holds its runs by
/// `id / 16`: consecutive keys, which [`SequenceHasher`] puts in
/// neighbouring slots (keyed by the id itself, a shard's keys would share
/// their low four bits and crowd into a sixteenth of the slots).
#[derive(Default)]
struct Live {
    shards: [Shard; 16],
}

type Shard = Mutex<HashMap<u64, RunRef, BuildHasherDefault<SequenceHasher>>>;

impl Live {
    fn shard(&self, id: RunId) -> (&Shard, u64) {
        (&self.shards[(id.get() % 16) as usize], id.get() / 16)
    }

    fn insert(&self, run: RunRef) {
        let (shard, key) = self.shard(run.id());
        lock(shard).insert(key, run);
    }

    fn remove(&self, id: RunId) {
        let (shard, key) = self.shard(id);
        let removed = lock(shard).remove(&key);
        // Dropped outside the lock: it may be the last reference.
        drop(removed);
    }

    fn all(&self) -> Vec<RunRef> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).values().cloned().collect::<Vec<_>>())
            .collect()
    }
}

/// The record of one flow run, shared by its task runs.
pub(crate) struct FlowShared {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) flow_name: String,
    pub(crate) runner: Arc<dyn TaskRunner>,
    pub(crate) runner_name: String,
    pub(crate) execution: Execution,
    pub(crate) handles_retries: bool,
    detached: bool,
    outstanding: AtomicUsize,
    idle: Mutex<Vec<Waker>>,
    idle_cond: Condvar,
    live: Live,
    failures: Mutex<Vec<RunRef>>,
    counters: Mutex<Vec<(Cow<'static, str>, u64)>>,
    cancelled: AtomicBool,
    cancel_reason: Mutex<Option<TaskError>>,
    timed_out: AtomicBool,
    closed: AtomicBool,
    counts: [AtomicUsize; 4],
    /// Only ever appended to (before any task run, as a rule), so an event
    /// reads the list without a lock or a reference count: every thread of
    /// a busy pool changing a shared lock word or count per event made the
    /// cache line holding it travel between the cores each time.
    observers: Observers,
    has_observers: AtomicBool,
    /// Its parent flow run and finished subflows.
    pub(crate) links: crate::flow::subflow::Links,
    /// Whether the run history records it (its subflows follow it).
    pub(crate) history: AtomicBool,
    /// A hash of its parameters, for the FLOW_PARAMETERS cache policy, or
    /// why there is none.
    pub(crate) parameters: OnceLock<Result<String, String>>,
    /// The result options its task runs inherit (`persist_result`,
    /// `result_storage`), as in Prefect.
    pub(crate) results: OnceLock<crate::cache::Inherited>,
    /// Its home (see [`crate::home`]); `None`: the process's.
    pub(crate) home: Option<Arc<std::path::Path>>,
    /// `storage/` under its home, made at the first result that needs it.
    pub(crate) home_storage: OnceLock<crate::cache::ResultStorage>,
}

impl FlowShared {
    pub(crate) fn new(
        id: String,
        name: String,
        flow_name: String,
        runner: Arc<dyn TaskRunner>,
        detached: bool,
    ) -> FlowShared {
        FlowShared {
            id,
            name,
            flow_name,
            runner_name: runner.name().into_owned(),
            execution: runner.execution(),
            handles_retries: runner.handles_retries(),
            runner,
            detached,
            outstanding: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            idle_cond: Condvar::new(),
            live: Live::default(),
            failures: Mutex::new(Vec::new()),
            counters: Mutex::new(Vec::new()),
            cancelled: AtomicBool::new(false),
            cancel_reason: Mutex::new(None),
            timed_out: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            counts: Default::default(),
            observers: Observers::default(),
            has_observers: AtomicBool::new(false),
            links: Default::default(),
            history: AtomicBool::new(true),
            parameters: OnceLock::new(),
            results: OnceLock::new(),
            // The flow of task runs outside any flow serves every thread:
            // they use their own thread's home.
            home: if detached {
                None
            } else {
                crate::home::for_new_flow()
            },
            home_storage: OnceLock::new(),
        }
    }

    /// The hash of the flow run's parameters; `None` outside a flow run.
    pub(crate) fn parameters_key(&self) -> Option<Result<&str, String>> {
        if self.detached {
            return None;
        }
        Some(match self.parameters.get() {
            Some(Ok(k)) => Ok(k.as_str()),
            Some(Err(why)) => Err(why.clone()),
            None => Err("are not known".to_owned()),
        })
    }

    /// Whether this is the record of task runs made outside any flow run.
    pub(crate) fn is_detached(&self) -> bool {
        self.detached
    }

    pub(crate) fn add_observer(&self, observer: Arc<dyn RunObserver>) {
        self.observers.push(observer);
        self.has_observers.store(true, Ordering::Release);
    }

    /// Anyone watching (one atomic load on the hot path otherwise).
    pub(crate) fn observed(&self) -> bool {
        self.has_observers.load(Ordering::Acquire)
    }

    pub(crate) fn emit(&self, event: RunEvent) {
        for o in self.observers.iter() {
            o.run_changed(&event);
        }
    }

    pub(crate) fn emit_submitted(&self, run: &RunRef, upstreams: &[RunRef]) {
        for o in self.observers.iter() {
            o.run_submitted(run, upstreams);
        }
    }

    pub(crate) fn emit_flow_finished(&self, state: &State) {
        for o in self.observers.iter() {
            o.flow_finished(state);
        }
    }

    /// The flow that task runs outside any flow belong to: a shared thread
    /// pool, never closed.
    pub(crate) fn detached() -> Arc<FlowShared> {
        static DETACHED: OnceLock<Arc<FlowShared>> = OnceLock::new();
        DETACHED
            .get_or_init(|| {
                let runner = Arc::new(ThreadPoolTaskRunner::default());
                let shared = Arc::new(FlowShared::new(
                    names::random_id(),
                    "(no flow)".into(),
                    "(no flow)".into(),
                    runner.clone(),
                    true,
                ));
                let info = FlowRunInfo {
                    flow_name: shared.flow_name.clone(),
                    flow_run_name: shared.name.clone(),
                    flow_run_id: shared.id.clone(),
                    parent_flow_run_id: None,
                    flow: crate::flow::scope::FlowHandle(shared.clone()),
                    parameters: None,
                    tags: Vec::new(),
                    history: false,
                };
                let _ = runner.start(&info);
                shared
            })
            .clone()
    }

    // A `&Cow` keeps a borrowed `'static` name borrowed when it becomes a key.
    #[allow(clippy::ptr_arg)]
    pub(crate) fn next_index(&self, task_name: &Cow<'static, str>) -> u64 {
        // A flow has few task names: a short list beats hashing the name on
        // every submit, and most names are the same `&'static str`.
        let mut counters = lock(&self.counters);
        let same = |c: &Cow<'static, str>| {
            std::ptr::eq(c.as_ptr(), task_name.as_ptr()) || **c == **task_name
        };
        match counters.iter_mut().find(|(name, _)| same(name)) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                counters.push((task_name.clone(), 0));
                0
            }
        }
    }

    /// Starts tracking a run. Returns false once the flow run has ended.
    pub(crate) fn track(&self, run: RunRef) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        if self.observed() {
            self.emit(run.0.event(run.clone()));
        }
        self.live.insert(run);
        true
    }

    /// Called once by every run when it becomes final.
    /// `attempts` and `location` are the run's as it became final.
    pub(crate) fn run_finished(
        &self,
        run: Arc<dyn AnyRun>,
        state: &State,
        attempts: u32,
        location: Option<Arc<str>>,
    ) {
        log_task_finished(&*run, state);
        if self.observed() {
            self.emit(RunEvent {
                run: RunRef(run.clone()),
                state: state.clone(),
                attempts,
                location,
            });
        }
        let slot = match state.kind() {
            StateKind::Completed => 0,
            StateKind::Failed => 1,
            StateKind::Crashed => 2,
            _ => 3,
        };
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        if state.kind().is_failure() && !self.detached {
            lock(&self.failures).push(RunRef(run.clone()));
        }
        self.live.remove(run.id());
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            let wakers = std::mem::take(&mut *lock(&self.idle));
            self.idle_cond.notify_all();
            for w in wakers {
                w.wake();
            }
        }
    }

    /// Why new attempts must not start, if the flow run was cancelled.
    pub(crate) fn cancellation(&self) -> Option<TaskError> {
        if !self.cancelled.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.cancel_reason).clone()
    }

    pub(crate) fn set_cancelled(&self, reason: TaskError) {
        *lock(&self.cancel_reason) = Some(reason);
        self.cancelled.store(true, Ordering::Release);
    }

    fn live_runs(&self) -> Vec<RunRef> {
        self.live.all()
    }

    /// Cancels every run that has not started; running ones finish.
    pub(crate) fn cancel_pending(&self, why: &str) {
        let reason = TaskError::new(TaskErrorKind::Cancelled, why);
        self.set_cancelled(reason.clone());
        for run in self.live_runs() {
            if matches!(
                run.state().kind(),
                StateKind::Pending | StateKind::AwaitingRetry
            ) {
                cancel_run(&run, reason.clone());
            }
        }
    }

    /// Ends every run that is not final: the flow run stops waiting for them.
    pub(crate) fn abandon_all(&self, why: &str) {
        let reason = TaskError::new(TaskErrorKind::Cancelled, why);
        self.set_cancelled(reason.clone());
        for run in self.live_runs() {
            cancel_run(&run, reason.clone());
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) == 0
    }

    pub(crate) fn wait_idle(&self) {
        if self.is_idle() {
            return;
        }
        crate::exec::pool::blocking(|| {
            let mut guard = lock(&self.idle);
            while !self.is_idle() {
                guard = wait(&self.idle_cond, guard);
            }
        });
    }

    pub(crate) async fn wait_idle_async(&self) {
        std::future::poll_fn(|cx| {
            if self.is_idle() {
                return std::task::Poll::Ready(());
            }
            let mut wakers = lock(&self.idle);
            if self.is_idle() {
                return std::task::Poll::Ready(());
            }
            wakers.push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }

    pub(crate) fn counts(&self) -> TaskRunCounts {
        TaskRunCounts {
            completed: self.counts[0].load(Ordering::Relaxed),
            failed: self.counts[1].load(Ordering::Relaxed),
            crashed: self.counts[2].load(Ordering::Relaxed),
            cancelled: self.counts[3].load(Ordering::Relaxed),
        }
    }

    pub(crate) fn take_failures(&self) -> Vec<TaskRunFailure> {
        std::mem::take(&mut *lock(&self.failures))
            .into_iter()
            .map(|run| TaskRunFailure {
                task_run: run.name(),
                state: run.state(),
                error: run.error().unwrap_or_else(|| {
                    TaskError::new(TaskErrorKind::Cancelled, "no error recorded")
                }),
                observed: run.0.observed(),
            })
            .collect()
    }

    /// Records that the flow run's timeout expired.
    pub(crate) fn mark_timed_out(&self) {
        self.timed_out.store(true, Ordering::Release);
    }

    /// Whether the flow run's timeout expired in this attempt.
    pub(crate) fn is_timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Acquire)
    }

    /// Refuses new task runs from now on.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn reset_for_retry(&self) {
        lock(&self.failures).clear();
        *lock(&self.cancel_reason) = None;
        self.cancelled.store(false, Ordering::Release);
        self.timed_out.store(false, Ordering::Release);
    }
}

fn cancel_run(run: &RunRef, reason: TaskError) {
    run.0.clone().fail_dyn(reason);
}

fn log_task_finished(run: &dyn AnyRun, state: &State) {
    let level = match state.kind() {
        StateKind::Completed if crate::logging::log_completed_task_runs() => tracing::Level::INFO,
        StateKind::Completed => tracing::Level::DEBUG,
        StateKind::Cancelled => tracing::Level::WARN,
        _ => tracing::Level::ERROR,
    };
    // This runs per task run: the label and the message are written only
    // when a layer records the event (asking `tracing::enabled!` first is
    // no help: with per-layer filters it answers yes for an event every
    // layer then drops, as the log tap drops these).
    crate::run_event!(
        level,
        tracing::field::display(TaskRunLabel(run.label())),
        "Finished in state {state}"
    );
}

/// `Task run '<name>'`, written on demand.
struct TaskRunLabel<'a>(&'a crate::run::record::RunLabel);

impl std::fmt::Display for TaskRunLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Task run '{}'", self.0)
    }
}

/// A flow run's observers: a list only appended to, whose readers take no
/// lock and change no shared count (each link is set once, and read with an
/// acquire load). Adding one takes `adding`, so two never race for a link.
#[derive(Default)]
struct Observers {
    first: OnceLock<Box<ObserverLink>>,
    adding: Mutex<()>,
}

struct ObserverLink {
    observer: Arc<dyn RunObserver>,
    next: OnceLock<Box<ObserverLink>>,
}

impl Observers {
    fn push(&self, observer: Arc<dyn RunObserver>) {
        let _adding = lock(&self.adding);
        let mut end = &self.first;
        while let Some(link) = end.get() {
            end = &link.next;
        }
        let _ = end.set(Box::new(ObserverLink {
            observer,
            next: OnceLock::new(),
        }));
    }

    /// The observers, in the order they were added.
    fn iter(&self) -> impl Iterator<Item = &Arc<dyn RunObserver>> {
        std::iter::successors(self.first.get(), |link| link.next.get()).map(|l| &l.observer)
    }
}

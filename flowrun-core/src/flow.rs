//! Flow runs: the record shared by a flow run's task runs, and the entry
//! points `#[flow]` generates calls to.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::context::{self, Context, WithContext};
use crate::engine::{human_duration, CatchUnwindAny, Deadline};
use crate::error::{
    panic_message, FlowError, FlowErrorKind, TaskError, TaskErrorKind, TaskRunFailure,
};
use crate::names;
use crate::observe::{RunEvent, RunObserver};
use crate::options::{FlowOptions, RetryPolicy};
use crate::run::{AnyRun, RunId, RunRef};
use crate::runner::{Execution, FlowRunInfo, TaskRunner};
use crate::state::{State, StateKind};
use crate::task::{Cloner, IntoCount, IntoRetryDelay, IntoSeconds, Invocation, TaskResult};
use crate::thread_pool::ThreadPoolTaskRunner;

/// How many task runs of a flow run ended in each final state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskRunCounts {
    /// Completed.
    pub completed: usize,
    /// Failed (own error, timeout or upstream failure).
    pub failed: usize,
    /// Crashed.
    pub crashed: usize,
    /// Cancelled.
    pub cancelled: usize,
}

impl TaskRunCounts {
    /// All final task runs.
    pub fn total(&self) -> usize {
        self.completed + self.failed + self.crashed + self.cancelled
    }
}

/// The runs of a flow run that are not final, so a failing or timed-out flow
/// can cancel them. Sharded: the submitting thread inserts and worker
/// threads remove at the same time.
#[derive(Default)]
struct Live {
    shards: [Mutex<HashMap<RunId, RunRef, BuildHasherDefault<IdHasher>>>; 16],
}

/// Run ids are sequential numbers: they need no hashing.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Spread sequential ids over the table's buckets.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Live {
    fn shard(&self, id: RunId) -> &Mutex<HashMap<RunId, RunRef, BuildHasherDefault<IdHasher>>> {
        &self.shards[(id.get() % 16) as usize]
    }

    fn insert(&self, run: RunRef) {
        self.shard(run.id())
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run.id(), run);
    }

    fn remove(&self, id: RunId) {
        let removed = self
            .shard(id)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        // Dropped outside the lock: it may be the last reference.
        drop(removed);
    }

    fn all(&self) -> Vec<RunRef> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
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
    observers: Mutex<Vec<Arc<dyn RunObserver>>>,
    has_observers: AtomicBool,
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
            observers: Mutex::new(Vec::new()),
            has_observers: AtomicBool::new(false),
        }
    }

    pub(crate) fn add_observer(&self, observer: Arc<dyn RunObserver>) {
        self.observers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(observer);
        self.has_observers.store(true, Ordering::Release);
    }

    /// Anyone watching (one atomic load on the hot path otherwise).
    pub(crate) fn observed(&self) -> bool {
        self.has_observers.load(Ordering::Acquire)
    }

    pub(crate) fn emit(&self, run: RunRef, state: State) {
        let observers = self
            .observers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let event = RunEvent { run, state };
        for o in observers {
            o.run_changed(&event);
        }
    }

    pub(crate) fn emit_submitted(&self, run: &RunRef, upstreams: &[RunRef]) {
        let observers = self
            .observers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for o in observers {
            o.run_submitted(run, upstreams);
        }
    }

    fn emit_flow_finished(&self, state: &State) {
        let observers = self
            .observers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for o in observers {
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
                    flow: crate::scope::FlowHandle(shared.clone()),
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
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
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
            self.emit(run.clone(), run.state());
        }
        self.live.insert(run);
        true
    }

    /// Called once by every run when it becomes final.
    pub(crate) fn run_finished(&self, run: Arc<dyn AnyRun>, state: &State) {
        log_task_finished(&*run, state);
        if self.observed() {
            self.emit(RunRef(run.clone()), state.clone());
        }
        let slot = match state.kind() {
            StateKind::Completed => 0,
            StateKind::Failed => 1,
            StateKind::Crashed => 2,
            _ => 3,
        };
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        if state.kind().is_failure() && !self.detached {
            self.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(RunRef(run.clone()));
        }
        self.live.remove(run.id());
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            let wakers = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
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
        self.cancel_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_cancelled(&self, reason: TaskError) {
        *self.cancel_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.cancelled.store(true, Ordering::Release);
    }

    fn live_runs(&self) -> Vec<RunRef> {
        self.live.all()
    }

    /// Cancels every run that has not started; running ones finish.
    fn cancel_pending(&self, why: &str) {
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
    fn abandon_all(&self, why: &str) {
        let reason = TaskError::new(TaskErrorKind::Cancelled, why);
        self.set_cancelled(reason.clone());
        for run in self.live_runs() {
            cancel_run(&run, reason.clone());
        }
    }

    fn is_idle(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) == 0
    }

    fn wait_idle(&self) {
        if self.is_idle() {
            return;
        }
        crate::pool::blocking(|| {
            let mut guard = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            while !self.is_idle() {
                guard = self
                    .idle_cond
                    .wait(guard)
                    .unwrap_or_else(|p| p.into_inner());
            }
        });
    }

    async fn wait_idle_async(&self) {
        std::future::poll_fn(|cx| {
            if self.is_idle() {
                return std::task::Poll::Ready(());
            }
            let mut wakers = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if self.is_idle() {
                return std::task::Poll::Ready(());
            }
            wakers.push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }

    fn counts(&self) -> TaskRunCounts {
        TaskRunCounts {
            completed: self.counts[0].load(Ordering::Relaxed),
            failed: self.counts[1].load(Ordering::Relaxed),
            crashed: self.counts[2].load(Ordering::Relaxed),
            cancelled: self.counts[3].load(Ordering::Relaxed),
        }
    }

    fn take_failures(&self) -> Vec<TaskRunFailure> {
        std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()))
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

    pub(crate) fn wait_idle_public(&self) {
        self.wait_idle();
    }

    pub(crate) fn take_failures_public(&self) -> Vec<TaskRunFailure> {
        self.take_failures()
    }

    pub(crate) fn close_public(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn reset_for_retry(&self) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self.cancel_reason.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.cancelled.store(false, Ordering::Release);
        self.timed_out.store(false, Ordering::Release);
    }
}

fn cancel_run(run: &RunRef, reason: TaskError) {
    run.0.clone().fail_dyn(reason);
}

fn log_task_finished(run: &dyn AnyRun, state: &State) {
    if state.kind() == StateKind::Completed {
        if tracing::enabled!(tracing::Level::INFO) {
            tracing::info!(
                flowrun.run = format!("Task run '{}'", run.name()),
                "Finished in state {state}"
            );
        }
    } else if state.kind() == StateKind::Cancelled {
        if tracing::enabled!(tracing::Level::WARN) {
            tracing::warn!(
                flowrun.run = format!("Task run '{}'", run.name()),
                "Finished in state {state}"
            );
        }
    } else if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!(
            flowrun.run = format!("Task run '{}'", run.name()),
            "Finished in state {state}"
        );
    }
}

/// The static description of a flow, from its `#[flow(...)]` options.
#[derive(Debug)]
pub struct FlowMeta {
    pub(crate) name: String,
    pub(crate) description: Option<&'static str>,
    pub(crate) policy: RetryPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) config_error: Option<String>,
}

impl FlowMeta {
    /// Starts the description of the flow shown as `name`.
    pub fn builder(name: impl Into<String>) -> FlowMetaBuilder {
        FlowMetaBuilder {
            meta: FlowMeta {
                name: name.into(),
                description: None,
                policy: RetryPolicy::default(),
                timeout: None,
                config_error: None,
            },
        }
    }

    /// The flow's name, such as `count-to`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The description.
    pub fn description(&self) -> Option<&'static str> {
        self.description
    }
}

/// Builds a [`FlowMeta`].
pub struct FlowMetaBuilder {
    meta: FlowMeta,
}

impl FlowMetaBuilder {
    fn error(&mut self, message: String) {
        self.meta.config_error.get_or_insert(message);
    }

    /// `description = "..."`.
    pub fn description(mut self, description: &'static str) -> Self {
        self.meta.description = Some(description);
        self
    }

    /// `retries = n`.
    pub fn retries(mut self, retries: impl IntoCount) -> Self {
        match retries.into_count() {
            Ok(n) => self.meta.policy.retries = n,
            Err(e) => self.error(format!("retries: {e}")),
        }
        self
    }

    /// `retry_delay = ...`.
    pub fn retry_delay(mut self, delay: impl IntoRetryDelay) -> Self {
        match delay.into_retry_delay() {
            Ok(d) => self.meta.policy.delay = d,
            Err(e) => self.error(format!("retry_delay: {e}")),
        }
        self
    }

    /// `timeout = seconds`.
    pub fn timeout(mut self, timeout: impl IntoSeconds) -> Self {
        match timeout.into_duration() {
            Ok(d) => self.meta.timeout = Some(d),
            Err(e) => self.error(format!("timeout: {e}")),
        }
        self
    }

    /// The finished description.
    pub fn build(mut self) -> FlowMeta {
        if let Err(e) = self.meta.policy.validate() {
            self.error(e);
        }
        self.meta
    }
}

/// A flow: the type `#[flow]` generates for a function.
pub trait Flow: Sized + Send + Sync + 'static {
    /// The tuple of argument types.
    type Args: Send + 'static;
    /// The function's declared return type.
    type Raw: Send + 'static;
    /// The value of a completed flow run.
    type Output: Send + 'static;

    /// The flow's static description.
    fn meta() -> &'static FlowMeta;

    /// Calls the function.
    fn invoke(args: Self::Args) -> Invocation<Self::Raw>;

    /// Splits a return value into the flow run's value or its failure.
    fn outcome(raw: Self::Raw) -> Result<Self::Output, TaskError>;

    /// The runner from `task_runner = ...`, or the default thread pool.
    fn default_runner() -> Box<dyn TaskRunner>;

    /// Clones the arguments for flow retries, when they are `Clone`.
    fn args_clone() -> Option<Cloner<Self::Args>>;

    /// The per-call overrides carried by this handle.
    fn config(&self) -> &FlowConfig;
}

/// Per-handle overrides of a flow: options and the task runner.
#[derive(Clone, Default)]
pub struct FlowConfig {
    inner: Option<Box<FlowOverrides>>,
}

type RunnerFactory = Arc<dyn Fn() -> Box<dyn TaskRunner> + Send + Sync>;

#[derive(Clone, Default)]
struct FlowOverrides {
    options: FlowOptions,
    runner: Option<RunnerFactory>,
}

impl FlowConfig {
    /// No overrides.
    pub const NONE: FlowConfig = FlowConfig { inner: None };

    fn overrides(&mut self) -> &mut FlowOverrides {
        self.inner.get_or_insert_with(Default::default)
    }

    /// Adds `options` on top of earlier overrides.
    pub fn with_options(mut self, options: FlowOptions) -> FlowConfig {
        let o = self.overrides();
        let prev = std::mem::take(&mut o.options);
        o.options = FlowOptions {
            name: options.name.or(prev.name),
            run_name: options.run_name.or(prev.run_name),
            retries: options.retries.or(prev.retries),
            retry_delay: options.retry_delay.or(prev.retry_delay),
            timeout: options.timeout.or(prev.timeout),
        };
        self
    }

    /// Runs the flow's tasks on a copy of `runner` for each flow run.
    pub fn with_runner<R: TaskRunner + Clone>(mut self, runner: R) -> FlowConfig {
        self.overrides().runner = Some(Arc::new(move || Box::new(runner.clone())));
        self
    }
}

/// The result of a flow run with its final state: what
/// `my_flow.return_state(...)` returns.
#[derive(Debug)]
pub struct FlowRun<R> {
    id: String,
    name: String,
    flow_name: String,
    state: State,
    result: Result<R, FlowError>,
    task_failures: Vec<TaskRunFailure>,
    counts: TaskRunCounts,
    duration: Duration,
}

impl<R> FlowRun<R> {
    /// The flow run's final state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The flow run's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The flow run's name, such as `brave-otter`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The flow's name, such as `count-to`.
    pub fn flow_name(&self) -> &str {
        &self.flow_name
    }

    /// The value, or why the flow run failed.
    pub fn result(&self) -> Result<&R, &FlowError> {
        self.result.as_ref()
    }

    /// The value, or why the flow run failed.
    pub fn into_result(self) -> Result<R, FlowError> {
        self.result
    }

    /// Every task run that did not complete, handled or not.
    pub fn task_failures(&self) -> &[TaskRunFailure] {
        &self.task_failures
    }

    /// How many task runs ended in each final state.
    pub fn task_run_counts(&self) -> TaskRunCounts {
        self.counts
    }

    /// How long the flow run took.
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

/// How a flow body attempt ended.
enum Body<R> {
    Ok(R),
    Err(TaskError),
    Panic(String),
}

struct Started {
    shared: Arc<FlowShared>,
    policy: RetryPolicy,
    timeout: Option<Duration>,
    began: Instant,
    span: tracing::Span,
}

fn begin<F: Flow>(config: &FlowConfig) -> Result<Started, Box<FlowRun<F::Output>>> {
    crate::worker::divert_if_worker();
    crate::logging::init();
    let began = Instant::now();
    let meta = F::meta();
    let overrides = config.inner.as_deref();
    let options = overrides.map(|o| &o.options);
    let flow_name = options
        .and_then(|o| o.name.clone())
        .map(Cow::into_owned)
        .unwrap_or_else(|| meta.name.clone());
    let run_name = options
        .and_then(|o| o.run_name.clone())
        .unwrap_or_else(names::random_run_name);
    let runner: Arc<dyn TaskRunner> = match overrides.and_then(|o| o.runner.as_ref()) {
        Some(factory) => Arc::from(factory()),
        None => Arc::from(F::default_runner()),
    };
    let mut policy = meta.policy.clone();
    let mut timeout = meta.timeout;
    if let Some(o) = options {
        if let Some(n) = o.retries {
            policy.retries = n;
        }
        if let Some(d) = &o.retry_delay {
            policy.delay = d.clone();
        }
        if let Some(t) = o.timeout {
            timeout = t;
        }
    }
    let shared = Arc::new(FlowShared::new(
        names::random_id(),
        run_name,
        flow_name,
        runner.clone(),
        false,
    ));
    let span = tracing::info_span!("flow_run", run = %shared.name);
    let label = format!("Flow run '{}'", shared.name);
    tracing::info!(
        flowrun.run = label.as_str(),
        "Beginning flow run '{}' for flow '{}'",
        shared.name,
        shared.flow_name
    );
    let fail_early = |kind: FlowErrorKind, message: String| {
        let error = FlowError::new(kind, shared.name.clone(), message.clone());
        let state = State::new(StateKind::Failed).with_message(message);
        // Observers added before the failure see the flow run end.
        shared.emit_flow_finished(&state);
        tracing::error!(flowrun.run = label.as_str(), "Finished in state {state}");
        Box::new(FlowRun {
            id: shared.id.clone(),
            name: shared.name.clone(),
            flow_name: shared.flow_name.clone(),
            state,
            result: Err(error),
            task_failures: Vec::new(),
            counts: TaskRunCounts::default(),
            duration: began.elapsed(),
        })
    };
    if let Some(e) = meta
        .config_error
        .clone()
        .or_else(|| policy.validate().err())
    {
        return Err(fail_early(
            FlowErrorKind::RunnerFailed,
            format!("flow '{}' has an invalid option: {e}", shared.flow_name),
        ));
    }
    let info = FlowRunInfo {
        flow_name: shared.flow_name.clone(),
        flow_run_name: shared.name.clone(),
        flow_run_id: shared.id.clone(),
        flow: crate::scope::FlowHandle(shared.clone()),
    };
    for registration in inventory::iter::<crate::observe::ObserverRegistration> {
        if let Some(observer) = (registration.factory)(&info) {
            shared.add_observer(observer);
        }
    }
    match catch_unwind(AssertUnwindSafe(|| runner.start(&info))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(fail_early(
                FlowErrorKind::RunnerFailed,
                format!("{} could not start: {e}", shared.runner_name),
            ))
        }
        Err(p) => {
            return Err(fail_early(
                FlowErrorKind::RunnerFailed,
                format!(
                    "{} panicked while starting: {}",
                    shared.runner_name,
                    panic_message(&*p)
                ),
            ))
        }
    }
    Ok(Started {
        shared,
        policy,
        timeout,
        began,
        span,
    })
}

impl Started {
    fn context(&self) -> Context {
        Context {
            flow: Some(self.shared.clone()),
            task_run: None,
            label: None,
            span: Some(self.span.clone()),
            annotations: Vec::new(),
        }
    }

    fn label(&self) -> String {
        format!("Flow run '{}'", self.shared.name)
    }

    fn arm_timeout(&self) -> Option<crate::timer::TimerHandle> {
        let t = self.timeout?;
        let shared = self.shared.clone();
        Some(crate::timer::schedule(Instant::now() + t, move || {
            let why = format!("the flow run timed out after {}", human_duration(t));
            shared.timed_out.store(true, Ordering::Release);
            tracing::warn!(
                flowrun.run = format!("Flow run '{}'", shared.name),
                "Flow run exceeded its timeout of {}; its unfinished task runs are cancelled",
                human_duration(t)
            );
            shared.abandon_all(&why);
        }))
    }

    /// After a body attempt: stop pending work if it failed, wait for the rest.
    fn settle_attempt<R>(&self, body: &Body<R>) {
        if !matches!(body, Body::Ok(_)) {
            self.shared
                .cancel_pending("the flow run failed before this task run started");
        }
    }

    /// Whether to retry after `outcome`; sleeps the retry delay when so.
    fn retry_delay<R>(&self, attempt: u32, outcome: &Result<R, FlowError>) -> Option<Duration> {
        let Err(error) = outcome else {
            return None;
        };
        if attempt > self.policy.retries {
            return None;
        }
        let delay = self.policy.delay_before(attempt);
        tracing::warn!(
            flowrun.run = self.label().as_str(),
            "Attempt {attempt} failed: {}. Retry {attempt}/{} will start {} from now",
            error.message(),
            self.policy.retries,
            human_duration(delay)
        );
        self.shared.reset_for_retry();
        Some(delay)
    }

    fn conclude<R>(
        &self,
        body: Body<R>,
        timed_out: bool,
    ) -> (Result<R, FlowError>, Vec<TaskRunFailure>) {
        let failures = self.shared.take_failures();
        let name = self.shared.name.clone();
        let unhandled: Vec<&TaskRunFailure> = failures.iter().filter(|f| !f.observed).collect();
        let describe = |list: &[&TaskRunFailure]| {
            list.iter()
                .map(|f| format!("'{}' {}", f.task_run, f.state))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let result = if timed_out {
            let t = self.timeout.unwrap_or_default();
            Err(FlowError::new(
                FlowErrorKind::TimedOut,
                name,
                format!("timed out after {}", human_duration(t)),
            ))
        } else {
            match body {
                Body::Ok(value) if unhandled.is_empty() => Ok(value),
                Body::Ok(_) => Err(FlowError::new(
                    FlowErrorKind::TaskRunsFailed,
                    name,
                    format!(
                        "{} task run{} failed and nothing handled {}: {}",
                        unhandled.len(),
                        if unhandled.len() == 1 { "" } else { "s" },
                        if unhandled.len() == 1 { "it" } else { "them" },
                        describe(&unhandled)
                    ),
                )),
                Body::Err(e) => {
                    let mut message = e.message().to_owned();
                    if !unhandled.is_empty() {
                        message.push_str(&format!(
                            " (also unhandled task run failures: {})",
                            describe(&unhandled)
                        ));
                    }
                    Err(FlowError::new(FlowErrorKind::Error, name, message).with_source(e.source()))
                }
                Body::Panic(p) => Err(FlowError::new(
                    FlowErrorKind::Panic,
                    name,
                    format!("the flow panicked: {p}"),
                )),
            }
        };
        let result = result.map_err(|e| e.with_task_failures(failures.clone()));
        (result, failures)
    }

    fn finish<R>(self, result: Result<R, FlowError>, failures: Vec<TaskRunFailure>) -> FlowRun<R> {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::Release);
        let state = match &result {
            Ok(_) => State::new(StateKind::Completed),
            Err(e) if e.kind() == &FlowErrorKind::TimedOut => State::new(StateKind::Failed)
                .with_name("TimedOut")
                .with_message(e.message()),
            Err(e) => State::new(StateKind::Failed).with_message(e.message()),
        };
        shared.emit_flow_finished(&state);
        if state.is_completed() {
            tracing::info!(
                flowrun.run = self.label().as_str(),
                "Finished in state {state}"
            );
        } else {
            tracing::error!(
                flowrun.run = self.label().as_str(),
                "Finished in state {state}"
            );
        }
        FlowRun {
            id: shared.id.clone(),
            name: shared.name.clone(),
            flow_name: shared.flow_name.clone(),
            state,
            result,
            task_failures: failures,
            counts: shared.counts(),
            duration: self.began.elapsed(),
        }
    }

    fn shutdown_runner(&self) {
        shutdown_runner(
            self.shared.runner.clone(),
            self.label(),
            self.shared.runner_name.clone(),
        );
    }
}

fn shutdown_runner(runner: Arc<dyn TaskRunner>, label: String, runner_name: String) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| runner.shutdown())) {
        tracing::error!(
            flowrun.run = label.as_str(),
            "{runner_name} panicked while shutting down: {}",
            panic_message(&*p)
        );
    }
}

fn body_of<F: Flow>(raw: Result<F::Raw, Box<dyn std::any::Any + Send>>) -> Body<F::Output> {
    match raw {
        Err(p) => Body::Panic(panic_message(&*p)),
        Ok(raw) => match F::outcome(raw) {
            Ok(v) => Body::Ok(v),
            Err(e) => Body::Err(e),
        },
    }
}

struct ArgsHolder<A> {
    args: Option<A>,
    clone: Option<fn(&A) -> A>,
}

impl<A> ArgsHolder<A> {
    fn next(&mut self, last: bool) -> Option<A> {
        match self.clone {
            Some(c) if !last => self.args.as_ref().map(c),
            _ => self.args.take(),
        }
    }
}

/// Runs a flow to the end on this thread: what calling a sync `#[flow]` does.
pub fn run_flow<F: Flow>(config: &FlowConfig, args: F::Args) -> FlowRun<F::Output> {
    let started = match begin::<F>(config) {
        Ok(s) => s,
        Err(run) => return *run,
    };
    let mut holder = ArgsHolder {
        args: Some(args),
        clone: F::args_clone(),
    };
    let mut attempt = 1;
    let (result, failures) = loop {
        let last = attempt > started.policy.retries || holder.clone.is_none();
        let Some(args) = holder.next(last) else {
            unreachable!("flow retries only with cloneable arguments")
        };
        let watchdog = started.arm_timeout();
        let raw = {
            let _ctx = context::enter(started.context());
            let _span = started.span.enter();
            catch_unwind(AssertUnwindSafe(|| match F::invoke(args) {
                Invocation::Ready(raw) => raw,
                Invocation::Future(fut) => crate::rt::runtime().block_on(fut),
            }))
        };
        let body = body_of::<F>(raw);
        started.settle_attempt(&body);
        started.shared.wait_idle();
        if let Some(w) = watchdog {
            w.cancel();
        }
        let timed_out = started.shared.timed_out.load(Ordering::Acquire);
        let (result, failures) = started.conclude(body, timed_out);
        match started.retry_delay(attempt, &result) {
            Some(delay) if !last => {
                crate::pool::blocking(|| std::thread::sleep(delay));
                attempt += 1;
            }
            _ => break (result, failures),
        }
    };
    started.shutdown_runner();
    started.finish(result, failures)
}

/// Runs a flow to the end without blocking the executor: what calling an
/// async `#[flow]` does.
pub async fn run_flow_async<F: Flow>(config: FlowConfig, args: F::Args) -> FlowRun<F::Output> {
    let started = match begin::<F>(&config) {
        Ok(s) => s,
        Err(run) => return *run,
    };
    let mut holder = ArgsHolder {
        args: Some(args),
        clone: F::args_clone(),
    };
    let mut attempt = 1;
    let (result, failures) = loop {
        let last = attempt > started.policy.retries || holder.clone.is_none();
        let Some(args) = holder.next(last) else {
            unreachable!("flow retries only with cloneable arguments")
        };
        let invoked = {
            let _ctx = context::enter(started.context());
            catch_unwind(AssertUnwindSafe(|| F::invoke(args)))
        };
        let mut timed_out = false;
        let raw = match invoked {
            Err(p) => Err(p),
            Ok(Invocation::Ready(raw)) => Ok(raw),
            Ok(Invocation::Future(fut)) => {
                let guarded = CatchUnwindAny::new(WithContext {
                    ctx: started.context(),
                    inner: fut,
                });
                match started.timeout {
                    None => guarded.await,
                    Some(t) => match Deadline::new(guarded, t).await {
                        Some(r) => r,
                        None => {
                            timed_out = true;
                            let why = format!("the flow run timed out after {}", human_duration(t));
                            tracing::warn!(
                                flowrun.run = started.label().as_str(),
                                "Flow run exceeded its timeout of {}; its unfinished task runs are cancelled",
                                human_duration(t)
                            );
                            started.shared.abandon_all(&why);
                            Err(Box::new(why) as Box<dyn std::any::Any + Send>)
                        }
                    },
                }
            }
        };
        let body = body_of::<F>(raw);
        started.settle_attempt(&body);
        started.shared.wait_idle_async().await;
        let (result, failures) = started.conclude(body, timed_out);
        match started.retry_delay(attempt, &result) {
            Some(delay) if !last => {
                crate::timer::sleep(delay).await;
                attempt += 1;
            }
            _ => break (result, failures),
        }
    };
    // Shutting a runner down may block (stopping processes), so it happens
    // on a helper thread while this future waits without blocking.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (runner, label, runner_name) = (
        started.shared.runner.clone(),
        started.label(),
        started.shared.runner_name.clone(),
    );
    let spawned = std::thread::Builder::new()
        .name("flowrun-shutdown".into())
        .spawn(move || {
            shutdown_runner(runner, label, runner_name);
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = rx.await;
        }
        Err(_) => started.shutdown_runner(),
    }
    started.finish(result, failures)
}

/// The [`TaskResult`] conversion, for flows that return `Result`.
pub fn flow_outcome<R: TaskResult>(raw: R) -> Result<R::Ok, TaskError> {
    raw.into_outcome()
}

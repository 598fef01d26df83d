//! The driver of a submitted run: waits for its upstream runs, prepares its
//! arguments (in this process or serialized), hands each attempt to the
//! flow's runner, arms its timeout, settles its outcome and schedules its
//! retries.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::adapters::invoke_blocking;
use super::resolve::resolve;
use super::retry::{await_retry, retryable, timed_out, ArgsHolder, PolicyRef};
use crate::exec::context::{self, task_span, Context};
use crate::exec::timer::{self, TimerHandle};
use crate::flow::registry::FlowShared;
use crate::plumbing::lock;
use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::future::TaskFuture;
use crate::run::hooks::{RetryCondition, TaskHooks};
use crate::run::record::{Fetch, RunCell, RunRef};
use crate::run::state::StateKind;
use crate::runner::{
    Execution, LocalJob, SerializedCompletion, SerializedJob, SerializedReporter, TaskCall, Work,
};
use crate::task::annotations::Annotations;
use crate::task::args::{ArgSlot, ArgsTuple};
use crate::task::input::upstream_failed;
use crate::task::{CallConfig, Task, TaskMeta, TaskSupport};

/// Where a run's arguments are: inputs waiting for upstream runs, values
/// for attempts in this process, or serialized for another one.
enum Source<T: Task> {
    Waiting(<T::Args as ArgsTuple>::Inputs),
    Local(ArgsHolder<T::Args>),
    Serialized(Arc<[ArgSlot]>),
    Spent,
}

/// The engine's state for one submitted run.
struct Driver<T: Task> {
    meta: &'static TaskMeta,
    support: &'static TaskSupport<T>,
    cell: Arc<RunCell<T::Output>>,
    flow: Arc<FlowShared>,
    policy: PolicyRef,
    timeout: Option<Duration>,
    /// Boxed only when set: most runs have none, and a driver lives as
    /// long as its run.
    annotations: Option<Box<Annotations>>,
    task_name: Arc<str>,
    /// The latest launched attempt.
    attempt: AtomicU32,
    /// The latest attempt whose outcome was accepted.
    settled: AtomicU32,
    source: Mutex<Source<T>>,
    watchdog: Mutex<Option<TimerHandle>>,
    hooks: Option<Arc<TaskHooks>>,
    /// The process that executes each attempt calls the task's hooks.
    hooks_serialized: bool,
    retry_condition: Option<RetryCondition>,
    /// Slots of the run's limited tags; `None` when no tag has a limit.
    slots: Option<Box<crate::concurrency::tags::RunSlots>>,
    /// What happens to the result (persisted, cached), when anything does.
    results: Option<Box<crate::cache::Plan>>,
    /// Where an executed attempt's result is written.
    target: Mutex<Option<crate::cache::Target>>,
    /// The process that runs the task writes the result.
    persisted_by_executor: std::sync::atomic::AtomicBool,
}

/// Submits a run of `T` with `inputs` to the current flow's runner (or, outside
/// a flow, to a shared thread pool) and returns its future at once.
pub fn submit<T: Task>(task: &T, inputs: <T::Args as ArgsTuple>::Inputs) -> TaskFuture<T::Output> {
    let flow = context::current_flow().unwrap_or_else(FlowShared::detached);
    submit_in::<T>(&flow, T::meta(), T::support(), task.config(), inputs)
}

/// Submits a run described by `meta` into `flow`.
pub(crate) fn submit_in<T: Task>(
    flow: &Arc<FlowShared>,
    meta: &'static TaskMeta,
    support: &'static TaskSupport<T>,
    config: &CallConfig,
    inputs: <T::Args as ArgsTuple>::Inputs,
) -> TaskFuture<T::Output> {
    let flow = flow.clone();
    let r = resolve(meta, config);
    let index = flow.next_index(&r.name);
    // A runner that wires dependencies itself sees only the runs passed as
    // arguments: `wait_for` runs are waited for here.
    let waits_for = !r.wait_for.is_empty();
    let mut upstreams = r.wait_for;
    T::Args::upstreams(&inputs, &mut upstreams);
    let mut tolerated = Vec::new();
    T::Args::tolerated(&inputs, &mut tolerated);
    let mut cell = RunCell::new(
        r.name.clone(),
        meta.key,
        index,
        flow.clone(),
        &support.result,
    );
    // A run ranks with its latest upstream, as Dask orders a graph.
    if let Some(order) = upstreams.iter().map(RunRef::order).max() {
        cell.order = order;
    }
    cell.label.run_name = T::run_name(&inputs).map(String::into_boxed_str);
    let cell = Arc::new(cell);
    let future = TaskFuture::new(cell.clone());
    if !flow.track(RunRef(cell.clone())) {
        cell.fail(TaskError::new(
            TaskErrorKind::Cancelled,
            format!(
                "flow run '{}' has ended, so it no longer accepts task runs",
                flow.name
            ),
        ));
        return future;
    }
    let hooks_serialized = r.hooks.is_some()
        && !r.hooks_from_call
        && flow.execution != Execution::InProcess
        && flow.runner.runs_task_hooks();
    if let Some(hooks) = &r.hooks {
        if hooks_serialized {
            TaskHooks::attach_serialized(
                hooks.clone(),
                &cell,
                r.policy.retries,
                flow.handles_retries,
            );
        } else {
            TaskHooks::attach(hooks.clone(), &cell);
        }
    }
    if let Some(e) = r.error {
        cell.fail(TaskError::new(TaskErrorKind::Runner, e));
        return future;
    }
    if !upstreams.is_empty() && flow.observed() {
        flow.emit_submitted(&RunRef(cell.clone()), &upstreams);
    }
    let slots = {
        let tags = config
            .get()
            .and_then(|o| o.options.shared.tags.as_deref())
            .unwrap_or(&meta.tags);
        crate::concurrency::tags::RunSlots::new(&flow, tags)
    };
    let results = crate::cache::plan(
        meta,
        config.get().map(|o| &o.options.shared.results),
        &flow,
        support.result.encode.is_some(),
    );
    // A cached run whose key hashes an upstream's result (an upstream
    // without a cache key of its own) waits for that result here.
    let hashes_upstream_values = results.as_ref().is_some_and(|p| p.hashes_inputs())
        && upstreams.iter().any(|up| up.0.cache_id().is_none());
    let driver = Arc::new(Driver::<T> {
        meta,
        support,
        cell,
        flow: flow.clone(),
        policy: PolicyRef::from(r.policy),
        timeout: r.timeout,
        annotations: (r.annotations != Annotations::default()).then(|| Box::new(r.annotations)),
        task_name: match &r.name {
            Cow::Borrowed(n) if std::ptr::eq(*n, meta.name) => meta.shared_name.clone(),
            other => Arc::from(&**other),
        },
        attempt: AtomicU32::new(0),
        settled: AtomicU32::new(0),
        source: Mutex::new(Source::Waiting(inputs)),
        watchdog: Mutex::new(None),
        hooks: r.hooks,
        hooks_serialized,
        retry_condition: r.retry_condition,
        slots,
        results,
        target: Mutex::new(None),
        persisted_by_executor: std::sync::atomic::AtomicBool::new(false),
    });
    if driver.slots.is_some() {
        // Every way the run ends gives its slots back.
        let weak = Arc::downgrade(&driver);
        driver.cell.on_final(Box::new(move || {
            if let Some(slots) = weak.upgrade().as_ref().and_then(|d| d.slots.as_ref()) {
                slots.run_final();
            }
        }));
    }
    // A run that waits for a concurrency slot waits in this process, also
    // for its upstream runs, so that it holds nothing on a cluster.
    if upstreams.is_empty()
        || (flow.execution == Execution::SerializedWithDependencies
            && tolerated.is_empty()
            && driver.slots.is_none()
            && !waits_for
            && !hashes_upstream_values)
    {
        // A runner that wires dependencies itself reports an upstream's
        // failure through the downstream run, which fails in turn. (An
        // `allow_failure` outcome is read here, so such a run waits here.)
        for up in &upstreams {
            up.0.mark_observed();
        }
        driver.ready(&upstreams, false);
    } else {
        let remaining = Arc::new(AtomicUsize::new(upstreams.len()));
        // Upstreams passed with `allow_failure` are waited for, but their
        // failure is the run's input, not its end.
        let strict: Arc<Vec<RunRef>> = Arc::new(
            upstreams
                .iter()
                .filter(|up| !tolerated.iter().any(|t| t.id() == up.id()))
                .cloned()
                .collect(),
        );
        for up in upstreams.iter() {
            let driver = driver.clone();
            let remaining = remaining.clone();
            let strict = strict.clone();
            up.0.on_final(Box::new(move || {
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    driver.ready(&strict, true);
                }
            }));
        }
    }
    future
}

/// Cancels a run that has not started. Returns whether it was cancelled.
pub(crate) fn cancel_pending<T: Send + 'static>(cell: &Arc<RunCell<T>>) -> bool {
    let kind = cell.state().kind();
    if !matches!(kind, StateKind::Pending | StateKind::AwaitingRetry) {
        return false;
    }
    if !cell.fail(TaskError::new(
        TaskErrorKind::Cancelled,
        "cancelled before it started",
    )) {
        return false;
    }
    // The runner may hold the attempt already (queued on a worker).
    cell.flow.runner.cancel(&RunRef(cell.clone()));
    true
}

impl<T: Task> Driver<T> {
    /// Every upstream run is final (or the runner tracks them itself).
    fn ready(self: &Arc<Self>, upstreams: &[RunRef], check_upstreams: bool) {
        if self.cell.is_final() {
            return;
        }
        if let Some(e) = self.flow.cancellation() {
            self.cell.fail(e);
            return;
        }
        if check_upstreams {
            for up in upstreams {
                up.0.mark_observed();
                if let Some(e) = up.0.error() {
                    self.cell.fail(upstream_failed(&up.name(), &e));
                    return;
                }
            }
        }
        let inputs = match std::mem::replace(&mut *lock(&self.source), Source::Spent) {
            Source::Waiting(inputs) => inputs,
            _ => return,
        };
        if let Some(plan) = &self.results {
            match self.look_up(plan, &inputs) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    self.cell.fail(e);
                    return;
                }
            }
        }
        let prepared = match self.flow.execution {
            Execution::InProcess => T::Args::resolve(inputs)
                .map(|args| Source::Local(ArgsHolder::new(args, self.support.args_clone))),
            Execution::Serialized | Execution::SerializedWithDependencies => self.encode(&inputs),
        };
        match prepared {
            Ok(source) => {
                *lock(&self.source) = source;
                self.launch(1);
            }
            Err(e) => {
                self.cell.fail(e);
            }
        }
    }

    /// Computes the run's cache key and looks its result up: `Ok(true)`
    /// when the run completed from the cache.
    fn look_up(
        &self,
        plan: &crate::cache::Plan,
        inputs: &<T::Args as ArgsTuple>::Inputs,
    ) -> Result<bool, TaskError> {
        let run_name = self.cell.name();
        let prepared = crate::cache::prepare(
            plan,
            self.meta,
            &run_name,
            &self.flow,
            &|name| T::key_parameter(inputs, name),
            || match &self.support.serialized {
                Ok(fns) => (fns.encode_inputs)(inputs),
                Err(why) => Err(TaskError::new(TaskErrorKind::Runner, why.clone())),
            },
        )?;
        if let Some((bytes, _)) = &prepared.hit {
            // A result that does not decode as this task's output is never
            // a hit: the task runs again and rewrites it.
            if let Some(value) =
                crate::cache::decode_hit(&prepared, bytes, &self.support.result, &run_name)
            {
                if let Some(id) = prepared.cache_id(true) {
                    let _ = self.cell.cache_key.set(id);
                }
                let value = (self.flow.execution == Execution::InProcess).then_some(value);
                self.cell.complete_cached(value, bytes.clone());
                return Ok(true);
            }
        }
        if let Some(id) = prepared.cache_id(false) {
            let _ = self.cell.cache_key.set(id);
        }
        *lock(&self.target) = Some(prepared.target);
        Ok(false)
    }

    /// Writes an executed run's result where its plan says.
    fn persist_value(&self, value: &T::Output) {
        let target = lock(&self.target);
        let Some(target) = &*target else { return };
        crate::cache::persist_value(target, &self.cell.name(), value, &self.support.result);
    }

    fn persist_bytes(&self, bytes: &[u8]) {
        if self.persisted_by_executor.load(Ordering::Acquire) {
            return;
        }
        if let Some(target) = &*lock(&self.target) {
            crate::cache::persist(target, &self.cell.name(), bytes);
        }
    }

    fn encode(&self, inputs: &<T::Args as ArgsTuple>::Inputs) -> Result<Source<T>, TaskError> {
        let fns = self.support.serialized.as_ref().map_err(|why| {
            TaskError::new(
                TaskErrorKind::Runner,
                format!(
                    "task '{}' cannot run on {}: {why}",
                    self.meta.name, self.flow.runner_name
                ),
            )
        })?;
        let mut slots = (fns.encode_inputs)(inputs)?;
        // The result is written by the process that runs the task.
        if let Some(target) = &*lock(&self.target) {
            if let Some(slot) = crate::cache::serialized::slot(target) {
                slots.push(slot);
                self.persisted_by_executor.store(true, Ordering::Release);
            }
        }
        if self.flow.execution == Execution::Serialized {
            for slot in &mut slots {
                if let ArgSlot::Upstream(up) = slot {
                    let bytes = up
                        .encoded_result()
                        .map_err(|e| upstream_failed(&up.name(), &e))?;
                    *slot = ArgSlot::Bytes(bytes);
                }
            }
        }
        Ok(Source::Serialized(slots.into()))
    }

    fn launch(self: &Arc<Self>, attempt: u32) {
        if self.cell.is_final() {
            return;
        }
        if let Some(slots) = &self.slots {
            let driver = self.clone();
            let admitted = slots.admit(&self.cell, attempt, move |permit| {
                if let Some(slots) = &driver.slots {
                    if slots.granted(&driver.cell, attempt, permit) {
                        driver.launch_admitted(attempt);
                    }
                }
            });
            match admitted {
                Ok(crate::concurrency::tags::Admit::Go) => {}
                Ok(crate::concurrency::tags::Admit::Wait) => return,
                Err(e) => {
                    self.cell
                        .fail(TaskError::new(TaskErrorKind::Runner, e.message()));
                    return;
                }
            }
            if self.cell.is_final() {
                return;
            }
        }
        self.launch_admitted(attempt);
    }

    /// Hands `attempt` to the runner (its concurrency slots, if any, held).
    fn launch_admitted(self: &Arc<Self>, attempt: u32) {
        if self.cell.is_final() {
            return;
        }
        self.attempt.store(attempt, Ordering::Release);
        let work = match &*lock(&self.source) {
            Source::Local(_) => Work::Local(LocalJob(crate::exec::pool::Job {
                target: self.clone(),
                attempt,
            })),
            Source::Serialized(slots) => Work::Serialized(SerializedJob {
                task_key: self.meta.key,
                task_name: self.task_name.clone(),
                run_name: self.cell.label.run_name.as_deref().map(Arc::from),
                args: slots.clone(),
                reporter: SerializedReporter::new(attempt, self.clone()),
                hooks: self.hooks_serialized.then(|| crate::TaskHookCall {
                    run_id: self.cell.id.get(),
                    attempt,
                    last_attempt: attempt > self.policy.retries || self.flow.handles_retries,
                }),
            }),
            Source::Waiting(_) | Source::Spent => return,
        };
        if attempt > 1 {
            self.cell.transition(StateKind::Pending, None, attempt - 1);
        }
        self.flow.runner.submit(TaskCall {
            run: RunRef(self.cell.clone()),
            attempt,
            retries: self.policy.retries,
            annotations: self.annotations.as_deref().cloned().unwrap_or_default(),
            work,
        });
    }

    fn arm_watchdog(self: &Arc<Self>, attempt: u32) {
        if let Some(timeout) = self.timeout {
            let driver = self.clone();
            let handle = timer::schedule(Instant::now() + timeout, move || {
                driver.settle(attempt, Err(timed_out(timeout)));
            });
            // An attempt restarted elsewhere (its worker died) gets a new
            // clock; the old one must not end it.
            if let Some(old) = lock(&self.watchdog).replace(handle) {
                old.cancel();
            }
        }
    }

    fn disarm_watchdog(&self) {
        if let Some(h) = lock(&self.watchdog).take() {
            h.cancel();
        }
    }

    fn run_local(self: &Arc<Self>, attempt: u32, refusal: Option<TaskError>) {
        // The attempt's slots go back when its code returns (or when it
        // never runs), not when a timeout settles it: the limit counts code
        // that runs.
        let _slots = self.slots.as_deref().map(|s| BodySlots::enter(s, attempt));
        if let Some(e) = refusal {
            self.settle(attempt, Err(e));
            return;
        }
        if self.cell.is_final() || attempt != self.attempt.load(Ordering::Acquire) {
            return;
        }
        if let Some(e) = self.flow.cancellation() {
            self.settle(attempt, Err(e));
            return;
        }
        let last = attempt > self.policy.retries;
        let args = match &mut *lock(&self.source) {
            Source::Local(holder) => holder.for_attempt(last),
            _ => None,
        };
        let Some(args) = args else {
            self.settle(
                attempt,
                Err(TaskError::new(
                    TaskErrorKind::Runner,
                    "its arguments were already used by an earlier attempt",
                )),
            );
            return;
        };
        self.cell.start_attempt(attempt);
        let run = RunRef(self.cell.clone());
        let span = task_span(&run);
        let _ctx = context::enter(Context {
            flow: Some(self.flow.clone()),
            task_run: Some(run),
            label: None,
            span: Some(span.clone()),
            annotations: Vec::new(),
        });
        let _span = span.enter();
        if let Some(hooks) = &self.hooks {
            hooks.running(&RunRef(self.cell.clone()));
        }
        let async_timeout = if self.meta.is_async {
            self.timeout
        } else {
            self.arm_watchdog(attempt);
            None
        };
        let result = invoke_blocking::<T>(args, async_timeout).and_then(T::outcome);
        // The code returned: its slots go back before the run is final, so
        // that whoever waits for the run sees them free.
        if let Some(slots) = &self.slots {
            slots.exit_body(attempt);
        }
        self.settle(attempt, result.map(Done::Value));
    }

    /// Accepts the first outcome of the current attempt; later ones (a
    /// timed-out attempt that returned after all) are dropped.
    fn settle(self: &Arc<Self>, attempt: u32, result: Result<Done<T::Output>, TaskError>) {
        if let Some(slots) = &self.slots {
            // Elsewhere, an attempt that settled is over for this process.
            if self.flow.execution != Execution::InProcess {
                slots.release(attempt);
            }
        }
        if attempt != self.attempt.load(Ordering::Acquire) {
            return;
        }
        if self
            .settled
            .compare_exchange(attempt - 1, attempt, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        self.disarm_watchdog();
        match result {
            Ok(Done::Value(v)) => {
                self.persist_value(&v);
                self.cell.complete_value(v);
            }
            Ok(Done::Encoded(b)) => {
                self.persist_bytes(&b);
                self.cell.complete_encoded(b);
            }
            Ok(Done::Deferred(f)) => {
                if lock(&self.target).is_some()
                    && !self.persisted_by_executor.load(Ordering::Acquire)
                {
                    crate::run_event!(
                        tracing::Level::WARN,
                        format!("Task run '{}'", self.cell.name()),
                        "Its result was not persisted: its storage path could not be sent to the worker that ran it"
                    );
                }
                self.cell.complete_deferred(f);
            }
            Err(e) => self.failed_attempt(attempt, e),
        }
    }

    fn failed_attempt(self: &Arc<Self>, attempt: u32, error: TaskError) {
        if !retryable(&error)
            || attempt > self.policy.retries
            || self.flow.handles_retries
            || self.flow.cancellation().is_some()
            || self
                .retry_condition
                .as_ref()
                .is_some_and(|c| !c.allows(&RunRef(self.cell.clone()), &error))
        {
            self.cell.fail(error);
            return;
        }
        let stuck = match &*lock(&self.source) {
            Source::Local(holder) => !holder.can_retry(),
            _ => false,
        };
        if stuck {
            let why = format!(
                "{}; it cannot be retried because its arguments are not Clone",
                error.message()
            );
            self.cell.fail(TaskError::new(error.kind().clone(), why));
            return;
        }
        let (delay, accepted) = await_retry(&self.cell, attempt, &self.policy, &error);
        if !accepted {
            return;
        }
        if delay.is_zero() {
            self.launch(attempt + 1);
        } else {
            let driver = self.clone();
            timer::schedule(Instant::now() + delay, move || driver.launch(attempt + 1));
        }
    }
}

impl<T: Task> crate::exec::pool::Runnable for Driver<T> {
    fn run(self: Arc<Self>, attempt: u32, refusal: Option<TaskError>) {
        self.run_local(attempt, refusal)
    }
}

/// Marks an attempt's code as running on this thread; gives its slots back
/// when dropped.
struct BodySlots<'a> {
    slots: &'a crate::concurrency::tags::RunSlots,
    attempt: u32,
}

impl<'a> BodySlots<'a> {
    fn enter(slots: &'a crate::concurrency::tags::RunSlots, attempt: u32) -> BodySlots<'a> {
        slots.enter_body(attempt);
        BodySlots { slots, attempt }
    }
}

impl Drop for BodySlots<'_> {
    fn drop(&mut self) {
        self.slots.exit_body(self.attempt);
    }
}

/// A settled attempt's value: typed, serialized, or left where it was
/// computed until someone reads it.
enum Done<T> {
    Value(T),
    Encoded(Bytes),
    Deferred(Fetch),
}

impl<T: Task> SerializedCompletion for Driver<T> {
    fn started(self: Arc<Self>, attempt: u32, location: Option<Arc<str>>) {
        if attempt != self.attempt.load(Ordering::Acquire) || self.cell.is_final() {
            return;
        }
        if let Some(l) = location {
            self.cell.set_location(l);
        }
        self.cell.start_attempt(attempt);
        if let Some(hooks) = self.hooks.as_ref().filter(|_| !self.hooks_serialized) {
            hooks.running(&RunRef(self.cell.clone()));
        }
        // The attempt's clock starts when it starts, not when it was queued.
        self.arm_watchdog(attempt);
    }

    fn finished(self: Arc<Self>, attempt: u32, result: Result<Bytes, TaskError>) {
        self.settle(attempt, result.map(Done::Encoded));
    }

    fn finished_deferred(self: Arc<Self>, attempt: u32, fetch: Fetch) {
        self.settle(attempt, Ok(Done::Deferred(fetch)));
    }

    fn subflow(&self, report: crate::flow::subflow::SubflowReport) {
        crate::flow::subflow::record_reported(&self.flow, RunRef(self.cell.clone()), report);
    }

    fn context(&self) -> crate::exec::context::Context {
        crate::exec::context::Context {
            flow: Some(self.flow.clone()),
            task_run: Some(RunRef(self.cell.clone())),
            ..Default::default()
        }
    }
}

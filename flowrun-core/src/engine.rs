//! Drives task runs: resolves options, waits for upstream runs, hands
//! attempts to the flow's runner, applies timeouts and retries, and records
//! the final state. Also runs direct calls (`shout(3)`) inline.

use std::borrow::Cow;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::annotations::{self, Annotations};
use crate::args::{ArgSlot, ArgsTuple};
use crate::context::{self, Context, WithContext};
use crate::error::{TaskError, TaskErrorKind};
use crate::flow::FlowShared;
use crate::future::TaskFuture;
use crate::input::upstream_failed;
use crate::options::RetryPolicy;
use crate::run::{RunCell, RunRef};
use crate::runner::{Execution, LocalJob, RemoteCompletion, RemoteJob, TaskCall, Work};
use crate::state::StateKind;
use crate::task::{CallConfig, Invocation, Task, TaskMeta, TaskSupport};
use crate::timer::{self, TimerHandle};

/// Options of one run after task defaults, annotation scopes and per-call
/// overrides are combined.
struct Resolved {
    name: Cow<'static, str>,
    policy: Cow<'static, RetryPolicy>,
    timeout: Option<Duration>,
    annotations: Annotations,
    wait_for: Vec<RunRef>,
    error: Option<String>,
}

fn resolve(meta: &'static TaskMeta, config: &CallConfig) -> Resolved {
    let mut r = Resolved {
        name: Cow::Borrowed(meta.name),
        policy: Cow::Borrowed(&meta.policy),
        timeout: meta.timeout,
        annotations: annotations::current_if_any().unwrap_or_default(),
        wait_for: Vec::new(),
        error: meta
            .config_error
            .as_ref()
            .map(|e| format!("task '{}' has an invalid option: {e}", meta.name)),
    };
    if let Some(o) = config.get() {
        let opts = &o.options;
        if let Some(name) = &opts.name {
            r.name = name.clone();
        }
        if opts.retries.is_some()
            || opts.retry_delay.is_some()
            || opts.retry_jitter_factor.is_some()
        {
            let p = r.policy.to_mut();
            if let Some(n) = opts.retries {
                p.retries = n;
            }
            if let Some(d) = &opts.retry_delay {
                p.delay = d.clone();
            }
            if let Some(j) = opts.retry_jitter_factor {
                p.jitter_factor = Some(j);
            }
            if let Err(e) = p.validate() {
                r.error.get_or_insert(format!("with_options: {e}"));
            }
        }
        if let Some(t) = opts.timeout {
            r.timeout = t;
        }
        if o.explicit.priority {
            r.annotations.priority = opts.priority;
        }
        if o.explicit.resources {
            if let Some(res) = &opts.resources {
                if let Err(e) = res.validate() {
                    r.error.get_or_insert(format!("with_options: {e}"));
                }
            }
            r.annotations.resources = opts.resources.clone();
        }
        r.wait_for = o.wait_for.clone();
    }
    if let Some(res) = &r.annotations.resources {
        if let Err(e) = res.validate() {
            r.error.get_or_insert(format!("annotate: {e}"));
        }
    }
    r
}

fn retryable(error: &TaskError) -> bool {
    matches!(
        error.kind(),
        TaskErrorKind::Error
            | TaskErrorKind::Panic
            | TaskErrorKind::TimedOut
            | TaskErrorKind::Crashed
            | TaskErrorKind::KilledWorker
    )
}

/// Holds a call's arguments across attempts: cloned for attempts that may
/// be followed by a retry, moved into the last one.
struct ArgsHolder<A> {
    args: Option<A>,
    clone: Option<fn(&A) -> A>,
}

impl<A> ArgsHolder<A> {
    fn for_attempt(&mut self, last: bool) -> Option<A> {
        match self.clone {
            Some(clone) if !last => self.args.as_ref().map(clone),
            _ => self.args.take(),
        }
    }

    fn has_more(&self) -> bool {
        self.args.is_some()
    }
}

enum Source<T: Task> {
    Waiting(<T::Args as ArgsTuple>::Inputs),
    Local(ArgsHolder<T::Args>),
    Remote(Arc<[ArgSlot]>),
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
    let cell = Arc::new(RunCell::new(
        r.name.clone(),
        meta.key,
        index,
        flow.clone(),
        &support.output,
    ));
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
    if let Some(e) = r.error {
        cell.fail(TaskError::new(TaskErrorKind::Runner, e));
        return future;
    }
    let mut upstreams = r.wait_for;
    T::Args::upstreams(&inputs, &mut upstreams);
    if !upstreams.is_empty() && flow.observed() {
        flow.emit_submitted(&RunRef(cell.clone()), &upstreams);
    }
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
    });
    if upstreams.is_empty() || flow.execution == Execution::RemoteWithDependencies {
        // A runner that wires dependencies itself reports an upstream's
        // failure through the downstream run, which fails in turn.
        for up in &upstreams {
            up.0.mark_observed();
        }
        driver.ready(&upstreams, false);
    } else {
        let remaining = Arc::new(AtomicUsize::new(upstreams.len()));
        let upstreams = Arc::new(upstreams);
        for up in upstreams.iter() {
            let driver = driver.clone();
            let remaining = remaining.clone();
            let all = upstreams.clone();
            up.0.on_final(Box::new(move || {
                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    driver.ready(&all, true);
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
    cell.fail(TaskError::new(
        TaskErrorKind::Cancelled,
        "cancelled before it started",
    ))
}

impl<T: Task> Driver<T> {
    fn lock_source(&self) -> std::sync::MutexGuard<'_, Source<T>> {
        self.source.lock().unwrap_or_else(|p| p.into_inner())
    }

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
        let inputs = match std::mem::replace(&mut *self.lock_source(), Source::Spent) {
            Source::Waiting(inputs) => inputs,
            _ => return,
        };
        let prepared = match self.flow.execution {
            Execution::InProcess => T::Args::resolve(inputs).map(|args| {
                Source::Local(ArgsHolder {
                    args: Some(args),
                    clone: self.support.args_clone,
                })
            }),
            Execution::Remote | Execution::RemoteWithDependencies => self.encode(&inputs),
        };
        match prepared {
            Ok(source) => {
                *self.lock_source() = source;
                self.launch(1);
            }
            Err(e) => {
                self.cell.fail(e);
            }
        }
    }

    fn encode(&self, inputs: &<T::Args as ArgsTuple>::Inputs) -> Result<Source<T>, TaskError> {
        let fns = self.support.remote.as_ref().map_err(|why| {
            TaskError::new(
                TaskErrorKind::Runner,
                format!(
                    "task '{}' cannot run on {}: {why}",
                    self.meta.name, self.flow.runner_name
                ),
            )
        })?;
        let mut slots = (fns.encode_inputs)(inputs)?;
        if self.flow.execution == Execution::Remote {
            for slot in &mut slots {
                if let ArgSlot::Upstream(up) = slot {
                    let bytes = up
                        .encoded_result()
                        .map_err(|e| upstream_failed(&up.name(), &e))?;
                    *slot = ArgSlot::Bytes(bytes);
                }
            }
        }
        Ok(Source::Remote(slots.into()))
    }

    fn launch(self: &Arc<Self>, attempt: u32) {
        if self.cell.is_final() {
            return;
        }
        self.attempt.store(attempt, Ordering::Release);
        let work = match &*self.lock_source() {
            Source::Local(_) => Work::Local(LocalJob(crate::pool::Job {
                target: self.clone(),
                attempt,
            })),
            Source::Remote(slots) => Work::Remote(RemoteJob {
                task_key: self.meta.key,
                task_name: self.task_name.clone(),
                args: slots.clone(),
                reporter: crate::runner::RemoteReporter::new(attempt, self.clone()),
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

    fn mark_running(&self, attempt: u32) {
        let kind = if attempt == 1 {
            StateKind::Running
        } else {
            StateKind::Retrying
        };
        self.cell.transition(kind, None, attempt);
    }

    fn arm_watchdog(self: &Arc<Self>, attempt: u32) {
        if let Some(timeout) = self.timeout {
            let driver = self.clone();
            let handle = timer::schedule(Instant::now() + timeout, move || {
                driver.settle(attempt, Err(timed_out(timeout)));
            });
            *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        }
    }

    fn disarm_watchdog(&self) {
        if let Some(h) = self
            .watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.cancel();
        }
    }

    fn run_local(self: &Arc<Self>, attempt: u32, refusal: Option<TaskError>) {
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
        let args = match &mut *self.lock_source() {
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
        self.mark_running(attempt);
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
        let async_timeout = if self.meta.is_async {
            self.timeout
        } else {
            self.arm_watchdog(attempt);
            None
        };
        let result = invoke_blocking::<T>(args, async_timeout).and_then(T::outcome);
        self.settle(attempt, result.map(Done::Value));
    }

    /// Accepts the first outcome of the current attempt; later ones (a
    /// timed-out attempt that returned after all) are dropped.
    fn settle(self: &Arc<Self>, attempt: u32, result: Result<Done<T::Output>, TaskError>) {
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
                self.cell.complete_value(v);
            }
            Ok(Done::Encoded(b)) => {
                self.cell.complete_encoded(b);
            }
            Ok(Done::Deferred(f)) => {
                self.cell.complete_deferred(f);
            }
            Err(e) => self.failed_attempt(attempt, e),
        }
    }

    fn failed_attempt(self: &Arc<Self>, attempt: u32, error: TaskError) {
        let retries = self.policy.retries;
        if !retryable(&error)
            || attempt > retries
            || self.flow.handles_retries
            || self.flow.cancellation().is_some()
        {
            self.cell.fail(error);
            return;
        }
        let stuck = match &*self.lock_source() {
            Source::Local(holder) => holder.clone.is_none() || !holder.has_more(),
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
        let delay = self.policy.delay_before(attempt);
        let message = format!(
            "Retry {attempt}/{retries} will start {} from now: {}",
            human_duration(delay),
            error.message()
        );
        if !self.cell.transition(
            StateKind::AwaitingRetry,
            Some(Arc::from(message.as_str())),
            attempt,
        ) {
            return;
        }
        log_retry(&self.cell.name(), &message);
        if delay.is_zero() {
            self.launch(attempt + 1);
        } else {
            let driver = self.clone();
            timer::schedule(Instant::now() + delay, move || driver.launch(attempt + 1));
        }
    }
}

/// A run's retry policy: the task's own (shared), or a per-call override.
enum PolicyRef {
    Static(&'static RetryPolicy),
    Owned(Box<RetryPolicy>),
}

impl From<Cow<'static, RetryPolicy>> for PolicyRef {
    fn from(p: Cow<'static, RetryPolicy>) -> PolicyRef {
        match p {
            Cow::Borrowed(p) => PolicyRef::Static(p),
            Cow::Owned(p) => PolicyRef::Owned(Box::new(p)),
        }
    }
}

impl std::ops::Deref for PolicyRef {
    type Target = RetryPolicy;
    fn deref(&self) -> &RetryPolicy {
        match self {
            PolicyRef::Static(p) => p,
            PolicyRef::Owned(p) => p,
        }
    }
}

impl<T: Task> crate::pool::Runnable for Driver<T> {
    fn run(self: Arc<Self>, attempt: u32, refusal: Option<TaskError>) {
        self.run_local(attempt, refusal)
    }
}

enum Done<T> {
    Value(T),
    Encoded(Bytes),
    Deferred(crate::run::Fetch),
}

impl<T: Task> RemoteCompletion for Driver<T> {
    fn started(self: Arc<Self>, attempt: u32, location: Option<Arc<str>>) {
        if attempt != self.attempt.load(Ordering::Acquire) || self.cell.is_final() {
            return;
        }
        if let Some(l) = location {
            self.cell.set_location(l);
        }
        self.mark_running(attempt);
        // The attempt's clock starts when it starts, not when it was queued.
        self.arm_watchdog(attempt);
    }

    fn finished(self: Arc<Self>, attempt: u32, result: Result<Bytes, TaskError>) {
        self.settle(attempt, result.map(Done::Encoded));
    }

    fn finished_deferred(self: Arc<Self>, attempt: u32, fetch: crate::run::Fetch) {
        self.settle(attempt, Ok(Done::Deferred(fetch)));
    }
}

fn timed_out(timeout: Duration) -> TaskError {
    TaskError::new(
        TaskErrorKind::TimedOut,
        format!("timed out after {}", human_duration(timeout)),
    )
}

pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s == 0.0 {
        "0s".to_owned()
    } else if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.1}s")
    }
}

fn log_retry(run: &str, message: &str) {
    tracing::warn!(flowrun.run = format!("Task run '{run}'"), "{message}");
}

pub(crate) fn task_span(run: &RunRef) -> tracing::Span {
    tracing::info_span!("task_run", run = %run.name())
}

/// Calls `T` with `args` on this thread and drives an async task's future to
/// completion; panics become [`TaskErrorKind::Panic`].
pub(crate) fn invoke_blocking<T: Task>(
    args: T::Args,
    timeout: Option<Duration>,
) -> Result<T::Raw, TaskError> {
    match catch_unwind(AssertUnwindSafe(|| T::invoke(args))) {
        Err(payload) => Err(TaskError::from_panic(payload)),
        Ok(Invocation::Ready(raw)) => Ok(raw),
        Ok(Invocation::Future(fut)) => block_on(fut, timeout),
    }
}

/// Drives `fut` on flowrun's runtime from a thread that is not inside a
/// tokio runtime (else from a helper thread), keeping this thread's context.
fn block_on<R: Send + 'static>(
    fut: crate::task::BoxFuture<R>,
    timeout: Option<Duration>,
) -> Result<R, TaskError> {
    let ctx = context::current();
    let guarded = CatchUnwind {
        inner: WithContext { ctx, inner: fut },
    };
    let drive = async move {
        match timeout {
            None => guarded.await,
            Some(t) => match tokio::time::timeout(t, guarded).await {
                Ok(r) => r,
                Err(_) => Err(timed_out(t)),
            },
        }
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| crate::rt::runtime().block_on(drive))
                .join()
                .unwrap_or_else(|p| Err(TaskError::from_panic(p)))
        })
    } else {
        crate::rt::runtime().block_on(drive)
    }
}

pin_project_lite::pin_project! {
    /// Turns a panic inside a future's poll into an error.
    struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(TaskError::from_panic(p))),
        }
    }
}

/// How one attempt of a direct call ended.
enum Attempt<R> {
    Done(R),
    Errored(R, String),
    Panicked(Box<dyn std::any::Any + Send>),
    TimedOut(Duration),
}

struct DirectRun<T: Task> {
    cell: Arc<RunCell<T::Output>>,
    flow: Arc<FlowShared>,
    policy: RetryPolicy,
    timeout: Option<Duration>,
}

fn start_direct<T: Task>(config: &CallConfig) -> DirectRun<T> {
    let flow = context::current_flow().unwrap_or_else(FlowShared::detached);
    let r = resolve(T::meta(), config);
    let index = flow.next_index(&r.name);
    let cell = Arc::new(RunCell::new(
        r.name,
        T::meta().key,
        index,
        flow.clone(),
        &T::support().output,
    ));
    flow.track(RunRef(cell.clone()));
    cell.mark_observed();
    if let Some(e) = r.error {
        cell.fail(TaskError::new(TaskErrorKind::Runner, e.clone()));
        panic!("{e}");
    }
    DirectRun {
        cell,
        flow,
        policy: r.policy.into_owned(),
        timeout: r.timeout,
    }
}

impl<T: Task> DirectRun<T> {
    fn context(&self) -> (Context, tracing::Span) {
        let run = RunRef(self.cell.clone());
        let span = task_span(&run);
        (
            Context {
                flow: Some(self.flow.clone()),
                task_run: Some(run),
                label: None,
                span: Some(span.clone()),
                annotations: Vec::new(),
            },
            span,
        )
    }

    fn classify(raw: T::Raw) -> Attempt<T::Raw> {
        match T::failure_message(&raw) {
            Some(m) => Attempt::Errored(raw, m),
            None => Attempt::Done(raw),
        }
    }

    /// Records the attempt's outcome; returns the delay before the next
    /// attempt, or `None` when the run is over.
    fn after(&self, attempt: u32, outcome: &Attempt<T::Raw>, can_retry: bool) -> Option<Duration> {
        let error = match outcome {
            Attempt::Done(_) => return None,
            Attempt::Errored(_, m) => TaskError::new(TaskErrorKind::Error, m.clone()),
            Attempt::Panicked(p) => {
                TaskError::new(TaskErrorKind::Panic, crate::error::panic_message(&**p))
            }
            Attempt::TimedOut(t) => timed_out(*t),
        };
        if attempt > self.policy.retries || !can_retry {
            return None;
        }
        let delay = self.policy.delay_before(attempt);
        let message = format!(
            "Retry {attempt}/{} will start {} from now: {}",
            self.policy.retries,
            human_duration(delay),
            error.message()
        );
        self.cell.transition(
            StateKind::AwaitingRetry,
            Some(Arc::from(message.as_str())),
            attempt,
        );
        log_retry(&self.cell.name(), &message);
        Some(delay)
    }

    fn finish(self, outcome: Attempt<T::Raw>) -> T::Raw {
        match outcome {
            Attempt::Done(raw) => {
                self.cell.complete_returned();
                raw
            }
            Attempt::Errored(raw, m) => {
                self.cell.fail(TaskError::new(TaskErrorKind::Error, m));
                raw
            }
            Attempt::Panicked(p) => {
                self.cell.fail(TaskError::new(
                    TaskErrorKind::Panic,
                    crate::error::panic_message(&*p),
                ));
                std::panic::resume_unwind(p)
            }
            Attempt::TimedOut(t) => {
                let e = timed_out(t).in_run(self.cell.name());
                self.cell.fail(e.clone());
                panic!("{e}")
            }
        }
    }
}

/// Runs `T` now, on this thread, as a tracked task run, and returns what the
/// function returned. Retries and timeouts apply. A panic in the last
/// attempt continues as a panic in the caller, as a failure does in Python.
pub fn call<T: Task>(config: &CallConfig, args: T::Args) -> T::Raw {
    let run = start_direct::<T>(config);
    let mut holder = ArgsHolder {
        args: Some(args),
        clone: T::support().args_clone,
    };
    let mut attempt = 1;
    loop {
        let last = attempt > run.policy.retries;
        let Some(args) = holder.for_attempt(last) else {
            unreachable!("a direct call retries only with cloneable arguments")
        };
        let kind = if attempt == 1 {
            StateKind::Running
        } else {
            StateKind::Retrying
        };
        run.cell.transition(kind, None, attempt);
        let (ctx, span) = run.context();
        let outcome = match run.timeout {
            None => {
                let _ctx = context::enter(ctx);
                let _span = span.enter();
                match catch_unwind(AssertUnwindSafe(|| T::invoke(args))) {
                    Err(p) => Attempt::Panicked(p),
                    Ok(Invocation::Ready(raw)) => DirectRun::<T>::classify(raw),
                    Ok(Invocation::Future(fut)) => match block_on(fut, None) {
                        Ok(raw) => DirectRun::<T>::classify(raw),
                        Err(e) => Attempt::Panicked(Box::new(e.message().to_owned())),
                    },
                }
            }
            Some(timeout) => call_with_deadline::<T>(args, ctx, span, timeout),
        };
        let can_retry = holder.clone.is_some() && holder.has_more();
        match run.after(attempt, &outcome, can_retry) {
            None => return run.finish(outcome),
            Some(delay) => {
                if !delay.is_zero() {
                    crate::pool::blocking(|| std::thread::sleep(delay));
                }
                attempt += 1;
            }
        }
    }
}

/// A sync direct call with a timeout runs on a helper thread so the caller
/// can stop waiting; a late result is dropped.
fn call_with_deadline<T: Task>(
    args: T::Args,
    ctx: Context,
    span: tracing::Span,
    timeout: Duration,
) -> Attempt<T::Raw> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("flowrun-call".into())
        .spawn(move || {
            let _ctx = context::enter(ctx);
            let _span = span.enter();
            let outcome = match catch_unwind(AssertUnwindSafe(|| T::invoke(args))) {
                Err(p) => Attempt::Panicked(p),
                Ok(Invocation::Ready(raw)) => DirectRun::<T>::classify(raw),
                Ok(Invocation::Future(fut)) => match block_on(fut, Some(timeout)) {
                    Ok(raw) => DirectRun::<T>::classify(raw),
                    Err(e) if e.is_timeout() => Attempt::TimedOut(timeout),
                    Err(e) => Attempt::Panicked(Box::new(e.message().to_owned())),
                },
            };
            let _ = tx.send(outcome);
        });
    if let Err(e) = spawned {
        return Attempt::Panicked(Box::new(format!("could not start a thread: {e}")));
    }
    crate::pool::blocking(|| match rx.recv_timeout(timeout) {
        Ok(outcome) => outcome,
        Err(_) => Attempt::TimedOut(timeout),
    })
}

/// The async form of [`call`], for `async fn` tasks: `fetch(3).await`.
pub async fn call_async<T: Task>(config: CallConfig, args: T::Args) -> T::Raw {
    let run = start_direct::<T>(&config);
    let mut holder = ArgsHolder {
        args: Some(args),
        clone: T::support().args_clone,
    };
    let mut attempt = 1;
    loop {
        let last = attempt > run.policy.retries;
        let Some(args) = holder.for_attempt(last) else {
            unreachable!("a direct call retries only with cloneable arguments")
        };
        let kind = if attempt == 1 {
            StateKind::Running
        } else {
            StateKind::Retrying
        };
        run.cell.transition(kind, None, attempt);
        let (ctx, span) = run.context();
        let invoked = {
            let _ctx = context::enter(ctx.clone());
            let _span = span.enter();
            catch_unwind(AssertUnwindSafe(|| T::invoke(args)))
        };
        let outcome = match invoked {
            Err(p) => Attempt::Panicked(p),
            Ok(Invocation::Ready(raw)) => DirectRun::<T>::classify(raw),
            Ok(Invocation::Future(fut)) => {
                let guarded = CatchUnwindAny::new(WithContext { ctx, inner: fut });
                match run.timeout {
                    None => match guarded.await {
                        Ok(raw) => DirectRun::<T>::classify(raw),
                        Err(p) => Attempt::Panicked(p),
                    },
                    Some(t) => match Deadline::new(guarded, t).await {
                        Some(Ok(raw)) => DirectRun::<T>::classify(raw),
                        Some(Err(p)) => Attempt::Panicked(p),
                        None => Attempt::TimedOut(t),
                    },
                }
            }
        };
        let can_retry = holder.clone.is_some() && holder.has_more();
        match run.after(attempt, &outcome, can_retry) {
            None => return run.finish(outcome),
            Some(delay) => {
                if !delay.is_zero() {
                    timer::sleep(delay).await;
                }
                attempt += 1;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Like [`CatchUnwind`], keeping the panic payload.
    pub(crate) struct CatchUnwindAny<F> {
        #[pin]
        inner: F,
    }
}

impl<F> CatchUnwindAny<F> {
    pub(crate) fn new(inner: F) -> CatchUnwindAny<F> {
        CatchUnwindAny { inner }
    }
}

impl<F: Future> Future for CatchUnwindAny<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}

pin_project_lite::pin_project! {
    /// Resolves to `None` if `inner` is not done within the duration, on any
    /// executor (the deadline comes from flowrun's timer thread).
    pub(crate) struct Deadline<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: timer::Sleep,
    }
}

impl<F> Deadline<F> {
    pub(crate) fn new(inner: F, timeout: Duration) -> Deadline<F> {
        Deadline {
            inner,
            sleep: timer::sleep(timeout),
        }
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<F::Output>> {
        let this = self.project();
        if let Poll::Ready(v) = this.inner.poll(cx) {
            return Poll::Ready(Some(v));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

//! A flow run from start to end: begin (names, runner, observers), run the
//! body with retries and a timeout, wait for its task runs, shut the runner
//! down and record the final state. `#[flow]` calls [`run_flow`] and
//! [`run_flow_async`].

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::adapters::{block_here, CatchUnwind, Deadline, Mode};
use crate::engine::retry::{human_duration, ArgsHolder};
use crate::exec::context::{enter_with_span, Context, WithContext};
use crate::exec::runtime::runtime;
use crate::exec::timer::{self, TimerHandle};
use crate::flow::meta::{Flow, FlowConfig};
use crate::flow::outcome::{conclude, Body, FlowRun, TaskRunCounts};
use crate::flow::registry::FlowShared;
use crate::names;
use crate::run::error::{panic_message, FlowError, FlowErrorKind, TaskError, TaskRunFailure};
use crate::run::hooks::FlowHooks;
use crate::run::state::{State, StateKind};
use crate::runner::{FlowRunInfo, TaskRunner};
use crate::task::options::RetryPolicy;
use crate::task::{Invocation, TaskResult};

/// A flow run that has begun: its record and what its attempts run with.
struct Started {
    shared: Arc<FlowShared>,
    policy: RetryPolicy,
    timeout: Option<Duration>,
    began: Instant,
    span: tracing::Span,
    /// Runs on its parent's runner, which it must not shut down.
    inherited: bool,
    hooks: FlowHooks,
    info: FlowRunInfo,
    /// The flow run's own concurrency limits, dropped when it ends.
    _limits: crate::concurrency::ScopeGuard,
    /// Where it reports its end when its parent is in another process.
    report_to: Option<crate::flow::subflow::SubflowSink>,
    /// Its task runs as they end, for that process's run history.
    relay: Option<Arc<crate::flow::subflow::TaskRelay>>,
}

fn begin<F: Flow>(config: &FlowConfig, args: &F::Args) -> Result<Started, Box<FlowRun<F::Output>>> {
    let named = F::run_name(args);
    crate::exec::worker::divert_if_worker();
    crate::logging::init();
    let began = Instant::now();
    let meta = F::meta();
    let overrides = config.inner.get();
    let options = overrides.map(|o| &o.options);
    let flow_name = options
        .and_then(|o| o.shared.name.clone())
        .map(Cow::into_owned)
        .unwrap_or_else(|| meta.name.clone());
    let run_name = options
        .and_then(|o| o.run_name.clone())
        .or(named)
        .unwrap_or_else(names::random_run_name);
    let parent = crate::flow::subflow::current_parent();
    // Called by a task that runs here for a flow in another process: that
    // process links it (one thread-local read, only for flows without a
    // parent here).
    let report_to = match parent {
        None => crate::flow::subflow::thread_sink(),
        Some(_) => None,
    };
    // A subflow that names no runner of its own runs on its parent's, which
    // is already started and which the parent shuts down.
    let (runner, inherited): (Arc<dyn TaskRunner>, bool) =
        match overrides.and_then(|o| o.runner.as_ref()) {
            Some(factory) => (Arc::from(factory()), false),
            None => {
                let (made, default) = crate::flow::subflow::made_default(F::default_runner);
                match &parent {
                    Some(p) if default => (p.flow.runner.clone(), true),
                    _ => (Arc::from(made), false),
                }
            }
        };
    let hooks = match options {
        Some(o) => meta.hooks.overridden_by(&o.hooks),
        None => meta.hooks.clone(),
    };
    let mut policy = meta.policy.clone();
    let mut timeout = meta.timeout;
    if let Some(o) = options {
        if let Some(n) = o.shared.retries {
            policy.retries = n;
        }
        if let Some(d) = &o.shared.retry_delay {
            policy.delay = d.clone();
        }
        if let Some(t) = o.shared.timeout {
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
    let parent_flow_run_id = parent.as_ref().map(|p| p.flow.id.clone());
    let history = options
        .and_then(|o| o.history)
        .or(meta.history)
        .unwrap_or_else(|| {
            parent
                .as_ref()
                .is_none_or(|p| p.flow.history.load(std::sync::atomic::Ordering::Relaxed))
        });
    shared
        .history
        .store(history, std::sync::atomic::Ordering::Relaxed);
    let tags: Vec<String> = options
        .and_then(|o| o.shared.tags.as_ref())
        .unwrap_or(&meta.tags)
        .iter()
        .map(|t| t.clone().into_owned())
        .collect();
    // Serialized once per flow run, and only for a run some observer (the
    // run history) may record.
    let recorded = history
        && inventory::iter::<crate::observe::ObserverRegistration>
            .into_iter()
            .next()
            .is_some();
    let parameters =
        (recorded || report_to.is_some()).then(|| parameters_json(&F::parameters(args)));
    if let Some(sink) = &report_to {
        crate::flow::subflow::report_start(sink, &shared, parameters.clone(), tags.clone());
    }
    if let Some(p) = parent {
        p.flow.links.add_running(&shared, &p);
        shared.links.set_parent(p);
    }
    let limits = crate::concurrency::open_scope(&shared);
    let span = tracing::info_span!("flow_run", run = %shared.name);
    let label = format!("Flow run '{}'", shared.name);
    crate::run_event!(
        tracing::Level::INFO,
        label.as_str(),
        "Beginning flow run '{}' for flow '{}'",
        shared.name,
        shared.flow_name
    );
    let info = FlowRunInfo {
        flow_name: shared.flow_name.clone(),
        flow_run_name: shared.name.clone(),
        flow_run_id: shared.id.clone(),
        parent_flow_run_id,
        flow: crate::flow::scope::FlowHandle(shared.clone()),
        parameters,
        tags,
        // The flow process records it (see `subflow::record_reported`).
        history: history && report_to.is_none(),
    };
    // A runner that cannot start is the infrastructure failing: Crashed,
    // as in Prefect; an invalid option is the flow's own failure.
    let fail_early = |state_kind: StateKind, kind: FlowErrorKind, message: String| {
        let error = FlowError::new(kind, shared.name.clone(), message.clone());
        let state = State::new(state_kind).with_message(message);
        // Observers added before the failure see the flow run end.
        announce_end(&shared, report_to.as_ref(), &label, &hooks, &info, &state);
        Box::new(FlowRun {
            id: shared.id.clone(),
            name: shared.name.clone(),
            flow_name: shared.flow_name.clone(),
            state,
            result: Err(error),
            task_failures: Vec::new(),
            counts: TaskRunCounts::default(),
            duration: began.elapsed(),
            parent_flow_run_id: shared.links.parent().map(|p| p.flow.id.clone()),
            subflows: Vec::new(),
        })
    };
    if let Some(e) = meta
        .config_error
        .clone()
        .or_else(|| policy.validate().err())
    {
        return Err(fail_early(
            StateKind::Failed,
            FlowErrorKind::RunnerFailed,
            format!("flow '{}' has an invalid option: {e}", shared.flow_name),
        ));
    }
    for registration in inventory::iter::<crate::observe::ObserverRegistration> {
        if let Some(observer) = (registration.factory)(&info) {
            shared.add_observer(observer);
        }
    }
    // Its task runs go to the flow process with its end, for the run
    // history there (only flows that report to another process).
    let relay = (history && report_to.is_some()).then(|| {
        let relay = Arc::new(crate::flow::subflow::TaskRelay::default());
        shared.add_observer(relay.clone());
        relay
    });
    let start = || {
        if inherited {
            Ok(())
        } else {
            runner.start(&info)
        }
    };
    match catch_unwind(AssertUnwindSafe(start)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(fail_early(
                StateKind::Crashed,
                FlowErrorKind::RunnerFailed,
                format!("{} could not start: {e}", shared.runner_name),
            ))
        }
        Err(p) => {
            return Err(fail_early(
                StateKind::Crashed,
                FlowErrorKind::RunnerFailed,
                format!(
                    "{} panicked while starting: {}",
                    shared.runner_name,
                    panic_message(&*p)
                ),
            ))
        }
    }
    // The flow's own limits win over its runner's (set in `start`).
    for &(tag, slots) in &meta.concurrency_limits {
        let _ = crate::concurrency::flow_limits(&info.flow).set_tag_limit(tag, slots);
    }
    hooks.call(&info, &State::new(StateKind::Running));
    Ok(Started {
        report_to,
        relay,
        _limits: limits,
        shared,
        policy,
        timeout,
        began,
        span,
        inherited,
        hooks,
        info,
    })
}

/// What a parameter whose type is not `Serialize` is recorded as.
const NOT_SERIALIZABLE: &str = "\"<not serializable>\"";

/// `{"name": value, ...}` in the order given.
fn parameters_json(parameters: &[(&'static str, Option<String>)]) -> String {
    let mut json = String::from("{");
    for (i, (name, value)) in parameters.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&serde_json::to_string(name).unwrap_or_else(|_| "\"?\"".into()));
        json.push(':');
        json.push_str(value.as_deref().unwrap_or(NOT_SERIALIZABLE));
    }
    json.push('}');
    json
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

    /// Ends the attempt when the flow run's timeout expires, from the timer
    /// thread: the body of a sync flow cannot be interrupted.
    fn arm_timeout(&self) -> Option<TimerHandle> {
        let t = self.timeout?;
        let shared = self.shared.clone();
        Some(timer::schedule(Instant::now() + t, move || {
            expire(&shared, t);
        }))
    }

    /// After a body attempt: stop pending work if it failed, wait for the rest.
    fn settle_attempt<R>(&self, body: &Body<R>) {
        if matches!(body, Body::Ok(_)) {
            return;
        }
        if self.shared.runner.stops_running_on_failure() {
            self.shared
                .abandon_all("the flow run failed before this task run finished");
        } else {
            self.shared
                .cancel_pending("the flow run failed before this task run started");
        }
    }

    /// The delay before the next attempt when `outcome` is retried; logs the
    /// retry and clears the attempt's failures and cancellation.
    fn retry_delay<R>(&self, attempt: u32, outcome: &Result<R, FlowError>) -> Option<Duration> {
        let Err(error) = outcome else {
            return None;
        };
        if attempt > self.policy.retries {
            return None;
        }
        let delay = self.policy.delay_before(attempt);
        crate::run_event!(
            tracing::Level::WARN,
            self.label().as_str(),
            "Attempt {attempt} failed: {}. Retry {attempt}/{} will start {} from now",
            error.message(),
            self.policy.retries,
            human_duration(delay)
        );
        self.shared.reset_for_retry();
        Some(delay)
    }

    /// The attempt's result, and every failed task run of the attempt.
    fn conclude<R>(&self, body: Body<R>) -> (Result<R, FlowError>, Vec<TaskRunFailure>) {
        let failures = self.shared.take_failures();
        let timed_out = self
            .shared
            .is_timed_out()
            .then(|| self.timeout.unwrap_or_default());
        let result = conclude(&self.shared.name, body, &failures, timed_out);
        (result, failures)
    }

    fn finish<R>(self, result: Result<R, FlowError>, failures: Vec<TaskRunFailure>) -> FlowRun<R> {
        let shared = &self.shared;
        shared.close();
        let state = match &result {
            Ok(_) => State::new(StateKind::Completed),
            Err(e) if e.kind() == &FlowErrorKind::TimedOut => State::new(StateKind::Failed)
                .with_name("TimedOut")
                .with_message(e.message()),
            Err(e) => State::new(StateKind::Failed).with_message(e.message()),
        };
        shared.emit_flow_finished(&state);
        crate::flow::subflow::report_to_parent(shared, &state);
        if let Some(sink) = &self.report_to {
            crate::flow::subflow::report_end(sink, shared, &state, self.relay.as_deref());
        }
        let subflows = shared.links.children();
        if let Some(line) = crate::flow::subflow::summary(&subflows) {
            crate::run_event!(tracing::Level::INFO, self.label().as_str(), "{line}");
        }
        log_finished(&self.label(), &state);
        self.hooks.call(&self.info, &state);
        FlowRun {
            id: shared.id.clone(),
            name: shared.name.clone(),
            flow_name: shared.flow_name.clone(),
            state,
            result,
            task_failures: failures,
            counts: shared.counts(),
            duration: self.began.elapsed(),
            parent_flow_run_id: shared.links.parent().map(|p| p.flow.id.clone()),
            subflows,
        }
    }

    fn shutdown_runner(&self) {
        if self.inherited {
            return;
        }
        shutdown_runner(
            self.shared.runner.clone(),
            self.label(),
            self.shared.runner_name.clone(),
        );
    }
}

fn shutdown_runner(runner: Arc<dyn TaskRunner>, label: String, runner_name: String) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| runner.shutdown())) {
        crate::run_event!(
            tracing::Level::ERROR,
            label.as_str(),
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

/// The flow run's timeout expired: its unfinished task runs are cancelled.
fn expire(shared: &FlowShared, timeout: Duration) -> String {
    let why = format!("the flow run timed out after {}", human_duration(timeout));
    shared.mark_timed_out();
    crate::run_event!(
        tracing::Level::WARN,
        format!("Flow run '{}'", shared.name),
        "Flow run exceeded its timeout of {}; its unfinished task runs are cancelled",
        human_duration(timeout)
    );
    shared.abandon_all(&why);
    why
}

type Panic = Box<dyn std::any::Any + Send>;

impl Started {
    /// One attempt of the body on this thread; an async body is driven on
    /// flowrun's runtime. Returns the timer of the flow run's timeout, which
    /// stays armed while the attempt's task runs finish.
    fn body_blocking<F: Flow>(
        &self,
        args: F::Args,
    ) -> (Result<F::Raw, Panic>, Option<TimerHandle>) {
        let watchdog = self.arm_timeout();
        let _in = enter_with_span(self.context());
        let raw = catch_unwind(AssertUnwindSafe(|| match F::invoke(args) {
            Invocation::Ready(raw) => raw,
            Invocation::Future(fut) => runtime().block_on(fut),
        }));
        (raw, watchdog)
    }

    /// One attempt of the body in the caller's executor, within the flow
    /// run's timeout.
    async fn body_async<F: Flow>(&self, args: F::Args) -> Result<F::Raw, Panic> {
        let invoked = {
            let _in = enter_with_span(self.context());
            catch_unwind(AssertUnwindSafe(|| F::invoke(args)))
        };
        let fut = match invoked? {
            Invocation::Ready(raw) => return Ok(raw),
            Invocation::Future(fut) => fut,
        };
        let guarded = CatchUnwind::new(WithContext {
            ctx: self.context(),
            inner: fut,
        });
        match self.timeout {
            None => guarded.await,
            Some(t) => match Deadline::new(guarded, t).await {
                Some(r) => r,
                None => Err(Box::new(expire(&self.shared, t))),
            },
        }
    }

    /// Shuts the runner down on a helper thread while this future waits
    /// without blocking: stopping a runner may block (stopping processes).
    async fn shutdown_runner_async(&self) {
        if self.inherited {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (runner, label, runner_name) = (
            self.shared.runner.clone(),
            self.label(),
            self.shared.runner_name.clone(),
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
            Err(_) => self.shutdown_runner(),
        }
    }
}

/// The attempt loop of a flow run, in either mode: blocking (every step
/// finishes at once) or async.
async fn drive<F: Flow>(config: &FlowConfig, args: F::Args, mode: Mode) -> FlowRun<F::Output> {
    let started = match begin::<F>(config, &args) {
        Ok(s) => s,
        Err(run) => return *run,
    };
    let _ = started.shared.parameters.set(F::parameters_key(&args));
    let _ = started.shared.results.set(crate::cache::inherited(
        &F::meta().results,
        config.inner.get().map(|o| &o.options.shared.results),
        started.shared.links.parent().map(|p| &*p.flow),
    ));
    let mut holder = ArgsHolder::new(args, F::args_clone());
    let mut dropped = DroppedFlow(matches!(mode, Mode::Async).then(|| {
        (
            started.shared.clone(),
            started.label(),
            started.hooks.clone(),
            started.info.clone(),
        )
    }));
    let mut attempt = 1;
    let (result, failures) = loop {
        let last = attempt > started.policy.retries || !holder.can_retry();
        let Some(args) = holder.for_attempt(last) else {
            unreachable!("flow retries only with cloneable arguments")
        };
        let (raw, watchdog) = match mode {
            Mode::Blocking => started.body_blocking::<F>(args),
            Mode::Async => (started.body_async::<F>(args).await, None),
        };
        let body = body_of::<F>(raw);
        started.settle_attempt(&body);
        match mode {
            Mode::Blocking => started.shared.wait_idle(),
            Mode::Async => started.shared.wait_idle_async().await,
        }
        if let Some(w) = watchdog {
            w.cancel();
        }
        let (result, failures) = started.conclude(body);
        match started.retry_delay(attempt, &result) {
            Some(delay) if !last => {
                mode.sleep(delay).await;
                attempt += 1;
            }
            _ => break (result, failures),
        }
    };
    if let Ok(value) = &result {
        crate::cache::persist_flow(
            F::meta(),
            config.inner.get().map(|o| &o.options.shared.results),
            &started.shared,
            value,
            F::output_encoder(),
        );
    }
    // From here on the shutdown below runs to its end even if this future
    // is dropped.
    dropped.0 = None;
    match mode {
        Mode::Blocking => started.shutdown_runner(),
        Mode::Async => started.shutdown_runner_async().await,
    }
    started.finish(result, failures)
}

/// The end of a flow run that did not get to run its body to a result
/// (it failed before it started, or its future was dropped), as everyone
/// hears it, in order: its observers, the flow process when this run is a
/// subflow relayed from a worker (`report_to`), the log and its hooks.
fn announce_end(
    shared: &FlowShared,
    report_to: Option<&crate::flow::subflow::SubflowSink>,
    label: &str,
    hooks: &FlowHooks,
    info: &FlowRunInfo,
    state: &State,
) {
    shared.emit_flow_finished(state);
    if let Some(sink) = report_to {
        crate::flow::subflow::report_end(sink, shared, state, None);
    }
    log_finished(label, state);
    hooks.call(info, state);
}

/// Logs "Finished in state ..." for a flow run: INFO when it completed,
/// WARN when it was cancelled, ERROR otherwise.
fn log_finished(label: &str, state: &State) {
    let level = match state.kind() {
        StateKind::Completed => tracing::Level::INFO,
        StateKind::Cancelled => tracing::Level::WARN,
        _ => tracing::Level::ERROR,
    };
    crate::run_event!(level, label, "Finished in state {state}");
}

/// Ends an async flow run whose future is dropped before it finished
/// (`tokio::time::timeout`, `select!`, an aborted task): its task runs end
/// `Cancelled`, the flow run ends `Cancelled`, and its runner shuts down on
/// a helper thread (dropping must not block).
struct DroppedFlow(Option<(Arc<FlowShared>, String, FlowHooks, FlowRunInfo)>);

impl Drop for DroppedFlow {
    fn drop(&mut self) {
        let Some((shared, label, hooks, info)) = self.0.take() else {
            return;
        };
        let why = "the flow run's future was dropped before it finished";
        shared.abandon_all(why);
        shared.close();
        let state = State::new(StateKind::Cancelled).with_message(why);
        announce_end(&shared, None, &label, &hooks, &info, &state);
        let (runner, runner_name) = (shared.runner.clone(), shared.runner_name.clone());
        let _ = std::thread::Builder::new()
            .name("flowrun-shutdown".into())
            .spawn(move || shutdown_runner(runner, label, runner_name));
    }
}

/// Runs a flow to the end on this thread: what calling a sync `#[flow]` does.
pub fn run_flow<F: Flow>(config: &FlowConfig, args: F::Args) -> FlowRun<F::Output> {
    block_here(drive::<F>(config, args, Mode::Blocking))
}

/// Runs a flow to the end without blocking the executor: what calling an
/// async `#[flow]` does.
pub async fn run_flow_async<F: Flow>(config: FlowConfig, args: F::Args) -> FlowRun<F::Output> {
    drive::<F>(&config, args, Mode::Async).await
}

/// The [`TaskResult`] conversion, for flows that return `Result`.
pub fn flow_outcome<R: TaskResult>(raw: R) -> Result<R::Ok, TaskError> {
    raw.into_outcome()
}

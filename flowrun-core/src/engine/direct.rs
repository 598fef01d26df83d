//! Direct calls: `shout(3)` inside a flow runs the task now, on the
//! caller's thread (or in the caller's async task), as a tracked task run
//! with retries, a timeout and the task's cache options, and returns what
//! the function returned (or, on a cache hit, the stored value).

use std::sync::Arc;
use std::time::Duration;

use super::adapters::{block_here, block_on, CatchUnwind, Deadline, Mode};
use super::resolve::resolve;
use super::retry::{await_retry, timed_out, ArgsHolder};
use crate::exec::context::{self, enter_with_span, Context, WithContext};
use crate::flow::registry::FlowShared;
use crate::run::error::{panic_message, TaskError, TaskErrorKind};
use crate::run::hooks::{RetryCondition, TaskHooks};
use crate::run::record::{RunCell, RunRef};
use crate::task::args::{ArgsTuple, IntoInputs};
use crate::task::options::RetryPolicy;
use crate::task::{CallConfig, Invocation, Task};

/// How one attempt of a direct call ended.
enum Attempt<R> {
    Done(R),
    Errored(R, String),
    Panicked(Box<dyn std::any::Any + Send>),
    TimedOut(Duration),
}

/// A direct call's run record and the options it runs with.
struct DirectRun<T: Task> {
    cell: Arc<RunCell<T::Output>>,
    flow: Arc<FlowShared>,
    policy: RetryPolicy,
    timeout: Option<Duration>,
    hooks: Option<Arc<TaskHooks>>,
    retry_condition: Option<RetryCondition>,
    /// Where the value is persisted once the task returns, if anywhere.
    target: Option<crate::cache::Target>,
}

/// What the cache decided for a direct call.
enum Looked<T: Task> {
    /// The run completed from the cache: what the call returns.
    Hit(T::Raw),
    /// The task executes, with these arguments.
    Execute(T::Args),
}

fn start_direct<T: Task>(config: &CallConfig, args: &T::Args) -> DirectRun<T> {
    let flow = context::current_flow().unwrap_or_else(FlowShared::detached);
    let r = resolve(T::meta(), config);
    let index = flow.next_index(&r.name);
    let mut cell = RunCell::new(
        r.name,
        T::meta().key,
        index,
        flow.clone(),
        &T::support().result,
    );
    cell.label.run_name = T::direct_run_name(args).map(String::into_boxed_str);
    let cell = Arc::new(cell);
    flow.track(RunRef(cell.clone()));
    cell.mark_observed();
    if let Some(hooks) = &r.hooks {
        TaskHooks::attach(hooks.clone(), &cell);
    }
    if let Some(e) = r.error {
        cell.fail(TaskError::new(TaskErrorKind::Runner, e.clone()));
        panic!("{e}");
    }
    DirectRun {
        cell,
        flow,
        policy: r.policy.into_owned(),
        timeout: r.timeout,
        hooks: r.hooks,
        retry_condition: r.retry_condition,
        target: None,
    }
}

impl<T: Task> DirectRun<T> {
    fn context(&self) -> Context {
        Context::for_task_run(Some(self.flow.clone()), RunRef(self.cell.clone()))
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
            Attempt::Panicked(p) => TaskError::new(TaskErrorKind::Panic, panic_message(&**p)),
            Attempt::TimedOut(t) => timed_out(*t),
        };
        if attempt > self.policy.retries
            || !can_retry
            || self
                .retry_condition
                .as_ref()
                .is_some_and(|c| !c.allows(&RunRef(self.cell.clone()), &error))
        {
            return None;
        }
        Some(await_retry(&self.cell, attempt, &self.policy, &error).0)
    }

    /// Computes the call's cache key (when the task caches or persists)
    /// and looks its result up, as a submitted run does: the same task
    /// with the same arguments has the same key either way.
    fn look_up(&mut self, config: &CallConfig, args: T::Args) -> Result<Looked<T>, TaskError>
    where
        T::Args: IntoInputs<T::Args>,
    {
        let support = T::support();
        let Some(plan) = crate::cache::plan(
            T::meta(),
            config.get().map(|o| &o.options.shared.results),
            &self.flow,
            support.result.encode.is_some(),
        ) else {
            return Ok(Looked::Execute(args));
        };
        // The arguments are encoded as a submitted run's values are.
        let mut encoded = None;
        let args = if plan.hashes_inputs() {
            let inputs = <T::Args as IntoInputs<T::Args>>::into_inputs(args);
            encoded = Some(match &support.serialized {
                Ok(fns) => (fns.encode_inputs)(&inputs),
                Err(why) => Err(TaskError::new(TaskErrorKind::Runner, why.clone())),
            });
            <T::Args as ArgsTuple>::resolve(inputs)?
        } else {
            args
        };
        let run_name = self.cell.name();
        let parameter = |name: &str| T::direct_key_parameter(&args, name);
        let prepared =
            crate::cache::prepare(&plan, T::meta(), &run_name, &self.flow, &parameter, || {
                encoded.unwrap_or_else(|| Ok(Vec::new()))
            })?;
        if let Some((bytes, _)) = &prepared.hit {
            if let Some(value) =
                crate::cache::decode_hit(&prepared, bytes, &support.result, &run_name)
            {
                if let Some(id) = prepared.cache_id(true) {
                    let _ = self.cell.cache_key.set(id);
                }
                self.cell.complete_returned_cached();
                return Ok(Looked::Hit(T::raw_from_output(value)));
            }
        }
        if let Some(id) = prepared.cache_id(false) {
            let _ = self.cell.cache_key.set(id);
        }
        self.target = Some(prepared.target);
        Ok(Looked::Execute(args))
    }

    fn finish(self, outcome: Attempt<T::Raw>) -> T::Raw {
        match outcome {
            Attempt::Done(raw) => {
                // Written before the run completes, as a worker does.
                if let (Some(target), Some(value)) = (&self.target, T::output_ref(&raw)) {
                    crate::cache::persist_value(
                        target,
                        &self.cell.name(),
                        value,
                        &T::support().result,
                    );
                }
                self.cell.complete_returned();
                raw
            }
            Attempt::Errored(raw, m) => {
                self.cell.fail(TaskError::new(TaskErrorKind::Error, m));
                raw
            }
            Attempt::Panicked(p) => {
                self.cell
                    .fail(TaskError::new(TaskErrorKind::Panic, panic_message(&*p)));
                std::panic::resume_unwind(p)
            }
            Attempt::TimedOut(t) => {
                let e = timed_out(t).in_run(self.cell.name());
                self.cell.fail(e.clone());
                panic!("{e}")
            }
        }
    }

    /// One attempt that blocks this thread. With a timeout it runs on a
    /// helper thread so the caller can stop waiting; a late result is
    /// dropped.
    fn attempt_blocking(&self, args: T::Args) -> Attempt<T::Raw> {
        let ctx = self.context();
        let Some(timeout) = self.timeout else {
            let _in = enter_with_span(ctx);
            return invoke_now::<T>(args, None);
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("flowrun-call".into())
            .spawn(move || {
                let _in = enter_with_span(ctx);
                let _ = tx.send(invoke_now::<T>(args, Some(timeout)));
            });
        if let Err(e) = spawned {
            return Attempt::Panicked(Box::new(format!("could not start a thread: {e}")));
        }
        crate::exec::pool::blocking(|| match rx.recv_timeout(timeout) {
            Ok(outcome) => outcome,
            Err(_) => Attempt::TimedOut(timeout),
        })
    }

    /// One attempt of an async task that yields to the caller's executor.
    async fn attempt_async(&self, args: T::Args) -> Attempt<T::Raw> {
        let ctx = self.context();
        let invoked = {
            let _in = enter_with_span(ctx.clone());
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| T::invoke(args)))
        };
        match invoked {
            Err(p) => Attempt::Panicked(p),
            Ok(Invocation::Ready(raw)) => Self::classify(raw),
            Ok(Invocation::Future(fut)) => {
                let guarded = CatchUnwind::new(WithContext { ctx, inner: fut });
                let finished = match self.timeout {
                    None => Some(guarded.await),
                    Some(t) => Deadline::new(guarded, t).await,
                };
                match finished {
                    Some(Ok(raw)) => Self::classify(raw),
                    Some(Err(p)) => Attempt::Panicked(p),
                    None => Attempt::TimedOut(self.timeout.unwrap_or_default()),
                }
            }
        }
    }
}

/// Calls `T` on this thread, driving an async task's future on flowrun's
/// runtime (within `timeout`, when given).
fn invoke_now<T: Task>(args: T::Args, timeout: Option<Duration>) -> Attempt<T::Raw> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| T::invoke(args))) {
        Err(p) => Attempt::Panicked(p),
        Ok(Invocation::Ready(raw)) => DirectRun::<T>::classify(raw),
        Ok(Invocation::Future(fut)) => match block_on(fut, timeout) {
            Ok(raw) => DirectRun::<T>::classify(raw),
            Err(e) if timeout.is_some() && e.is_timeout() => {
                Attempt::TimedOut(timeout.unwrap_or_default())
            }
            Err(e) => Attempt::Panicked(Box::new(e.message().to_owned())),
        },
    }
}

/// The attempt loop of a direct call, in either mode: blocking (every step
/// finishes at once) or async.
async fn run_direct<T: Task>(config: &CallConfig, args: T::Args, mode: Mode) -> T::Raw
where
    T::Args: IntoInputs<T::Args>,
{
    let mut run = start_direct::<T>(config, &args);
    let args = match run.look_up(config, args) {
        Ok(Looked::Execute(args)) => args,
        Ok(Looked::Hit(raw)) => return raw,
        Err(e) => {
            let e = e.in_run(run.cell.name());
            run.cell.fail(e.clone());
            panic!("{e}")
        }
    };
    let mut holder = ArgsHolder::new(args, T::support().args_clone);
    let mut attempt = 1;
    loop {
        let last = attempt > run.policy.retries;
        let Some(args) = holder.for_attempt(last) else {
            unreachable!("a direct call retries only with cloneable arguments")
        };
        run.cell.start_attempt(attempt);
        if let Some(hooks) = &run.hooks {
            hooks.running(&RunRef(run.cell.clone()));
        }
        let outcome = match mode {
            Mode::Blocking => run.attempt_blocking(args),
            Mode::Async => run.attempt_async(args).await,
        };
        match run.after(attempt, &outcome, holder.can_retry()) {
            None => return run.finish(outcome),
            Some(delay) => {
                mode.sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// Runs `T` now, on this thread, as a tracked task run, and returns what the
/// function returned. Retries and timeouts apply. A panic in the last
/// attempt continues as a panic in the caller, as a failure does in Python.
///
/// The task's result and cache options apply as to a submitted run: a
/// cache hit completes the run in a `Completed` state named `Cached` and
/// returns the stored value without executing the task; an executed run
/// with `persist_result` (or a cache policy) writes its value to result
/// storage before it completes.
pub fn call<T: Task>(config: &CallConfig, args: T::Args) -> T::Raw
where
    T::Args: IntoInputs<T::Args>,
{
    block_here(run_direct::<T>(config, args, Mode::Blocking))
}

/// The async form of [`call`], for `async fn` tasks: `fetch(3).await`.
pub async fn call_async<T: Task>(config: CallConfig, args: T::Args) -> T::Raw
where
    T::Args: IntoInputs<T::Args>,
{
    run_direct::<T>(&config, args, Mode::Async).await
}

//! State hooks of task and flow runs (`on_completion`, `on_failure`, ...)
//! and the retry condition of task runs.
//!
//! A hook is called with the run and its state. A hook that panics or
//! returns `Err` is logged on the run and changes nothing: the run keeps
//! its state. Final-state hooks of a task run are called before anyone
//! waiting on the run is woken, so that a flow sees what its hooks did once
//! it has a result. On the thread runner they run on the thread that ran
//! the task.
//!
//! On a runner with worker processes (a local cluster, real Dask), the
//! hooks of the task's attribute run where the task runs, as in Prefect:
//! the worker calls `on_running` before each attempt, `on_completion`
//! after a success and `on_failure` after the task's own failure on its
//! last attempt (see `run::task_hooks`). The flow process calls `on_failure`
//! for failures decided there: a timeout, a lost worker, a failed
//! upstream, a retry condition that declined a retry. Hooks given per call
//! (`TaskOptions`) are closures of the flow process: a run with any of
//! them calls all its hooks in the flow process.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::run::error::{panic_message, TaskError};
use crate::run::record::{RunCell, RunRef};
use crate::run::state::{State, StateKind};
use crate::runner::FlowRunInfo;

/// What a hook may return: nothing, or a `Result` whose `Err` is logged.
pub trait HookResult {
    /// `Err` with the message to log.
    fn into_hook_result(self) -> Result<(), String>;
}

impl HookResult for () {
    fn into_hook_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> HookResult for Result<(), E> {
    fn into_hook_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

type HookFn<R> = dyn Fn(&R, &State) -> Result<(), String> + Send + Sync;

/// A function called with a run (`R`: [`RunRef`] for task runs,
/// [`FlowRunInfo`] for flow runs) and its state.
pub(crate) struct Hook<R: ?Sized + 'static>(Arc<HookFn<R>>);

impl<R: ?Sized + 'static> Hook<R> {
    /// Wraps `f`, which returns `()` or `Result<(), E>`.
    pub(crate) fn new<F, O>(f: F) -> Hook<R>
    where
        F: Fn(&R, &State) -> O + Send + Sync + 'static,
        O: HookResult,
    {
        Hook(Arc::new(move |run: &R, state: &State| {
            f(run, state).into_hook_result()
        }))
    }
}

/// The hooks of one kind a run calls: the call's own when it gives any,
/// else the task's or flow's (hooks are replaced, not added up).
fn pick<R: ?Sized + 'static>(own: &[Hook<R>], over: &[Hook<R>]) -> Vec<Hook<R>> {
    if over.is_empty() { own } else { over }.to_vec()
}

impl<R: ?Sized + 'static> Clone for Hook<R> {
    fn clone(&self) -> Self {
        Hook(self.0.clone())
    }
}

impl<R: ?Sized + 'static> fmt::Debug for Hook<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hook")
    }
}

/// Calls each hook; logs the ones that fail.
pub(crate) fn call_hooks<R: ?Sized>(
    hooks: &[Hook<R>],
    kind: &str,
    label: &str,
    run: &R,
    state: &State,
) {
    for hook in hooks {
        let outcome = catch_unwind(AssertUnwindSafe(|| (hook.0)(run, state)))
            .unwrap_or_else(|p| Err(format!("it panicked: {}", panic_message(&*p))));
        if let Err(e) = outcome {
            crate::run_event!(
                tracing::Level::ERROR,
                label,
                "An {kind} hook failed (the run stays {}): {e}",
                state.kind()
            );
        }
    }
}

/// The hooks of a task: `on_completion`, `on_failure`, `on_running`.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskHooks {
    pub(crate) on_completion: Vec<Hook<RunRef>>,
    pub(crate) on_failure: Vec<Hook<RunRef>>,
    pub(crate) on_running: Vec<Hook<RunRef>>,
}

impl TaskHooks {
    pub(crate) fn is_empty(&self) -> bool {
        self.on_completion.is_empty() && self.on_failure.is_empty() && self.on_running.is_empty()
    }

    /// Per-call hooks replace the task's own, one kind at a time.
    pub(crate) fn overridden_by(&self, call: &TaskHooks) -> TaskHooks {
        TaskHooks {
            on_completion: pick(&self.on_completion, &call.on_completion),
            on_failure: pick(&self.on_failure, &call.on_failure),
            on_running: pick(&self.on_running, &call.on_running),
        }
    }

    /// Calls the final-state hooks of `cell` when it ends (it completes or
    /// fails; a crashed or cancelled run counts as failed, as in Prefect).
    pub(crate) fn attach<T: Send + 'static>(hooks: Arc<TaskHooks>, cell: &Arc<RunCell<T>>) {
        if hooks.on_completion.is_empty() && hooks.on_failure.is_empty() {
            return;
        }
        let run = RunRef(cell.clone());
        cell.on_final(Box::new(move || {
            let state = run.state();
            let (kind, list) = if state.kind() == StateKind::Completed {
                ("on_completion", &hooks.on_completion)
            } else {
                ("on_failure", &hooks.on_failure)
            };
            let label = format!("Task run '{}'", run.name());
            call_hooks(list, kind, &label, &run, &state);
        }));
    }

    /// Like [`attach`](TaskHooks::attach) for a run whose attempts run
    /// with the task's hooks in another process (see `run::task_hooks`): that
    /// process called `on_completion`, and `on_failure` when the task's
    /// own code failed on the last attempt; this calls `on_failure` for the
    /// failures decided here.
    pub(crate) fn attach_serialized<T: Send + 'static>(
        hooks: Arc<TaskHooks>,
        cell: &Arc<RunCell<T>>,
        retries: u32,
        runner_retries: bool,
    ) {
        if hooks.on_failure.is_empty() {
            return;
        }
        let run = RunRef(cell.clone());
        cell.on_final(Box::new(move || {
            let state = run.state();
            if state.kind() == StateKind::Completed
                || crate::run::task_hooks::failure_handled_where_it_ran(
                    &run,
                    retries,
                    runner_retries,
                )
            {
                return;
            }
            let label = format!("Task run '{}'", run.name());
            call_hooks(&hooks.on_failure, "on_failure", &label, &run, &state);
        }));
    }

    /// Calls the `on_running` hooks of a run that has just started an attempt.
    pub(crate) fn running(&self, run: &RunRef) {
        if self.on_running.is_empty() {
            return;
        }
        let label = format!("Task run '{}'", run.name());
        call_hooks(&self.on_running, "on_running", &label, run, &run.state());
    }
}

/// The hooks of a flow: `on_completion`, `on_failure`, `on_crashed`,
/// `on_cancellation`, `on_running`.
#[derive(Debug, Clone, Default)]
pub(crate) struct FlowHooks {
    pub(crate) on_completion: Vec<Hook<FlowRunInfo>>,
    pub(crate) on_failure: Vec<Hook<FlowRunInfo>>,
    pub(crate) on_crashed: Vec<Hook<FlowRunInfo>>,
    pub(crate) on_cancellation: Vec<Hook<FlowRunInfo>>,
    pub(crate) on_running: Vec<Hook<FlowRunInfo>>,
}

impl FlowHooks {
    /// Per-call hooks replace the flow's own, one kind at a time.
    pub(crate) fn overridden_by(&self, call: &FlowHooks) -> FlowHooks {
        FlowHooks {
            on_completion: pick(&self.on_completion, &call.on_completion),
            on_failure: pick(&self.on_failure, &call.on_failure),
            on_crashed: pick(&self.on_crashed, &call.on_crashed),
            on_cancellation: pick(&self.on_cancellation, &call.on_cancellation),
            on_running: pick(&self.on_running, &call.on_running),
        }
    }

    /// Calls the hooks for the flow run's `state`.
    pub(crate) fn call(&self, info: &FlowRunInfo, state: &State) {
        let (kind, list) = match state.kind() {
            StateKind::Running => ("on_running", &self.on_running),
            StateKind::Completed => ("on_completion", &self.on_completion),
            StateKind::Crashed => ("on_crashed", &self.on_crashed),
            StateKind::Cancelled => ("on_cancellation", &self.on_cancellation),
            StateKind::Failed => ("on_failure", &self.on_failure),
            _ => return,
        };
        let label = format!("Flow run '{}'", info.flow_run_name);
        call_hooks(list, kind, &label, info, state);
    }
}

/// Decides from a task run and the error of its failed attempt whether the
/// attempt is retried (Prefect's `retry_condition_fn`). Consulted only
/// while retries remain; a condition that panics declines the retry.
#[derive(Clone)]
pub(crate) struct RetryCondition(Arc<ConditionFn>);

type ConditionFn = dyn Fn(&RunRef, &TaskError) -> bool + Send + Sync;

impl RetryCondition {
    /// Wraps `f`.
    pub(crate) fn new(f: impl Fn(&RunRef, &TaskError) -> bool + Send + Sync + 'static) -> Self {
        RetryCondition(Arc::new(f))
    }

    /// Whether `run`'s failed attempt should be retried.
    pub(crate) fn allows(&self, run: &RunRef, error: &TaskError) -> bool {
        match catch_unwind(AssertUnwindSafe(|| (self.0)(run, error))) {
            Ok(retry) => {
                if !retry {
                    crate::run_event!(
                        tracing::Level::INFO,
                        format!("Task run '{}'", run.name()),
                        "The retry condition declined a retry of: {}",
                        error.message()
                    );
                }
                retry
            }
            Err(p) => {
                crate::run_event!(
                    tracing::Level::ERROR,
                    format!("Task run '{}'", run.name()),
                    "The retry condition panicked, so the run is not retried: {}",
                    panic_message(&*p)
                );
                false
            }
        }
    }
}

impl fmt::Debug for RetryCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryCondition")
    }
}

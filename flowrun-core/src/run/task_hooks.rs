//! A task's own hooks, run where the task runs (Prefect calls task hooks in
//! the task's process).
//!
//! For an attempt that runs serialized on a runner that says so
//! ([`TaskRunner::runs_task_hooks`](crate::TaskRunner::runs_task_hooks)),
//! the flow sends a [`TaskHookCall`] with the job, and the process that
//! executes it ([`RegistryEntry::run_attempt`](crate::registry::RegistryEntry::run_attempt))
//! calls the hooks of the task's attribute around the attempt: `on_running`
//! before it, `on_completion` after a success, `on_failure` after a failure
//! of the task's own code on its last attempt. The flow process then calls
//! only the hooks nobody else could: `on_failure` for failures decided
//! outside the task (a timeout, a lost worker, a failed upstream, a retry
//! condition that declined a retry while retries remained).
//!
//! Hooks given per call (`TaskOptions::on_completion(closure)`) are
//! closures of the flow process: a run with any of them calls all its
//! hooks in the flow process, as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::hooks::TaskHooks;
use crate::run::record::{AnyRun, Callback, RunId, RunLabel, RunRef};
use crate::run::state::{State, StateKind};

/// What the process that executes a serialized attempt needs to call the
/// task's hooks there (see [`SerializedJob::task_hooks`](crate::SerializedJob::task_hooks)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHookCall {
    /// The task run's id in the flow process.
    pub run_id: u64,
    /// The attempt, from 1.
    pub attempt: u32,
    /// No retry follows a failure of this attempt, so a failure is final
    /// and its `on_failure` hooks run here.
    pub last_attempt: bool,
}

/// Whether the hooks of a failed serialized run already ran where it ran: the
/// task's own code failed on an attempt that was the last one.
pub(crate) fn failure_handled_where_it_ran(
    run: &RunRef,
    retries: u32,
    runner_retries: bool,
) -> bool {
    let own_code = run
        .error()
        .is_some_and(|e| matches!(e.kind(), TaskErrorKind::Error | TaskErrorKind::Panic));
    own_code && (runner_retries || run.attempts() > retries)
}

/// The run a hook on a worker receives: the flow's run as the worker knows
/// it (id, name, attempt, state), without its result.
struct SerializedRun {
    id: RunId,
    label: RunLabel,
    attempt: u32,
    started: Instant,
    state: std::sync::Mutex<(State, Option<TaskError>, Option<Instant>)>,
}

impl AnyRun for SerializedRun {
    fn id(&self) -> RunId {
        self.id
    }
    fn order(&self) -> u64 {
        self.id.get()
    }
    fn label(&self) -> &RunLabel {
        &self.label
    }
    fn state(&self) -> State {
        crate::plumbing::lock(&self.state).0.clone()
    }
    fn error(&self) -> Option<TaskError> {
        crate::plumbing::lock(&self.state).1.clone()
    }
    fn on_final(&self, callback: Callback) {
        // Only a final run reaches a final-state hook.
        callback()
    }
    fn block_until_final(&self, _deadline: Option<Instant>) -> bool {
        self.state().kind().is_final()
    }
    fn mark_observed(&self) {}
    fn observed(&self) -> bool {
        true
    }
    fn attempts(&self) -> u32 {
        self.attempt
    }
    fn duration(&self) -> Option<Duration> {
        let ended = crate::plumbing::lock(&self.state).2?;
        Some(ended.duration_since(self.started))
    }
    fn location(&self) -> Option<Arc<str>> {
        None
    }
    fn encoded_result(&self) -> Result<Bytes, TaskError> {
        Err(TaskError::new(
            TaskErrorKind::ResultUnavailable,
            "a hook running on a worker cannot read the run's result",
        ))
    }
    fn cache_key(&self) -> Option<&str> {
        None
    }
    fn fail_dyn(self: Arc<Self>, _error: TaskError) -> bool {
        false
    }
}

/// Runs `attempt` (the task's code) between the task's hooks, as
/// `call` says.
pub(crate) fn with_hooks<R>(
    meta: &'static crate::task::TaskMeta,
    run_name: &str,
    call: TaskHookCall,
    attempt: impl FnOnce() -> Result<R, TaskError>,
) -> Result<R, TaskError> {
    let hooks: &TaskHooks = &meta.hooks;
    if hooks.is_empty() {
        return attempt();
    }
    let running = if call.attempt > 1 {
        StateKind::Retrying
    } else {
        StateKind::Running
    };
    let serialized = Arc::new(SerializedRun {
        id: RunId::from_raw(call.run_id),
        label: RunLabel {
            task_name: meta.name.into(),
            task_key: meta.key,
            // The name carries the index; a worker has no other use for it.
            index: run_name
                .rsplit_once('-')
                .and_then(|(_, i)| i.parse().ok())
                .unwrap_or(0),
            // The worker knows the name whole, not how it was made.
            run_name: Some(run_name.into()),
        },
        attempt: call.attempt,
        started: Instant::now(),
        state: std::sync::Mutex::new((State::new(running), None, None)),
    });
    let run = RunRef(serialized.clone());
    hooks.running(&run);
    let result = attempt();
    let label = format!("Task run '{run_name}'");
    let (state, kind, list) = match &result {
        Ok(_) => (
            State::new(StateKind::Completed),
            "on_completion",
            &hooks.on_completion,
        ),
        Err(e)
            if call.last_attempt
                && matches!(e.kind(), TaskErrorKind::Error | TaskErrorKind::Panic) =>
        {
            (e.state(), "on_failure", &hooks.on_failure)
        }
        Err(_) => return result,
    };
    *crate::plumbing::lock(&serialized.state) = (
        state.clone(),
        result.as_ref().err().cloned(),
        Some(Instant::now()),
    );
    crate::run::hooks::call_hooks(list, kind, &label, &run, &state);
    result
}

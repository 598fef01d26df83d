//! How a flow run ended: the [`FlowRun`] it returns, its task run counts,
//! and the rule that turns a body's outcome and its task runs' failures
//! into the flow run's result.

use std::time::Duration;

use crate::engine::retry::human_duration;
use crate::flow::subflow::SubflowRun;
use crate::run::error::{FlowError, FlowErrorKind, TaskError, TaskRunFailure};
use crate::run::state::State;

/// How many task runs of a flow run ended in each final state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
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

/// The result of a flow run with its final state: what
/// `my_flow.return_state(...)` returns.
#[derive(Debug)]
#[must_use = "a flow run's result says whether it failed"]
pub struct FlowRun<R> {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) flow_name: String,
    pub(crate) state: State,
    pub(crate) result: Result<R, FlowError>,
    pub(crate) task_failures: Vec<TaskRunFailure>,
    pub(crate) counts: TaskRunCounts,
    pub(crate) duration: Duration,
    pub(crate) parent_flow_run_id: Option<String>,
    pub(crate) subflows: Vec<SubflowRun>,
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

    /// How many of this flow run's own task runs ended in each final state
    /// (as in Prefect, a subflow's task runs are its own: see
    /// [`subflows`](FlowRun::subflows) and
    /// [`task_run_counts_with_subflows`](FlowRun::task_run_counts_with_subflows)).
    pub fn task_run_counts(&self) -> TaskRunCounts {
        self.counts
    }

    /// The flow runs called inside this one (its subflows), in the order
    /// they finished, each with its state and task run counts.
    pub fn subflows(&self) -> &[SubflowRun] {
        &self.subflows
    }

    /// The task run counts of this flow run and its subflows together.
    pub fn task_run_counts_with_subflows(&self) -> TaskRunCounts {
        crate::flow::subflow::add_counts(self.counts, &self.subflows)
    }

    /// The id of the flow run this one is a subflow of, if any.
    pub fn parent_flow_run_id(&self) -> Option<&str> {
        self.parent_flow_run_id.as_deref()
    }

    /// How long the flow run took.
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

/// How a flow body attempt ended.
pub(crate) enum Body<R> {
    Ok(R),
    Err(TaskError),
    Panic(String),
}

/// The result of a flow run attempt: the body's value, unless it failed,
/// timed out, or left task run failures that nothing handled.
pub(crate) fn conclude<R>(
    flow_run: &str,
    body: Body<R>,
    failures: &[TaskRunFailure],
    timed_out: Option<Duration>,
) -> Result<R, FlowError> {
    let name = flow_run.to_owned();
    let unhandled: Vec<&TaskRunFailure> = failures.iter().filter(|f| !f.observed).collect();
    let describe = |list: &[&TaskRunFailure]| {
        list.iter()
            .map(|f| format!("'{}' {}", f.task_run, f.state))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let result = if let Some(t) = timed_out {
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
    result.map_err(|e| e.with_task_failures(failures.to_vec()))
}

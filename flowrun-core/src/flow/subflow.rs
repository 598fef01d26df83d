//! Subflows: a flow called inside a flow run (in its body or in one of its
//! task runs) is a child flow run linked to its parent, as in Prefect. It
//! runs on the parent's task runner unless it names its own (`task_runner =
//! ...` or `.with_runner`), and the parent's [`FlowRun`](crate::FlowRun)
//! lists it with its state and task run counts
//! ([`FlowRun::subflows`](crate::FlowRun::subflows)); the parent's own
//! counts stay its own task runs, as Prefect counts them.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::exec::context::with_current;
use crate::flow::outcome::TaskRunCounts;
use crate::flow::registry::FlowShared;
use crate::run::record::RunId;
use crate::run::state::State;

/// A child flow run as its parent's [`FlowRun`](crate::FlowRun) shows it.
#[derive(Debug, Clone)]
pub struct SubflowRun {
    /// The child flow run's id.
    pub id: String,
    /// The child flow run's name, such as `brave-otter`.
    pub name: String,
    /// The child's flow name.
    pub flow_name: String,
    /// The task run that called it, if a task (not the flow's body) did.
    pub parent_task_run: Option<RunId>,
    /// That task run's name, such as `load-2`.
    pub parent_task_run_name: Option<String>,
    /// Its final state (`Running` while it runs, in
    /// [`FlowHandle::subflows`](crate::FlowHandle::subflows)).
    pub state: State,
    /// Its task runs and those of its own subflows, by final state.
    pub counts: TaskRunCounts,
}

/// Where a flow run was called from.
#[derive(Clone)]
pub(crate) struct Parent {
    pub(crate) flow: Arc<FlowShared>,
    pub(crate) task_run: Option<RunId>,
    pub(crate) task_run_name: Option<String>,
}

/// A child that has started: the run, and the parent's task run that
/// called it (id and name).
type RunningChild = (Weak<FlowShared>, Option<RunId>, Option<String>);

/// A flow run's links: its parent, its children while they run, and its
/// children once they finished.
#[derive(Default)]
pub(crate) struct Links {
    parent: OnceLock<Parent>,
    running: Mutex<Vec<RunningChild>>,
    children: Mutex<Vec<SubflowRun>>,
}

impl Links {
    pub(crate) fn set_parent(&self, parent: Parent) {
        let _ = self.parent.set(parent);
    }

    pub(crate) fn parent(&self) -> Option<&Parent> {
        self.parent.get()
    }

    pub(crate) fn add_child(&self, child: SubflowRun) {
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
    }

    /// Notes a child that has started (until it reports its end).
    pub(crate) fn add_running(&self, child: &Arc<FlowShared>, parent: &Parent) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((
                Arc::downgrade(child),
                parent.task_run,
                parent.task_run_name.clone(),
            ));
    }

    fn remove_running(&self, id: &str) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(c, _, _)| c.upgrade().is_some_and(|c| c.id != id));
    }

    /// Every child, running (state `Running`, the task runs finished so
    /// far) or finished, in the order they started or ended.
    pub(crate) fn all_children(&self) -> Vec<SubflowRun> {
        let mut all = self.children();
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (child, task_run, task_run_name) in running {
            let Some(child) = child.upgrade() else {
                continue;
            };
            if all.iter().any(|c| c.id == child.id) {
                continue;
            }
            all.push(SubflowRun {
                id: child.id.clone(),
                name: child.name.clone(),
                flow_name: child.flow_name.clone(),
                parent_task_run: task_run,
                parent_task_run_name: task_run_name,
                state: State::new(crate::run::state::StateKind::Running),
                counts: add_counts(child.counts(), &child.links.all_children()),
            });
        }
        all
    }

    pub(crate) fn children(&self) -> Vec<SubflowRun> {
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The flow run this thread works for (in its body or one of its task
/// runs), which a flow called now is a subflow of.
pub(crate) fn current_parent() -> Option<Parent> {
    with_current(|c| {
        let flow = c.flow.clone().filter(|f| !f.is_detached())?;
        Some(Parent {
            flow,
            task_run: c.task_run.as_ref().map(|r| r.id()),
            task_run_name: c.task_run.as_ref().map(|r| r.name()),
        })
    })
}

/// Records a finished child in its parent.
pub(crate) fn report_to_parent(child: &FlowShared, state: &State) {
    let Some(parent) = child.links.parent() else {
        return;
    };
    parent.flow.links.remove_running(&child.id);
    parent.flow.links.add_child(SubflowRun {
        id: child.id.clone(),
        name: child.name.clone(),
        flow_name: child.flow_name.clone(),
        parent_task_run: parent.task_run,
        parent_task_run_name: parent.task_run_name.clone(),
        state: state.clone(),
        counts: add_counts(child.counts(), &child.links.children()),
    });
}

/// `own` plus the counts of `children`.
pub(crate) fn add_counts(own: TaskRunCounts, children: &[SubflowRun]) -> TaskRunCounts {
    children.iter().fold(own, |mut all, s| {
        all.completed += s.counts.completed;
        all.failed += s.counts.failed;
        all.crashed += s.counts.crashed;
        all.cancelled += s.counts.cancelled;
        all
    })
}

/// A one-line summary of finished subflows for the parent's console.
pub(crate) fn summary(children: &[SubflowRun]) -> Option<String> {
    if children.is_empty() {
        return None;
    }
    let mut by_state: Vec<(String, usize)> = Vec::new();
    for c in children {
        let kind = format!("{:?}", c.state.kind());
        match by_state.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => by_state.push((kind, 1)),
        }
    }
    let states = by_state
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let tasks: usize = children.iter().map(|c| c.counts.total()).sum();
    Some(format!(
        "Subflow runs: {} ({states}), with {tasks} task run{}",
        children.len(),
        if tasks == 1 { "" } else { "s" }
    ))
}

thread_local! {
    /// Set when the built-in default runner is made (see [`made_default`]).
    static DEFAULT_MADE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called by the default runner's constructor, which flows without
/// `task_runner = ...` use: a subflow that gets it takes its parent's runner
/// instead.
pub(crate) fn note_default_made() {
    DEFAULT_MADE.with(|d| d.set(true));
}

/// Runs `make` (a flow's runner constructor) and says whether it made the
/// built-in default rather than a runner the flow names.
pub(crate) fn made_default<R>(make: impl FnOnce() -> R) -> (R, bool) {
    DEFAULT_MADE.with(|d| d.set(false));
    let made = make();
    (made, DEFAULT_MADE.with(|d| d.replace(false)))
}

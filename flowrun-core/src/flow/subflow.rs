//! Subflows: a flow called inside a flow run (in its body or in one of its
//! task runs) is a child flow run linked to its parent, as in Prefect. It
//! runs on the parent's task runner unless it names its own (`task_runner =
//! ...` or `.with_runner`), and the parent's [`FlowRun`](crate::FlowRun)
//! lists it with its state and task run counts
//! ([`FlowRun::subflows`](crate::FlowRun::subflows)); the parent's own
//! counts stay its own task runs, as Prefect counts them.

use crate::plumbing::lock;
use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde::{Deserialize, Serialize};

use crate::exec::context::with_current;
use crate::flow::outcome::TaskRunCounts;
use crate::flow::registry::FlowShared;
use crate::observe::RunEvent;
use crate::run::record::{RunId, RunRef};
use crate::run::state::{State, StateKind};

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
    /// Children running in another process (a task on a worker called
    /// them), held here until they report their end.
    reported: Mutex<Vec<Arc<FlowShared>>>,
}

impl Links {
    pub(crate) fn set_parent(&self, parent: Parent) {
        let _ = self.parent.set(parent);
    }

    pub(crate) fn parent(&self) -> Option<&Parent> {
        self.parent.get()
    }

    pub(crate) fn add_child(&self, child: SubflowRun) {
        lock(&self.children).push(child);
    }

    /// Notes a child that has started (until it reports its end).
    pub(crate) fn add_running(&self, child: &Arc<FlowShared>, parent: &Parent) {
        lock(&self.running).push((
            Arc::downgrade(child),
            parent.task_run,
            parent.task_run_name.clone(),
        ));
    }

    fn remove_running(&self, id: &str) {
        lock(&self.running).retain(|(c, _, _)| c.upgrade().is_some_and(|c| c.id != id));
    }

    /// Every child, running (state `Running`, the task runs finished so
    /// far) or finished, in the order they started or ended.
    pub(crate) fn all_children(&self) -> Vec<SubflowRun> {
        let mut all = self.children();
        let running = lock(&self.running).clone();
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
        lock(&self.children).clone()
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
    let counts = add_counts(child.counts(), &child.links.children());
    report_counts_to_parent(child, state, counts);
}

/// Records a finished child with `counts` (its task runs and its own
/// children's) in its parent.
fn report_counts_to_parent(child: &FlowShared, state: &State, counts: TaskRunCounts) {
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
        counts,
    });
}

/// What a flow run called by a task in another process (a worker of a
/// cluster) tells the flow process, which links it to the task run that
/// called it: once when it starts, once when it ends. Runners carry it
/// from the worker ([`report_subflows_to`]) to the flow process
/// ([`SerializedJob::report_subflow`](crate::SerializedJob::report_subflow)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubflowReport {
    id: String,
    name: String,
    flow_name: String,
    /// The parameters as JSON, when some observer records them.
    parameters: Option<String>,
    tags: Vec<String>,
    /// Set when it ended.
    end: Option<ReportedEnd>,
    /// Task runs of the child that ended since the last report (at most
    /// [`TASKS_PER_REPORT`]).
    /// (Always written: the local cluster's wire format is not
    /// self-describing.)
    #[serde(default)]
    tasks: Vec<ReportedTask>,
}

/// A task run of a child flow run in another process, as it ended: the
/// flow process replays it to the child's observers (the run history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ReportedTask {
    task: String,
    key: String,
    index: u64,
    custom_name: Option<String>,
    attempts: u32,
    kind: String,
    state_name: Option<String>,
    message: Option<String>,
    /// When it started and ended, in milliseconds since the Unix epoch.
    start_ms: Option<u64>,
    end_ms: u64,
    location: Option<String>,
    cache_key: Option<String>,
}

/// Task runs a report carries at most: a child with many task runs sends
/// them in several reports, none too big for a worker's link.
const TASKS_PER_REPORT: usize = 1_000;

/// Task runs of one child relayed to the flow process at most; the ones
/// past it are only counted (in its end report), so a child with 100,000
/// task runs holds and sends a bounded amount. Failed and crashed runs
/// past it are still relayed, up to as many again, so that the history
/// keeps the failures of a large child.
pub(crate) const MAX_RELAYED_TASK_RUNS: usize = 10_000;

/// How a reported child ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ReportedEnd {
    kind: String,
    name: Option<String>,
    message: Option<String>,
    /// Completed, failed, crashed, cancelled task runs (its subflows' too).
    counts: [usize; 4],
}

impl SubflowReport {
    /// The child flow run's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its final state, once it ended (`None` in the report of its start).
    pub fn state(&self) -> Option<State> {
        let end = self.end.as_ref()?;
        let kind = final_kind(&end.kind);
        let mut state = State::new(kind);
        // The one refining name flow runs end with.
        if end.name.as_deref() == Some("TimedOut") {
            state = state.with_name("TimedOut");
        }
        if let Some(m) = &end.message {
            state = state.with_message(m.as_str());
        }
        Some(state)
    }

    fn started(child: &FlowShared, parameters: Option<String>, tags: Vec<String>) -> SubflowReport {
        SubflowReport {
            id: child.id.clone(),
            name: child.name.clone(),
            flow_name: child.flow_name.clone(),
            parameters,
            tags,
            end: None,
            tasks: Vec::new(),
        }
    }

    fn ended(child: &FlowShared, state: &State) -> SubflowReport {
        let c = add_counts(child.counts(), &child.links.children());
        SubflowReport {
            id: child.id.clone(),
            name: child.name.clone(),
            flow_name: child.flow_name.clone(),
            parameters: None,
            tags: Vec::new(),
            end: Some(ReportedEnd {
                kind: state.kind().as_str().to_owned(),
                name: refining_name(state),
                message: state.message().map(str::to_owned),
                counts: [c.completed, c.failed, c.crashed, c.cancelled],
            }),
            tasks: Vec::new(),
        }
    }

    fn counts(&self) -> TaskRunCounts {
        let [completed, failed, crashed, cancelled] =
            self.end.as_ref().map_or([0; 4], |e| e.counts);
        TaskRunCounts {
            completed,
            failed,
            crashed,
            cancelled,
        }
    }
}

/// Where the flow runs called on this thread without a parent in this
/// process report themselves.
pub type SubflowSink = Arc<dyn Fn(SubflowReport) + Send + Sync>;

thread_local! {
    static SINK: RefCell<Option<SubflowSink>> = const { RefCell::new(None) };
}

/// Makes flow runs that task code on this thread calls, outside any flow
/// run of this process, report their start and end to `sink` (`None`
/// stops it): a worker's executor thread sets it once, and sends each
/// report to the flow process with the task it runs now, which links the
/// child to that task run. Flows called with a parent in this process are
/// not reported.
pub fn report_subflows_to(sink: Option<SubflowSink>) {
    SINK.with(|r| *r.borrow_mut() = sink);
}

/// The sink of this thread, for a flow run that has no parent here.
pub(crate) fn thread_sink() -> Option<SubflowSink> {
    SINK.with(|r| r.borrow().clone())
}

/// Tells the flow process that `child` started.
pub(crate) fn report_start(
    sink: &SubflowSink,
    child: &FlowShared,
    parameters: Option<String>,
    tags: Vec<String>,
) {
    sink(SubflowReport::started(child, parameters, tags));
}

/// Tells the flow process that `child` ended in `state`, with the task
/// runs `tasks` kept (in reports of at most [`TASKS_PER_REPORT`]).
pub(crate) fn report_end(
    sink: &SubflowSink,
    child: &FlowShared,
    state: &State,
    tasks: Option<&TaskRelay>,
) {
    let mut end = SubflowReport::ended(child, state);
    let mut tasks = tasks.map(TaskRelay::take).unwrap_or_default();
    while tasks.len() > TASKS_PER_REPORT {
        let rest = tasks.split_off(TASKS_PER_REPORT);
        sink(SubflowReport {
            end: None,
            parameters: None,
            tasks: std::mem::replace(&mut tasks, rest),
            ..end.clone()
        });
    }
    end.tasks = tasks;
    sink(end);
}

/// On a worker: keeps the task runs of a child flow run (one the flow
/// process records) as they end, up to [`MAX_RELAYED_TASK_RUNS`], for its
/// end report. Only such children have one.
#[derive(Default)]
pub(crate) struct TaskRelay {
    tasks: Mutex<Vec<ReportedTask>>,
    /// Whether a task run was left out (said once, as a warning).
    left_out: std::sync::atomic::AtomicBool,
}

impl TaskRelay {
    fn take(&self) -> Vec<ReportedTask> {
        std::mem::take(&mut *lock(&self.tasks))
    }
}

/// A relayed failure message keeps at most this many bytes, so that a
/// report's size stays bounded.
const MAX_RELAYED_MESSAGE: usize = 4096;

fn clipped(message: &str) -> String {
    if message.len() <= MAX_RELAYED_MESSAGE {
        return message.to_owned();
    }
    let mut end = MAX_RELAYED_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [cut]", &message[..end])
}

fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl crate::observe::RunObserver for TaskRelay {
    fn run_changed(&self, event: &RunEvent) {
        let state = &event.state;
        if !state.is_final() {
            return;
        }
        let mut tasks = lock(&self.tasks);
        let failed = matches!(state.kind(), StateKind::Failed | StateKind::Crashed);
        let room = if failed { 2 } else { 1 } * MAX_RELAYED_TASK_RUNS;
        if tasks.len() >= room {
            if !self
                .left_out
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    "this subflow has more than {MAX_RELAYED_TASK_RUNS} task runs: the flow \
                     process's run history lists the first ones (and failures), its counts \
                     all of them"
                );
            }
            return;
        }
        let run = &event.run;
        let end = state.timestamp();
        tasks.push(ReportedTask {
            task: run.task_name().to_owned(),
            key: run.task_key().to_owned(),
            index: run.index(),
            custom_name: run.custom_name().map(str::to_owned),
            attempts: event.attempts,
            kind: state.kind().as_str().to_owned(),
            state_name: refining_name(state),
            message: state.message().map(clipped),
            start_ms: run.duration().and_then(|d| end.checked_sub(d)).map(millis),
            end_ms: millis(end),
            location: event.location.as_deref().map(str::to_owned),
            cache_key: run.cache_key().map(str::to_owned),
        });
    }
}

/// In the flow process: a child that task run `run` (of `flow`) called in
/// another process started or ended. It is linked as a child called in
/// this process is: listed by the parent, seen by its observers (the run
/// history records it with the parent task run) from its start to its end.
pub(crate) fn record_reported(flow: &Arc<FlowShared>, run: RunRef, report: SubflowReport) {
    let known = {
        let reported = lock(&flow.links.reported);
        reported.iter().find(|c| c.id == report.id).cloned()
    };
    let child = match known {
        Some(c) => c,
        None => start_reported(flow, &run, &report),
    };
    for task in &report.tasks {
        replay_task(&child, task);
    }
    let Some(state) = report.state() else {
        return;
    };
    finish_reported(flow, &child, &state, report.counts());
}

/// The name that refines `state`'s kind (`TimedOut`, `Cached`, ...), if any.
fn refining_name(state: &State) -> Option<String> {
    (state.name() != state.kind().as_str()).then(|| state.name().to_owned())
}

/// The final state kind a report names (`Crashed` for one this build does
/// not know).
fn final_kind(name: &str) -> StateKind {
    [
        StateKind::Completed,
        StateKind::Failed,
        StateKind::Crashed,
        StateKind::Cancelled,
    ]
    .into_iter()
    .find(|k| k.as_str() == name)
    .unwrap_or(StateKind::Crashed)
}

/// Tells `child`'s observers that one of its task runs in another process
/// ran and ended, as they would have seen it run here.
fn replay_task(child: &Arc<FlowShared>, task: &ReportedTask) {
    let at = |ms: u64| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let kind = final_kind(&task.kind);
    let mut state = State::new(kind).at(at(task.end_ms));
    // The refining names task runs end with (names are static).
    if let Some(name) = ["Cached", "TimedOut", "NotReady"]
        .into_iter()
        .find(|n| task.state_name.as_deref() == Some(*n))
    {
        state = state.with_name(name);
    }
    if let Some(m) = &task.message {
        state = state.with_message(m.as_str());
    }
    let location: Option<Arc<str>> = task.location.as_deref().map(Arc::from);
    let run = RunRef(Arc::new(ReplayedRun {
        id: RunId::next(),
        label: crate::run::record::RunLabel {
            task_name: task.task.clone().into(),
            task_key: crate::task::registry::registry()
                .get(&task.key)
                .map_or("", |e| e.key()),
            index: task.index,
            run_name: task.custom_name.clone().map(Box::from),
        },
        attempts: task.attempts,
        duration: task
            .start_ms
            .map(|s| std::time::Duration::from_millis(task.end_ms.saturating_sub(s))),
        location: location.clone(),
        cache_key: task.cache_key.clone().map(Box::from),
        state: state.clone(),
        flow_run_id: child.id.clone(),
    }));
    let event = |state: State, attempts: u32, location: Option<Arc<str>>| RunEvent {
        run: run.clone(),
        state,
        attempts,
        location,
    };
    child.emit(event(
        State::new(StateKind::Pending).at(at(task.start_ms.unwrap_or(task.end_ms))),
        0,
        None,
    ));
    if let Some(start) = task.start_ms {
        child.emit(event(
            State::new(StateKind::Running).at(at(start)),
            task.attempts,
            location.clone(),
        ));
    }
    child.emit(event(state, task.attempts, location));
}

fn start_reported(flow: &Arc<FlowShared>, run: &RunRef, report: &SubflowReport) -> Arc<FlowShared> {
    let mut child = FlowShared::new(
        report.id.clone(),
        report.name.clone(),
        report.flow_name.clone(),
        flow.runner.clone(),
        false,
    );
    // Recorded where its parent records (this thread may have no home).
    child.home = flow.home.clone();
    let child = Arc::new(child);
    let history = flow.history.load(std::sync::atomic::Ordering::Relaxed);
    child
        .history
        .store(history, std::sync::atomic::Ordering::Relaxed);
    let parent = Parent {
        flow: flow.clone(),
        task_run: Some(run.id()),
        task_run_name: Some(run.name()),
    };
    flow.links.add_running(&child, &parent);
    child.links.set_parent(parent);
    lock(&flow.links.reported).push(child.clone());
    let info = crate::runner::FlowRunInfo {
        flow_name: child.flow_name.clone(),
        flow_run_name: child.name.clone(),
        flow_run_id: child.id.clone(),
        parent_flow_run_id: Some(flow.id.clone()),
        flow: crate::flow::scope::FlowHandle(child.clone()),
        parameters: report.parameters.clone(),
        tags: report.tags.clone(),
        history,
    };
    // Observers see the child start inside the task run that called it,
    // as they would on its own thread.
    let _in = crate::exec::context::enter(crate::exec::context::Context {
        flow: Some(flow.clone()),
        task_run: Some(run.clone()),
        ..Default::default()
    });
    for registration in inventory::iter::<crate::observe::ObserverRegistration> {
        if let Some(observer) = (registration.factory)(&info) {
            child.add_observer(observer);
        }
    }
    // A child whose end never comes (its worker died) ends with the task
    // run that called it.
    let (weak_flow, weak_child) = (Arc::downgrade(flow), Arc::downgrade(&child));
    run.0.on_final(Box::new(move || {
        let (Some(flow), Some(child)) = (weak_flow.upgrade(), weak_child.upgrade()) else {
            return;
        };
        let state = State::new(StateKind::Crashed)
            .with_message("the task run that called it ended before it reported its end");
        finish_reported(&flow, &child, &state, TaskRunCounts::default());
    }));
    child
}

fn finish_reported(
    flow: &FlowShared,
    child: &Arc<FlowShared>,
    state: &State,
    counts: TaskRunCounts,
) {
    let mut reported = lock(&flow.links.reported);
    let Some(at) = reported.iter().position(|c| Arc::ptr_eq(c, child)) else {
        return;
    };
    reported.swap_remove(at);
    drop(reported);
    child.close();
    child.emit_flow_finished(state);
    report_counts_to_parent(child, state, counts);
}

/// A task run of a child in another process, as the flow process replays
/// it: ended, with no result here.
struct ReplayedRun {
    id: RunId,
    label: crate::run::record::RunLabel,
    attempts: u32,
    duration: Option<std::time::Duration>,
    location: Option<Arc<str>>,
    cache_key: Option<Box<str>>,
    state: State,
    flow_run_id: String,
}

impl crate::run::record::AnyRun for ReplayedRun {
    fn id(&self) -> RunId {
        self.id
    }
    fn order(&self) -> u64 {
        self.id.get()
    }
    fn label(&self) -> &crate::run::record::RunLabel {
        &self.label
    }
    fn state(&self) -> State {
        self.state.clone()
    }
    fn error(&self) -> Option<crate::run::error::TaskError> {
        None
    }
    fn on_final(&self, callback: crate::run::record::Callback) {
        callback();
    }
    fn block_until_final(&self, _deadline: Option<std::time::Instant>) -> bool {
        true
    }
    fn mark_observed(&self) {}
    fn observed(&self) -> bool {
        true
    }
    fn attempts(&self) -> u32 {
        self.attempts
    }
    fn duration(&self) -> Option<std::time::Duration> {
        self.duration
    }
    fn location(&self) -> Option<Arc<str>> {
        self.location.clone()
    }
    fn encoded_result(&self) -> Result<bytes::Bytes, crate::run::error::TaskError> {
        Err(crate::run::error::TaskError::new(
            crate::run::error::TaskErrorKind::ResultUnavailable,
            "the task run ran in another process; its result stayed there",
        ))
    }
    fn cache_key(&self) -> Option<&str> {
        self.cache_key.as_deref()
    }
    fn fail_dyn(self: Arc<Self>, _error: crate::run::error::TaskError) -> bool {
        false
    }
    fn flow_run_id(&self) -> &str {
        &self.flow_run_id
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::RunObserver;

    fn ended_run(index: u64) -> RunRef {
        RunRef(Arc::new(ReplayedRun {
            id: RunId::next(),
            label: crate::run::record::RunLabel {
                task_name: "double".into(),
                task_key: "",
                index,
                run_name: None,
            },
            attempts: 1,
            duration: Some(std::time::Duration::from_millis(3)),
            location: None,
            cache_key: None,
            state: State::new(StateKind::Completed),
            flow_run_id: String::new(),
        }))
    }

    #[test]
    fn failures_past_the_relay_s_bound_are_still_relayed() {
        let relay = TaskRelay::default();
        let ended = |i: usize, kind: StateKind| RunEvent {
            run: ended_run(i as u64),
            state: State::new(kind),
            attempts: 1,
            location: None,
        };
        for i in 0..MAX_RELAYED_TASK_RUNS {
            relay.run_changed(&ended(i, StateKind::Completed));
        }
        relay.run_changed(&ended(MAX_RELAYED_TASK_RUNS, StateKind::Completed));
        relay.run_changed(&ended(MAX_RELAYED_TASK_RUNS + 1, StateKind::Failed));
        let kept = relay.take();
        assert_eq!(kept.len(), MAX_RELAYED_TASK_RUNS + 1);
        let last = kept.last().unwrap();
        assert_eq!(
            (last.index, last.kind.as_str()),
            (MAX_RELAYED_TASK_RUNS as u64 + 1, "Failed")
        );
    }

    #[test]
    fn a_child_relays_a_bounded_number_of_task_runs_in_bounded_reports() {
        let relay = TaskRelay::default();
        let extra = 5;
        for i in 0..(MAX_RELAYED_TASK_RUNS + extra) as u64 {
            let run = ended_run(i);
            // Only final states are kept.
            relay.run_changed(&RunEvent {
                run: run.clone(),
                state: State::new(StateKind::Running),
                attempts: 1,
                location: None,
            });
            relay.run_changed(&RunEvent {
                run,
                state: State::new(StateKind::Completed),
                attempts: 1,
                location: None,
            });
        }
        let sent = Arc::new(Mutex::new(Vec::<SubflowReport>::new()));
        let sink: SubflowSink = {
            let sent = sent.clone();
            Arc::new(move |r| sent.lock().unwrap().push(r))
        };
        let child = FlowShared::detached();
        report_end(
            &sink,
            &child,
            &State::new(StateKind::Completed),
            Some(&relay),
        );
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), MAX_RELAYED_TASK_RUNS / TASKS_PER_REPORT);
        assert!(sent.iter().all(|r| r.tasks.len() <= TASKS_PER_REPORT));
        let relayed: usize = sent.iter().map(|r| r.tasks.len()).sum();
        assert_eq!(relayed, MAX_RELAYED_TASK_RUNS);
        // Batches first, then the end, so the flow process has every task
        // run before the child ends there.
        let (last, batches) = sent.split_last().unwrap();
        assert!(batches.iter().all(|r| r.end.is_none()));
        assert!(last.state().is_some_and(|s| s.is_completed()));
        let first = &sent[0].tasks[0];
        assert_eq!((first.task.as_str(), first.index), ("double", 0));
        assert_eq!(
            first.start_ms.map(|s| first.end_ms - s),
            Some(3),
            "its duration travels"
        );
        // Nothing is held once sent.
        assert!(relay.take().is_empty());
    }

    #[test]
    fn a_relayed_failure_message_is_clipped() {
        let relay = TaskRelay::default();
        let long = "é".repeat(MAX_RELAYED_MESSAGE);
        relay.run_changed(&RunEvent {
            run: ended_run(0),
            state: State::new(StateKind::Failed).with_message(long.as_str()),
            attempts: 1,
            location: None,
        });
        let message = relay.take()[0].message.clone().unwrap();
        assert!(message.len() <= MAX_RELAYED_MESSAGE + " [cut]".len());
        assert!(message.starts_with("éé") && message.ends_with(" [cut]"));
    }
}

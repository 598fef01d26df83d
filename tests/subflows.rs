//! Subflows: a flow called inside a flow run (its body or a task) is a child
//! flow run linked to its parent, runs on the parent's runner unless it
//! names its own, and shows in the parent's `FlowRun`; its failure reaches
//! the parent as an `Err` the parent handles or passes on.

// The subflows tasks call, shared with flowrun-dask's scenarios, which run
// them on real Dask too.
#[path = "../flowrun-dask/tests/called_subflows/mod.rs"]
mod called_subflows;

use called_subflows::{calls_child, double, failing_child, subflow, tasks_call_flows};
use flowrun::history::temp_home;
use flowrun::{flow, task, FlowRun, StateKind, ThreadPoolTaskRunner};
use flowrun_dask::{ClusterKwargs, DaskTaskRunner};

#[task]
fn pid() -> u32 {
    std::process::id()
}

/// A child with no runner of its own.
#[flow]
fn child(x: u64) -> (u64, Option<String>) {
    let a = double.submit(x);
    let b = double.submit(x + 1);
    (
        a.result().unwrap() + b.result().unwrap(),
        flowrun::current_flow_run_id(),
    )
}

/// Where a child's task ran: the child runs on its parent's runner.
#[flow]
fn where_child() -> u32 {
    pid.submit().result().unwrap()
}

/// A child that names its own runner keeps it.
#[flow(task_runner = ThreadPoolTaskRunner::default())]
fn own_runner_child() -> u32 {
    pid.submit().result().unwrap()
}

/// What a parent saw of its children.
struct Seen {
    parent_id: String,
    child_run: FlowRun<(u64, Option<String>)>,
    from_task: u64,
    failed: String,
}

/// A parent of a child it calls, one a task calls and one that fails.
#[flow]
fn parent_of_three() -> Seen {
    let child_run = child.return_state(1);
    let from_task = calls_child.submit(10).result().unwrap();
    let failed = failing_child().unwrap_err().to_string();
    Seen {
        parent_id: flowrun::current_flow_run_id().unwrap(),
        child_run,
        from_task,
        failed,
    }
}

/// `task_children`: whether the child a task called is listed (it is on
/// every runner; a task on a worker process runs it there as a nested flow,
/// which the flow process links to the task's run).
fn check(parent: FlowRun<Seen>, task_children: bool) {
    assert!(parent.state().is_completed(), "{:?}", parent.state());
    let seen = parent.result().unwrap();
    assert_eq!(seen.parent_id, parent.id());
    // The child knows its parent.
    let (value, child_id) = seen.child_run.result().unwrap();
    assert_eq!(*value, 2 + 4);
    assert_eq!(child_id.as_deref(), Some(seen.child_run.id()));
    assert_eq!(seen.child_run.parent_flow_run_id(), Some(parent.id()));
    assert_eq!(seen.from_task, 20 + 22);
    assert!(seen.failed.contains("the child gave up"), "{}", seen.failed);
    // The parent lists its children, their states and counts.
    let subflows = parent.subflows();
    assert_eq!(
        subflows.len(),
        2 + usize::from(task_children),
        "{subflows:?}"
    );
    let first = subflows
        .iter()
        .find(|s| s.id == seen.child_run.id())
        .expect("the body's child is listed");
    assert_eq!(first.flow_name, "child");
    assert_eq!(first.state.kind(), StateKind::Completed);
    assert_eq!(first.counts.completed, 2);
    assert!(first.parent_task_run.is_none());
    assert!(first.parent_task_run_name.is_none());
    if task_children {
        let by_task = subflows
            .iter()
            .find(|s| s.parent_task_run.is_some())
            .expect("the task's child is listed with its task run");
        assert_eq!(by_task.counts.completed, 2);
        assert_eq!(
            by_task.parent_task_run_name.as_deref(),
            Some("calls_child-0")
        );
    }
    subflow(subflows, "failing-child", StateKind::Failed);
    // The parent's own task runs: the one task that called a child.
    assert_eq!(parent.task_run_counts().total(), 1);
    let from_children = if task_children { 2 + 2 + 1 } else { 2 + 1 };
    assert_eq!(
        parent.task_run_counts_with_subflows().completed,
        1 + from_children
    );
}

#[test]
fn subflows_are_linked_to_their_parent_on_threads() {
    check(parent_of_three.return_state(), true);
}

#[test]
fn subflows_are_linked_to_their_parent_on_a_local_cluster() {
    let cluster = DaskTaskRunner::new()
        .cluster_kwargs(ClusterKwargs::new().n_workers(2).threads_per_worker(2));
    check(parent_of_three.with_runner(cluster).return_state(), true);
}

#[test]
fn a_subflow_runs_on_its_parents_cluster_unless_it_names_its_own_runner() {
    #[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(1).threads_per_worker(1)))]
    fn parent() -> (u32, u32, u32) {
        let on_cluster = pid.submit().result().unwrap();
        (
            on_cluster,
            where_child().unwrap(),
            own_runner_child().unwrap(),
        )
    }
    let (worker, inherited, own) = parent().unwrap();
    let me = std::process::id();
    assert_ne!(worker, me, "the parent's task ran on a worker");
    assert_eq!(
        inherited, worker,
        "the child's task ran on the parent's worker"
    );
    assert_eq!(own, me, "a child with its own thread runner runs here");
}

#[test]
fn a_failed_subflow_fails_its_parent_when_passed_on() {
    #[flow]
    fn parent() -> Result<u64, flowrun::FlowError> {
        failing_child()
    }
    let run = parent.return_state();
    assert_eq!(run.state().kind(), StateKind::Failed);
    let message = run.result().unwrap_err().to_string();
    assert!(message.contains("the child gave up"), "{message}");
    assert_eq!(run.subflows()[0].state.kind(), StateKind::Failed);
}

/// Every flow run start the observers saw: flow name, run id, parent id.
static STARTED: std::sync::Mutex<Vec<(String, String, Option<String>)>> =
    std::sync::Mutex::new(Vec::new());

fn record_start(
    info: &flowrun::runner::FlowRunInfo,
) -> Option<std::sync::Arc<dyn flowrun::runner::observe::RunObserver>> {
    STARTED.lock().unwrap_or_else(|p| p.into_inner()).push((
        info.flow_name.clone(),
        info.flow_run_id.clone(),
        info.parent_flow_run_id.clone(),
    ));
    None
}

flowrun::__private::inventory::submit! {
    flowrun::runner::observe::ObserverRegistration { factory: record_start }
}

#[flow]
fn observed_child() -> u64 {
    double(21)
}

#[test]
fn observers_see_a_subflows_parent_when_it_starts() {
    #[flow]
    fn observed_parent() -> String {
        observed_child().unwrap();
        flowrun::current_flow_run_id().unwrap()
    }
    let parent_id = observed_parent().unwrap();
    let started = STARTED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let parent = started
        .iter()
        .find(|(_, id, _)| *id == parent_id)
        .expect("the parent's start was seen");
    assert_eq!(parent.2, None, "the parent has no parent");
    let seen = started
        .iter()
        .find(|(name, _, _)| name == "observed-child")
        .expect("the child's start was seen");
    assert_eq!(seen.2.as_deref(), Some(parent_id.as_str()));
}

#[test]
fn subflows_called_by_tasks_are_recorded_with_their_task_run_on_threads() {
    let home = temp_home();
    called_subflows::check(&home, tasks_call_flows.return_state());
}

#[test]
fn subflows_called_by_tasks_on_workers_are_recorded_with_their_task_run() {
    let home = temp_home();
    let on_workers = DaskTaskRunner::new()
        .cluster_kwargs(ClusterKwargs::new().n_workers(1).threads_per_worker(2));
    called_subflows::check(
        &home,
        tasks_call_flows.with_runner(on_workers).return_state(),
    );
}

/// Dies with its worker process after its first task run.
#[flow]
fn dies_with_its_worker() -> u64 {
    double(1);
    // Gives the worker time to send the start of this flow run.
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::process::exit(3)
}

#[task]
fn calls_a_dying_flow() -> u64 {
    dies_with_its_worker().unwrap()
}

#[test]
fn a_subflow_whose_worker_dies_ends_crashed_with_its_task_run() {
    #[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(1).threads_per_worker(1)))]
    fn parent_of_a_dying_flow() -> StateKind {
        let run = calls_a_dying_flow.submit();
        run.wait();
        run.state().kind()
    }
    let run = parent_of_a_dying_flow.return_state();
    assert_eq!(*run.result().unwrap(), StateKind::Crashed);
    let subflows = run.subflows();
    assert!(!subflows.is_empty(), "the child that started is listed");
    for s in subflows {
        assert_eq!(s.flow_name, "dies-with-its-worker");
        assert_eq!(s.state.kind(), StateKind::Crashed, "{s:?}");
        assert_eq!(
            s.parent_task_run_name.as_deref(),
            Some("calls_a_dying_flow-0")
        );
    }
}

#[task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    ms
}

#[flow(timeout = 0.2)]
fn too_slow_child() -> u64 {
    let slow = sleep_ms.submit(3_000);
    slow.wait();
    0
}

#[task]
fn calls_too_slow_child() -> String {
    too_slow_child().unwrap_err().to_string()
}

#[test]
fn a_subflow_timing_out_on_a_worker_shows_timed_out_in_its_parent() {
    #[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(1).threads_per_worker(1)))]
    fn parent_of_a_slow_flow() -> String {
        calls_too_slow_child.submit().result().unwrap()
    }
    let run = parent_of_a_slow_flow.return_state();
    let message = run.result().unwrap();
    assert!(message.contains("timed out after"), "{message}");
    let subflows = run.subflows();
    assert_eq!(subflows.len(), 1, "{subflows:?}");
    let slow = &subflows[0];
    assert_eq!(slow.state.kind(), StateKind::Failed);
    assert_eq!(slow.state.name(), "TimedOut");
    assert!(
        slow.state
            .message()
            .is_some_and(|m| m.contains("timed out after")),
        "{slow:?}"
    );
    assert_eq!(slow.counts.cancelled, 1);
}

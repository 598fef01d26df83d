//! Subflows that tasks call, and what the parent and the run history must
//! show of them: a task calls a child that completes, another a child that
//! fails. flowrun-dask's scenarios run this on threads, a local cluster
//! and real Dask (`mod called_subflows;`); the workspace's subflow tests
//! take the same flows for their own cases (by `#[path]`).
#![allow(dead_code)]

use flowrun::history::{RunsQuery, Store, TempHome};
use flowrun::{flow, task, FlowRun, StateKind, SubflowRun};

#[task]
pub(crate) fn double(x: u64) -> u64 {
    x * 2
}

#[task(retries = 1, retry_delay = 0)]
pub(crate) fn refuse(x: u64) -> Result<u64, String> {
    Err(format!("refused {x}"))
}

/// A child that fails, with a completed task run and a failed one (on both
/// attempts), which the run history shows wherever the child ran.
#[flow]
pub(crate) fn failing_child() -> Result<u64, String> {
    double(1);
    let _ = refuse.submit(7).result();
    Err("the child gave up".to_owned())
}

/// The child a task calls: two runs of `double`.
#[flow]
pub(crate) fn task_child(x: u64) -> u64 {
    double.submit(x).result().unwrap() + double.submit(x + 1).result().unwrap()
}

#[task]
pub(crate) fn calls_child(x: u64) -> u64 {
    task_child(x).unwrap()
}

#[task]
pub(crate) fn calls_failing_child() -> String {
    failing_child().unwrap_err().to_string()
}

/// A flow whose tasks each call a subflow: one completes, one fails. It
/// returns the failed child's error and its own run id.
#[flow]
pub(crate) fn tasks_call_flows() -> (String, String) {
    let ok = calls_child.submit(3);
    let failed = calls_failing_child.submit();
    assert_eq!(ok.result().unwrap(), 6 + 8);
    (
        failed.result().unwrap(),
        flowrun::current_flow_run_id().unwrap(),
    )
}

/// The subflow of flow `flow_name` that a parent lists, which must have
/// ended in `kind`.
pub(crate) fn subflow<'a>(
    subflows: &'a [SubflowRun],
    flow_name: &str,
    kind: StateKind,
) -> &'a SubflowRun {
    let run = subflows
        .iter()
        .find(|s| s.flow_name == flow_name)
        .unwrap_or_else(|| panic!("the subflow {flow_name} is listed: {subflows:?}"));
    assert_eq!(run.state.kind(), kind, "{run:?}");
    run
}

/// Asserts that `message`, the message of `of`, says `what`.
fn says(message: Option<&str>, what: &str, of: &impl std::fmt::Debug) {
    assert!(
        message.is_some_and(|m| m.contains(what)),
        "the message does not say {what:?}: {of:?}"
    );
}

/// A run of [`tasks_call_flows`] lists the subflows its tasks called with
/// their task runs and states, and the run history in `home` records each
/// with the task run that called it and its own task runs, as `flowrun
/// show` prints them.
pub(crate) fn check(home: &TempHome, run: FlowRun<(String, String)>) {
    assert!(run.state().is_completed(), "{:?}", run.state());
    let (message, parent_id) = run.result().unwrap().clone();
    assert!(message.contains("the child gave up"), "{message}");
    assert_eq!(parent_id, run.id());
    let subflows = run.subflows();
    assert_eq!(subflows.len(), 2, "{subflows:?}");
    let called = subflow(subflows, "task-child", StateKind::Completed);
    assert_eq!(called.counts.completed, 2);
    assert_eq!(
        called.parent_task_run_name.as_deref(),
        Some("calls_child-0")
    );
    let failed = subflow(subflows, "failing-child", StateKind::Failed);
    says(failed.state.message(), "the child gave up", failed);
    assert_eq!(
        failed.parent_task_run_name.as_deref(),
        Some("calls_failing_child-0")
    );
    assert_eq!(failed.counts.completed, 1);
    assert_eq!(run.task_run_counts_with_subflows().completed, 2 + 2 + 1);

    flowrun::history::flush(home.path());
    let store = Store::open(home.path()).expect("the history opens");
    let rows = store.runs(&RunsQuery::default()).unwrap();
    let parent = rows.iter().find(|r| r.flow == "tasks-call-flows").unwrap();
    let detail = store.detail(parent, 10).unwrap();
    let task_id = |name: &str| {
        detail
            .task_runs
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name} is recorded: {:?}", detail.task_runs))
            .id
            .clone()
    };
    let child_row = store.find_run(&called.name).expect("the child is recorded");
    assert_eq!(child_row.flow, "task-child");
    assert_eq!(child_row.name, called.name);
    assert_eq!(child_row.state, "Completed");
    assert_eq!(
        child_row.parent_flow_run.as_deref(),
        Some(parent.id.as_str())
    );
    assert_eq!(
        child_row.parent_task_run.as_deref(),
        Some(task_id("calls_child-0").as_str())
    );
    assert_eq!(child_row.parameters.as_deref(), Some("{\"x\":3}"));
    // `flowrun show CHILD` lists the child's own task runs, wherever it ran.
    assert_eq!(child_row.tasks.completed, 2, "{child_row:?}");
    let child_detail = store.detail(&child_row, 10).unwrap();
    let mut child_tasks: Vec<(&str, &str, i64)> = child_detail
        .task_runs
        .iter()
        .map(|t| (t.name.as_str(), t.state.as_str(), t.attempts))
        .collect();
    child_tasks.sort();
    assert_eq!(
        child_tasks,
        [("double-0", "Completed", 1), ("double-1", "Completed", 1)]
    );
    assert!(child_detail
        .task_runs
        .iter()
        .all(|t| t.task == "double" && t.duration_ms().is_some_and(|d| d >= 0)));
    let failed_row = store
        .find_run(&failed.name)
        .expect("the failed child is recorded");
    assert_eq!(failed_row.state, "Failed");
    says(
        failed_row.message.as_deref(),
        "the child gave up",
        &failed_row,
    );
    assert_eq!(
        failed_row.parent_task_run.as_deref(),
        Some(task_id("calls_failing_child-0").as_str())
    );
    assert_eq!(
        (failed_row.tasks.completed, failed_row.tasks.failed),
        (1, 1),
        "{failed_row:?}"
    );
    let failed_detail = store.detail(&failed_row, 10).unwrap();
    let refused = failed_detail
        .task_runs
        .iter()
        .find(|t| t.name == "refuse-0")
        .unwrap_or_else(|| panic!("refuse-0 is recorded: {:?}", failed_detail.task_runs));
    assert_eq!(refused.state, "Failed");
    assert_eq!(refused.attempts, 2);
    says(refused.message.as_deref(), "refused 7", refused);
    assert!(failed_detail.failures.iter().any(|t| t.name == "refuse-0"));
    assert_eq!(detail.subflows.len(), 2, "{:?}", detail.subflows);
}

//! Prefect's flow and task API on a real Dask cluster (a scheduler and
//! stock Python workers from PyPI, through `flowrun-dask/tests/support`):
//! subflows, futures inside collections as Dask dependencies, and where
//! task hooks run.
//!
//! As in `dask_real.rs`, the Dask workers run this test binary in task
//! mode, as the current test; every test begins with [`begin`], which
//! diverts such a process before the test starts a cluster of its own. A
//! missing Dask install fails the tests; nothing is skipped.

mod common;
mod support;
mod tasks;

use tasks::{first_and_last, square, total};

use flowrun::{flow, task, RunRef, State, StateKind, TaskFuture};
use flowrun_dask::DaskTaskRunner;
use support::{begin, runner, Cluster, WorkerSpec};

// ---------------------------------------------------------------------------
// Subflows: a child called in the parent's body runs on the parent's Dask
// cluster and is listed by the parent; a child called by a task runs
// nested in that task's process.

#[task]
fn pid_times(x: u64) -> (u32, u64) {
    (std::process::id(), x * 10)
}

#[flow]
fn child(x: u64) -> (u32, u64) {
    let a = pid_times.submit(x);
    let b = pid_times.submit(x + 1);
    let (pa, va) = a.result().unwrap();
    let (_, vb) = b.result().unwrap();
    (pa, va + vb)
}

#[flow]
fn failing_child() -> Result<u64, String> {
    Err("the child gave up".to_owned())
}

#[task]
fn calls_child(x: u64) -> (u32, u32, u64) {
    let (child_task_pid, value) = child(x).expect("the nested child flow");
    (std::process::id(), child_task_pid, value)
}

#[flow(task_runner = DaskTaskRunner::new())]
fn parent() -> ((u32, u64), (u32, u32, u64), String) {
    let from_body = child(1).unwrap();
    let from_task = calls_child.submit(5).result().unwrap();
    let failed = failing_child().unwrap_err().to_string();
    (from_body, from_task, failed)
}

#[test]
fn subflows_run_on_the_parents_real_dask_cluster_and_are_listed_by_the_parent() {
    let _t = begin("subflows_run_on_the_parents_real_dask_cluster_and_are_listed_by_the_parent");
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    let run = parent.with_runner(runner(&cluster)).return_state();
    assert!(
        run.state().is_completed(),
        "{:?}\n{}",
        run.state(),
        cluster.logs()
    );
    let ((body_child_pid, body_value), (task_pid, nested_pid, task_value), failed) =
        run.result().unwrap().clone();
    let me = std::process::id();
    assert_eq!(body_value, 10 + 20);
    assert_ne!(
        body_child_pid, me,
        "the body's child ran its tasks on the parent's Dask cluster"
    );
    assert_eq!(task_value, 50 + 60);
    assert_ne!(task_pid, me, "the calling task ran on a Dask worker");
    assert_eq!(
        nested_pid, task_pid,
        "a task's child flow runs nested in the task's process, not as a new worker"
    );
    assert!(failed.contains("the child gave up"), "{failed}");
    let subflows = run.subflows();
    let body_child = subflows
        .iter()
        .find(|s| s.flow_name == "child")
        .unwrap_or_else(|| panic!("the body's child is listed: {subflows:?}"));
    assert_eq!(body_child.state.kind(), StateKind::Completed);
    assert_eq!(body_child.counts.completed, 2);
    assert!(body_child.parent_task_run.is_none());
    let failed_child = subflows
        .iter()
        .find(|s| s.flow_name == "failing-child")
        .expect("the failed child is listed");
    assert_eq!(failed_child.state.kind(), StateKind::Failed);
    assert_eq!(run.task_run_counts().total(), 1, "the parent's own task");
}

// ---------------------------------------------------------------------------
// Futures inside collections: each is a Dask dependency of the reducer,
// which reads the upstream values on its worker.

#[flow(task_runner = DaskTaskRunner::new())]
fn fan_in(address: String) -> (i64, (i64, i64), Vec<i64>, Vec<String>, String) {
    let squares: Vec<TaskFuture<i64>> = (1..=4).map(|x| square.submit(x)).collect();
    let summed = total.submit(&squares);
    let array = first_and_last.submit([square.submit(2), square.submit(3), square.submit(4)]);
    let groups = vec![
        vec![square.submit(5), square.submit(6)],
        vec![square.submit(7)],
    ];
    summed.wait();
    // The keys are still held by the flow's client (no result was read):
    // ask the scheduler what the reducer depended on.
    let id = flowrun::current_flow_run_id().unwrap();
    let key = |f: &TaskFuture<i64>| format!("{}-{}-1", f.name(), &id[..8]);
    let upstream_keys: Vec<String> = squares.iter().map(key).collect();
    let deps = support::on_scheduler(
        &address,
        &format!(
            // Unquoted keys when the reducer is unknown, so none matches.
            "(sorted(str(d.key) for d in s.tasks[{0:?}].dependencies) if {0:?} in s.tasks \
             else 'unknown reducer; known: ' + ' '.join(str(k) for k in s.tasks))",
            key(&summed)
        ),
    );
    let mapped = flowrun::results(total.map(groups).unwrap()).unwrap();
    let value = summed.result().unwrap();
    (value, array.result().unwrap(), mapped, upstream_keys, deps)
}

#[test]
fn futures_inside_collections_are_dask_dependencies_of_the_reducer() {
    let _t = begin("futures_inside_collections_are_dask_dependencies_of_the_reducer");
    let cluster = Cluster::start(&[WorkerSpec::threads(2), WorkerSpec::threads(2)]);
    let (value, array, mapped, upstream_keys, deps) = cluster.or_logs(
        fan_in
            .with_runner(runner(&cluster))
            .call(cluster.address.clone()),
    );
    assert_eq!(value, 1 + 4 + 9 + 16);
    assert_eq!(array, (4, 16));
    assert_eq!(mapped, [25 + 36, 49]);
    for key in &upstream_keys {
        assert!(
            deps.contains(&format!("'{key}'")),
            "{key} is not a Dask dependency of the reducer: {deps}"
        );
    }
}

// ---------------------------------------------------------------------------
// Hooks of a task's attribute run in the task-mode process that runs the
// task; failures decided by the flow call on_failure in the flow process.

/// Where hooks write what they saw (inherited by the Dask workers and their
/// task-mode processes from this process).
const HOOK_LOG_ENV: &str = "FLOWRUN_TEST_HOOK_LOG";

/// A hook that notes `kind` in the log named by [`HOOK_LOG_ENV`], if set.
fn noting(kind: &'static str) -> impl Fn(&RunRef, &State) + Send + Sync + 'static {
    move |run, state| {
        if let Some(path) = std::env::var_os(HOOK_LOG_ENV) {
            common::note_hook(path, kind, run, state);
        }
    }
}

#[task(
    on_completion = [noting("completed")],
    on_failure = [noting("failed")],
    on_running = [noting("running")]
)]
fn hooked(x: u32) -> Result<(u32, u32), String> {
    if x == 0 {
        Err("zero".into())
    } else {
        Ok((std::process::id(), x))
    }
}

#[task]
fn no_number() -> Result<u32, String> {
    Err("no number today".into())
}

#[flow(task_runner = DaskTaskRunner::new())]
fn with_hooks() -> (u32, bool, bool) {
    let ok = hooked.submit(1);
    let bad = hooked.submit(0);
    // Its upstream fails: it never reaches Dask.
    let never = hooked.submit(no_number.submit());
    never.wait();
    let (pid, _) = ok.result().unwrap();
    (pid, bad.result().is_err(), never.result().is_err())
}

#[test]
fn task_hooks_run_in_the_task_mode_process_that_runs_the_task() {
    let _t = begin("task_hooks_run_in_the_task_mode_process_that_runs_the_task");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    // Set before the cluster starts, so its workers inherit it.
    std::env::set_var(HOOK_LOG_ENV, &log);
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let (task_pid, bad_failed, never_failed) =
        cluster.or_logs(with_hooks.with_runner(runner(&cluster)).call());
    std::env::remove_var(HOOK_LOG_ENV);
    assert!(bad_failed);
    assert!(never_failed);
    let me = std::process::id();
    assert_ne!(task_pid, me);
    assert!(log.exists(), "no hook wrote to {}", log.display());
    let mut seen: Vec<String> = common::hook_notes(&log)
        .into_iter()
        .map(|(what, pid)| {
            let place = if pid == me { "flow" } else { "task process" };
            format!("{what} in {place}")
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "completed hooked-0 Completed in task process",
            "failed hooked-1 Failed in task process",
            "failed hooked-2 Failed in flow",
            "running hooked-0 Running in task process",
            "running hooked-1 Running in task process",
        ],
        "{}",
        cluster.logs()
    );
}

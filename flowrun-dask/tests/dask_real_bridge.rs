//! The bridge to a real Dask cluster (a scheduler and stock Python workers,
//! as in `dask_real.rs`) where flow runs meet on one scheduler: the Dask
//! keys of subflows, and cancelling runs Dask already holds.
//!
//! The Dask workers run this test binary in task mode, as the current
//! test: every test begins with [`begin`].

mod common;
mod support;

use std::time::Duration;

use flowrun::{flow, task, StateKind};
use support::{begin, runner, Cluster, WorkerSpec};

// ---------------------------------------------------------------------------
// Subflows share their parent's cluster, and task run names restart in each
// flow run: the parent's `triple-0`, its child's and its grandchild's are
// three runs, each with its own result.

#[task]
fn triple(x: u64) -> u64 {
    x * 3
}

#[flow]
fn grandchild(x: u64) -> u64 {
    triple.submit(x).result().unwrap()
}

#[flow]
fn middle(x: u64) -> (u64, u64) {
    // Held while the grandchild runs its own `triple-0`.
    let own = triple.submit(x);
    let below = grandchild(x * 10).unwrap();
    (own.result().unwrap(), below)
}

#[flow]
fn top() -> (u64, (u64, u64), (u64, u64)) {
    let own = triple.submit(1);
    own.wait();
    let first = middle(2).unwrap();
    let second = middle(3).unwrap();
    (own.result().unwrap(), first, second)
}

#[test]
fn subflows_on_real_dask_keep_their_own_results() {
    let _t = begin("subflows_on_real_dask_keep_their_own_results");
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    let got = top
        .with_runner(runner(&cluster))
        .call()
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_eq!(got, (3, (6, 60), (9, 90)));
}

// ---------------------------------------------------------------------------
// Cancelling a run Dask holds (it waits there for its upstream): it never
// runs, ends Cancelled, and the runs after it fail as their upstream's, as
// on the thread runner.

#[task]
fn pause(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x
}

#[task]
fn mark(up: u64, marker: String) -> u64 {
    common::append(&marker, "ran");
    up + 1
}

/// What a user sees of each run: its state and, for a failure, its kind.
fn outcome(run: &flowrun::TaskFuture<u64>) -> String {
    run.wait();
    match run.state().kind() {
        StateKind::Completed => "Completed".into(),
        kind => format!(
            "{kind:?}: {:?}",
            run.result().err().map(|e| e.kind().clone())
        ),
    }
}

#[flow]
fn cancel_chain(dir: String) -> (bool, bool, Vec<String>, bool) {
    let blocker = pause.submit(2, 1_500);
    let waiting = mark.submit(&blocker, format!("{dir}/waiting"));
    let next = mark.submit(&waiting, format!("{dir}/next"));
    let last = mark.submit(&next, format!("{dir}/last"));
    // Long enough for the runs to reach the scheduler, well before the
    // upstream is done.
    std::thread::sleep(Duration::from_millis(300));
    let first = waiting.cancel();
    let second = waiting.cancel();
    let outcomes = vec![
        outcome(&blocker),
        outcome(&waiting),
        outcome(&next),
        outcome(&last),
    ];
    // A run that finished cannot be cancelled.
    let finished = blocker.cancel();
    // Time for Dask to run what it still held once the upstream is done
    // (the flow's end would take it off the scheduler).
    std::thread::sleep(Duration::from_secs(2));
    (first, second, outcomes, finished)
}

#[test]
fn cancelling_a_run_dask_holds_cancels_it_and_fails_its_dependents() {
    let _t = begin("cancelling_a_run_dask_holds_cancels_it_and_fails_its_dependents");
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    let dir = common::scratch("dask-cancel")
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&dir).unwrap();
    let on_dask = cancel_chain
        .with_runner(runner(&cluster))
        .call(dir.clone())
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let ran_on_dask = common::lines(&format!("{dir}/waiting")).len()
        + common::lines(&format!("{dir}/next")).len()
        + common::lines(&format!("{dir}/last")).len();
    let on_threads = cancel_chain
        .with_runner(flowrun::ThreadPoolTaskRunner::new(4))
        .call(dir.clone())
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(ran_on_dask, 0, "a cancelled run or a dependent ran on Dask");
    assert_eq!(
        on_dask.2[1], "Cancelled: Some(Cancelled)",
        "{:?}",
        on_dask.2
    );
    assert!(
        on_dask.2[2].contains("UpstreamFailed") && on_dask.2[2].contains("mark-0"),
        "{:?}",
        on_dask.2
    );
    assert_eq!(on_dask, on_threads);
    assert_eq!((on_dask.0, on_dask.1, on_dask.3), (true, false, false));
}

// ---------------------------------------------------------------------------
// A flow that a task calls in a one-task process (`isolate_tasks`) is the
// child of that task's run in the flow process: listed by the parent with
// its task run and final state, a failing one too.

#[flow]
fn called_by_a_task(x: u64) -> u64 {
    triple.submit(x).result().unwrap()
}

#[flow]
fn gives_up(x: u64) -> Result<u64, String> {
    triple(x);
    Err(format!("gave up at {x}"))
}

#[task]
fn calls_flows(x: u64) -> Result<u64, String> {
    let ok = called_by_a_task(x).map_err(|e| e.to_string())?;
    let failed = gives_up(x).unwrap_err().to_string();
    assert!(failed.contains("gave up at"), "{failed}");
    Ok(ok)
}

#[flow]
fn tasks_call_flows_in_their_own_process() -> u64 {
    calls_flows.submit(4).result().unwrap()
}

#[test]
fn a_flow_called_by_a_task_in_its_own_process_is_linked_to_that_task_run() {
    let _t = begin("a_flow_called_by_a_task_in_its_own_process_is_linked_to_that_task_run");
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let home = flowrun::history::temp_home();
    let run = tasks_call_flows_in_their_own_process
        .with_runner(runner(&cluster).isolate_tasks(true))
        .return_state();
    assert!(
        run.state().is_completed(),
        "{:?}\n{}",
        run.state(),
        cluster.logs()
    );
    assert_eq!(*run.result().unwrap(), 12);
    let children = common::subflow_rows(run.subflows());
    let by_task = Some("calls_flows-0".to_owned());
    assert_eq!(
        children,
        [
            (
                "called-by-a-task".to_owned(),
                StateKind::Completed,
                by_task.clone(),
                1
            ),
            ("gives-up".to_owned(), StateKind::Failed, by_task, 1),
        ]
    );
    let failed = &run.subflows()[1];
    assert_eq!(failed.state.message(), Some("gave up at 4"));
    assert!(failed.parent_task_run.is_some());
    // The run history of the flow process lists each child's own task
    // runs (`flowrun show CHILD`).
    flowrun::history::flush(home.path());
    let store = flowrun::history::Store::open(home.path()).unwrap();
    for child in run.subflows() {
        let row = store.find_run(&child.name).expect("the child is recorded");
        let detail = store.detail(&row, 10).unwrap();
        let tasks: Vec<_> = detail
            .task_runs
            .iter()
            .map(|t| (t.name.as_str(), t.state.as_str(), t.attempts))
            .collect();
        assert_eq!(tasks, [("triple-0", "Completed", 1)], "{row:?}");
        assert_eq!(row.tasks.completed, 1);
    }
}

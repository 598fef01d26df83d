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

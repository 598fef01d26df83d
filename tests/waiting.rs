//! Waiting with a timeout: `wait_timeout(&futures, timeout)` splits the
//! futures into done and not done, and `as_completed_timeout` ends at its
//! timeout, as Prefect's `wait` and `as_completed` do. On the thread runner
//! and on the local cluster.

use std::time::{Duration, Instant};

use flowrun::{as_completed_timeout, flow, task, wait_timeout, StateKind};
use flowrun_dask::{ClusterKwargs, DaskTaskRunner};

fn cluster() -> DaskTaskRunner {
    DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(1).threads_per_worker(2))
}

/// Sleeps `ms` milliseconds and returns it.
#[task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// One quick run and one that outlasts the timeout by far: the split and
/// how long the wait took.
fn split() -> (Vec<u64>, Vec<String>, Duration) {
    let quick = nap.submit(0);
    quick.wait();
    let slow = nap.submit(4_000);
    let began = Instant::now();
    let sets = wait_timeout(&[quick, slow], Duration::from_millis(300));
    let waited = began.elapsed();
    let done = sets.done.iter().map(|f| f.result().unwrap()).collect();
    let not_done = sets.not_done.iter().map(|f| f.name()).collect();
    for late in &sets.not_done {
        assert_eq!(late.state().kind(), StateKind::Running);
        late.cancel();
    }
    (done, not_done, waited)
}

fn check_split((done, not_done, waited): (Vec<u64>, Vec<String>, Duration)) {
    assert_eq!(done, [0]);
    assert_eq!(not_done, ["nap-1"]);
    // Wide margins: the machine is shared.
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}

#[test]
fn wait_timeout_returns_the_done_and_the_not_done_futures() {
    #[flow(timeout = 60)]
    fn threads() -> (Vec<u64>, Vec<String>, Duration) {
        split()
    }
    #[flow(task_runner = cluster(), timeout = 60)]
    fn local_cluster() -> (Vec<u64>, Vec<String>, Duration) {
        split()
    }
    check_split(threads().unwrap());
    check_split(local_cluster().unwrap());
}

#[test]
fn wait_timeout_returns_early_when_every_run_is_final() {
    #[flow]
    fn threads() -> (usize, Duration) {
        let futures: Vec<_> = (0..4).map(|_| nap.submit(10)).collect();
        let began = Instant::now();
        let sets = wait_timeout(&futures, Duration::from_secs(60));
        assert!(sets.not_done.is_empty());
        (sets.done.len(), began.elapsed())
    }
    let (done, waited) = threads().unwrap();
    assert_eq!(done, 4);
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

/// Yields what finished within the timeout, then says it timed out and
/// hands back the rest.
fn first_within_timeout() -> (Vec<u64>, bool, Vec<String>) {
    let futures = vec![nap.submit(4_000), nap.submit(0), nap.submit(50)];
    let mut finished = as_completed_timeout(futures, Duration::from_secs(1));
    let values = finished.by_ref().map(|f| f.result().unwrap()).collect();
    let timed_out = finished.timed_out();
    let rest: Vec<String> = finished
        .into_not_done()
        .into_iter()
        .map(|f| {
            f.cancel();
            f.name()
        })
        .collect();
    (values, timed_out, rest)
}

#[test]
fn as_completed_timeout_yields_what_finished_and_hands_back_the_rest() {
    #[flow(timeout = 60)]
    fn threads() -> (Vec<u64>, bool, Vec<String>) {
        first_within_timeout()
    }
    #[flow(task_runner = cluster(), timeout = 60)]
    fn local_cluster() -> (Vec<u64>, bool, Vec<String>) {
        first_within_timeout()
    }
    for (values, timed_out, rest) in [threads().unwrap(), local_cluster().unwrap()] {
        assert_eq!(values, [0, 50]);
        assert!(timed_out);
        assert_eq!(rest, ["nap-0"]);
    }
}

#[test]
fn as_completed_timeout_ends_without_timing_out_when_all_finish() {
    #[flow]
    fn threads() -> (usize, bool) {
        let futures: Vec<_> = (0..3).map(|_| nap.submit(5)).collect();
        let mut finished = as_completed_timeout(futures, Duration::from_secs(60));
        let n = finished.by_ref().count();
        (n, finished.timed_out())
    }
    assert_eq!(threads().unwrap(), (3, false));
}

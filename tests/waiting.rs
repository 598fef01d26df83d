//! Waiting with a timeout on the thread runner: `wait_timeout` returns as
//! soon as every run is final, and `as_completed_timeout` ends without
//! timing out when all finish. (The scenarios every runner must pass, a
//! split into done and not done and an `as_completed_timeout` that times
//! out: flowrun-dask/tests/scenarios.rs.)

use std::time::{Duration, Instant};

use flowrun::{as_completed_timeout, flow, task, wait_timeout};

/// Sleeps `ms` milliseconds and returns it.
#[task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
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

//! `retry_condition_fn`: a function of the run and its error decides
//! whether a failed attempt is retried. From the attribute and per call,
//! on the thread runner and on the local cluster.

use std::sync::atomic::{AtomicU32, Ordering};

use flowrun::{flow, task, RunRef, StateKind, TaskError, TaskErrorKind, TaskOptions};
use flowrun_dask::{ClusterKwargs, DaskTaskRunner};

fn cluster() -> DaskTaskRunner {
    DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(1).threads_per_worker(2))
}

/// Retries only errors that say they are transient.
fn transient_only(_run: &RunRef, error: &TaskError) -> bool {
    error.message().contains("transient")
}

#[task(retries = 3, retry_delay = 0, retry_condition_fn = transient_only)]
fn fails_with(message: String) -> Result<(), String> {
    Err(message)
}

fn attempts_of(message: &str) -> (u32, StateKind) {
    let f = fails_with.submit(message.to_owned());
    f.wait();
    (f.run_ref().attempts(), f.state().kind())
}

#[test]
fn the_condition_from_the_attribute_decides_which_errors_are_retried() {
    #[flow]
    fn threads() -> Vec<(u32, StateKind)> {
        vec![attempts_of("transient glitch"), attempts_of("bad input")]
    }
    #[flow(task_runner = cluster())]
    fn local_cluster() -> Vec<(u32, StateKind)> {
        vec![attempts_of("transient glitch"), attempts_of("bad input")]
    }
    let expected = [(4, StateKind::Failed), (1, StateKind::Failed)];
    assert_eq!(threads().unwrap(), expected);
    assert_eq!(local_cluster().unwrap(), expected);
}

static CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 5, retry_delay = 0)]
fn panics() {
    panic!("always")
}

fn per_call() -> (u32, u32) {
    CALLS.store(0, Ordering::SeqCst);
    // Retry panics twice, by counting in the condition.
    let options = TaskOptions::new().retry_condition_fn(|run, error| {
        CALLS.fetch_add(1, Ordering::SeqCst);
        *error.kind() == TaskErrorKind::Panic && run.attempts() < 3
    });
    let f = panics.with_options(options).submit();
    f.wait();
    assert_eq!(f.state().kind(), StateKind::Failed);
    (f.run_ref().attempts(), CALLS.load(Ordering::SeqCst))
}

#[test]
fn a_per_call_condition_sees_the_run_and_its_error() {
    #[flow]
    fn threads() -> (u32, u32) {
        per_call()
    }
    #[flow(task_runner = cluster())]
    fn local_cluster() -> (u32, u32) {
        per_call()
    }
    assert_eq!(threads().unwrap(), (3, 3));
    assert_eq!(local_cluster().unwrap(), (3, 3));
}

#[task(retries = 2, retry_delay = 0)]
fn flaky() -> Result<(), String> {
    Err("flaky".into())
}

#[test]
fn a_condition_that_panics_declines_the_retry() {
    #[flow]
    fn threads() -> u32 {
        let options = TaskOptions::new().retry_condition_fn(|_, _| panic!("condition broke"));
        let f = flaky.with_options(options).submit();
        f.wait();
        assert_eq!(f.state().kind(), StateKind::Failed);
        f.run_ref().attempts()
    }
    assert_eq!(threads().unwrap(), 1);
}

static DIRECT_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 3, retry_delay = 0, retry_condition_fn = transient_only)]
fn counted(message: String) -> Result<(), String> {
    DIRECT_CALLS.fetch_add(1, Ordering::SeqCst);
    Err(message)
}

#[test]
fn a_direct_call_follows_the_condition() {
    #[flow]
    fn threads() -> (u32, u32) {
        assert!(counted("bad input".to_owned()).is_err());
        let permanent = DIRECT_CALLS.swap(0, Ordering::SeqCst);
        assert!(counted("transient".to_owned()).is_err());
        (permanent, DIRECT_CALLS.load(Ordering::SeqCst))
    }
    assert_eq!(threads().unwrap(), (1, 4));
}

//! `retry_condition_fn` on the thread runner: a condition that panics
//! declines the retry, and a direct call follows the condition. (The
//! scenarios every runner must pass, the condition from the attribute and
//! per call: flowrun-dask/tests/scenarios.rs.)

use std::sync::atomic::{AtomicU32, Ordering};

use flowrun::{flow, task, RunRef, StateKind, TaskError, TaskOptions};

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

/// Retries only errors that say they are transient.
fn transient_only(_run: &RunRef, error: &TaskError) -> bool {
    error.message().contains("transient")
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

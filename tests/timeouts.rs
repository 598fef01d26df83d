//! Timeouts end an attempt as Failed (TimedOut) with a message that says so;
//! retries apply; flows time out too.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use flowrun::{flow, task, FlowErrorKind, StateKind, TaskErrorKind, TaskOptions};

#[task(timeout = 0.2)]
fn sleeps(millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    millis
}

#[test]
fn a_sync_task_that_runs_too_long_fails_as_timed_out() {
    #[flow]
    fn flow_under_test() -> (TaskErrorKind, String, String) {
        let future = sleeps.submit(2_000);
        let error = future.result().unwrap_err();
        let state = future.state();
        (
            error.kind().clone(),
            error.to_string(),
            state.name().to_owned(),
        )
    }
    let started = Instant::now();
    let (kind, message, state) = flow_under_test().unwrap();
    assert_eq!(kind, TaskErrorKind::TimedOut);
    assert!(message.contains("timed out after 200ms"), "{message}");
    assert_eq!(state, "TimedOut");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "the flow must not wait for the timeout's sleeper"
    );
}

#[test]
fn a_task_within_its_timeout_completes() {
    #[flow]
    fn flow_under_test() -> u64 {
        sleeps.submit(10).result().unwrap()
    }
    assert_eq!(flow_under_test().unwrap(), 10);
}

#[test]
fn no_timeout_lifts_the_task_timeout_for_one_call() {
    #[flow]
    fn flow_under_test() -> u64 {
        sleeps
            .with_options(TaskOptions::new().no_timeout())
            .submit(400)
            .result()
            .unwrap()
    }
    assert_eq!(flow_under_test().unwrap(), 400);
}

#[task(timeout = 0.2)]
async fn async_sleeps(millis: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(millis)).await;
    millis
}

#[test]
fn an_async_task_that_runs_too_long_is_cancelled_and_timed_out() {
    #[flow]
    fn flow_under_test() -> TaskErrorKind {
        async_sleeps
            .submit(5_000)
            .result()
            .unwrap_err()
            .kind()
            .clone()
    }
    assert_eq!(flow_under_test().unwrap(), TaskErrorKind::TimedOut);
}

static SLOW_THEN_FAST: AtomicU32 = AtomicU32::new(0);

#[task(timeout = 0.2, retries = 1)]
fn slow_then_fast() -> u32 {
    let n = SLOW_THEN_FAST.fetch_add(1, Ordering::SeqCst);
    if n == 0 {
        std::thread::sleep(Duration::from_millis(1_000));
    }
    n
}

#[test]
fn a_timed_out_attempt_is_retried() {
    #[flow]
    fn flow_under_test() -> (u32, u32) {
        let future = slow_then_fast.submit();
        (future.result().unwrap(), future.run_ref().attempts())
    }
    assert_eq!(flow_under_test().unwrap(), (1, 2));
}

#[test]
fn a_direct_call_that_times_out_fails_the_flow_with_the_reason() {
    #[flow]
    fn flow_under_test() -> u64 {
        sleeps(2_000)
    }
    let error = flow_under_test().unwrap_err();
    common::assert_flow_error(&error, FlowErrorKind::Panic, &["timed out after 200ms"]);
}

#[task]
fn long_sleep(millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    millis
}

#[test]
fn a_flow_that_runs_too_long_fails_as_timed_out_and_cancels_its_task_runs() {
    #[flow(timeout = 0.3)]
    fn flow_under_test() -> Vec<StateKind> {
        let first = long_sleep.submit(3_000);
        let queued = long_sleep.submit(&first);
        first.wait();
        vec![first.state().kind(), queued.state().kind()]
    }
    let started = Instant::now();
    let run = flow_under_test.return_state();
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(run.state().name(), "TimedOut");
    let error = run.result().unwrap_err();
    common::assert_flow_error(error, FlowErrorKind::TimedOut, &["timed out after"]);
    assert_eq!(run.task_run_counts().cancelled, 2);
}

#[test]
fn an_async_flow_that_runs_too_long_is_stopped() {
    #[flow(timeout = 0.2)]
    async fn flow_under_test() {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let started = Instant::now();
    let error = flowrun::runner::runtime()
        .block_on(flow_under_test())
        .unwrap_err();
    assert_eq!(error.kind(), &FlowErrorKind::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(2));
}

common::serialized_runner!(
    /// Runs each attempt "elsewhere": it starts, its worker dies after 0.6 s,
    /// it starts again on another worker and completes 0.6 s later.
    Restarting,
    |call: flowrun::runner::TaskCall| {
        let flowrun::runner::Work::Serialized(job) = call.into_work() else {
            panic!("a serializing runner gets serialized work");
        };
        std::thread::spawn(move || {
            job.started(Some("worker-0"));
            std::thread::sleep(Duration::from_millis(600));
            job.started(Some("worker-1"));
            std::thread::sleep(Duration::from_millis(600));
            job.finish(Ok(flowrun::runner::encode_value(&7u32).unwrap().into()));
        });
    }
);

#[task(timeout = 1.0)]
fn seven() -> u32 {
    7
}

#[test]
fn an_attempt_restarted_on_another_worker_gets_a_new_clock() {
    #[flow(task_runner = Restarting)]
    fn restarted() -> Result<u32, String> {
        seven.submit().result().map_err(|e| e.to_string())
    }
    // 1.2 s in all, but only 0.6 s since it started again: within 1 s.
    assert_eq!(restarted().unwrap(), 7);
}

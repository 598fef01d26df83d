//! Retries: counts, delays (fixed, listed, exponential), jitter, and
//! per-call overrides.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flowrun::{flow, task, RetryDelay, RetryPolicy, StateKind, TaskOptions};

common::flaky_task!(FLAKY_CALLS, #[task(retries = 3)] fn flaky succeeds at 3);

#[test]
fn a_failing_task_is_retried_until_it_succeeds() {
    #[flow]
    fn flow_under_test() -> (u32, u32, StateKind) {
        let future = flaky.submit();
        let value = future.result().unwrap();
        (value, future.run_ref().attempts(), future.state().kind())
    }
    let (value, attempts, state) = flow_under_test().unwrap();
    assert_eq!(value, 3);
    assert_eq!(attempts, 3);
    assert_eq!(state, StateKind::Completed);
}

static ALWAYS_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 2)]
fn always_fails() -> Result<(), String> {
    ALWAYS_CALLS.fetch_add(1, Ordering::SeqCst);
    Err("still broken".to_owned())
}

#[test]
fn retries_stop_after_the_configured_count() {
    #[flow]
    fn flow_under_test() -> String {
        always_fails.submit().result().unwrap_err().to_string()
    }
    let message = flow_under_test().unwrap();
    assert_eq!(ALWAYS_CALLS.load(Ordering::SeqCst), 3, "1 try + 2 retries");
    assert!(message.contains("still broken"), "{message}");
}

static TIMES: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[task(retries = 3, retry_delay = [0.1, 0.3])]
fn record_and_fail() -> Result<(), String> {
    TIMES.lock().unwrap().push(Instant::now());
    Err("fail".to_owned())
}

#[test]
fn listed_delays_apply_in_order_and_the_last_repeats() {
    #[flow]
    fn flow_under_test() {
        let _ = record_and_fail.submit().result();
    }
    let _ = flow_under_test();
    let times = TIMES.lock().unwrap().clone();
    assert_eq!(times.len(), 4);
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(300), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(300), "{gaps:?}");
}

#[test]
fn exponential_backoff_doubles_and_respects_its_cap() {
    let policy = RetryPolicy {
        retries: 5,
        delay: RetryDelay::Exponential {
            base: Duration::from_millis(100),
            factor: 2.0,
            max: Some(Duration::from_millis(500)),
        },
        jitter_factor: None,
    };
    let delays: Vec<u128> = (1..=5)
        .map(|r| policy.delay_before(r).as_millis())
        .collect();
    assert_eq!(delays, vec![100, 200, 400, 500, 500]);
}

#[test]
fn jitter_spreads_delays_within_its_bound() {
    let policy = RetryPolicy {
        retries: 1,
        delay: RetryDelay::Fixed(Duration::from_secs(10)),
        jitter_factor: Some(0.5),
    };
    let samples: Vec<Duration> = (0..200).map(|_| policy.delay_before(1)).collect();
    assert!(samples
        .iter()
        .all(|d| *d >= Duration::from_secs(10) && *d <= Duration::from_secs(15)));
    assert!(
        samples.iter().any(|d| *d != samples[0]),
        "jitter must vary the delay"
    );
}

common::flaky_task!(OVERRIDE_CALLS, #[task] fn fails_twice succeeds at 3);

#[test]
fn with_options_sets_retries_for_one_call() {
    #[flow]
    fn flow_under_test() -> u32 {
        fails_twice
            .with_options(TaskOptions::new().retries(2))
            .submit()
            .result()
            .unwrap()
    }
    assert_eq!(flow_under_test().unwrap(), 3);
}

static PANICS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 1)]
fn panics_once() -> u32 {
    if PANICS.fetch_add(1, Ordering::SeqCst) == 0 {
        panic!("first attempt panics");
    }
    7
}

#[test]
fn panics_are_retried_like_errors() {
    #[flow]
    fn flow_under_test() -> u32 {
        panics_once.submit().result().unwrap()
    }
    assert_eq!(flow_under_test().unwrap(), 7);
}

common::flaky_task!(DIRECT, #[task(retries = 2)] fn direct_flaky succeeds at 2);

#[test]
fn direct_calls_retry_too() {
    #[flow]
    fn flow_under_test() -> Result<u32, String> {
        direct_flaky()
    }
    assert_eq!(flow_under_test().unwrap(), 2);
}

/// A type that cannot be cloned, so a run that used it cannot be retried.
struct Token;

#[task(retries = 2)]
fn consumes_token(_token: Token) -> Result<(), String> {
    Err("needs a retry".into())
}

#[test]
fn a_run_whose_arguments_are_not_clone_fails_with_a_reason_instead_of_retrying() {
    #[flow]
    fn flow_under_test() -> String {
        consumes_token
            .submit(Token)
            .result()
            .unwrap_err()
            .to_string()
    }
    let message = flow_under_test().unwrap();
    common::assert_holds(&message, &["needs a retry", "not Clone"]);
}

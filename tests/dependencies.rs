//! Dependencies: a future passed as an argument makes the downstream run
//! wait for it and receive its value; failures propagate without running.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowrun::{flow, task, StateKind, TaskErrorKind};

#[task]
fn load(n: u64) -> Vec<u64> {
    std::thread::sleep(Duration::from_millis(200));
    (0..n).collect()
}

#[task]
fn sum(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

#[task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[test]
fn a_future_argument_passes_its_value_downstream() {
    #[flow]
    fn f() -> u64 {
        let loaded = load.submit(5);
        let total = sum.submit(loaded);
        total.result().unwrap()
    }
    assert_eq!(f().unwrap(), 10);
}

#[test]
fn futures_and_values_mix_and_one_future_feeds_many_runs() {
    #[flow]
    fn f() -> Vec<u64> {
        let a = add.submit(1, 2);
        let b = add.submit(&a, 10);
        let c = add.submit(&a, &b);
        let d = add.submit(a, c.clone());
        vec![
            b.result().unwrap(),
            c.result().unwrap(),
            d.result().unwrap(),
        ]
    }
    assert_eq!(f().unwrap(), vec![13, 16, 19]);
}

static DOWNSTREAM_RAN: AtomicBool = AtomicBool::new(false);

#[task]
fn explode(_x: u64) -> u64 {
    panic!("upstream exploded")
}

#[task]
fn must_not_run(x: u64) -> u64 {
    DOWNSTREAM_RAN.store(true, Ordering::SeqCst);
    x
}

#[test]
fn a_failed_upstream_fails_the_downstream_without_running_it() {
    #[flow]
    fn f() -> (String, StateKind, String) {
        let up = explode.submit(1);
        let down = must_not_run.submit(&up);
        let error = down.result().unwrap_err();
        let upstream = match error.kind() {
            TaskErrorKind::UpstreamFailed { upstream } => upstream.clone(),
            other => panic!("expected UpstreamFailed, got {other:?}"),
        };
        (upstream, down.state().kind(), error.to_string())
    }
    let (upstream, state, message) = f().unwrap();
    assert_eq!(upstream, "explode-0");
    assert_eq!(state, StateKind::Failed);
    assert!(
        message.contains("upstream task run 'explode-0'"),
        "{message}"
    );
    assert!(message.contains("upstream exploded"), "{message}");
    assert!(!DOWNSTREAM_RAN.load(Ordering::SeqCst));
}

#[task]
fn stamp(_label: String) -> Instant {
    std::thread::sleep(Duration::from_millis(150));
    Instant::now()
}

#[task]
fn started_at(_label: String) -> Instant {
    Instant::now()
}

#[test]
fn wait_for_orders_runs_without_passing_values() {
    #[flow]
    fn f() -> (Instant, Instant) {
        let first = stamp.submit("first".to_owned());
        let second = started_at.wait_for(&first).submit("second".to_owned());
        (first.result().unwrap(), second.result().unwrap())
    }
    let (first_done, second_started) = f().unwrap();
    assert!(second_started >= first_done);
}

#[test]
fn wait_for_a_failed_run_fails_the_waiting_run() {
    #[flow]
    fn f() -> StateKind {
        let bad = explode.submit(0);
        let waiting = started_at.wait_for(&bad).submit("x".to_owned());
        waiting.wait();
        waiting.state().kind()
    }
    assert_eq!(f().unwrap(), StateKind::Failed);
}

#[test]
fn a_long_chain_completes_in_order() {
    #[flow]
    fn f() -> u64 {
        let mut acc = add.submit(0, 0);
        for i in 1..=200 {
            acc = add.submit(acc, i);
        }
        acc.result().unwrap()
    }
    assert_eq!(f().unwrap(), 200 * 201 / 2);
}

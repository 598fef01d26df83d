//! Futures: submit returns at once; result, wait, state, await, as_completed.

mod common;

use std::time::{Duration, Instant};

use flowrun::{as_completed, flow, task, StateKind, TaskErrorKind};

#[task]
fn slow_square(x: u64, millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    x * x
}

#[test]
fn submit_returns_before_the_run_finishes_and_result_waits_for_it() {
    #[flow]
    fn f() -> (bool, u64) {
        let future = slow_square.submit(7, 300);
        let was_final = future.state().is_final();
        (was_final, future.result().unwrap())
    }
    let (was_final, value) = f().unwrap();
    assert!(!was_final, "submit must not wait for the run");
    assert_eq!(value, 49);
}

#[test]
fn result_can_be_read_many_times() {
    #[flow]
    fn f() -> Vec<u64> {
        let future = slow_square.submit(3, 0);
        vec![
            future.result().unwrap(),
            future.result().unwrap(),
            future.clone().into_result().unwrap(),
        ]
    }
    assert_eq!(f().unwrap(), vec![9, 9, 9]);
}

#[test]
fn wait_timeout_reports_whether_the_run_finished() {
    #[flow]
    fn f() -> (bool, bool) {
        let future = slow_square.submit(2, 400);
        let early = future.wait_timeout(Duration::from_millis(20));
        let later = future.wait_timeout(Duration::from_secs(30));
        (early, later)
    }
    assert_eq!(f().unwrap(), (false, true));
}

#[test]
fn submitted_runs_really_run_in_parallel() {
    #[flow]
    fn f() -> Vec<u64> {
        let futures: Vec<_> = (0..4).map(|i| slow_square.submit(i, 500)).collect();
        flowrun::results(futures).unwrap()
    }
    let started = Instant::now();
    assert_eq!(f().unwrap(), vec![0, 1, 4, 9]);
    // Four half-second sleeps in a row would take 2 s; in parallel about 0.5 s.
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn as_completed_yields_runs_in_the_order_they_finish() {
    #[flow]
    fn f() -> Vec<u64> {
        let futures = vec![
            slow_square.submit(3, 600),
            slow_square.submit(1, 0),
            slow_square.submit(2, 300),
        ];
        as_completed(futures)
            .map(|fut| fut.result().unwrap())
            .collect()
    }
    assert_eq!(f().unwrap(), vec![1, 4, 9]);
}

#[test]
fn wait_waits_for_every_future_without_reading_results() {
    #[flow]
    fn f() -> Vec<StateKind> {
        let futures: Vec<_> = (0..3).map(|i| slow_square.submit(i, 100)).collect();
        flowrun::wait(&futures);
        futures.iter().map(|fut| fut.state().kind()).collect()
    }
    assert_eq!(f().unwrap(), vec![StateKind::Completed; 3]);
}

#[test]
fn futures_can_be_awaited() {
    #[flow]
    async fn f() -> u64 {
        let a = slow_square.submit(4, 50);
        let b = slow_square.submit(5, 10);
        let b_ref = &b;
        a.await.unwrap() + b_ref.await.unwrap() + b.await.unwrap()
    }
    let value = flowrun::runner::runtime().block_on(f()).unwrap();
    assert_eq!(value, 16 + 25 + 25);
}

/// A result type that cannot be cloned.
#[derive(Debug, PartialEq)]
struct Unique(u64);

#[task]
fn make_unique(x: u64) -> Unique {
    Unique(x)
}

#[test]
fn a_non_clone_result_moves_out_of_its_only_future() {
    #[flow]
    fn f() -> Unique {
        make_unique.submit(5).into_result().unwrap()
    }
    assert_eq!(f().unwrap(), Unique(5));
}

#[test]
fn a_non_clone_result_taken_twice_is_an_error_not_a_panic() {
    #[flow]
    fn f() -> (Unique, TaskErrorKind, String) {
        let future = make_unique.submit(6);
        let copy = future.clone();
        let first = future.into_result().unwrap();
        let second = copy.into_result().unwrap_err();
        (first, second.kind().clone(), second.message().to_owned())
    }
    let (first, kind, why) = f().unwrap();
    assert_eq!(first, Unique(6));
    assert_eq!(kind, TaskErrorKind::ResultUnavailable);
    assert!(
        why.contains("Unique`, which is not Clone) was already taken"),
        "{why}"
    );
}

#[test]
fn a_pending_run_can_be_cancelled() {
    #[flow]
    fn f() -> (bool, StateKind) {
        let blocker = slow_square.submit(1, 500);
        let waiting = slow_square.submit(&blocker, 0);
        let cancelled = waiting.cancel();
        let _ = blocker.result();
        (cancelled, waiting.state().kind())
    }
    assert_eq!(f().unwrap(), (true, StateKind::Cancelled));
}

#[test]
fn tasks_can_be_submitted_outside_a_flow() {
    let future = slow_square.submit(9, 0);
    assert_eq!(future.result().unwrap(), 81);
    assert_eq!(slow_square(2, 0), 4);
}

#[test]
fn result_timeout_gives_up_on_a_run_still_going_and_returns_a_finished_one() {
    #[flow]
    fn f() -> (bool, u64) {
        let slow = slow_square.submit(3, 1000);
        common::gives_up_then_gets(&slow, Duration::from_secs(30))
    }
    assert_eq!(f().unwrap(), (true, 9));
}

#[test]
fn a_run_waiting_for_its_upstream_is_pending_and_once_cancelled_is_cancelled() {
    #[flow]
    fn f() -> [bool; 4] {
        let blocker = slow_square.submit(1, 500);
        let waiting = slow_square.submit(&blocker, 0);
        let pending = waiting.state().is_pending();
        waiting.cancel();
        let _ = blocker.result();
        let state = waiting.state();
        [
            pending,
            state.is_cancelled(),
            !state.is_pending(),
            !state.is_crashed(),
        ]
    }
    assert_eq!(f().unwrap(), [true; 4]);
}

//! Failures: panics and `Err` fail a run with their message; a failure
//! nobody handled fails the flow run, which lists every failure.

mod common;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flowrun::{flow, task, FlowErrorKind, StateKind, TaskErrorKind};

#[task]
fn panics(message: String) -> u32 {
    panic!("{message}")
}

#[derive(Debug, PartialEq)]
struct DiskFull {
    path: String,
}

impl fmt::Display for DiskFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "disk full while writing {}", self.path)
    }
}

#[task]
fn save(path: String) -> Result<u64, DiskFull> {
    Err(DiskFull { path })
}

#[test]
fn a_panic_fails_the_run_and_keeps_its_message() {
    #[flow]
    fn flow_under_test() -> (TaskErrorKind, String) {
        let error = panics.submit("kaboom".to_owned()).result().unwrap_err();
        (error.kind().clone(), error.message().to_owned())
    }
    assert_eq!(
        flow_under_test().unwrap(),
        (TaskErrorKind::Panic, "kaboom".to_owned())
    );
}

#[test]
fn an_err_return_fails_the_run_and_keeps_the_error_value() {
    #[flow]
    fn flow_under_test() -> (String, Option<String>, StateKind) {
        let future = save.submit("/data/out".to_owned());
        let error = future.result().unwrap_err();
        let path = error.downcast_ref::<DiskFull>().map(|d| d.path.clone());
        (error.to_string(), path, future.state().kind())
    }
    let (message, path, state) = flow_under_test().unwrap();
    assert_eq!(
        message,
        "task run 'save-0' failed: disk full while writing /data/out"
    );
    assert_eq!(path.as_deref(), Some("/data/out"));
    assert_eq!(state, StateKind::Failed);
}

#[test]
fn a_failure_nobody_handled_fails_the_flow_and_is_listed() {
    #[flow]
    fn flow_under_test() {
        panics.submit("never read".to_owned());
        save.submit("/tmp/x".to_owned());
    }
    let error = flow_under_test().unwrap_err();
    common::assert_flow_error(
        &error,
        FlowErrorKind::TaskRunsFailed,
        &["2 task runs failed", "never read", "disk full"],
    );
    let mut names: Vec<_> = error
        .task_failures()
        .iter()
        .map(|f| f.task_run.clone())
        .collect();
    names.sort();
    assert_eq!(names, vec!["panics-0", "save-0"]);
    assert!(error.task_failures().iter().all(|f| !f.observed));
}

#[test]
fn a_handled_failure_does_not_fail_the_flow_but_is_still_reported() {
    #[flow]
    fn flow_under_test() -> String {
        match save.submit("/tmp/y".to_owned()).result() {
            Ok(_) => "saved".into(),
            Err(_) => "fell back".into(),
        }
    }
    let run = flow_under_test.return_state();
    assert!(run.state().is_completed());
    assert_eq!(run.result().unwrap(), "fell back");
    assert_eq!(run.task_failures().len(), 1);
    assert!(run.task_failures()[0].observed);
    assert_eq!(run.task_run_counts().failed, 1);
}

#[test]
fn a_flow_returning_err_fails_with_that_error() {
    #[flow]
    fn flow_under_test() -> Result<(), DiskFull> {
        Err(DiskFull {
            path: "/flow".into(),
        })
    }
    let error = flow_under_test().unwrap_err();
    assert_eq!(error.kind(), &FlowErrorKind::Error);
    assert_eq!(error.message(), "disk full while writing /flow");
    assert_eq!(
        error.downcast_ref::<DiskFull>(),
        Some(&DiskFull {
            path: "/flow".into()
        })
    );
}

#[test]
fn a_panicking_flow_fails_instead_of_unwinding_into_the_caller() {
    #[flow]
    fn flow_under_test() {
        panic!("flow body broke");
    }
    let run = flow_under_test.return_state();
    assert!(run.state().is_failed());
    let error = run.result().unwrap_err();
    common::assert_flow_error(error, FlowErrorKind::Panic, &["flow body broke"]);
}

static SLOW_DONE: AtomicBool = AtomicBool::new(false);

#[task]
fn slow_side_effect() {
    std::thread::sleep(Duration::from_millis(300));
    SLOW_DONE.store(true, Ordering::SeqCst);
}

#[test]
fn a_flow_waits_for_every_task_it_submitted() {
    #[flow]
    fn flow_under_test() {
        slow_side_effect.submit();
    }
    flow_under_test().unwrap();
    assert!(
        SLOW_DONE.load(Ordering::SeqCst),
        "the flow returned before its task finished"
    );
}

#[task]
fn blocker() {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn when_the_flow_fails_runs_that_had_not_started_are_cancelled() {
    #[flow]
    fn fails_with_queued_work() {
        let first = blocker.submit();
        let _queued = blocker.wait_for(&first).submit();
        while !first.run_ref().state().is_running() {
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("stop");
    }
    let run = fails_with_queued_work.return_state();
    assert!(run.state().is_failed());
    let counts = run.task_run_counts();
    assert_eq!(counts.completed, 1, "{counts:?}");
    assert_eq!(counts.cancelled, 1, "{counts:?}");
}

common::serialized_runner!(
    /// Loses every attempt it is given.
    Forgetful,
    drop
);

#[task]
fn forty_two() -> u32 {
    42
}

#[test]
fn an_attempt_a_runner_drops_fails_its_run_instead_of_hanging_the_flow() {
    #[flow(task_runner = Forgetful)]
    fn forgotten() -> (TaskErrorKind, String) {
        let e = forty_two.submit().result().unwrap_err();
        (e.kind().clone(), e.message().to_owned())
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("an_attempt_a_runner_drops_fails_its_run_instead_of_hanging_the_flow".into())
        .spawn(move || {
            let _ = tx.send(forgotten());
        })
        .unwrap();
    let outcome = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the flow hangs on an attempt its runner dropped");
    let (kind, message) = outcome.unwrap();
    assert_eq!(kind, TaskErrorKind::Crashed);
    assert!(message.contains("dropped"), "{message}");
}

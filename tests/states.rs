//! States and names: each run has an id, a readable name and passes
//! through Pending, Running and a final state.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use flowrun::{flow, task, FlowOptions, State, StateKind, TaskOptions};

static GATE: Mutex<Option<mpsc::Receiver<()>>> = Mutex::new(None);

#[task]
fn wait_for_signal() -> u8 {
    let rx = GATE.lock().unwrap().take().expect("the test sets the gate");
    rx.recv_timeout(Duration::from_secs(10)).expect("signal");
    1
}

#[test]
fn a_run_moves_from_running_to_completed() {
    #[flow]
    fn flow_under_test() -> Vec<StateKind> {
        let (tx, rx) = mpsc::channel();
        *GATE.lock().unwrap() = Some(rx);
        let future = wait_for_signal.submit();
        let mut seen = vec![];
        let mut waited = Duration::ZERO;
        while future.run_ref().state().kind() != StateKind::Running
            && waited < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(5));
            waited += Duration::from_millis(5);
        }
        seen.push(future.run_ref().state().kind());
        tx.send(()).unwrap();
        future.wait();
        seen.push(future.state().kind());
        seen
    }
    assert_eq!(
        flow_under_test().unwrap(),
        vec![StateKind::Running, StateKind::Completed]
    );
}

#[task]
fn shout(number: u32) -> u32 {
    number
}

#[test]
fn runs_are_named_after_their_task_with_a_counter_and_have_unique_ids() {
    #[flow]
    fn flow_under_test() -> (Vec<String>, usize) {
        let futures: Vec<_> = (0..5).map(|n| shout.submit(n)).collect();
        let names = futures.iter().map(|f| f.name()).collect();
        let ids: HashSet<_> = futures.iter().map(|f| f.id()).collect();
        flowrun::wait(&futures);
        (names, ids.len())
    }
    let (names, unique) = flow_under_test().unwrap();
    assert_eq!(
        names,
        vec!["shout-0", "shout-1", "shout-2", "shout-3", "shout-4"]
    );
    assert_eq!(unique, 5);
}

#[test]
fn a_call_can_rename_its_runs() {
    #[flow]
    fn flow_under_test() -> String {
        let future = shout
            .with_options(TaskOptions::new().name("yell"))
            .submit(1);
        future.wait();
        future.name()
    }
    assert_eq!(flow_under_test().unwrap(), "yell-0");
}

#[test]
fn a_flow_run_has_a_readable_name_a_completed_state_and_counts() {
    #[flow]
    fn flow_under_test() -> u32 {
        let futures: Vec<_> = (0..3).map(|n| shout.submit(n)).collect();
        flowrun::results(futures).unwrap().into_iter().sum()
    }
    let run = flow_under_test.return_state();
    assert!(run.state().is_completed());
    assert_eq!(run.state().to_string(), "Completed()");
    assert_eq!(run.flow_name(), "flow-under-test");
    assert!(run.name().contains('-'), "adjective-animal: {}", run.name());
    assert_eq!(run.task_run_counts().completed, 3);
    assert_eq!(*run.result().unwrap(), 3);
}

#[test]
fn flow_runs_can_be_named() {
    #[flow]
    fn flow_under_test() {}
    let run = flow_under_test
        .with_options(FlowOptions::new().run_name("nightly-42"))
        .return_state();
    assert_eq!(run.name(), "nightly-42");
}

#[test]
fn states_print_like_prefect() {
    assert_eq!(State::new(StateKind::Completed).to_string(), "Completed()");
    assert_eq!(
        State::new(StateKind::Failed)
            .with_message("boom")
            .to_string(),
        "Failed('boom')"
    );
    assert!(StateKind::Crashed.is_final() && StateKind::Crashed.is_failure());
    assert!(!StateKind::AwaitingRetry.is_final());
}

#[test]
fn each_state_predicate_answers_for_its_own_kind_only() {
    let crashed = State::new(StateKind::Crashed);
    assert!(crashed.is_crashed() && crashed.is_final());
    assert!(!crashed.is_cancelled() && !crashed.is_pending() && !crashed.is_failed());
    let cancelled = State::new(StateKind::Cancelled);
    assert!(cancelled.is_cancelled() && !cancelled.is_crashed());
    let pending = State::new(StateKind::Pending);
    assert!(pending.is_pending() && !pending.is_final());
}

#[task]
fn own_run_name() -> Option<String> {
    flowrun::current_task_run().map(|run| run.name())
}

#[test]
fn code_can_ask_which_task_run_and_flow_run_it_runs_in() {
    #[flow]
    fn flow_under_test() -> (Option<String>, Option<String>, bool) {
        let future = own_run_name.submit();
        let seen_by_task = future.result().unwrap();
        (
            seen_by_task,
            flowrun::current_flow_run_name(),
            flowrun::current_task_run().is_none(),
        )
    }
    let run = flow_under_test
        .with_options(FlowOptions::new().run_name("asking-7"))
        .return_state();
    let (task_run, flow_run, no_task_run_in_the_body) = run.into_result().unwrap();
    assert_eq!(task_run.as_deref(), Some("own_run_name-0"));
    assert_eq!(flow_run.as_deref(), Some("asking-7"));
    assert!(no_task_run_in_the_body);
    assert!(flowrun::current_flow_run_name().is_none());
}

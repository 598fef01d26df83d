//! What observers are told with each state change: the run's attempts as
//! of that state, read with it (an observer needs no lock of its own to
//! learn them).

mod common;

use std::sync::{Arc, Mutex};

use flowrun::runner::observe::{ObserverRegistration, RunEvent, RunObserver};
use flowrun::runner::FlowRunInfo;
use flowrun::{flow, task, StateKind};

/// Every event of the flow runs of `watched_flow`: the state and the
/// attempts the event gave.
static SEEN: Mutex<Vec<(StateKind, u32)>> = Mutex::new(Vec::new());

struct Watcher;

impl RunObserver for Watcher {
    fn run_changed(&self, event: &RunEvent) {
        SEEN.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((event.state.kind(), event.attempts));
    }
}

fn watch(info: &FlowRunInfo) -> Option<Arc<dyn RunObserver>> {
    (info.flow_name == "watched-flow").then(|| Arc::new(Watcher) as Arc<dyn RunObserver>)
}

flowrun::__private::inventory::submit! {
    ObserverRegistration { factory: watch }
}

common::flaky_task!(CALLS, #[task(retries = 2)] fn fails_twice succeeds at 3);

#[flow]
fn watched_flow() -> u32 {
    fails_twice.submit().result().unwrap()
}

#[test]
fn each_event_carries_the_attempts_as_of_its_state() {
    assert_eq!(watched_flow().unwrap(), 3);
    let seen = SEEN.lock().unwrap_or_else(|p| p.into_inner()).clone();
    use StateKind::*;
    assert_eq!(
        seen,
        [
            (Pending, 0),
            (Running, 1),
            (AwaitingRetry, 1),
            (Pending, 1),
            (Retrying, 2),
            (AwaitingRetry, 2),
            (Pending, 2),
            (Retrying, 3),
            (Completed, 3),
        ]
    );
}

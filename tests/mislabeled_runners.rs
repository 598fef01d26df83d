//! A runner of serialized work that is handed work which can only run in
//! this process (a wrapper says it runs tasks in-process and passes the
//! calls on) refuses it: the task run fails with a `Runner` error saying
//! why, and the flow goes on rather than waiting for an attempt nobody runs.

mod common;

use std::borrow::Cow;
use std::time::Duration;

use flowrun::runner::{
    AcceptsTask, FlowRunInfo, RunnerError, SerializedTask, TaskCall, TaskRunner,
};
use flowrun::{flow, task, SerializingTaskRunner, TaskErrorKind};

/// Passes every call on to `R` but keeps the default execution (in this
/// process), so the flow hands it local work.
#[derive(Clone)]
struct Mislabeled<R>(R);

impl<R: TaskRunner> TaskRunner for Mislabeled<R> {
    fn name(&self) -> Cow<'static, str> {
        format!("Mislabeled({})", self.0.name()).into()
    }
    fn start(&self, flow: &FlowRunInfo) -> Result<(), RunnerError> {
        self.0.start(flow)
    }
    fn submit(&self, call: TaskCall) {
        self.0.submit(call)
    }
    fn shutdown(&self) {
        self.0.shutdown()
    }
}

impl<T: SerializedTask, R: TaskRunner> AcceptsTask<T> for Mislabeled<R> {}

#[task]
fn seven() -> u32 {
    7
}

/// The error of a `seven` run on `runner`, and what the flow did after it.
fn refused_on<R: TaskRunner + Clone>(runner: R) -> (TaskErrorKind, String, u32) {
    #[flow]
    fn refused() -> (TaskErrorKind, String, u32) {
        let e = seven.submit().result().unwrap_err();
        (e.kind().clone(), e.message().to_owned(), 8)
    }
    refused.with_runner(runner).call().unwrap()
}

#[test]
fn the_serializing_runner_refuses_local_work_with_a_runner_error() {
    flowrun::worker::divert_if_worker();
    // An attempt nobody runs or refuses would leave the flow waiting.
    let _guard = common::HangGuard::new("serializing refusal", Duration::from_secs(60));
    let (kind, message, after) = refused_on(Mislabeled(SerializingTaskRunner::new(1)));
    assert_eq!(kind, TaskErrorKind::Runner);
    assert_eq!(message, "SerializingTaskRunner only runs serialized calls");
    assert_eq!(after, 8, "the flow went on after the refusal");
}

#[test]
fn a_local_cluster_refuses_local_work_with_a_runner_error() {
    flowrun::worker::divert_if_worker();
    let _guard = common::HangGuard::new("local cluster refusal", Duration::from_secs(60));
    let cluster = common::local_cluster(1, 1);
    let (kind, message, after) = refused_on(Mislabeled(cluster));
    assert_eq!(kind, TaskErrorKind::Runner);
    assert_eq!(message, "DaskTaskRunner runs serialized calls only");
    assert_eq!(after, 8, "the flow went on after the refusal");
}

//! Wrong settings fail the flow run at once with a message naming the
//! setting; they never hang.

mod common;

use flowrun::{flow, task, FlowErrorKind};
use flowrun_dask::{AdaptKwargs, ClientKwargs, ClusterKwargs, DaskTaskRunner};

#[task]
fn noop() {}

#[flow]
fn one_task() {
    noop.submit().result().unwrap();
}

fn fails_with(runner: DaskTaskRunner, expected: &[&str]) {
    let error = one_task.with_runner(runner).call().unwrap_err();
    assert_eq!(error.kind(), &FlowErrorKind::RunnerFailed, "{error}");
    for part in expected {
        assert!(
            error.message().contains(part),
            "{:?} not in {:?}",
            part,
            error.message()
        );
    }
}

#[test]
fn zero_workers_and_threads_are_refused() {
    // Negative counts do not compile (tests/ui/fail/cluster_kwargs_negative_count.rs).
    fails_with(
        DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(0)),
        &["cluster_kwargs.n_workers", "at least 1, got 0"],
    );
    fails_with(
        DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().threads_per_worker(0)),
        &["cluster_kwargs.threads_per_worker", "at least 1, got 0"],
    );
}

#[test]
fn an_address_cannot_be_combined_with_a_cluster_to_start() {
    fails_with(
        DaskTaskRunner::new()
            .address("tcp://127.0.0.1:8786")
            .cluster_kwargs(ClusterKwargs::new().n_workers(2)),
        &["address + cluster_kwargs"],
    );
    fails_with(
        DaskTaskRunner::new()
            .address("tcp://127.0.0.1:8786")
            .adapt_kwargs(AdaptKwargs::new().maximum(3)),
        &["address + adapt_kwargs"],
    );
    fails_with(
        DaskTaskRunner::new()
            .address("tcp://127.0.0.1:8786")
            .cluster_class("distributed.LocalCluster"),
        &["address + cluster_class"],
    );
}

#[test]
fn bad_resources_memory_and_unknown_keys_name_their_setting() {
    fails_with(
        DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().resources_spec("GPU")),
        &["cluster_kwargs.resources", "NAME=AMOUNT"],
    );
    fails_with(
        DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().resources([("GPU", -1.0)])),
        &["cluster_kwargs.resources", "GPU"],
    );
    fails_with(
        DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().memory_limit("lots")),
        &["cluster_kwargs.memory_limit"],
    );
    fails_with(
        DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().set("scheduler_port", 8786)),
        &[
            "cluster_kwargs.scheduler_port",
            "LocalCluster does not take",
        ],
    );
    fails_with(
        DaskTaskRunner::new()
            .cluster_kwargs(ClusterKwargs::new().worker_program("/no/such/program")),
        &["cluster_kwargs.worker_program", "/no/such/program"],
    );
}

#[test]
fn bad_adaptive_bounds_and_timeouts_are_refused() {
    use std::time::Duration;
    let adapt = |kwargs| DaskTaskRunner::new().adapt_kwargs(kwargs);
    let client = |kwargs| DaskTaskRunner::new().client_kwargs(kwargs);
    for (runner, expected) in [
        (
            adapt(AdaptKwargs::new().minimum(5).maximum(2)),
            ["adapt_kwargs", "minimum (5) is greater than maximum (2)"],
        ),
        (
            adapt(AdaptKwargs::new().maximum(0)),
            ["adapt_kwargs.maximum", "at least 1, got 0"],
        ),
        (
            adapt(AdaptKwargs::new().wait_count(0)),
            ["adapt_kwargs.wait_count", "at least 1, got 0"],
        ),
        (
            adapt(AdaptKwargs::new().interval(Duration::ZERO)),
            ["adapt_kwargs.interval", "longer than zero"],
        ),
        (
            adapt(AdaptKwargs::new().target_duration(Duration::ZERO)),
            ["adapt_kwargs.target_duration", "longer than zero"],
        ),
        (
            client(ClientKwargs::new().timeout(Duration::ZERO)),
            ["client_kwargs.timeout", "longer than zero"],
        ),
        (
            client(ClientKwargs::new().startup_timeout(Duration::ZERO)),
            ["client_kwargs.startup_timeout", "longer than zero"],
        ),
    ] {
        fails_with(runner, &expected);
    }
}

#[test]
fn a_task_that_cannot_cross_processes_is_refused_at_submit_naming_its_type() {
    /// Only meaningful in this process.
    #[derive(Clone)]
    struct Socket;
    #[task]
    fn uses_socket(_s: Socket) -> u8 {
        1
    }
    #[flow]
    fn runtime_choice() -> String {
        uses_socket.submit(Socket).result().unwrap_err().to_string()
    }
    let message = runtime_choice
        .with_runner(DaskTaskRunner::default())
        .call()
        .unwrap();
    common::assert_holds(&message, &["uses_socket", "DaskTaskRunner", "Socket"]);
}

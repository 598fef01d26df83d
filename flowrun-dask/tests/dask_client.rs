//! `get_dask_client()`: more work on the same cluster, from the flow, from a
//! task on a worker (without deadlocking a one-thread worker), and outside
//! any flow.

mod common;

use flowrun::{flow, task, FlowErrorKind};
use flowrun_dask::{get_async_dask_client, get_dask_client, Client, ClusterKwargs, DaskTaskRunner};

#[task]
fn square(x: u64) -> u64 {
    x * x
}

#[task]
fn pid() -> u32 {
    std::process::id()
}

#[test]
fn in_a_flow_the_client_uses_the_flows_cluster() {
    #[flow(task_runner = DaskTaskRunner::default())]
    fn with_client() -> (Vec<u64>, bool) {
        let client = get_dask_client().unwrap();
        let futures = client.map(&square, (1..=4).map(|i| (i,)));
        let values = client.gather(futures).unwrap();
        let worker = client.submit(&pid, ()).result().unwrap();
        (values, worker != std::process::id())
    }
    assert_eq!(with_client().unwrap(), (vec![1, 4, 9, 16], true));
}

#[task]
fn sum_of_squares(n: u64) -> u64 {
    let client = get_dask_client().unwrap();
    let futures = client.map(&square, (0..n).map(|i| (i,)));
    client.gather(futures).unwrap().into_iter().sum()
}

#[test]
fn a_task_blocking_on_its_client_frees_its_slot_on_a_one_thread_worker() {
    #[flow(task_runner = common::local_cluster(1, 1))]
    fn nested() -> Vec<u64> {
        flowrun::results(sum_of_squares.map([3, 5]).unwrap()).unwrap()
    }
    let run = nested.return_state();
    assert_eq!(run.result().unwrap(), &vec![5, 30]);
    // 2 outer runs and the 8 squares they submitted, all tracked by the flow.
    assert_eq!(run.task_run_counts().completed, 10);
}

#[task]
async fn async_sum(n: u64) -> u64 {
    let client = get_async_dask_client().unwrap();
    let futures = client.map(&square, (0..n).map(|i| (i,)));
    client.gather(futures).await.unwrap().into_iter().sum()
}

#[test]
fn an_async_task_awaiting_its_client_does_not_deadlock_either() {
    #[flow(task_runner = common::local_cluster(1, 1))]
    fn nested_async() -> u64 {
        async_sum.submit(4).result().unwrap()
    }
    assert_eq!(nested_async().unwrap(), 14);
}

#[task]
fn fails_on(x: u64) -> Result<u64, String> {
    common::ok_unless(x, 2, "two is not allowed")
}

#[task]
fn tolerant(n: u64) -> u64 {
    let client = get_dask_client().unwrap();
    let futures = client.map(&fails_on, (0..n).map(|i| (i,)));
    futures
        .into_iter()
        .filter_map(|f| f.into_result().ok())
        .sum()
}

#[task]
fn careless(n: u64) -> u64 {
    let client = get_dask_client().unwrap();
    let _ignored = client.map(&fails_on, (0..n).map(|i| (i,)));
    n
}

#[test]
fn failures_a_task_handled_do_not_fail_the_flow_and_ones_it_ignored_do() {
    #[flow(task_runner = DaskTaskRunner::default())]
    fn handles() -> u64 {
        tolerant.submit(4).result().unwrap()
    }
    assert_eq!(handles().unwrap(), 4);

    #[flow(task_runner = DaskTaskRunner::default())]
    fn ignores() -> String {
        careless
            .submit(4)
            .result()
            .unwrap_err()
            .message()
            .to_owned()
    }
    let message = ignores().unwrap();
    common::assert_holds(&message, &["it did not handle them", "two is not allowed"]);
}

#[test]
fn a_flow_without_a_dask_runner_has_no_client() {
    #[flow]
    fn threads_only() -> String {
        get_dask_client().unwrap_err().to_string()
    }
    let message = threads_only().unwrap();
    assert!(
        message.contains("does not run its tasks on a DaskTaskRunner"),
        "{message}"
    );
}

#[test]
fn outside_any_flow_the_client_starts_and_closes_its_own_cluster() {
    let client =
        Client::start(DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(2)))
            .unwrap();
    let pids = client.gather(client.map(&pid, [(), (), (), ()])).unwrap();
    let squares = client.gather(client.map(&square, [(7,), (8,)])).unwrap();
    assert_eq!(squares, vec![49, 64]);
    assert_eq!(client.status().unwrap().workers.len(), 2);
    drop(client);
    assert!(
        pids.iter().all(|p| !common::pid_alive(*p)),
        "workers outlived the client: {pids:?}"
    );
    let _ = FlowErrorKind::Error;
}

//! The local cluster: worker processes x threads, started for a flow run
//! and gone after it.

mod common;
mod tasks;

use tasks::{square, total};

use std::time::{Duration, Instant};

use flowrun::{flow, task};
use flowrun_dask::{current_cluster, ClusterClass, ClusterKwargs, DaskTaskRunner, LocalCluster};

#[task]
fn pid_after(millis: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(millis));
    std::process::id()
}

#[test]
fn tasks_run_in_parallel_worker_processes_that_are_gone_after_the_flow() {
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn spread() -> Vec<u32> {
        let futures: Vec<_> = (0..4).map(|_| pid_after.submit(400)).collect();
        flowrun::results(futures).unwrap()
    }
    let started = Instant::now();
    let pids = spread().unwrap();
    let elapsed = started.elapsed();
    let distinct: std::collections::HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        2,
        "two worker processes ran the tasks: {pids:?}"
    );
    assert!(
        !distinct.contains(&std::process::id()),
        "tasks ran outside the flow's process"
    );
    // Four 0.4 s tasks on two workers: two waves, well under four in a row.
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    for pid in distinct {
        assert!(!common::pid_alive(pid), "worker {pid} outlived the flow");
    }
}

#[test]
fn the_default_shape_follows_the_core_count_as_dask_does() {
    assert_eq!(flowrun_dask::default_shape(1), (1, 1));
    assert_eq!(flowrun_dask::default_shape(2), (2, 1));
    assert_eq!(flowrun_dask::default_shape(4), (4, 1));
    assert_eq!(flowrun_dask::default_shape(8), (4, 2));
    assert_eq!(flowrun_dask::default_shape(16), (4, 4));
    assert_eq!(flowrun_dask::default_shape(12), (4, 3));
    #[flow(task_runner = DaskTaskRunner::default())]
    fn shape() -> (usize, Vec<usize>) {
        let status = current_cluster().unwrap().status().unwrap();
        (
            status.workers.len(),
            status.workers.iter().map(|w| w.nthreads).collect(),
        )
    }
    let cores = std::thread::available_parallelism().unwrap().get();
    let (n, threads) = flowrun_dask::default_shape(cores);
    assert_eq!(shape().unwrap(), (n, vec![threads; n]));
}

#[test]
fn threads_instead_of_processes_run_tasks_in_the_flows_process() {
    #[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().processes(false).n_workers(2)))]
    fn in_process() -> Vec<u32> {
        flowrun::results(pid_after.map([0, 0, 0]).unwrap()).unwrap()
    }
    let pids = in_process().unwrap();
    assert!(pids.iter().all(|p| *p == std::process::id()), "{pids:?}");
}

#[test]
fn dependencies_map_and_a_reduce_run_through_the_cluster() {
    #[flow(task_runner = DaskTaskRunner::default())]
    fn map_reduce(n: i64) -> i64 {
        let squares = square.map(0..n).unwrap();
        let values = flowrun::results(squares).unwrap();
        let summed = total.submit(values);
        let doubled = square.submit(summed);
        doubled.result().unwrap()
    }
    let sum_of_squares: i64 = (0..50i64).map(|x| x * x).sum();
    assert_eq!(map_reduce(50).unwrap(), sum_of_squares * sum_of_squares);
}

#[task]
fn inner(x: u64) -> u64 {
    x + 1
}

#[task]
fn outer(x: u64) -> u64 {
    let nested = inner.submit(x);
    nested.result().unwrap() * 10
}

#[test]
fn a_task_that_submits_and_waits_does_not_deadlock_a_one_thread_worker() {
    #[flow(task_runner = common::local_cluster(1, 1))]
    fn nested() -> Vec<u64> {
        flowrun::results(outer.map([1, 2, 3]).unwrap()).unwrap()
    }
    assert_eq!(nested().unwrap(), vec![20, 30, 40]);
}

#[test]
fn cluster_class_takes_a_cluster_type_or_a_function() {
    #[flow(task_runner = DaskTaskRunner::new().cluster_class(ClusterClass::of::<LocalCluster>()))]
    fn by_type() -> i64 {
        square.submit(7).result().unwrap()
    }
    assert_eq!(by_type().unwrap(), 49);

    #[flow(task_runner = DaskTaskRunner::new().cluster_class(ClusterClass::function(|kwargs, client| {
        let one = kwargs.clone().n_workers(1);
        Ok(Box::new(LocalCluster::start(&one, client)?) as Box<dyn flowrun_dask::Cluster>)
    })))]
    fn by_function() -> (i64, usize) {
        let workers = current_cluster().unwrap().status().unwrap().workers.len();
        (square.submit(8).result().unwrap(), workers)
    }
    assert_eq!(by_function().unwrap(), (64, 1));
}

#[test]
fn results_come_back_typed_and_intact() {
    #[task]
    fn echo(text: String, numbers: Vec<f64>) -> (String, Vec<f64>) {
        (
            text.to_uppercase(),
            numbers.iter().map(|n| n * 2.0).collect(),
        )
    }
    #[flow(task_runner = DaskTaskRunner::default())]
    fn roundtrip() -> (String, Vec<f64>) {
        echo.submit("héllo".to_owned(), vec![1.5, -2.0, 1e300])
            .result()
            .unwrap()
    }
    assert_eq!(
        roundtrip().unwrap(),
        ("HÉLLO".to_owned(), vec![3.0, -4.0, 2e300])
    );
}

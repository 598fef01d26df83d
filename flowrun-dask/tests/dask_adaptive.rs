//! Adaptive scaling: the cluster grows to its maximum when work queues up,
//! shrinks to its minimum when idle, starts from zero, and never adds more
//! workers than there are tasks to fill them.

mod common;

use std::time::Duration;

use flowrun::{flow, task};
use flowrun_dask::{annotate, current_cluster, AdaptKwargs, ClusterKwargs, DaskTaskRunner};

#[task]
fn nap(i: u32, millis: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(millis));
    i
}

fn adaptive(min: u32, max: u32) -> DaskTaskRunner {
    DaskTaskRunner::new().adapt_kwargs(
        AdaptKwargs::new()
            .minimum(min)
            .maximum(max)
            .interval(Duration::from_millis(100))
            .wait_count(2)
            .target_duration(Duration::from_secs(1)),
    )
}

fn workers() -> usize {
    current_cluster()
        .unwrap()
        .status()
        .unwrap()
        .workers
        .iter()
        .filter(|w| w.state == "running")
        .count()
}

#[test]
fn a_burst_grows_the_cluster_to_its_maximum_and_idleness_shrinks_it_to_its_minimum() {
    #[flow(task_runner = adaptive(1, 4))]
    fn burst() -> (Vec<u32>, usize, usize, Vec<usize>) {
        let futures: Vec<_> = (0..24).map(|i| nap.submit(i, 300)).collect();
        let peak_seen = common::eventually(Duration::from_secs(10), || workers() == 4);
        let values = flowrun::results(futures).unwrap();
        let peak = if peak_seen { 4 } else { workers() };
        assert!(
            common::eventually(Duration::from_secs(10), || workers() == 1),
            "it shrinks back"
        );
        let history: Vec<usize> = current_cluster()
            .unwrap()
            .status()
            .unwrap()
            .worker_count_history
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        (values, peak, workers(), history)
    }
    let (values, peak, after, history) = burst().unwrap();
    assert_eq!(values, (0..24).collect::<Vec<_>>());
    assert_eq!(peak, 4);
    assert_eq!(after, 1);
    assert_eq!(history.iter().max(), Some(&4), "{history:?}");
    assert!(
        history.windows(2).all(|w| w[1].abs_diff(w[0]) == 1),
        "one worker at a time: {history:?}"
    );
    assert_eq!(history.last(), Some(&1));
}

#[test]
fn a_cluster_scales_up_from_zero_and_back_to_zero() {
    #[flow(task_runner = adaptive(0, 3))]
    fn from_zero() -> (usize, u32, usize) {
        let before = workers();
        let value = nap.submit(7, 10).result().unwrap();
        assert!(common::eventually(Duration::from_secs(10), || workers() == 0));
        (before, value, workers())
    }
    assert_eq!(from_zero().unwrap(), (0, 7, 0));
}

#[test]
fn never_more_workers_than_tasks_to_fill_them() {
    #[flow(task_runner = adaptive(0, 4))]
    fn one_long_task() -> usize {
        let f = nap.submit(1, 1500);
        let mut most = 0;
        while !f.state().is_final() {
            most = most.max(workers());
            std::thread::sleep(Duration::from_millis(50));
        }
        most
    }
    assert_eq!(one_long_task().unwrap(), 1);
}

#[test]
fn a_resource_request_adds_a_worker_that_offers_it() {
    #[flow(task_runner = adaptive(0, 2).cluster_kwargs(ClusterKwargs::new().resources([("GPU", 1.0)])))]
    fn needs_gpu() -> u32 {
        annotate()
            .resources([("GPU", 1.0)])
            .run(|| nap.submit(3, 10))
            .result()
            .unwrap()
    }
    assert_eq!(needs_gpu().unwrap(), 3);
}

//! Dask annotations: priority and resources.
//!
//! On a cluster of one single-threaded worker that offers `{"GPU": 1,
//! "process": 1}`:
//! - while a first task holds the worker, low- and high-priority tasks
//!   queue up; the high ones run first, each group in submission order;
//! - a task that needs `{"GPU": 1}` runs where a GPU is free;
//! - tasks that each need `{"process": 1}` run one at a time.

use std::time::Duration;

use flowrun::dask::{annotate, ClusterKwargs, DaskTaskRunner};
use flowrun::{flow, task};

#[task]
fn show(label: String, millis: u64) -> String {
    std::thread::sleep(Duration::from_millis(millis));
    println!("{label}");
    label
}

#[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(
    ClusterKwargs::new().n_workers(1).threads_per_worker(1).resources([("GPU", 1.0), ("process", 1.0)])
))]
fn annotated() -> Vec<String> {
    let first = show.submit("first (holds the only worker)", 300);
    while !first.run_ref().state().is_running() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut futures = vec![first];
    for i in 0..3 {
        futures.push(
            annotate()
                .priority(-10)
                .run(|| show.submit(format!("low priority {i}"), 0)),
        );
        futures.push(
            annotate()
                .priority(10)
                .run(|| show.submit(format!("high priority {i}"), 0)),
        );
    }
    futures.push(
        annotate()
            .resources([("GPU", 1.0)])
            .run(|| show.submit("needs a GPU", 0)),
    );
    let _one_at_a_time = annotate().resources([("process", 1.0)]).enter();
    for i in 0..3 {
        futures.push(show.submit(format!("holds the process resource {i}"), 100));
    }
    flowrun::results(futures).expect("no task fails")
}

fn main() {
    annotated().expect("flow failed");
}

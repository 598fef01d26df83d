//! A temporary cluster of 4 worker processes with 2 threads each: eight
//! half-second tasks at a time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flowrun::dask::{current_cluster, ClusterKwargs, DaskTaskRunner};
use flowrun::{flow, task};

#[task]
fn where_am_i(i: u32) -> (u32, String) {
    std::thread::sleep(Duration::from_millis(500));
    let thread = std::thread::current().name().unwrap_or("?").to_owned();
    (std::process::id(), format!("task {i} on {thread}"))
}

#[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(4).threads_per_worker(2)))]
fn spread(n: u32) -> BTreeSet<u32> {
    let cluster = current_cluster().expect("a DaskTaskRunner flow has a cluster");
    println!("{}", cluster.describe());
    let results = flowrun::results(where_am_i.map(0..n).unwrap()).unwrap();
    results.into_iter().map(|(pid, _)| pid).collect()
}

fn main() {
    let started = Instant::now();
    let pids = spread(16).expect("flow failed");
    println!(
        "16 tasks of 0.5 s ran in {} worker processes in {:.1} s",
        pids.len(),
        started.elapsed().as_secs_f64()
    );
}

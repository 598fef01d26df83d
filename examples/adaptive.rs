//! Adaptive scaling: 40 tasks of 0.5 s on a cluster that scales between 1
//! and 4 workers. The cluster logs each change of its worker count; the
//! flow prints the timeline at the end.

use std::time::{Duration, SystemTime};

use flowrun::dask::{current_cluster, AdaptKwargs, DaskTaskRunner};
use flowrun::{flow, task};

#[task]
fn work(i: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(500));
    i
}

#[flow(task_runner = DaskTaskRunner::new().adapt_kwargs(AdaptKwargs::new().minimum(1).maximum(4).wait_count(2)))]
fn burst() -> Vec<(SystemTime, usize)> {
    let futures: Vec<_> = (0..40).map(|i| work.submit(i)).collect();
    let done = flowrun::results(futures).expect("no task fails");
    assert_eq!(done.len(), 40);
    // Idle now: after `wait_count` checks the cluster shrinks to its minimum.
    std::thread::sleep(Duration::from_secs(3));
    current_cluster()
        .unwrap()
        .status()
        .unwrap()
        .worker_count_history
}

fn main() {
    let history = burst().expect("flow failed");
    let start = history
        .first()
        .map(|(t, _)| *t)
        .unwrap_or_else(SystemTime::now);
    println!("workers over time:");
    for (t, n) in history {
        let at = t.duration_since(start).unwrap_or_default().as_secs_f64();
        println!("  +{at:5.2} s  {n} worker{}", if n == 1 { "" } else { "s" });
    }
}

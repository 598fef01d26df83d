//! How flowrun's cost grows with the number of tasks, on the local cluster
//! (and the thread pool for reference): time and flow-process memory for
//! 1k, 10k, 100k and 1M no-op tasks; memory while a million tasks stream
//! through with their results consumed as they finish; and a layered DAG of
//! 100k tasks with dependencies against as many independent tasks.
//!
//! `cargo bench --bench scale` runs everything (a few minutes);
//! `cargo bench --bench scale -- growth dask` or `-- stream` or `-- dag`
//! runs one part. Console logging is off.

mod common;

use std::time::Instant;

use flowrun::{flow, task, TaskFuture};
use flowrun_dask::DaskTaskRunner;

#[task]
fn noop(i: u64) -> u64 {
    i
}

#[task]
fn combine(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

/// Resident and peak resident memory of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Submits all `n`, then reads every result.
#[flow]
fn all_at_once(n: u64) -> u64 {
    let futures: Vec<_> = (0..n).map(|i| noop.submit(i)).collect();
    futures.into_iter().map(|f| f.into_result().unwrap()).sum()
}

/// Keeps `window` runs in flight, reading results as they finish; samples
/// memory every `sample_every` finished runs.
#[flow]
fn streaming(n: u64, window: u64, sample_every: u64) -> Vec<(u64, u64)> {
    let mut in_flight = std::collections::VecDeque::new();
    let mut samples = Vec::new();
    let mut done = 0u64;
    for i in 0..n {
        in_flight.push_back(noop.submit(i));
        if in_flight.len() as u64 >= window {
            let f: TaskFuture<u64> = in_flight.pop_front().unwrap();
            f.into_result().unwrap();
            done += 1;
            if done.is_multiple_of(sample_every) {
                samples.push((done, memory().0));
            }
        }
    }
    for f in in_flight {
        f.into_result().unwrap();
    }
    samples
}

/// `layers` layers of `width` tasks; each task depends on two tasks of the
/// layer before.
#[flow]
fn layered(width: u64, layers: u64) -> u64 {
    let mut prev: Vec<TaskFuture<u64>> = (0..width).map(|i| noop.submit(i)).collect();
    for _ in 1..layers {
        let next = (0..width as usize)
            .map(|i| combine.submit(&prev[i], &prev[(i + 1) % width as usize]))
            .collect();
        prev = next;
    }
    prev.into_iter()
        .map(|f| f.into_result().unwrap())
        .fold(0, u64::wrapping_add)
}

fn growth(label: &str, runner: impl Fn() -> Option<DaskTaskRunner>) {
    println!("{label}: cost growth (submit all, then read all results)");
    println!(
        "  {:>9}  {:>10}  {:>10}  {:>14}  {:>16}",
        "tasks", "time s", "µs/task", "peak RSS MB", "RSS bytes/task"
    );
    for n in [1_000u64, 10_000, 100_000, 1_000_000] {
        // Reset the peak to the current resident size, so that each row's
        // peak is its own and not an earlier row's (Linux: "5" resets VmHWM).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let before = memory().0;
        let started = Instant::now();
        let flow = match runner() {
            Some(r) => all_at_once.with_runner(r),
            None => all_at_once,
        };
        let sum = flow.call(n).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(sum, n * (n - 1) / 2);
        let (_, peak) = memory();
        println!(
            "  {n:>9}  {:>10.3}  {:>10.2}  {:>14.1}  {:>16.0}",
            elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / n as f64,
            peak as f64 / 1e6,
            peak.saturating_sub(before) as f64 / n as f64
        );
    }
}

fn stream() {
    let n = 1_000_000;
    println!("local cluster: {n} tasks streamed, 10,000 in flight, results read as they finish");
    let started = Instant::now();
    let samples = streaming
        .with_runner(DaskTaskRunner::default())
        .call(n, 10_000, 100_000)
        .unwrap();
    let elapsed = started.elapsed();
    for (done, rss) in &samples {
        println!(
            "  after {done:>9} finished: RSS {:>7.1} MB",
            *rss as f64 / 1e6
        );
    }
    let first = samples.first().map_or(0, |s| s.1) as f64;
    let last = samples.last().map_or(0, |s| s.1) as f64;
    println!(
        "  {:.1} s, {:.2} µs/task; RSS from the first to the last sample: {:+.1} MB",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / n as f64,
        (last - first) / 1e6
    );
}

fn dag() {
    let (width, layers) = (1_000u64, 100u64);
    let n = width * layers;
    println!("local cluster: a DAG of {layers} layers x {width} tasks (each on two of the layer before) vs {n} independent tasks");
    for round in 0..3 {
        let started = Instant::now();
        all_at_once
            .with_runner(DaskTaskRunner::default())
            .call(n)
            .unwrap();
        let independent = started.elapsed();
        let started = Instant::now();
        layered
            .with_runner(DaskTaskRunner::default())
            .call(width, layers)
            .unwrap();
        let with_deps = started.elapsed();
        println!(
            "  round {round}: independent {:.3} s ({:.2} µs/task), DAG {:.3} s ({:.2} µs/task): {:.2}x",
            independent.as_secs_f64(),
            independent.as_secs_f64() * 1e6 / n as f64,
            with_deps.as_secs_f64(),
            with_deps.as_secs_f64() * 1e6 / n as f64,
            with_deps.as_secs_f64() / independent.as_secs_f64()
        );
    }
}

fn main() {
    std::env::set_var("FLOWRUN_LOG", "off");
    let args = common::args();
    let wants = |part: &str| args.is_empty() || args.iter().any(|a| a == part);
    if wants("growth") {
        if args.is_empty()
            || args.iter().any(|a| a == "dask")
            || !args.iter().any(|a| a == "thread")
        {
            growth("local cluster", || Some(DaskTaskRunner::default()));
        }
        if args.is_empty() || args.iter().any(|a| a == "thread") {
            growth("thread pool", || None);
        }
    }
    if wants("stream") {
        stream();
    }
    if wants("dag") {
        dag();
    }
}

//! Per-task overhead of flowrun: submit + result of no-op tasks, measured
//! as wall time per task over whole batches (median of several batches).
//!
//! `cargo bench --bench overhead` prints one line per configuration.
//! `cargo bench --bench overhead -- thread 100000` runs one of them;
//! `-- history 100000` the local cluster with the run history on and off,
//! interleaved.
//! Console logging is switched off (`FLOWRUN_LOG=off`) so the figure is
//! the runtime's cost, not the terminal's.

mod common;

use std::time::{Duration, Instant};

use flowrun::{flow, task, ThreadPoolTaskRunner};
use flowrun_dask::DaskTaskRunner;

#[task]
fn noop(i: u64) -> u64 {
    i
}

#[flow]
fn submit_and_gather(n: u64) -> u64 {
    let futures: Vec<_> = (0..n).map(|i| noop.submit(i)).collect();
    let mut sum = 0;
    for f in futures {
        sum += f.into_result().unwrap();
    }
    sum
}

/// Time from the flow call to the first task result, and from there to the
/// flow's return (the cluster's teardown).
#[flow]
fn first_result(called: u128) -> (u128, u128) {
    let _ = noop.submit(0).result().unwrap();
    (called, now_ns())
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn startup(label: &str, runs: usize, runner: impl Fn() -> DaskTaskRunner) {
    let mut starts = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..runs {
        let called = now_ns();
        let (called, first) = first_result.with_runner(runner()).call(called).unwrap();
        let returned = now_ns();
        starts.push(Duration::from_nanos((first - called) as u64));
        stops.push(Duration::from_nanos((returned - first) as u64));
    }
    starts.sort();
    stops.sort();
    println!(
        "{label:<28} start-up to first result: median {:>6.1} ms (min {:.1}, max {:.1}); teardown median {:.1} ms, {runs} runs",
        starts[runs / 2].as_secs_f64() * 1e3,
        starts[0].as_secs_f64() * 1e3,
        starts[runs - 1].as_secs_f64() * 1e3,
        stops[runs / 2].as_secs_f64() * 1e3,
    );
}

fn measure(label: &str, n: u64, runs: usize, run: impl Fn(u64) -> u64) {
    let expected = n * (n - 1) / 2;
    assert_eq!(
        run(n.min(1000)),
        n.min(1000) * (n.min(1000) - 1) / 2,
        "warm-up"
    );
    let mut per_task: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            assert_eq!(run(n), expected);
            started.elapsed() / n as u32
        })
        .collect();
    per_task.sort();
    let median = per_task[runs / 2];
    println!(
        "{label:<28} {n:>7} tasks  median {:>6.2} µs/task  (min {:.2}, max {:.2}, {runs} runs)",
        median.as_secs_f64() * 1e6,
        per_task[0].as_secs_f64() * 1e6,
        per_task[runs - 1].as_secs_f64() * 1e6,
    );
}

/// [`measure`] with the run history on (the default) and off, interleaved
/// run by run (on/off, then off/on, ...), so both see the same machine.
fn measure_history(label: &str, n: u64, runs: usize, run: impl Fn(u64) -> u64) {
    let expected = n * (n - 1) / 2;
    let warm = n.min(1000);
    assert_eq!(run(warm), warm * (warm - 1) / 2, "warm-up");
    let timed = |on: bool| {
        flowrun::history::set_recording(on);
        let started = Instant::now();
        assert_eq!(run(n), expected);
        started.elapsed() / n as u32
    };
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..runs {
        common::alternate(round, || on.push(timed(true)), || off.push(timed(false)));
    }
    flowrun::history::set_recording(true);
    on.sort();
    off.sort();
    for (what, v) in [("history on", &on), ("history off", &off)] {
        println!(
            "{label:<28} {n:>7} tasks  {what:<11} median {:>6.2} µs/task  (min {:.2}, max {:.2}, {runs} runs)",
            v[runs / 2].as_secs_f64() * 1e6,
            v[0].as_secs_f64() * 1e6,
            v[runs - 1].as_secs_f64() * 1e6,
        );
    }
    println!(
        "{label:<28} {n:>7} tasks  on/off {:.3}x (medians, on and off interleaved)",
        on[runs / 2].as_secs_f64() / off[runs / 2].as_secs_f64()
    );
}

fn main() {
    std::env::set_var("FLOWRUN_LOG", "off");
    let args = common::args();
    let only = args.first().cloned();
    let sizes: Vec<u64> = match args.get(1) {
        Some(n) => vec![n.parse().expect("a task count")],
        None => vec![10_000, 100_000],
    };
    let wants = |name: &str| only.as_deref().is_none_or(|o| name.starts_with(o));
    if wants("dask") {
        startup("dask local cluster (2 x 1)", 11, || {
            DaskTaskRunner::new().cluster_kwargs(
                flowrun_dask::ClusterKwargs::new()
                    .n_workers(2)
                    .threads_per_worker(1),
            )
        });
        for &n in &sizes {
            let dask = submit_and_gather.with_runner(DaskTaskRunner::default());
            measure("dask local cluster (default)", n, 5, |n| {
                dask.call(n).unwrap()
            });
        }
    }
    if wants("history") {
        // `-- history`: the local cluster's overhead with the run history
        // on and off, interleaved in this process.
        for &n in &sizes {
            let dask = submit_and_gather.with_runner(DaskTaskRunner::default());
            measure_history("dask local cluster (default)", n, 7, |n| {
                dask.call(n).unwrap()
            });
        }
    }
    if wants("thread") {
        for &n in &sizes {
            measure("thread pool (default)", n, 7, |n| {
                submit_and_gather(n).unwrap()
            });
        }
        for &n in &sizes {
            let two = submit_and_gather.with_runner(ThreadPoolTaskRunner::new(2));
            measure("thread pool (2 workers)", n, 7, |n| two.call(n).unwrap());
        }
    }
}

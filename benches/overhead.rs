//! Per-task overhead of flowrun: submit + result of no-op tasks, measured
//! as wall time per task over whole batches (median of several batches).
//!
//! `cargo bench --bench overhead` prints one line per configuration.
//! `cargo bench --bench overhead -- thread 100000` runs one of them.
//! Console logging is switched off (`FLOWRUN_LOG=off`) so the figure is
//! the runtime's cost, not the terminal's.

use std::time::{Duration, Instant};

use flowrun::{flow, task, ThreadPoolTaskRunner};

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

fn main() {
    std::env::set_var("FLOWRUN_LOG", "off");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let only = args.first().cloned();
    let sizes: Vec<u64> = match args.get(1) {
        Some(n) => vec![n.parse().expect("a task count")],
        None => vec![10_000, 100_000],
    };
    let wants = |name: &str| only.as_deref().is_none_or(|o| name.starts_with(o));
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

//! What caching costs and saves, on the thread pool:
//!
//! 1. 10,000 no-op tasks executed (no caching), 10,000 cache misses (key,
//!    lookup, execution, result file written) and 10,000 cache hits (key,
//!    lookup, result file read; no execution), interleaved round by round
//!    in one process; per-task medians and the hit/execute ratio.
//! 2. Resume: a 10,000-task DAG (100 chains of 100 steps) in a child
//!    process (this program again) killed with SIGKILL half way, then
//!    rerun: how many tasks completed before the kill executed again
//!    (counted by the tasks, one line each in a log file).
//!
//! `cargo bench --bench cache` runs both; `-- hits` or `-- resume` one; a
//! second argument sets the task count of part 1. Console logging and the
//! run history are off; result files go to temporary folders.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowrun::{flow, task, TaskOptions};

#[path = "../tests/cached_chains/mod.rs"]
mod cached_chains;
mod common;

#[task]
fn noop(i: u64) -> u64 {
    i
}

#[task(cache_policy = INPUTS + TASK_SOURCE)]
fn cached_noop(i: u64) -> u64 {
    i
}

#[flow]
fn executed(n: u64) -> u64 {
    let futures: Vec<_> = (0..n).map(|i| noop.submit(i)).collect();
    futures.into_iter().map(|f| f.into_result().unwrap()).sum()
}

/// Returns the sum and how many runs were cache hits.
#[flow]
fn cached(n: u64, storage: PathBuf) -> (u64, usize) {
    let task = cached_noop.with_options(TaskOptions::new().result_storage(&storage));
    let futures: Vec<_> = (0..n).map(|i| task.submit(i)).collect();
    let hits = futures.iter().filter(|f| f.state().is_cached()).count();
    let sum = futures.into_iter().map(|f| f.into_result().unwrap()).sum();
    (sum, hits)
}

fn per_task(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn hits(n: u64) {
    let root = tempfile::tempdir().unwrap();
    let warm = root.path().join("warm");
    // Fills the storage the hit rounds read.
    assert_eq!(cached(n, warm.clone()).unwrap().1, 0);
    let (mut ex, mut miss, mut hit) = (Vec::new(), Vec::new(), Vec::new());
    let rounds = 7;
    for round in 0..rounds {
        let fresh = root.path().join(format!("fresh-{round}"));
        // The order rotates so that no kind always runs first.
        for kind in (0..3).map(|k| (k + round) % 3) {
            let t = Instant::now();
            match kind {
                0 => {
                    executed(n).unwrap();
                    ex.push(t.elapsed());
                }
                1 => {
                    let (_, h) = cached(n, fresh.clone()).unwrap();
                    miss.push(t.elapsed());
                    assert_eq!(h, 0);
                }
                _ => {
                    let (_, h) = cached(n, warm.clone()).unwrap();
                    hit.push(t.elapsed());
                    assert_eq!(h as u64, n, "every run a hit");
                }
            }
        }
        std::fs::remove_dir_all(&fresh).unwrap();
    }
    let (ex, miss, hit) = (
        common::median(ex),
        common::median(miss),
        common::median(hit),
    );
    println!("{n} tasks, thread pool, median of {rounds} interleaved rounds:");
    println!(
        "  executed, no caching:     {:>8.2} µs/task",
        per_task(ex, n)
    );
    println!(
        "  cache miss (run + write): {:>8.2} µs/task ({:.2}x executed)",
        per_task(miss, n),
        miss.as_secs_f64() / ex.as_secs_f64()
    );
    println!(
        "  cache hit (no execution): {:>8.2} µs/task ({:.2}x executed)",
        per_task(hit, n),
        hit.as_secs_f64() / ex.as_secs_f64()
    );
}

// ------------------------------------------------------------------ resume

const CHAINS: u64 = 100;
const DEPTH: u64 = 100;

#[flow]
fn dag(storage: PathBuf, log: String) -> u64 {
    let ends = cached_chains::submit_chains(&storage, &log, CHAINS, DEPTH, 0);
    ends.into_iter().map(|f| f.into_result().unwrap()).sum()
}

fn child(dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env("FLOWRUN_CACHE_BENCH_CHILD", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn resume() {
    let total = (CHAINS * DEPTH) as usize;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log").display().to_string();
    let storage = dir.path().join("storage");
    let mut first = child(dir.path());
    while common::lines(&log).len() < total / 2 {
        assert!(first.try_wait().unwrap().is_none(), "ended before the kill");
        std::thread::sleep(Duration::from_millis(1));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let executed_before = common::lines(&log).len();
    let completed: std::collections::HashSet<String> =
        cached_chains::completed(&storage).into_iter().collect();
    let t = Instant::now();
    assert!(child(dir.path()).wait().unwrap().success());
    let rerun_time = t.elapsed();
    let all = common::lines(&log);
    let rerun = &all[executed_before..];
    let again = rerun.iter().filter(|n| completed.contains(*n)).count();
    println!("resume, {total}-task DAG ({CHAINS} chains x {DEPTH} steps), SIGKILL half way:");
    println!(
        "  before the kill: {executed_before} executed, {} completed (result persisted)",
        completed.len()
    );
    println!(
        "  rerun: {} executed, {} cache hits, {again} completed tasks executed again, {:.2} s",
        rerun.len(),
        total - rerun.len(),
        rerun_time.as_secs_f64()
    );
    assert_eq!(again, 0);
}

fn main() {
    std::env::set_var("FLOWRUN_LOG", "off");
    std::env::set_var("FLOWRUN_HISTORY", "off");
    if let Some(dir) = std::env::var_os("FLOWRUN_CACHE_BENCH_CHILD") {
        let dir = PathBuf::from(dir);
        let log = dir.join("log").display().to_string();
        let want = cached_chains::chains_total(CHAINS, DEPTH);
        assert_eq!(dag(dir.join("storage"), log).unwrap(), want);
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let which = args.first().map(String::as_str);
    let n = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    if matches!(which, None | Some("hits")) {
        hits(n);
    }
    if matches!(which, None | Some("resume")) {
        resume();
    }
}

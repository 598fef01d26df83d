//! What recording the run history costs: 100,000 no-op tasks with history
//! on and off, interleaved in one process (on/off, then off/on, ...), on the
//! thread pool and on the local cluster: when the flow call returns, when
//! its records are committed (the writer works on in the background), the
//! CPU time of the process's threads (the cluster's workers excluded), and
//! the CPU time of the flow's threads until it returned (the history's
//! writer excluded: on a loaded machine this varies less than the wall
//! clock).
//!
//! `cargo bench --bench history` runs both; `-- thread` or `-- dask` one;
//! a second argument sets the task count, a third (`on` or `off`) runs
//! only that side's rounds (for a profiler: `valgrind --tool=callgrind`
//! or `perf record` of one side against the other). Console logging is
//! off (`FLOWRUN_LOG=off`), and the home is a temporary folder.
//!
//! It also prints the page faults of the flow's threads: the memory a
//! task run touches for the first time (the recording's queue blocks are
//! most of it), a count that does not depend on the machine's load.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use flowrun::{flow, task};
use flowrun_dask::DaskTaskRunner;

#[task]
fn noop(i: u64) -> u64 {
    i
}

#[flow]
fn submit_and_gather(n: u64) -> u64 {
    let futures: Vec<_> = (0..n).map(|i| noop.submit(i)).collect();
    futures.into_iter().map(|f| f.into_result().unwrap()).sum()
}

/// CPU time of every thread of this process so far (user + system).
fn cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Minor page faults of every thread of this process so far.
fn faults() -> u64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    usage.ru_minflt as u64
}

/// Sums, over the history's writer threads, `pick` of the text of their
/// `/proc/self/task/<tid>/<file>`.
fn writer_sum(file: &str, pick: impl Fn(&str) -> Option<u64>) -> u64 {
    let mut sum = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != "flowrun-history" {
                continue;
            }
            let text = std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
            sum += pick(&text).unwrap_or(0);
        }
    }
    sum
}

/// CPU time so far of this process's threads other than the history's
/// writer: the flow's own threads (those of finished flows included),
/// whose time a loaded machine stretches less than the wall clock. The
/// writer's time is read from its `/proc/self/task/*/schedstat`
/// (nanoseconds on a CPU).
fn flow_cpu() -> Duration {
    let writer = writer_sum("schedstat", |s| s.split_whitespace().next()?.parse().ok());
    cpu().saturating_sub(Duration::from_nanos(writer))
}

/// Minor page faults so far of this process's threads other than the
/// history's writer (its `/proc/self/task/*/stat`, the 10th field).
fn flow_faults() -> u64 {
    let writer = writer_sum("stat", |s| {
        // After the parenthesized name: state is field 3, minflt field 10.
        s.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(7)?
            .parse()
            .ok()
    });
    faults().saturating_sub(writer)
}

/// One flow call: when it returned, when its records were committed (the
/// writer works on after the flow returns), the CPU time spent by then,
/// all threads of this process, and the CPU time of the flow's threads
/// (all but the writer) until it returned.
struct Sample {
    returned: Duration,
    committed: Duration,
    cpu: Duration,
    flow_cpu: Duration,
    /// Minor page faults of the flow's threads until it returned.
    flow_faults: u64,
}

fn timed(on: bool, home: &Path, run: &impl Fn() -> u64) -> Sample {
    flowrun::history::set_recording(on);
    let (faults0, started, cpu0, flow0) = (flow_faults(), Instant::now(), cpu(), flow_cpu());
    run();
    let returned = started.elapsed();
    let flow_cpu = flow_cpu().saturating_sub(flow0);
    let flow_faults = flow_faults().saturating_sub(faults0);
    flowrun::history::flush(home);
    Sample {
        returned,
        committed: started.elapsed(),
        cpu: cpu() - cpu0,
        flow_cpu,
        flow_faults,
    }
}

/// Which sides of the comparison run.
#[derive(Clone, Copy)]
enum Sides {
    Both,
    On,
    Off,
}

fn compare(label: &str, n: u64, rounds: usize, sides: Sides, home: &Path, run: impl Fn() -> u64) {
    let (with_on, with_off) = match sides {
        Sides::Both => (true, true),
        Sides::On => (true, false),
        Sides::Off => (false, true),
    };
    // Warm-up: thread start-up, the database file and its schema.
    timed(true, home, &run);
    timed(false, home, &run);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        common::alternate(
            round,
            || on.extend(with_on.then(|| timed(true, home, &run))),
            || off.extend(with_off.then(|| timed(false, home, &run))),
        );
    }
    if !(with_on && with_off) {
        let side = if with_on { &on } else { &off };
        let returned = common::median(side.iter().map(|s| s.returned).collect());
        let flow_cpu = common::median(side.iter().map(|s| s.flow_cpu).collect());
        println!(
            "{label:<20} {n:>7} tasks  history {} only: flow returned {:.1} ms, flow threads' CPU {:.1} ms (medians of {rounds} rounds)",
            if with_on { "on" } else { "off" },
            returned.as_secs_f64() * 1e3,
            flow_cpu.as_secs_f64() * 1e3,
        );
        return;
    }
    let per_task = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let line = |what: &str, f: fn(&Sample) -> Duration| {
        let a = common::median(on.iter().map(f).collect());
        let b = common::median(off.iter().map(f).collect());
        println!(
            "{label:<20} {n:>7} tasks  {what:<17} on {:>7.1} ms ({:>5.2} µs/task)  off {:>7.1} ms ({:>5.2} µs/task)  on/off {:.3}x",
            a.as_secs_f64() * 1e3,
            per_task(a),
            b.as_secs_f64() * 1e3,
            per_task(b),
            a.as_secs_f64() / b.as_secs_f64(),
        );
    };
    line("flow returned", |s| s.returned);
    line("records committed", |s| s.committed);
    line("CPU time", |s| s.cpu);
    line("flow threads' CPU", |s| s.flow_cpu);
    let faults = |v: &[Sample]| {
        let mut f: Vec<u64> = v.iter().map(|s| s.flow_faults).collect();
        f.sort_unstable();
        f[f.len() / 2]
    };
    let (a, b) = (faults(&on), faults(&off));
    println!(
        "{label:<20} {n:>7} tasks  {:<17} on {a:>9} ({:>5.3} /task)  off {b:>9} ({:>5.3} /task)  on - off {:.3} /task",
        "flow page faults",
        a as f64 / n as f64,
        b as f64 / n as f64,
        (a as f64 - b as f64) / n as f64,
    );
    println!("{label:<20} (medians of {rounds} rounds, on and off interleaved)");
}

fn main() {
    // Worker processes of the local cluster are this program started again:
    // they divert here, before making a home of their own.
    flowrun::worker::divert_if_worker();
    std::env::set_var("FLOWRUN_LOG", "off");
    let args = common::args();
    let only = args.first().cloned();
    let n: u64 = args
        .get(1)
        .map_or(100_000, |a| a.parse().expect("a task count"));
    let sides = match args.get(2).map(String::as_str) {
        None => Sides::Both,
        Some("on") => Sides::On,
        Some("off") => Sides::Off,
        Some(other) => panic!("the third argument is `on` or `off`, not {other:?}"),
    };
    let wants = |name: &str| only.as_deref().is_none_or(|o| name.starts_with(o));
    let home = flowrun::history::temp_home();
    if wants("thread") {
        compare("thread pool", n, 9, sides, home.path(), || {
            submit_and_gather(n).unwrap()
        });
    }
    if wants("dask") {
        let dask = submit_and_gather.with_runner(DaskTaskRunner::default());
        compare("dask local cluster", n, 5, sides, home.path(), || {
            dask.call(n).unwrap()
        });
    }
    let store = flowrun::history::Store::open(home.path()).expect("the history");
    let recorded = store.runs(&Default::default()).expect("the runs");
    assert!(
        recorded.iter().all(|r| r.tasks.completed == n as i64),
        "every recorded run has all its task runs"
    );
}

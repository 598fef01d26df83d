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
//!
//! `-- share` runs instead four flow processes (this program started again)
//! at once on one fresh home, each a flow of 10,000 no-op tasks (a second
//! argument sets the count) on the thread pool, with history on and, for
//! the ratio, off (`FLOWRUN_HISTORY=off`), interleaved over 9 rounds (a
//! third argument sets them). It prints the wall time from starting the
//! four to the last one's exit (a process exits once its records are
//! committed), the longest of their flow calls, the rows found in the home (flow runs,
//! task runs of each, their state entries) and the errors: a process that
//! failed, and any warning, error, panic or "database is locked" it
//! printed (its console shows warnings and errors). It fails when a row
//! is missing or there is an error.

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

/// Set in the flow processes of `-- share`: their task count.
const SHARE_CHILD: &str = "FLOWRUN_BENCH_SHARE_TASKS";

/// A flow process of `-- share`: one flow of `n` no-op tasks recording
/// into `FLOWRUN_HOME` (unless `FLOWRUN_HISTORY=off`), then exit, which
/// waits for its records to be committed.
fn share_child(n: u64) {
    let started = Instant::now();
    let total = submit_and_gather(n).expect("the flow runs");
    let flow = started.elapsed();
    assert_eq!(total, n * n.saturating_sub(1) / 2, "every task's value");
    println!("FLOW OK {}", flow.as_micros());
}

/// One round of `-- share`: four flow processes of `n` tasks at once on a
/// fresh home, history on or off.
struct ShareRound {
    wall: Duration,
    /// The longest flow call of the four (each process's own clock).
    flow: Duration,
    flow_runs: i64,
    /// Flow runs whose task runs are all there, all Completed.
    whole_flow_runs: i64,
    task_runs: i64,
    state_entries: i64,
    errors: Vec<String>,
}

const SHARE_PROCESSES: usize = 4;

fn share_round(n: u64, on: bool) -> ShareRound {
    let home = tempfile::Builder::new()
        .prefix("flowrun-bench-share-")
        .tempdir()
        .expect("a temporary home");
    let started = Instant::now();
    let children: Vec<_> = (0..SHARE_PROCESSES)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().expect("this program"))
                .env(SHARE_CHILD, n.to_string())
                .env("FLOWRUN_HOME", home.path())
                .env("FLOWRUN_HISTORY", if on { "on" } else { "off" })
                .env("FLOWRUN_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("a flow process")
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("the flow process's output"))
        .collect();
    let wall = started.elapsed();
    let mut errors = Vec::new();
    let mut flow = Duration::ZERO;
    for (i, out) in outputs.iter().enumerate() {
        if !out.status.success() {
            errors.push(format!("process {i} exited with {}", out.status));
        }
        let printed = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        for line in printed.lines() {
            let lower = line.to_ascii_lowercase();
            let bad = ["warning", "error", "panicked", "locked"]
                .iter()
                .any(|w| lower.contains(w));
            if bad {
                errors.push(format!("process {i}: {line}"));
            }
        }
        match printed
            .lines()
            .find_map(|l| l.strip_prefix("FLOW OK "))
            .and_then(|us| us.parse().ok())
        {
            Some(us) => flow = flow.max(Duration::from_micros(us)),
            None => errors.push(format!("process {i} did not finish its flow")),
        }
    }
    let db_path = flowrun::history::database_path(home.path());
    let (mut flow_runs, mut whole_flow_runs, mut task_runs, mut state_entries) = (0, 0, 0, 0);
    if db_path.exists() {
        let db = rusqlite::Connection::open(&db_path).expect("the database");
        let one = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).expect(sql) };
        flow_runs = one("SELECT count(*) FROM flow_runs");
        whole_flow_runs = one(&format!(
            "SELECT count(*) FROM flow_runs f WHERE f.state = 'Completed' AND \
             (SELECT count(*) FROM task_runs t WHERE t.flow_run = f.seq AND t.state = 'Completed') = {n}"
        ));
        task_runs = one("SELECT count(*) FROM task_runs");
        state_entries = one("SELECT coalesce(sum(json_array_length(history)), 0) FROM task_runs");
    }
    ShareRound {
        wall,
        flow,
        flow_runs,
        whole_flow_runs,
        task_runs,
        state_entries,
        errors,
    }
}

/// `-- share`: four processes on one home, history on against off.
fn share(n: u64, rounds: usize) {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        common::alternate(
            round,
            || on.push(share_round(n, true)),
            || off.push(share_round(n, false)),
        );
    }
    let procs = SHARE_PROCESSES as i64;
    let n = n as i64;
    let mut failed = false;
    for (round, (a, b)) in on.iter().zip(&off).enumerate() {
        let rows_ok = a.flow_runs == procs
            && a.whole_flow_runs == procs
            && a.task_runs == procs * n
            && a.state_entries == 3 * procs * n
            && b.flow_runs == 0;
        let errors = a.errors.len() + b.errors.len();
        failed |= !rows_ok || errors > 0;
        println!(
            "share round {round}: {procs} processes x {n} tasks  on {:>5.0} ms (flow {:>4.0})  off {:>5.0} ms (flow {:>4.0})  on/off {:.2}x  \
             rows: {} flow runs ({} whole), {} task runs, {} state entries{}  errors: {errors}",
            a.wall.as_secs_f64() * 1e3,
            a.flow.as_secs_f64() * 1e3,
            b.wall.as_secs_f64() * 1e3,
            b.flow.as_secs_f64() * 1e3,
            a.wall.as_secs_f64() / b.wall.as_secs_f64(),
            a.flow_runs,
            a.whole_flow_runs,
            a.task_runs,
            a.state_entries,
            if rows_ok { " (all present)" } else { " (MISSING ROWS)" },
        );
        for e in a.errors.iter().chain(&b.errors) {
            println!("  {e}");
        }
    }
    let medians = |what: &str, f: fn(&ShareRound) -> Duration| {
        let a = common::median(on.iter().map(f).collect());
        let b = common::median(off.iter().map(f).collect());
        println!(
            "share: {procs} processes x {n} tasks on one home, {what:<27} on {:>6.0} ms  off {:>6.0} ms  on/off {:.2}x (medians of {rounds} rounds, interleaved)",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            a.as_secs_f64() / b.as_secs_f64(),
        );
    };
    medians("start to last exit", |r| r.wall);
    medians("slowest flow call", |r| r.flow);
    assert!(
        !failed,
        "rows were missing or a process had an error (above)"
    );
}

fn main() {
    // Worker processes of the local cluster are this program started again:
    // they divert here, before making a home of their own.
    flowrun::worker::divert_if_worker();
    if let Some(n) = std::env::var_os(SHARE_CHILD) {
        let n = n
            .to_str()
            .and_then(|n| n.parse().ok())
            .expect("a task count");
        share_child(n);
        return;
    }
    std::env::set_var("FLOWRUN_LOG", "off");
    let args = common::args();
    let only = args.first().cloned();
    if only.as_deref() == Some("share") {
        let n = args
            .get(1)
            .map_or(10_000, |a| a.parse().expect("a task count"));
        let rounds = args.get(2).map_or(9, |a| a.parse().expect("a round count"));
        share(n, rounds);
        return;
    }
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
        recorded.iter().all(|r| r.tasks.completed == n),
        "every recorded run has all its task runs"
    );
}

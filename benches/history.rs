//! What recording the run history costs: 100,000 no-op tasks with history
//! on and off, interleaved in one process (on/off, then off/on, ...), on the
//! thread pool and on the local cluster. The flow's wall time includes
//! waiting at its end until its records are committed.
//!
//! `cargo bench --bench history` runs both; `-- thread` or `-- dask` one;
//! a second argument sets the task count. Console logging is off
//! (`FLOWRUN_LOG=off`), and the home is a temporary folder.

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

/// Wall time and this process's CPU time of one flow call.
fn timed(on: bool, run: &impl Fn() -> u64) -> (Duration, Duration) {
    flowrun::history::set_recording(on);
    let (started, cpu0) = (Instant::now(), cpu());
    run();
    (started.elapsed(), cpu() - cpu0)
}

fn compare(label: &str, n: u64, rounds: usize, run: impl Fn() -> u64) {
    // Warm-up: thread start-up, the database file and its schema.
    timed(true, &run);
    timed(false, &run);
    let (mut on, mut off, mut paired) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_on, mut cpu_off) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            let a = timed(true, &run);
            (a, timed(false, &run))
        } else {
            let b = timed(false, &run);
            (timed(true, &run), b)
        };
        on.push(a.0);
        off.push(b.0);
        cpu_on.push(a.1);
        cpu_off.push(b.1);
        paired.push(a.0.as_secs_f64() / b.0.as_secs_f64());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    paired.sort_by(f64::total_cmp);
    let (m_on, m_off) = (median(&mut on), median(&mut off));
    println!(
        "{label:<22} {n:>7} tasks  history on {:>7.1} ms ({:.2} µs/task)  off {:>7.1} ms ({:.2} µs/task)  on/off {:.3}x (median of {rounds} paired rounds {:.3}x)",
        m_on.as_secs_f64() * 1e3,
        m_on.as_secs_f64() * 1e6 / n as f64,
        m_off.as_secs_f64() * 1e3,
        m_off.as_secs_f64() * 1e6 / n as f64,
        m_on.as_secs_f64() / m_off.as_secs_f64(),
        paired[rounds / 2],
    );
    let (c_on, c_off) = (median(&mut cpu_on), median(&mut cpu_off));
    println!(
        "{:<22} {n:>7} tasks  CPU time (all threads, the writer's included): on {:.2} µs/task, off {:.2} µs/task, on/off {:.3}x",
        "",
        c_on.as_secs_f64() * 1e6 / n as f64,
        c_off.as_secs_f64() * 1e6 / n as f64,
        c_on.as_secs_f64() / c_off.as_secs_f64(),
    );
}

fn main() {
    // Worker processes of the local cluster are this program started again:
    // they divert here, before making a home of their own.
    flowrun::worker::divert_if_worker();
    std::env::set_var("FLOWRUN_LOG", "off");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let only = args.first().cloned();
    let n: u64 = args
        .get(1)
        .map_or(100_000, |a| a.parse().expect("a task count"));
    let wants = |name: &str| only.as_deref().is_none_or(|o| name.starts_with(o));
    let home = flowrun::history::temp_home();
    if wants("thread") {
        compare("thread pool", n, 9, || submit_and_gather(n).unwrap());
    }
    if wants("dask") {
        let dask = submit_and_gather.with_runner(DaskTaskRunner::default());
        compare("dask local cluster", n, 5, || dask.call(n).unwrap());
    }
    let store = flowrun::history::Store::open(home.path()).expect("the history");
    let recorded = store.runs(&Default::default()).expect("the runs");
    assert!(
        recorded.iter().all(|r| r.tasks.completed == n as i64),
        "every recorded run has all its task runs"
    );
}

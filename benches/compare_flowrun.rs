//! The flowrun side of `bench/compare`: runs ONE named workload per
//! invocation and prints one machine-readable line,
//! `BENCH {"system": .., "workload": .., "n": .., ...}` (JSON, times in
//! seconds), which `bench/compare` collects next to the same workloads in
//! Prefect and raw Dask.
//!
//! ```text
//! cargo bench --bench compare_flowrun -- <workload> [n]
//! target/release/deps/compare_flowrun-<hash> <workload> [n]
//! ```
//!
//! | workload        | what                                                                  |
//! |-----------------|-----------------------------------------------------------------------|
//! | `noop-dask N`   | submit N no-op tasks, then gather every result (DaskTaskRunner)       |
//! | `noop-thread N` | the same on the default ThreadPoolTaskRunner                          |
//! | `count_to-dask N` / `count_to-thread N` | N tasks sleeping 0.5 s, each printing `#n`    |
//! | `fanout-dask N` / `fanout-thread N`     | N tasks `inc(i)` and one `total` over all of them |
//! | `startup-dask`  | a flow with one no-op task: start → first result → flow returns       |
//!
//! With the Dask runner the worker processes are this program started
//! again with the same arguments; they turn into workers at the first flow
//! call. So `main` only parses its arguments before calling the flow.
//! Console logging is off unless `FLOWRUN_LOG` says otherwise.

mod common;

use std::time::{Duration, Instant};

use flowrun::{flow, task};
use flowrun_dask::DaskTaskRunner;

#[task]
fn noop(i: u64) -> u64 {
    i + 1
}

/// Prints to stdout, as the Python workloads do (the harness counts the
/// `#n` lines): with the console off, a logged print would reach only the
/// run history.
#[task(log_prints = false)]
fn shout(number: u64) {
    std::thread::sleep(Duration::from_millis(500));
    println!("#{number}");
}

#[task]
fn total(values: Vec<u64>) -> u64 {
    values.into_iter().sum()
}

/// Submit + gather timings measured inside a flow.
struct Inner {
    check: u64,
    submit: Duration,
    gather: Duration,
}

/// Times `submit()`, then `gather` of what it submitted, whose result is
/// the workload's check value.
fn timed<S>(submit: impl FnOnce() -> S, gather: impl FnOnce(S) -> u64) -> Inner {
    let t0 = Instant::now();
    let submitted = submit();
    let t1 = Instant::now();
    Inner {
        check: gather(submitted),
        submit: t1 - t0,
        gather: t1.elapsed(),
    }
}

#[flow]
fn submit_and_gather(n: u64) -> Inner {
    timed(
        || (0..n).map(|i| noop.submit(i)).collect::<Vec<_>>(),
        |futures| {
            futures
                .into_iter()
                .map(|f| f.into_result().expect("noop task failed"))
                .sum()
        },
    )
}

#[flow]
fn count_to(n: u64) -> Inner {
    timed(
        || (0..n).map(|i| shout.submit(i)).collect::<Vec<_>>(),
        |futures| {
            for f in &futures {
                f.result().expect("shout task failed");
            }
            futures.len() as u64
        },
    )
}

/// Fan-out of `n` tasks into one reducer. flowrun has no "list of futures"
/// argument, so the flow gathers the values and hands them to the reducer
/// (the pattern of `examples/map_reduce.rs`).
#[flow]
fn fan_out_in(n: u64) -> Inner {
    timed(
        || (0..n).map(|i| noop.submit(i)).collect::<Vec<_>>(),
        |futures| {
            let values = flowrun::results(futures).expect("fan-out task failed");
            total.submit(values).into_result().expect("reducer failed")
        },
    )
}

/// One no-op task; returns its result and when it arrived.
#[flow(task_runner = DaskTaskRunner::default())]
fn startup_dask() -> (u64, Instant) {
    let r = noop.submit(41).into_result().expect("noop task failed");
    (r, Instant::now())
}

fn usage() -> ! {
    eprintln!(
        "usage: compare_flowrun <noop-dask|noop-thread|count_to-dask|count_to-thread|\
         fanout-dask|fanout-thread|startup-dask> [n]"
    );
    std::process::exit(2)
}

fn main() {
    let start = Instant::now();
    // Arguments only: a worker process re-runs main up to the first flow call.
    // (`cargo bench` adds `--bench`; skip dashes.)
    let args = common::args();
    let Some(workload) = args.first().cloned() else {
        // A plain `cargo bench` runs every bench target without arguments:
        // say how this one is used and succeed.
        eprintln!(
            "compare_flowrun: runs one workload per call, for bench/compare \
             (`cargo bench --bench compare_flowrun -- noop-dask 1000`); nothing to do without one"
        );
        return;
    };
    let n: u64 = match args.get(1) {
        Some(s) => s.parse().unwrap_or_else(|_| usage()),
        None => match workload.as_str() {
            "count_to-dask" | "count_to-thread" => 10,
            "startup-dask" => 1,
            _ => 1000,
        },
    };
    if std::env::var_os("FLOWRUN_LOG").is_none() {
        std::env::set_var("FLOWRUN_LOG", "off");
    }

    let (kind, runner) = workload.rsplit_once('-').unwrap_or_else(|| usage());
    let system = match runner {
        "dask" => "flowrun-dask",
        "thread" => "flowrun-thread",
        _ => usage(),
    };

    let dask = DaskTaskRunner::default;
    let call = Instant::now();
    let (inner, first_result) = match workload.as_str() {
        // Each workload is one flow; its `-dask` form runs it on the Dask runner.
        "noop-dask" => (submit_and_gather.with_runner(dask()).call(n), None),
        "noop-thread" => (submit_and_gather(n), None),
        "count_to-dask" => (count_to.with_runner(dask()).call(n), None),
        "count_to-thread" => (count_to(n), None),
        "fanout-dask" => (fan_out_in.with_runner(dask()).call(n), None),
        "fanout-thread" => (fan_out_in(n), None),
        "startup-dask" => {
            let (r, at) = startup_dask().expect("flow failed");
            let inner = Inner {
                check: r,
                submit: Duration::ZERO,
                gather: at - call,
            };
            (Ok(inner), Some(at))
        }
        _ => usage(),
    };
    let inner = inner.expect("flow failed");
    let returned = Instant::now();

    let expected = match kind {
        "noop" | "fanout" => n * (n + 1) / 2,
        "count_to" => n,
        "startup" => 42,
        _ => unreachable!(),
    };
    let ok = inner.check == expected;
    let mut extra = String::new();
    if let Some(at) = first_result {
        extra = format!(
            ", \"first_result_s\": {:.6}, \"teardown_s\": {:.6}",
            (at - call).as_secs_f64(),
            (returned - at).as_secs_f64()
        );
    }
    println!(
        "BENCH {{\"system\": \"{system}\", \"workload\": \"{kind}\", \"n\": {n}, \"ok\": {ok}, \
         \"setup_s\": {:.6}, \"flow_call_s\": {:.6}, \"submit_s\": {:.6}, \"gather_s\": {:.6}, \
         \"work_s\": {:.6}{extra}}}",
        (call - start).as_secs_f64(),
        (returned - call).as_secs_f64(),
        inner.submit.as_secs_f64(),
        inner.gather.as_secs_f64(),
        (inner.submit + inner.gather).as_secs_f64(),
    );
    if !ok {
        eprintln!(
            "compare_flowrun: wrong result {} (expected {expected})",
            inner.check
        );
        std::process::exit(1);
    }
}

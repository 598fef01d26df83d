//! Moving data between tasks: flowrun's local cluster against raw Dask,
//! side by side in one run, rows interleaved.
//!
//! `cargo bench --bench data` runs 3 rounds (`cargo bench --bench data -- 5`
//! runs 5). Both sides use 2 worker processes x 1 thread:
//!
//! - **chain**: one task makes a 256 MiB `Vec<u8>` (numpy `uint8` array on
//!   the Dask side), 7 tasks in a row each add 1 to every byte (8 tasks
//!   passing 256 MiB), then one task sums it.
//! - **fan-in**: 64 tasks each make a 16 MiB vector, and sums over all 64
//!   come back. Dask sums them in one task taking the list of 64 futures;
//!   flowrun tasks take at most 12 arguments, so 8 tasks each sum 8 vectors
//!   and one adds the 8 sums.
//!
//! The program reads only the sums. Each row reports the work's wall time
//! (first submit to the sum, with the workers up) and the flow's (client's)
//! peak RSS above its RSS when the work starts (`VmHWM` after
//! `echo 5 > /proc/self/clear_refs`). Raw Dask runs `bench/data_dask.py` in a
//! venv with `distributed` and numpy, made on first use by
//! `bench/data-venv.sh` under `target/data-venv/`.
//!
//! The worker processes are this program started again: `main` diverts
//! them before it does anything else.

// The 8-argument reducers: the macro's generated items inherit the arity.
#![allow(clippy::too_many_arguments)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use flowrun::{flow, task};
use flowrun_dask::{ClusterKwargs, DaskTaskRunner};

const MIB: usize = 1 << 20;

fn two_by_one() -> DaskTaskRunner {
    DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(2).threads_per_worker(1))
}

#[task]
fn make(n: usize, fill: u8) -> Vec<u8> {
    vec![fill; n]
}

#[task]
fn step(mut x: Vec<u8>) -> Vec<u8> {
    for b in &mut x {
        *b = b.wrapping_add(1);
    }
    x
}

fn sum(x: &[u8]) -> u64 {
    x.iter().map(|&b| b as u64).sum()
}

#[task]
fn total(x: Vec<u8>) -> u64 {
    sum(&x)
}

#[task]
fn total8(
    a: Vec<u8>,
    b: Vec<u8>,
    c: Vec<u8>,
    d: Vec<u8>,
    e: Vec<u8>,
    f: Vec<u8>,
    g: Vec<u8>,
    h: Vec<u8>,
) -> u64 {
    [a, b, c, d, e, f, g, h].iter().map(|v| sum(v)).sum()
}

#[task]
fn add8(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64) -> u64 {
    a + b + c + d + e + f + g + h
}

/// One measured row.
#[derive(Debug, Clone, Copy)]
struct Row {
    work: Duration,
    call: Duration,
    peak_mb: f64,
}

fn kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a field of /proc/self/status")
}

/// Waits for the workers, resets the peak RSS, runs `work`: (check, work
/// time, peak above start in kB).
fn measured(work: impl FnOnce() -> u64) -> (u64, Duration, u64) {
    // The cluster is up once a first task ran (Dask's side waits the same way).
    total.submit(vec![0u8]).result().expect("warm-up");
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let start = kb("VmRSS:");
    let t0 = Instant::now();
    let check = work();
    let elapsed = t0.elapsed();
    (check, elapsed, kb("VmHWM:").saturating_sub(start))
}

#[flow(task_runner = two_by_one())]
fn chain() -> (u64, Duration, u64) {
    measured(|| {
        let mut x = make.submit(256 * MIB, 1);
        for _ in 0..7 {
            x = step.submit(x);
        }
        total.submit(x).into_result().expect("chain")
    })
}

#[flow(task_runner = two_by_one())]
fn fan_in() -> (u64, Duration, u64) {
    measured(|| {
        let mut xs: Vec<_> = (0..64u8).map(|i| make.submit(16 * MIB, i)).collect();
        let partial: Vec<_> = (0..8)
            .map(|_| {
                let [a, b, c, d, e, f, g, h] = eight(xs.drain(..8).collect());
                total8.submit(a, b, c, d, e, f, g, h)
            })
            .collect();
        let [a, b, c, d, e, f, g, h] = eight(partial);
        add8.submit(a, b, c, d, e, f, g, h)
            .into_result()
            .expect("fan-in")
    })
}

/// The arguments of one 8-argument reducer.
fn eight<T>(group: Vec<T>) -> [T; 8] {
    match group.try_into() {
        Ok(args) => args,
        Err(group) => panic!("a reducer takes 8 futures, not {}", group.len()),
    }
}

fn expected(workload: &str) -> u64 {
    match workload {
        "chain" => (256 * MIB * 8) as u64,
        _ => (16 * MIB) as u64 * (0..64u64).sum::<u64>(),
    }
}

fn flowrun_row(workload: &str) -> Row {
    let called = Instant::now();
    let (check, work, peak_kb) = match workload {
        "chain" => chain(),
        _ => fan_in(),
    }
    .expect("the flow failed");
    let call = called.elapsed();
    assert_eq!(check, expected(workload), "flowrun {workload}: wrong sum");
    Row {
        work,
        call,
        peak_mb: peak_kb as f64 / 1024.0,
    }
}

fn dask_row(python: &str, workload: &str) -> Row {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/data_dask.py");
    let out = Command::new(python)
        .args([script, workload])
        .output()
        .expect("run bench/data_dask.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("BENCH ")) else {
        panic!(
            "bench/data_dask.py {workload} printed no result ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let rec: serde_json::Value = serde_json::from_str(line).expect("a BENCH line is JSON");
    assert_eq!(rec["ok"], true, "raw Dask {workload}: wrong sum");
    let secs = |k: &str| Duration::from_secs_f64(rec[k].as_f64().expect("a number"));
    Row {
        work: secs("work_s"),
        call: secs("call_s"),
        peak_mb: rec["peak_mb"].as_f64().expect("a number"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    // Worker processes of the flows below become workers here.
    flowrun::worker::divert_if_worker();
    std::env::set_var("FLOWRUN_LOG", "off");
    let rounds: usize = common::args()
        .first()
        .map_or(3, |n| n.parse().expect("a number of rounds"));
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/data-venv.sh");
    let out = Command::new(venv).output().expect("run bench/data-venv.sh");
    assert!(
        out.status.success(),
        "bench/data-venv.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!("load average before: {}", loadavg());
    let workloads = ["chain", "fanin"];
    let mut rows: Vec<(&str, &str, Row)> = Vec::new();
    for round in 0..rounds {
        for workload in workloads {
            // Alternate who goes first, so neither always gets the cooler machine.
            let sides: [&str; 2] = if round % 2 == 0 {
                ["flowrun", "raw-dask"]
            } else {
                ["raw-dask", "flowrun"]
            };
            for side in sides {
                let row = match side {
                    "flowrun" => flowrun_row(workload),
                    _ => dask_row(&python, workload),
                };
                println!(
                    "round {round} {workload:<6} {side:<8} work {:>6.2} s  call {:>6.2} s  peak +{:>7.1} MB",
                    row.work.as_secs_f64(),
                    row.call.as_secs_f64(),
                    row.peak_mb
                );
                rows.push((workload, side, row));
            }
        }
    }
    println!("load average after: {}", loadavg());
    println!();
    println!("| workload | flowrun work (s) | raw Dask work (s) | ratio | flowrun call (s) | raw Dask call (s) | flow peak above start (MB) | client peak above start (MB) |");
    println!("|---|---|---|---|---|---|---|---|");
    for workload in workloads {
        let pick = |side: &str, f: fn(&Row) -> f64| {
            median(
                rows.iter()
                    .filter(|(w, s, _)| *w == workload && *s == side)
                    .map(|(_, _, r)| f(r))
                    .collect(),
            )
        };
        let work = |r: &Row| r.work.as_secs_f64();
        let call = |r: &Row| r.call.as_secs_f64();
        let peak = |r: &Row| r.peak_mb;
        println!(
            "| {} | {:.2} | {:.2} | {:.2}x | {:.2} | {:.2} | {:.1} | {:.1} |",
            match workload {
                "chain" => "chain of 8 x 256 MiB",
                _ => "fan-in 64 x 16 MiB",
            },
            pick("flowrun", work),
            pick("raw-dask", work),
            pick("flowrun", work) / pick("raw-dask", work),
            pick("flowrun", call),
            pick("raw-dask", call),
            pick("flowrun", peak),
            pick("raw-dask", peak),
        );
    }
    println!(
        "(medians of {rounds} interleaved rounds; 2 worker processes x 1 thread on both sides)"
    );
}

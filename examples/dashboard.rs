//! A flow long enough to watch on the cluster's dashboard: about a minute
//! of waves of mixed tasks (some fail, one waits for a GPU no worker has)
//! on a cluster that scales between 1 and 4 workers.
//!
//! ```sh
//! cargo run --example dashboard          # 6 waves, about a minute
//! cargo run --example dashboard -- 2     # 2 waves
//! ```
//!
//! Open the link it prints (`The dashboard is at http://127.0.0.1:8787/status`)
//! while it runs; at the end it writes a performance report to
//! `target/dashboard-report.html`.

use std::time::Duration;

use flowrun::dask::{annotate, AdaptKwargs, ClusterKwargs, DaskTaskRunner};
use flowrun::{flow, get_run_logger, task};

/// Reads a part of the input: the slow step.
#[task]
fn load(part: u32) -> Vec<u64> {
    std::thread::sleep(Duration::from_millis(300 + u64::from(part % 5) * 150));
    (0..1000).map(|i| i * u64::from(part + 1)).collect()
}

/// Drops odd rows.
#[task]
fn clean(rows: Vec<u64>) -> Vec<u64> {
    std::thread::sleep(Duration::from_millis(200));
    rows.into_iter().filter(|r| r % 2 == 0).collect()
}

/// Checks a part; parts 3, 10, 17, ... are bad and fail even on a retry.
#[task(retries = 1, retry_delay = 0.3)]
fn validate(part: u32, rows: Vec<u64>) -> Result<u64, String> {
    std::thread::sleep(Duration::from_millis(150));
    if part % 7 == 3 {
        return Err(format!("part {part} has a bad checksum"));
    }
    Ok(rows.iter().sum())
}

/// Needs a GPU, which no worker of this cluster offers: it waits (the
/// dashboard says why) until `no_workers_timeout` fails it.
#[task]
fn train(parts: u32) -> u32 {
    parts
}

#[flow(task_runner = DaskTaskRunner::new()
    .cluster_kwargs(ClusterKwargs::new()
        .threads_per_worker(2)
        .no_workers_timeout(Duration::from_secs(30)))
    .adapt_kwargs(AdaptKwargs::new()
        .minimum(1)
        .maximum(4)
        .target_duration(Duration::from_secs(2))
        .wait_count(3))
    .performance_report_path("target/dashboard-report.html"))]
fn watch_me(waves: u32) -> u64 {
    let logger = get_run_logger();
    if let Some(link) = flowrun::dask::dashboard_link() {
        println!("Open {link} to watch this flow run");
    }
    let gpu = annotate()
        .resources([("GPU", 1.0)])
        .run(|| train.submit(waves));
    let mut total = 0;
    for wave in 0..waves {
        let parts: Vec<u32> = (wave * 12..(wave + 1) * 12).collect();
        let checks: Vec<_> = parts
            .iter()
            .map(|&part| {
                let rows = clean.submit(load.submit(part));
                validate.submit(part, rows)
            })
            .collect();
        for check in checks {
            match check.result() {
                Ok(sum) => total += sum,
                Err(e) => logger.warn(format!("skipping a part: {e}")),
            }
        }
        // A pause between waves: idle workers go, the next wave brings them back.
        std::thread::sleep(Duration::from_secs(4));
    }
    if let Err(e) = gpu.result() {
        logger.warn(format!("no training today: {e}"));
    }
    total
}

fn main() {
    let waves = std::env::args()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or(6);
    let total = watch_me(waves).expect("flow failed");
    println!("total of the valid parts: {total}");
    println!("performance report: target/dashboard-report.html");
}

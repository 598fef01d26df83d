//! Concurrency limits on a temporary local cluster of worker processes:
//!
//! - a tag limit set on the flow: at most 2 `db` task runs at once across
//!   every worker; the others say `AwaitingConcurrencySlot` once and wait;
//! - a named limit held around a block of task code with a guard
//!   (`concurrency("warehouse", 1)`), also across worker processes;
//! - a rate limit: at most 5 calls a second.
//!
//! `cargo run --example concurrency_limits` shows the queries two at a
//! time, the loads one at a time and the API calls after the first five at
//! 5 a second (about 1.5 s, then 1 s).

use std::time::{Duration, Instant};

use flowrun::concurrency::{self, concurrency, ConcurrencyError};
use flowrun::dask::{ClusterKwargs, DaskTaskRunner};
use flowrun::{flow, get_run_logger, task};

#[task(tags = ["db"])]
fn query(table: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(300));
    get_run_logger().info(format!("queried table {table}"));
    table * 10
}

#[task]
fn load(rows: u32) -> Result<u32, ConcurrencyError> {
    // One loader at a time in the warehouse, whichever worker runs it.
    let _slot = concurrency("warehouse", 1)?;
    std::thread::sleep(Duration::from_millis(200));
    get_run_logger().info(format!("loaded {rows} rows"));
    Ok(rows)
}

#[task]
fn call_api(i: u32) -> Result<u32, ConcurrencyError> {
    concurrency::rate_limit("api")?;
    Ok(i)
}

#[flow(
    task_runner = DaskTaskRunner::new()
        .cluster_kwargs(ClusterKwargs::new().n_workers(2).threads_per_worker(2)),
    concurrency_limits = [("db", 2)],
)]
fn nightly() -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    // Named limits and rate limits of the flow run (the process-wide
    // `concurrency::set_limit` works too).
    let limits = concurrency::flow_limits(&flowrun::runner::current_flow_handle().unwrap());
    limits.set_limit("warehouse", 1)?;
    concurrency::set_rate_limit("api", 5.0)?;

    let started = Instant::now();
    let rows: Vec<_> = (0..6).map(|t| query.submit(t)).collect();
    let loaded: Vec<_> = rows.iter().map(|r| load.submit(r)).collect();
    let total: u32 = flowrun::results(loaded)?.into_iter().sum();
    println!(
        "6 queries (2 at a time) and 6 loads (1 at a time) took {:.1?}",
        started.elapsed()
    );

    let started = Instant::now();
    flowrun::results((0..10).map(|i| call_api.submit(i)).collect::<Vec<_>>())?;
    println!(
        "10 API calls at 5 a second (a burst of 5) took {:.1?}",
        started.elapsed()
    );
    Ok(total)
}

fn main() {
    let total = nightly().expect("flow failed");
    println!("loaded {total} rows in all");
}

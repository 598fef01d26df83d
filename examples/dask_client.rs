//! The usage guide's second example: a task takes a client of its cluster
//! with `get_dask_client()`, builds a year of a synthetic timeseries on the
//! workers (one partition per 4 weeks) and summarises it with `describe()`.

use flowrun::dask::{get_dask_client, DaskTaskRunner};
use flowrun::{flow, task};

#[path = "support/timeseries.rs"]
mod timeseries;

use timeseries::Timeseries;

#[task]
fn compute_task() -> String {
    let client = get_dask_client().expect("runs on a Dask cluster");
    // One row per minute keeps this quick in a debug build; Dask's default
    // is one per second (`freq_seconds(1)`).
    let df = Timeseries::new("2000-01-01", "2001-01-01")
        .expect("valid dates")
        .partition_days(28)
        .freq_seconds(60);
    df.describe(&client)
        .expect("partitions cannot fail")
        .to_string()
}

#[flow(task_runner = DaskTaskRunner::default())]
fn dask_flow() -> String {
    compute_task
        .submit()
        .result()
        .expect("the summary task cannot fail")
}

fn main() {
    print!("{}", dask_flow().expect("flow failed"));
}

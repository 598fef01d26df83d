//! The async form of the usage guide's second example: an async task takes
//! a client with `get_async_dask_client()` and awaits the partitions'
//! summaries.

use flowrun::dask::{get_async_dask_client, DaskTaskRunner};
use flowrun::{flow, task};

// Shared with `dask_client`, which uses the parts this example does not
// (the blocking `describe`, partition sizes, seeds).
#[allow(dead_code)]
#[path = "support/timeseries.rs"]
mod timeseries;

use timeseries::{describe_partition, Describe, Timeseries};

#[task]
async fn compute_task() -> String {
    let client = get_async_dask_client().expect("runs on a Dask cluster");
    let df = Timeseries::new("2000-01-01", "2001-01-01")
        .expect("valid dates")
        .freq_seconds(60);
    let futures = client.map(
        &describe_partition,
        df.partitions()
            .into_iter()
            .map(|(start, end)| (start, end, 60, 42)),
    );
    let parts = client
        .gather(futures)
        .await
        .expect("partitions cannot fail");
    Describe::combine(&parts).to_string()
}

#[flow(task_runner = DaskTaskRunner::default())]
async fn dask_flow() -> String {
    compute_task
        .submit()
        .await
        .expect("the summary task cannot fail")
}

#[tokio::main]
async fn main() {
    print!("{}", dask_flow().await.expect("flow failed"));
}

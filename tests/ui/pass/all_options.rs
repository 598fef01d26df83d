use std::time::Duration;

use flowrun::{flow, task, ThreadPoolTaskRunner};

const RETRIES: u32 = 2;

/// Documented task: the doc comment becomes its description.
#[task(
    name = "fetch-page",
    description = "fetches a page",
    retries = RETRIES,
    retry_delay = [1, 2.5],
    retry_jitter_factor = 0.5,
    timeout = 30,
    tags = ["io", "web"]
)]
pub fn fetch(url: String) -> Result<String, std::io::Error> {
    Ok(url)
}

#[task(retry_delay = exponential(1, max = 60), retries = 4, timeout = Duration::from_millis(1500))]
async fn backoff(mut n: u32, (a, b): (u8, u8)) -> u32 {
    n += u32::from(a) + u32::from(b);
    n
}

#[task(crate = ::flowrun)]
fn no_args() {}

#[flow(name = "my-flow", task_runner = ThreadPoolTaskRunner, retries = 1, retry_delay = 0, timeout = 60)]
fn my_flow(url: String) -> Result<String, flowrun::TaskError> {
    no_args();
    let _ = backoff.submit(1, (2, 3));
    fetch.submit(url).result()
}

#[flow(task_runner = ThreadPoolTaskRunner::new(2))]
async fn async_flow() -> u32 {
    let xs = vec![1, 2, 3];
    let _doubled: Vec<i32> = xs.iter().map(|x| x * 2).collect();
    backoff(1, (0, 0)).await
}

fn main() {
    let _ = my_flow("x".to_owned());
    let _ = async_flow;
}

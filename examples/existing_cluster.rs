//! Runs a small flow on a Dask cluster that is already running: a scheduler
//! and stock Python workers installed from PyPI.
//!
//! ```text
//! pip install "distributed==2026.8.0"
//! dask scheduler --host 127.0.0.1 --port 8786 &
//! dask worker tcp://127.0.0.1:8786 --nthreads 2 &
//! dask worker tcp://127.0.0.1:8786 --nthreads 2 &
//! cargo run --example existing_cluster -- tcp://127.0.0.1:8786
//! ```
//!
//! The address comes from the first argument, else `$DASK_SCHEDULER_ADDRESS`.
//! The workers run this program in task mode, one process per task, so they
//! must see it at the same path (same machine or shared filesystem), or be
//! told where it is with `DaskTaskRunner::task_program`.

use std::time::Duration;

use flowrun::dask::DaskTaskRunner;
use flowrun::{flow, task};

#[task]
fn shout(number: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(500));
    println!("#{number}");
    number * number
}

#[task]
fn total(squares: Vec<u32>) -> u32 {
    squares.iter().sum()
}

#[flow(task_runner = DaskTaskRunner::new())]
fn count_to(highest_number: u32) -> u32 {
    let squares: Vec<_> = (0..highest_number).map(|n| shout.submit(n)).collect();
    let squares = flowrun::results(squares).expect("every shout completes");
    total(squares)
}

fn main() {
    let address = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("DASK_SCHEDULER_ADDRESS").ok())
        .unwrap_or_else(|| {
            eprintln!("usage: existing_cluster tcp://HOST:PORT (or set DASK_SCHEDULER_ADDRESS)");
            std::process::exit(2)
        });
    let runner = DaskTaskRunner::new().address(address);
    match count_to.with_runner(runner).call(10) {
        Ok(sum) => println!("sum of squares below 10: {sum}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}

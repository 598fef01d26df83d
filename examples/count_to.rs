//! The first example of the usage guide: count to ten in parallel on a
//! temporary Dask-style cluster of worker processes. The `#n` lines come
//! out of order, in about ceil(10 / worker slots) x 0.5 s.

use std::time::Duration;

use flowrun::dask::DaskTaskRunner;
use flowrun::{flow, task};

#[task]
fn shout(number: u32) {
    std::thread::sleep(Duration::from_millis(500));
    println!("#{number}");
}

#[flow(task_runner = DaskTaskRunner::default())]
fn count_to(highest_number: u32) {
    for number in 0..highest_number {
        shout.submit(number);
    }
}

fn main() {
    count_to(10).expect("flow failed");
}

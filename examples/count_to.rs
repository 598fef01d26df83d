//! The first example of the usage guide: count to ten in parallel.
//! The `#n` lines come out of order, in about the time of one wave of
//! sleeps rather than ten in a row.

use std::time::Duration;

use flowrun::{flow, task};

#[task]
fn shout(number: u32) {
    std::thread::sleep(Duration::from_millis(500));
    println!("#{number}");
}

#[flow]
fn count_to(highest_number: u32) {
    for number in 0..highest_number {
        shout.submit(number);
    }
}

fn main() {
    count_to(10).expect("flow failed");
}

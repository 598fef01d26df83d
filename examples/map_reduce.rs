//! Map a task over inputs, then reduce the results with a task that
//! depends on every mapped run.

use flowrun::{flow, task, unmapped};

/// Scales one number.
#[task]
fn scale(value: u64, factor: u64) -> u64 {
    value * factor
}

/// Adds up the scaled numbers.
#[task]
fn total(values: Vec<u64>) -> u64 {
    values.into_iter().sum()
}

#[flow]
fn sum_of_scaled(values: Vec<u64>, factor: u64) -> Result<u64, flowrun::TaskError> {
    let scaled = scale
        .map(values, unmapped(factor))
        .expect("one mapped argument");
    let values = flowrun::results(scaled)?;
    total.submit(values).result()
}

fn main() {
    let values: Vec<u64> = (1..=100).collect();
    let sum = sum_of_scaled(values, 3).expect("flow failed");
    println!("3 * (1 + ... + 100) = {sum}");
    assert_eq!(sum, 3 * 5050);
}

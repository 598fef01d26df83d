//! Map a task over inputs, then reduce the results with a task that
//! depends on every mapped run: the reducer takes the futures themselves
//! (a `Vec<TaskFuture<u64>>` where it takes a `Vec<u64>`), so the values go
//! to it directly, never gathered in the flow. `.map` also takes the future
//! of a list.

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
    let sum = total.submit(scaled);
    // Map over the future of a list: one run per element, once it is known.
    let digits = digits_of.submit(&sum);
    let digit_sum = total.submit(
        scale
            .map(&digits, unmapped(1))
            .expect("one mapped argument"),
    );
    println!("the digits of the sum add up to {}", digit_sum.result()?);
    sum.result()
}

/// The decimal digits of a number.
#[task]
fn digits_of(value: u64) -> Vec<u64> {
    value
        .to_string()
        .bytes()
        .map(|b| u64::from(b - b'0'))
        .collect()
}

fn main() {
    let values: Vec<u64> = (1..=100).collect();
    let sum = sum_of_scaled(values, 3).expect("flow failed");
    println!("3 * (1 + ... + 100) = {sum}");
    assert_eq!(sum, 3 * 5050);
}

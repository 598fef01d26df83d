//! Small arithmetic tasks that several test binaries run (each includes
//! this module with `mod tasks;`).
#![allow(dead_code)]

use flowrun::task;

#[task]
pub(crate) fn square(x: i64) -> i64 {
    x * x
}

#[task]
pub(crate) fn total(values: Vec<i64>) -> i64 {
    values.iter().sum()
}

#[task]
pub(crate) fn first_and_last(values: [i64; 3]) -> (i64, i64) {
    (values[0], values[2])
}

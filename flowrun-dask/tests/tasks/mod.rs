//! Small tasks that several test binaries (and the real_dask bench) run:
//! each includes this module with `mod tasks;` (the bench by `#[path]`).
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

/// `mb` MiB of ones.
#[task]
pub(crate) fn ones(mb: usize) -> Vec<u8> {
    vec![1; mb << 20]
}

/// `x` with 1 added to every byte (wrapping), in place.
#[task]
pub(crate) fn plus_one(mut x: Vec<u8>) -> Vec<u8> {
    for b in &mut x {
        *b = b.wrapping_add(1);
    }
    x
}

//! What the benchmarks share: interleaved rounds and their medians, and
//! the workspace tests' helpers (as in `tests/common`), which the modules
//! the benchmarks include from the tests (`flowrun-dask/tests/support`,
//! `tests/cached_chains`) find as `crate::common`.
#![allow(dead_code)] // each benchmark uses a different part

use std::time::Duration;

#[allow(unreachable_pub, unused_imports)]
#[path = "../../flowrun-dask/tests/common/mod.rs"]
mod shared;
#[allow(unused_imports)]
pub(crate) use shared::*;

/// Runs both sides of round `round`, alternating which goes first, so
/// neither side always runs on the machine the other just warmed (or
/// loaded).
pub(crate) fn alternate(round: usize, mut a: impl FnMut(), mut b: impl FnMut()) {
    if round.is_multiple_of(2) {
        a();
        b();
    } else {
        b();
        a();
    }
}

/// The benchmark's own command-line arguments: those after the program
/// name, without the `--bench`-style flags `cargo bench` adds.
pub(crate) fn args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect()
}

/// The median of `v` (the upper one of an even count).
pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

//! What the benchmarks share: the workspace tests' helpers (as in
//! `tests/common`), which the modules the benchmarks include from the tests
//! (`flowrun-dask/tests/support`, `tests/cached_chains`) find as
//! `crate::common`.
#![allow(dead_code)] // each benchmark uses a different part

#[allow(unreachable_pub, unused_imports)]
#[path = "../../flowrun-dask/tests/common/mod.rs"]
mod shared;
#[allow(unused_imports)]
pub(crate) use shared::*;

//! The workspace's tests share flowrun-dask's test helpers (the Dask
//! integration tests, which use most of them, live there).

#[allow(unreachable_pub)]
#[path = "../../flowrun-dask/tests/common/mod.rs"]
mod shared;
#[allow(unused_imports)]
pub(crate) use shared::*;

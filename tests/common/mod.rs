//! The workspace's tests share flowrun-dask's test helpers (the Dask
//! integration tests, which use most of them, live there).

#[allow(unreachable_pub)]
#[path = "../../flowrun-dask/tests/common/mod.rs"]
mod shared;
#[allow(unused_imports)]
pub(crate) use shared::*;

/// The body of a flaky task: counts this call in `calls` and fails it
/// (naming the attempt) until the `nth` call, which answers its number.
#[allow(dead_code)]
pub(crate) fn fails_before(calls: &std::sync::atomic::AtomicU32, nth: u32) -> Result<u32, String> {
    let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    if n < nth {
        Err(format!("attempt {n} failed"))
    } else {
        Ok(n)
    }
}

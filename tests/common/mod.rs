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

/// Declares a test runner `$name` that takes serialized work (any task
/// with a codec runs on it) and hands each call to `$submit`.
#[allow(unused_macros)]
macro_rules! serialized_runner {
    ($(#[$doc:meta])* $name:ident, $submit:expr) => {
        $(#[$doc])*
        #[derive(Default)]
        struct $name;

        impl flowrun::runner::TaskRunner for $name {
            fn name(&self) -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn execution(&self) -> flowrun::runner::Execution {
                flowrun::runner::Execution::Serialized
            }
            fn submit(&self, call: flowrun::runner::TaskCall) {
                ($submit)(call)
            }
        }

        impl<T: flowrun::runner::SerializedTask> flowrun::runner::AcceptsTask<T> for $name {}
    };
}
#[allow(unused_imports)]
pub(crate) use serialized_runner;

/// Declares the call counter `$calls` and a task `$name` (with the given
/// attributes) whose calls fail until the `$nth`, which answers `Ok($nth)`
/// (see [`fails_before`]).
#[allow(unused_macros)]
macro_rules! flaky_task {
    ($calls:ident, $(#[$attr:meta])* fn $name:ident succeeds at $nth:literal) => {
        static $calls: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

        $(#[$attr])*
        fn $name() -> Result<u32, String> {
            common::fails_before(&$calls, $nth)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use flaky_task;

/// Asserts that a flow run failed as `kind`, with a message holding each
/// of `parts`.
#[allow(dead_code)]
pub(crate) fn assert_flow_error(
    error: &flowrun::FlowError,
    kind: flowrun::FlowErrorKind,
    parts: &[&str],
) {
    assert_eq!(error.kind(), &kind, "{error}");
    for part in parts {
        assert!(
            error.message().contains(part),
            "{part:?} in {}",
            error.message()
        );
    }
}

//! Annotation scopes: the priority and resources of every task submitted
//! inside them, as `dask.annotate` gives Python users.
//!
//! Three forms: a guard ([`Annotate::enter`]), a closure ([`Annotate::run`])
//! and a block ([`annotate!`](crate::annotate!)). With only `flowrun` as a
//! dependency they are `flowrun::dask::annotate`.
//!
//! ```
//! use flowrun::dask::annotate;
//!
//! let outer = annotate().priority(10).enter();
//! {
//!     let _gpu = annotate().resources([("GPU", 1.0)]).enter();
//!     // Tasks submitted here run with priority 10 and need {"GPU": 1}.
//! }
//! drop(outer);
//! let value = annotate().priority(-5).run(|| {
//!     // Tasks submitted here run with priority -5.
//!     42
//! });
//! assert_eq!(value, 42);
//! ```

use flowrun_core::annotations::{self, Annotations, ScopeGuard};
use flowrun_core::Resources;

/// Starts an annotation scope; set `priority` and/or `resources`, then
/// [`enter`](Annotate::enter) it or [`run`](Annotate::run) a closure in it.
pub fn annotate() -> Annotate {
    Annotate {
        scope: Annotations::default(),
    }
}

/// An annotation scope being configured.
#[derive(Debug, Clone, Default)]
#[must_use = "an annotation applies only once entered or run"]
pub struct Annotate {
    scope: Annotations,
}

impl Annotate {
    /// Higher runs first; equal priorities run in submission order.
    pub fn priority(mut self, priority: i64) -> Self {
        self.scope.priority = Some(priority);
        self
    }

    /// Abstract resources each task holds while it runs, such as `{"GPU": 1}`.
    pub fn resources(mut self, resources: impl Into<Resources>) -> Self {
        self.scope.resources = Some(resources.into());
        self
    }

    /// Opens the scope until the guard is dropped. Inner scopes win per key.
    pub fn enter(self) -> ScopeGuard {
        annotations::push(self.scope)
    }

    /// Runs `f` inside the scope.
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        let _guard = self.enter();
        f()
    }
}

/// The block form of [`annotate()`], like Python's
/// `with dask.annotate(priority=10, resources={"GPU": 1}):`. Settings
/// (`priority = ..`, `resources = ..`, as the methods of [`Annotate`] take
/// them) come before `=>`, then the block; every task submitted in the
/// block carries them. The macro's value is the block's, and `?`, `return`
/// and `break` in the block act on the code around it, as in any block.
///
/// ```
/// use flowrun::{flow, task, TaskFuture};
/// use flowrun::dask::annotate;
///
/// #[task]
/// fn train(epochs: u32) -> u32 {
///     epochs
/// }
///
/// #[flow]
/// fn pipeline() -> u32 {
///     let model: TaskFuture<u32> = annotate!(priority = 10, resources = [("GPU", 1.0)] => {
///         assert_eq!(flowrun::annotations::current().priority, Some(10));
///         train.submit(3)
///     });
///     model.result().unwrap()
/// }
/// # fn main() { assert_eq!(pipeline().unwrap(), 3); }
/// ```
///
/// A setting that does not exist is a compile error at its name:
///
/// ```compile_fail
/// let _ = flowrun_dask::annotate!(gpus = 1 => { 1 });
/// ```
#[macro_export]
macro_rules! annotate {
    ($($setting:ident = $value:expr),+ $(,)? => $body:block) => {{
        let _flowrun_annotation = $crate::annotate() $(.$setting($value))+ .enter();
        $body
    }};
}

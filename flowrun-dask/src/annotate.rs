//! Annotation scopes: the priority and resources of every task submitted
//! inside them, as `dask.annotate` gives Python users.
//!
//! ```
//! use flowrun_dask::annotate;
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

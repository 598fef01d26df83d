//! Annotation scopes: priority and resources that apply to every task
//! submitted inside them. `flowrun_dask::annotate` is the user-facing API;
//! this module keeps the per-thread stack the submit path reads.

use std::cell::RefCell;

use crate::options::Resources;

/// Scheduling annotations of a task run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotations {
    /// Higher runs first; equal priorities run in submission order.
    pub priority: Option<i64>,
    /// Abstract resources held while the run executes.
    pub resources: Option<Resources>,
}

impl Annotations {
    /// `inner` on top of `self`: each key set in `inner` wins.
    pub fn merged(&self, inner: &Annotations) -> Annotations {
        Annotations {
            priority: inner.priority.or(self.priority),
            resources: inner.resources.clone().or_else(|| self.resources.clone()),
        }
    }
}

thread_local! {
    static STACK: RefCell<Vec<Annotations>> = const { RefCell::new(Vec::new()) };
}

/// The annotations in force on this thread: every open scope merged, inner
/// scopes winning per key.
pub fn current() -> Annotations {
    STACK.with(|s| s.borrow().last().cloned().unwrap_or_default())
}

fn is_empty() -> bool {
    STACK.with(|s| s.borrow().is_empty())
}

/// Opens a scope; the returned guard closes it. Scopes must close in the
/// reverse order they opened, which guards dropped at the end of blocks do.
pub fn push(scope: Annotations) -> ScopeGuard {
    STACK.with(|s| {
        let mut s = s.borrow_mut();
        let merged = s.last().cloned().unwrap_or_default().merged(&scope);
        s.push(merged);
        ScopeGuard { depth: s.len() }
    })
}

/// Closes its annotation scope when dropped.
#[must_use = "the scope closes when the guard is dropped"]
pub struct ScopeGuard {
    depth: usize,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        STACK.with(|s| {
            let mut s = s.borrow_mut();
            // Truncating (rather than popping) keeps the stack right even if
            // an inner guard was leaked.
            s.truncate(self.depth - 1);
        });
    }
}

pub(crate) fn current_if_any() -> Option<Annotations> {
    if is_empty() {
        None
    } else {
        Some(current())
    }
}

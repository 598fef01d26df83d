//! Annotation scopes: priority and resources that apply to every task
//! submitted inside them. `flowrun_dask::annotate` is the user-facing API;
//! this module keeps the per-thread stack the submit path reads.

use crate::task::options::Resources;

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

/// The annotations in force here: every open scope merged, inner scopes
/// winning per key.
pub fn current() -> Annotations {
    crate::exec::context::with_current(|c| c.annotations.last().cloned().unwrap_or_default())
}

/// Opens a scope; the returned guard closes it. Scopes close in the
/// reverse order they opened, which guards dropped at the end of blocks do.
/// In an async flow the scope follows the flow's future across threads.
pub fn push(scope: Annotations) -> ScopeGuard {
    crate::exec::context::with_current(|c| {
        let merged = c
            .annotations
            .last()
            .cloned()
            .unwrap_or_default()
            .merged(&scope);
        c.annotations.push(merged);
        ScopeGuard {
            depth: c.annotations.len(),
        }
    })
}

/// Closes its annotation scope when dropped.
#[derive(Debug)]
#[must_use = "the scope closes when the guard is dropped"]
pub struct ScopeGuard {
    depth: usize,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        // Truncating (rather than popping) keeps the stack right even if an
        // inner guard was leaked.
        crate::exec::context::with_current(|c| c.annotations.truncate(self.depth - 1));
    }
}

pub(crate) fn current_if_any() -> Option<Annotations> {
    crate::exec::context::with_current(|c| c.annotations.last().cloned())
}

//! Per-call overrides of a task handle (`shout.with_options(...)`,
//! `.wait_for(...)`), which the engine resolves when a run starts.

use crate::run::record::RunRef;
use crate::task::options::TaskOptions;

/// Per-handle overrides: options and extra upstream runs to wait for.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CallConfig {
    inner: LazyBox<CallOverrides>,
}

/// A handle's overrides, boxed on the first one, so that a handle with
/// none stays a null pointer (and can be a `const`).
#[derive(Debug, Clone, Default)]
pub(crate) struct LazyBox<T>(Option<Box<T>>);

impl<T> LazyBox<T> {
    /// No overrides.
    pub(crate) const NONE: LazyBox<T> = LazyBox(None);

    pub(crate) fn get(&self) -> Option<&T> {
        self.0.as_deref()
    }
}

impl<T: Default> LazyBox<T> {
    /// The overrides, made empty first if there were none.
    pub(crate) fn make_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Default::default)
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct CallOverrides {
    pub(crate) options: TaskOptions,
    pub(crate) explicit: Explicit,
    pub(crate) wait_for: Vec<RunRef>,
}

/// Which options a call set explicitly.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Explicit {
    pub(crate) priority: bool,
    pub(crate) resources: bool,
}

impl CallConfig {
    /// No overrides.
    pub const NONE: CallConfig = CallConfig {
        inner: LazyBox::NONE,
    };

    /// Adds `options` on top of earlier overrides.
    pub fn with_options(mut self, options: TaskOptions) -> CallConfig {
        let o = self.inner.make_mut();
        o.explicit.priority |= options.priority.is_some();
        o.explicit.resources |= options.resources.is_some();
        o.options = std::mem::take(&mut o.options).overridden_by(options);
        self
    }

    /// Adds upstream runs the call waits for without taking their values.
    pub fn wait_for(mut self, runs: impl IntoIterator<Item = RunRef>) -> CallConfig {
        self.inner.make_mut().wait_for.extend(runs);
        self
    }

    pub(crate) fn get(&self) -> Option<&CallOverrides> {
        self.inner.get()
    }
}

/// Things `wait_for` accepts: a future, a slice or `Vec` of futures, or
/// [`RunRef`]s (for futures of different result types).
pub trait IntoRunRefs {
    /// The runs to wait for.
    fn into_run_refs(self) -> Vec<RunRef>;
}

impl<T: Send + 'static> IntoRunRefs for &crate::run::future::TaskFuture<T> {
    fn into_run_refs(self) -> Vec<RunRef> {
        vec![self.run_ref()]
    }
}

impl<T: Send + 'static> IntoRunRefs for &[crate::run::future::TaskFuture<T>] {
    fn into_run_refs(self) -> Vec<RunRef> {
        self.iter().map(|f| f.run_ref()).collect()
    }
}

impl<T: Send + 'static> IntoRunRefs for &Vec<crate::run::future::TaskFuture<T>> {
    fn into_run_refs(self) -> Vec<RunRef> {
        self.iter().map(|f| f.run_ref()).collect()
    }
}

impl<const N: usize> IntoRunRefs for [RunRef; N] {
    fn into_run_refs(self) -> Vec<RunRef> {
        self.into()
    }
}

impl IntoRunRefs for Vec<RunRef> {
    fn into_run_refs(self) -> Vec<RunRef> {
        self
    }
}

impl IntoRunRefs for RunRef {
    fn into_run_refs(self) -> Vec<RunRef> {
        vec![self]
    }
}

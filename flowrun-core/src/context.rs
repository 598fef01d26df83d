//! What code is running inside: the flow run and the task run of the current
//! thread (or of the current poll, for async code).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use crate::flow::FlowShared;
use crate::run::RunRef;

/// The run context of the current thread.
#[derive(Clone, Default)]
pub(crate) struct Context {
    pub(crate) flow: Option<Arc<FlowShared>>,
    pub(crate) task_run: Option<RunRef>,
    /// The name of a task run executing here on behalf of another process
    /// (a worker runs tasks whose run records live in the flow process).
    pub(crate) label: Option<std::sync::Arc<str>>,
    pub(crate) span: Option<tracing::Span>,
    /// Open annotation scopes, innermost last, each already merged with
    /// the ones around it.
    pub(crate) annotations: Vec<crate::annotations::Annotations>,
}

thread_local! {
    static CURRENT: RefCell<Context> = RefCell::new(Context::default());
}

pub(crate) fn current() -> Context {
    CURRENT.with(|c| c.borrow().clone())
}

pub(crate) fn current_flow() -> Option<Arc<FlowShared>> {
    CURRENT.with(|c| c.borrow().flow.clone())
}

pub(crate) fn current_span() -> Option<tracing::Span> {
    CURRENT.with(|c| c.borrow().span.clone())
}

/// Reads or changes this thread's context in place.
pub(crate) fn with_current<R>(f: impl FnOnce(&mut Context) -> R) -> R {
    CURRENT.with(|c| f(&mut c.borrow_mut()))
}

/// Restores the previous context when dropped.
pub(crate) struct Entered {
    previous: Option<Context>,
}

pub(crate) fn enter(ctx: Context) -> Entered {
    let previous = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), ctx));
    Entered {
        previous: Some(previous),
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Some(prev) = self.previous.take() {
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
}

pin_project_lite::pin_project! {
    /// A future that runs each poll of `inner` inside `ctx` (and its span).
    pub(crate) struct WithContext<F> {
        pub(crate) ctx: Context,
        #[pin]
        pub(crate) inner: F,
    }
}

impl<F: Future> Future for WithContext<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let entered = enter(this.ctx.clone());
        let span = this.ctx.span.clone();
        let _span = span.as_ref().map(|s| s.enter());
        let poll = this.inner.poll(cx);
        // Scopes opened or closed during this poll belong to the future,
        // which may be polled on another thread next time.
        this.ctx.annotations = with_current(|c| std::mem::take(&mut c.annotations));
        drop(entered);
        poll
    }
}

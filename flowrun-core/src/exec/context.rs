//! What code is running inside: the flow run and the task run of the current
//! thread (or of the current poll, for async code).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use crate::flow::registry::FlowShared;
use crate::run::record::RunRef;

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
    pub(crate) annotations: Vec<crate::task::annotations::Annotations>,
}

impl Context {
    /// The context of an attempt of task run `run` for `flow`, with the
    /// attempt's span.
    pub(crate) fn for_task_run(flow: Option<Arc<FlowShared>>, run: RunRef) -> Context {
        let span = task_span(&run);
        Context {
            flow,
            task_run: Some(run),
            label: None,
            span: Some(span),
            annotations: Vec::new(),
        }
    }
}

/// The span of a task run's attempt.
pub(crate) fn task_span(run: &RunRef) -> tracing::Span {
    // Named lazily: only a layer that records the field formats it.
    tracing::info_span!("task_run", run = %run.0.label())
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

/// Enters `ctx` and its span until dropped.
pub(crate) fn enter_with_span(ctx: Context) -> InContext {
    let span = ctx.span.clone();
    let entered = enter(ctx);
    InContext {
        _span: span.map(tracing::Span::entered),
        _ctx: entered,
    }
}

/// A context and its span, entered; the span is left first on drop.
pub(crate) struct InContext {
    _span: Option<tracing::span::EnteredSpan>,
    _ctx: Entered,
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

/// Runs `f` as the task run named `run_name`, which executes here on
/// behalf of another process (worker processes use it): logs written by
/// `f` carry that name.
pub(crate) fn with_task_run_name<R>(run_name: &str, f: impl FnOnce() -> R) -> R {
    let _in = enter_with_span(Context {
        flow: None,
        task_run: None,
        label: Some(Arc::from(run_name)),
        span: Some(tracing::info_span!("task_run", run = %run_name)),
        annotations: Vec::new(),
    });
    f()
}

/// The task run executing on this thread, if any.
pub fn current_task_run() -> Option<RunRef> {
    current().task_run
}

/// The name of the task run executing on this thread, in this process or
/// on behalf of another one, if any.
pub fn current_task_run_name() -> Option<String> {
    let ctx = current();
    if let Some(run) = ctx.task_run {
        return Some(run.name());
    }
    ctx.label.map(|l| l.to_string())
}

/// A handle on the flow run this thread works for, if any.
pub fn current_flow_handle() -> Option<crate::flow::scope::FlowHandle> {
    current_flow().map(crate::flow::scope::FlowHandle)
}

/// The id of the flow run this thread works for, if any.
pub fn current_flow_run_id() -> Option<String> {
    current_flow().map(|f| f.id.clone())
}

/// The name of the flow run this thread works for, if any.
pub fn current_flow_run_name() -> Option<String> {
    current_flow().map(|f| f.name.clone())
}

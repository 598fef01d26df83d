//! Future adapters the engine runs task and flow bodies in: catching a
//! panic inside a poll, a deadline that works on any executor, and driving
//! a future from a thread that may or may not be inside a tokio runtime.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use super::retry::timed_out;
use crate::exec::context::{self, WithContext};
use crate::exec::runtime::runtime;
use crate::exec::timer;
use crate::run::error::TaskError;
use crate::task::{Invocation, Task};

/// Calls `T` with `args` on this thread and drives an async task's future to
/// completion; panics become
/// [`TaskErrorKind::Panic`](crate::TaskErrorKind::Panic).
pub(crate) fn invoke_blocking<T: Task>(
    args: T::Args,
    timeout: Option<Duration>,
) -> Result<T::Raw, TaskError> {
    match catch_unwind(AssertUnwindSafe(|| T::invoke(args))) {
        Err(payload) => Err(TaskError::from_panic(payload)),
        Ok(Invocation::Ready(raw)) => Ok(raw),
        Ok(Invocation::Future(fut)) => block_on(fut, timeout),
    }
}

/// Drives `fut` on flowrun's runtime from a thread that is not inside a
/// tokio runtime (else from a helper thread), keeping this thread's context.
pub(crate) fn block_on<R: Send + 'static>(
    fut: crate::task::BoxFuture<R>,
    timeout: Option<Duration>,
) -> Result<R, TaskError> {
    let ctx = context::current();
    let guarded = CatchUnwind::new(WithContext { ctx, inner: fut });
    let drive = async move {
        let outcome = match timeout {
            None => guarded.await,
            Some(t) => match tokio::time::timeout(t, guarded).await {
                Ok(r) => r,
                Err(_) => return Err(timed_out(t)),
            },
        };
        outcome.map_err(TaskError::from_panic)
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| runtime().block_on(drive))
                .join()
                .unwrap_or_else(|p| Err(TaskError::from_panic(p)))
        })
    } else {
        runtime().block_on(drive)
    }
}

/// How an attempt loop waits: by blocking this thread, or by yielding to
/// the caller's executor. The loop is written once, as async code; in
/// blocking mode none of its steps ever yields, and [`block_here`] runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Blocking,
    Async,
}

impl Mode {
    /// Waits `delay` before the next attempt.
    pub(crate) async fn sleep(self, delay: Duration) {
        if delay.is_zero() {
            return;
        }
        match self {
            Mode::Blocking => crate::exec::pool::blocking(|| std::thread::sleep(delay)),
            Mode::Async => timer::sleep(delay).await,
        }
    }
}

/// Drives `fut` to completion on this thread, parking while it waits.
///
/// For the blocking forms of the attempt loops, which are the async loops
/// run with steps that do not wait: their futures finish in one poll. It
/// needs no runtime, so it is safe inside a caller's tokio runtime.
pub(crate) fn block_here<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

pin_project_lite::pin_project! {
    /// Turns a panic inside a future's poll into its payload, as
    /// `catch_unwind` does for a call.
    pub(crate) struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(inner: F) -> CatchUnwind<F> {
        CatchUnwind { inner }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}

pin_project_lite::pin_project! {
    /// Resolves to `None` if `inner` is not done within the duration, on any
    /// executor (the deadline comes from flowrun's timer thread).
    pub(crate) struct Deadline<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: timer::Sleep,
    }
}

impl<F> Deadline<F> {
    pub(crate) fn new(inner: F, timeout: Duration) -> Deadline<F> {
        Deadline {
            inner,
            sleep: timer::sleep(timeout),
        }
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<F::Output>> {
        let this = self.project();
        if let Poll::Ready(v) = this.inner.poll(cx) {
            return Poll::Ready(Some(v));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

//! `TaskFuture<T>`: the typed handle returned by `submit`, and the free
//! functions [`wait`] and [`as_completed`].

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::run::error::TaskError;
use crate::run::record::{RunCell, RunId, RunRef};
use crate::run::state::State;

/// A handle on a submitted task run that will produce a `T`.
///
/// Pass it to another task where that task takes a `T` and the other run
/// waits for this one and receives its value. Read the value with
/// [`result`](TaskFuture::result) (blocking) or `.await`.
///
/// Reading a failed run's result, `.await`ing it, reading its
/// [`state`](TaskFuture::state) or passing it to a downstream task counts as
/// handling the failure; a failure nobody handled fails the flow run.
pub struct TaskFuture<T: Send + 'static> {
    pub(crate) cell: Arc<RunCell<T>>,
}

impl<T: Send + 'static> TaskFuture<T> {
    pub(crate) fn new(cell: Arc<RunCell<T>>) -> TaskFuture<T> {
        cell.add_handle();
        TaskFuture { cell }
    }

    /// The run's id.
    pub fn id(&self) -> RunId {
        self.cell.id
    }

    /// The run's name, such as `shout-3`.
    pub fn name(&self) -> String {
        self.cell.name()
    }

    /// The run's current state. Reading a final failed state counts as
    /// handling the failure.
    pub fn state(&self) -> State {
        let state = self.cell.state();
        if state.is_final() {
            self.cell.mark_observed();
        }
        state
    }

    /// Blocks until the run is final (completed, failed, crashed or cancelled).
    ///
    /// Inside a task running on a thread pool, the waiting thread gives its
    /// slot to another thread while it waits, so nested waits cannot deadlock.
    pub fn wait(&self) {
        self.cell.block_until_final(None);
    }

    /// Blocks until the run is final or `timeout` passed. Returns whether it
    /// is final.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.cell.block_until_final(Some(Instant::now() + timeout))
    }

    /// Waits for the run and returns a clone of its result, or its failure.
    pub fn result(&self) -> Result<T, TaskError>
    where
        T: Clone,
    {
        self.wait();
        self.cell.mark_observed();
        self.cell.clone_result(T::clone)
    }

    /// Like [`result`](TaskFuture::result), giving up after `timeout` with
    /// `None`.
    pub fn result_timeout(&self, timeout: Duration) -> Option<Result<T, TaskError>>
    where
        T: Clone,
    {
        if !self.wait_timeout(timeout) {
            return None;
        }
        self.cell.mark_observed();
        Some(self.cell.clone_result(T::clone))
    }

    /// Waits for the run and returns its result, moving it out when this is
    /// the last handle (no `Clone` needed), else cloning it.
    pub fn into_result(self) -> Result<T, TaskError> {
        self.wait();
        self.cell.mark_observed();
        let last = self.cell.handles() == 1;
        self.cell.take_result(last)
    }

    /// Cancels the run if it has not started yet. Returns whether it was
    /// cancelled. A running attempt is never interrupted.
    pub fn cancel(&self) -> bool {
        // Cancelling is handling: the flow does not fail because of it.
        self.cell.mark_observed();
        crate::engine::driver::cancel_pending(&self.cell)
    }

    /// A type-erased handle on the same run.
    pub fn run_ref(&self) -> RunRef {
        RunRef(self.cell.clone())
    }
}

impl<T: Send + 'static> Clone for TaskFuture<T> {
    fn clone(&self) -> Self {
        TaskFuture::new(self.cell.clone())
    }
}

impl<T: Send + 'static> Drop for TaskFuture<T> {
    fn drop(&mut self) {
        self.cell.drop_handle();
    }
}

impl<T: Send + 'static> fmt::Debug for TaskFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskFuture")
            .field("name", &self.name())
            .field("state", &self.cell.state())
            .finish()
    }
}

impl<T: Send + 'static> From<&TaskFuture<T>> for RunRef {
    fn from(future: &TaskFuture<T>) -> RunRef {
        future.run_ref()
    }
}

impl<T: Send + 'static> From<TaskFuture<T>> for RunRef {
    fn from(future: TaskFuture<T>) -> RunRef {
        future.run_ref()
    }
}

/// The `Future` behind `.await` on a [`TaskFuture`]: resolves to the run's
/// result without blocking a thread.
#[derive(Debug)]
pub struct ResultFuture<T: Send + 'static> {
    future: Option<TaskFuture<T>>,
    /// Held while the run is pending: a task awaiting another run on a
    /// thread pool or a worker gives its slot away meanwhile.
    seceded: Option<crate::exec::pool::SecedeGuard>,
}

impl<T: Send + 'static> Future for ResultFuture<T> {
    type Output = Result<T, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let done = match &self.future {
            Some(f) => f.cell.poll_final(cx.waker()),
            None => panic!("ResultFuture polled after it completed"),
        };
        if !done {
            if self.seceded.is_none() {
                self.seceded = Some(crate::exec::pool::secede());
            }
            return Poll::Pending;
        }
        self.seceded = None;
        let future = self.future.take().expect("checked above");
        future.cell.mark_observed();
        let last = future.cell.handles() == 1;
        Poll::Ready(future.cell.take_result(last))
    }
}

impl<T: Send + 'static> Unpin for ResultFuture<T> {}

impl<T: Send + 'static> IntoFuture for TaskFuture<T> {
    type Output = Result<T, TaskError>;
    type IntoFuture = ResultFuture<T>;

    fn into_future(self) -> ResultFuture<T> {
        ResultFuture {
            future: Some(self),
            seceded: None,
        }
    }
}

impl<T: Send + Clone + 'static> IntoFuture for &TaskFuture<T> {
    type Output = Result<T, TaskError>;
    type IntoFuture = ResultFuture<T>;

    fn into_future(self) -> ResultFuture<T> {
        ResultFuture {
            future: Some(self.clone()),
            seceded: None,
        }
    }
}

/// Blocks until every run in `futures` is final. It does not read their
/// results, so failures stay unhandled until you read them.
///
/// ```no_run
/// # use flowrun_core::TaskFuture;
/// # fn demo(futures: Vec<TaskFuture<u32>>) {
/// flowrun_core::wait(&futures);
/// # }
/// ```
pub fn wait<'a, T: Send + 'static>(futures: impl IntoIterator<Item = &'a TaskFuture<T>>) {
    for f in futures {
        f.wait();
    }
}

/// Blocks until every run in `futures` is final or `timeout` passed. Returns
/// whether all are final.
pub fn wait_timeout<'a, T: Send + 'static>(
    futures: impl IntoIterator<Item = &'a TaskFuture<T>>,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    futures
        .into_iter()
        .all(|f| f.cell.block_until_final(Some(deadline)))
}

/// Yields the futures in the order their runs become final.
///
/// ```no_run
/// # use flowrun_core::TaskFuture;
/// # fn demo(futures: Vec<TaskFuture<u32>>) {
/// for done in flowrun_core::as_completed(futures) {
///     println!("{} finished: {:?}", done.name(), done.result());
/// }
/// # }
/// ```
pub fn as_completed<T: Send + 'static>(
    futures: impl IntoIterator<Item = TaskFuture<T>>,
) -> AsCompleted<T> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut slots = Vec::new();
    for (i, f) in futures.into_iter().enumerate() {
        let tx = tx.clone();
        f.cell.on_final(Box::new(move || {
            let _ = tx.send(i);
        }));
        slots.push(Some(f));
    }
    AsCompleted {
        remaining: slots.len(),
        slots,
        rx,
    }
}

/// The iterator returned by [`as_completed`].
#[derive(Debug)]
pub struct AsCompleted<T: Send + 'static> {
    slots: Vec<Option<TaskFuture<T>>>,
    remaining: usize,
    rx: crossbeam_channel::Receiver<usize>,
}

impl<T: Send + 'static> Iterator for AsCompleted<T> {
    type Item = TaskFuture<T>;

    fn next(&mut self) -> Option<TaskFuture<T>> {
        if self.remaining == 0 {
            return None;
        }
        let rx = &self.rx;
        let index = crate::exec::pool::blocking(|| rx.recv()).ok()?;
        self.remaining -= 1;
        self.slots[index].take()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

/// Reads the results of `futures` in order, stopping at the first failure.
///
/// ```no_run
/// # use flowrun_core::TaskFuture;
/// # fn demo(futures: Vec<TaskFuture<u32>>) -> Result<(), flowrun_core::TaskError> {
/// let values: Vec<u32> = flowrun_core::results(futures)?;
/// # Ok(()) }
/// ```
pub fn results<T: Send + 'static>(
    futures: impl IntoIterator<Item = TaskFuture<T>>,
) -> Result<Vec<T>, TaskError> {
    futures.into_iter().map(TaskFuture::into_result).collect()
}

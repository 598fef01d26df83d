//! `TaskFuture<T>`: the typed handle returned by `submit`, and the free
//! functions [`wait`], [`wait_timeout`], [`as_completed`] and
//! [`as_completed_timeout`].

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

/// The futures [`wait_timeout`] found final, and those still running when
/// its timeout passed (Prefect's `DoneAndNotDone`).
#[derive(Debug)]
#[must_use]
pub struct DoneAndNotDone<T: Send + 'static> {
    /// The futures whose runs are final, in the order given.
    pub done: Vec<TaskFuture<T>>,
    /// The futures whose runs were not final at the timeout, in the order given.
    pub not_done: Vec<TaskFuture<T>>,
}

/// Blocks until every run in `futures` is final or `timeout` passed, and
/// returns the futures split into done and not done, as Prefect's
/// `wait(futures, timeout)` does. Like [`wait`], it reads no results.
///
/// ```
/// use std::time::Duration;
/// use flowrun_core::{wait_timeout, TaskFuture};
///
/// fn split(futures: &[TaskFuture<u32>]) {
///     let sets = wait_timeout(futures, Duration::from_secs(5));
///     for late in &sets.not_done {
///         late.cancel();
///     }
///     println!("{} done, {} not done", sets.done.len(), sets.not_done.len());
/// }
/// # let _ = split;
/// ```
pub fn wait_timeout<'a, T: Send + 'static>(
    futures: impl IntoIterator<Item = &'a TaskFuture<T>>,
    timeout: Duration,
) -> DoneAndNotDone<T> {
    let deadline = Instant::now() + timeout;
    let (done, not_done) = futures
        .into_iter()
        .cloned()
        .partition(|f| f.cell.block_until_final(Some(deadline)));
    DoneAndNotDone { done, not_done }
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
    as_completed_until(futures, None)
}

/// [`as_completed`] that stops at `timeout`: the iterator ends when the
/// time is up, and [`AsCompleted::timed_out`] and
/// [`AsCompleted::into_not_done`] then say what was still running (where
/// Prefect's `as_completed(futures, timeout)` raises `TimeoutError`).
///
/// ```
/// use std::time::Duration;
/// use flowrun_core::{as_completed_timeout, TaskFuture};
///
/// fn first_answers(futures: Vec<TaskFuture<u32>>) -> Vec<u32> {
///     let mut finished = as_completed_timeout(futures, Duration::from_secs(1));
///     let answers = finished.by_ref().filter_map(|f| f.result().ok()).collect();
///     if finished.timed_out() {
///         for late in finished.into_not_done() {
///             late.cancel();
///         }
///     }
///     answers
/// }
/// # let _ = first_answers;
/// ```
pub fn as_completed_timeout<T: Send + 'static>(
    futures: impl IntoIterator<Item = TaskFuture<T>>,
    timeout: Duration,
) -> AsCompleted<T> {
    as_completed_until(futures, Some(Instant::now() + timeout))
}

fn as_completed_until<T: Send + 'static>(
    futures: impl IntoIterator<Item = TaskFuture<T>>,
    deadline: Option<Instant>,
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
        deadline,
        timed_out: false,
    }
}

/// The iterator returned by [`as_completed`] and [`as_completed_timeout`].
#[derive(Debug)]
pub struct AsCompleted<T: Send + 'static> {
    slots: Vec<Option<TaskFuture<T>>>,
    remaining: usize,
    rx: crossbeam_channel::Receiver<usize>,
    deadline: Option<Instant>,
    timed_out: bool,
}

impl<T: Send + 'static> AsCompleted<T> {
    /// Whether the iterator ended because its timeout passed while some
    /// runs were not final.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// The futures not yielded yet, in the order given.
    pub fn into_not_done(self) -> Vec<TaskFuture<T>> {
        self.slots.into_iter().flatten().collect()
    }
}

impl<T: Send + 'static> Iterator for AsCompleted<T> {
    type Item = TaskFuture<T>;

    fn next(&mut self) -> Option<TaskFuture<T>> {
        if self.remaining == 0 || self.timed_out {
            return None;
        }
        let rx = &self.rx;
        let received = match self.deadline {
            None => crate::exec::pool::blocking(|| rx.recv()).ok(),
            Some(d) => match crate::exec::pool::blocking(|| rx.recv_deadline(d)) {
                Ok(i) => Some(i),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    self.timed_out = true;
                    None
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
            },
        };
        let index = received?;
        self.remaining -= 1;
        self.slots[index].take()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // With a deadline, the iterator may end before every run is final.
        let least = if self.deadline.is_some() {
            0
        } else {
            self.remaining
        };
        (least, Some(self.remaining))
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

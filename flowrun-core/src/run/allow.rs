//! [`allow_failure`]: a dependency whose failure the downstream run
//! receives as an `Err` instead of failing without running, as Prefect's
//! `allow_failure` does.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::future::TaskFuture;
use crate::run::record::RunRef;
use crate::task::input::{Input, IntoInput};

/// A future whose failure is passed on: see [`allow_failure`].
#[derive(Debug)]
pub struct AllowFailure<T: Send + 'static>(TaskFuture<T>);

/// Passes `future` to a task that takes `Result<T, TaskError>`: the task
/// waits for the upstream run, as for any dependency, and then runs in any
/// case, with `Ok(value)` if the upstream completed and `Err(error)` if it
/// failed, crashed or was cancelled. The upstream's failure counts as
/// handled. On runners in other processes (the local cluster, a real Dask
/// cluster) the flow process reads the upstream's outcome once it is final
/// and sends it with the call.
///
/// ```
/// use flowrun_core::{allow_failure, AllowFailure, TaskFuture};
///
/// // What a task taking `Result<u32, TaskError>` accepts for that argument.
/// fn pass_on(upstream: &TaskFuture<u32>) -> AllowFailure<u32> {
///     allow_failure(upstream)
/// }
/// # let _ = pass_on;
/// ```
///
/// With the macros (`flowrun`'s `#[task]` documentation has the whole flow):
/// `report.submit(allow_failure(fetch.submit(url)))`.
pub fn allow_failure<T: Send + 'static>(future: impl Into<TaskFuture<T>>) -> AllowFailure<T> {
    AllowFailure(future.into())
}

impl<T: Send + 'static> From<&TaskFuture<T>> for TaskFuture<T> {
    fn from(future: &TaskFuture<T>) -> Self {
        future.clone()
    }
}

/// The upstream of an [`Input::AllowFailure`], with its value type erased.
pub struct AllowedUpstream<A: Send + 'static>(Box<dyn Allowed<A>>);

trait Allowed<A>: Send {
    fn run_ref(&self) -> RunRef;
    /// The outcome, once the upstream run is final.
    fn outcome(&self, last: bool) -> A;
}

impl<T: Send + 'static> Allowed<Result<T, TaskError>> for TaskFuture<T> {
    fn run_ref(&self) -> RunRef {
        TaskFuture::run_ref(self)
    }

    fn outcome(&self, last: bool) -> Result<T, TaskError> {
        self.cell.mark_observed();
        self.cell.take_result(last && self.cell.handles() == 1)
    }
}

impl<A: Send + 'static> AllowedUpstream<A> {
    /// The upstream run.
    pub fn upstream(&self) -> RunRef {
        self.0.run_ref()
    }

    /// The upstream's outcome, taken for the one downstream call.
    pub(crate) fn take(self) -> A {
        self.0.outcome(true)
    }

    /// The upstream's outcome, for a call that sends it to another
    /// process; `None` while the upstream is not final (the engine waits
    /// for it first, so this is a safeguard).
    pub(crate) fn peek(&self) -> Option<A> {
        let run = self.0.run_ref();
        run.state().is_final().then(|| self.0.outcome(false))
    }
}

impl<A: Send + 'static> fmt::Debug for AllowedUpstream<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AllowedUpstream({})", self.0.run_ref().name())
    }
}

impl<T: Send + 'static> IntoInput<Result<T, TaskError>> for AllowFailure<T> {
    fn into_input(self) -> Input<Result<T, TaskError>> {
        Input::AllowFailure(AllowedUpstream(Box::new(self.0)))
    }
}

/// A [`TaskError`] as it crosses a process boundary (for `allow_failure`
/// arguments of tasks on another process).
#[derive(Serialize, Deserialize)]
struct WireError {
    kind: TaskErrorKind,
    message: String,
    task_run: Option<String>,
    printed: Option<String>,
}

impl Serialize for TaskError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireError {
            kind: self.kind().clone(),
            message: self.message().to_owned(),
            task_run: self.task_run().map(str::to_owned),
            printed: self.printed().map(str::to_owned),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TaskError {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = WireError::deserialize(deserializer)?;
        let mut e = TaskError::new(w.kind, w.message);
        if let Some(run) = w.task_run {
            e = e.in_run(run);
        }
        if let Some(printed) = w.printed {
            e = e.with_printed(printed);
        }
        Ok(e)
    }
}

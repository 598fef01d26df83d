//! Run states: what a task or flow run is doing, or how it ended.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// The kind of a [`State`], as Prefect users know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum StateKind {
    /// Created, waiting for its dependencies or for a free worker.
    Pending,
    /// Executing now.
    Running,
    /// Finished and produced a result.
    Completed,
    /// Its code returned an error, panicked, timed out, or an upstream run failed.
    Failed,
    /// The process or worker that ran it was lost.
    Crashed,
    /// Stopped before it finished, by the user or because its flow ended.
    Cancelled,
    /// An attempt failed; another attempt starts after the retry delay.
    AwaitingRetry,
    /// Executing an attempt after the first.
    Retrying,
}

impl StateKind {
    /// The run will not change state again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            StateKind::Completed | StateKind::Failed | StateKind::Crashed | StateKind::Cancelled
        )
    }

    /// The run ended without a result.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            StateKind::Failed | StateKind::Crashed | StateKind::Cancelled
        )
    }

    /// The name Prefect shows for this kind (`"Completed"`, `"AwaitingRetry"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Pending => "Pending",
            StateKind::Running => "Running",
            StateKind::Completed => "Completed",
            StateKind::Failed => "Failed",
            StateKind::Crashed => "Crashed",
            StateKind::Cancelled => "Cancelled",
            StateKind::AwaitingRetry => "AwaitingRetry",
            StateKind::Retrying => "Retrying",
        }
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a run's state: its kind, an optional name that refines the
/// kind (`"TimedOut"` for a timed-out [`StateKind::Failed`] run), a message
/// and when the run entered it.
///
/// `Display` prints it the way Prefect logs do: `Completed()`,
/// `Failed('boom')`.
///
/// ```
/// use flowrun_core::{State, StateKind};
/// let state = State::new(StateKind::Failed).with_message("boom");
/// assert_eq!(state.to_string(), "Failed('boom')");
/// assert!(state.is_failed());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    kind: StateKind,
    name: Option<&'static str>,
    message: Option<Arc<str>>,
    timestamp: SystemTime,
}

impl State {
    /// A state of `kind`, entered now, without a message.
    pub fn new(kind: StateKind) -> State {
        State {
            kind,
            name: None,
            message: None,
            timestamp: SystemTime::now(),
        }
    }

    /// The same state with `message`.
    pub fn with_message(mut self, message: impl Into<Arc<str>>) -> State {
        self.message = Some(message.into());
        self
    }

    /// A `Completed` state named `Cached`: the run's result was read from
    /// the cache and its task did not execute (Prefect's `Cached` state).
    ///
    /// ```
    /// use flowrun_core::State;
    /// let state = State::cached();
    /// assert_eq!(state.name(), "Cached");
    /// assert!(state.is_completed() && state.is_cached());
    /// ```
    pub fn cached() -> State {
        State::new(StateKind::Completed).with_name("Cached")
    }

    /// The run completed from the cache, without executing.
    pub fn is_cached(&self) -> bool {
        self.kind == StateKind::Completed && self.name == Some("Cached")
    }

    /// The same state with a refining name, such as `"TimedOut"`.
    pub fn with_name(mut self, name: &'static str) -> State {
        self.name = Some(name);
        self
    }

    pub(crate) fn at(mut self, timestamp: SystemTime) -> State {
        self.timestamp = timestamp;
        self
    }

    /// The kind of state.
    pub fn kind(&self) -> StateKind {
        self.kind
    }

    /// The displayed name: the refining name if any, else the kind's name.
    pub fn name(&self) -> &str {
        self.name.unwrap_or(self.kind.as_str())
    }

    /// The message, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// When the run entered this state.
    pub fn timestamp(&self) -> SystemTime {
        self.timestamp
    }

    /// The run will not change state again.
    pub fn is_final(&self) -> bool {
        self.kind.is_final()
    }

    /// The run completed with a result.
    pub fn is_completed(&self) -> bool {
        self.kind == StateKind::Completed
    }

    /// The run failed (its own error, a timeout, or an upstream failure).
    pub fn is_failed(&self) -> bool {
        self.kind == StateKind::Failed
    }

    /// The run crashed: the worker or process running it was lost.
    pub fn is_crashed(&self) -> bool {
        self.kind == StateKind::Crashed
    }

    /// The run was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.kind == StateKind::Cancelled
    }

    /// The run is pending (waiting for dependencies or a worker).
    pub fn is_pending(&self) -> bool {
        self.kind == StateKind::Pending
    }

    /// The run is executing (first attempt or a retry).
    pub fn is_running(&self) -> bool {
        matches!(self.kind, StateKind::Running | StateKind::Retrying)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(message) => write!(f, "{}('{}')", self.name(), message),
            None => write!(f, "{}()", self.name()),
        }
    }
}

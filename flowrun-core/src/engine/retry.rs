//! The retry policy applied to attempts: which failures are retried, the
//! arguments kept for the next attempt, a run's policy, and the timeout and
//! retry messages every kind of run logs.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::record::RunCell;
use crate::run::state::StateKind;
use crate::task::options::RetryPolicy;

/// Whether a failure of this kind may be retried.
pub(super) fn retryable(error: &TaskError) -> bool {
    matches!(
        error.kind(),
        TaskErrorKind::Error
            | TaskErrorKind::Panic
            | TaskErrorKind::TimedOut
            | TaskErrorKind::Crashed
            | TaskErrorKind::KilledWorker
    )
}

/// Holds a call's arguments across attempts: cloned for attempts that may
/// be followed by a retry, moved into the last one.
pub(crate) struct ArgsHolder<A> {
    args: Option<A>,
    clone: Option<fn(&A) -> A>,
}

impl<A> ArgsHolder<A> {
    pub(crate) fn new(args: A, clone: Option<fn(&A) -> A>) -> ArgsHolder<A> {
        ArgsHolder {
            args: Some(args),
            clone,
        }
    }

    /// The arguments of the next attempt: a clone, or the originals for the
    /// `last` attempt (or when they cannot be cloned).
    pub(crate) fn for_attempt(&mut self, last: bool) -> Option<A> {
        match self.clone {
            Some(clone) if !last => self.args.as_ref().map(clone),
            _ => self.args.take(),
        }
    }

    /// Whether another attempt can get arguments after this one.
    pub(crate) fn can_retry(&self) -> bool {
        self.clone.is_some() && self.args.is_some()
    }
}

/// A run's retry policy: the task's own (shared), or a per-call override.
pub(super) enum PolicyRef {
    Static(&'static RetryPolicy),
    Owned(Box<RetryPolicy>),
}

impl From<Cow<'static, RetryPolicy>> for PolicyRef {
    fn from(p: Cow<'static, RetryPolicy>) -> PolicyRef {
        match p {
            Cow::Borrowed(p) => PolicyRef::Static(p),
            Cow::Owned(p) => PolicyRef::Owned(Box::new(p)),
        }
    }
}

impl std::ops::Deref for PolicyRef {
    type Target = RetryPolicy;
    fn deref(&self) -> &RetryPolicy {
        match self {
            PolicyRef::Static(p) => p,
            PolicyRef::Owned(p) => p,
        }
    }
}

/// Moves a task run whose `attempt` failed with `error` to AwaitingRetry
/// and logs when the retry starts. Returns the delay before the retry and
/// whether the run accepted the state (it may have become final meanwhile).
pub(super) fn await_retry<T: Send + 'static>(
    cell: &Arc<RunCell<T>>,
    attempt: u32,
    policy: &RetryPolicy,
    error: &TaskError,
) -> (Duration, bool) {
    let delay = policy.delay_before(attempt);
    let message = format!(
        "Retry {attempt}/{} will start {} from now: {}",
        policy.retries,
        human_duration(delay),
        error.message()
    );
    let accepted = cell.transition(
        StateKind::AwaitingRetry,
        Some(Arc::from(message.as_str())),
        attempt,
    );
    if accepted {
        crate::run_event!(
            tracing::Level::WARN,
            format!("Task run '{}'", cell.name()),
            "{message}"
        );
    }
    (delay, accepted)
}

/// The failure of an attempt that ran out of time.
pub(crate) fn timed_out(timeout: Duration) -> TaskError {
    TaskError::new(
        TaskErrorKind::TimedOut,
        format!("timed out after {}", human_duration(timeout)),
    )
}

/// `250ms`, `3s`, `1.5s`: durations in messages.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s == 0.0 {
        "0s".to_owned()
    } else if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.1}s")
    }
}

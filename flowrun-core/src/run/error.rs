//! Errors of task runs ([`TaskError`]) and flow runs ([`FlowError`]).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::run::state::State;

/// Why a task run failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum TaskErrorKind {
    /// The task returned `Err`.
    Error,
    /// The task panicked.
    Panic,
    /// An attempt ran longer than the task's timeout.
    TimedOut,
    /// An upstream run it depends on did not complete; it never ran.
    UpstreamFailed {
        /// The name of the upstream task run, such as `"load-2"`.
        upstream: String,
    },
    /// The worker process running it was lost.
    Crashed,
    /// It was running on more workers that died than the cluster allows
    /// (`allowed_failures`), so the cluster gave up on it.
    KilledWorker,
    /// It was cancelled before it finished.
    Cancelled,
    /// The task runner could not run it (for example its arguments cannot be
    /// serialized for a runner that moves tasks between processes).
    Runner,
    /// Its result exists but cannot be handed out (a non-`Clone` result
    /// already taken by another consumer, or bytes that do not decode).
    ResultUnavailable,
}

/// The failure of a task run: what kind of failure, the run's name, and the
/// message of the underlying error or panic.
///
/// The original error value of a task that returned `Err(e)` in this process
/// is kept and can be recovered with [`TaskError::downcast_ref`].
///
/// ```
/// use flowrun_core::{TaskError, TaskErrorKind};
/// let error = TaskError::new(TaskErrorKind::Error, "disk full").in_run("save-2");
/// assert_eq!(error.to_string(), "task run 'save-2' failed: disk full");
/// assert_eq!(error.kind(), &TaskErrorKind::Error);
/// ```
#[derive(Clone)]
pub struct TaskError {
    inner: Arc<Inner>,
}

struct Inner {
    kind: TaskErrorKind,
    message: String,
    task_run: Option<String>,
    printed: Option<String>,
    source: Option<Arc<dyn Any + Send + Sync>>,
}

impl TaskError {
    /// The failure of a run that did not start because its upstream run
    /// `upstream` ended with `cause`: what every runner reports then.
    ///
    /// ```
    /// use flowrun_core::{TaskError, TaskErrorKind};
    /// let cause = TaskError::new(TaskErrorKind::Error, "disk full");
    /// let e = TaskError::upstream_failed("save-0", &cause);
    /// assert_eq!(e.message(), "upstream task run 'save-0' did not complete: disk full");
    /// ```
    pub fn upstream_failed(upstream: &str, cause: &TaskError) -> TaskError {
        TaskError::new(
            TaskErrorKind::UpstreamFailed {
                upstream: upstream.to_owned(),
            },
            format!(
                "upstream task run '{upstream}' did not complete: {}",
                cause.message()
            ),
        )
    }

    /// A failure of `kind` with `message`.
    pub fn new(kind: TaskErrorKind, message: impl Into<String>) -> TaskError {
        TaskError {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                task_run: None,
                printed: None,
                source: None,
            }),
        }
    }

    /// The failure of a task that returned `Err(error)`: the message is the
    /// error's alternate `Display` (which includes causes for `anyhow`), and
    /// the value is kept for [`TaskError::downcast_ref`].
    pub fn from_error<E>(error: E) -> TaskError
    where
        E: fmt::Display + Send + Sync + 'static,
    {
        let message = format!("{error:#}");
        let mut e = TaskError::new(TaskErrorKind::Error, message);
        Arc::get_mut(&mut e.inner).expect("fresh").source = Some(Arc::new(error));
        e
    }

    /// The failure of a task that panicked with `payload`.
    pub fn from_panic(payload: Box<dyn Any + Send>) -> TaskError {
        TaskError::new(TaskErrorKind::Panic, panic_message(&*payload))
    }

    /// The same error, attributed to the task run named `name`.
    pub fn in_run(self, name: impl Into<String>) -> TaskError {
        let mut inner = self.unwrap_inner();
        inner.task_run = Some(name.into());
        TaskError {
            inner: Arc::new(inner),
        }
    }

    /// The same error with what the task printed before it failed.
    pub fn with_printed(self, printed: impl Into<String>) -> TaskError {
        let mut inner = self.unwrap_inner();
        let printed = printed.into();
        inner.printed = if printed.is_empty() {
            None
        } else {
            Some(printed)
        };
        TaskError {
            inner: Arc::new(inner),
        }
    }

    fn unwrap_inner(self) -> Inner {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                kind: shared.kind.clone(),
                message: shared.message.clone(),
                task_run: shared.task_run.clone(),
                printed: shared.printed.clone(),
                source: shared.source.clone(),
            },
        }
    }

    /// Why the run failed.
    pub fn kind(&self) -> &TaskErrorKind {
        &self.inner.kind
    }

    /// The message of the error or panic, without the run's name.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The name of the task run that failed, when known.
    pub fn task_run(&self) -> Option<&str> {
        self.inner.task_run.as_deref()
    }

    /// What the task printed before it failed, when it ran in another
    /// process and its printed text was captured.
    pub fn printed(&self) -> Option<&str> {
        self.inner.printed.as_deref()
    }

    /// The original `Err` value, if the task returned `Err(E)` in this process.
    pub fn downcast_ref<E: 'static>(&self) -> Option<&E> {
        self.inner.source.as_ref()?.downcast_ref::<E>()
    }

    pub(crate) fn source(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.inner.source.clone()
    }

    /// The run timed out.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == TaskErrorKind::TimedOut
    }

    /// The state a run that failed this way ends in.
    pub fn state(&self) -> State {
        use crate::run::state::StateKind;
        let state = match self.inner.kind {
            TaskErrorKind::Crashed | TaskErrorKind::KilledWorker => State::new(StateKind::Crashed),
            TaskErrorKind::Cancelled => State::new(StateKind::Cancelled),
            TaskErrorKind::TimedOut => State::new(StateKind::Failed).with_name("TimedOut"),
            TaskErrorKind::UpstreamFailed { .. } => {
                State::new(StateKind::Failed).with_name("NotReady")
            }
            _ => State::new(StateKind::Failed),
        };
        state.with_message(self.inner.message.as_str())
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.task_run {
            Some(run) => write!(f, "task run '{}' failed: {}", run, self.inner.message),
            None => write!(f, "task failed: {}", self.inner.message),
        }
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("kind", &self.inner.kind)
            .field("task_run", &self.inner.task_run)
            .field("message", &self.inner.message)
            .field("printed", &self.inner.printed)
            .finish()
    }
}

impl std::error::Error for TaskError {}

/// The text of a panic payload (`&str` or `String`), or a placeholder for
/// other payload types.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panicked with a non-string payload".to_owned()
    }
}

/// A task run that did not complete, as reported in a flow run's final state.
#[derive(Debug, Clone)]
pub struct TaskRunFailure {
    /// The task run's name, such as `"shout-3"`.
    pub task_run: String,
    /// The final state of the task run.
    pub state: State,
    /// The failure.
    pub error: TaskError,
    /// Whether the flow read this failure (through the run's future, its
    /// state, or a downstream task that depended on it).
    pub observed: bool,
}

/// Why a flow run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowErrorKind {
    /// The flow returned `Err`.
    Error,
    /// The flow panicked.
    Panic,
    /// The flow ran longer than its timeout.
    TimedOut,
    /// Task runs failed and the flow never read their results.
    TaskRunsFailed,
    /// The task runner could not start (bad settings, unreachable cluster...).
    RunnerFailed,
}

/// The failure of a flow run.
///
/// It carries every task run that failed during the flow run
/// ([`FlowError::task_failures`]), including ones whose futures nobody read.
#[derive(Clone)]
pub struct FlowError {
    kind: FlowErrorKind,
    flow_run: String,
    message: String,
    task_failures: Vec<TaskRunFailure>,
    source: Option<Arc<dyn Any + Send + Sync>>,
}

impl FlowError {
    /// A flow failure of `kind` in the flow run named `flow_run`.
    pub fn new(
        kind: FlowErrorKind,
        flow_run: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        FlowError {
            kind,
            flow_run: flow_run.into(),
            message: message.into(),
            task_failures: Vec::new(),
            source: None,
        }
    }

    pub(crate) fn with_source(mut self, source: Option<Arc<dyn Any + Send + Sync>>) -> Self {
        self.source = source;
        self
    }

    pub(crate) fn with_task_failures(mut self, failures: Vec<TaskRunFailure>) -> Self {
        self.task_failures = failures;
        self
    }

    /// Why the flow run failed.
    pub fn kind(&self) -> &FlowErrorKind {
        &self.kind
    }

    /// The flow run's name.
    pub fn flow_run(&self) -> &str {
        &self.flow_run
    }

    /// The message, without the flow run's name.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Every task run of this flow run that did not complete.
    pub fn task_failures(&self) -> &[TaskRunFailure] {
        &self.task_failures
    }

    /// The original `Err` value, if the flow returned `Err(E)`.
    pub fn downcast_ref<E: 'static>(&self) -> Option<&E> {
        self.source.as_ref()?.downcast_ref::<E>()
    }
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flow run '{}' failed: {}", self.flow_run, self.message)
    }
}

crate::__debug_fields!(FlowError {
    kind,
    flow_run,
    message,
    task_failures
});

impl std::error::Error for FlowError {}

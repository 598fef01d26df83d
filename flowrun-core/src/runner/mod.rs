//! The [`TaskRunner`] trait: what executes task runs for a flow run.
//!
//! A flow run creates its runner, calls [`TaskRunner::start`], hands it
//! every attempt of every task run as a [`TaskCall`], waits until all runs
//! are final, then calls [`TaskRunner::shutdown`]. Retries, timeouts,
//! dependencies and states are handled by flowrun around the runner: a
//! runner only executes attempts.
//!
//! Two runners come with flowrun: the [`thread_pool`] runner (the default)
//! and the [`serializing`] one, which runs every task as a worker process
//! would.

pub(crate) mod serializing;
pub(crate) mod thread_pool;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::record::RunRef;
use crate::task::annotations::Annotations;
use crate::task::args::ArgSlot;

/// How a runner executes attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// In this process: calls carry a [`LocalJob`].
    InProcess,
    /// Serialized: calls carry a [`SerializedJob`] with serialized
    /// arguments and the results of upstream runs already resolved to bytes,
    /// to run anywhere (another thread, process or machine).
    Serialized,
    /// Elsewhere, and the runner moves the results of upstream runs itself:
    /// upstream arguments stay [`ArgSlot::Upstream`] and a call is handed
    /// over as soon as it is submitted.
    SerializedWithDependencies,
}

/// What a runner learns about the flow run it serves.
#[derive(Debug, Clone)]
pub struct FlowRunInfo {
    /// The flow's name, such as `count-to`.
    pub flow_name: String,
    /// The flow run's name, such as `brave-otter`.
    pub flow_run_name: String,
    /// The flow run's id.
    pub flow_run_id: String,
    /// The id of the flow run this one is a subflow of, if any.
    pub parent_flow_run_id: Option<String>,
    /// The flow run itself, to submit more work into it.
    pub flow: crate::flow::scope::FlowHandle,
    /// Its parameters as a JSON object of their names, in the order of the
    /// flow's signature; a parameter whose type is not `Serialize` is
    /// `"<not serializable>"`. `None` when no history records this run.
    pub parameters: Option<String>,
    /// Its tags (`#[flow(tags = [...])]`, [`FlowOptions::tags`](crate::FlowOptions::tags)).
    pub tags: Vec<String>,
    /// Whether the run history records it: `#[flow(history = false)]` and
    /// [`FlowOptions::history`](crate::FlowOptions::history) say no; a
    /// subflow that does not say follows its parent.
    pub history: bool,
}

/// A runner could not start or could not run a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RunnerError {
    message: String,
}

impl RunnerError {
    /// An error with `message`, which should name the cause.
    pub fn new(message: impl Into<String>) -> RunnerError {
        RunnerError {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Executes the task runs of a flow run.
///
/// ```
/// use flowrun_core::{TaskCall, TaskRunner, Work};
///
/// /// Runs every attempt on the thread that submits it.
/// struct Inline;
///
/// impl TaskRunner for Inline {
///     fn name(&self) -> std::borrow::Cow<'static, str> {
///         "Inline".into()
///     }
///     fn submit(&self, call: TaskCall) {
///         match call.into_work() {
///             Work::Local(job) => job.run(),
///             Work::Serialized(job) => job.refuse("Inline runs tasks in this process only"),
///         }
///     }
/// }
/// ```
pub trait TaskRunner: Send + Sync + 'static {
    /// The runner's name, for logs.
    fn name(&self) -> Cow<'static, str>;

    /// How this runner executes attempts.
    fn execution(&self) -> Execution {
        Execution::InProcess
    }

    /// Prepares to run tasks for `flow` (starts pools, clusters...). Called
    /// once, before the flow body runs. Slow start-up should proceed in the
    /// background, with submitted calls queued until it is ready.
    fn start(&self, flow: &FlowRunInfo) -> Result<(), RunnerError> {
        let _ = flow;
        Ok(())
    }

    /// Executes one attempt of a task run. Must not block for long.
    fn submit(&self, call: TaskCall);

    /// Whether the runner retries failed attempts itself, from the
    /// `retries` the call carries (a runner that hands a run to another
    /// flow process, which retries it). flowrun then makes one attempt and
    /// takes its outcome as final, so the run's retry delay, retry
    /// condition and per-attempt hooks are the runner's to apply.
    fn handles_retries(&self) -> bool {
        false
    }

    /// Whether the process that executes a serialized attempt calls the
    /// task's own hooks (`on_running`, `on_completion`, `on_failure` of its
    /// attribute) around it, as Prefect calls task hooks where the task
    /// runs. Such a runner passes [`SerializedJob::task_hooks`] to
    /// [`RegistryEntry::run_attempt`](crate::registry::RegistryEntry::run_attempt);
    /// the flow process then calls only what the executing process cannot
    /// know of (see [`TaskHookCall`](crate::TaskHookCall)).
    fn runs_task_hooks(&self) -> bool {
        false
    }

    /// Releases everything [`start`](TaskRunner::start) acquired. Called once,
    /// after every run of the flow run is final (also when the flow failed).
    fn shutdown(&self) {}

    /// `run` was cancelled before it started (it is final already): drop
    /// its attempt if the runner still holds it, so it never runs.
    fn cancel(&self, run: &RunRef) {
        let _ = run;
    }

    /// Whether a failing flow run stops the task runs still running instead
    /// of waiting for them: they end `Cancelled` and the runner shuts down
    /// at once (Prefect's Dask runner closes its cluster on an exception).
    fn stops_running_on_failure(&self) -> bool {
        false
    }
}

/// A shared or boxed runner is a runner.
macro_rules! forward_runner {
    ($($ptr:ident),*) => {$(
        impl<R: TaskRunner + ?Sized> TaskRunner for $ptr<R> {
            fn name(&self) -> Cow<'static, str> {
                (**self).name()
            }
            fn execution(&self) -> Execution {
                (**self).execution()
            }
            fn start(&self, flow: &FlowRunInfo) -> Result<(), RunnerError> {
                (**self).start(flow)
            }
            fn submit(&self, call: TaskCall) {
                (**self).submit(call)
            }
            fn handles_retries(&self) -> bool {
                (**self).handles_retries()
            }
            fn runs_task_hooks(&self) -> bool {
                (**self).runs_task_hooks()
            }
            fn shutdown(&self) {
                (**self).shutdown()
            }
            fn cancel(&self, run: &RunRef) {
                (**self).cancel(run)
            }
            fn stops_running_on_failure(&self) -> bool {
                (**self).stops_running_on_failure()
            }
        }

        impl<T: crate::task::Task, R: TaskRunner + ?Sized> crate::task::AcceptsTask<T> for $ptr<R> {}
    )*};
}
forward_runner!(Arc, Box);

/// One attempt of one task run, handed to a runner.
pub struct TaskCall {
    pub(crate) run: RunRef,
    pub(crate) attempt: u32,
    pub(crate) retries: u32,
    pub(crate) annotations: Annotations,
    pub(crate) work: Work,
}

impl TaskCall {
    /// The task run.
    pub fn run(&self) -> &RunRef {
        &self.run
    }

    /// The attempt number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many retries the run allows (for runners that retry themselves,
    /// see [`TaskRunner::handles_retries`]).
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The priority and resources of the run.
    pub fn annotations(&self) -> &Annotations {
        &self.annotations
    }

    /// The work, to execute it.
    pub fn into_work(self) -> Work {
        self.work
    }

    /// Both parts.
    pub fn into_parts(self) -> (RunRef, Annotations, Work) {
        (self.run, self.annotations, self.work)
    }

    /// The parts a runner of serialized work needs: the run, its
    /// annotations and the serialized job. Work that can only run in this
    /// process (which a runner saying [`Execution::Serialized`] is not
    /// handed, unless a runner wrapping it says otherwise) is refused with
    /// `why`, which fails the attempt with a `Runner` error; then there is
    /// nothing to run and `None` comes back.
    ///
    /// ```no_run
    /// # use flowrun_core::TaskCall;
    /// fn submit(call: TaskCall) {
    ///     let Some((run, annotations, job)) =
    ///         call.into_serialized_parts("this runner runs serialized calls only")
    ///     else {
    ///         return;
    ///     };
    ///     // ... send `job.args()` away, then `job.finish(...)`.
    /// #   let _ = (run, annotations, job);
    /// }
    /// ```
    pub fn into_serialized_parts(
        self,
        why: impl Into<String>,
    ) -> Option<(RunRef, Annotations, SerializedJob)> {
        match self.work {
            Work::Serialized(job) => Some((self.run, self.annotations, job)),
            Work::Local(job) => {
                job.refuse(why);
                None
            }
        }
    }
}

impl fmt::Debug for TaskCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskCall")
            .field("run", &self.run.name())
            .field("attempt", &self.attempt)
            .field("annotations", &self.annotations)
            .finish()
    }
}

/// The executable part of a [`TaskCall`].
#[derive(Debug)]
pub enum Work {
    /// Run it on a thread of this process.
    Local(LocalJob),
    /// Run it serialized, anywhere, and report the result.
    Serialized(SerializedJob),
}

/// An attempt to execute on a thread of this process. [`LocalJob::run`] does
/// everything: state changes, logging, timeouts, and reporting the outcome.
pub struct LocalJob(pub(crate) crate::exec::pool::Job);

impl LocalJob {
    /// Executes the attempt on the current thread.
    pub fn run(self) {
        self.0.run()
    }

    /// Reports that the runner cannot execute the attempt.
    pub fn refuse(self, why: impl Into<String>) {
        self.0.target.run(
            self.0.attempt,
            Some(TaskError::new(TaskErrorKind::Runner, why)),
        )
    }

    /// The attempt as pool work, without another allocation.
    pub(crate) fn into_pool_job(self) -> crate::exec::pool::Job {
        self.0
    }
}

/// Reports the outcome of a [`SerializedJob`].
pub(crate) trait SerializedCompletion: Send + Sync {
    fn started(self: Arc<Self>, attempt: u32, location: Option<Arc<str>>);
    fn finished(self: Arc<Self>, attempt: u32, result: Result<Bytes, TaskError>);
    fn finished_deferred(self: Arc<Self>, attempt: u32, fetch: crate::run::record::Fetch);
    /// A flow run the attempt called in the executing process started or
    /// ended (see [`SerializedJob::report_subflow`]).
    fn subflow(&self, report: crate::flow::subflow::SubflowReport);
    /// The run context of the attempt's run, as its own code has it.
    fn context(&self) -> crate::exec::context::Context;
}

/// An attempt to execute elsewhere: the task's registry key and its
/// serialized arguments. Report the outcome with [`SerializedJob::finish`].
pub struct SerializedJob {
    pub(crate) task_key: &'static str,
    pub(crate) task_name: Arc<str>,
    /// A name from `task_run_name`, instead of `<task_name>-<index>`.
    pub(crate) run_name: Option<Arc<str>>,
    pub(crate) args: Arc<[ArgSlot]>,
    pub(crate) reporter: SerializedReporter,
    /// Set when the executing process calls the task's hooks.
    pub(crate) hooks: Option<crate::TaskHookCall>,
}

impl SerializedJob {
    /// The registry key of the task (see [`crate::task::registry`]).
    pub fn task_key(&self) -> &'static str {
        self.task_key
    }

    /// The task's display name.
    pub fn task_name(&self) -> &str {
        &self.task_name
    }

    /// The run's name when `task_run_name` gave it one; otherwise the
    /// run is `<task_name>-<index>`.
    pub fn run_name(&self) -> Option<Arc<str>> {
        self.run_name.clone()
    }

    /// The task's display name, shared (no copy).
    pub fn shared_task_name(&self) -> Arc<str> {
        self.task_name.clone()
    }

    /// The serialized arguments, in order.
    pub fn args(&self) -> &[ArgSlot] {
        &self.args
    }

    /// What the executing process needs to call the task's own hooks around
    /// the attempt, when the flow leaves them to it (the runner
    /// [runs task hooks](TaskRunner::runs_task_hooks) and the run has no
    /// per-call hooks). Pass it to
    /// [`RegistryEntry::run_attempt`](crate::registry::RegistryEntry::run_attempt).
    pub fn task_hooks(&self) -> Option<crate::TaskHookCall> {
        self.hooks
    }

    /// A shared handle on the arguments (cheap to clone).
    pub fn shared_args(&self) -> Arc<[ArgSlot]> {
        self.args.clone()
    }

    /// Marks the run as running, at `location` (a worker's name), sharing
    /// the name instead of copying it.
    pub fn started_at(&self, location: Arc<str>) {
        self.reporter.mark_started(Some(location));
    }

    /// Marks the run as running, at `location` (a worker's name, say).
    pub fn started(&self, location: Option<&str>) {
        self.reporter.started(location);
    }

    /// Links a flow run that the attempt called where it executes (its
    /// start or its end, as [`report_subflows_to`](crate::report_subflows_to)
    /// gave it there) to this task run: the flow process lists it among its
    /// flow run's subflows and its observers see it. Report it before the
    /// attempt's outcome.
    pub fn report_subflow(&self, report: crate::SubflowReport) {
        if let Some(c) = &self.reporter.completion {
            c.subflow(report);
        }
    }

    /// Runs `f` as this job's task run: the log lines `f` emits are the
    /// run's, for the console label, the run history and every log tap,
    /// as if the run's own code had logged them. For what the attempt
    /// printed or logged where it executed, re-emitted in the flow's
    /// process on another thread: a line that only names its run could be
    /// a same-named run's of another flow run.
    ///
    /// ```
    /// # fn relay(job: &flowrun_core::SerializedJob, printed: &str) {
    /// job.in_run(|| tracing::info!("{printed}"));
    /// # }
    /// ```
    pub fn in_run<R>(&self, f: impl FnOnce() -> R) -> R {
        let _entered = self
            .reporter
            .completion
            .as_ref()
            .map(|c| crate::exec::context::enter(c.context()));
        f()
    }

    /// Reports the attempt's outcome: the serialized result, or the failure.
    pub fn finish(self, result: Result<Bytes, TaskError>) {
        self.reporter.finish(result);
    }

    /// Reports that the attempt completed, with a result that stays where
    /// it was computed until someone reads it: `fetch` gets its bytes (it
    /// may block). Results that only feed other serialized runs are never
    /// fetched.
    pub fn finish_deferred(
        self,
        fetch: impl Fn() -> Result<Bytes, TaskError> + Send + Sync + 'static,
    ) {
        self.reporter.finish_deferred(fetch);
    }

    /// Reports that the runner cannot execute the attempt.
    pub fn refuse(self, why: impl Into<String>) {
        self.finish(Err(TaskError::new(TaskErrorKind::Runner, why)))
    }
}

/// Reports the outcome of a [`SerializedJob`]'s attempt.
///
/// Dropped without a report (a runner lost the job), it fails the attempt
/// as `Crashed` so the flow run never waits for it.
pub(crate) struct SerializedReporter {
    attempt: u32,
    completion: Option<Arc<dyn SerializedCompletion>>,
}

impl SerializedReporter {
    pub(crate) fn new(
        attempt: u32,
        completion: Arc<dyn SerializedCompletion>,
    ) -> SerializedReporter {
        SerializedReporter {
            attempt,
            completion: Some(completion),
        }
    }

    fn mark_started(&self, location: Option<Arc<str>>) {
        if let Some(c) = &self.completion {
            c.clone().started(self.attempt, location);
        }
    }

    /// Marks the run as running, at `location`.
    pub(crate) fn started(&self, location: Option<&str>) {
        self.mark_started(location.map(Arc::from));
    }

    /// Reports the attempt's outcome.
    pub(crate) fn finish(mut self, result: Result<Bytes, TaskError>) {
        if let Some(c) = self.completion.take() {
            c.finished(self.attempt, result);
        }
    }

    /// Reports a completed attempt whose result is fetched when read (see
    /// [`SerializedJob::finish_deferred`]).
    pub(crate) fn finish_deferred(
        mut self,
        fetch: impl Fn() -> Result<Bytes, TaskError> + Send + Sync + 'static,
    ) {
        if let Some(c) = self.completion.take() {
            c.finished_deferred(self.attempt, Arc::new(fetch));
        }
    }
}

impl Drop for SerializedReporter {
    fn drop(&mut self) {
        if let Some(c) = self.completion.take() {
            c.finished(
                self.attempt,
                Err(TaskError::new(
                    TaskErrorKind::Crashed,
                    "the task runner dropped this attempt without reporting its outcome",
                )),
            );
        }
    }
}

crate::__debug_fields!(SerializedReporter { attempt });

impl fmt::Debug for LocalJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalJob")
            .field("attempt", &self.0.attempt)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SerializedJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerializedJob")
            .field("task_key", &self.task_key)
            .field("task_name", &self.task_name)
            .field("args", &self.args.len())
            .field("reporter", &self.reporter)
            .finish()
    }
}

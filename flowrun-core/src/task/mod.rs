//! What `#[task]` generates code against: the [`Task`] trait, the static
//! [`TaskMeta`] of each task, and [`TaskSupport`], which records what a
//! task's types allow (cloning for retries, running serialized). Beside it:
//! a task's [`args`] and [`input`]s, its [`options`], the [`probe`]s that
//! find what its types allow, the [`registry`] of every task, and
//! [`annotations`].

pub mod annotations;
pub(crate) mod args;
pub(crate) mod config;
pub(crate) mod convert;
pub(crate) mod gather;
pub(crate) mod held;
pub(crate) mod input;
pub(crate) mod meta;
pub(crate) mod names;
pub(crate) mod options;
pub mod probe;
pub mod registry;
pub(crate) mod support;

pub(crate) use support::HeldRun;

pub use config::{CallConfig, IntoRunRefs};
pub use convert::{exponential, IntoCount, IntoRetryDelay, IntoSeconds};
pub use meta::{TaskMeta, TaskMetaBuilder};
pub use support::{
    Cloner, Codec, Decoder, EncodedRun, Encoder, InputsEncoder, SerializedFns, SerializedTask,
    TaskSupport,
};

use std::future::Future;
use std::pin::Pin;

use crate::run::error::TaskError;
use crate::task::args::ArgsTuple;

/// A boxed, `Send` future, as async tasks and flows return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What calling a task's function produced: a value (sync task) or a future
/// (async task).
pub enum Invocation<R> {
    /// The function returned.
    Ready(R),
    /// The async function's future, to be driven to completion.
    Future(BoxFuture<R>),
}

/// A task: the type `#[task]` generates for a function. You use its
/// methods (`submit`, `map`, `with_options`...) rather than this trait.
pub trait Task: Sized + Send + Sync + 'static {
    /// The tuple of argument types.
    type Args: ArgsTuple;
    /// The function's declared return type.
    type Raw: Send + 'static;
    /// The value a completed run produces (`T` for a function returning
    /// `Result<T, E>`, else the return type).
    type Output: Send + 'static;

    /// The task's static description.
    fn meta() -> &'static TaskMeta;

    /// Calls the function.
    fn invoke(args: Self::Args) -> Invocation<Self::Raw>;

    /// Splits a return value into the run's value or its failure.
    fn outcome(raw: Self::Raw) -> Result<Self::Output, TaskError>;

    /// The failure message of a return value that is an `Err`.
    fn failure_message(raw: &Self::Raw) -> Option<String>;

    /// The run's value inside a return value, when it is not a failure:
    /// what a direct call persists.
    fn output_ref(raw: &Self::Raw) -> Option<&Self::Output>;

    /// The return value of a run whose value is `value`: what a direct
    /// call returns when its result comes from the cache.
    fn raw_from_output(value: Self::Output) -> Self::Raw;

    /// What the task's types allow.
    fn support() -> &'static TaskSupport<Self>;

    /// The per-call overrides carried by this handle.
    fn config(&self) -> &CallConfig;

    /// The name of a run of this call, from `task_run_name`; `None` for
    /// the default `<task>-<n>`.
    fn run_name(inputs: &<Self::Args as ArgsTuple>::Inputs) -> Option<String> {
        let _ = inputs;
        None
    }

    /// [`run_name`](Task::run_name) of a direct call, from its arguments.
    fn direct_run_name(args: &Self::Args) -> Option<String> {
        let _ = args;
        None
    }

    /// The text of the argument named `name` of a submitted call, for a
    /// `{parameters[name]}` placeholder of its `result_storage_key`:
    /// `None` when the task has no such parameter, `Some(Err(why))` when
    /// the argument has no text to name a file with.
    fn key_parameter(
        inputs: &<Self::Args as ArgsTuple>::Inputs,
        name: &str,
    ) -> Option<Result<String, String>> {
        let _ = (inputs, name);
        None
    }

    /// [`key_parameter`](Task::key_parameter) of a direct call, from its
    /// arguments.
    fn direct_key_parameter(args: &Self::Args, name: &str) -> Option<Result<String, String>> {
        let _ = (args, name);
        None
    }

    /// The task's registry entry (see [`crate::task::registry`]).
    fn registry_entry() -> crate::task::registry::RegistryEntry {
        crate::task::registry::RegistryEntry::of::<Self>()
    }
}

/// Implemented for runners that can run task `T`. Runners that move tasks
/// between processes accept only [`SerializedTask`]s, so `#[flow]` turns a
/// task those runners cannot run into a compile error.
#[diagnostic::on_unimplemented(
    message = "task `{T}` cannot run on the task runner `{Self}`",
    label = "submitted here",
    note = "a runner declares the tasks it runs: `impl<T: Task> AcceptsTask<T> for {Self} {{}}` for any task, or `impl<T: SerializedTask> AcceptsTask<T> for {Self} {{}}` for tasks that can move between processes"
)]
pub trait AcceptsTask<T: Task> {}

/// `Result<T, E>` return types: `Err` fails the run.
pub trait TaskResult: Send + 'static {
    /// The value of a completed run.
    type Ok: Send + 'static;

    /// The run's value, or its failure.
    fn into_outcome(self) -> Result<Self::Ok, TaskError>;

    /// The failure message if this is an `Err`.
    fn failure_message(&self) -> Option<String>;
}

impl<T, E> TaskResult for Result<T, E>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + Sync + 'static,
{
    type Ok = T;

    fn into_outcome(self) -> Result<T, TaskError> {
        self.map_err(TaskError::from_error)
    }

    fn failure_message(&self) -> Option<String> {
        self.as_ref().err().map(|e| format!("{e:#}"))
    }
}

impl<R> std::fmt::Debug for Invocation<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Invocation::Ready(_) => "Ready",
            Invocation::Future(_) => "Future",
        })
    }
}

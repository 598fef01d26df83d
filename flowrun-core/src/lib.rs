//! The runtime behind flowrun: task and flow runs, their states and
//! futures, retries and timeouts, the [`TaskRunner`] trait with the
//! [`ThreadPoolTaskRunner`], logging with run names, and the task
//! [`registry`] that lets another process run any task by name.
//!
//! Most programs use it through the `flowrun` crate and its `#[task]` and
//! `#[flow]` macros; this crate holds what those macros generate code
//! against, and what runners (such as `flowrun-dask`) build on.
#![deny(missing_docs)]
//!
//! # Layout
//!
//! - `run`: the run model: run records, states, futures and errors.
//! - `task`: what `#[task]` generates against: the task trait, its
//!   metadata, arguments, inputs, options, probes and the [`registry`].
//! - `flow`: the flow lifecycle: metadata and config, the per-run shared
//!   registry, a run from start to end, and its outcome.
//! - `engine`: turns calls into runs: the driver of submitted runs, direct
//!   calls, the retry policy and the future adapters.
//! - `runner`: the [`TaskRunner`] trait and the two runners that come with
//!   flowrun.
//! - `exec`: execution support: the elastic thread pool, the timer, the
//!   tokio runtime, the per-thread run context, and [`worker`] mode.
//! - [`plumbing`]: helpers shared with runners in other crates.

mod engine;
mod exec;
mod flow;
pub mod logging;
pub mod names;
pub mod observe;
pub mod plumbing;
pub mod progress;
mod run;
mod runner;
mod task;

pub use exec::worker;
pub use task::{annotations, probe, registry};

pub use engine::direct::{call, call_async};
pub use engine::driver::submit;
pub use exec::context::{
    current_flow_handle, current_flow_run_id, current_flow_run_name, current_task_run,
    current_task_run_name, with_task_run_name,
};
pub use exec::pool::{set_blocking_hook, BlockingHook};
pub use exec::runtime::runtime;
pub use flow::lifecycle::{run_flow, run_flow_async};
pub use flow::meta::{Flow, FlowConfig, FlowMeta, FlowMetaBuilder};
pub use flow::outcome::{FlowRun, TaskRunCounts};
pub use flow::scope::{FlowHandle, Scope};
pub use logging::{get_run_logger, RunLogger};
pub use run::error::{
    panic_message, FlowError, FlowErrorKind, TaskError, TaskErrorKind, TaskRunFailure,
};
pub use run::future::{
    as_completed, results, wait, wait_timeout, AsCompleted, ResultFuture, TaskFuture,
};
pub use run::record::{RunId, RunRef};
pub use run::state::{State, StateKind};
pub use runner::serializing::SerializingTaskRunner;
pub use runner::thread_pool::ThreadPoolTaskRunner;
pub use runner::{
    Execution, FlowRunInfo, LocalJob, RunnerError, SerializedJob, SerializedReporter, TaskCall,
    TaskRunner, Work,
};
pub use task::annotations::Annotations;
pub use task::args::{decode_value, encode_value, ArgSlot, ArgsTuple, IntoInputs, SerializedArgs};
pub use task::input::{map_len, unmapped, Input, IntoInput, MapArg, MapError, MapSource, Unmapped};
pub use task::options::{FlowOptions, Resources, RetryDelay, RetryPolicy, TaskOptions};
pub use task::{
    exponential, AcceptsTask, BoxFuture, CallConfig, Cloner, Codec, Decoder, EncodedRun, Encoder,
    InputsEncoder, IntoCount, IntoRetryDelay, IntoRunRefs, IntoSeconds, Invocation, SerializedFns,
    SerializedTask, Task, TaskMeta, TaskMetaBuilder, TaskResult, TaskSupport,
};

/// The names the serialized-call types had; flowrun-dask still uses them.
#[doc(hidden)]
pub use {
    SerializedArgs as RemoteArgs, SerializedFns as RemoteFns, SerializedJob as RemoteJob,
    SerializedReporter as RemoteReporter, SerializedTask as RemoteTask,
};

#[doc(hidden)]
pub mod __private {
    //! What the macros expand to. Not a stable API.
    pub use crate::flow::lifecycle::flow_outcome;
    pub use crate::task::probe::{
        CloneNo, CloneYes, CodecNo, CodecYes, Probe, SerializedNo, SerializedNo as RemoteNo,
        SerializedYes, SerializedYes as RemoteYes,
    };
    pub use crate::task::registry::TaskRegistration;
    pub use crate::{
        call, call_async, exponential, map_len, run_flow, run_flow_async, submit, BoxFuture,
        CallConfig, Flow, FlowConfig, FlowError, FlowMeta, FlowOptions, FlowRun, IntoInput,
        IntoRunRefs, Invocation, MapArg, MapError, Task, TaskError, TaskFuture, TaskMeta,
        TaskOptions, TaskResult, TaskRunner, TaskSupport,
    };
    pub use inventory;
    pub use std::sync::OnceLock;

    /// A zero-sized stand-in for the flow's runner type, inferred from the
    /// runner expression without evaluating it.
    #[derive(Debug)]
    pub struct Witness<R>(std::marker::PhantomData<fn() -> R>);

    impl<R> Clone for Witness<R> {
        fn clone(&self) -> Self {
            *self
        }
    }
    impl<R> Copy for Witness<R> {}

    /// The witness of the runner `make` would build (it is never called).
    pub fn witness<R, F: FnOnce() -> R>(_make: F) -> Witness<R> {
        Witness(std::marker::PhantomData)
    }

    /// A receiver of `.submit(...)`/`.map(...)` inside a flow, paired with
    /// the flow's runner.
    #[derive(Debug)]
    pub struct Gate<'a, R, T>(pub &'a Witness<R>, pub &'a T);

    /// The receiver is a task: check the runner accepts it.
    #[derive(Debug)]
    pub struct TaskGate<R, T>(std::marker::PhantomData<fn() -> (R, T)>);
    /// The receiver is something else (an iterator's `.map`, say).
    #[derive(Debug)]
    pub struct NoGate;

    /// Receivers that are tasks.
    pub trait GateTask<R, T> {
        /// The check to make.
        fn __flowrun_gate(&self) -> TaskGate<R, T>;
    }
    impl<R, T: crate::Task> GateTask<R, T> for Gate<'_, R, T> {
        fn __flowrun_gate(&self) -> TaskGate<R, T> {
            TaskGate(std::marker::PhantomData)
        }
    }

    /// Any other receiver.
    pub trait GateOther {
        /// No check.
        fn __flowrun_gate(&self) -> NoGate;
    }
    impl<R, T> GateOther for &Gate<'_, R, T> {
        fn __flowrun_gate(&self) -> NoGate {
            NoGate
        }
    }

    /// Checks that pass.
    #[diagnostic::on_unimplemented(
        message = "this task cannot run on the flow's task runner",
        note = "the runner moves tasks between processes: every argument type and the result type must implement serde's `Serialize` and `DeserializeOwned`"
    )]
    pub trait Checked {}
    impl Checked for NoGate {}
    impl<R: crate::AcceptsTask<T>, T: crate::Task> Checked for TaskGate<R, T> {}

    /// Fails to compile when the flow's runner cannot run the task.
    pub fn check<G: Checked>(_gate: G) {}

    /// Task arguments and results move to other threads and outlive the call.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a task argument or result: it is not `Send + 'static`",
        note = "runs move their arguments and results to other threads; use owned, thread-safe types (`Arc` instead of `Rc`, `String` instead of `&str`)"
    )]
    pub trait SendStatic: Send + 'static {}
    impl<T: Send + 'static> SendStatic for T {}

    /// Fails to compile, at the offending type, when `T` is not `Send + 'static`.
    pub fn assert_send_static<T: SendStatic>() {}

    /// Boxes a runner built from a `task_runner = ...` expression.
    pub fn boxed_runner<R: crate::TaskRunner>(runner: R) -> Box<dyn crate::TaskRunner> {
        Box::new(runner)
    }

    /// The default runner, for flows without `task_runner`.
    pub fn default_runner() -> Box<dyn crate::TaskRunner> {
        Box::new(crate::ThreadPoolTaskRunner::default())
    }
}

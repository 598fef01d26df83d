//! The runtime behind flowrun: task and flow runs, their states and
//! futures, retries and timeouts, the [`TaskRunner`] trait with the
//! [`ThreadPoolTaskRunner`], logging with run names, and the task
//! [`registry`] that lets another process run any task by name.
//!
//! Most programs use it through the `flowrun` crate and its `#[task]` and
//! `#[flow]` macros; this crate holds what those macros generate code
//! against, and what runners (such as `flowrun-dask`) build on.
#![deny(missing_docs)]

pub mod annotations;
mod args;
mod context;
mod encoded;
mod engine;
mod error;
pub mod external;
mod flow;
mod future;
mod input;
pub mod logging;
pub mod names;
pub mod observe;
mod options;
mod pool;
pub mod probe;
pub mod progress;
pub mod registry;
mod rt;
mod run;
mod runner;
mod scope;
mod serializing;
mod state;
mod task;
mod thread_pool;
mod timer;
pub mod worker;

pub use annotations::Annotations;
pub use args::{decode_value, encode_value, ArgSlot, ArgsTuple, IntoInputs, RemoteArgs};
pub use engine::{call, call_async, submit};
pub use error::{
    panic_message, FlowError, FlowErrorKind, TaskError, TaskErrorKind, TaskRunFailure,
};
pub use flow::{
    run_flow, run_flow_async, Flow, FlowConfig, FlowMeta, FlowMetaBuilder, FlowRun, TaskRunCounts,
};
pub use future::{
    as_completed, results, wait, wait_timeout, AsCompleted, ResultFuture, TaskFuture,
};
pub use input::{map_len, unmapped, Input, IntoInput, MapArg, MapError, MapSource, Unmapped};
pub use logging::{get_run_logger, RunLogger};
pub use options::{FlowOptions, Resources, RetryDelay, RetryPolicy, TaskOptions};
pub use pool::{set_blocking_hook, BlockingHook};
pub use rt::runtime;
pub use run::{RunId, RunRef};
pub use runner::{
    Execution, FlowRunInfo, LocalJob, RemoteJob, RemoteReporter, RunnerError, TaskCall, TaskRunner,
    Work,
};
pub use scope::{FlowHandle, Scope};
pub use serializing::SerializingTaskRunner;
pub use state::{State, StateKind};
pub use task::{
    exponential, AcceptsTask, BoxFuture, CallConfig, Cloner, Codec, Decoder, EncodedRun, Encoder,
    InputsEncoder, IntoCount, IntoRetryDelay, IntoRunRefs, IntoSeconds, Invocation, RemoteFns,
    RemoteTask, Task, TaskMeta, TaskMetaBuilder, TaskResult, TaskSupport,
};
pub use thread_pool::ThreadPoolTaskRunner;

/// Runs `f` inside the run context of `run` (logging attribution, nested
/// submissions go to `run`'s flow). For runners that execute serialized
/// calls on their own threads.
pub fn with_run_context<R>(run: &RunRef, f: impl FnOnce() -> R) -> R {
    let span = engine::task_span(run);
    let _ctx = context::enter(context::Context {
        flow: context::current_flow(),
        task_run: Some(run.clone()),
        label: None,
        span: Some(span.clone()),
        annotations: Vec::new(),
    });
    let _span = span.enter();
    f()
}

/// Runs `f` as the task run named `run_name`, which executes here on
/// behalf of another process (worker processes use it): logs written by
/// `f` carry that name.
pub fn with_task_run_name<R>(run_name: &str, f: impl FnOnce() -> R) -> R {
    let span = tracing::info_span!("task_run", run = %run_name);
    let _ctx = context::enter(context::Context {
        flow: None,
        task_run: None,
        label: Some(std::sync::Arc::from(run_name)),
        span: Some(span.clone()),
        annotations: Vec::new(),
    });
    let _span = span.enter();
    f()
}

/// The task run executing on this thread, if any.
pub fn current_task_run() -> Option<RunRef> {
    context::current().task_run
}

/// The name of the task run executing on this thread, in this process or
/// on behalf of another one, if any.
pub fn current_task_run_name() -> Option<String> {
    let ctx = context::current();
    if let Some(run) = ctx.task_run {
        return Some(run.name());
    }
    ctx.label.map(|l| l.to_string())
}

/// A handle on the flow run this thread works for, if any.
pub fn current_flow_handle() -> Option<FlowHandle> {
    context::current_flow().map(scope::FlowHandle)
}

/// The id of the flow run this thread works for, if any.
pub fn current_flow_run_id() -> Option<String> {
    context::current_flow().map(|f| f.id.clone())
}

/// The name of the flow run this thread works for, if any.
pub fn current_flow_run_name() -> Option<String> {
    context::current_flow().map(|f| f.name.clone())
}

#[doc(hidden)]
pub mod __private {
    //! What the macros expand to. Not a stable API.
    pub use crate::flow::flow_outcome;
    pub use crate::probe::{CloneNo, CloneYes, CodecNo, CodecYes, Probe, RemoteNo, RemoteYes};
    pub use crate::registry::TaskRegistration;
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
    pub struct Gate<'a, R, T>(pub &'a Witness<R>, pub &'a T);

    /// The receiver is a task: check the runner accepts it.
    pub struct TaskGate<R, T>(std::marker::PhantomData<fn() -> (R, T)>);
    /// The receiver is something else (an iterator's `.map`, say).
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

    /// Checks that pass. (No custom message: a failing check always reports
    /// the unmet bound below it, `AcceptsTask` or serde's.)
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

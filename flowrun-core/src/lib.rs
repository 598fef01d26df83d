//! The runtime behind flowrun: task and flow runs, their states and
//! futures, retries and timeouts, the [`TaskRunner`] trait with the
//! [`ThreadPoolTaskRunner`], logging with run names, and the task
//! [`registry`] that lets another process run any task by name.
//!
//! Most programs use it through the `flowrun` crate and its `#[task]` and
//! `#[flow]` macros; this crate holds what those macros generate code
//! against, and what runners (such as `flowrun-dask`) build on.
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
//! - [`logging`], [`progress`], [`observe`], [`names`]: what a run shows:
//!   log lines with run names, the progress display, state changes as
//!   events, and readable names.
//! - [`plumbing`]: helpers shared with runners in other crates.
#![deny(missing_docs)]

pub mod cache;
pub mod concurrency;
mod engine;
mod exec;
pub mod external;
mod flow;
pub mod home;
pub mod logging;
pub mod names;
pub mod observe;
pub mod plumbing;
pub mod prints;
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
    current_task_run_name,
};
pub use exec::pool::{set_blocking_hook, BlockingHook};
pub use exec::runtime::runtime;
pub use flow::lifecycle::{run_flow, run_flow_async};
pub use flow::meta::{Flow, FlowConfig, FlowMeta, FlowMetaBuilder};
pub use flow::outcome::{FlowRun, TaskRunCounts};
pub use flow::scope::{FlowHandle, Scope};
pub use flow::subflow::{report_subflows_to, SubflowReport, SubflowRun, SubflowSink};
pub use logging::{get_run_logger, RunLogger};
pub use run::allow::{allow_failure, AllowFailure, AllowedUpstream};
pub use run::error::{
    panic_message, FlowError, FlowErrorKind, TaskError, TaskErrorKind, TaskRunFailure,
};
pub use run::future::{
    as_completed, as_completed_timeout, results, wait, wait_timeout, AsCompleted, DoneAndNotDone,
    ResultFuture, TaskFuture,
};
pub use run::hooks::HookResult;
pub use run::record::{RunId, RunRef};
pub use run::state::{State, StateKind};
pub use run::task_hooks::TaskHookCall;
pub use runner::serializing::SerializingTaskRunner;
pub use runner::thread_pool::ThreadPoolTaskRunner;
pub use runner::{
    Execution, FlowRunInfo, LocalJob, RunnerError, SerializedJob, TaskCall, TaskRunner, Work,
};
pub use task::annotations::Annotations;
pub use task::args::{decode_value, encode_value, ArgSlot, ArgsTuple, IntoInputs, SerializedArgs};
pub use task::input::{
    map_len, unmapped, Gather, Input, IntoInput, MapArg, MapError, MapSource, Unmapped,
};
pub use task::options::{FlowOptions, Resources, RetryDelay, RetryPolicy, TaskOptions};
pub use task::{
    exponential, AcceptsTask, BoxFuture, CallConfig, Cloner, Codec, Decoder, EncodedRun, Encoder,
    InputsEncoder, IntoCount, IntoRetryDelay, IntoRunRefs, IntoSeconds, Invocation, SerializedFns,
    SerializedTask, Task, TaskMeta, TaskMetaBuilder, TaskResult, TaskSupport,
};

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

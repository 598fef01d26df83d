//! flowrun: Prefect-style flows and tasks for Rust, with a Dask-style
//! distributed task runner.
//!
//! Annotate functions with [`task`] and [`flow`]; calling the flow runs it,
//! and tasks called, submitted or mapped inside it become tracked task runs
//! with states, retries, timeouts and logs.
//!
//! ```
//! use flowrun::{flow, task};
//!
//! #[task]
//! fn double(x: u64) -> u64 {
//!     x * 2
//! }
//!
//! #[task]
//! fn total(values: Vec<u64>) -> u64 {
//!     values.iter().sum()
//! }
//!
//! #[flow]
//! fn pipeline(n: u64) -> u64 {
//!     let doubled = double.map(0..n).expect("one mapped argument");
//!     let values = flowrun::results(doubled).expect("doubling cannot fail");
//!     total(values)
//! }
//!
//! assert_eq!(pipeline(4).unwrap(), 12);
//! ```
//!
//! # Where things are
//!
//! - The crate root: what flows and tasks use: the [`task`] and [`flow`]
//!   macros, [`TaskFuture`] and the functions over futures ([`wait`],
//!   [`as_completed`], [`results`]), states, errors, options, the runners
//!   to choose from, the run logger and the current run's names.
//! - `dask`: the Dask-style task runner, its local cluster and its
//!   client of real Dask clusters (default feature `dask`).
//! - [`runner`]: for authors of task runners: the [`runner::TaskRunner`]
//!   trait, the calls it receives, serialized arguments, scopes, and the
//!   plumbing runners share.
//! - [`annotations`], [`progress`], [`registry`], [`logging`], [`worker`]:
//!   annotation scopes, the progress display, the task registry, the
//!   console log output, and worker mode.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub use flowrun_macros::{flow, task};

pub use flowrun_core::{annotations, logging, progress, registry, worker};
pub use flowrun_core::{
    as_completed, current_flow_run_id, current_flow_run_name, current_task_run,
    current_task_run_name, get_run_logger, results, runtime, unmapped, wait, wait_timeout,
    AsCompleted, FlowError, FlowErrorKind, FlowOptions, FlowRun, MapError, Resources, ResultFuture,
    RetryDelay, RetryPolicy, RunId, RunLogger, RunRef, SerializingTaskRunner, State, StateKind,
    Task, TaskError, TaskErrorKind, TaskFuture, TaskOptions, TaskRunCounts, TaskRunFailure,
    ThreadPoolTaskRunner, Unmapped,
};

/// The Dask-style task runner (`DaskTaskRunner`), its local cluster and
/// its client of real Dask clusters.
#[cfg(feature = "dask")]
pub use flowrun_dask as dask;

pub mod runner {
    //! For authors of task runners (such as `flowrun::dask`): the
    //! [`TaskRunner`] trait, the [`TaskCall`]s it executes, serialized
    //! arguments and results, scopes that submit work outside a flow run,
    //! run observers, and the [`plumbing`] runners share.

    pub use flowrun_core::plumbing;
    pub use flowrun_core::{
        current_flow_handle, decode_value, encode_value, panic_message, set_blocking_hook,
        with_task_run_name, AcceptsTask, ArgSlot, ArgsTuple, BlockingHook, Execution, FlowHandle,
        FlowRunInfo, IntoInputs, LocalJob, RunnerError, Scope, SerializedArgs, SerializedJob,
        SerializedReporter, SerializedTask, TaskCall, TaskMeta, TaskRunner, Work,
    };
    pub use flowrun_core::{names, observe};
}

/// What the code `#[task]` and `#[flow]` generate refers to. Not an API.
#[doc(hidden)]
pub use flowrun_core::__private;

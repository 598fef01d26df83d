//! What the code `#[task]` and `#[flow]` generate refers to: re-exports
//! at stable paths, and the compile-time checks that a flow's runner can
//! run its tasks and that task types are `Send + 'static`. Not an API.
pub use crate::cache::{key_text_of_input, key_text_of_value, parameters_key, CachePolicy};
pub use crate::flow::lifecycle::flow_outcome;
pub use crate::prints::{print_to_run, PrintStream};
pub use crate::task::names::InputDisplay;
pub use crate::task::probe::{
    CloneNo, CloneYes, CodecNo, CodecYes, Probe, SerializedNo, SerializedYes,
};
pub use crate::task::probe::{DisplayNo, DisplayYes, JsonNo, JsonYes};
pub use crate::task::registry::TaskRegistration;
pub use crate::task::Encoder;
pub use crate::ArgsTuple;
pub use crate::{
    call, call_async, exponential, map_len, run_flow, run_flow_async, submit, BoxFuture,
    CallConfig, Flow, FlowConfig, FlowError, FlowMeta, FlowOptions, FlowRun, IntoInput,
    IntoRunRefs, Invocation, MapArg, MapError, Task, TaskError, TaskFuture, TaskMeta, TaskOptions,
    TaskResult, TaskRunner, TaskSupport,
};
pub use inventory;
pub use std::sync::OnceLock;
pub use tracing;

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
    crate::flow::subflow::note_default_made();
    Box::new(crate::ThreadPoolTaskRunner::default())
}

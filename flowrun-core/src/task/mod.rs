//! What `#[task]` generates code against: the [`Task`] trait, the static
//! [`TaskMeta`] of each task, and [`TaskSupport`], which records what a
//! task's types allow (cloning for retries, running serialized). Beside it:
//! a task's [`args`] and [`input`]s, its [`options`], the [`probe`]s that
//! find what its types allow, the [`registry`] of every task, and
//! [`annotations`].

pub mod annotations;
pub(crate) mod args;
pub(crate) mod input;
pub(crate) mod options;
pub mod probe;
pub mod registry;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::record::{RunRef, ValueFns};
use crate::task::args::{encode_value, ArgSlot, ArgsTuple, SerializedArgs};
use crate::task::options::{RetryDelay, RetryPolicy, TaskOptions};

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

    /// What the task's types allow.
    fn support() -> &'static TaskSupport<Self>;

    /// The per-call overrides carried by this handle.
    fn config(&self) -> &CallConfig;

    /// The task's registry entry (see [`crate::task::registry`]).
    fn registry_entry() -> crate::task::registry::RegistryEntry {
        crate::task::registry::RegistryEntry::of::<Self>()
    }
}

/// The static description of a task, from its `#[task(...)]` options.
#[derive(Debug)]
pub struct TaskMeta {
    pub(crate) key: &'static str,
    pub(crate) name: &'static str,
    /// The name, shared by every run that does not override it.
    pub(crate) shared_name: std::sync::Arc<str>,
    pub(crate) description: Option<&'static str>,
    pub(crate) tags: Vec<Cow<'static, str>>,
    pub(crate) policy: RetryPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) is_async: bool,
    pub(crate) config_error: Option<String>,
}

impl TaskMeta {
    /// Starts the description of the task registered under `key`, shown as `name`.
    pub fn builder(key: &'static str, name: &'static str) -> TaskMetaBuilder {
        TaskMetaBuilder {
            meta: TaskMeta {
                key,
                name,
                shared_name: std::sync::Arc::from(name),
                description: None,
                tags: Vec::new(),
                policy: RetryPolicy::default(),
                timeout: None,
                is_async: false,
                config_error: None,
            },
        }
    }

    /// The registry key: `module::path::function`.
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The task name shown in run names and logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The description, from `description = "..."` or the doc comment.
    pub fn description(&self) -> Option<&'static str> {
        self.description
    }

    /// The tags.
    pub fn tags(&self) -> &[Cow<'static, str>] {
        &self.tags
    }

    /// Retries, retry delays and jitter.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The timeout of each attempt.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The task is an `async fn`.
    pub fn is_async(&self) -> bool {
        self.is_async
    }
}

/// Builds a [`TaskMeta`]; values that are invalid at run time are recorded
/// and make every run of the task fail with a message naming the option.
#[derive(Debug)]
#[must_use]
pub struct TaskMetaBuilder {
    meta: TaskMeta,
}

impl TaskMetaBuilder {
    /// `description = "..."`.
    pub fn description(mut self, description: &'static str) -> Self {
        self.meta.description = Some(description);
        self
    }

    /// `tags = [...]`.
    pub fn tags(mut self, tags: &[&'static str]) -> Self {
        self.meta.tags = tags.iter().map(|t| Cow::Borrowed(*t)).collect();
        self
    }

    /// `retry_jitter_factor = f`.
    pub fn retry_jitter_factor(mut self, factor: f64) -> Self {
        self.meta.policy.jitter_factor = Some(factor);
        self
    }

    /// The task is an `async fn`.
    pub fn is_async(mut self, is_async: bool) -> Self {
        self.meta.is_async = is_async;
        self
    }
}

/// The options tasks and flows share, for their meta builders: a value
/// that is invalid at run time is recorded as the first configuration
/// error, which every run then fails with.
macro_rules! shared_meta_options {
    ($($builder:ty => $meta:ty),*) => {$(
        impl $builder {
            fn error(&mut self, message: String) {
                self.meta.config_error.get_or_insert(message);
            }

            /// `retries = n`.
            pub fn retries(mut self, retries: impl IntoCount) -> Self {
                match retries.into_count() {
                    Ok(n) => self.meta.policy.retries = n,
                    Err(e) => self.error(format!("retries: {e}")),
                }
                self
            }

            /// `retry_delay = ...` (seconds, a list of seconds,
            /// `exponential(...)`, or a `Duration`).
            pub fn retry_delay(mut self, delay: impl IntoRetryDelay) -> Self {
                match delay.into_retry_delay() {
                    Ok(d) => self.meta.policy.delay = d,
                    Err(e) => self.error(format!("retry_delay: {e}")),
                }
                self
            }

            /// `timeout = seconds` (or a `Duration`).
            pub fn timeout(mut self, timeout: impl IntoSeconds) -> Self {
                match timeout.into_duration() {
                    Ok(d) => self.meta.timeout = Some(d),
                    Err(e) => self.error(format!("timeout: {e}")),
                }
                self
            }

            /// The finished description.
            pub fn build(mut self) -> $meta {
                if let Err(e) = self.meta.policy.validate() {
                    self.error(e);
                }
                self.meta
            }
        }
    )*};
}
shared_meta_options!(
    TaskMetaBuilder => TaskMeta,
    crate::flow::meta::FlowMetaBuilder => crate::flow::meta::FlowMeta
);

/// Numbers accepted as a duration in seconds by `timeout = ...`.
pub trait IntoSeconds {
    /// The duration, or why the value is not one.
    fn into_duration(self) -> Result<Duration, String>;
}

macro_rules! seconds_from_int {
    ($($t:ty),*) => {$(
        impl IntoSeconds for $t {
            #[allow(unused_comparisons)]
            fn into_duration(self) -> Result<Duration, String> {
                if self < 0 {
                    return Err(format!("must be positive, got {self}"));
                }
                Ok(Duration::from_secs(self as u64))
            }
        }
    )*};
}
seconds_from_int!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl IntoSeconds for f64 {
    fn into_duration(self) -> Result<Duration, String> {
        if !(self.is_finite() && self >= 0.0) {
            return Err(format!(
                "must be a finite number of seconds >= 0, got {self}"
            ));
        }
        Ok(Duration::from_secs_f64(self))
    }
}

impl IntoSeconds for f32 {
    fn into_duration(self) -> Result<Duration, String> {
        f64::from(self).into_duration()
    }
}

impl IntoSeconds for Duration {
    fn into_duration(self) -> Result<Duration, String> {
        Ok(self)
    }
}

/// Numbers accepted by `retries = ...`.
pub trait IntoCount {
    /// The count, or why the value is not one.
    fn into_count(self) -> Result<u32, String>;
}

macro_rules! count_from_int {
    ($($t:ty),*) => {$(
        impl IntoCount for $t {
            #[allow(unused_comparisons)]
            fn into_count(self) -> Result<u32, String> {
                u32::try_from(self).map_err(|_| format!("must be a whole number >= 0, got {self}"))
            }
        }
    )*};
}
count_from_int!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

/// Values accepted by `retry_delay = ...`.
pub trait IntoRetryDelay {
    /// The delay, or why the value is not one.
    fn into_retry_delay(self) -> Result<RetryDelay, String>;
}

impl<T: IntoSeconds> IntoRetryDelay for T {
    fn into_retry_delay(self) -> Result<RetryDelay, String> {
        self.into_duration().map(RetryDelay::Fixed)
    }
}

impl IntoRetryDelay for RetryDelay {
    fn into_retry_delay(self) -> Result<RetryDelay, String> {
        Ok(self)
    }
}

impl<T: IntoSeconds, const N: usize> IntoRetryDelay for [T; N] {
    fn into_retry_delay(self) -> Result<RetryDelay, String> {
        Vec::from(self).into_retry_delay()
    }
}

impl<T: IntoSeconds> IntoRetryDelay for Vec<T> {
    fn into_retry_delay(self) -> Result<RetryDelay, String> {
        let list = self
            .into_iter()
            .map(IntoSeconds::into_duration)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RetryDelay::Sequence(list))
    }
}

/// `retry_delay = exponential(base)` / `exponential(base, max)`: delays that
/// double from `base` seconds, capped at `max` seconds.
pub fn exponential(base: impl IntoSeconds, max: Option<f64>) -> Result<RetryDelay, String> {
    let base = base.into_duration()?;
    let max = match max {
        Some(m) => Some(m.into_duration()?),
        None => None,
    };
    Ok(RetryDelay::Exponential {
        base,
        factor: 2.0,
        max,
    })
}

impl IntoRetryDelay for Result<RetryDelay, String> {
    fn into_retry_delay(self) -> Result<RetryDelay, String> {
        self
    }
}

/// What a task's types allow, found at compile time by the macros.
pub struct TaskSupport<T: Task> {
    pub(crate) args_clone: Option<Cloner<T::Args>>,
    pub(crate) output: ValueFns<T::Output>,
    pub(crate) serialized: Result<SerializedFns<T>, String>,
}

impl<T: Task> TaskSupport<T> {
    /// Assembles the findings of the probes (see [`crate::task::probe`]).
    pub fn new(
        args_clone: Option<Cloner<T::Args>>,
        output_clone: Option<Cloner<T::Output>>,
        output_codec: Option<Codec<T::Output>>,
        serialized: Option<SerializedFns<T>>,
        types: &[(&'static str, bool)],
    ) -> TaskSupport<T> {
        let serialized = serialized.ok_or_else(|| {
            let bad: Vec<String> = types
                .iter()
                .filter(|(_, ok)| !ok)
                .map(|(name, _)| format!("`{name}`"))
                .collect();
            format!(
                "its {} {} not implement serde's Serialize and DeserializeOwned",
                if bad.len() == 1 { "type" } else { "types" },
                if bad.len() == 1 {
                    format!("{} does", bad[0])
                } else {
                    format!("{} do", bad.join(", "))
                }
            )
        });
        TaskSupport {
            args_clone,
            output: ValueFns {
                clone: output_clone,
                encode: output_codec.map(|c| c.0),
                decode: output_codec.map(|c| c.1),
                type_name: std::any::type_name::<T::Output>(),
            },
            serialized,
        }
    }

    /// Whether runs of the task can be retried with the same arguments.
    pub fn can_retry(&self) -> bool {
        self.args_clone.is_some()
    }

    /// Why the task cannot run in another process, if it cannot.
    pub fn serialization_error(&self) -> Option<&str> {
        self.serialized.as_ref().err().map(String::as_str)
    }
}

/// Clones a value.
pub type Cloner<T> = fn(&T) -> T;
/// Encodes and decodes a value for another process.
pub type Codec<T> = (Encoder<T>, Decoder<T>);
/// Encodes the inputs of a call of a task with arguments `A`.
pub type InputsEncoder<A> = fn(&<A as ArgsTuple>::Inputs) -> Result<Vec<ArgSlot>, TaskError>;
/// Encodes a value for another process.
pub type Encoder<T> = fn(&T) -> Result<Vec<u8>, String>;
/// Runs one attempt of a task from encoded arguments to an encoded result.
pub type EncodedRun = fn(&[&[u8]]) -> Result<Vec<u8>, TaskError>;
/// Decodes a value from another process.
pub type Decoder<T> = fn(&[u8]) -> Result<T, String>;

/// The functions that move a task's calls and results between processes.
pub struct SerializedFns<T: Task> {
    pub(crate) encode_inputs: InputsEncoder<T::Args>,
    pub(crate) run: EncodedRun,
}

impl<T: Task> Clone for SerializedFns<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Task> Copy for SerializedFns<T> {}

impl<T> SerializedFns<T>
where
    T: Task,
    T::Args: SerializedArgs,
    T::Output: Serialize + DeserializeOwned,
{
    /// The functions for a task whose types all cross processes.
    pub fn new() -> SerializedFns<T> {
        SerializedFns {
            encode_inputs: <T::Args as SerializedArgs>::encode,
            run: run_encoded::<T>,
        }
    }
}

impl<T> Default for SerializedFns<T>
where
    T: Task,
    T::Args: SerializedArgs,
    T::Output: Serialize + DeserializeOwned,
{
    fn default() -> Self {
        Self::new()
    }
}

/// One attempt of `T` from encoded arguments to an encoded result, in this
/// process: what a worker does with a task it receives.
fn run_encoded<T>(slots: &[&[u8]]) -> Result<Vec<u8>, TaskError>
where
    T: Task,
    T::Args: SerializedArgs,
    T::Output: Serialize + DeserializeOwned,
{
    let args = <T::Args as SerializedArgs>::decode(slots).map_err(|e| {
        TaskError::new(
            TaskErrorKind::Runner,
            format!(
                "task '{}' received arguments it cannot decode: {e}",
                T::meta().name
            ),
        )
    })?;
    let raw = crate::engine::adapters::invoke_blocking::<T>(args, None)?;
    let value = T::outcome(raw)?;
    encode_value(&value).map_err(|e| {
        TaskError::new(
            TaskErrorKind::Runner,
            format!(
                "task '{}' returned a value that could not be serialized: {e}",
                T::meta().name
            ),
        )
    })
}

/// A task whose arguments and result can cross process boundaries.
#[diagnostic::on_unimplemented(
    message = "task `{Self}` cannot run in another process",
    note = "a task that moves between processes needs every argument type and its result type to implement serde's `Serialize` and `DeserializeOwned`"
)]
pub trait SerializedTask: Task {}

impl<T> SerializedTask for T
where
    T: Task,
    T::Args: SerializedArgs,
    T::Output: Serialize + DeserializeOwned,
{
}

/// Implemented for runners that can run task `T`. Runners that move tasks
/// between processes accept only [`SerializedTask`]s, so `#[flow]` turns a
/// task those runners cannot run into a compile error.
#[diagnostic::on_unimplemented(
    message = "task `{T}` cannot run on the task runner `{Self}`",
    label = "submitted here",
    note = "`{Self}` runs tasks in other processes, so every argument type and the result type of `{T}` must implement serde's `Serialize` and `DeserializeOwned`"
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

/// Per-handle overrides: options and extra upstream runs to wait for.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CallConfig {
    inner: Option<Box<CallOverrides>>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct CallOverrides {
    pub(crate) options: TaskOptions,
    pub(crate) explicit: Explicit,
    pub(crate) wait_for: Vec<RunRef>,
}

/// Which options a call set explicitly.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Explicit {
    pub(crate) priority: bool,
    pub(crate) resources: bool,
}

impl CallConfig {
    /// No overrides.
    pub const NONE: CallConfig = CallConfig { inner: None };

    fn overrides(&mut self) -> &mut CallOverrides {
        self.inner.get_or_insert_with(Default::default)
    }

    /// Adds `options` on top of earlier overrides.
    pub fn with_options(mut self, options: TaskOptions) -> CallConfig {
        let o = self.overrides();
        let prev = std::mem::take(&mut o.options);
        o.explicit.priority |= options.priority.is_some();
        o.explicit.resources |= options.resources.is_some();
        o.options = TaskOptions {
            name: options.name.or(prev.name),
            retries: options.retries.or(prev.retries),
            retry_delay: options.retry_delay.or(prev.retry_delay),
            retry_jitter_factor: options.retry_jitter_factor.or(prev.retry_jitter_factor),
            timeout: options.timeout.or(prev.timeout),
            tags: options.tags.or(prev.tags),
            priority: options.priority.or(prev.priority),
            resources: options.resources.or(prev.resources),
        };
        self
    }

    /// Adds upstream runs the call waits for without taking their values.
    pub fn wait_for(mut self, runs: impl IntoIterator<Item = RunRef>) -> CallConfig {
        self.overrides().wait_for.extend(runs);
        self
    }

    pub(crate) fn get(&self) -> Option<&CallOverrides> {
        self.inner.as_deref()
    }
}

/// Things `wait_for` accepts: a future, a slice or `Vec` of futures, or
/// [`RunRef`]s (for futures of different result types).
pub trait IntoRunRefs {
    /// The runs to wait for.
    fn into_run_refs(self) -> Vec<RunRef>;
}

impl<T: Send + 'static> IntoRunRefs for &crate::run::future::TaskFuture<T> {
    fn into_run_refs(self) -> Vec<RunRef> {
        vec![self.run_ref()]
    }
}

impl<T: Send + 'static> IntoRunRefs for &[crate::run::future::TaskFuture<T>] {
    fn into_run_refs(self) -> Vec<RunRef> {
        self.iter().map(|f| f.run_ref()).collect()
    }
}

impl<T: Send + 'static> IntoRunRefs for &Vec<crate::run::future::TaskFuture<T>> {
    fn into_run_refs(self) -> Vec<RunRef> {
        self.iter().map(|f| f.run_ref()).collect()
    }
}

impl<const N: usize> IntoRunRefs for [RunRef; N] {
    fn into_run_refs(self) -> Vec<RunRef> {
        self.into()
    }
}

impl IntoRunRefs for Vec<RunRef> {
    fn into_run_refs(self) -> Vec<RunRef> {
        self
    }
}

impl IntoRunRefs for RunRef {
    fn into_run_refs(self) -> Vec<RunRef> {
        vec![self]
    }
}

impl<T: Task> std::fmt::Debug for TaskSupport<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSupport")
            .field("can_retry", &self.can_retry())
            .field("serialization_error", &self.serialization_error())
            .finish()
    }
}

impl<T: Task> std::fmt::Debug for SerializedFns<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerializedFns").finish_non_exhaustive()
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

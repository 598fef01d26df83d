//! What a task's types allow, found at compile time by the macros: cloning
//! its arguments for retries, sharing its result, and running it
//! serialized (the functions that encode a call and run it from bytes).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::record::ValueFns;
use crate::task::args::{encode_owned, ArgSlot, ArgsTuple, SerializedArgs};
use crate::task::held::{ArgValue, Held};
use crate::task::Task;

/// What a task's types allow, found at compile time by the macros.
pub struct TaskSupport<T: Task> {
    pub(crate) args_clone: Option<Cloner<T::Args>>,
    pub(crate) result: ValueFns<T::Output>,
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
            result: ValueFns {
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
/// Runs one attempt of a task from arguments some of which this process
/// holds as values, to its result held as a value (see [`Held`]).
pub(crate) type HeldRun = fn(Vec<ArgValue<'_>>) -> Result<Held, TaskError>;

/// The functions that move a task's calls and results between processes.
pub struct SerializedFns<T: Task> {
    pub(crate) encode_inputs: InputsEncoder<T::Args>,
    pub(crate) run: EncodedRun,
    pub(crate) run_held: HeldRun,
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
            run_held: run_held::<T>,
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
    let (slots, target) = crate::cache::serialized::split(slots);
    let args = <T::Args as SerializedArgs>::decode(slots).map_err(undecodable::<T>)?;
    let raw = crate::engine::adapters::invoke_blocking::<T>(args, None)?;
    let value = T::outcome(raw)?;
    let encoded = encode_owned(value).map_err(unserializable::<T>)?;
    if let Some(target) = target {
        persist_here::<T>(&target, &encoded);
    }
    Ok(encoded)
}

fn undecodable<T: Task>(e: impl std::fmt::Display) -> TaskError {
    runner_error::<T>("received arguments it cannot decode", e)
}

fn unserializable<T: Task>(e: impl std::fmt::Display) -> TaskError {
    runner_error::<T>("returned a value that could not be serialized", e)
}

/// A runner error of a run of `T`: "task '<name>' <what>: <e>".
fn runner_error<T: Task>(what: &str, e: impl std::fmt::Display) -> TaskError {
    TaskError::new(
        TaskErrorKind::Runner,
        format!("task '{}' {what}: {e}", T::meta().name),
    )
}

/// Writes a persisted result here, where the value was made, before the
/// run is reported done.
fn persist_here<T: Task>(target: &crate::cache::Target, encoded: &[u8]) {
    let run =
        crate::exec::context::current_task_run_name().unwrap_or_else(|| T::meta().name.to_owned());
    crate::cache::persist(target, &run, encoded);
}

/// [`run_encoded`] from arguments that may be held values, to a held result:
/// what a worker does when it keeps results as values (it encodes them only
/// to store them). Keep the two in step.
fn run_held<T>(mut slots: Vec<ArgValue<'_>>) -> Result<Held, TaskError>
where
    T: Task,
    T::Args: SerializedArgs,
    T::Output: Serialize + DeserializeOwned,
{
    let target = crate::cache::serialized::split_held(&mut slots);
    let args = <T::Args as SerializedArgs>::decode_held(slots).map_err(undecodable::<T>)?;
    let raw = crate::engine::adapters::invoke_blocking::<T>(args, None)?;
    let mut held = Held::new(T::outcome(raw)?);
    if let Some(target) = target {
        // Encoded once: whoever writes the result out next reuses these bytes.
        persist_here::<T>(&target, held.encoded().map_err(unserializable::<T>)?);
    }
    Ok(held)
}

/// A task whose arguments and result can cross process boundaries. (No
/// custom message: rustc reports the missing serde bound of the argument
/// instead.)
pub trait SerializedTask: Task {}

impl<T> SerializedTask for T
where
    T: Task,
    T::Args: SerializedArgs,
    T::Output: Serialize + DeserializeOwned,
{
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

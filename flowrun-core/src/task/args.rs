//! Argument tuples: how a task's arguments are gathered from inputs,
//! and encoded for another process when their types allow it.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::record::RunRef;
use crate::task::input::Input;

/// One argument of a serialized call: its bytes, or the upstream run
/// whose result it is.
#[derive(Debug, Clone)]
pub enum ArgSlot {
    /// The argument, serialized.
    Bytes(Bytes),
    /// The result of this upstream run.
    Upstream(RunRef),
}

/// The tuple of a task's argument types.
pub trait ArgsTuple: Sized + Send + 'static {
    /// The tuple of [`Input`]s a call receives.
    type Inputs: Send + 'static;

    /// The upstream runs among the inputs.
    fn upstreams(inputs: &Self::Inputs, out: &mut Vec<RunRef>);

    /// The argument values, once every upstream run is final.
    fn resolve(inputs: Self::Inputs) -> Result<Self, TaskError>;
}

/// Argument tuples whose every element can cross a process boundary.
pub trait SerializedArgs: ArgsTuple {
    /// Encodes each input (upstream runs stay references).
    fn encode(inputs: &Self::Inputs) -> Result<Vec<ArgSlot>, TaskError>;

    /// Decodes the arguments from their encoded slots.
    fn decode(slots: &[&[u8]]) -> Result<Self, String>;
}

/// Serializes a value the way flowrun moves data between processes.
pub fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|e| e.to_string())
}

/// Deserializes a value encoded with [`encode_value`].
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

fn encode_input<A: Serialize + Send + 'static>(
    input: &Input<A>,
    index: usize,
) -> Result<ArgSlot, TaskError> {
    match input {
        Input::Value(v) => encode_value(v)
            .map(|b| ArgSlot::Bytes(Bytes::from(b)))
            .map_err(|e| {
                TaskError::new(
                    TaskErrorKind::Runner,
                    format!(
                        "argument {} (of type `{}`) could not be serialized: {e}",
                        index + 1,
                        std::any::type_name::<A>()
                    ),
                )
            }),
        Input::Future(f) => Ok(ArgSlot::Upstream(f.run_ref())),
    }
}

fn decode_slot<A: DeserializeOwned>(slots: &[&[u8]], index: usize) -> Result<A, String> {
    let bytes = slots
        .get(index)
        .ok_or_else(|| format!("argument {} is missing", index + 1))?;
    decode_value(bytes).map_err(|e| {
        format!(
            "argument {} does not decode as `{}`: {e}",
            index + 1,
            std::any::type_name::<A>()
        )
    })
}

/// A tuple of arguments for a task taking `A`: each element a value or an
/// upstream future ([`crate::IntoInput`]). `(3,)`, `(future, "x")`.
pub trait IntoInputs<A: ArgsTuple> {
    /// The inputs of a call.
    fn into_inputs(self) -> A::Inputs;
}

macro_rules! into_inputs_impls {
    ($( ($($name:ident $x:ident $idx:tt),*) )*) => {$(
        impl<$($name: Send + 'static, $x: crate::task::input::IntoInput<$name>),*> IntoInputs<($($name,)*)> for ($($x,)*) {
            #[allow(unused_variables, clippy::unused_unit)]
            fn into_inputs(self) -> ($(Input<$name>,)*) {
                ($(self.$idx.into_input(),)*)
            }
        }
    )*};
}

into_inputs_impls! {
    ()
    (A0 X0 0)
    (A0 X0 0, A1 X1 1)
    (A0 X0 0, A1 X1 1, A2 X2 2)
    (A0 X0 0, A1 X1 1, A2 X2 2, A3 X3 3)
    (A0 X0 0, A1 X1 1, A2 X2 2, A3 X3 3, A4 X4 4)
    (A0 X0 0, A1 X1 1, A2 X2 2, A3 X3 3, A4 X4 4, A5 X5 5)
    (A0 X0 0, A1 X1 1, A2 X2 2, A3 X3 3, A4 X4 4, A5 X5 5, A6 X6 6)
    (A0 X0 0, A1 X1 1, A2 X2 2, A3 X3 3, A4 X4 4, A5 X5 5, A6 X6 6, A7 X7 7)
}

macro_rules! tuple_impls {
    ($( ($($name:ident $idx:tt),*) )*) => {$(
        impl<$($name: Send + 'static),*> ArgsTuple for ($($name,)*) {
            type Inputs = ($(Input<$name>,)*);

            #[allow(unused_variables)]
            fn upstreams(inputs: &Self::Inputs, out: &mut Vec<RunRef>) {
                $( if let Some(r) = inputs.$idx.upstream() { out.push(r); } )*
            }

            #[allow(unused_variables, clippy::unused_unit)]
            fn resolve(inputs: Self::Inputs) -> Result<Self, TaskError> {
                Ok(($(inputs.$idx.resolve()?,)*))
            }
        }

        impl<$($name: Serialize + DeserializeOwned + Send + 'static),*> SerializedArgs for ($($name,)*) {
            #[allow(unused_variables)]
            fn encode(inputs: &Self::Inputs) -> Result<Vec<ArgSlot>, TaskError> {
                Ok(vec![$(encode_input(&inputs.$idx, $idx)?),*])
            }

            #[allow(unused_variables, clippy::unused_unit)]
            fn decode(slots: &[&[u8]]) -> Result<Self, String> {
                let expected: usize = 0 $(+ { let _ = $idx; 1 })*;
                if slots.len() != expected {
                    return Err(format!("expected {expected} arguments, got {}", slots.len()));
                }
                Ok(($(decode_slot::<$name>(slots, $idx)?,)*))
            }
        }
    )*};
}

tuple_impls! {
    ()
    (A0 0)
    (A0 0, A1 1)
    (A0 0, A1 1, A2 2)
    (A0 0, A1 1, A2 2, A3 3)
    (A0 0, A1 1, A2 2, A3 3, A4 4)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10, A11 11)
}

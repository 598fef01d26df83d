//! Argument tuples: how a task's arguments are gathered from inputs,
//! and encoded for another process when their types allow it.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::record::RunRef;
use crate::task::held::ArgValue;
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

    /// The upstream runs whose failure the call receives as a value
    /// ([`allow_failure`](crate::allow_failure)); also among `upstreams`.
    fn tolerated(inputs: &Self::Inputs, out: &mut Vec<RunRef>) {
        let _ = (inputs, out);
    }

    /// The argument values, once every upstream run is final.
    fn resolve(inputs: Self::Inputs) -> Result<Self, TaskError>;
}

/// Argument tuples whose every element can cross a process boundary.
pub trait SerializedArgs: ArgsTuple {
    /// Encodes each input (upstream runs stay references).
    fn encode(inputs: &Self::Inputs) -> Result<Vec<ArgSlot>, TaskError>;

    /// Decodes the arguments from their encoded slots.
    fn decode(slots: &[&[u8]]) -> Result<Self, String>;

    /// The arguments from slots some of which are values this process
    /// holds: those are moved in, not decoded, when they are of the
    /// argument's type.
    fn decode_held(slots: Vec<ArgValue<'_>>) -> Result<Self, String> {
        decode_encoded(slots, Self::decode)
    }
}

/// Decodes slots by encoding the held ones first.
fn decode_encoded<R>(
    slots: Vec<ArgValue<'_>>,
    decode: impl FnOnce(&[&[u8]]) -> Result<R, String>,
) -> Result<R, String> {
    let owned: Vec<std::borrow::Cow<'_, [u8]>> = slots
        .into_iter()
        .map(|s| match s {
            ArgValue::Encoded(b) => Ok(std::borrow::Cow::Borrowed(b)),
            ArgValue::Held(h) => h.encode().map(std::borrow::Cow::Owned),
        })
        .collect::<Result<_, String>>()?;
    let refs: Vec<&[u8]> = owned.iter().map(|b| &b[..]).collect();
    decode(&refs)
}

/// Argument `index` from its slot: moved in when held, else decoded.
fn take_slot<A: DeserializeOwned + 'static>(
    slot: Option<ArgValue<'_>>,
    index: usize,
) -> Result<A, String> {
    let decoded = match slot {
        None => return Err(format!("argument {} is missing", index + 1)),
        Some(ArgValue::Encoded(b)) => decode_fast(b),
        Some(ArgValue::Held(h)) => h.take(),
    };
    decoded.map_err(|e| {
        format!(
            "argument {} does not decode as `{}`: {e}",
            index + 1,
            std::any::type_name::<A>()
        )
    })
}

/// Serializes a value the way flowrun moves data between processes.
pub fn encode_value<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|e| e.to_string())
}

/// Deserializes a value encoded with [`encode_value`].
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

/// The bytes of a byte vector or a string, which postcard encodes alike (a
/// length prefix, then the bytes) and serde would encode byte by byte.
pub(crate) fn as_bytes(value: &dyn std::any::Any) -> Option<&[u8]> {
    if let Some(bytes) = value.downcast_ref::<Vec<u8>>() {
        return Some(bytes);
    }
    value.downcast_ref::<String>().map(String::as_bytes)
}

/// [`encode_value`] with one copy for a `Vec<u8>` or a `String`, the usual
/// types of bulk data. The bytes are the same: postcard writes a byte
/// sequence or a string as a varint length, then the bytes.
pub(crate) fn encode_fast<T: Serialize + 'static>(value: &T) -> Result<Vec<u8>, String> {
    let Some(bytes) = as_bytes(value) else {
        return encode_value(value);
    };
    let mut out = Vec::with_capacity(bytes.len() + 10);
    out.extend_from_slice(&length_prefix(bytes.len()));
    out.extend_from_slice(bytes);
    Ok(out)
}

/// [`encode_fast`] for a value that is no longer needed: a `Vec<u8>` or a
/// `String` becomes its own encoding in place (its allocation grows by a
/// few bytes), which spares a fresh allocation as large as the value, whose
/// page faults cost far more than the copy.
pub(crate) fn encode_owned<T: Serialize + 'static>(value: T) -> Result<Vec<u8>, String> {
    let mut slot = Some(value);
    let any = &mut slot as &mut dyn std::any::Any;
    let bytes = match any.downcast_mut::<Option<Vec<u8>>>() {
        Some(v) => v.take(),
        None => any
            .downcast_mut::<Option<String>>()
            .and_then(Option::take)
            .map(String::into_bytes),
    };
    if let Some(mut bytes) = bytes {
        let prefix = length_prefix(bytes.len());
        bytes.reserve_exact(prefix.len());
        bytes.splice(0..0, prefix);
        return Ok(bytes);
    }
    slot.as_ref().map_or_else(
        || Err("the value was already taken".to_owned()),
        encode_value,
    )
}

/// Postcard's length of a sequence: a LEB128 varint.
pub(crate) fn length_prefix(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    let mut len = len as u64;
    while len >= 0x80 {
        out.push(len as u8 | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out
}

/// [`decode_value`] with one copy for a `Vec<u8>` or a `String` (see
/// [`encode_fast`]); a string's UTF-8 is checked with SIMD (`simdutf8`),
/// several times faster than the standard library's check on bulk text.
pub(crate) fn decode_fast<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    use std::any::TypeId;
    let value: Box<dyn std::any::Any> = if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        Box::new(decode_value_borrowed(bytes)?.to_vec())
    } else if TypeId::of::<T>() == TypeId::of::<String>() {
        let raw = decode_value_borrowed(bytes)?;
        check_utf8(raw)?;
        // SAFETY: checked to be UTF-8 just above.
        Box::new(unsafe { String::from_utf8_unchecked(raw.to_vec()) })
    } else {
        return decode_value(bytes);
    };
    value
        .downcast::<T>()
        .map(|v| *v)
        .map_err(|_| "a byte vector is not the expected type".to_owned())
}

/// Checks `raw` is UTF-8, with SIMD; the standard library's check says
/// where it is not.
fn check_utf8(raw: &[u8]) -> Result<(), String> {
    if simdutf8::basic::from_utf8(raw).is_ok() {
        return Ok(());
    }
    Err(match std::str::from_utf8(raw) {
        Err(e) => format!("the string is not UTF-8: {e}"),
        Ok(_) => "the string is not UTF-8".to_owned(),
    })
}

/// A string of `bytes`, without a copy, once they are checked to be UTF-8.
pub(crate) fn string_from_utf8(bytes: Vec<u8>) -> Result<String, String> {
    check_utf8(&bytes)?;
    // SAFETY: checked to be UTF-8 just above.
    Ok(unsafe { String::from_utf8_unchecked(bytes) })
}

fn decode_value_borrowed(bytes: &[u8]) -> Result<&[u8], String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

/// The error of argument `index` (from 0), of type `A`, that could not be
/// serialized because of `why`.
pub(crate) fn not_serializable<A>(index: usize, why: impl std::fmt::Display) -> TaskError {
    TaskError::new(
        TaskErrorKind::Runner,
        format!(
            "argument {} (of type `{}`) could not be serialized: {why}",
            index + 1,
            std::any::type_name::<A>()
        ),
    )
}

/// Encodes one input as the pieces whose concatenation is its encoding:
/// one piece for a value or a future, several for a collection of futures.
fn encode_input<A: Serialize + Send + 'static>(
    input: &Input<A>,
    index: usize,
) -> Result<Vec<ArgSlot>, TaskError> {
    match input {
        Input::Value(v) => encode_fast(v)
            .map(|b| vec![ArgSlot::Bytes(Bytes::from(b))])
            .map_err(|e| not_serializable::<A>(index, e)),
        Input::Future(f) => Ok(vec![ArgSlot::Upstream(f.run_ref())]),
        Input::Gather(g) => g.pieces(index),
        Input::AllowFailure(a) => match a.peek() {
            Some(outcome) => encode_input(&Input::Value(outcome), index),
            None => Err(TaskError::new(
                TaskErrorKind::Runner,
                format!(
                    "argument {} is `allow_failure({})`, whose run was not final when the call was sent",
                    index + 1,
                    a.upstream().name()
                ),
            )),
        },
    }
}

/// The slots of a call from each argument's pieces. When an argument has
/// other than one piece, a last slot lists how many pieces each argument
/// has, so that [`join_pieces`] can join them where the task runs.
fn layout(args: Vec<Vec<ArgSlot>>) -> Vec<ArgSlot> {
    if args.iter().all(|a| a.len() == 1) {
        return args.into_iter().flatten().collect();
    }
    // Postcard's encoding of the `Vec<u32>` of counts: varints.
    let mut counts = length_prefix(args.len());
    for a in &args {
        counts.extend(length_prefix(a.len()));
    }
    let mut slots: Vec<ArgSlot> = args.into_iter().flatten().collect();
    slots.push(ArgSlot::Bytes(Bytes::from(counts)));
    slots
}

/// One byte string per argument from the slots of [`layout`].
fn join_pieces<'a>(
    slots: &[&'a [u8]],
    expected: usize,
) -> Result<Vec<std::borrow::Cow<'a, [u8]>>, String> {
    use std::borrow::Cow;
    if slots.len() == expected {
        return Ok(slots.iter().map(|s| Cow::Borrowed(*s)).collect());
    }
    let wrong = || format!("expected {expected} arguments, got {}", slots.len());
    let (last, pieces) = slots.split_last().ok_or_else(wrong)?;
    let counts: Vec<u32> = decode_value(last).map_err(|_| wrong())?;
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if counts.len() != expected || total != pieces.len() as u64 {
        return Err(wrong());
    }
    let mut rest = pieces;
    Ok(counts
        .iter()
        .map(|&c| {
            let (mine, after) = rest.split_at(c as usize);
            rest = after;
            match mine {
                [one] => Cow::Borrowed(*one),
                many => Cow::Owned(many.concat()),
            }
        })
        .collect())
}

fn decode_slot<A: DeserializeOwned + 'static>(slots: &[&[u8]], index: usize) -> Result<A, String> {
    let bytes = slots
        .get(index)
        .ok_or_else(|| format!("argument {} is missing", index + 1))?;
    decode_fast(bytes).map_err(|e| {
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
                $( inputs.$idx.upstreams(out); )*
            }

            #[allow(unused_variables)]
            fn tolerated(inputs: &Self::Inputs, out: &mut Vec<RunRef>) {
                $( if let Input::AllowFailure(a) = &inputs.$idx { out.push(a.upstream()); } )*
            }

            #[allow(unused_variables, clippy::unused_unit)]
            fn resolve(inputs: Self::Inputs) -> Result<Self, TaskError> {
                Ok(($(inputs.$idx.resolve()?,)*))
            }
        }

        impl<$($name: Serialize + DeserializeOwned + Send + 'static),*> SerializedArgs for ($($name,)*) {
            #[allow(unused_variables)]
            fn encode(inputs: &Self::Inputs) -> Result<Vec<ArgSlot>, TaskError> {
                Ok(layout(vec![$(encode_input(&inputs.$idx, $idx)?),*]))
            }

            #[allow(unused_variables, clippy::unused_unit)]
            fn decode(slots: &[&[u8]]) -> Result<Self, String> {
                let expected: usize = 0 $(+ { let _ = $idx; 1 })*;
                let joined = join_pieces(slots, expected)?;
                let args: Vec<&[u8]> = joined.iter().map(|a| &a[..]).collect();
                Ok(($(decode_slot::<$name>(&args, $idx)?,)*))
            }

            #[allow(unused_variables, unused_mut, clippy::unused_unit)]
            fn decode_held(slots: Vec<ArgValue<'_>>) -> Result<Self, String> {
                let expected: usize = 0 $(+ { let _ = $idx; 1 })*;
                // Pieces of gathered arguments are joined from their encodings.
                if slots.len() != expected {
                    return decode_encoded(slots, Self::decode);
                }
                let mut slots = slots.into_iter();
                Ok(($(take_slot::<$name>(slots.next(), $idx)?,)*))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_vectors_encode_as_serde_would_with_one_copy() {
        for len in [0usize, 1, 127, 128, 300, 16_384, 70_000] {
            let v: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let fast = encode_fast(&v).unwrap();
            assert_eq!(fast, encode_value(&v).unwrap(), "length {len}");
            assert_eq!(encode_owned(v.clone()).unwrap(), fast, "length {len}");
            assert_eq!(decode_fast::<Vec<u8>>(&fast).unwrap(), v);
            assert_eq!(decode_value::<Vec<u8>>(&fast).unwrap(), v);
        }
        for text in ["", "é", &"ab".repeat(100)] {
            let s = text.to_owned();
            let fast = encode_fast(&s).unwrap();
            assert_eq!(fast, encode_value(&s).unwrap(), "{text:?}");
            assert_eq!(encode_owned(s.clone()).unwrap(), fast);
            assert_eq!(decode_fast::<String>(&fast).unwrap(), s);
        }
        let e = decode_fast::<String>(&[2, b'a', 0xff]).unwrap_err();
        assert!(e.contains("not UTF-8") && e.contains("index 1"), "{e}");
        // Other types take serde's way.
        let s = encode_fast(&vec![1u16, 300]).unwrap();
        assert_eq!(encode_owned(vec![1u16, 300]).unwrap(), s);
        assert_eq!(decode_fast::<Vec<u16>>(&s).unwrap(), vec![1, 300]);
        assert!(decode_fast::<Vec<u8>>(&[5, 1]).is_err(), "truncated");
    }
}

//! Compile-time probes used by the generated code of `#[task]` and
//! `#[flow]`: for a concrete type they answer "is it `Clone`?", "can it
//! cross processes?", "what is this value as JSON?" without requiring either (autoref specialization). Each question is a
//! pair of traits with the same method; the first applies when the bound
//! holds, the second (one reference deeper) otherwise.
//!
//! ```
//! use flowrun_core::probe::*;
//! struct Opaque;
//! assert!((&Probe::<u32>::new()).cloner().is_some());
//! assert!((&Probe::<Opaque>::new()).cloner().is_none());
//! assert!((&Probe::<String>::new()).serde_ok());
//! assert!(!(&Probe::<Opaque>::new()).serde_ok());
//! assert_eq!((&Probe::<u32>::new()).json(&7).as_deref(), Some("7"));
//! assert_eq!((&Probe::<Opaque>::new()).json(&Opaque), None);
//! assert_eq!((&Probe::<u32>::new()).display_text(&7).as_deref(), Some("7"));
//! assert_eq!((&Probe::<Opaque>::new()).display_text(&Opaque), None);
//! ```

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::task::args::{decode_fast, encode_fast, SerializedArgs};
use crate::task::{Codec, SerializedFns, Task};

/// A zero-sized question about `T`.
pub struct Probe<T: ?Sized>(PhantomData<fn() -> Box<T>>);

impl<T: ?Sized> Probe<T> {
    /// A probe of `T`.
    pub const fn new() -> Self {
        Probe(PhantomData)
    }
}

impl<T: ?Sized> std::fmt::Debug for Probe<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe")
    }
}

impl<T: ?Sized> Default for Probe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// `T: Clone`: its clone function.
pub trait CloneYes<T> {
    /// `Some(T::clone)`.
    fn cloner(&self) -> Option<fn(&T) -> T>;
}
impl<T: Clone> CloneYes<T> for Probe<T> {
    fn cloner(&self) -> Option<fn(&T) -> T> {
        Some(T::clone)
    }
}

/// `T` is not `Clone`.
pub trait CloneNo<T> {
    /// `None`.
    fn cloner(&self) -> Option<fn(&T) -> T>;
}
impl<T> CloneNo<T> for &Probe<T> {
    fn cloner(&self) -> Option<fn(&T) -> T> {
        None
    }
}

/// `T` can cross processes: its encoder and decoder.
pub trait CodecYes<T> {
    /// `Some((encode, decode))`.
    fn codec(&self) -> Option<Codec<T>>;
    /// `true`.
    fn serde_ok(&self) -> bool;
}
impl<T: Serialize + DeserializeOwned + 'static> CodecYes<T> for Probe<T> {
    fn codec(&self) -> Option<Codec<T>> {
        Some((encode_fast::<T>, decode_fast::<T>))
    }
    fn serde_ok(&self) -> bool {
        true
    }
}

/// `T` cannot cross processes.
pub trait CodecNo<T> {
    /// `None`.
    fn codec(&self) -> Option<Codec<T>>;
    /// `false`.
    fn serde_ok(&self) -> bool;
}
impl<T> CodecNo<T> for &Probe<T> {
    fn codec(&self) -> Option<Codec<T>> {
        None
    }
    fn serde_ok(&self) -> bool {
        false
    }
}

/// Task `T` can run serialized: its serialized-call functions.
pub trait SerializedYes<T: Task> {
    /// `Some(functions)`.
    fn serialized(&self) -> Option<SerializedFns<T>>;
}
impl<T> SerializedYes<T> for Probe<T>
where
    T: Task,
    T::Args: SerializedArgs,
    T::Output: Serialize + DeserializeOwned,
{
    fn serialized(&self) -> Option<SerializedFns<T>> {
        Some(SerializedFns::new())
    }
}

/// Task `T` cannot run in another process.
pub trait SerializedNo<T: Task> {
    /// `None`.
    fn serialized(&self) -> Option<SerializedFns<T>>;
}
impl<T: Task> SerializedNo<T> for &Probe<T> {
    fn serialized(&self) -> Option<SerializedFns<T>> {
        None
    }
}

/// `T: Serialize`: a value of it as JSON (a flow's parameters, for the run
/// history).
pub trait JsonYes<T> {
    /// The value as JSON text, or `None` if its `Serialize` fails.
    fn json(&self, value: &T) -> Option<String>;
}
impl<T: Serialize> JsonYes<T> for Probe<T> {
    fn json(&self, value: &T) -> Option<String> {
        serde_json::to_string(value).ok()
    }
}

/// `T` is not `Serialize`.
pub trait JsonNo<T> {
    /// `None`.
    fn json(&self, value: &T) -> Option<String>;
}
impl<T> JsonNo<T> for &Probe<T> {
    fn json(&self, _value: &T) -> Option<String> {
        None
    }
}

/// `T: Display`: a value of it as text (a `{parameters[name]}` placeholder
/// of a `result_storage_key`).
pub trait DisplayYes<T> {
    /// The value's `Display` text.
    fn display_text(&self, value: &T) -> Option<String>;
}
impl<T: std::fmt::Display> DisplayYes<T> for Probe<T> {
    fn display_text(&self, value: &T) -> Option<String> {
        Some(value.to_string())
    }
}

/// `T` is not `Display`.
pub trait DisplayNo<T> {
    /// `None`.
    fn display_text(&self, value: &T) -> Option<String>;
}
impl<T> DisplayNo<T> for &Probe<T> {
    fn display_text(&self, _value: &T) -> Option<String> {
        None
    }
}

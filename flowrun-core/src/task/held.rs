//! Task values held as themselves between runs in one process, so that a
//! worker that computed a value can hand it to the next task it runs without
//! encoding and decoding it (see [`RegistryEntry::run_held`]).
//!
//! [`RegistryEntry::run_held`]: crate::registry::RegistryEntry::run_held

use std::any::Any;
use std::io::Write;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::task::args::{as_bytes, decode_fast, length_prefix, string_from_utf8};

/// A task's result held as its typed value, with how to encode it.
pub struct Held {
    value: Box<dyn Any + Send>,
    encode: fn(&(dyn Any + Send), &mut dyn Write) -> Result<(), String>,
    len: fn(&(dyn Any + Send)) -> Option<u64>,
    type_name: &'static str,
    /// The value's encoding, once something needed it in memory (a
    /// persisted result): written out as it is rather than made again.
    encoded: Option<Vec<u8>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("type", &self.type_name)
            .finish_non_exhaustive()
    }
}

/// Writes the encoding of `value` (a `T`) to `out` as it is made, without
/// a buffer as large as the value: a byte vector as its length prefix and
/// its bytes, anything else through postcard's writer.
fn encode_as<T: Serialize + Send + 'static>(
    value: &(dyn Any + Send),
    out: &mut dyn Write,
) -> Result<(), String> {
    let value = value
        .downcast_ref::<T>()
        .ok_or_else(|| format!("a held value is not a `{}`", std::any::type_name::<T>()))?;
    if let Some(bytes) = as_bytes(value) {
        return out
            .write_all(&length_prefix(bytes.len()))
            .and_then(|()| out.write_all(bytes))
            .map_err(|e| e.to_string());
    }
    postcard::to_io(value, out).map(drop).map_err(|e| match e {
        // postcard's own message hides the cause of a failed write.
        postcard::Error::SerializeBufferFull => {
            "the encoded value could not be written out".to_owned()
        }
        e => e.to_string(),
    })
}

/// The encoded length of `value` (a `T`) when it is known without encoding
/// it: for a byte vector or a string.
fn len_of<T: Send + 'static>(value: &(dyn Any + Send)) -> Option<u64> {
    let bytes = value
        .downcast_ref::<T>()
        .and_then(|v| as_bytes(v as &dyn Any))?;
    Some((length_prefix(bytes.len()).len() + bytes.len()) as u64)
}

impl Held {
    /// Holds `value`.
    pub fn new<T: Serialize + Send + 'static>(value: T) -> Held {
        Held {
            value: Box::new(value),
            encode: encode_as::<T>,
            len: len_of::<T>,
            type_name: std::any::type_name::<T>(),
            encoded: None,
        }
    }

    /// Writes the value's encoding (as [`crate::encode_value`] makes it) to
    /// `out` as it is made: a large value is never encoded into memory
    /// first (unless [`Held::encoded`] already did).
    pub fn encode_into(&self, out: &mut dyn Write) -> Result<(), String> {
        match &self.encoded {
            Some(bytes) => out.write_all(bytes).map_err(|e| e.to_string()),
            None => (self.encode)(&*self.value, out),
        }
    }

    /// The value's encoding in memory.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        if let Some(bytes) = &self.encoded {
            return Ok(bytes.clone());
        }
        let mut out = Vec::with_capacity(self.encoded_len().unwrap_or(0) as usize);
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// The value's encoding in memory, made once: later calls, and
    /// [`Held::encode_into`], use it instead of encoding the value again
    /// (until [`Held::forget_encoding`]).
    pub fn encoded(&mut self) -> Result<&[u8], String> {
        if self.encoded.is_none() {
            self.encoded = Some(self.encode()?);
        }
        Ok(self.encoded.as_deref().unwrap_or_default())
    }

    /// Drops the encoding [`Held::encoded`] kept (once it is written out,
    /// holding the value twice would only cost memory).
    pub fn forget_encoding(&mut self) {
        self.encoded = None;
    }

    /// The length of the value's encoding when it is known without encoding
    /// it (a byte vector's or a string's, or one already encoded).
    pub fn encoded_len(&self) -> Option<u64> {
        match &self.encoded {
            Some(bytes) => Some(bytes.len() as u64),
            None => (self.len)(&*self.value),
        }
    }

    /// The name of the value's type.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// The value as an `A`: itself when it is one, else decoded from its
    /// encoding (a type with the same encoding, such as a `Vec<u8>` result
    /// passed to a `Box<[u8]>` argument).
    pub fn take<A: DeserializeOwned + 'static>(self) -> Result<A, String> {
        if self.value.is::<A>() {
            let value = self.value.downcast::<A>().map_err(|_| "checked")?;
            return Ok(*value);
        }
        // A byte vector taken as a string (they encode alike) becomes one
        // in place once its UTF-8 is checked.
        if std::any::TypeId::of::<A>() == std::any::TypeId::of::<String>()
            && self.value.is::<Vec<u8>>()
        {
            let bytes = self.value.downcast::<Vec<u8>>().map_err(|_| "checked")?;
            let text: Box<dyn Any> = Box::new(string_from_utf8(*bytes)?);
            return text
                .downcast::<A>()
                .map(|v| *v)
                .map_err(|_| "checked".into());
        }
        decode_fast(&self.encode()?)
    }
}

/// One argument slot of a call run in this process: encoded bytes, or a
/// value this process holds.
#[derive(Debug)]
pub enum ArgValue<'a> {
    /// The argument's encoding.
    Encoded(&'a [u8]),
    /// The argument itself.
    Held(Held),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_value;

    #[test]
    fn a_held_value_encodes_as_encode_value_does_and_is_taken_without_a_copy() {
        let v: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let held = Held::new(v.clone());
        assert_eq!(held.encode().unwrap(), encode_value(&v).unwrap());
        assert_eq!(
            held.encoded_len(),
            Some(encode_value(&v).unwrap().len() as u64)
        );
        let ptr = match &held.value.downcast_ref::<Vec<u8>>() {
            Some(v) => v.as_ptr(),
            None => unreachable!(),
        };
        let back: Vec<u8> = held.take().unwrap();
        assert_eq!(back.as_ptr(), ptr, "the same buffer, not a copy");
        assert_eq!(back, v);

        let s = Held::new((3u64, "x".to_owned()));
        assert_eq!(
            s.encode().unwrap(),
            encode_value(&(3u64, "x".to_owned())).unwrap()
        );
        assert_eq!(s.encoded_len(), None, "not known without encoding");
        // Another type with the same encoding decodes.
        let as_bytes: Box<[u8]> = Held::new(vec![1u8, 2]).take().unwrap();
        assert_eq!(&as_bytes[..], &[1, 2]);
        // A type that does not decode is an error, not a panic.
        assert!(Held::new(7u8).take::<String>().is_err());
        // Bytes taken as a string become one without a copy, once checked.
        let bytes = "text".as_bytes().to_vec();
        let ptr = bytes.as_ptr();
        let text: String = Held::new(bytes).take().unwrap();
        assert_eq!((text.as_str(), text.as_ptr()), ("text", ptr));
        let e = Held::new(vec![b'a', 0xff]).take::<String>().unwrap_err();
        assert!(e.contains("not UTF-8"), "{e}");
        // A string's length is known without encoding it.
        let text = Held::new("é".repeat(100));
        assert_eq!(
            text.encoded_len(),
            Some(encode_value(&"é".repeat(100)).unwrap().len() as u64)
        );
    }

    static SERIALIZED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Counts how often it is serialized.
    struct Counted(u32);

    impl Serialize for Counted {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            SERIALIZED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            s.serialize_u32(self.0)
        }
    }

    #[test]
    fn a_value_encoded_once_is_written_out_from_that_encoding() {
        let count = || SERIALIZED.load(std::sync::atomic::Ordering::SeqCst);
        let mut held = Held::new(Counted(300));
        let once = held.encoded().unwrap().to_vec();
        assert_eq!(once, encode_value(&300u32).unwrap());
        let mut out = Vec::new();
        held.encode_into(&mut out).unwrap();
        assert_eq!((out, held.encode().unwrap()), (once.clone(), once.clone()));
        assert_eq!(held.encoded_len(), Some(once.len() as u64));
        assert_eq!(count(), 1, "encoded once, written from those bytes");
        held.forget_encoding();
        let mut out = Vec::new();
        held.encode_into(&mut out).unwrap();
        assert_eq!((out, count()), (once, 2));
    }
}

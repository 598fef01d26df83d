//! Encoded values that live outside this process's heap (a file in a
//! cluster's result store, say) and are read only when someone asks.
//!
//! A runner hands flowrun such a value as ordinary [`Bytes`] made by
//! [`external_bytes`]: the bytes are a small token that the runner
//! understands (it passes them on to its workers by reference), and every
//! clone of them keeps the value alive. When the last clone drops (no future,
//! no pending dependent holds the run's result any more), the [`External`]
//! drops too, and its owner frees the value. flowrun reads the value with
//! [`External::read`] whenever the program decodes the result.

use crate::plumbing::lock;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use crate::run::error::TaskError;

/// An encoded value held elsewhere, read on demand.
pub trait External: Send + Sync + 'static {
    /// Reads the value's encoded bytes (may block on I/O).
    fn read(&self) -> Result<Bytes, TaskError>;

    /// The value as its owner's type, so a runner can recognise its own
    /// values and pass them on by reference.
    fn as_any(&self) -> &dyn Any;
}

/// Live external values by the address of their token's bytes. The token
/// is a heap allocation owned by the [`Bytes`], so its address is unique
/// for as long as the value is registered.
/// A plain map: external values are few (one per large result).
type Table = Mutex<HashMap<usize, Arc<dyn External>>>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// How many values are registered: lets [`external`] skip the lock when
/// there are none, as for every run that never used a result store.
static LIVE: AtomicUsize = AtomicUsize::new(0);

struct Owner {
    token: Box<[u8]>,
}

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.token
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let removed = lock(table()).remove(&(self.token.as_ptr() as usize));
        if removed.is_some() {
            LIVE.fetch_sub(1, Ordering::AcqRel);
        }
        // The value's own Drop (freeing it) runs here, outside the lock.
        drop(removed);
    }
}

/// Bytes that stand for `value`: their content is `token` (made non-empty
/// if it is empty), and `value` lives as long as any clone of them.
pub fn external_bytes(token: Vec<u8>, value: Arc<dyn External>) -> Bytes {
    let mut token = token;
    if token.is_empty() {
        // An empty allocation has no address of its own.
        token.push(0);
    }
    let token = token.into_boxed_slice();
    lock(table()).insert(token.as_ptr() as usize, value);
    LIVE.fetch_add(1, Ordering::AcqRel);
    Bytes::from_owner(Owner { token })
}

/// The external value `bytes` stand for, if they were made by
/// [`external_bytes`] (or are a clone of such bytes).
pub fn external(bytes: &Bytes) -> Option<Arc<dyn External>> {
    if LIVE.load(Ordering::Acquire) == 0 || bytes.is_empty() {
        return None;
    }
    lock(table()).get(&(bytes.as_ptr() as usize)).cloned()
}

/// The encoded value behind `bytes`: read from where it lives when they
/// stand for an external value, else `bytes` themselves.
pub fn resolve(bytes: &Bytes) -> Result<Bytes, TaskError> {
    match external(bytes) {
        Some(value) => value.read(),
        None => Ok(bytes.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    struct Held {
        freed: Arc<AtomicBool>,
    }

    impl External for Held {
        fn read(&self) -> Result<Bytes, TaskError> {
            Ok(Bytes::from_static(b"the value"))
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            self.freed.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn external_values_are_read_on_demand_and_freed_with_the_last_clone() {
        let freed = Arc::new(AtomicBool::new(false));
        let bytes = external_bytes(
            b"token".to_vec(),
            Arc::new(Held {
                freed: freed.clone(),
            }),
        );
        assert_eq!(&bytes[..], b"token");
        let copy = bytes.clone();
        assert_eq!(&resolve(&copy).unwrap()[..], b"the value");
        assert!(external(&copy).unwrap().as_any().is::<Held>());
        drop(bytes);
        assert!(!freed.load(Ordering::SeqCst), "a clone still holds it");
        drop(copy);
        assert!(freed.load(Ordering::SeqCst));
        // Equal content made some other way is not the external value.
        assert!(external(&Bytes::from_static(b"token")).is_none());
        assert_eq!(&resolve(&Bytes::from_static(b"raw")).unwrap()[..], b"raw");
    }
}

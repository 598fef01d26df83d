//! Results persisted where they are made. A serialized run (a worker
//! process of the local cluster, a real Dask worker, the serializing
//! runner) carries its result target as one extra argument slot, after the
//! task's own: the code that runs the task from bytes (`run_encoded`) takes
//! it off, and writes the result in the process that computed it, before
//! that process reports the run done. Runners pass the slot along like any
//! other argument, so none of them needs to know about it.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{ResultStorage, Target};
use crate::task::args::ArgSlot;
use crate::task::held::ArgValue;

/// Starts the slot; no argument of a task starts this way in practice (an
/// argument is the postcard encoding of a value, led by its own bytes).
const MAGIC: &[u8; 24] = b"\xff\x00flowrun-result-target\x01";

#[derive(Serialize, Deserialize)]
struct Wire {
    dir: PathBuf,
    file: String,
    cache_key: Option<String>,
    version: [u8; 16],
    expiration_ms: Option<u64>,
}

/// The slot that carries `target` to the process that runs the task.
pub(crate) fn slot(target: &Target) -> Option<ArgSlot> {
    let wire = Wire {
        dir: target.storage.path().to_owned(),
        file: target.file.clone(),
        cache_key: target.cache_key.clone(),
        version: target.version,
        expiration_ms: target
            .expiration
            .map(|d| d.as_millis().min(u64::MAX as u128) as u64),
    };
    let mut out = MAGIC.to_vec();
    out.extend(postcard::to_allocvec(&wire).ok()?);
    Some(ArgSlot::Bytes(Bytes::from(out)))
}

/// The task's own slots, and the result target when the last slot is one.
pub(crate) fn split<'a, 'b>(slots: &'a [&'b [u8]]) -> (&'a [&'b [u8]], Option<Target>) {
    if let Some((last, rest)) = slots.split_last() {
        if let Some(target) = target_of(last) {
            return (rest, Some(target));
        }
    }
    (slots, None)
}

/// [`split`] for arguments that may be held values (a local-cluster worker
/// that keeps results): takes the target slot off the end.
pub(crate) fn split_held(slots: &mut Vec<ArgValue<'_>>) -> Option<Target> {
    let target = match slots.last() {
        Some(ArgValue::Encoded(last)) => target_of(last)?,
        _ => return None,
    };
    slots.pop();
    Some(target)
}

/// The target a slot carries, when it is a target slot.
fn target_of(slot: &[u8]) -> Option<Target> {
    let body = slot.strip_prefix(&MAGIC[..])?;
    let w = postcard::from_bytes::<Wire>(body).ok()?;
    Some(Target {
        storage: ResultStorage::new(w.dir),
        file: w.file,
        cache_key: w.cache_key,
        version: w.version,
        expiration: w.expiration_ms.map(Duration::from_millis),
    })
}

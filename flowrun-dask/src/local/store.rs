//! The result store of a local cluster: large results live in files that
//! the worker which computed them writes and that readers map, so they never
//! pass through the flow's process unless the program reads them.
//!
//! # Design
//!
//! - **Where.** One private directory per cluster (mode 0700, named
//!   `flowrun-store-<flow pid>-<random>`), in `/dev/shm` when it exists, else
//!   in the system temp dir. `/dev/shm` is memory (tmpfs): writing a result is
//!   a copy into the page cache and reading it is a mapping of the same pages,
//!   so a value computed on one worker reaches a task on another worker, or
//!   the flow, with no socket in between and no copy through the flow. All
//!   workers of a local cluster share the machine, so a shared directory is
//!   the simplest store that needs no transfer protocol at all (Dask moves
//!   data peer to peer because its workers may be on other machines).
//! - **What crosses the connection.** A result or argument is a [`Payload`]:
//!   the value itself when it is at most [`INLINE_MAX`] bytes (small values
//!   are cheaper on the wire than as a file), else a [`StoredRef`] naming the
//!   file. The worker decides; the scheduler only moves the payload.
//! - **Who owns an entry.** The flow. When a reference arrives, it becomes
//!   bytes made by [`flowrun_core::external::external_bytes`] whose owner is an
//!   [`Entry`]: the run's result slot, its future's clones and the arguments
//!   of pending dependents all share those bytes, and the last of them to drop
//!   deletes the file. Workers never delete; a worker that dies takes nothing
//!   with it, so no completed result is lost or recomputed.
//! - **Reads.** A worker maps the files of its arguments while its task runs.
//!   The flow maps a file only when the program decodes the result, each time
//!   it does (it keeps no copy).
//! - **End.** Closing the cluster (also when the flow fails or panics, and
//!   when a [`super::LocalCluster`] drops) removes the directory with
//!   everything in it; a later read fails with a message saying so. A flow
//!   killed outright leaves its directory behind: the next cluster started on
//!   this machine removes directories whose flow process is gone.

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use flowrun_core::external::{external, external_bytes, External};
use flowrun_core::plumbing::lock;
use flowrun_core::{TaskError, TaskErrorKind};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Values up to this size travel inside messages; larger ones are stored.
pub(crate) const INLINE_MAX: usize = 32 * 1024;

const PREFIX: &str = "flowrun-store-";

/// A result or argument as it crosses a connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Payload {
    /// The encoded value.
    Inline(ByteBuf),
    /// The encoded value is a file of the cluster's store.
    Stored(StoredRef),
}

/// The same encoding as [`Payload`], borrowing the value (for sending).
#[derive(Serialize)]
enum PayloadOut<'a> {
    Inline(#[serde(with = "serde_bytes")] &'a [u8]),
    Stored(StoredRef),
}

/// Names a stored value: which store, which file, how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredRef {
    /// The store's id (each cluster's store has its own).
    pub store: u64,
    /// The worker that wrote it.
    pub worker: u32,
    /// Its number among that worker's stored values.
    pub seq: u64,
    /// Its size in bytes.
    pub len: u64,
}

impl StoredRef {
    /// Made of numbers only, so no reference can name a file outside the store.
    fn file_name(&self) -> String {
        format!("{}-{}", self.worker, self.seq)
    }
}

/// A cluster's store, on the flow's side.
pub(crate) struct Store {
    id: u64,
    dir: PathBuf,
    held: Mutex<Option<tempfile::TempDir>>,
    closed: AtomicBool,
}

fn stores() -> &'static Mutex<HashMap<u64, Weak<Store>>> {
    static STORES: OnceLock<Mutex<HashMap<u64, Weak<Store>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

impl Store {
    /// Creates the store's directory.
    pub(crate) fn create() -> io::Result<Arc<Store>> {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            make_dir(shm).or_else(|_| make_dir(&std::env::temp_dir()))
        } else {
            make_dir(&std::env::temp_dir())
        }?;
        let mut id = [0u8; 8];
        super::transport::handshake::random_bytes(&mut id)?;
        let store = Arc::new(Store {
            id: u64::from_le_bytes(id),
            dir: dir.path().to_owned(),
            held: Mutex::new(Some(dir)),
            closed: AtomicBool::new(false),
        });
        lock(&stores()).insert(store.id, Arc::downgrade(&store));
        Ok(store)
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the directory and everything stored in it.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        lock(&stores()).remove(&self.id);
        let held = lock(&self.held).take();
        if let Some(dir) = held {
            if let Err(e) = dir.close() {
                tracing::warn!(target: "flowrun_dask::cluster", "Could not remove the cluster's result store {}: {e}", self.dir.display());
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn make_dir(parent: &Path) -> io::Result<tempfile::TempDir> {
    sweep(parent);
    // tempfile creates it with mode 0700: only this user can read results.
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir_in(parent)
}

/// Removes stores left behind by flow processes that no longer exist
/// (killed before they could clean up).
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let mine = std::fs::metadata(entry.path()).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            // SAFETY: getuid has no preconditions.
            m.uid() == unsafe { libc::getuid() }
        });
        if mine && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A stored value the flow knows of; dropping it deletes the file.
struct Entry {
    store: Arc<Store>,
    reference: StoredRef,
}

impl Entry {
    fn path(&self) -> PathBuf {
        self.store.dir.join(self.reference.file_name())
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if !self.store.closed.load(Ordering::Acquire) {
            let _ = std::fs::remove_file(self.path());
        }
    }
}

impl External for Entry {
    fn read(&self) -> Result<Bytes, TaskError> {
        if self.store.closed.load(Ordering::Acquire) {
            return Err(TaskError::new(
                TaskErrorKind::ResultUnavailable,
                "its result was held by a cluster that has closed since",
            ));
        }
        map(&self.path(), self.reference.len)
            .map(Bytes::from_owner)
            .map_err(|e| TaskError::new(TaskErrorKind::ResultUnavailable, e))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A stored value mapped into memory (or an empty one).
pub(crate) enum Mapped {
    Map(memmap2::Mmap),
    Empty,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        match self {
            Mapped::Map(m) => m,
            Mapped::Empty => &[],
        }
    }
}

fn map(path: &Path, len: u64) -> Result<Mapped, String> {
    let what = || format!("the stored value {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| format!("{} cannot be read: {e}", what()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("{} cannot be read: {e}", what()))?
        .len();
    if size != len {
        return Err(format!(
            "{} is {size} bytes, but {len} were written",
            what()
        ));
    }
    if len == 0 {
        return Ok(Mapped::Empty);
    }
    // SAFETY: the store's files are written once, before their reference is
    // sent, and never modified; they are only deleted (which leaves an
    // existing mapping intact).
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
        .map_err(|e| format!("{} cannot be mapped: {e}", what()))?;
    Ok(Mapped::Map(map))
}

impl Payload {
    /// On the flow's side: the bytes of a result a worker reported. A
    /// stored one becomes bytes that own its file (see the module docs).
    pub(crate) fn into_bytes(self) -> Result<Bytes, TaskError> {
        match self {
            Payload::Inline(b) => Ok(Bytes::from(b.into_vec())),
            Payload::Stored(reference) => {
                let store = lock(&stores())
                    .get(&reference.store)
                    .and_then(Weak::upgrade)
                    .ok_or_else(|| {
                        TaskError::new(
                            TaskErrorKind::ResultUnavailable,
                            "its result was stored in a cluster's result store that is closed",
                        )
                    })?;
                let token = flowrun_core::encode_value(&reference).unwrap_or_default();
                Ok(external_bytes(token, Arc::new(Entry { store, reference })))
            }
        }
    }

    /// Serializes `bytes` as a payload for a worker: by reference when they
    /// stand for a value of a store, else inline.
    pub(crate) fn serialize_bytes<S: serde::Serializer>(
        bytes: &Bytes,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let Some(value) = external(bytes) else {
            return PayloadOut::Inline(bytes).serialize(s);
        };
        if let Some(entry) = value.as_any().downcast_ref::<Entry>() {
            return PayloadOut::Stored(entry.reference).serialize(s);
        }
        // Some other kind of external value: its bytes go inline.
        let read = value.read().map_err(serde::ser::Error::custom)?;
        PayloadOut::Inline(&read).serialize(s)
    }

    /// On the flow's side: the value itself, read from the store if it is
    /// stored there (for a worker that gets it in a message).
    pub(crate) fn inline(bytes: &Bytes) -> Result<ByteBuf, TaskError> {
        flowrun_core::external::resolve(bytes).map(|b| ByteBuf::from(b.to_vec()))
    }
}

/// A cluster's store, on a worker's side: where it writes its results.
pub(crate) struct WorkerStore {
    id: u64,
    dir: PathBuf,
    worker: u32,
    next: AtomicU64,
}

/// An argument a worker received, ready to decode.
pub(crate) enum Arg<'a> {
    Inline(&'a [u8]),
    Mapped(Mapped),
}

impl Arg<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Arg::Inline(b) => b,
            Arg::Mapped(m) => m.as_ref(),
        }
    }
}

impl WorkerStore {
    pub(crate) fn new(id: u64, dir: PathBuf, worker: u32) -> WorkerStore {
        WorkerStore {
            id,
            dir,
            worker,
            next: AtomicU64::new(1),
        }
    }

    /// The payload of a result: inline when small, else written to the store.
    pub(crate) fn put(&self, value: Vec<u8>) -> Result<Payload, String> {
        if value.len() <= INLINE_MAX {
            return Ok(Payload::Inline(ByteBuf::from(value)));
        }
        let reference = StoredRef {
            store: self.id,
            worker: self.worker,
            seq: self.next.fetch_add(1, Ordering::Relaxed),
            len: value.len() as u64,
        };
        let path = self.dir.join(reference.file_name());
        std::fs::write(&path, &value).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            format!(
                "its result ({} bytes) could not be written to the cluster's result store {}: {e}",
                value.len(),
                self.dir.display()
            )
        })?;
        Ok(Payload::Stored(reference))
    }

    /// An argument: its bytes, or its stored value mapped.
    pub(crate) fn get<'a>(&self, payload: &'a Payload) -> Result<Arg<'a>, String> {
        match payload {
            Payload::Inline(b) => Ok(Arg::Inline(b)),
            Payload::Stored(r) if r.store != self.id => Err(format!(
                "an argument refers to another cluster's result store ({:x}, this worker's is {:x})",
                r.store, self.id
            )),
            Payload::Stored(r) => map(&self.dir.join(r.file_name()), r.len).map(Arg::Mapped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |d| d.count())
    }

    #[test]
    fn a_large_value_is_stored_read_by_reference_and_deleted_with_its_last_holder() {
        let store = Store::create().unwrap();
        let worker = WorkerStore::new(store.id(), store.dir().to_owned(), 3);
        let small = worker.put(vec![1; 10]).unwrap();
        assert!(matches!(small, Payload::Inline(_)));
        let value: Vec<u8> = (0..INLINE_MAX as u32 * 2).map(|i| i as u8).collect();
        let payload = worker.put(value.clone()).unwrap();
        let Payload::Stored(reference) = payload.clone() else {
            panic!("a large value goes to the store");
        };
        assert_eq!(reference.len, value.len() as u64);
        assert_eq!(worker.get(&payload).unwrap().bytes(), &value[..]);
        assert_eq!(entries(store.dir()), 1);

        // Through the wire encoding, as the scheduler moves it.
        let wire = postcard::to_allocvec(&payload).unwrap();
        let back: Payload = postcard::from_bytes(&wire).unwrap();
        let held = back.into_bytes().unwrap();
        assert!(held.len() < 64, "the flow holds a token, not the value");
        assert_eq!(
            &flowrun_core::external::resolve(&held).unwrap()[..],
            &value[..]
        );
        assert_eq!(&Payload::inline(&held).unwrap()[..], &value[..]);

        // Sent on as an argument, it goes by reference and decodes the same.
        #[derive(Serialize)]
        struct Out<'a>(#[serde(serialize_with = "Payload::serialize_bytes")] &'a Bytes);
        let wire = postcard::to_allocvec(&Out(&held)).unwrap();
        let arg: Payload = postcard::from_bytes(&wire).unwrap();
        assert!(matches!(arg, Payload::Stored(r) if r == reference));
        let wire = postcard::to_allocvec(&Out(&Bytes::from_static(b"raw"))).unwrap();
        let arg: Payload = postcard::from_bytes(&wire).unwrap();
        assert!(matches!(arg, Payload::Inline(ref b) if &b[..] == b"raw"));

        let clone = held.clone();
        drop(held);
        assert_eq!(entries(store.dir()), 1, "a clone still holds it");
        drop(clone);
        assert_eq!(entries(store.dir()), 0, "the last holder deletes it");

        let dir = store.dir().to_owned();
        let kept = worker.put(value).unwrap().into_bytes().unwrap();
        store.close();
        assert!(!dir.exists(), "closing removes the store");
        let e = flowrun_core::external::resolve(&kept).unwrap_err();
        assert!(e.message().contains("closed"), "{}", e.message());
    }

    #[test]
    fn a_truncated_or_foreign_reference_is_a_clear_error() {
        let store = Store::create().unwrap();
        let worker = WorkerStore::new(store.id(), store.dir().to_owned(), 0);
        let Payload::Stored(mut r) = worker.put(vec![7; INLINE_MAX + 1]).unwrap() else {
            panic!("stored");
        };
        r.len += 5;
        let e = worker.get(&Payload::Stored(r)).err().unwrap();
        assert!(e.contains("bytes, but"), "{e}");
        r.store ^= 1;
        let e = worker.get(&Payload::Stored(r)).err().unwrap();
        assert!(e.contains("another cluster"), "{e}");
    }
}

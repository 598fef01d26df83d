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
//!   deletes the file (or pools it for reuse, see below). Workers never delete
//!   a value; a worker that dies takes nothing
//!   with it, so no completed result is lost or recomputed.
//! - **Writes.** A worker encodes a result straight into its file as the
//!   encoding is made (a byte vector as its length prefix and its bytes), so
//!   a large value never has a second, encoded copy in the worker's memory:
//!   a 3 GiB result needs 3 GiB in its worker and 3 GiB of store, and one
//!   whose size is known (a byte vector) and exceeds the store's free space
//!   fails at once naming both. The file is complete before the result is
//!   reported, so a completed result never depends on its worker living.
//! - **Kept values.** The worker also keeps the value it stored, as the typed
//!   value, within a budget (1 GiB, at most a quarter of its memory limit,
//!   oldest dropped first, and dropped once its file is deleted). The
//!   scheduler places a task on the worker that keeps most of its stored
//!   arguments when that worker has room (`scheduler::policy::pick_worker`),
//!   and there the first task to take a kept value gets the value itself:
//!   no read, no decode, no copy (a chain link on 256 MiB was a decode of
//!   256 MiB into fresh memory). Later readers, other workers and the flow
//!   read the file, which stays the reference: the kept copy is only a
//!   shortcut, so losing it (eviction, worker death) loses nothing.
//! - **Reused files.** Deleting a large file frees its pages, and writing
//!   the next result allocates fresh ones (a 256 MiB write into a new file
//!   took twice as long as into an existing one, and the delete itself some
//!   40 ms of the scheduler's thread). So when the flow lets go of a file of
//!   at least [`REUSE_MIN`] bytes, it renames it into the store's pool of
//!   free files (`free-<len>-…`) instead, and a worker that stores a result
//!   of a known size takes the pooled file of the nearest size by renaming
//!   it to its own new name and overwrites it. The pool is bounded: at most
//!   [`POOL_MAX`] bytes, each file deleted after [`POOL_IDLE`] unused, and
//!   emptied when a result would not fit in the store otherwise; a thread of
//!   the flow does those deletes. Only a file nobody maps is pooled: every
//!   reader holds a shared `flock` on the file while it maps it, and the
//!   flow pools a file only under an exclusive one (else it deletes it, and
//!   the reader's mapping keeps the value as before).
//! - **Reads.** A worker maps the files of the arguments it does not keep
//!   while its task runs. The flow maps a file only when the program
//!   decodes the result, each time it does (it keeps no copy).
//! - **Runs submitted from a task.** Their results go to the submitting
//!   worker by reference too; the flow keeps them (the run's future) until
//!   the submitting task finishes, and the worker reads the file when the
//!   task reads the result.
//! - **End.** Closing the cluster (also when the flow fails or panics, and
//!   when a [`super::LocalCluster`] drops) removes the directory with
//!   everything in it; a later read fails with a message saying so. A flow
//!   killed outright leaves its directory behind: the next cluster started on
//!   this machine removes directories whose flow process is gone.

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowrun_core::external::{external, external_bytes, External};
use flowrun_core::plumbing::lock;
use flowrun_core::registry::{ArgValue, Held};
use flowrun_core::{TaskError, TaskErrorKind};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Values up to this size travel inside messages; larger ones are stored.
pub(crate) const INLINE_MAX: usize = 32 * 1024;

const PREFIX: &str = "flowrun-store-";

/// Stored files at least this large are pooled for reuse when freed
/// (smaller ones are deleted: their pages cost little to allocate).
pub(crate) const REUSE_MIN: u64 = 1 << 20;

/// At most this many bytes of freed files wait in a store's pool.
pub(crate) const POOL_MAX: u64 = 1 << 30;

/// A pooled file no worker took within this time is deleted.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(2);

/// The name prefix of pooled (free) files.
const FREE: &str = "free-";

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
    /// The thread that deletes pooled files, started with the first one.
    reaper: Mutex<Option<Reaper>>,
}

/// The thread that bounds a store's pool of free files.
struct Reaper {
    pooled: mpsc::Sender<(PathBuf, u64)>,
    thread: std::thread::JoinHandle<()>,
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
            reaper: Mutex::new(None),
        });
        lock(stores()).insert(store.id, Arc::downgrade(&store));
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
        lock(stores()).remove(&self.id);
        // The pool's thread stops before the directory goes.
        let reaper = lock(&self.reaper).take();
        if let Some(Reaper { pooled, thread }) = reaper {
            drop(pooled);
            let _ = thread.join();
        }
        let held = lock(&self.held).take();
        if let Some(dir) = held {
            if let Err(e) = dir.close() {
                tracing::warn!(target: "flowrun_dask::cluster", "Could not remove the cluster's result store {}: {e}", self.dir.display());
            }
        }
    }
}

impl Store {
    /// Lets go of the stored file at `path` (`len` bytes): a large one
    /// nobody maps goes to the pool of free files, anything else is deleted.
    fn release(&self, path: &Path, reference: &StoredRef) {
        if reference.len < REUSE_MIN || !self.pool(path, reference) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Renames the file at `path` into the pool, if nobody maps it.
    fn pool(&self, path: &Path, reference: &StoredRef) -> bool {
        let Ok(file) = std::fs::File::open(path) else {
            return false;
        };
        // SAFETY: flock on an open file descriptor; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            // Mapped somewhere: deleting it keeps that mapping's value.
            return false;
        }
        let free = self
            .dir
            .join(format!("{FREE}{}-{}", reference.len, reference.file_name()));
        if std::fs::rename(path, &free).is_err() {
            return false;
        }
        drop(file);
        let mut reaper = lock(&self.reaper);
        if reaper.is_none() {
            let (tx, rx) = mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("flowrun-store-pool".into())
                .spawn(move || reap(rx));
            match spawned {
                Ok(thread) => *reaper = Some(Reaper { pooled: tx, thread }),
                Err(_) => {
                    let _ = std::fs::remove_file(&free);
                    return true;
                }
            }
        }
        if let Some(r) = reaper.as_ref() {
            if r.pooled.send((free.clone(), reference.len)).is_err() {
                let _ = std::fs::remove_file(&free);
            }
        }
        true
    }
}

/// The pool's thread: deletes pooled files beyond [`POOL_MAX`] bytes and
/// those older than [`POOL_IDLE`], until the store closes. A file a worker
/// took has another name by then, so deleting its pooled name does nothing.
fn reap(pooled: mpsc::Receiver<(PathBuf, u64)>) {
    let mut pool: std::collections::VecDeque<(PathBuf, u64, Instant)> = Default::default();
    let mut bytes = 0u64;
    loop {
        let next = match pool.front() {
            None => pooled
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some((_, _, at)) => pooled.recv_timeout(POOL_IDLE.saturating_sub(at.elapsed())),
        };
        match next {
            Ok((path, len)) => {
                bytes += len;
                pool.push_back((path, len, Instant::now()));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while let Some((path, len, at)) = pool.front() {
            if bytes <= POOL_MAX && at.elapsed() < POOL_IDLE {
                break;
            }
            let _ = std::fs::remove_file(path);
            bytes -= len;
            pool.pop_front();
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
            self.store.release(&self.path(), &self.reference);
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

/// A stored value mapped into memory (or an empty one). The open file
/// holds a shared `flock` while the mapping lives, so that the flow never
/// pools (and a worker never overwrites) a file that is mapped.
pub(crate) enum Mapped {
    Map(memmap2::Mmap, #[allow(dead_code)] std::fs::File),
    Empty,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        match self {
            Mapped::Map(m, _) => m,
            Mapped::Empty => &[],
        }
    }
}

fn map(path: &Path, len: u64) -> Result<Mapped, String> {
    let what = || format!("the stored value {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| format!("{} cannot be read: {e}", what()))?;
    // SAFETY: flock on an open file descriptor; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } != 0 {
        let e = io::Error::last_os_error();
        return Err(format!("{} cannot be locked for reading: {e}", what()));
    }
    let meta = file
        .metadata()
        .map_err(|e| format!("{} cannot be read: {e}", what()))?;
    // Pooled between the open and the lock: it no longer holds the value.
    let same = std::fs::metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino() == meta.ino() && m.dev() == meta.dev()
    });
    if !same {
        return Err(format!("{} cannot be read: it was deleted", what()));
    }
    let size = meta.len();
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
    // sent, and not modified while a reference to them exists. A freed file
    // is reused (overwritten) only once it is pooled, which takes an
    // exclusive flock that the shared one held here (as long as the
    // mapping) excludes; else it is deleted, which leaves the mapping intact.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
        .map_err(|e| format!("{} cannot be mapped: {e}", what()))?;
    Ok(Mapped::Map(map, file))
}

impl Payload {
    /// On the flow's side: the bytes of a result a worker reported. A
    /// stored one becomes bytes that own its file (see the module docs).
    pub(crate) fn into_bytes(self) -> Result<Bytes, TaskError> {
        match self {
            Payload::Inline(b) => Ok(Bytes::from(b.into_vec())),
            Payload::Stored(reference) => {
                let store = lock(stores())
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
    #[cfg(test)]
    pub(crate) fn inline(bytes: &Bytes) -> Result<ByteBuf, TaskError> {
        flowrun_core::external::resolve(bytes).map(|b| ByteBuf::from(b.to_vec()))
    }

    /// On the flow's side: a result for a worker, by reference when it is
    /// stored (the caller keeps `bytes` alive while the worker may read it),
    /// else inline.
    pub(crate) fn by_reference(bytes: &Bytes) -> Result<Payload, TaskError> {
        match stored(bytes) {
            Some(r) => Ok(Payload::Stored(r)),
            None => flowrun_core::external::resolve(bytes)
                .map(|b| Payload::Inline(ByteBuf::from(b.to_vec()))),
        }
    }

    /// On a worker's side: the bytes of a result the flow lent it (the
    /// result of a run the worker's task submitted). A stored one is read
    /// from the store in `dir` when the task reads it; the flow keeps its
    /// file until the task that submitted the run finishes.
    pub(crate) fn into_lent(self, dir: &Path) -> Bytes {
        match self {
            Payload::Inline(b) => Bytes::from(b.into_vec()),
            Payload::Stored(reference) => {
                let token = flowrun_core::encode_value(&reference).unwrap_or_default();
                external_bytes(
                    token,
                    Arc::new(Lent {
                        path: dir.join(reference.file_name()),
                        len: reference.len,
                    }),
                )
            }
        }
    }
}

/// A stored result lent to a worker: read from its file on demand.
struct Lent {
    path: PathBuf,
    len: u64,
}

impl External for Lent {
    fn read(&self) -> Result<Bytes, TaskError> {
        map(&self.path, self.len)
            .map(Bytes::from_owner)
            .map_err(|e| {
                TaskError::new(
                    TaskErrorKind::ResultUnavailable,
                    format!("{e} (a result lent to a task can be read while that task runs)"),
                )
            })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The stored value `bytes` stand for, if they stand for one.
pub(crate) fn stored(bytes: &Bytes) -> Option<StoredRef> {
    let value = external(bytes)?;
    value.as_any().downcast_ref::<Entry>().map(|e| e.reference)
}

/// The worker that keeps most of the bytes of stored arguments `args` in
/// its memory (the worker that wrote them keeps them): where a task that
/// takes them runs without reading them from the store.
pub(crate) fn home(args: &[flowrun_core::ArgSlot]) -> Option<u32> {
    let mut best: Option<(u64, u32)> = None;
    let mut per_worker: Vec<(u32, u64)> = Vec::new();
    for a in args {
        let flowrun_core::ArgSlot::Bytes(b) = a else {
            continue;
        };
        let Some(r) = stored(b) else { continue };
        let total = match per_worker.iter_mut().find(|(w, _)| *w == r.worker) {
            Some((_, n)) => {
                *n += r.len;
                *n
            }
            None => {
                per_worker.push((r.worker, r.len));
                r.len
            }
        };
        if best.is_none_or(|(n, _)| total > n) {
            best = Some((total, r.worker));
        }
    }
    best.map(|(_, w)| w)
}

/// A cluster's store, on a worker's side: where it writes its results, and
/// the values it keeps in memory after storing them (see the module docs).
pub(crate) struct WorkerStore {
    id: u64,
    dir: PathBuf,
    worker: u32,
    next: AtomicU64,
    kept: Mutex<Kept>,
    /// How free space is measured ([`free_space`]; tests make it small).
    free: fn(&Path) -> Option<u64>,
}

/// Results a worker stored and still holds as values, oldest first, within
/// a budget of bytes: the next task that takes one of them on this worker
/// gets it without reading and decoding its file.
struct Kept {
    values: std::collections::VecDeque<(StoredRef, Held)>,
    bytes: u64,
    budget: u64,
}

/// How many bytes of stored results a worker keeps as values by default:
/// enough for a few large values in flight, and a quarter of a worker's
/// memory limit at most.
pub(crate) fn keep_budget(memory_limit: Option<u64>) -> u64 {
    const DEFAULT: u64 = 1 << 30;
    memory_limit.map_or(DEFAULT, |l| DEFAULT.min(l / 4))
}

/// An argument a worker received, ready to decode (or to move in).
pub(crate) enum Arg<'a> {
    Inline(&'a [u8]),
    Mapped(Mapped),
    /// A value this worker kept; taken when the call is made.
    Kept(Option<Held>),
}

impl Arg<'_> {
    /// The argument as the task's call takes it.
    pub(crate) fn value(&mut self) -> ArgValue<'_> {
        match self {
            Arg::Inline(b) => ArgValue::Encoded(b),
            Arg::Mapped(m) => ArgValue::Encoded(<Mapped as AsRef<[u8]>>::as_ref(m)),
            Arg::Kept(h) => match h.take() {
                Some(h) => ArgValue::Held(h),
                None => ArgValue::Encoded(&[]),
            },
        }
    }
}

/// Where a result's encoding goes while it is made: memory up to
/// [`INLINE_MAX`] bytes, then a file of the store, written as it is encoded
/// (never a second copy of a large value in memory).
struct Spill<'a> {
    store: &'a WorkerStore,
    reference: StoredRef,
    buf: Vec<u8>,
    file: Option<std::io::BufWriter<std::fs::File>>,
    written: u64,
    /// Free bytes in the store's file system when the file was created.
    free: Option<u64>,
}

impl io::Write for Spill<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.file.is_none() {
            if self.buf.len() + data.len() <= INLINE_MAX {
                self.buf.extend_from_slice(data);
                return Ok(data.len());
            }
            self.free = (self.store.free)(&self.store.dir);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.store.path(&self.reference))?;
            let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
            let head = std::mem::take(&mut self.buf);
            file.write_all(&head)?;
            self.written = head.len() as u64;
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("created above");
        file.write_all(data)?;
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// Free bytes for this user in the file system of `dir`.
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct it is given; the path is a
    // NUL-terminated string that lives across the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The error of a result that does not fit in the store: its size, the
/// space there was, and where.
fn too_large_for_store(size: &str, free: u64, dir: &Path) -> String {
    format!(
        "its result is {size} bytes encoded, more than the {free} bytes free in the cluster's result store {} (results larger than {INLINE_MAX} bytes are stored there; on /dev/shm that is memory: free some, or enlarge /dev/shm)",
        dir.display()
    )
}

impl WorkerStore {
    pub(crate) fn new(id: u64, dir: PathBuf, worker: u32, keep_budget: u64) -> WorkerStore {
        WorkerStore {
            id,
            dir,
            worker,
            next: AtomicU64::new(1),
            kept: Mutex::new(Kept {
                values: Default::default(),
                bytes: 0,
                budget: keep_budget,
            }),
            free: free_space,
        }
    }

    fn path(&self, r: &StoredRef) -> PathBuf {
        self.dir.join(r.file_name())
    }

    /// The payload of a result: inline when small, else written to the
    /// store as it is encoded. A stored value is kept in memory too (within
    /// the budget), for the next task on this worker that takes it.
    pub(crate) fn put(&self, mut value: Held) -> Result<Payload, String> {
        let mut reference = StoredRef {
            store: self.id,
            worker: self.worker,
            seq: self.next.fetch_add(1, Ordering::Relaxed),
            len: 0,
        };
        let mut reused = None;
        if let Some(len) = value.encoded_len().filter(|&l| l > INLINE_MAX as u64) {
            // A freed file of about this size is overwritten, not allocated anew.
            reused = self.claim(len, &self.path(&reference));
            // Known before encoding: refused at once when it cannot fit, once
            // the pool of free files is emptied.
            let short = || (self.free)(&self.dir).filter(|&f| f < len);
            if reused.is_none() && short().is_some() {
                self.empty_pool();
                if let Some(free) = short() {
                    return Err(too_large_for_store(&len.to_string(), free, &self.dir));
                }
            }
        }
        let is_reused = reused.is_some();
        let mut spill = Spill {
            store: self,
            reference,
            buf: Vec::new(),
            file: reused.map(|f| std::io::BufWriter::with_capacity(1 << 20, f)),
            written: 0,
            free: None,
        };
        let encoded = value
            .encode_into(&mut spill)
            .and_then(|()| io::Write::flush(&mut spill).map_err(|e| e.to_string()));
        let Spill {
            buf,
            file,
            written,
            free,
            ..
        } = spill;
        let Some(file) = file else {
            encoded.map_err(|e| format!("its result could not be serialized: {e}"))?;
            return Ok(Payload::Inline(ByteBuf::from(buf)));
        };
        // A reused file longer than this value loses its tail.
        let encoded = encoded.and_then(|()| match file.into_inner() {
            Ok(f) if is_reused => f.set_len(written).map_err(|e| e.to_string()),
            Ok(_) => Ok(()),
            Err(e) => Err(e.error().to_string()),
        });
        if let Err(e) = encoded {
            let _ = std::fs::remove_file(self.path(&reference));
            let short = free.is_some_and(|f| written + INLINE_MAX as u64 >= f);
            return Err(if short {
                let size = format!("at least {written}");
                format!(
                    "{} ({e})",
                    too_large_for_store(&size, free.unwrap_or(0), &self.dir)
                )
            } else {
                format!(
                    "its result could not be written to the cluster's result store {} after {written} bytes: {e}",
                    self.dir.display()
                )
            });
        }
        reference.len = written;
        // Written out: a persisted result's encoding is not kept twice.
        value.forget_encoding();
        self.keep(reference, value);
        Ok(Payload::Stored(reference))
    }

    /// Takes a pooled free file for a value of `len` bytes, renamed to
    /// `path`: the smallest at least as long, else the longest. `None` when
    /// the pool has none (or other workers took them first).
    fn claim(&self, len: u64, path: &Path) -> Option<std::fs::File> {
        if len < REUSE_MIN {
            return None;
        }
        let mut free: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let size = name.to_str()?.strip_prefix(FREE)?.split('-').next()?;
                Some((size.parse().ok()?, e.path()))
            })
            .collect();
        // The fitting ones first, smallest first; then the others, longest first.
        free.sort_by_key(|(size, _)| {
            if *size >= len {
                (0, *size)
            } else {
                (1, u64::MAX - size)
            }
        });
        for (_, candidate) in free.iter().take(4) {
            if std::fs::rename(candidate, path).is_ok() {
                return std::fs::OpenOptions::new().write(true).open(path).ok();
            }
        }
        None
    }

    /// Deletes the pooled free files (their space is needed).
    fn empty_pool(&self) {
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_str().is_some_and(|n| n.starts_with(FREE)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Keeps `value` of stored `reference`, dropping the oldest kept values
    /// beyond the budget, and those whose files are gone (nothing can ask
    /// for them any more).
    fn keep(&self, reference: StoredRef, value: Held) {
        let mut kept = lock(&self.kept);
        if reference.len > kept.budget {
            return;
        }
        let dir = &self.dir;
        let before = kept.values.len();
        kept.values
            .retain(|(r, _)| dir.join(r.file_name()).exists());
        if kept.values.len() != before {
            kept.bytes = kept.values.iter().map(|(r, _)| r.len).sum();
        }
        while kept.bytes + reference.len > kept.budget {
            match kept.values.pop_front() {
                Some((r, _)) => kept.bytes -= r.len,
                None => break,
            }
        }
        kept.bytes += reference.len;
        kept.values.push_back((reference, value));
    }

    /// Takes the value of `r` if this worker keeps it.
    fn take_kept(&self, r: &StoredRef) -> Option<Held> {
        if r.worker != self.worker {
            return None;
        }
        let mut kept = lock(&self.kept);
        let at = kept.values.iter().position(|(k, _)| k == r)?;
        let (_, value) = kept.values.remove(at)?;
        kept.bytes -= r.len;
        Some(value)
    }

    /// How many values this worker keeps (for tests).
    #[cfg(test)]
    fn kept(&self) -> usize {
        lock(&self.kept).values.len()
    }

    /// An argument: its bytes, the value this worker kept, or its stored
    /// value mapped.
    pub(crate) fn get<'a>(&self, payload: &'a Payload) -> Result<Arg<'a>, String> {
        match payload {
            Payload::Inline(b) => Ok(Arg::Inline(b)),
            Payload::Stored(r) if r.store != self.id => Err(format!(
                "an argument refers to another cluster's result store ({:x}, this worker's is {:x})",
                r.store, self.id
            )),
            Payload::Stored(r) => match self.take_kept(r) {
                Some(value) => Ok(Arg::Kept(Some(value))),
                None => map(&self.path(r), r.len).map(Arg::Mapped),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |d| d.count())
    }

    const BUDGET: u64 = 1 << 30;

    /// The encoded bytes of an argument that is not a kept value.
    fn encoded(arg: &mut Arg<'_>) -> Vec<u8> {
        match arg.value() {
            ArgValue::Encoded(b) => b.to_vec(),
            ArgValue::Held(h) => panic!("a kept {}, not bytes", h.type_name()),
        }
    }

    #[test]
    fn a_large_value_is_stored_read_by_reference_and_deleted_with_its_last_holder() {
        let store = Store::create().unwrap();
        let worker = WorkerStore::new(store.id(), store.dir().to_owned(), 3, BUDGET);
        let small = worker.put(Held::new(vec![1u8; 10])).unwrap();
        assert!(
            matches!(&small, Payload::Inline(b) if b[..] == flowrun_core::encode_value(&vec![1u8; 10]).unwrap()[..])
        );
        let raw: Vec<u8> = (0..INLINE_MAX as u32 * 2).map(|i| i as u8).collect();
        let value = flowrun_core::encode_value(&raw).unwrap();
        let payload = worker.put(Held::new(raw.clone())).unwrap();
        let Payload::Stored(reference) = payload.clone() else {
            panic!("a large value goes to the store");
        };
        assert_eq!(reference.len, value.len() as u64);
        assert_eq!(std::fs::read(worker.path(&reference)).unwrap(), value);
        // The first task on this worker takes the value itself; later ones
        // read the file.
        let ArgValue::Held(kept) = worker.get(&payload).unwrap().value() else {
            panic!("the worker kept the value it stored");
        };
        assert_eq!(kept.encode().unwrap(), value);
        assert_eq!(encoded(&mut worker.get(&payload).unwrap()), value);
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
        let kept = worker.put(Held::new(raw)).unwrap().into_bytes().unwrap();
        store.close();
        assert!(!dir.exists(), "closing removes the store");
        let e = flowrun_core::external::resolve(&kept).unwrap_err();
        assert!(e.message().contains("closed"), "{}", e.message());
    }

    #[test]
    fn a_truncated_or_foreign_reference_is_a_clear_error() {
        let store = Store::create().unwrap();
        let worker = WorkerStore::new(store.id(), store.dir().to_owned(), 0, 0);
        let Payload::Stored(mut r) = worker.put(Held::new(vec![7u8; INLINE_MAX + 1])).unwrap()
        else {
            panic!("stored");
        };
        r.len += 5;
        let e = worker.get(&Payload::Stored(r)).err().unwrap();
        assert!(e.contains("bytes, but"), "{e}");
        r.store ^= 1;
        let e = worker.get(&Payload::Stored(r)).err().unwrap();
        assert!(e.contains("another cluster"), "{e}");
    }

    #[test]
    fn a_worker_keeps_stored_values_within_its_budget_and_forgets_deleted_ones() {
        let store = Store::create().unwrap();
        let size = INLINE_MAX * 4;
        // Room for two values (and their length prefixes) but not three.
        let worker = WorkerStore::new(
            store.id(),
            store.dir().to_owned(),
            1,
            (2 * size + 16) as u64,
        );
        let put = |fill: u8| worker.put(Held::new(vec![fill; size])).unwrap();
        let (a, b, c) = (put(1), put(2), put(3));
        assert_eq!(worker.kept(), 2, "the oldest went beyond the budget");
        assert!(matches!(worker.get(&a).unwrap(), Arg::Mapped(_)));
        assert!(matches!(worker.get(&c).unwrap(), Arg::Kept(Some(_))));
        assert!(
            matches!(worker.get(&c).unwrap(), Arg::Mapped(_)),
            "taken once"
        );
        // A value whose file the flow deleted is dropped at the next store.
        let Payload::Stored(rb) = b else {
            panic!("stored")
        };
        std::fs::remove_file(worker.path(&rb)).unwrap();
        let _d = put(4);
        assert_eq!(worker.kept(), 1);
        // A value larger than the budget is stored, not kept.
        let small = WorkerStore::new(store.id(), store.dir().to_owned(), 2, 10);
        let p = small.put(Held::new(vec![5u8; size])).unwrap();
        assert!(matches!(small.get(&p).unwrap(), Arg::Mapped(_)));
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_freed_large_file_is_reused_unless_mapped_and_the_idle_pool_empties() {
        use std::os::unix::fs::MetadataExt;
        let store = Store::create().unwrap();
        // No kept values: every read goes through the file.
        let worker = WorkerStore::new(store.id(), store.dir().to_owned(), 0, 0);
        let size = 2 * REUSE_MIN as usize;
        let put = |fill: u8, len: usize| {
            let bytes = worker.put(Held::new(vec![fill; len])).unwrap();
            bytes.into_bytes().unwrap()
        };
        let inode = |b: &Bytes| {
            let r = stored(b).expect("stored");
            std::fs::metadata(worker.path(&r)).unwrap().ino()
        };
        let read = |b: &Bytes| flowrun_core::external::resolve(b).unwrap();
        let encoded = |fill: u8, len: usize| flowrun_core::encode_value(&vec![fill; len]).unwrap();

        let first = put(1, size);
        let first_inode = inode(&first);
        drop(first);
        let pooled = names(store.dir());
        assert!(
            pooled.len() == 1 && pooled[0].starts_with(FREE),
            "{pooled:?}"
        );
        // A shorter value overwrites the freed file, which loses its tail.
        let second = put(2, size - 10);
        assert_eq!(inode(&second), first_inode, "the freed file was reused");
        assert_eq!(&read(&second)[..], &encoded(2, size - 10)[..]);

        // A file that is mapped when freed is deleted, not pooled: the
        // mapping keeps its value while later results are written.
        let mapped = read(&second);
        drop(second);
        assert_eq!(names(store.dir()), Vec::<String>::new());
        let third = put(3, size);
        assert_ne!(inode(&third), first_inode);
        assert_eq!(&mapped[..], &encoded(2, size - 10)[..]);
        drop(mapped);

        // Small files are deleted at once; a pooled file no one takes goes
        // once the pool has been idle.
        drop(put(4, INLINE_MAX + 1));
        drop(third);
        assert_eq!(names(store.dir()).len(), 1, "only the large one is pooled");
        let deadline = Instant::now() + POOL_IDLE * 3;
        while !names(store.dir()).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            names(store.dir()),
            Vec::<String>::new(),
            "the idle pool emptied"
        );
    }

    #[test]
    fn a_result_larger_than_the_free_space_fails_at_once_naming_its_size() {
        let store = Store::create().unwrap();
        assert!(free_space(store.dir()).is_some(), "statvfs of the store");
        let mut worker = WorkerStore::new(store.id(), store.dir().to_owned(), 0, BUDGET);
        worker.free = |_| Some(1000);
        let e = worker.put(Held::new(vec![0u8; 1 << 20])).unwrap_err();
        let size = (1u64 << 20) + 3;
        assert!(
            e.contains(&format!("{size} bytes")) && e.contains("1000 bytes free"),
            "{e}"
        );
        assert_eq!(entries(store.dir()), 0, "refused before writing");
        // Of a size known only once encoded: refused when the write fails,
        // naming what was written (here it fits: the check is not guessed).
        let p = worker.put(Held::new(vec![1u16; 1 << 16])).unwrap();
        assert!(matches!(p, Payload::Stored(_)));
    }
}

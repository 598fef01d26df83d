//! Task mode: the flow's program started by a Dask worker (through the
//! Python shim) to run tasks. A long-lived task process (the default,
//! [`SERVE_ENV`] set) runs one task per request for the whole flow run; a
//! one-task process (`DaskTaskRunner::isolate_tasks`) runs one attempt,
//! arguments in on stdin, result out on stdout. See `format` for the
//! layouts.
//!
//! Everything the task writes, to stdout, stderr or through `tracing`, ends
//! up on stderr as tagged lines (see `output`), so stdout carries nothing
//! but the result. While the task runs, its stdout and stderr are in-memory
//! files, emptied after each task: pipes would need reader threads, which
//! cost more than the task often does (and a child the task leaves running
//! would keep them open). A one-task process dies with its worker
//! (`PR_SET_PDEATHSIG`): Dask reruns the attempt elsewhere, and a leftover
//! would only waste the machine. A long-lived one ends when its requests
//! end, which is also when its worker dies (the death signal would follow
//! the worker *thread* that started it, and those come and go).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use flowrun_core::plumbing::{lock, EventFields};
use flowrun_core::registry::{ArgValue, Held};

use super::format::{
    self, reply, Failure, TaskHeader, FAILED_EXIT, INPUT_VERSION, SERVE_ENV, TASK_ENV,
};
use super::output::{self, Line, TAG};

flowrun_core::__private::inventory::submit! {
    flowrun_core::worker::WorkerMode { env: TASK_ENV, run: task_main }
}

/// The most output of one stream that goes back to the flow.
const OUTPUT_LIMIT: usize = 1 << 20;

/// Where log lines go: the task's stdout file, so that they stay in order
/// with what the task prints.
type Sink = Arc<Mutex<File>>;

fn dup(fd: RawFd) -> std::io::Result<File> {
    // SAFETY: dup of an fd this process has open; the new fd is owned by
    // the returned File only.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh fd nobody else owns.
    Ok(unsafe { File::from_raw_fd(new) })
}

/// What a task in task mode knows of the Dask cluster it runs on, for
/// [`get_dask_client`](crate::get_dask_client).
pub(crate) struct DaskTask {
    /// The address of the worker's scheduler.
    scheduler: Option<String>,
    /// The worker's TLS files, for a `tls://` scheduler.
    security: crate::protocol::Security,
    /// The Python shim's end of the control pipe, until the task secedes
    /// (a one-task process).
    control: Mutex<Option<File>>,
    /// Where a long-lived task process answers the shim.
    replies: Option<Replies>,
    /// Whether the current task of a long-lived process has seceded.
    seceded: AtomicBool,
}

/// The shim's end of a long-lived task process's answers.
type Replies = Arc<Mutex<File>>;

fn send_raw(replies: &Replies, bytes: &[u8]) -> std::io::Result<()> {
    let mut out = lock(replies);
    out.write_all(bytes)?;
    out.flush()
}

/// Writes one reply message (see `format::reply`).
fn send_reply(replies: &Replies, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut out = lock(replies);
    out.write_all(&head)?;
    out.write_all(payload)?;
    out.flush()
}

static DASK_TASK: OnceLock<DaskTask> = OnceLock::new();

/// The Dask task this process runs, when it is in task mode.
pub(crate) fn dask_task() -> Option<&'static DaskTask> {
    DASK_TASK.get()
}

impl DaskTask {
    /// Takes what the Python shim passed in the environment, and removes
    /// it: programs the task starts are not task-mode processes, and a
    /// client the task makes must not divert this one again.
    fn from_env(replies: Option<Replies>) -> DaskTask {
        let scheduler = std::env::var(format::SCHEDULER_ENV)
            .ok()
            .filter(|a| !a.is_empty());
        let control = std::env::var(format::CONTROL_ENV)
            .ok()
            .and_then(|fd| fd.parse::<RawFd>().ok())
            // Close-on-exec keeps the pipe away from programs the task starts.
            .filter(|&fd| {
                fd > 2
                    // SAFETY: F_SETFD on an fd number only changes that fd's
                    // flags (or fails if it is not open).
                    && unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0
            })
            // SAFETY: the shim passed this fd to this process only; it is
            // owned by the File from here on.
            .map(|fd| unsafe { File::from_raw_fd(fd) });
        let [ca, cert, key] =
            format::TLS_ENV.map(|name| std::env::var_os(name).filter(|v| !v.is_empty()));
        let mut security = crate::protocol::Security::new();
        security.tls_ca_file = ca.map(Into::into);
        security.tls_client_cert = cert.map(Into::into);
        security.tls_client_key = key.map(Into::into);
        for name in [
            TASK_ENV,
            SERVE_ENV,
            format::SCHEDULER_ENV,
            format::CONTROL_ENV,
        ]
        .into_iter()
        .chain(format::TLS_ENV)
        {
            std::env::remove_var(name);
        }
        DaskTask {
            security,
            scheduler,
            control: Mutex::new(control),
            replies,
            seceded: AtomicBool::new(false),
        }
    }

    /// The address of the scheduler of the worker running this task.
    pub(crate) fn scheduler(&self) -> Option<&str> {
        self.scheduler.as_deref()
    }

    /// The TLS settings of the worker running this task.
    pub(crate) fn security(&self) -> &crate::protocol::Security {
        &self.security
    }

    /// Tells the worker that this task waits for other tasks, so that it
    /// hands the task's thread to them (Dask's `secede`; the task rejoins
    /// when it ends). Once; later calls do nothing.
    pub(crate) fn secede(&self) {
        if let Some(replies) = &self.replies {
            if !self.seceded.swap(true, Ordering::AcqRel) {
                let _ = send_reply(replies, reply::SECEDE, &[]);
            }
            return;
        }
        let control = lock(&self.control).take();
        if let Some(mut control) = control {
            let _ = control.write_all(b"secede\n");
        }
    }
}

/// The entry point of a task-mode process.
fn task_main() -> ! {
    if std::env::var_os(SERVE_ENV).is_some() {
        serve()
    }
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let _ = DASK_TASK.set(DaskTask::from_env(None));
    install_slots();
    let (mut result_out, mut report) = match (dup(1), dup(2)) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => {
            // Without its own copies of the streams task mode cannot keep
            // the result apart from the task's output; say so plainly.
            let failure = Failure::runner(format!("task mode could not set up its output: {e}"));
            let _ = std::io::stdout().write_all(&format::error_frame(&failure));
            std::process::exit(FAILED_EXIT)
        }
    };
    let capture = Capture::install();
    let sink = match &capture {
        Some(c) => c.stdout.try_clone().ok(),
        None => report.try_clone().ok(),
    };
    if let Some(sink) = sink {
        install_log_shipping(Arc::new(Mutex::new(sink)));
    }
    install_panic_hook();
    collect_subflows();
    let outcome = run_from_stdin();
    if let Err(failure) = &outcome {
        // Dask may retry the task without the flow hearing of this attempt;
        // its output then still says why it failed.
        tracing::warn!("Attempt failed: {}", failure.message);
    }
    if let Some(capture) = capture {
        let _ = report.write_all(&capture.finish());
    }
    let _ = report.write_all(&subflow_lines());
    let (frame, code) = match outcome {
        Ok(bytes) => (format::result_frame(&bytes), 0),
        Err(failure) => (format::error_frame(&failure), FAILED_EXIT),
    };
    if result_out
        .write_all(&frame)
        .and_then(|_| result_out.flush())
        .is_err()
    {
        // The worker stopped listening; nobody is left to tell.
        std::process::exit(FAILED_EXIT);
    }
    std::process::exit(code)
}

/// Concurrency guards in task code take Dask semaphores on the worker's
/// scheduler (see `slots`).
fn install_slots() {
    if let Some(task) = DASK_TASK.get() {
        super::slots::install(task.scheduler.clone(), task.security.clone());
    }
}

/// Starts and ends of flow runs the current task called, until they go to
/// the flow with the task's output (see [`subflow_lines`]).
static SUBFLOWS: Mutex<Vec<flowrun_core::SubflowReport>> = Mutex::new(Vec::new());

/// Flows the task calls (on this thread, the one tasks run on) report to
/// [`SUBFLOWS`]: the flow links them to the task's run.
fn collect_subflows() {
    flowrun_core::report_subflows_to(Some(Arc::new(|report| lock(&SUBFLOWS).push(report))));
}

/// The subflow reports of the task that just ran, as tagged lines. They go
/// after its output: output too long for the flow is cut from its start,
/// so they are never cut off.
fn subflow_lines() -> Vec<u8> {
    let reports = std::mem::take(&mut *lock(&SUBFLOWS));
    let mut out = Vec::new();
    for report in reports {
        if let Ok(json) = serde_json::to_string(&report) {
            out.extend(output::encode(&Line::Subflow(json)));
        }
    }
    out
}

/// A long-lived task process: runs the task of each request on stdin and
/// answers on stdout, until stdin ends (the shim stopped it, or its
/// worker is gone).
fn serve() -> ! {
    // The requests and replies get fds of their own; the task's stdin is
    // empty and its stdout and stderr are captured, so nothing the task
    // does can reach the shim's pipes.
    let (mut requests, replies) = match (dup(0), dup(1)) {
        (Ok(requests), Ok(replies)) => (requests, Arc::new(Mutex::new(replies))),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("flowrun task process: cannot set up its pipes: {e}");
            std::process::exit(FAILED_EXIT)
        }
    };
    if let Ok(null) = File::open("/dev/null") {
        // SAFETY: dup2 onto fd 0, which this process owns.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    keep_freed_memory();
    let shared: Option<PathBuf> = std::env::var_os(format::SHARED_ENV).map(PathBuf::from);
    std::env::remove_var(format::SHARED_ENV);
    let task = DASK_TASK.get_or_init(|| DaskTask::from_env(Some(replies.clone())));
    install_slots();
    let capture = Capture::install();
    let sink = match &capture {
        Some(c) => c.stdout.try_clone().ok(),
        None => dup(2).ok(),
    };
    if let Some(sink) = sink {
        install_log_shipping(Arc::new(Mutex::new(sink)));
    }
    install_panic_hook();
    collect_subflows();
    // What the program printed before task mode came first; this ends it.
    if send_raw(&replies, format::RESULT_MAGIC).is_err() {
        std::process::exit(0);
    }
    // The last large result, while the next request may take it.
    let mut kept: Option<Kept> = None;
    let mut maps = SpareMaps::default();
    loop {
        if (kept.is_some() || !maps.is_empty()) && !readable_within(&requests, KEEP_IDLE) {
            kept = None;
            maps.clear();
        }
        // Also while small tasks keep it busy.
        maps.let_go_unused();
        let Ok(mut len) = read_u64(&mut requests) else {
            std::process::exit(0);
        };
        let mut spare = None;
        if len == format::SPARE_FILE {
            let offered = read_u64(&mut requests).and_then(|n| read_payload(&mut requests, n));
            let Ok(path) = offered else {
                std::process::exit(0);
            };
            // A spare that cannot be opened is only a saving lost.
            spare = open_spare(Path::new(std::ffi::OsStr::from_bytes(&path))).ok();
            let Ok(next) = read_u64(&mut requests) else {
                std::process::exit(0);
            };
            len = next;
        }
        let read = read_request(&mut requests, len, &mut kept);
        // Not taken by this request: it goes before the task runs, so that
        // a process holds at most one value beside its task's.
        kept = None;
        let mut input = match read {
            Ok(input) => input,
            Err(e) => {
                let failure =
                    Failure::runner(format!("the task process could not read its input: {e}"));
                if send_reply(&replies, reply::FAILURE, &format::error_frame(&failure)).is_err() {
                    std::process::exit(0);
                }
                continue;
            }
        };
        task.seceded.store(false, Ordering::Release);
        let outcome = match &mut input {
            Input::Inline(bytes) => run_input(bytes),
            Input::Parts(parts) => run_request_parts(parts),
        };
        drop(input);
        if let Err(failure) = &outcome {
            tracing::warn!("Attempt failed: {}", failure.message);
        }
        let mut output = capture.as_ref().map(Capture::take).unwrap_or_default();
        output.extend(subflow_lines());
        let sent = (|| -> std::io::Result<()> {
            if !output.is_empty() {
                send_reply(&replies, reply::OUTPUT, &output)?;
            }
            match outcome {
                Ok(held) => {
                    let spare = Spare {
                        file: spare,
                        ask: Some(&mut requests),
                        maps: &mut maps,
                    };
                    let written = send_result(&replies, shared.as_deref(), &held, spare)?;
                    kept = written
                        .filter(|(_, len)| *len <= KEEP_MAX)
                        .map(|(name, _)| Kept { name, held });
                    Ok(())
                }
                Err(failure) => {
                    drop(spare);
                    send_reply(&replies, reply::FAILURE, &format::error_frame(&failure))
                }
            }
        })();
        if sent.is_err() {
            // The shim stopped listening; nobody is left to tell.
            std::process::exit(0);
        }
    }
}

/// Keeps memory the tasks free for the next task, rather than giving it
/// back to the system: a task process runs task after task, and each large
/// value would otherwise come in fresh pages, whose faults (a zeroed page
/// each 4 KiB) cost more than copying the value. glibc maps each large
/// allocation anew and unmaps it when freed; here they come from the heap,
/// which keeps up to 1 GiB of freed memory at its top for reuse.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's allocation parameters, before this
    // process runs any task; it has no memory-safety preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// A large result a long-lived task process keeps after writing it out,
/// by the name of that write (see [`format::part::HELD_NAMED`]): the next
/// task of a chain often runs in the same process, and takes the value
/// itself instead of reading it back from its file. Only the last one is
/// kept, at most [`KEEP_MAX`] bytes, and only until the next request is
/// read or for [`KEEP_IDLE`] without one.
struct Kept {
    name: Vec<u8>,
    held: Held,
}

/// The largest result kept as a value (see [`Kept`]).
const KEEP_MAX: u64 = 1 << 30;

/// How long a kept result waits for the next request.
const KEEP_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `file` has something to read (or has ended) within `timeout`.
fn readable_within(file: &File, timeout: std::time::Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: one pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut fd, 1, ms) };
        if n >= 0 {
            return n > 0;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Cannot tell: the read that follows will.
            return true;
        }
    }
}

/// Opens a spare file the shim offers for a large result, for writing.
fn open_spare(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// One request's input.
enum Input {
    /// Length-prefixed parts, as a one-task process reads them.
    Inline(Vec<u8>),
    /// The parts of a large request one by one (see [`format::part`]).
    Parts(Vec<Part>),
}

/// One part of a large request.
enum Part {
    /// Bytes that came through the pipe.
    Bytes(Vec<u8>),
    /// A file in shared memory, mapped: a large value is not copied on its
    /// way in.
    Mapped(memmap2::Mmap),
    /// A file in shared memory holding a byte string (the encoding of a
    /// `Vec<u8>` or a `String`), read into a vector of its own: the task
    /// takes it as its argument, one copy in all (a mapping would cost the
    /// mapping, then a copy to decode it). Taken by the call.
    Value(Option<Held>),
}

impl Part {
    #[cfg(test)]
    fn bytes(&self) -> &[u8] {
        match self {
            Part::Bytes(bytes) => bytes,
            Part::Mapped(map) => map,
            Part::Value(_) => panic!("a value read from its file"),
        }
    }
}

fn read_u64(requests: &mut File) -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    requests.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Reads `len` bytes of a request.
fn read_payload(requests: &mut File, len: u64) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(len)
        .map_err(|_| std::io::Error::other("the request is longer than memory"))?;
    let mut payload = vec![0u8; len];
    requests.read_exact(&mut payload)?;
    Ok(payload)
}

/// Reads one request's input: `len` bytes from the pipe, or, for
/// [`format::INPUT_IN_FILE`], its parts one by one. A part naming the
/// result in `kept` takes that value instead of reading its file.
fn read_request(requests: &mut File, len: u64, kept: &mut Option<Kept>) -> std::io::Result<Input> {
    if len != format::INPUT_IN_FILE {
        return Ok(Input::Inline(read_payload(requests, len)?));
    }
    let count = read_u64(requests)?;
    if count > format::part::MOST {
        return Err(std::io::Error::other(format!(
            "the request has {count} parts (at most {} are sent)",
            format::part::MOST
        )));
    }
    // The whole request is read before any file is opened, so that the
    // pipe stays in step (and every file given away is deleted) even when
    // a file cannot be mapped.
    let mut entries = Vec::new();
    for _ in 0..count {
        let mut kind = [0u8; 1];
        requests.read_exact(&mut kind)?;
        let len = read_u64(requests)?;
        entries.push((kind[0], read_payload(requests, len)?));
    }
    let mut parts = Vec::with_capacity(entries.len());
    let mut failed = None;
    for (kind, payload) in entries {
        let part = match kind {
            format::part::INLINE => Ok(Part::Bytes(payload)),
            format::part::FILE | format::part::HELD => {
                let path = Path::new(std::ffi::OsStr::from_bytes(&payload));
                let mapped = read_file_part(path);
                if kind == format::part::FILE {
                    let _ = std::fs::remove_file(path);
                }
                mapped
            }
            format::part::HELD_NAMED => {
                let (name, path) = match payload.iter().position(|&b| b == 0) {
                    Some(at) => (&payload[..at], &payload[at + 1..]),
                    None => (&payload[..0], &payload[..]),
                };
                match kept.take_if(|k| k.name == name) {
                    Some(k) => Ok(Part::Value(Some(k.held))),
                    None => read_file_part(Path::new(std::ffi::OsStr::from_bytes(path))),
                }
            }
            other => Err(std::io::Error::other(format!(
                "a part of kind {other:#04x} is not one the shim sends"
            ))),
        };
        match part {
            Ok(part) => parts.push(part),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(Input::Parts(parts)),
    }
}

/// A file part: its byte string read into a vector when it holds one of
/// at least [`format::LARGE`] bytes (see [`Part::Value`]), else mapped.
fn read_file_part(path: &Path) -> std::io::Result<Part> {
    let mut file = File::open(path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
    })?;
    let size = file.metadata()?.len();
    let magic = format::RESULT_MAGIC.len() as u64;
    if size < magic + format::LARGE as u64 {
        return map_file(path);
    }
    // The magic and a varint length (at most 10 bytes).
    let mut head = vec![0u8; format::RESULT_MAGIC.len() + 10];
    file.read_exact(&mut head)?;
    let byte_string = head
        .strip_prefix(format::RESULT_MAGIC)
        .and_then(varint)
        .filter(|&(len, prefix)| magic + prefix as u64 + len == size);
    let Some((len, prefix)) = byte_string else {
        return map_file(path);
    };
    let len = usize::try_from(len).map_err(|_| std::io::Error::other("longer than memory"))?;
    let mut value = Vec::with_capacity(len);
    value.extend_from_slice(&head[format::RESULT_MAGIC.len() + prefix..]);
    let rest = (len - value.len()) as u64;
    file.take(rest).read_to_end(&mut value)?;
    if value.len() != len {
        return Err(std::io::Error::other(format!(
            "{} ended after {} of its {len} bytes",
            path.display(),
            value.len()
        )));
    }
    Ok(Part::Value(Some(Held::new(value))))
}

/// A LEB128 varint at the start of `bytes`: its value and its length.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Maps a file the shim hands over (read-only, pages populated up front:
/// the task reads all of it).
fn map_file(path: &Path) -> std::io::Result<Part> {
    let file = File::open(path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
    })?;
    if file.metadata()?.len() == 0 {
        return Ok(Part::Bytes(Vec::new()));
    }
    // SAFETY: the file is a value the shim wrote for this task (deleted
    // by now) or a result the worker holds in shared memory; nobody writes
    // to either while it is mapped.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }?;
    Ok(Part::Mapped(map))
}

/// The freed result file a large result may go over: the one the shim
/// offered with the request, else one asked for once the result is ready
/// (see [`reply::ASK_SPARE`]): in a chain, the file of the value two links
/// back is often freed while the task runs, and a result written over it
/// faults in no fresh shared memory.
struct Spare<'a> {
    file: Option<File>,
    /// The request pipe, until a file has been asked for.
    ask: Option<&'a mut File>,
    /// The spare files this process keeps mapped.
    maps: &'a mut SpareMaps,
}

/// Spare files this process wrote a result over, kept mapped: the shim
/// offers the same few files again and again (in a chain, the file of the
/// value two links back), and a copy into a mapping whose pages are there
/// already is a plain memory copy, where `write` added the kernel's work
/// for every 4 KiB page (for 256 MiB, about 24 ms against 60; the first
/// write over a file, mapping it, about 45). A mapping keeps its file's
/// pages even once the shim closed the file (the shim's spares are
/// deleted files it keeps open, so nothing here can tell), so it is kept
/// only as the shim keeps an unused spare: one not written over for
/// [`KEEP_IDLE`] is let go at the next request or write, all of them after
/// as long without a request; and at most [`KEEP_MAX`] bytes in all.
#[derive(Default)]
struct SpareMaps {
    maps: Vec<SpareMap>,
}

struct SpareMap {
    /// The file's device and inode: the same file under any open.
    id: (u64, u64),
    map: memmap2::MmapMut,
    /// When a result was last written into it.
    used: std::time::Instant,
}

impl SpareMaps {
    fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    fn clear(&mut self) {
        self.maps.clear();
    }

    /// Lets go of the mappings not written into for [`KEEP_IDLE`].
    fn let_go_unused(&mut self) {
        let now = std::time::Instant::now();
        self.maps.retain(|m| now.duration_since(m.used) < KEEP_IDLE);
    }

    /// A mapping of the first `len` bytes (at least) of `file`, whose
    /// length is at least `len` by now; `id` is its device and inode.
    fn map(&mut self, file: &File, id: (u64, u64), len: u64) -> std::io::Result<&mut [u8]> {
        self.let_go_unused();
        let now = std::time::Instant::now();
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        // Whole pages: a result a few bytes longer than the last one over
        // the same file (a chain's text grows so) finds its mapping. The
        // last page is partly the file's, and so mapped; its bytes beyond
        // the file's end are never written.
        let whole = len.next_multiple_of(4096);
        let found = self.maps.iter().position(|m| m.id == id);
        let index = match found {
            Some(i) if self.maps[i].map.len() >= len => i,
            _ => {
                if let Some(i) = found {
                    self.maps.swap_remove(i);
                }
                let max = usize::try_from(KEEP_MAX).unwrap_or(usize::MAX);
                while !self.maps.is_empty()
                    && self.maps.iter().map(|m| m.map.len()).sum::<usize>() + whole > max
                {
                    self.maps.remove(0);
                }
                // SAFETY: the shim handed this spare file to this process
                // alone, once no value of the worker's mapped it any more:
                // nobody else writes to it or changes its length while this
                // process writes, and the caller made it at least `len`
                // bytes long, so no page of the mapping lies wholly beyond
                // its end. Only the first bytes of the current write's
                // length are ever touched, all of them within the file.
                let map = unsafe {
                    memmap2::MmapOptions::new()
                        .len(whole)
                        .populate()
                        .map_mut(file)?
                };
                self.maps.push(SpareMap { id, map, used: now });
                self.maps.len() - 1
            }
        };
        self.maps[index].used = now;
        Ok(&mut self.maps[index].map[..len])
    }
}

impl Spare<'_> {
    /// The file to write a large result over, if any: asks the shim
    /// (once) when none was offered.
    fn take(&mut self, replies: &Replies) -> std::io::Result<Option<File>> {
        if self.file.is_none() {
            if let Some(requests) = self.ask.take() {
                send_reply(replies, reply::ASK_SPARE, &[])?;
                let len = read_u64(requests)?;
                if len > 1 << 12 {
                    return Err(std::io::Error::other(format!(
                        "the shim answered with a path of {len} bytes"
                    )));
                }
                let path = read_payload(requests, len)?;
                // A file that cannot be opened is only a saving lost.
                if !path.is_empty() {
                    self.file = open_spare(Path::new(std::ffi::OsStr::from_bytes(&path))).ok();
                }
            }
        }
        Ok(self.file.take())
    }
}

/// Sends a task's result: a large one (in `shared`, when the shim gave a
/// directory) as a file, written as it is encoded when its size is known
/// (a byte vector or a string: no encoded copy in memory), else inline.
/// A large result goes over a `spare` file when the shim has one.
/// Returns the name of the write and the file's length when the result
/// went to a file.
fn send_result(
    replies: &Replies,
    shared: Option<&Path>,
    held: &Held,
    mut spare: Spare<'_>,
) -> std::io::Result<Option<(Vec<u8>, u64)>> {
    let known_large = held
        .encoded_len()
        .filter(|len| *len >= format::LARGE as u64);
    if let (Some(dir), Some(len)) = (shared, known_large) {
        let write = |f: &mut dyn Write| held.encode_into(f);
        if let Some(sent) = write_out(replies, dir, &mut spare, frame_len(len), write)? {
            return Ok(sent);
        }
    }
    let bytes = match held.encode() {
        Ok(bytes) => bytes,
        Err(e) => {
            let failure = Failure::runner(format!(
                "the task returned a value that could not be serialized: {e}"
            ));
            tracing::warn!("Attempt failed: {}", failure.message);
            send_reply(replies, reply::FAILURE, &format::error_frame(&failure))?;
            return Ok(None);
        }
    };
    if let Some(dir) = shared.filter(|_| bytes.len() >= format::LARGE) {
        let write = |f: &mut dyn Write| f.write_all(&bytes).map_err(|e| e.to_string());
        let len = frame_len(bytes.len() as u64);
        if let Some(sent) = write_out(replies, dir, &mut spare, len, write)? {
            return Ok(sent);
        }
    }
    send_reply(replies, reply::RESULT, &format::result_frame(&bytes))?;
    Ok(None)
}

/// Writes a large result over the `spare` file if there is one, else to a
/// new file in `dir`, and tells the shim which. `None` when neither
/// write worked (the caller sends the result inline); otherwise what
/// [`send_result`] returns.
#[allow(clippy::type_complexity)]
fn write_out(
    replies: &Replies,
    dir: &Path,
    spare: &mut Spare<'_>,
    len: u64,
    write: impl Fn(&mut dyn Write) -> Result<(), String>,
) -> std::io::Result<Option<Option<(Vec<u8>, u64)>>> {
    if let Some(file) = spare.take(replies)? {
        if let Ok(written) = write_spare(file, len, spare.maps, &write) {
            send_reply(replies, reply::RESULT_IN_SPARE, &written.0)?;
            return Ok(Some(Some(written)));
        }
    }
    if let Ok((path, len)) = write_result_file(dir, &write) {
        send_reply(replies, reply::RESULT_FILE, path.as_os_str().as_bytes())?;
        return Ok(Some(path.file_name().map(|n| (n.as_bytes().to_vec(), len))));
    }
    Ok(None)
}

/// A name for one large result written out, unique to this write:
/// `flowrun-result-<pid>-<n>`.
fn result_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "flowrun-result-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The length of a result frame whose value encodes to `encoded` bytes.
fn frame_len(encoded: u64) -> u64 {
    format::RESULT_MAGIC.len() as u64 + encoded
}

/// Writes a large result frame of `len` bytes over a spare file from its
/// start (its pages are there already), through a mapping `maps` keeps,
/// and cuts the file to that length. Returns the write's name and length.
fn write_spare(
    file: File,
    len: u64,
    maps: &mut SpareMaps,
    write: impl FnOnce(&mut dyn Write) -> Result<(), String>,
) -> std::io::Result<(Vec<u8>, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    if meta.len() < len {
        file.set_len(len)?;
    }
    let mut out = std::io::Cursor::new(maps.map(&file, (meta.dev(), meta.ino()), len)?);
    out.write_all(format::RESULT_MAGIC)?;
    write(&mut out).map_err(std::io::Error::other)?;
    if out.position() != len {
        return Err(std::io::Error::other(format!(
            "the result's encoding took {} bytes where its length said {len}",
            out.position()
        )));
    }
    file.set_len(len)?;
    Ok((result_name().into_bytes(), len))
}

/// Writes a large result frame to a new file in `dir`, for the shim:
/// the magic, then what `write` writes. Returns its path and length.
fn write_result_file(
    dir: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<(), String>,
) -> std::io::Result<(PathBuf, u64)> {
    let path = dir.join(result_name());
    let written = File::create(&path).and_then(|mut f| {
        f.write_all(format::RESULT_MAGIC)?;
        write(&mut f).map_err(std::io::Error::other)?;
        f.stream_position()
    });
    match written {
        Ok(len) => Ok((path, len)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Reads the input of a one-task process.
fn run_from_stdin() -> Result<Vec<u8>, Failure> {
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut input)
        .map_err(|e| Failure::runner(format!("task mode could not read its input: {e}")))?;
    run_input(&input)?.encode().map_err(|e| {
        Failure::runner(format!(
            "the task returned a value that could not be serialized: {e}"
        ))
    })
}

/// Splits length-prefixed input into its parts, and runs the task.
fn run_input(input: &[u8]) -> Result<Held, Failure> {
    let parts = format::split_input(input)
        .map_err(|e| Failure::runner(format!("task mode received a broken input: {e}")))?;
    let (header, args) = parts
        .split_first()
        .ok_or_else(|| Failure::runner("task mode received an empty input"))?;
    let args = args
        .iter()
        .enumerate()
        .map(|(i, part)| encoded_arg(i, part))
        .collect::<Result<_, _>>()?;
    run_parts(header, args)
}

/// Runs the task of a request read in parts.
fn run_request_parts(parts: &mut [Part]) -> Result<Held, Failure> {
    let (header, args) = parts
        .split_first_mut()
        .ok_or_else(|| Failure::runner("task mode received an empty input"))?;
    let header = match header {
        Part::Bytes(bytes) => &bytes[..],
        Part::Mapped(map) => &map[..],
        Part::Value(_) => return Err(Failure::runner("task mode received a broken header")),
    };
    let args = args
        .iter_mut()
        .enumerate()
        .map(|(i, part)| match part {
            Part::Bytes(bytes) => encoded_arg(i, bytes),
            Part::Mapped(map) => encoded_arg(i, map),
            Part::Value(held) => held
                .take()
                .map(ArgValue::Held)
                .ok_or_else(|| Failure::runner("an argument was taken twice")),
        })
        .collect::<Result<_, _>>()?;
    run_parts(header, args)
}

/// An argument's encoding from its result frame.
fn encoded_arg(index: usize, part: &[u8]) -> Result<ArgValue<'_>, Failure> {
    format::strip_result(part)
        .map(ArgValue::Encoded)
        .map_err(|e| {
            Failure::runner(format!(
                "argument {} of the task is not flowrun data: {e}",
                index + 1
            ))
        })
}

/// Checks the input is meant for this build, and runs the task, to its
/// result as a value (encoded where it is written out).
fn run_parts(header: &[u8], args: Vec<ArgValue<'_>>) -> Result<Held, Failure> {
    let header: TaskHeader = postcard::from_bytes(header)
        .map_err(|e| Failure::runner(format!("task mode received a broken header: {e}")))?;
    if header.version != INPUT_VERSION {
        return Err(Failure::runner(format!(
            "the flow sent task input version {}, this program reads version {INPUT_VERSION}",
            header.version
        )));
    }
    let own = crate::build_id::current();
    if header.build != own {
        let program = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "this program".into());
        return Err(Failure::runner(format!(
            "the task program on this Dask worker ({program}) is build {own}, but the flow is \
             build {}; the workers must run the flow's own binary (see DaskTaskRunner::task_program)",
            header.build
        )));
    }
    let entry = flowrun_core::registry::registry()
        .get(&header.task_key)
        .ok_or_else(|| {
            Failure::runner(format!(
                "no task is registered as '{}' in the task program (is it the flow's program?)",
                header.task_key
            ))
        })?;
    *lock(&TASK_THREAD) = Some(std::thread::current().id());
    *lock(&CURRENT_RUN) = Some(format!("Task run '{}'", header.run_name));
    super::slots::begin_task(header.limits);
    let result = entry.run_held_attempt(args, &header.run_name, header.hooks);
    // Its concurrency slots go back however it ended.
    super::slots::end_task();
    *lock(&TASK_THREAD) = None;
    *lock(&CURRENT_RUN) = None;
    result.map_err(|e| {
        let mut failure = Failure::from_task_error(&e);
        if failure.kind == format::FailureKind::Panic {
            if let Some(at) = lock(&PANIC_AT).take() {
                failure.message = format!("{} (panicked at {at})", failure.message);
            }
        }
        failure
    })
}

static TASK_THREAD: Mutex<Option<std::thread::ThreadId>> = Mutex::new(None);
static PANIC_AT: Mutex<Option<String>> = Mutex::new(None);

/// A panic of the task becomes its failure, with the location; printing it
/// as well would only repeat it. Panics elsewhere print as usual.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if *lock(&TASK_THREAD) == Some(std::thread::current().id()) {
            *lock(&PANIC_AT) = info.location().map(|l| l.to_string());
        } else {
            default(info);
        }
    }));
}

/// fds 1 and 2 point at in-memory files, read back when the task is done.
struct Capture {
    stdout: File,
    stderr: File,
}

fn memfd(name: &std::ffi::CStr) -> Option<File> {
    // SAFETY: memfd_create with a valid name; the fd is owned by the File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    // SAFETY: `fd` is a fresh fd nobody else owns.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

impl Capture {
    fn install() -> Option<Capture> {
        let stdout = memfd(c"flowrun-task-stdout")?;
        let stderr = memfd(c"flowrun-task-stderr")?;
        // SAFETY: dup2 onto the standard fds, which this process owns; the
        // task (and any child it starts) writes there from now on.
        let ok = unsafe {
            libc::dup2(stdout.as_raw_fd(), 1) >= 0 && libc::dup2(stderr.as_raw_fd(), 2) >= 0
        };
        ok.then_some(Capture { stdout, stderr })
    }

    /// The task's output as tagged lines: stdout (with the log lines that
    /// went there in order), then stderr.
    fn finish(self) -> Vec<u8> {
        self.take()
    }

    /// The output so far, as [`finish`](Self::finish) gives it, and empties
    /// the files for the next task. (fds 1 and 2 share their offsets with
    /// these files, so the next task writes from the start again.)
    fn take(&self) -> Vec<u8> {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let mut out = Vec::new();
        for (mut file, stdout) in [(&self.stdout, true), (&self.stderr, false)] {
            let mut text = Vec::new();
            let read = file.rewind().and_then(|_| file.read_to_end(&mut text));
            let _ = file.set_len(0).and_then(|_| file.rewind());
            if read.is_err() {
                continue;
            }
            let kept = keep_tail(&text);
            if kept.len() < text.len() {
                let cut = Line::Stderr(format!(
                    "... ({} bytes of output left out)",
                    text.len() - kept.len()
                ));
                out.extend(output::encode(&cut));
            }
            tag_lines(kept, stdout, &mut out);
        }
        out
    }
}

/// The last `OUTPUT_LIMIT` bytes, from a line start.
fn keep_tail(text: &[u8]) -> &[u8] {
    if text.len() <= OUTPUT_LIMIT {
        return text;
    }
    let tail = &text[text.len() - OUTPUT_LIMIT..];
    match tail.iter().position(|b| *b == b'\n') {
        Some(i) => &tail[i + 1..],
        None => tail,
    }
}

/// Tags the untagged lines of one stream; log lines are tagged already.
fn tag_lines(text: &[u8], stdout: bool, out: &mut Vec<u8>) {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    if text.is_empty() {
        return;
    }
    for raw in text.split(|b| *b == b'\n') {
        if raw.first() == Some(&TAG) {
            out.extend_from_slice(raw);
            out.push(b'\n');
        } else {
            let text = String::from_utf8_lossy(raw).into_owned();
            let line = if stdout {
                Line::Stdout(text)
            } else {
                Line::Stderr(text)
            };
            out.extend(output::encode(&line));
        }
    }
}

/// Ships this process's `tracing` events (the task's run logger) to the
/// flow as tagged log lines, filtered by `FLOWRUN_LOG` as on the console
/// (see [`crate::log_shipping`]).
fn install_log_shipping(sink: Sink) {
    use tracing_subscriber::util::SubscriberInitExt;
    let shipping = crate::log_shipping::log_shipping(move |level, fields: EventFields| {
        let text = fields.message + &fields.rest;
        let mut bytes = Vec::new();
        for text in text.lines() {
            let line = match &fields.run {
                // A run of its own (one the task submitted): its label
                // goes along, so the flow does not credit the task with it.
                Some(run) if Some(run.as_str()) != current_run().as_deref() => {
                    Line::RunLog(level, run.clone(), text.to_owned())
                }
                _ => Line::Log(level, text.to_owned()),
            };
            bytes.extend(output::encode(&line));
        }
        let _ = lock(&sink).write_all(&bytes);
    });
    if let Some(dispatch) = shipping {
        let _ = dispatch.try_init();
    }
}

/// The label of the task run this process runs now (`Task run 'name'`).
fn current_run() -> Option<String> {
    lock(&CURRENT_RUN).clone()
}

static CURRENT_RUN: Mutex<Option<String>> = Mutex::new(None);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_tagged_by_stream_and_logs_pass_through() {
        let mut out = Vec::new();
        let log = output::encode(&Line::Log(2, "from the logger".into()));
        let mut stdout = b"#3\n".to_vec();
        stdout.extend(&log);
        stdout.extend(b"no newline at the end");
        tag_lines(&stdout, true, &mut out);
        tag_lines(b"warning\n", false, &mut out);
        assert_eq!(
            output::parse(&out),
            vec![
                Line::Stdout("#3".into()),
                Line::Log(2, "from the logger".into()),
                Line::Stdout("no newline at the end".into()),
                Line::Stderr("warning".into()),
            ]
        );
    }

    #[test]
    fn a_large_byte_string_file_part_is_read_as_the_value_and_anything_else_is_mapped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let value: Vec<u8> = (0..format::LARGE as u32 + 300).map(|i| i as u8).collect();
        let bytes_file = dir.join("bytes");
        let frame = format::result_frame(&flowrun_core::encode_value(&value).unwrap());
        std::fs::write(&bytes_file, &frame).unwrap();
        let Part::Value(Some(held)) = read_file_part(&bytes_file).unwrap() else {
            panic!("a byte string is read as its value");
        };
        assert_eq!(held.take::<Vec<u8>>().unwrap(), value);
        // Taken as a string when it is one.
        let text = "ab".repeat(format::LARGE);
        let frame = format::result_frame(&flowrun_core::encode_value(&text).unwrap());
        std::fs::write(&bytes_file, &frame).unwrap();
        let Part::Value(Some(held)) = read_file_part(&bytes_file).unwrap() else {
            panic!("a string is read as its value");
        };
        assert_eq!(held.take::<String>().unwrap(), text);
        // A value of another type whose encoding looks like a byte string
        // (small u16s are one byte each) still arrives as itself.
        let small = vec![7u16; format::LARGE];
        let frame = format::result_frame(&flowrun_core::encode_value(&small).unwrap());
        std::fs::write(&bytes_file, &frame).unwrap();
        let Part::Value(Some(held)) = read_file_part(&bytes_file).unwrap() else {
            panic!("it looks like a byte string");
        };
        assert_eq!(held.take::<Vec<u16>>().unwrap(), small);
        // Other values, and a frame whose length prefix does not match its
        // file, are mapped as they are.
        let other = vec![300u16; format::LARGE];
        let frame = format::result_frame(&flowrun_core::encode_value(&other).unwrap());
        std::fs::write(&bytes_file, &frame).unwrap();
        let part = read_file_part(&bytes_file).unwrap();
        assert!(matches!(part, Part::Mapped(_)));
        assert_eq!(part.bytes(), &frame[..]);
        let mut cut = format::result_frame(&flowrun_core::encode_value(&value).unwrap());
        cut.truncate(cut.len() - 1);
        std::fs::write(&bytes_file, &cut).unwrap();
        let part = read_file_part(&bytes_file).unwrap();
        assert_eq!(part.bytes(), &cut[..]);
    }

    #[test]
    fn a_large_request_maps_its_file_parts_and_deletes_only_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (own, held) = (dir.join("own"), dir.join("held"));
        std::fs::write(&own, b"written for this request").unwrap();
        std::fs::write(&held, b"a result the worker holds").unwrap();
        let mut request = 4u64.to_le_bytes().to_vec();
        for (kind, payload) in [
            (format::part::INLINE, &b"inline"[..]),
            (format::part::FILE, own.as_os_str().as_bytes()),
            (format::part::HELD, held.as_os_str().as_bytes()),
            (format::part::INLINE, &b""[..]),
        ] {
            request.push(kind);
            request.extend((payload.len() as u64).to_le_bytes());
            request.extend(payload);
        }
        // What follows the request stays for the next read.
        request.extend(b"next");
        let path = dir.join("pipe");
        std::fs::write(&path, &request).unwrap();
        let mut requests = File::open(&path).unwrap();
        let Ok(Input::Parts(parts)) = read_request(&mut requests, format::INPUT_IN_FILE, &mut None)
        else {
            panic!("the request was not read as parts");
        };
        let parts: Vec<&[u8]> = parts.iter().map(Part::bytes).collect();
        assert_eq!(
            parts,
            [
                &b"inline"[..],
                b"written for this request",
                b"a result the worker holds",
                b""
            ]
        );
        assert!(!own.exists(), "the request's own file is deleted");
        assert!(held.exists(), "a held result stays");
        let mut rest = Vec::new();
        requests.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"next");

        // A part that cannot be mapped fails the request, after all of it
        // is read, and its own files still go.
        std::fs::write(&own, b"x").unwrap();
        let mut request = 2u64.to_le_bytes().to_vec();
        for (kind, payload) in [
            (
                format::part::HELD,
                dir.join("missing").as_os_str().as_bytes().to_vec(),
            ),
            (format::part::FILE, own.as_os_str().as_bytes().to_vec()),
        ] {
            request.push(kind);
            request.extend((payload.len() as u64).to_le_bytes());
            request.extend(payload);
        }
        request.extend(b"next");
        std::fs::write(&path, &request).unwrap();
        let mut requests = File::open(&path).unwrap();
        let Err(e) = read_request(&mut requests, format::INPUT_IN_FILE, &mut None) else {
            panic!("a missing file was mapped");
        };
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(!own.exists());
        let mut rest = Vec::new();
        requests.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"next");
    }

    /// A large request of the given parts, as the shim writes it.
    fn request_of(parts: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut request = (parts.len() as u64).to_le_bytes().to_vec();
        for (kind, payload) in parts {
            request.push(*kind);
            request.extend((payload.len() as u64).to_le_bytes());
            request.extend(payload);
        }
        request
    }

    #[test]
    fn a_held_part_named_as_the_kept_result_takes_it_without_a_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let value: Vec<u8> = (0..format::LARGE as u32 + 7).map(|i| i as u8).collect();
        let in_file = vec![9u8; format::LARGE + 1];
        let file = dir.join("held");
        std::fs::write(
            &file,
            format::result_frame(&flowrun_core::encode_value(&in_file).unwrap()),
        )
        .unwrap();
        let named = |name: &[u8]| {
            let mut payload = name.to_vec();
            payload.push(0);
            payload.extend(file.as_os_str().as_bytes());
            (format::part::HELD_NAMED, payload)
        };
        // The same name twice: the first takes the kept value, the second
        // (as any other name) reads the file.
        let path = dir.join("pipe");
        let request = request_of(&[named(b"w-1"), named(b"w-1"), named(b"w-0")]);
        std::fs::write(&path, &request).unwrap();
        let mut kept = Some(Kept {
            name: b"w-1".to_vec(),
            held: Held::new(value.clone()),
        });
        let mut requests = File::open(&path).unwrap();
        let Ok(Input::Parts(parts)) = read_request(&mut requests, format::INPUT_IN_FILE, &mut kept)
        else {
            panic!("the request was not read as parts");
        };
        assert!(kept.is_none(), "the kept value was taken");
        let values: Vec<Vec<u8>> = parts
            .into_iter()
            .map(|part| match part {
                Part::Value(Some(held)) => held.take().unwrap(),
                _ => panic!("a byte string is taken as a value"),
            })
            .collect();
        assert_eq!(values, [value, in_file.clone(), in_file]);
    }

    /// A freed result file: `len` bytes of an older value.
    fn stale_spare(dir: &Path, len: usize) -> PathBuf {
        let path = dir.join("spare");
        std::fs::write(&path, vec![0xaau8; len]).unwrap();
        path
    }

    #[test]
    fn a_result_written_over_a_spare_file_replaces_all_of_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = stale_spare(tmp.path(), 3 * format::LARGE);
        let held = Held::new(vec![5u8; format::LARGE]);
        let len = frame_len(held.encoded_len().unwrap());
        let mut maps = SpareMaps::default();
        let write = |f: &mut dyn Write| held.encode_into(f);
        let (first, written) =
            write_spare(open_spare(&path).unwrap(), len, &mut maps, write).unwrap();
        let frame =
            format::result_frame(&flowrun_core::encode_value(&vec![5u8; format::LARGE]).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), frame, "cut to the new frame");
        assert_eq!(written, frame.len() as u64);
        // Each write has a name of its own, also over the same file.
        let (second, _) = write_spare(open_spare(&path).unwrap(), len, &mut maps, write).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn results_written_again_and_again_over_kept_mappings_are_whole_and_exact() {
        let tmp = tempfile::tempdir().unwrap();
        let path = stale_spare(tmp.path(), format::LARGE);
        let mut maps = SpareMaps::default();
        // Longer than the file, then shorter, then longer again than the
        // mapping the first write made: each read back is its own frame.
        for (n, byte) in [(3, 1u8), (1, 2), (2, 3), (5, 4)] {
            let value = vec![byte; n * format::LARGE + 7];
            let held = Held::new(value.clone());
            let len = frame_len(held.encoded_len().unwrap());
            let file = open_spare(&path).unwrap();
            write_spare(file, len, &mut maps, |f| held.encode_into(f)).unwrap();
            let frame = format::result_frame(&flowrun_core::encode_value(&value).unwrap());
            assert_eq!(std::fs::read(&path).unwrap(), frame, "{n} x LARGE");
        }
        assert_eq!(maps.maps.len(), 1, "one file, one mapping kept");
        // An encoding longer or shorter than its length said is an error,
        // not a frame cut short or run over.
        let held = Held::new(vec![9u8; format::LARGE]);
        let len = frame_len(held.encoded_len().unwrap());
        for wrong in [len - 1, len + 1] {
            let file = open_spare(&path).unwrap();
            assert!(write_spare(file, wrong, &mut maps, |f| held.encode_into(f)).is_err());
        }
    }

    #[test]
    fn a_result_a_byte_longer_over_the_same_file_goes_through_the_same_mapping() {
        let tmp = tempfile::tempdir().unwrap();
        let path = stale_spare(tmp.path(), 0);
        let mut maps = SpareMaps::default();
        let mut mapped_at = Vec::new();
        // A chain's text: each link one byte longer.
        for extra in 0..3 {
            let text = "x".repeat(2 * format::LARGE + extra);
            let held = Held::new(text.clone());
            let len = frame_len(held.encoded_len().unwrap());
            let file = open_spare(&path).unwrap();
            write_spare(file, len, &mut maps, |f| held.encode_into(f)).unwrap();
            let frame = format::result_frame(&flowrun_core::encode_value(&text).unwrap());
            assert_eq!(std::fs::read(&path).unwrap(), frame);
            mapped_at.push(maps.maps[0].map.as_ptr());
        }
        assert_eq!(maps.maps.len(), 1);
        assert!(mapped_at.windows(2).all(|w| w[0] == w[1]), "mapped once");
    }

    #[test]
    fn a_mapping_not_written_into_for_the_idle_time_is_let_go() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        let mut maps = SpareMaps::default();
        let held = Held::new(vec![1u8; format::LARGE]);
        let len = frame_len(held.encoded_len().unwrap());
        let write = |f: &mut dyn Write| held.encode_into(f);
        for path in [&a, &b] {
            write_spare(open_spare(path).unwrap(), len, &mut maps, write).unwrap();
        }
        assert_eq!(maps.maps.len(), 2);
        // `a` was last written into longer ago than the shim keeps an
        // unused spare: its pages may be the shim's to free by now.
        maps.maps[0].used -= KEEP_IDLE;
        write_spare(open_spare(&b).unwrap(), len, &mut maps, write).unwrap();
        assert_eq!(maps.maps.len(), 1, "only b's mapping is kept");
        assert_eq!(std::fs::read(&b).unwrap().len() as u64, len);
        // Between writes too (a request for a small task).
        maps.maps[0].used -= KEEP_IDLE;
        maps.let_go_unused();
        assert!(maps.is_empty());
    }

    #[test]
    fn a_large_result_offered_no_spare_asks_for_one_and_goes_over_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let spare = stale_spare(dir, 2 * format::LARGE);
        // The shim's answer, waiting on the request pipe.
        let mut answer = Vec::new();
        let path = spare.as_os_str().as_bytes();
        answer.extend((path.len() as u64).to_le_bytes());
        answer.extend(path);
        std::fs::write(dir.join("requests"), &answer).unwrap();
        let mut requests = File::open(dir.join("requests")).unwrap();
        let replies: Replies = Arc::new(Mutex::new(File::create(dir.join("replies")).unwrap()));
        let value = vec![7u8; format::LARGE];
        let mut maps = SpareMaps::default();
        let asking = Spare {
            file: None,
            ask: Some(&mut requests),
            maps: &mut maps,
        };
        let sent = send_result(&replies, Some(dir), &Held::new(value.clone()), asking)
            .unwrap()
            .unwrap();
        let replied = std::fs::read(dir.join("replies")).unwrap();
        // The ask (empty), then the result's place: the spare, by name.
        assert_eq!(replied[0], reply::ASK_SPARE);
        assert_eq!(&replied[1..9], &0u64.to_le_bytes());
        assert_eq!(replied[9], reply::RESULT_IN_SPARE);
        assert_eq!(&replied[18..], &sent.0[..]);
        let frame = format::result_frame(&flowrun_core::encode_value(&value).unwrap());
        assert_eq!(std::fs::read(&spare).unwrap(), frame);
        // No new result file was made.
        let made = std::fs::read_dir(dir).unwrap().count();
        assert_eq!(made, 3, "spare, requests and replies only");
    }

    #[test]
    fn long_output_keeps_its_end_from_a_line_start() {
        let mut text = vec![b'x'; OUTPUT_LIMIT];
        text.extend(b"\nlast line\n");
        let kept = keep_tail(&text);
        assert_eq!(kept, b"last line\n");
        assert_eq!(keep_tail(b"short\n"), b"short\n");
    }
}

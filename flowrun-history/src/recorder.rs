//! Recording: the observer every flow run gets (registered at link time),
//! the log tap, and which home each flow run records into.
//!
//! A flow run records into the home core chose for it
//! ([`flowrun_core::home`]: the one its thread was given by
//! [`crate::temp_home`], else its parent flow run's home), else
//! `FLOWRUN_HOME`, else `~/.flowrun`. Each home has one writer per process,
//! opened at the first flow run that records there; a home that cannot be
//! opened is reported once and then skipped, and its flows run unrecorded.

use flowrun_core::plumbing::lock;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use flowrun_core::logging::{LogRecord, LogTap};
use flowrun_core::observe::{ObserverRegistration, RunEvent, RunObserver};
use flowrun_core::{FlowRunInfo, RunRef, State, StateKind};

use crate::writer::{
    Event, FlowBuffer, FlowEvent, FlowStart, LogLine, Rare, TaskEvent, Writer, ROW_MADE, UNNUMBERED,
};

/// How long a flush waits while the writer does nothing at all (another
/// process holds the database, or it is stuck) before it gives up. While
/// the writer makes progress, however slowly, it waits on.
const STALL_WAIT: Duration = Duration::from_secs(60);

/// Events of a flow run its writer may not have taken yet when it
/// finishes; beyond, the flow run waits until they are committed (a bound
/// on memory when flows outpace the writer).
const MAX_BACKLOG: usize = 1_000_000;

static DISABLED: AtomicBool = AtomicBool::new(false);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
/// Flow runs recording now, so the log tap returns at once when none is.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Writers by home (`None`: the home failed to open and was reported).
fn writers() -> &'static Mutex<HashMap<PathBuf, Option<Arc<Writer>>>> {
    static W: OnceLock<Mutex<HashMap<PathBuf, Option<Arc<Writer>>>>> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// The writer of each flow run recording now, by core flow-run id.
fn live_flows() -> &'static Mutex<HashMap<String, Arc<Writer>>> {
    static F: OnceLock<Mutex<HashMap<String, Arc<Writer>>>> = OnceLock::new();
    F.get_or_init(Default::default)
}

pub(crate) fn set_disabled(off: bool) {
    DISABLED.store(off, Ordering::Release);
}

/// Whether recording is on for flow runs starting now.
pub(crate) fn enabled() -> bool {
    !DISABLED.load(Ordering::Acquire) && !crate::env_says_off()
}

/// The writer of `home`, opening it the first time.
pub(crate) fn writer_for(home: &Path) -> Option<Arc<Writer>> {
    let mut writers = lock(writers());
    if let Some(w) = writers.get(home) {
        return w.clone();
    }
    let writer = match Writer::start(home) {
        Ok(w) => {
            let w = Arc::new(w);
            flush_at_exit(&w);
            Some(w)
        }
        Err(e) => {
            crate::warn_off(home, &e.to_string());
            None
        }
    };
    writers.insert(home.to_owned(), writer.clone());
    writer
}

/// Waits until every event sent to `home`'s writer so far is committed.
pub(crate) fn flush(home: &Path) {
    let writer = lock(writers()).get(home).cloned().flatten();
    if let Some(w) = writer {
        flush_writer(&w);
    }
}

/// Waits until everything sent to `writer` so far is committed; warns and
/// returns if it made no progress for [`STALL_WAIT`].
fn flush_writer(writer: &Writer) {
    let (done, wait) = crossbeam_channel::bounded(1);
    let sent = writer.tx.send(Event::Flush(done)).is_ok();
    let _ = writer.wake.try_send(());
    if sent && !wait_for_commit(writer, &wait) {
        tracing::warn!(
            target: "flowrun_history",
            "Run history: {} may miss runs: its writer made no progress for {} s",
            writer.home.display(),
            STALL_WAIT.as_secs()
        );
    }
}

/// The writers the exit flushes: a list of its own, held only to push or
/// copy it, so no thread can hold it for long when the process exits (the
/// map of [`writers`] stays held while a home opens, which waits for the
/// database).
fn exit_writers() -> &'static Mutex<Vec<Arc<Writer>>> {
    static W: OnceLock<Mutex<Vec<Arc<Writer>>>> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// Flushes every writer when the process exits normally, so a program that
/// returns from `main` right after a flow run keeps its records.
extern "C" fn flush_all_at_exit() {
    let writers = lock(exit_writers()).clone();
    for w in writers {
        flush_writer(&w);
    }
}

/// Has `writer` flushed when the process exits.
fn flush_at_exit(writer: &Arc<Writer>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain function with no arguments; it only
        // sends on channels and waits, which is sound while the process
        // exits (the writer threads run until exit's handlers are done).
        unsafe {
            libc::atexit(flush_all_at_exit);
        }
    });
    lock(exit_writers()).push(writer.clone());
}

/// Waits for `done` while the writer makes progress; false if it stalled.
fn wait_for_commit(writer: &Writer, done: &crossbeam_channel::Receiver<()>) -> bool {
    let mut seen = writer.progress.load(Ordering::Acquire);
    let mut stalled = Duration::ZERO;
    let step = Duration::from_millis(500);
    loop {
        match done.recv_timeout(step) {
            Ok(()) => return true,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return false,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        let now = writer.progress.load(Ordering::Acquire);
        if now != seen {
            seen = now;
            stalled = Duration::ZERO;
        } else {
            stalled += step;
            if stalled >= STALL_WAIT {
                return false;
            }
        }
    }
}

/// The home core chose for the flow run (its thread's, else its parent's),
/// else the process's: the same home its results go under.
fn home_for_new_flow(info: &FlowRunInfo) -> Option<PathBuf> {
    info.flow
        .home()
        .map(Path::to_path_buf)
        .or_else(crate::default_home)
}

struct Recorder {
    core_id: String,
    buffer: Arc<FlowBuffer>,
    writer: Arc<Writer>,
}

impl RunObserver for Recorder {
    fn run_changed(&self, event: &RunEvent) {
        // Called on the flow's threads (a cluster's scheduler thread among
        // them) three times per task run: a 64-byte event, no lock, and no
        // allocation for a run named `<task>-<index>` in a state without a
        // refining name or message; a plain first start only says when.
        // The time stays a `SystemTime` (the writer makes it a number). The
        // cache key only once the run left Pending (it is not known before).
        let run = &event.run;
        let state = &event.state;
        let kind = state.kind();
        // A state without a refining name answers its kind's own static
        // text: the same pointer, no need to compare the bytes.
        let (name, plain_name) = (state.name(), kind.as_str());
        let plain_state =
            state.message().is_none() && (std::ptr::eq(name, plain_name) || name == plain_name);
        if kind == StateKind::Running
            && event.attempts == 1
            && plain_state
            && event.location.is_none()
            && run.custom_name().is_none()
        {
            self.buffer.push(FlowEvent::Started {
                id: run.id(),
                time: state.timestamp(),
            });
            return;
        }
        // Only the event that makes the run's row names its task: the
        // writer applies a run's later events to that row.
        let creation = kind == StateKind::Pending && event.attempts == 0;
        let (task, unnumbered) = if creation {
            let key = run.task_key();
            let task = self.writer.task_number(run.task_name(), key);
            let unnumbered = (task == UNNUMBERED).then(|| (Box::from(run.task_name()), key));
            (task, unnumbered)
        } else {
            (ROW_MADE, None)
        };
        // A run past the 4,294,967,295th of its task keeps its name whole.
        let index = u32::try_from(run.index()).ok();
        let custom_name = match (run.custom_name(), index) {
            (Some(name), _) => Some(Box::from(name)),
            (None, None) => Some(run.name().into_boxed_str()),
            (None, Some(_)) => None,
        };
        let cache_key = match kind {
            StateKind::Pending => None,
            _ => run.cache_key(),
        };
        let rare =
            (unnumbered.is_some() || custom_name.is_some() || cache_key.is_some() || !plain_state)
                .then(|| {
                    Box::new(Rare {
                        task: unnumbered,
                        custom_name,
                        cache_key: cache_key.map(Box::from),
                        state: (!plain_state).then(|| state.clone()),
                    })
                });
        self.buffer.push(FlowEvent::Task(TaskEvent {
            id: run.id(),
            index: index.unwrap_or(u32::MAX),
            time: state.timestamp(),
            task,
            attempts: event.attempts,
            kind,
            location: event.location.clone(),
            rare,
        }));
    }

    fn run_submitted(&self, run: &RunRef, upstreams: &[RunRef]) {
        self.buffer.push(FlowEvent::Upstreams {
            run: run.id(),
            upstreams: upstreams.iter().map(RunRef::id).collect(),
        });
    }

    fn flow_finished(&self, state: &State) {
        // The records are committed in the background (and at exit), as
        // Prefect's client sends its events: the flow's caller does not
        // wait for the disk, unless the writer fell far behind.
        self.buffer.end(state.clone());
        lock(live_flows()).remove(&self.core_id);
        LIVE.fetch_sub(1, Ordering::AcqRel);
        if self.buffer.len() > MAX_BACKLOG {
            flush_writer(&self.writer);
        }
    }
}

fn observer_for(info: &FlowRunInfo) -> Option<Arc<dyn RunObserver>> {
    // A subflow inside a worker process's task is the flow process's to
    // record; workers never open the database.
    if !info.history || !enabled() || flowrun_core::worker::is_worker() {
        return None;
    }
    let Some(home) = home_for_new_flow(info) else {
        crate::warn_off(
            Path::new("~/.flowrun"),
            "neither FLOWRUN_HOME nor HOME is set, so there is no home to record into",
        );
        return None;
    };
    let writer = writer_for(&home)?;
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let start = FlowStart {
        token,
        core_id: info.flow_run_id.clone(),
        name: info.flow_run_name.clone(),
        flow: info.flow_name.clone(),
        parent_flow: flowrun_core::current_flow_run_id(),
        parent_task: flowrun_core::current_task_run().map(|r| r.id()),
        parameters: info.parameters.clone(),
        tags: (!info.tags.is_empty())
            .then(|| serde_json::to_string(&info.tags).unwrap_or_default()),
        time: SystemTime::now(),
        buffer: Arc::new(FlowBuffer::default()),
    };
    let buffer = start.buffer.clone();
    writer.tx.send(Event::FlowStarted(Box::new(start))).ok()?;
    LIVE.fetch_add(1, Ordering::AcqRel);
    lock(live_flows()).insert(info.flow_run_id.clone(), writer.clone());
    Some(Arc::new(Recorder {
        core_id: info.flow_run_id.clone(),
        buffer,
        writer,
    }))
}

fn tap(record: &LogRecord<'_>) {
    if LIVE.load(Ordering::Acquire) == 0 {
        return;
    }
    let line = || LogLine {
        flow_core_id: record.flow_run_id.map(str::to_owned),
        task: record.task_run.map(RunRef::id),
        label: record.label.map(str::to_owned),
        level: level_number(record.level),
        time: SystemTime::now(),
        text: record.message.to_owned(),
    };
    let flows = lock(live_flows());
    if let Some(w) = record.flow_run_id.and_then(|id| flows.get(id)) {
        let _ = w.tx.send(Event::Log(Box::new(line())));
        return;
    }
    // A line without run context (a worker's, relayed by the scheduler)
    // goes to every home recording now; each writer keeps it only when the
    // run it names is one of its own.
    let mut sent: Vec<*const Writer> = Vec::new();
    for w in flows.values() {
        if !sent.contains(&Arc::as_ptr(w)) {
            sent.push(Arc::as_ptr(w));
            let _ = w.tx.send(Event::Log(Box::new(line())));
        }
    }
}

/// Levels as numbers that sort by severity, as the `logs` table stores them.
pub(crate) fn level_number(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 40,
        tracing::Level::WARN => 30,
        tracing::Level::INFO => 20,
        tracing::Level::DEBUG => 10,
        tracing::Level::TRACE => 5,
    }
}

inventory::submit! {
    ObserverRegistration { factory: observer_for }
}

inventory::submit! {
    LogTap { tap }
}

//! The one writer of a process: a thread that owns the database connection
//! and commits the events flows send it in batches.
//!
//! A flow run's threads push its events into the flow's [`FlowBuffer`]
//! (64 bytes each: the run's id, its task as a number, its state kind and
//! time; no allocation for a run named `<task>-<index>`); flow starts, log
//! lines and flushes come through a channel. Names, ids and SQL are made
//! here, off the flows' threads. The writer looks every [`GATHER`]; a
//! batch is everything that queued while the previous one committed, so
//! batches grow with the load and a commit's fixed cost is shared by all
//! of its events. While flows send events fast, the writer only counts
//! them (up to [`MAX_GATHER`] or [`MAX_HELD`]) and applies and commits
//! them when the flows pause or end, so neither moving the events nor the
//! disk work takes CPU from a flow that is using it all.
//!
//! A task run's row is written once it is final, with every state change
//! it went through, rather than inserted and then updated per state: a run
//! still unfinished after [`DEFER`] (or named by a log line, or asked for
//! by a flush) is written as it is and updated when it ends. New rows go
//! in [`INSERT_ROWS`] at a time. Each batch is one short `BEGIN IMMEDIATE`
//! transaction: it takes the write lock first, so two processes never
//! deadlock upgrading a read lock, and waits `BUSY_TIMEOUT` for it, then
//! retries, so a shared home never reports "database is locked". Row ids
//! given inside a transaction are kept only once it committed, so a
//! retried batch writes the same rows again, not duplicates.

use flowrun_core::plumbing::lock;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use flowrun_core::{RunId, State, StateKind};
use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};
use rustc_hash::{FxHashMap, FxHashSet};
use uuid::Uuid;

use crate::HistoryError;

/// How many events the writer takes from its channel between two looks at
/// whether to commit.
const MAX_BATCH: usize = 50_000;

/// Events in one gathering ([`GATHER`]) from which the flows count as busy:
/// the writer then gathers on rather than commit (see [`MAX_GATHER`]).
const BUSY_EVENTS: usize = 2_000;

/// How long a busy writer gathers at most before it commits, so readers
/// see a busy flow's progress this often.
const MAX_GATHER: Duration = Duration::from_secs(1);

/// How many final task runs one commit writes at most (a busy writer
/// commits once it holds this many), so a commit stays short and other
/// processes get the lock in turn.
const MAX_ROWS: usize = 100_000;

/// How many events a busy writer holds, unapplied, before it applies and
/// commits them (a task run sends about three).
const MAX_HELD: usize = 3 * MAX_ROWS;

/// How long the writer lets events gather after the first of a batch
/// (a flush cuts it short). It waits on the wake channel, not on the
/// events', so the flow's threads send without waking it (no system call
/// per event); one transaction then takes tens of thousands of events, so
/// SQLite writes each hot index page once per batch, not once per handful.
const GATHER: Duration = Duration::from_millis(100);

/// How long a changed task run may wait in memory for its final state
/// before its row is written anyway (so a reader sees a long run running).
const DEFER: Duration = Duration::from_millis(250);

/// How often a busy database is retried before the batch is given up.
const BUSY_RETRIES: u32 = 120;

/// A new flow run.
pub(crate) struct FlowStart {
    pub token: u64,
    pub core_id: String,
    pub name: String,
    pub flow: String,
    pub parent_flow: Option<String>,
    pub parent_task: Option<RunId>,
    /// A JSON object.
    pub parameters: Option<String>,
    /// A JSON array, `None` for no tags.
    pub tags: Option<String>,
    pub time: SystemTime,
    /// Where the flow run's threads put its events.
    pub buffer: Arc<FlowBuffer>,
}

/// A log line.
pub(crate) struct LogLine {
    pub flow_core_id: Option<String>,
    pub task: Option<RunId>,
    pub label: Option<String>,
    pub level: u8,
    pub time: SystemTime,
    pub text: String,
}

/// What the writer's channel carries: flow starts, log lines and flushes.
/// A flow run's own events go through its [`FlowBuffer`].
pub(crate) enum Event {
    FlowStarted(Box<FlowStart>),
    Log(Box<LogLine>),
    Flush(Sender<()>),
}

/// An event of one flow run, pushed by its threads into its buffer.
pub(crate) enum FlowEvent {
    Task(TaskEvent),
    /// A run's first attempt started, in a plain `Running` state with no
    /// worker named yet: all the writer needs of the run's most common
    /// change, made without looking up its task (its `Pending` event did).
    Started {
        id: RunId,
        time: SystemTime,
    },
    Upstreams {
        run: RunId,
        upstreams: Box<[RunId]>,
    },
    Finished(Box<State>),
}

/// The events of one flow run until the writer takes them. Each thread
/// appends to a slot of its own (one of [`SLOTS`], by a thread-local
/// number): an uncontended lock on a cache line no other thread writes, and
/// a plain store into a chunk of [`CHUNK`] events reused from flow to flow,
/// rather than an atomic append to a queue every thread of the flow writes
/// (whose shared end travelled between the cores at each event) and a
/// fresh, zeroed block every 31 events. The writer takes every slot at
/// once (holding all their locks) and merges them by the events' times, so
/// a run's changes made on two threads, and a run submitted after another
/// (whose upstream it may be), apply in the order they happened. While the
/// flow sends events fast the writer only counts them, and takes them once
/// the flow pauses or ends.
pub(crate) struct FlowBuffer {
    slots: [Slot; SLOTS],
    /// The flow run's last event is in.
    ended: AtomicBool,
}

/// How many slots a flow's buffer has: threads beyond share them.
const SLOTS: usize = 16;
const _: () = assert!(SLOTS <= 32);

/// Events per chunk of a slot (64 KiB).
const CHUNK: usize = 1024;

/// Events in the order a slot received them; the writer takes each out,
/// leaving `None`, and gives the chunk back for reuse.
type Chunk = Vec<Option<FlowEvent>>;

/// Empty chunks kept for reuse: as many as a busy writer holds at most
/// ([`MAX_HELD`] events, 20 MiB), so flow after flow writes into memory
/// already mapped rather than fault in fresh pages (each chunk a process
/// frees and allocates again was a page fault per 4 KiB, a few percent of a
/// flow of no-op tasks). The writer frees those beyond.
const SPARE_CHUNKS: usize = MAX_HELD.div_ceil(CHUNK);

/// One thread's events (or a few threads', when more than [`SLOTS`] push),
/// on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Slot(std::sync::Mutex<SlotEvents>);

#[derive(Default)]
struct SlotEvents {
    /// Chunks of exactly [`CHUNK`] events, oldest first.
    full: Vec<Chunk>,
    /// The chunk being filled.
    open: Chunk,
}

impl SlotEvents {
    fn len(&self) -> usize {
        self.full.len() * CHUNK + self.open.len()
    }
}

/// Emptied chunks, for the next ones a slot fills.
fn spare_chunks() -> &'static std::sync::Mutex<Vec<Chunk>> {
    static SPARE: std::sync::Mutex<Vec<Chunk>> = std::sync::Mutex::new(Vec::new());
    &SPARE
}

/// The slots live threads hold, a bit each.
static TAKEN_SLOTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A thread's slot in every flow's buffer: one no other live thread holds
/// while there are free ones (given back when the thread exits), so the
/// threads of a pool that each flow run starts anew never share a slot
/// with the thread submitting the runs, whose lock would then pass between
/// the two at every event.
struct ThreadSlot {
    index: usize,
    /// Held alone, and given back at exit.
    owned: bool,
}

impl ThreadSlot {
    fn claim() -> ThreadSlot {
        static SHARED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let all = u32::MAX >> (32 - SLOTS);
        let mut taken = TAKEN_SLOTS.load(Ordering::Relaxed);
        loop {
            let free = !taken & all;
            if free == 0 {
                // More live threads push than there are slots: share one.
                let index = SHARED.fetch_add(1, Ordering::Relaxed) % SLOTS;
                return ThreadSlot {
                    index,
                    owned: false,
                };
            }
            let index = free.trailing_zeros();
            match TAKEN_SLOTS.compare_exchange_weak(
                taken,
                taken | (1 << index),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return ThreadSlot {
                        index: index as usize,
                        owned: true,
                    }
                }
                Err(now) => taken = now,
            }
        }
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        if self.owned {
            TAKEN_SLOTS.fetch_and(!(1 << self.index), Ordering::AcqRel);
        }
    }
}

thread_local! {
    static SLOT: ThreadSlot = ThreadSlot::claim();
}

impl Default for FlowBuffer {
    fn default() -> FlowBuffer {
        FlowBuffer {
            slots: std::array::from_fn(|_| Slot::default()),
            ended: AtomicBool::new(false),
        }
    }
}

impl FlowBuffer {
    pub(crate) fn push(&self, event: FlowEvent) {
        let slot = SLOT.try_with(|s| s.index).unwrap_or(0);
        let mut events = lock(&self.slots[slot].0);
        // A slot's first chunk grows from a few events (a small flow, of
        // which many may be live, holds little); the next ones are spares.
        if events.open.len() == CHUNK {
            let spare = lock(spare_chunks()).pop();
            let next = spare.unwrap_or_else(|| Vec::with_capacity(CHUNK));
            let full = std::mem::replace(&mut events.open, next);
            events.full.push(full);
        }
        events.open.push(Some(event));
    }

    /// Pushes the flow run's last event, and says it was the last.
    pub(crate) fn end(&self, state: State) {
        self.push(FlowEvent::Finished(Box::new(state)));
        self.ended.store(true, Ordering::Release);
    }

    /// Events not taken by the writer yet.
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().map(|s| lock(&s.0).len()).sum()
    }

    /// Takes every event pushed so far, all slots at once (so an event in
    /// one slot is taken whenever one pushed after it in another is),
    /// each slot's chunks oldest first.
    fn take(&self) -> Vec<Vec<Chunk>> {
        let mut held: Vec<_> = self.slots.iter().map(|s| lock(&s.0)).collect();
        let mut taken = Vec::new();
        for events in held.iter_mut() {
            if events.len() == 0 {
                continue;
            }
            let mut chunks = std::mem::take(&mut events.full);
            chunks.push(std::mem::take(&mut events.open));
            taken.push(chunks);
        }
        taken
    }
}

/// Where an event goes among the flow's events: by the time of its change
/// (a run's Pending first when its Running has the same time); `None` for
/// an event that follows the one before it in its slot.
fn merge_key(event: &FlowEvent) -> Option<(u64, u8)> {
    match event {
        FlowEvent::Task(t) => {
            let rank = match t.kind {
                StateKind::Pending => 0,
                k if k.is_final() => 2,
                _ => 1,
            };
            Some((nanos(t.time), rank))
        }
        FlowEvent::Started { time, .. } => Some((nanos(*time), 1)),
        FlowEvent::Upstreams { .. } => None,
        // After every change of its task runs.
        FlowEvent::Finished(_) => Some((u64::MAX, u8::MAX)),
    }
}

/// One slot's taken events, read in order.
struct SlotCursor<T> {
    /// Chunks not read yet, newest first.
    chunks: Vec<Vec<Option<T>>>,
    /// The chunk being read, and where.
    current: Vec<Option<T>>,
    at: usize,
    /// The merge key of the event at its head.
    key: (u64, u8),
    head: Option<T>,
}

impl<T> SlotCursor<T> {
    /// Moves the next event to the head; keeps emptied chunks in `empty`.
    fn advance(
        &mut self,
        merge_key: &impl Fn(&T) -> Option<(u64, u8)>,
        empty: &mut Vec<Vec<Option<T>>>,
    ) {
        loop {
            if let Some(e) = self.current.get_mut(self.at).and_then(Option::take) {
                self.at += 1;
                if let Some(key) = merge_key(&e) {
                    self.key = key;
                }
                self.head = Some(e);
                return;
            }
            let next = self.chunks.pop();
            let mut done = std::mem::replace(&mut self.current, next.unwrap_or_default());
            self.at = 0;
            if done.capacity() == CHUNK {
                done.clear();
                empty.push(done);
            }
            if self.current.is_empty() && self.chunks.is_empty() {
                self.head = None;
                return;
            }
        }
    }
}

/// The events of several slots (each a list of chunks, oldest first),
/// merged by `merge_key` (an event without one keeps the key of the one
/// before it in its slot), each slot's in its order, ties to the slot
/// listed first; `apply` gets each. Returns the emptied chunks of
/// [`CHUNK`] events, for reuse.
fn merge_slots<T>(
    taken: Vec<Vec<Vec<Option<T>>>>,
    merge_key: impl Fn(&T) -> Option<(u64, u8)>,
    mut apply: impl FnMut(T),
) -> Vec<Vec<Option<T>>> {
    let mut empty = Vec::new();
    let mut cursors: Vec<SlotCursor<T>> = taken
        .into_iter()
        .map(|mut chunks| {
            chunks.reverse();
            let mut c = SlotCursor {
                chunks,
                current: Vec::new(),
                at: 0,
                key: (0, 0),
                head: None,
            };
            c.advance(&merge_key, &mut empty);
            c
        })
        .collect();
    loop {
        let mut first: Option<usize> = None;
        for (i, c) in cursors.iter().enumerate() {
            if c.head.is_some() && first.is_none_or(|f| c.key < cursors[f].key) {
                first = Some(i);
            }
        }
        let Some(i) = first else { break };
        let event = cursors[i].head.take();
        cursors[i].advance(&merge_key, &mut empty);
        if let Some(event) = event {
            apply(event);
        }
    }
    empty
}

/// Applies, via `apply`, the events taken from a flow's buffer in the order
/// they happened, and keeps their chunks for reuse.
fn apply_taken(taken: Vec<Vec<Chunk>>, apply: impl FnMut(FlowEvent)) {
    let empty = merge_slots(taken, merge_key, apply);
    let mut spare = lock(spare_chunks());
    let room = SPARE_CHUNKS.saturating_sub(spare.len());
    spare.extend(empty.into_iter().take(room));
}

/// [`TaskEvent::task`] of a task whose name and key travel in
/// [`Rare::task`] (when the writer already knows too many names).
pub(crate) const UNNUMBERED: u32 = u32::MAX;

/// [`TaskEvent::task`] of an event after the one that made the run's row
/// (its first `Pending`): the writer knows the run's task by its row.
pub(crate) const ROW_MADE: u32 = u32::MAX - 1;

/// One state change of a task run, with what its row needs of the run:
/// 64 bytes, and no allocation for a run named `<task>-<index>` in a state
/// without a refining name or message. The name is made by the writer, the
/// task's name and key travel as a number. The writer never holds the run
/// itself: that would keep its result alive (in the flow's heap, or a file
/// of a cluster's store) until the next batch, after every future of it
/// was dropped.
pub(crate) struct TaskEvent {
    pub id: RunId,
    /// The run's number among its task's runs (`u32::MAX` past that, the
    /// run's name then in [`Rare::custom_name`]).
    pub index: u32,
    /// When the run entered the state (made a number by the writer).
    pub time: SystemTime,
    /// The number of its task's name and key (see [`Writer::task_number`]),
    /// [`UNNUMBERED`], or [`ROW_MADE`].
    pub task: u32,
    pub attempts: u32,
    pub kind: StateKind,
    pub location: Option<Arc<str>>,
    /// What few runs or states have.
    pub rare: Option<Box<Rare>>,
}

// What a push writes (and what a chunk holds per event) stays this small.
const _: () = assert!(std::mem::size_of::<Option<FlowEvent>>() <= 64);

/// The parts of a [`TaskEvent`] most events do without.
#[derive(Default)]
pub(crate) struct Rare {
    /// The task's name and key, for an [`UNNUMBERED`] task.
    pub task: Option<(Box<str>, &'static str)>,
    /// Its name when `task_run_name` made it.
    pub custom_name: Option<Box<str>>,
    pub cache_key: Option<Box<str>>,
    /// The state, when it has a refining name or a message.
    pub state: Option<State>,
}

/// The tasks (name and key) a writer knows by number, shared by the flows
/// sending it events and the writer. A number is given out only once its
/// task is in `list`, where the writer finds it.
#[derive(Default)]
pub(crate) struct TaskNames {
    /// Numbers by task key, then name.
    numbers: HashMap<&'static str, Vec<(&'static str, u32)>>,
    /// The names are kept for the life of the program (a writer lives as
    /// long), at most [`MAX_NAMES`] of them, so threads may hold them.
    list: Vec<(&'static str, &'static str)>,
}

/// How many task names a writer learns by number; events of further names
/// carry their name (a program making a task name per run stays bounded).
const MAX_NAMES: usize = 4096;

/// A task's number, as a thread remembers it: the writer (its address),
/// the task's name (the writer's copy) and key, the number.
type CachedName = (usize, &'static str, &'static str, u32);

thread_local! {
    /// The task this thread looked up last: a plain copy, so the lookup of
    /// a thread's runs of one task is a few compares, with no lock, atomic
    /// or reference count.
    static LAST_NAME: std::cell::Cell<Option<CachedName>> = const { std::cell::Cell::new(None) };
    /// The tasks this thread looked up before, by writer.
    static NAME_CACHE: std::cell::RefCell<Vec<CachedName>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The writer of one home: a handle on its thread.
pub(crate) struct Writer {
    pub tx: Sender<Event>,
    names: Arc<std::sync::Mutex<TaskNames>>,
    /// Cuts the writer's gathering short (after a flush is sent).
    pub wake: Sender<()>,
    pub home: PathBuf,
    /// Work done so far (events applied, rows written, batches committed):
    /// a flush tells a slow writer (a loaded machine, a large batch) from a
    /// stuck one by it.
    pub progress: Arc<AtomicU64>,
}

impl Writer {
    /// Opens the database of `home` here (so a failure is known at once)
    /// and starts the thread that writes it.
    pub(crate) fn start(home: &Path) -> Result<Writer, HistoryError> {
        let conn = crate::schema::open(home)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let (wake, wake_rx) = crossbeam_channel::bounded(1);
        let path = crate::schema::database_path(home);
        let progress = Arc::new(AtomicU64::new(0));
        let counter = progress.clone();
        let names: Arc<std::sync::Mutex<TaskNames>> = Default::default();
        let shared = names.clone();
        std::thread::Builder::new()
            .name("flowrun-history".into())
            .spawn(move || {
                lower_priority();
                let db = path.clone();
                let run = move || Thread::new(conn, path, counter, shared).run(rx, wake_rx);
                // A bug here must not pass in silence: flows would go on
                // unrecorded and flushes would return at once.
                if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                    let why = flowrun_core::panic_message(&*panic);
                    crate::warn_off(&db, &format!("its writer stopped ({why})"));
                }
            })
            .map_err(|source| HistoryError::Home {
                path: home.to_owned(),
                source,
            })?;
        Ok(Writer {
            tx,
            names,
            wake,
            home: home.to_owned(),
            progress,
        })
    }
}

impl Writer {
    /// How events name the task `name` of key `key`: by number once the
    /// writer knows it, else [`UNNUMBERED`].
    pub(crate) fn task_number(&self, name: &str, key: &'static str) -> u32 {
        let me = self as *const Writer as usize;
        let hit = |(w, n, k, _): &CachedName| *w == me && std::ptr::eq(*k, key) && *n == name;
        if let Some(last) = LAST_NAME.get().filter(hit) {
            return last.3;
        }
        let cached = NAME_CACHE.with(|c| c.borrow().iter().copied().find(hit));
        if let Some(found) = cached {
            LAST_NAME.set(Some(found));
            return found.3;
        }
        let mut names = lock(&self.names);
        let known = names
            .numbers
            .get(key)
            .and_then(|l| l.iter().find(|(n, _)| *n == name))
            .copied();
        let (text, number) = match known {
            Some(known) => known,
            None if names.list.len() < MAX_NAMES => {
                let text: &'static str = Box::leak(Box::from(name));
                let number = names.list.len() as u32;
                names.list.push((text, key));
                names.numbers.entry(key).or_default().push((text, number));
                (text, number)
            }
            None => return UNNUMBERED,
        };
        drop(names);
        let found = (me, text, key, number);
        LAST_NAME.set(Some(found));
        NAME_CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= 16 {
                c.remove(0);
            }
            c.push(found);
        });
        number
    }
}

/// Makes this thread yield the CPU to the flows it records: on a machine
/// without a spare core the records wait, not the tasks.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority with a thread id
    // changes only that thread's nice value (Linux's per-thread priority).
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// Retries `f` while SQLite reports the database busy or locked.
pub(crate) fn with_retries<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if is_busy(&e) && attempt < BUSY_RETRIES => {
                attempt += 1;
                // Spread out, so processes that collided do not collide again.
                let pause = 5 + fastrand::u64(0..20) + u64::from(attempt.min(10)) * 5;
                std::thread::sleep(Duration::from_millis(pause));
            }
            other => return other,
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

pub(crate) fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `t` in nanoseconds since the Unix epoch (0 before it).
pub(crate) fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

struct FlowRow {
    seq: Option<i64>,
    id: Uuid,
    core_id: String,
    name: String,
    start: Box<FlowStart>,
    state: &'static str,
    state_name: Option<String>,
    message: Option<Arc<str>>,
    end_ms: Option<i64>,
    history: Vec<Change>,
    total: i64,
    /// Completed, Failed, Crashed, Cancelled.
    counts: [i64; 4],
}

/// One state change, as the `history` column lists it.
#[derive(Clone)]
struct Change {
    /// When, in nanoseconds since the Unix epoch.
    time: u64,
    kind: StateKind,
    /// The state, when it has a refining name or a message.
    detail: Option<Box<State>>,
}

impl Change {
    fn of(state: &State) -> Change {
        Change {
            time: nanos(state.timestamp()),
            kind: state.kind(),
            detail: Some(Box::new(state.clone())),
        }
    }

    fn time_ms(&self) -> i64 {
        (self.time / 1_000_000) as i64
    }

    /// Its refining name, when it has one.
    fn refining_name(&self) -> Option<&str> {
        self.detail.as_deref().and_then(refining_name)
    }

    fn message(&self) -> Option<&str> {
        self.detail.as_deref().and_then(State::message)
    }
}

/// A state's refining name, when it has one.
fn refining_name(state: &State) -> Option<&str> {
    Some(state.name()).filter(|n| *n != state.kind().as_str())
}

/// Adds `change` in time order (events of two threads can arrive swapped).
fn record(history: &mut Vec<Change>, change: Change) {
    history.push(change);
    let n = history.len();
    if n > 1 && history[n - 2].time > history[n - 1].time {
        history.sort_by_key(|c| c.time);
    }
}

/// The `history` column: `[[time_ms, state, name, message], ...]`, written
/// by hand into `out` (a buffer reused from row to row).
fn history_json(changes: &[Change], out: &mut String) {
    use std::fmt::Write as _;
    let text = |out: &mut String, value: Option<&str>| match value {
        Some(v) => out.push_str(&serde_json::to_string(v).unwrap_or_else(|_| "null".into())),
        None => out.push_str("null"),
    };
    out.clear();
    out.push('[');
    for (i, c) in changes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // State kinds are plain words: no escaping needed.
        let _ = write!(out, "[{},\"{}\",", c.time_ms(), c.kind.as_str());
        text(out, c.refining_name());
        out.push(',');
        text(out, c.message());
        out.push(']');
    }
    out.push(']');
}

/// A task run not yet final (or final but not yet committed).
struct TaskRow {
    flow: u64,
    id: Uuid,
    seq: Option<i64>,
    task: Arc<str>,
    index: u64,
    custom_name: Option<Box<str>>,
    task_key: &'static str,
    attempts: u32,
    location: Option<Arc<str>>,
    cache_key: Option<Box<str>>,
    /// Its newest state.
    state: Change,
    created_ms: i64,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    upstreams: Option<String>,
    history: Vec<Change>,
    /// It has changes its row does not hold yet.
    dirty: bool,
    /// No change applied yet.
    fresh: bool,
}

impl TaskRow {
    /// Writes its name (`<task>-<index>` unless `task_run_name` gave one).
    fn name_into<'a>(&'a self, buf: &'a mut String) -> &'a str {
        use std::fmt::Write as _;
        match &self.custom_name {
            Some(name) => name,
            None => {
                buf.clear();
                let _ = write!(buf, "{}-{}", self.task, self.index);
                buf
            }
        }
    }
}

/// What is left of a task run once it is final and committed: what later
/// rows (downstream runs, subflows, late log lines) refer to it by.
struct Done {
    flow: u64,
    seq: i64,
    id: Uuid,
}

struct LogRow {
    flow: u64,
    task: Option<RunId>,
    level: u8,
    time_ms: i64,
    text: String,
}

#[derive(Default)]
struct Batch {
    /// Flow runs to insert or update, parents (started first) first.
    flows: BTreeSet<u64>,
    /// Task runs whose rows log lines of this batch refer to.
    named: FxHashSet<RunId>,
    logs: Vec<LogRow>,
    done: Vec<Sender<()>>,
    finished: Vec<u64>,
}

/// A flow run recording now.
struct Live {
    token: u64,
    buffer: Arc<FlowBuffer>,
    /// Events of its buffer counted by [`Thread::take`] already.
    counted: usize,
}

struct Thread {
    conn: Connection,
    path: PathBuf,
    flows: HashMap<u64, FlowRow>,
    by_core_id: HashMap<String, u64>,
    // Run ids count up from 1: Fx hashes them in a multiply, where the
    // default hasher costs more than the rest of an event's bookkeeping.
    tasks: FxHashMap<RunId, TaskRow>,
    done: FxHashMap<RunId, Done>,
    /// Task names by number, copied from `shared_names` as needed.
    names: Vec<(Arc<str>, &'static str)>,
    shared_names: Arc<std::sync::Mutex<TaskNames>>,
    /// The flow runs recording now.
    live: Vec<Live>,
    /// Channel events taken but not applied yet (while flows are busy),
    /// in order.
    held: Vec<Event>,
    /// Events not applied yet: `held` and what the live flows' buffers
    /// hold, as of the last look.
    held_len: usize,
    /// Task runs that became final: their rows are written next commit.
    ready: Vec<RunId>,
    /// Unfinished task runs with changes not written yet, by the time of
    /// their first such change (oldest first); ids may be stale.
    waiting: VecDeque<(Instant, RunId)>,
    failed: bool,
    /// See [`Writer::progress`].
    progress: Arc<AtomicU64>,
}

impl Thread {
    fn new(
        conn: Connection,
        path: PathBuf,
        progress: Arc<AtomicU64>,
        shared_names: Arc<std::sync::Mutex<TaskNames>>,
    ) -> Thread {
        Thread {
            conn,
            path,
            flows: HashMap::new(),
            by_core_id: HashMap::new(),
            tasks: FxHashMap::default(),
            done: FxHashMap::default(),
            names: Vec::new(),
            shared_names,
            live: Vec::new(),
            held: Vec::new(),
            held_len: 0,
            ready: Vec::new(),
            waiting: VecDeque::new(),
            failed: false,
            progress,
        }
    }

    fn run(mut self, rx: Receiver<Event>, wake: Receiver<()>) {
        loop {
            // Live flows push into their buffers without a word to the
            // writer: it looks at them every GATHER while any is live.
            let next = if !self.live.is_empty() {
                rx.recv_timeout(GATHER).map_err(|e| e.is_disconnected())
            } else if self.waiting.is_empty() {
                rx.recv().map_err(|_| true)
            } else {
                rx.recv_timeout(DEFER).map_err(|e| e.is_disconnected())
            };
            let mut batch = Batch::default();
            // A timeout gathered already (or wrote the runs kept waiting).
            let (mut first, mut gathered) = match next {
                Ok(e) => {
                    let flush = matches!(e, Event::Flush(_));
                    (Some(e), flush)
                }
                Err(false) => (None, true),
                Err(true) => return,
            };
            let since = Instant::now();
            loop {
                // A backlog is a batch already: no need to gather more.
                if !gathered && batch.done.is_empty() && rx.len() < MAX_BATCH / 10 {
                    let _ = wake.recv_timeout(GATHER);
                }
                gathered = false;
                let (n, urgent) = self.take(&rx, first.take(), &mut batch);
                // While flows send events fast, their threads need the CPU
                // more than the disk does (on a machine without a spare
                // core, the writer's work is CPU the flow loses): gather
                // on, without even looking at the events, and apply and
                // commit them once the flows pause or end, someone waits
                // for the records, or the batch is as large or old as
                // allowed.
                let busy = n >= BUSY_EVENTS;
                if busy && !urgent && self.held_len < MAX_HELD && since.elapsed() < MAX_GATHER {
                    continue;
                }
                self.apply_held(&mut batch);
                if !busy
                    || !batch.done.is_empty()
                    || !batch.finished.is_empty()
                    || self.ready.len() >= MAX_ROWS
                    || since.elapsed() >= MAX_GATHER
                {
                    break;
                }
            }
            self.commit(batch);
        }
    }

    fn apply(&mut self, event: Event, batch: &mut Batch) {
        match event {
            Event::FlowStarted(start) => {
                let token = start.token;
                self.live.push(Live {
                    token,
                    buffer: start.buffer.clone(),
                    counted: 0,
                });
                let running = Change {
                    time: nanos(start.time),
                    kind: StateKind::Running,
                    detail: None,
                };
                self.by_core_id.insert(start.core_id.clone(), token);
                self.flows.insert(
                    token,
                    FlowRow {
                        seq: None,
                        id: new_id(millis(start.time)),
                        core_id: start.core_id.clone(),
                        name: start.name.clone(),
                        start,
                        state: StateKind::Running.as_str(),
                        state_name: None,
                        message: None,
                        end_ms: None,
                        history: vec![running],
                        total: 0,
                        counts: [0; 4],
                    },
                );
                batch.flows.insert(token);
            }
            Event::Log(line) => {
                if let Some((flow, task)) = self.resolve_log(&line) {
                    batch.named.extend(task);
                    batch.logs.push(LogRow {
                        flow,
                        task,
                        level: line.level,
                        time_ms: millis(line.time),
                        text: line.text,
                    });
                }
            }
            Event::Flush(done) => batch.done.push(done),
        }
    }

    /// Applies an event of the flow run `flow` from its buffer.
    fn apply_flow_event(&mut self, flow: u64, event: FlowEvent, batch: &mut Batch) {
        match event {
            FlowEvent::Task(event) => self.task_event(flow, event, batch),
            // The run's Pending event came first and made its row.
            FlowEvent::Started { id, time } => {
                let started = TaskEvent {
                    id,
                    index: 0,
                    time,
                    task: ROW_MADE,
                    attempts: 1,
                    kind: StateKind::Running,
                    location: None,
                    rare: None,
                };
                self.task_event(flow, started, batch);
            }
            FlowEvent::Upstreams { run, upstreams } => {
                let ids: Vec<String> = upstreams
                    .iter()
                    .filter_map(|u| self.uuid_of(*u))
                    .map(|u| u.to_string())
                    .collect();
                if let Some(t) = self.tasks.get_mut(&run) {
                    t.upstreams = Some(ids.join(" "));
                    mark_dirty(t, &mut self.waiting, run);
                }
            }
            FlowEvent::Finished(state) => {
                if let Some(f) = self.flows.get_mut(&flow) {
                    f.state = state.kind().as_str();
                    f.state_name =
                        (state.name() != state.kind().as_str()).then(|| state.name().to_owned());
                    f.message = state.message().map(Arc::from);
                    f.end_ms = Some(millis(state.timestamp()));
                    record(&mut f.history, Change::of(&state));
                    batch.flows.insert(flow);
                    batch.finished.push(flow);
                }
            }
        }
    }

    fn task_event(&mut self, flow: u64, event: TaskEvent, batch: &mut Batch) {
        let TaskEvent {
            id,
            index,
            time,
            task,
            attempts,
            kind,
            location,
            rare,
        } = event;
        let time = nanos(time);
        let Rare {
            task: named_task,
            custom_name,
            cache_key,
            state,
        } = rare.map(|r| *r).unwrap_or_default();
        let change = Change {
            time,
            kind,
            detail: state.map(Box::new),
        };
        let time_ms = change.time_ms();
        let task = match self.tasks.get_mut(&id) {
            Some(t) => {
                // Attempts, worker and cache key as of this change; a late
                // event of an older state does not take them back.
                if time >= t.state.time {
                    t.attempts = t.attempts.max(attempts);
                    if location.is_some() {
                        t.location = location;
                    }
                    if cache_key.is_some() {
                        t.cache_key = cache_key;
                    }
                }
                if t.custom_name.is_none() {
                    t.custom_name = custom_name;
                }
                t
            }
            None => {
                if task == ROW_MADE
                    || self.done.contains_key(&id)
                    || !self.flows.contains_key(&flow)
                {
                    return;
                }
                let named = match named_task {
                    Some((name, key)) => Some((Arc::from(name), key)),
                    None => self.task_name(task),
                };
                // A number is given out once its task is listed: one
                // unknown here would be a bug, and a row without its
                // task's name is worse than none.
                let Some((task, task_key)) = named else {
                    return;
                };
                if let Some(f) = self.flows.get_mut(&flow) {
                    f.total += 1;
                    batch.flows.insert(flow);
                }
                self.tasks.entry(id).or_insert(TaskRow {
                    flow,
                    id: new_id(time_ms),
                    seq: None,
                    task,
                    index: index.into(),
                    custom_name,
                    task_key,
                    attempts,
                    location,
                    cache_key,
                    // Replaced below: the first change is always the newest.
                    state: change.clone(),
                    created_ms: time_ms,
                    start_ms: None,
                    end_ms: None,
                    upstreams: None,
                    history: Vec::with_capacity(3),
                    dirty: false,
                    fresh: true,
                })
            }
        };
        // Observers are called after the run's lock is released, so two
        // threads' events for one run can arrive swapped: the newest state
        // wins, and a final state is never left.
        let newer = task.fresh || (!task.state.kind.is_final() && time >= task.state.time);
        task.fresh = false;
        if newer {
            task.state = change.clone();
            if kind.is_final() {
                task.end_ms = Some(time_ms);
            }
        }
        if matches!(kind, StateKind::Running) {
            task.start_ms = Some(task.start_ms.map_or(time_ms, |s| s.min(time_ms)));
        }
        record(&mut task.history, change);
        if kind.is_final() && newer {
            // Final once: its row is due now, whatever else waits.
            task.dirty = true;
            self.ready.push(id);
        } else {
            mark_dirty(task, &mut self.waiting, id);
        }
        if kind.is_final() && newer {
            let slot = match kind {
                StateKind::Completed => Some(0),
                StateKind::Failed => Some(1),
                StateKind::Crashed => Some(2),
                StateKind::Cancelled => Some(3),
                _ => None,
            };
            if let (Some(slot), Some(f)) = (slot, self.flows.get_mut(&flow)) {
                f.counts[slot] += 1;
                batch.flows.insert(flow);
            }
        }
    }

    /// The task (name and key) numbered `n`.
    fn task_name(&mut self, n: u32) -> Option<(Arc<str>, &'static str)> {
        let n = n as usize;
        if n >= self.names.len() {
            let shared = lock(&self.shared_names);
            let known = self.names.len();
            let new = shared.list.iter().skip(known);
            self.names
                .extend(new.map(|(text, key)| (Arc::from(*text), *key)));
        }
        self.names.get(n).cloned()
    }

    /// Takes what flows sent since the last look: the channel's events,
    /// and a count of what every live flow's buffer received. Flow starts
    /// are applied at once (so their buffers are counted below); the rest
    /// is held, in order, for [`Thread::apply_held`]. Returns how many
    /// events came, and whether they must be applied and committed now:
    /// someone waits for a flush, or a flow run ended.
    fn take(
        &mut self,
        rx: &Receiver<Event>,
        first: Option<Event>,
        batch: &mut Batch,
    ) -> (usize, bool) {
        let mut n = 0;
        let mut urgent = false;
        let mut next = first;
        while n < MAX_BATCH {
            let Some(e) = next.take().or_else(|| rx.try_recv().ok()) else {
                break;
            };
            n += 1;
            match e {
                Event::FlowStarted(_) => self.apply(e, batch),
                other => {
                    urgent |= matches!(other, Event::Flush(_));
                    self.held.push(other);
                }
            }
        }
        // The buffers' events stay where they are until applied: counting
        // them costs the flows' CPU nothing, moving them would.
        let mut buffered = 0;
        for live in &mut self.live {
            let len = live.buffer.len();
            n += len.saturating_sub(live.counted);
            live.counted = len;
            buffered += len;
            urgent |= live.buffer.ended.load(Ordering::Acquire);
        }
        self.held_len = self.held.len() + buffered;
        (n, urgent)
    }

    /// Applies the live flows' buffered events, then the channel events
    /// [`Thread::take`] held: log lines and flushes come after the task
    /// runs' events they refer to or wait for.
    fn apply_held(&mut self, batch: &mut Batch) {
        for i in 0..self.live.len() {
            let (token, buffer) = (self.live[i].token, self.live[i].buffer.clone());
            // Only what is there now: threads that push on meanwhile do
            // not keep the writer here.
            let mut n = 0u64;
            apply_taken(buffer.take(), |e| {
                self.apply_flow_event(token, e, batch);
                n += 1;
                if n.is_multiple_of(4096) {
                    self.progress.fetch_add(1, Ordering::Release);
                }
            });
            self.live[i].counted = 0;
        }
        let mut held = std::mem::take(&mut self.held);
        for e in held.drain(..) {
            self.apply(e, batch);
        }
        self.held = held;
        self.held_len = 0;
        if !batch.finished.is_empty() {
            let finished = &batch.finished;
            self.live.retain(|l| !finished.contains(&l.token));
        }
    }

    fn uuid_of(&self, run: RunId) -> Option<Uuid> {
        uuid_of(&self.tasks, &self.done, run)
    }

    /// The flow run and task run a log line belongs to.
    fn resolve_log(&self, line: &LogLine) -> Option<(u64, Option<RunId>)> {
        if let Some(flow) = line
            .flow_core_id
            .as_deref()
            .and_then(|c| self.by_core_id.get(c))
        {
            let task = line.task.filter(|t| self.uuid_of(*t).is_some());
            return Some((*flow, task));
        }
        if let Some(task) = line.task {
            if let Some(t) = self.tasks.get(&task) {
                return Some((t.flow, Some(task)));
            }
            if let Some(d) = self.done.get(&task) {
                return Some((d.flow, Some(task)));
            }
        }
        let label = line.label.as_deref()?;
        if let Some(name) = quoted(label, "Task run '") {
            // Lines a worker process sent name their run only; runs that
            // still live are the ones that can be printing.
            let mut buf = String::new();
            if let Some((id, t)) = self
                .tasks
                .iter()
                .find(|(_, t)| t.name_into(&mut buf) == name)
            {
                return Some((t.flow, Some(*id)));
            }
        }
        if let Some(name) = quoted(label, "Flow run '") {
            if let Some((token, _)) = self.flows.iter().find(|(_, f)| f.name == name) {
                return Some((*token, None));
            }
        }
        None
    }

    fn commit(&mut self, mut batch: Batch) {
        if self.failed {
            batch.done.clear();
            self.ready.clear();
            self.waiting.clear();
            return;
        }
        let rows = self.due(&batch);
        if rows.is_empty() && batch.flows.is_empty() && batch.logs.is_empty() {
            // Nothing to write (a look at quiet flows' buffers): no
            // transaction, which would take the lock from other processes.
            for d in batch.done {
                let _ = d.send(());
            }
            return;
        }
        match with_retries(|| self.write(&batch, &rows)) {
            Ok((flow_seqs, task_seqs)) => {
                for (token, seq) in flow_seqs {
                    if let Some(f) = self.flows.get_mut(&token) {
                        f.seq = Some(seq);
                    }
                }
                // One pass over the rows (both lists are in id order): a
                // lookup in a map of 100,000 runs is a cache miss or two.
                let mut new = task_seqs.into_iter().peekable();
                for id in &rows {
                    let seq = new.next_if(|(n, _)| n == id).map(|(_, seq)| seq);
                    let Some(t) = self.tasks.get_mut(id) else {
                        continue;
                    };
                    t.seq = t.seq.or(seq);
                    t.dirty = false;
                    if let (true, Some(seq)) = (t.state.kind.is_final(), t.seq) {
                        // Final and written: forget all but what later
                        // rows refer to it by (nothing, if its flow ended).
                        let (flow, uuid) = (t.flow, t.id);
                        self.tasks.remove(id);
                        if !batch.finished.contains(&flow) {
                            self.done.insert(
                                *id,
                                Done {
                                    flow,
                                    seq,
                                    id: uuid,
                                },
                            );
                        }
                    }
                }
                self.retire(&batch);
                self.progress.fetch_add(1, Ordering::Release);
            }
            Err(e) => {
                self.failed = true;
                crate::warn_off(
                    &self.path,
                    &format!("writing it failed ({e}); this process records no more runs there"),
                );
            }
        }
        for d in batch.done {
            let _ = d.send(());
        }
    }

    /// The task runs whose rows this batch writes: the final ones, those a
    /// log line names, those waiting longer than [`DEFER`], and all of them
    /// when a flush waits or a flow run ended. The others stay dirty.
    fn due(&mut self, batch: &Batch) -> Vec<RunId> {
        let mut due = std::mem::take(&mut self.ready);
        due.extend(batch.named.iter().copied());
        if !batch.done.is_empty() || !batch.finished.is_empty() {
            due.extend(self.waiting.drain(..).map(|(_, id)| id));
        } else {
            let now = Instant::now();
            while let Some((since, id)) = self.waiting.front().copied() {
                if now.duration_since(since) < DEFER {
                    break;
                }
                self.waiting.pop_front();
                due.push(id);
            }
        }
        let tasks = &self.tasks;
        let unwritten = |id: &RunId| tasks.get(id).is_some_and(|t| t.seq.is_none());
        // A row's `seq` is given when it is first written, and a flow run's
        // task runs list in `seq` order. A run that ends while one submitted
        // before it still waits unwritten would list first: those earlier
        // runs are written now too, as they are, and updated when they end.
        if let Some(last_new) = due.iter().copied().filter(unwritten).max() {
            due.extend(
                self.waiting
                    .iter()
                    .map(|(_, id)| *id)
                    .filter(|id| *id < last_new && unwritten(id)),
            );
        }
        due.retain(|id| tasks.get(id).is_some_and(|t| t.dirty));
        due.sort_unstable();
        due.dedup();
        due
    }

    /// Forgets the flow runs that ended, and their task runs.
    fn retire(&mut self, batch: &Batch) {
        for token in &batch.finished {
            if let Some(f) = self.flows.remove(token) {
                self.by_core_id.remove(&f.core_id);
            }
            self.done.retain(|_, d| d.flow != *token);
            self.tasks.retain(|_, t| t.flow != *token);
        }
    }

    /// Writes one batch in one transaction; returns the row ids it assigned.
    #[allow(clippy::type_complexity)]
    fn write(
        &mut self,
        batch: &Batch,
        rows: &[RunId],
    ) -> rusqlite::Result<(Vec<(u64, i64)>, Vec<(RunId, i64)>)> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut flow_seqs: HashMap<u64, i64> = HashMap::new();
        // New rows' seqs, in id order (as `rows` is).
        let mut task_seqs: Vec<(RunId, i64)> = Vec::new();
        {
            let mut insert_flow = tx.prepare_cached(
                "INSERT INTO flow_runs (id, core_id, name, flow, state, start_ms, parent_flow_run,
                 parent_task_run, pid, parameters, tags)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for token in &batch.flows {
                let Some(f) = self.flows.get(token) else {
                    continue;
                };
                if f.seq.is_some() {
                    continue;
                }
                let parent_flow = f
                    .start
                    .parent_flow
                    .as_deref()
                    .and_then(|c| self.by_core_id.get(c))
                    .and_then(|t| self.flows.get(t))
                    .map(|p| p.id.to_string());
                let parent_task = f
                    .start
                    .parent_task
                    .and_then(|r| uuid_of(&self.tasks, &self.done, r))
                    .map(|u| u.to_string());
                insert_flow.execute(params![
                    f.id.to_string(),
                    f.core_id,
                    f.name,
                    f.start.flow,
                    StateKind::Running.as_str(),
                    millis(f.start.time),
                    parent_flow,
                    parent_task,
                    std::process::id(),
                    f.start.parameters,
                    f.start.tags,
                ])?;
                flow_seqs.insert(*token, tx.last_insert_rowid());
            }
            let flow_seq = |token: u64| -> Option<i64> {
                self.flows
                    .get(&token)
                    .and_then(|f| f.seq)
                    .or_else(|| flow_seqs.get(&token).copied())
            };
            // One statement for a row written before (a run that outlived
            // DEFER), whose known `seq` updates what can change and leaves
            // the other columns be, and for a new row with a new `seq`.
            let mut upsert_task = tx.prepare_cached(
                "INSERT INTO task_runs (seq, id, flow_run, name, task, task_key, state, state_name,
                 message, attempts, worker, upstreams, created_ms, start_ms, end_ms, history,
                 cache_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
                 ON CONFLICT (seq) DO UPDATE SET state = excluded.state,
                 state_name = excluded.state_name, message = excluded.message,
                 attempts = excluded.attempts, worker = excluded.worker,
                 upstreams = excluded.upstreams, start_ms = excluded.start_ms,
                 end_ms = excluded.end_ms, history = excluded.history,
                 cache_key = excluded.cache_key",
            )?;
            // New rows go in INSERT_ROWS at a time, numbered here (the
            // write lock is held, so the largest `seq` stays the largest):
            // one statement per row cost more than its row's insert.
            let mut insert_tasks = tx.prepare_cached(insert_tasks_sql())?;
            let mut next_seq: i64 =
                tx.query_row("SELECT coalesce(max(seq), 0) + 1 FROM task_runs", [], |r| {
                    r.get(0)
                })?;
            // Reused from row to row: no allocation per row.
            let (mut name, mut history) = (String::new(), String::new());
            let mut new = Vec::with_capacity(rows.len());
            for id in rows {
                let Some(t) = self.tasks.get(id) else {
                    continue;
                };
                let Some(flow) = flow_seq(t.flow) else {
                    continue;
                };
                match t.seq {
                    Some(seq) => {
                        history_json(&t.history, &mut history);
                        bind_task(&mut upsert_task, 0, seq, t, flow, &mut name, &history)?;
                        upsert_task.raw_execute()?;
                    }
                    None => {
                        task_seqs.push((*id, next_seq));
                        new.push((next_seq, t, flow));
                        next_seq += 1;
                    }
                }
            }
            let mut chunks = new.chunks_exact(INSERT_ROWS);
            for chunk in &mut chunks {
                for (slot, (seq, t, flow)) in chunk.iter().enumerate() {
                    history_json(&t.history, &mut history);
                    bind_task(&mut insert_tasks, slot, *seq, t, *flow, &mut name, &history)?;
                }
                insert_tasks.raw_execute()?;
                self.progress.fetch_add(1, Ordering::Release);
            }
            for (seq, t, flow) in chunks.remainder() {
                history_json(&t.history, &mut history);
                bind_task(&mut upsert_task, 0, *seq, t, *flow, &mut name, &history)?;
                upsert_task.raw_execute()?;
            }
            let task_seq = |id: RunId| -> Option<i64> {
                self.tasks
                    .get(&id)
                    .and_then(|t| t.seq)
                    .or_else(|| self.done.get(&id).map(|d| d.seq))
                    .or_else(|| {
                        let at = task_seqs.binary_search_by_key(&id, |(n, _)| *n).ok()?;
                        Some(task_seqs[at].1)
                    })
            };
            let mut insert_log = tx.prepare_cached(
                "INSERT INTO logs (flow_run, task_run, level, time_ms, text)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for l in &batch.logs {
                let Some(flow) = flow_seq(l.flow) else {
                    continue;
                };
                insert_log.execute(params![
                    flow,
                    l.task.and_then(task_seq),
                    l.level,
                    l.time_ms,
                    l.text
                ])?;
            }
            let mut update_flow = tx.prepare_cached(
                "UPDATE flow_runs SET state = ?2, state_name = ?3, message = ?4, end_ms = ?5,
                 tasks_total = ?6, tasks_completed = ?7, tasks_failed = ?8, tasks_crashed = ?9,
                 tasks_cancelled = ?10, history = ?11 WHERE seq = ?1",
            )?;
            for token in &batch.flows {
                let (Some(f), Some(seq)) = (self.flows.get(token), flow_seq(*token)) else {
                    continue;
                };
                history_json(&f.history, &mut history);
                update_flow.execute(params![
                    seq,
                    f.state,
                    f.state_name,
                    f.message.as_deref(),
                    f.end_ms,
                    f.total,
                    f.counts[0],
                    f.counts[1],
                    f.counts[2],
                    f.counts[3],
                    history,
                ])?;
            }
        }
        tx.commit()?;
        Ok((flow_seqs.into_iter().collect(), task_seqs))
    }
}

/// Task rows one multi-row insert writes.
const INSERT_ROWS: usize = 32;

/// The columns of a task row, in the order [`bind_task`] binds them.
const TASK_COLUMNS: &str = "seq, id, flow_run, name, task, task_key, state, state_name, message,
     attempts, worker, upstreams, created_ms, start_ms, end_ms, history, cache_key";

/// An insert of [`INSERT_ROWS`] new task rows.
fn insert_tasks_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let row = format!("({})", vec!["?"; 17].join(", "));
        format!(
            "INSERT INTO task_runs ({TASK_COLUMNS}) VALUES {}",
            vec![row; INSERT_ROWS].join(", ")
        )
    })
}

/// Binds task row `t` as the `slot`-th row of `stmt`'s values.
fn bind_task(
    stmt: &mut rusqlite::CachedStatement<'_>,
    slot: usize,
    seq: i64,
    t: &TaskRow,
    flow: i64,
    name: &mut String,
    history: &str,
) -> rusqlite::Result<()> {
    let at = slot * 17;
    let mut id_text = [0u8; 36];
    stmt.raw_bind_parameter(at + 1, seq)?;
    stmt.raw_bind_parameter(at + 2, &*t.id.hyphenated().encode_lower(&mut id_text))?;
    stmt.raw_bind_parameter(at + 3, flow)?;
    stmt.raw_bind_parameter(at + 4, t.name_into(name))?;
    stmt.raw_bind_parameter(at + 5, &*t.task)?;
    stmt.raw_bind_parameter(at + 6, t.task_key)?;
    stmt.raw_bind_parameter(at + 7, t.state.kind.as_str())?;
    stmt.raw_bind_parameter(at + 8, t.state.refining_name())?;
    stmt.raw_bind_parameter(at + 9, t.state.message())?;
    stmt.raw_bind_parameter(at + 10, t.attempts)?;
    stmt.raw_bind_parameter(at + 11, t.location.as_deref())?;
    stmt.raw_bind_parameter(at + 12, t.upstreams.as_deref())?;
    stmt.raw_bind_parameter(at + 13, t.created_ms)?;
    stmt.raw_bind_parameter(at + 14, t.start_ms)?;
    stmt.raw_bind_parameter(at + 15, t.end_ms)?;
    stmt.raw_bind_parameter(at + 16, history)?;
    stmt.raw_bind_parameter(at + 17, t.cache_key.as_deref())?;
    Ok(())
}

fn uuid_of(
    tasks: &FxHashMap<RunId, TaskRow>,
    done: &FxHashMap<RunId, Done>,
    run: RunId,
) -> Option<Uuid> {
    tasks
        .get(&run)
        .map(|t| t.id)
        .or_else(|| done.get(&run).map(|d| d.id))
}

/// Notes that `task` has changes its row does not hold yet.
fn mark_dirty(task: &mut TaskRow, waiting: &mut VecDeque<(Instant, RunId)>, id: RunId) {
    if !task.dirty {
        task.dirty = true;
        waiting.push_back((Instant::now(), id));
    }
}

/// The text between `prefix` and the closing quote of `label`.
fn quoted<'a>(label: &'a str, prefix: &str) -> Option<&'a str> {
    label.strip_prefix(prefix)?.strip_suffix('\'')
}

/// A UUIDv7 of `time`: its first 48 bits are the time in milliseconds, so
/// ids sort by creation time; the rest is random, so a few of its digits
/// tell runs apart.
fn new_id(time_ms: i64) -> Uuid {
    // fastrand, not the system's generator: ids need to differ, not to be
    // secret, and a system call per task run shows in the recording cost.
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    uuid::Builder::from_unix_timestamp_millis(time_ms.max(0) as u64, &random).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks of one slot holding `events` in order.
    fn slot<T>(events: Vec<T>) -> Vec<Vec<Option<T>>> {
        let mut chunks = Vec::new();
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let mut chunk = Vec::with_capacity(CHUNK);
            chunk.extend(events.by_ref().take(CHUNK).map(Some));
            chunks.push(chunk);
        }
        chunks
    }

    type Ev = (Option<(u64, u8)>, &'static str);

    #[allow(clippy::type_complexity)]
    fn merged(taken: Vec<Vec<Vec<Option<Ev>>>>) -> (Vec<&'static str>, Vec<Vec<Option<Ev>>>) {
        let mut out = Vec::new();
        let empty = merge_slots(taken, |e: &Ev| e.0, |e| out.push(e.1));
        (out, empty)
    }

    #[test]
    fn slots_merge_by_time_and_a_keyless_event_follows_its_predecessor() {
        // The submitting thread: A's Pending, B's Pending and its
        // upstreams (no key of its own); a worker: A runs and ends, then B.
        let submitter = slot(vec![
            (Some((10, 0)), "A pending"),
            (Some((20, 0)), "B pending"),
            (None, "B upstreams"),
        ]);
        let worker = slot(vec![
            (Some((15, 1)), "A running"),
            (Some((25, 2)), "A completed"),
            (Some((30, 1)), "B running"),
        ]);
        let (order, _) = merged(vec![worker, submitter]);
        assert_eq!(
            order,
            [
                "A pending",
                "A running",
                "B pending",
                "B upstreams",
                "A completed",
                "B running"
            ]
        );
    }

    #[test]
    fn at_the_same_time_pending_comes_before_running_and_running_before_the_end() {
        let (order, _) = merged(vec![
            slot(vec![(Some((7, 2)), "end")]),
            slot(vec![(Some((7, 1)), "running")]),
            slot(vec![(Some((7, 0)), "pending")]),
        ]);
        assert_eq!(order, ["pending", "running", "end"]);
    }

    #[test]
    fn every_event_of_many_chunks_comes_out_once_in_order_and_the_chunks_come_back() {
        let n = 3 * CHUNK + 5;
        let a: Vec<Ev> = (0..n).map(|i| (Some((2 * i as u64, 1)), "a")).collect();
        let b: Vec<Ev> = (0..n).map(|i| (Some((2 * i as u64 + 1, 1)), "b")).collect();
        let (order, empty) = merged(vec![slot(a), slot(b)]);
        assert_eq!(order.len(), 2 * n);
        assert!(order.chunks(2).all(|pair| pair == ["a", "b"]));
        // Eight chunks, all of them full-sized: every one is reusable.
        assert_eq!(empty.len(), 8);
        assert!(empty.iter().all(|c| c.is_empty() && c.capacity() == CHUNK));
    }

    #[test]
    fn a_thread_never_shares_its_slot_with_a_live_one_while_slots_are_free() {
        let mine = SLOT.with(|s| s.index);
        // Short-lived threads, one after another, as a pool started per
        // flow run makes them: each may take a slot an exited one gave
        // back, never this live thread's.
        for _ in 0..3 * SLOTS {
            let theirs = std::thread::spawn(|| SLOT.with(|s| s.index))
                .join()
                .unwrap();
            assert_ne!(theirs, mine);
        }
    }

    fn finished(message: &str) -> FlowEvent {
        FlowEvent::Finished(Box::new(
            State::new(StateKind::Completed).with_message(message),
        ))
    }

    fn message(e: FlowEvent) -> String {
        match e {
            FlowEvent::Finished(state) => state.message().unwrap_or_default().to_owned(),
            _ => panic!("only flow ends were pushed"),
        }
    }

    #[test]
    fn a_buffer_gives_every_event_of_every_thread_once_each_thread_s_in_order() {
        let buffer = Arc::new(FlowBuffer::default());
        let per_thread = 2 * CHUNK + 3;
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let buffer = buffer.clone();
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        buffer.push(finished(&format!("{t} {i}")));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(buffer.len(), 3 * per_thread);
        let mut seen: Vec<Vec<usize>> = vec![Vec::new(); 3];
        apply_taken(buffer.take(), |e| {
            let text = message(e);
            let (t, i) = text.split_once(' ').unwrap();
            seen[t.parse::<usize>().unwrap()].push(i.parse().unwrap());
        });
        for s in &seen {
            assert_eq!(*s, (0..per_thread).collect::<Vec<_>>());
        }
        assert_eq!(buffer.len(), 0, "taking empties the buffer");
        // A flow after it fills chunks the writer gave back.
        assert!(!spare_chunks().lock().unwrap().is_empty());
        let next = FlowBuffer::default();
        for i in 0..CHUNK + 1 {
            next.push(finished(&i.to_string()));
        }
        let mut order = Vec::new();
        apply_taken(next.take(), |e| order.push(message(e)));
        assert_eq!(
            order,
            (0..CHUNK + 1).map(|i| i.to_string()).collect::<Vec<_>>()
        );
    }
}

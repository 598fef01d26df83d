//! The shared record of one task run: its identity, state, result slot and
//! everyone waiting for it. Futures, dependency gates, flows and runners all
//! hold the same record.

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::flow::registry::FlowShared;
use crate::observe::RunEvent;
use crate::plumbing::{lock, wait, wait_timeout};
use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::state::{State, StateKind};
use crate::task::{Cloner, Decoder, Encoder};

/// The id of a task run, unique within this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(NonZeroU64);

impl RunId {
    /// The id `raw` (a flow's id sent to a worker); 0 reads as 1.
    pub(crate) fn from_raw(raw: u64) -> RunId {
        RunId(NonZeroU64::new(raw).unwrap_or(NonZeroU64::MIN))
    }

    pub(crate) fn next() -> RunId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        RunId(NonZeroU64::new(n).expect("run ids start at 1"))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

/// Hashes run ids so that neighbouring ids land in neighbouring slots.
///
/// Run ids are handed out in sequence, and a flow's task runs start and end
/// roughly in that order, so the runs touched together are close in id. A
/// general-purpose hash scatters them over the whole table: with 100,000
/// runs in flight every event was a cache miss, a third of the local
/// cluster's scheduler thread. This one keeps the id's low bits (the slot,
/// in a `hashbrown` table) and mixes the top seven bits (the tag it
/// compares before the keys), so probing still skips the other entries of
/// a group.
#[derive(Debug, Default)]
pub(crate) struct SequenceHasher(u64);

impl std::hash::Hasher for SequenceHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        const TAG: u64 = 0x7f << 57;
        (self.0 & !TAG) ^ (self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) & TAG)
    }
}

/// A map keyed by run id, hashed by [`SequenceHasher`].
pub(crate) type RunIdMap<V> =
    std::collections::HashMap<RunId, V, std::hash::BuildHasherDefault<SequenceHasher>>;

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

pub(crate) type Callback = Box<dyn FnOnce() + Send>;

/// Mutable part of a run, behind one lock.
pub(crate) struct Status<T> {
    pub(crate) kind: StateKind,
    pub(crate) state_name: Option<&'static str>,
    pub(crate) message: Option<Arc<str>>,
    pub(crate) entered: SystemTime,
    pub(crate) attempt: u32,
    pub(crate) started: Option<Instant>,
    pub(crate) ended: Option<Instant>,
    pub(crate) location: Option<Arc<str>>,
    value: Slot<T>,
    error: Option<TaskError>,
    blocked_waiters: usize,
    callbacks: Vec<Callback>,
    wakers: Vec<Waker>,
}

enum Slot<T> {
    Empty,
    Value(T),
    Encoded(Bytes),
    /// Still where it was computed; fetched on first read.
    Deferred(Fetch),
    Taken(Gone),
}

/// Where a run's value went: said only when someone asks for it again, so
/// that taking a value formats nothing.
#[derive(Clone, Copy)]
enum Gone {
    /// Moved out to its last reader.
    Moved,
    /// Returned to the caller of a direct call.
    Returned,
}

impl Gone {
    fn why(self, type_name: &str) -> String {
        match self {
            Gone::Moved => {
                format!("its result (of type `{type_name}`, which is not Clone) was already taken")
            }
            Gone::Returned => "its value was returned to the caller of the direct call".to_owned(),
        }
    }
}

/// Fetches a result that stayed where it was computed.
pub(crate) type Fetch = Arc<dyn Fn() -> Result<Bytes, TaskError> + Send + Sync>;

/// Type-specific functions a run needs to share its result: cloning it for
/// several consumers, encoding it for another process, decoding it.
pub(crate) struct ValueFns<T> {
    pub(crate) clone: Option<Cloner<T>>,
    pub(crate) encode: Option<Encoder<T>>,
    pub(crate) decode: Option<Decoder<T>>,
    pub(crate) type_name: &'static str,
}

impl<T> Clone for ValueFns<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ValueFns<T> {}

/// What names a task run: its task, its place among the task's runs and
/// the name `task_run_name` gave it. Every kind of run (a run of this
/// process, a child's replayed run, a worker's view of a run) keeps one, so
/// that [`AnyRun`] answers the naming questions once for all of them.
pub(crate) struct RunLabel {
    pub(crate) task_name: Cow<'static, str>,
    pub(crate) task_key: &'static str,
    pub(crate) index: u64,
    /// A name from `task_run_name`, instead of `<task>-<index>`.
    pub(crate) run_name: Option<Box<str>>,
}

impl RunLabel {
    /// The run's name: its own, or `<task>-<index>`.
    pub(crate) fn name(&self) -> String {
        match &self.run_name {
            Some(name) => name.to_string(),
            None => {
                // Sized once: `format!` grew the string twice on this path,
                // which runs for most task runs.
                use fmt::Write as _;
                let mut name = String::with_capacity(self.task_name.len() + 21);
                let _ = write!(name, "{self}");
                name
            }
        }
    }
}

/// The run's name, written where it is needed (a log line's label is
/// formatted only when a layer records it).
impl fmt::Display for RunLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.run_name {
            Some(name) => f.write_str(name),
            None => write!(f, "{}-{}", self.task_name, self.index),
        }
    }
}

/// The record of one task run, typed by its result.
pub(crate) struct RunCell<T: 'static> {
    pub(crate) id: RunId,
    pub(crate) label: RunLabel,
    pub(crate) flow: Arc<FlowShared>,
    pub(crate) fns: &'static ValueFns<T>,
    /// Its place in the graph as submitted (see [`RunRef::order`]).
    pub(crate) order: u64,
    /// Its cache key and result version, when its result is cached (see
    /// `crate::cache`).
    pub(crate) cache_key: OnceLock<crate::cache::CacheId>,
    status: Mutex<Status<T>>,
    cond: Condvar,
    observed: AtomicBool,
    handles: AtomicUsize,
}

impl<T: Send + 'static> RunCell<T> {
    pub(crate) fn new(
        task_name: Cow<'static, str>,
        task_key: &'static str,
        index: u64,
        flow: Arc<FlowShared>,
        fns: &'static ValueFns<T>,
    ) -> RunCell<T> {
        let id = RunId::next();
        RunCell {
            id,
            order: id.get(),
            cache_key: OnceLock::new(),
            label: RunLabel {
                task_name,
                task_key,
                index,
                run_name: None,
            },
            flow,
            fns,
            status: Mutex::new(Status {
                kind: StateKind::Pending,
                state_name: None,
                message: None,
                entered: SystemTime::now(),
                attempt: 0,
                started: None,
                ended: None,
                location: None,
                value: Slot::Empty,
                error: None,
                blocked_waiters: 0,
                callbacks: Vec::new(),
                wakers: Vec::new(),
            }),
            cond: Condvar::new(),
            observed: AtomicBool::new(false),
            handles: AtomicUsize::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Status<T>> {
        // A panic while holding this lock would be a bug in flowrun; the data
        // stays consistent because every update is a single assignment.
        lock(&self.status)
    }

    pub(crate) fn name(&self) -> String {
        self.label.name()
    }

    pub(crate) fn is_final(&self) -> bool {
        self.lock().kind.is_final()
    }

    /// Marks `attempt` as executing: Running for the first, Retrying after.
    pub(crate) fn start_attempt(self: &Arc<Self>, attempt: u32) {
        let kind = if attempt == 1 {
            StateKind::Running
        } else {
            StateKind::Retrying
        };
        self.transition(kind, None, attempt);
    }

    /// Moves a not-yet-final run to `kind` (Running, Retrying, AwaitingRetry,
    /// Pending). Returns false when the run is already final.
    pub(crate) fn transition(
        self: &Arc<Self>,
        kind: StateKind,
        message: Option<Arc<str>>,
        attempt: u32,
    ) -> bool {
        self.transition_named(kind, None, message, attempt)
    }

    /// [`transition`](Self::transition) to a state with a refining name
    /// (such as `AwaitingConcurrencySlot`, a Pending state).
    pub(crate) fn transition_named(
        self: &Arc<Self>,
        kind: StateKind,
        name: Option<&'static str>,
        message: Option<Arc<str>>,
        attempt: u32,
    ) -> bool {
        let (wakers, event);
        {
            let mut s = self.lock();
            if s.kind.is_final() {
                return false;
            }
            s.kind = kind;
            s.state_name = name;
            s.message = message;
            s.entered = SystemTime::now();
            s.attempt = attempt;
            if matches!(kind, StateKind::Running | StateKind::Retrying) && s.started.is_none() {
                s.started = Some(Instant::now());
            }
            wakers = std::mem::take(&mut s.wakers);
            // What observers get, read under this lock rather than taking
            // it again for each.
            event = self
                .flow
                .observed()
                .then(|| (snapshot(&s), s.attempt, s.location.clone()));
        }
        if let Some((state, attempts, location)) = event {
            self.flow.emit(RunEvent {
                run: RunRef(self.clone()),
                state,
                attempts,
                location,
            });
        }
        // Async waiters poll again and re-register; they only care about final
        // states, but waking keeps `state()` observers in async code current.
        for w in wakers {
            w.wake();
        }
        true
    }

    pub(crate) fn set_location(&self, location: Arc<str>) {
        self.lock().location = Some(location);
    }

    /// Completes the run with a value. Returns false if it was already final.
    pub(crate) fn complete_value(self: &Arc<Self>, value: T) -> bool {
        self.finish(Slot::Value(value), None)
    }

    /// Completes the run with an encoded value (from another process).
    pub(crate) fn complete_encoded(self: &Arc<Self>, bytes: Bytes) -> bool {
        self.finish(Slot::Encoded(bytes), None)
    }

    /// Completes the run with a result read from the cache: a `Completed`
    /// state named `Cached`, without executing.
    pub(crate) fn complete_cached(self: &Arc<Self>, value: Option<T>, bytes: Bytes) -> bool {
        let slot = match value {
            Some(v) => Slot::Value(v),
            None => Slot::Encoded(bytes),
        };
        self.finish_named(slot, None, Some("Cached"))
    }

    /// Completes the run with a result that is fetched when first read.
    pub(crate) fn complete_deferred(self: &Arc<Self>, fetch: Fetch) -> bool {
        self.finish(Slot::Deferred(fetch), None)
    }

    /// Replaces a deferred result by its bytes (fetching outside the lock).
    fn resolve_deferred(&self) -> Result<(), TaskError> {
        let fetch = match &self.lock().value {
            Slot::Deferred(f) => f.clone(),
            _ => return Ok(()),
        };
        let bytes = crate::exec::pool::blocking(|| fetch()).map_err(|e| e.in_run(self.name()))?;
        let mut s = self.lock();
        if let Slot::Deferred(_) = s.value {
            s.value = Slot::Encoded(bytes);
        }
        Ok(())
    }

    /// Completes a direct call, whose value went straight to its caller.
    pub(crate) fn complete_returned(self: &Arc<Self>) -> bool {
        self.finish(Slot::Taken(Gone::Returned), None)
    }

    /// Completes a direct call from the cache (a `Completed` state named
    /// `Cached`): its value went straight to its caller.
    pub(crate) fn complete_returned_cached(self: &Arc<Self>) -> bool {
        self.finish_named(Slot::Taken(Gone::Returned), None, Some("Cached"))
    }

    /// Ends the run with `error`. Returns false if it was already final.
    pub(crate) fn fail(self: &Arc<Self>, error: TaskError) -> bool {
        self.finish(Slot::Empty, Some(error))
    }

    fn finish(self: &Arc<Self>, value: Slot<T>, error: Option<TaskError>) -> bool {
        self.finish_named(value, error, None)
    }

    fn finish_named(
        self: &Arc<Self>,
        value: Slot<T>,
        error: Option<TaskError>,
        completed_name: Option<&'static str>,
    ) -> bool {
        let (callbacks, wakers, notify, state, attempts, location) = {
            let mut s = self.lock();
            if s.kind.is_final() {
                return false;
            }
            s.ended = Some(Instant::now());
            s.entered = SystemTime::now();
            match error {
                None => {
                    s.kind = StateKind::Completed;
                    s.state_name = completed_name;
                    s.message = None;
                    s.value = value;
                }
                Some(error) => {
                    let state = error.state();
                    s.kind = state.kind();
                    s.state_name = match state.name() {
                        n if n == state.kind().as_str() => None,
                        "TimedOut" => Some("TimedOut"),
                        "NotReady" => Some("NotReady"),
                        _ => None,
                    };
                    s.message = Some(Arc::from(error.message()));
                    s.error = Some(error.in_run(self.name()));
                }
            }
            let state = snapshot(&s);
            let location = self.flow.observed().then(|| s.location.clone()).flatten();
            (
                std::mem::take(&mut s.callbacks),
                std::mem::take(&mut s.wakers),
                s.blocked_waiters > 0,
                state,
                s.attempt,
                location,
            )
        };
        // Callbacks (a task's final-state hooks among them) run before
        // waiters wake, so that whoever reads the result sees their effects.
        for cb in callbacks {
            cb();
        }
        if notify {
            self.cond.notify_all();
        }
        for w in wakers {
            w.wake();
        }
        self.flow
            .run_finished(self.clone(), &state, attempts, location);
        true
    }

    /// Runs `callback` once the run is final (at once if it already is).
    pub(crate) fn on_final(&self, callback: Callback) {
        let mut s = self.lock();
        if s.kind.is_final() {
            drop(s);
            callback();
        } else {
            s.callbacks.push(callback);
        }
    }

    /// Blocks until the run is final, or until `deadline`. Returns whether it is final.
    pub(crate) fn block_until_final(&self, deadline: Option<Instant>) -> bool {
        let s = self.lock();
        if s.kind.is_final() {
            return true;
        }
        drop(s);
        crate::exec::pool::blocking(|| {
            let mut s = self.lock();
            s.blocked_waiters += 1;
            while !s.kind.is_final() {
                match deadline {
                    None => s = wait(&self.cond, s),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            break;
                        }
                        s = wait_timeout(&self.cond, s, d - now).0;
                    }
                }
            }
            s.blocked_waiters -= 1;
            s.kind.is_final()
        })
    }

    /// Registers `waker` unless the run is already final. Returns whether it is final.
    pub(crate) fn poll_final(&self, waker: &Waker) -> bool {
        let mut s = self.lock();
        if s.kind.is_final() {
            return true;
        }
        if !s.wakers.iter().any(|w| w.will_wake(waker)) {
            s.wakers.push(waker.clone());
        }
        false
    }

    pub(crate) fn mark_observed(&self) {
        self.observed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn observed(&self) -> bool {
        self.observed.load(Ordering::Relaxed)
    }

    pub(crate) fn add_handle(&self) {
        self.handles.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn drop_handle(&self) {
        self.handles.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn state(&self) -> State {
        snapshot(&self.lock())
    }

    pub(crate) fn error(&self) -> Option<TaskError> {
        self.lock().error.clone()
    }

    /// The result for one consumer of a final run: cloned when other handles
    /// may still read it, moved out when this is the last one.
    pub(crate) fn take_result(&self, last_handle: bool) -> Result<T, TaskError> {
        self.resolve_deferred()?;
        let mut s = self.lock();
        if let Some(e) = &s.error {
            return Err(e.clone());
        }
        let can_move = last_handle || self.fns.clone.is_none();
        match std::mem::replace(&mut s.value, Slot::Empty) {
            Slot::Value(v) => {
                if can_move {
                    s.value = Slot::Taken(Gone::Moved);
                    Ok(v)
                } else {
                    let out = (self.fns.clone.expect("checked above"))(&v);
                    s.value = Slot::Value(v);
                    Ok(out)
                }
            }
            Slot::Encoded(bytes) if crate::external::external(&bytes).is_some() => {
                // Read from where it lives (see [`crate::external`]), outside
                // the lock.
                s.value = Slot::Encoded(bytes.clone());
                drop(s);
                self.decode(&bytes)
            }
            Slot::Encoded(bytes) => {
                let out = self.decode(&bytes);
                s.value = Slot::Encoded(bytes);
                out
            }
            Slot::Deferred(f) => {
                s.value = Slot::Deferred(f);
                Err(TaskError::new(
                    TaskErrorKind::ResultUnavailable,
                    "the result could not be fetched",
                )
                .in_run(self.name()))
            }
            Slot::Taken(gone) => {
                s.value = Slot::Taken(gone);
                Err(TaskError::new(
                    TaskErrorKind::ResultUnavailable,
                    gone.why(self.fns.type_name),
                )
                .in_run(self.name()))
            }
            Slot::Empty => {
                s.value = Slot::Empty;
                Err(TaskError::new(
                    TaskErrorKind::ResultUnavailable,
                    format!("the run is {} and has no result", s.kind),
                )
                .in_run(self.name()))
            }
        }
    }

    /// Clones the result (`T: Clone` is known to the caller).
    pub(crate) fn clone_result(&self, clone: fn(&T) -> T) -> Result<T, TaskError> {
        self.resolve_deferred()?;
        let s = self.lock();
        if let Some(e) = &s.error {
            return Err(e.clone());
        }
        match &s.value {
            Slot::Value(v) => Ok(clone(v)),
            Slot::Encoded(bytes) if crate::external::external(bytes).is_some() => {
                let bytes = bytes.clone();
                drop(s);
                self.decode(&bytes)
            }
            Slot::Encoded(bytes) => self.decode(bytes),
            Slot::Deferred(_) => Err(TaskError::new(
                TaskErrorKind::ResultUnavailable,
                "the result could not be fetched",
            )
            .in_run(self.name())),
            Slot::Taken(gone) => Err(TaskError::new(
                TaskErrorKind::ResultUnavailable,
                gone.why(self.fns.type_name),
            )
            .in_run(self.name())),
            Slot::Empty => Err(TaskError::new(
                TaskErrorKind::ResultUnavailable,
                format!("the run is {} and has no result", s.kind),
            )
            .in_run(self.name())),
        }
    }

    fn decode(&self, bytes: &Bytes) -> Result<T, TaskError> {
        let decode = self.fns.decode.ok_or_else(|| {
            TaskError::new(
                TaskErrorKind::ResultUnavailable,
                format!(
                    "the result arrived encoded, but `{}` cannot be deserialized",
                    self.fns.type_name
                ),
            )
            .in_run(self.name())
        })?;
        let read;
        let bytes = match crate::external::external(bytes) {
            Some(value) => {
                read = value.read().map_err(|e| e.in_run(self.name()))?;
                &read
            }
            None => bytes,
        };
        decode(bytes).map_err(|e| {
            TaskError::new(
                TaskErrorKind::ResultUnavailable,
                format!(
                    "the result does not decode as `{}`: {e}",
                    self.fns.type_name
                ),
            )
            .in_run(self.name())
        })
    }

    pub(crate) fn handles(&self) -> usize {
        self.handles.load(Ordering::Relaxed)
    }
}

fn snapshot<T>(s: &Status<T>) -> State {
    let mut state = State::new(s.kind).at(s.entered);
    if let Some(n) = s.state_name {
        state = state.with_name(n);
    }
    if let Some(m) = &s.message {
        state = state.with_message(m.clone());
    }
    state
}

/// The type-erased view of a run used by flows, runners and dependency gates.
pub(crate) trait AnyRun: Send + Sync + 'static {
    fn id(&self) -> RunId;
    fn order(&self) -> u64;
    fn label(&self) -> &RunLabel;
    fn name(&self) -> String {
        self.label().name()
    }
    fn custom_name(&self) -> Option<&str> {
        self.label().run_name.as_deref()
    }
    fn task_name(&self) -> &str {
        &self.label().task_name
    }
    fn index(&self) -> u64 {
        self.label().index
    }
    fn task_key(&self) -> &'static str {
        self.label().task_key
    }
    fn state(&self) -> State;
    fn error(&self) -> Option<TaskError>;
    fn on_final(&self, callback: Callback);
    fn block_until_final(&self, deadline: Option<Instant>) -> bool;
    fn mark_observed(&self);
    fn observed(&self) -> bool;
    fn attempts(&self) -> u32;
    fn duration(&self) -> Option<Duration>;
    fn location(&self) -> Option<Arc<str>>;
    /// An observers' event of its current state, `run` being this run.
    fn event(&self, run: RunRef) -> RunEvent {
        RunEvent {
            run,
            state: self.state(),
            attempts: self.attempts(),
            location: self.location(),
        }
    }
    /// The result encoded for another process.
    fn encoded_result(&self) -> Result<Bytes, TaskError>;
    fn cache_key(&self) -> Option<&str>;
    /// Its cache key and the version of its result, for the keys of runs
    /// that take its result (only a run of this process has one).
    fn cache_id(&self) -> Option<&crate::cache::CacheId> {
        None
    }
    fn fail_dyn(self: Arc<Self>, error: TaskError) -> bool;
    /// Empty where the flow run is not known (a hook's run on a worker).
    fn flow_run_id(&self) -> &str {
        ""
    }
}

impl<T: Send + 'static> AnyRun for RunCell<T> {
    fn id(&self) -> RunId {
        self.id
    }
    fn order(&self) -> u64 {
        self.order
    }
    fn label(&self) -> &RunLabel {
        &self.label
    }
    fn state(&self) -> State {
        RunCell::state(self)
    }
    fn error(&self) -> Option<TaskError> {
        RunCell::error(self)
    }
    fn on_final(&self, callback: Callback) {
        RunCell::on_final(self, callback)
    }
    fn block_until_final(&self, deadline: Option<Instant>) -> bool {
        RunCell::block_until_final(self, deadline)
    }
    fn mark_observed(&self) {
        RunCell::mark_observed(self)
    }
    fn observed(&self) -> bool {
        RunCell::observed(self)
    }
    fn attempts(&self) -> u32 {
        self.lock().attempt
    }
    fn duration(&self) -> Option<Duration> {
        let s = self.lock();
        Some(s.ended?.duration_since(s.started?))
    }
    fn location(&self) -> Option<Arc<str>> {
        self.lock().location.clone()
    }
    fn event(&self, run: RunRef) -> RunEvent {
        let s = self.lock();
        RunEvent {
            run,
            state: snapshot(&s),
            attempts: s.attempt,
            location: s.location.clone(),
        }
    }
    fn encoded_result(&self) -> Result<Bytes, TaskError> {
        self.resolve_deferred()?;
        let s = self.lock();
        if let Some(e) = &s.error {
            return Err(e.clone());
        }
        match &s.value {
            Slot::Encoded(b) => Ok(b.clone()),
            Slot::Deferred(_) => Err(TaskError::new(
                TaskErrorKind::ResultUnavailable,
                "the result could not be fetched",
            )
            .in_run(RunCell::name(self))),
            Slot::Value(v) => {
                let encode = self.fns.encode.ok_or_else(|| {
                    TaskError::new(
                        TaskErrorKind::Runner,
                        format!(
                            "its result of type `{}` cannot be serialized to reach another process",
                            self.fns.type_name
                        ),
                    )
                    .in_run(RunCell::name(self))
                })?;
                encode(v).map(Bytes::from).map_err(|e| {
                    TaskError::new(
                        TaskErrorKind::Runner,
                        format!("encoding its result failed: {e}"),
                    )
                    .in_run(RunCell::name(self))
                })
            }
            Slot::Taken(gone) => Err(TaskError::new(
                TaskErrorKind::ResultUnavailable,
                gone.why(self.fns.type_name),
            )
            .in_run(RunCell::name(self))),
            Slot::Empty => Err(TaskError::new(
                TaskErrorKind::ResultUnavailable,
                "the run has no result",
            )
            .in_run(RunCell::name(self))),
        }
    }
    fn cache_key(&self) -> Option<&str> {
        self.cache_key.get().map(|id| &*id.key)
    }
    fn cache_id(&self) -> Option<&crate::cache::CacheId> {
        self.cache_key.get()
    }

    fn fail_dyn(self: Arc<Self>, error: TaskError) -> bool {
        self.fail(error)
    }

    fn flow_run_id(&self) -> &str {
        &self.flow.id
    }
}

/// A type-erased handle on a task run: its id, name and state, and a way to
/// wait for it. Get one from a future with [`RunRef::from`], for example to
/// pass runs of different result types to `wait_for`.
///
/// ```
/// # use flowrun_core::{RunRef, TaskFuture};
/// fn erase<T: Send + 'static>(future: &TaskFuture<T>) -> RunRef {
///     RunRef::from(future)
/// }
/// ```
#[derive(Clone)]
pub struct RunRef(pub(crate) Arc<dyn AnyRun>);

impl RunRef {
    /// The run's id.
    pub fn id(&self) -> RunId {
        self.0.id()
    }

    /// The run's place in the graph as it was submitted, for runners that
    /// order work as Dask does: a run with upstreams ranks with its latest
    /// upstream (so a dependent of an early run goes before independent
    /// runs submitted later); a run without ranks by its id. Lower first.
    pub fn order(&self) -> u64 {
        self.0.order()
    }

    /// The run's name, such as `shout-3`.
    pub fn name(&self) -> String {
        self.0.name()
    }

    /// The name `task_run_name` gave the run, if any; without one its
    /// name is `<task name>-<index>`. Lets an observer keep the name
    /// without formatting it on the run's thread.
    pub fn custom_name(&self) -> Option<&str> {
        self.0.custom_name()
    }

    /// The name of the task this is a run of.
    pub fn task_name(&self) -> &str {
        self.0.task_name()
    }

    /// The run's number among the runs of its task in its flow run (the `3`
    /// of `shout-3`).
    pub fn index(&self) -> u64 {
        self.0.index()
    }

    /// The registry key of the task (see [`crate::task::registry`]).
    pub fn task_key(&self) -> &'static str {
        self.0.task_key()
    }

    /// The run's current state.
    pub fn state(&self) -> State {
        self.0.state()
    }

    /// The run's failure, once it failed.
    pub fn error(&self) -> Option<TaskError> {
        self.0.error()
    }

    /// Blocks until the run is final.
    pub fn wait(&self) {
        self.0.block_until_final(None);
    }

    /// How many attempts the run made so far.
    pub fn attempts(&self) -> u32 {
        self.0.attempts()
    }

    /// How long its last attempt ran, once it is final.
    pub fn duration(&self) -> Option<Duration> {
        self.0.duration()
    }

    /// Where it ran, as the runner names it (a worker address, for example).
    pub fn location(&self) -> Option<Arc<str>> {
        self.0.location()
    }

    /// The result encoded for another process, once the run completed.
    pub fn encoded_result(&self) -> Result<Bytes, TaskError> {
        self.0.encoded_result()
    }

    /// Its cache key, when its result is cached (`cache_policy`,
    /// `cache_key_fn`): the same key in two runs means the same result.
    pub fn cache_key(&self) -> Option<&str> {
        self.0.cache_key()
    }

    /// Calls `callback` once the run is final (at once if it already is).
    pub fn on_final(&self, callback: impl FnOnce() + Send + 'static) {
        self.0.on_final(Box::new(callback))
    }

    /// Counts a failure of this run as handled. For runners that deliver a
    /// run's outcome to code elsewhere that reads it.
    pub fn mark_handled(&self) {
        self.0.mark_observed()
    }

    /// The id of the flow run (or subflow run) the run belongs to: task
    /// run names restart in each flow run, so a runner that names runs on
    /// a shared scheduler needs both. Empty for the run a task hook gets on
    /// a worker process.
    pub fn flow_run_id(&self) -> &str {
        self.0.flow_run_id()
    }
}

impl fmt::Debug for RunRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunRef")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}

#[cfg(test)]
mod sequence_hasher_tests {
    use std::hash::BuildHasher;

    use super::*;

    fn hash(id: u64) -> u64 {
        std::hash::BuildHasherDefault::<SequenceHasher>::default().hash_one(RunId::from_raw(id))
    }

    #[test]
    fn neighbouring_run_ids_get_neighbouring_slots_and_varied_tags() {
        let base = 1_000_000;
        let mask = (1 << 17) - 1;
        for i in 0..1000 {
            assert_eq!(hash(base + i) & mask, (base + i) & mask, "id {}", base + i);
        }
        let tags: std::collections::HashSet<u64> =
            (0..1000).map(|i| hash(base + i) >> 57).collect();
        assert!(tags.len() > 64, "only {} distinct tags", tags.len());
    }
}

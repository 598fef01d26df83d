//! Concurrency limits, as Prefect 3 has them: tag limits on task runs,
//! named limits held around a block of code, and rate limits.
//!
//! **Tag limits.** A task declared with `tags = ["db"]` runs only while it
//! holds a slot of the tag limit `db`, if one is set: at most `slots` runs
//! with that tag are running at once, on every runner and across every
//! worker of a cluster. Set one for the whole process with
//! [`set_tag_limit`], for one flow with `#[flow(concurrency_limits = [("db",
//! 3)])]`, or for a runner (`ThreadPoolTaskRunner::with_tag_limit`,
//! `DaskTaskRunner::tag_limit`). A run waiting for a slot is in the
//! Pending-type state `AwaitingConcurrencySlot` ([`AWAITING_CONCURRENCY_SLOT`])
//! and logs once why it waits.
//!
//! ```
//! use flowrun_core::concurrency;
//!
//! concurrency::set_tag_limit("db", 3).unwrap();
//! assert_eq!(concurrency::tag_limit("db").unwrap().slots, 3);
//! // A limit of 0 would block every run that needs it: an error instead.
//! assert!(concurrency::set_tag_limit("db", 0).is_err());
//! concurrency::remove_tag_limit("db");
//! ```
//!
//! **Named limits** guard code inside a task or a flow: [`concurrency`]
//! (blocking) and [`concurrency_async`] take slots of a limit set with
//! [`set_limit`] and hold them until the returned [`ConcurrencySlot`] is
//! dropped. **Rate limits** ([`set_rate_limit`], then [`rate_limit`]) hand
//! out slots that are never given back but free themselves at a steady
//! rate: at most `per_second` calls a second on average, with a burst of
//! that many.
//!
//! ```
//! use flowrun_core::concurrency::{self, concurrency};
//!
//! concurrency::set_limit("warehouse", 2).unwrap();
//! {
//!     let _slot = concurrency("warehouse", 1).unwrap();
//!     assert_eq!(concurrency::limit("warehouse").unwrap().active, 1);
//! } // released here
//! assert_eq!(concurrency::limit("warehouse").unwrap().active, 0);
//! // Asking for more slots than the limit has can never succeed: an error.
//! assert!(concurrency("warehouse", 3).is_err());
//! ```
//!
//! # Design
//!
//! Every slot lives in the flow's process, in one table (`registry`
//! module): a run's slots are taken there by the engine before its attempt
//! is handed to the runner, and released when the attempt ends however it
//! ends (completed, failed, panicked, timed out, crashed, cancelled), so
//! the limit holds across every worker of any runner without the runner's
//! help, the real Dask bridge included. A run of the thread runner that
//! timed out keeps its slot until its code actually returns (threads cannot
//! be stopped), so the limit counts code that really runs. A run waiting
//! for its slot waits in the flow process, never on a worker, and holds
//! nothing (not even its upstream runs' data on a cluster: a run with
//! limited tags waits for its upstream runs in the flow process).
//!
//! Guards in task code on a worker process ask the flow process through a
//! [`SlotProvider`], which the runner installs in its workers (the local
//! cluster's workers ask over their link to the scheduler, which takes the
//! slots here and gives back those of a worker that dies). On a real Dask
//! cluster the task processes cannot reach this process: there each named
//! limit that applies to the flow run ([`limits_for`]) is a Dask semaphore
//! on the scheduler, shared by every task of the flow run on every worker,
//! whose leases the task process refreshes while it holds them (a dead
//! process's leases expire by Dask's lease timeout). Guards in the flow's
//! own code count in this process, apart from that semaphore. Rate limits
//! in task code on a real Dask cluster fail with a clear
//! [`ConcurrencyErrorKind::Unavailable`] error, never silently unlimited.
//! Tag limits hold on every cluster (they are taken here).
//!
//! A limit of 0 is refused when set, and a request for more slots than the
//! limit has fails at once: neither can hang.

mod registry;
pub(crate) mod tags;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use registry::{registry, Admission, Permit, Ticket};

use crate::flow::scope::FlowHandle;
use crate::plumbing::{lock, wait};

/// The name of the Pending-type state of a run waiting for a slot of a
/// concurrency limit (as in Prefect).
pub const AWAITING_CONCURRENCY_SLOT: &str = "AwaitingConcurrencySlot";

/// What went wrong with a concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConcurrencyErrorKind {
    /// No limit of that name is set.
    UnknownLimit,
    /// The limit's value is invalid (0 slots, a rate that is not positive).
    InvalidLimit,
    /// The request asks for 0 slots or more slots than the limit has.
    TooManySlots,
    /// Limits cannot be reached from here (task code on a real Dask cluster).
    Unavailable,
}

/// A concurrency limit could not be set or taken; the message names the
/// limit and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConcurrencyError {
    kind: ConcurrencyErrorKind,
    message: String,
}

impl ConcurrencyError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ConcurrencyErrorKind, message: impl Into<String>) -> ConcurrencyError {
        ConcurrencyError {
            kind,
            message: message.into(),
        }
    }

    /// The kind of error.
    pub fn kind(&self) -> ConcurrencyErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A limit and how much of it is in use.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LimitStatus {
    /// Its number of slots.
    pub slots: u32,
    /// Slots held now (rounded up for a rate limit, whose slots decay).
    pub active: u32,
    /// Requests waiting for slots.
    pub waiting: usize,
    /// For a rate limit: slots freed per second.
    pub per_second: Option<f64>,
}

fn status(s: registry::Snapshot) -> LimitStatus {
    LimitStatus {
        slots: s.slots,
        active: s.active.ceil() as u32,
        waiting: s.waiting,
        per_second: s.per_second,
    }
}

fn tag_name(tag: &str) -> String {
    format!("tag:{tag}")
}

/// Sets the limit `name` for every flow run of this process: at most
/// `slots` slots held at once by [`concurrency`] guards. Changing a limit
/// keeps the slots in use.
pub fn set_limit(name: &str, slots: u32) -> Result<(), ConcurrencyError> {
    registry().set(None, name, slots, None)
}

/// Sets the tag limit `tag` for every flow run of this process: at most
/// `slots` task runs tagged `tag` running at once.
pub fn set_tag_limit(tag: &str, slots: u32) -> Result<(), ConcurrencyError> {
    registry().set(None, &tag_name(tag), slots, None)
}

/// Sets the rate limit `name`: [`rate_limit`] lets `per_second` calls
/// through per second on average, at most `per_second` (at least 1) at once.
pub fn set_rate_limit(name: &str, per_second: f64) -> Result<(), ConcurrencyError> {
    let burst = if per_second.is_finite() && per_second >= 1.0 {
        per_second.floor().min(f64::from(u32::MAX)) as u32
    } else {
        1
    };
    registry().set(None, name, burst, Some(per_second))
}

/// Removes the limit `name` of the process; runs waiting only for it go
/// ahead. Returns whether it was set.
pub fn remove_limit(name: &str) -> bool {
    registry().remove(None, name)
}

/// Removes the tag limit `tag` of the process. Returns whether it was set.
pub fn remove_tag_limit(tag: &str) -> bool {
    registry().remove(None, &tag_name(tag))
}

/// The limit `name` that applies here (the current flow run's, else the
/// process's), if any.
pub fn limit(name: &str) -> Option<LimitStatus> {
    let scope = current_scope();
    registry().snapshot(scope.as_ref(), name).map(status)
}

/// The tag limit `tag` that applies here, if any.
pub fn tag_limit(tag: &str) -> Option<LimitStatus> {
    limit(&tag_name(tag))
}

fn current_scope() -> Option<Arc<str>> {
    crate::exec::context::current_flow()
        .filter(|f| !f.is_detached())
        .map(|f| Arc::from(f.id.as_str()))
}

/// The limits of one flow run (and its subflows), which win over the
/// process's. Runners set theirs in [`TaskRunner::start`](crate::TaskRunner::start).
#[derive(Debug, Clone)]
pub struct FlowLimits {
    scope: Arc<str>,
}

/// The limits of the flow run `flow`.
pub fn flow_limits(flow: &FlowHandle) -> FlowLimits {
    FlowLimits {
        scope: Arc::from(flow.0.id.as_str()),
    }
}

impl FlowLimits {
    /// Sets the named limit `name` for this flow run.
    pub fn set_limit(&self, name: &str, slots: u32) -> Result<(), ConcurrencyError> {
        registry().set(Some(self.scope.clone()), name, slots, None)
    }

    /// Sets the tag limit `tag` for this flow run.
    pub fn set_tag_limit(&self, tag: &str, slots: u32) -> Result<(), ConcurrencyError> {
        registry().set(Some(self.scope.clone()), &tag_name(tag), slots, None)
    }

    /// Sets each `(tag, slots)` of `limits` as a tag limit for this flow
    /// run, in order; the first that is refused stops it with its error.
    /// What a runner does in `start` with the tag limits it was built with.
    pub fn set_tag_limits(&self, limits: &[(String, u32)]) -> Result<(), ConcurrencyError> {
        limits
            .iter()
            .try_for_each(|(tag, slots)| self.set_tag_limit(tag, *slots))
    }

    /// The limit `name` that applies to this flow run's runs.
    pub fn limit(&self, name: &str) -> Option<LimitStatus> {
        registry().snapshot(Some(&self.scope), name).map(status)
    }

    /// The tag limit `tag` that applies to this flow run's runs.
    pub fn tag_limit(&self, tag: &str) -> Option<LimitStatus> {
        self.limit(&tag_name(tag))
    }

    /// The task runs of this flow run waiting for slots of their tags,
    /// with why: `(run name, reason)`.
    pub fn waiting(&self) -> Vec<(String, String)> {
        registry()
            .waiting(&self.scope)
            .into_iter()
            .map(|(run, why)| (run.to_string(), why))
            .collect()
    }
}

/// A named limit (not a tag limit) that applies to a flow run's runs, as
/// [`limits_for`] lists them for a runner that enforces them in task code
/// elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppliedLimit {
    /// The limit's name.
    pub name: String,
    /// The flow run that sets it, or `None` for a limit of the whole
    /// process.
    pub set_by: Option<String>,
    /// Its number of slots.
    pub slots: u32,
    /// Whether it is a rate limit ([`set_rate_limit`]).
    pub rate: bool,
}

/// The named limits that apply to the runs of flow run `flow_run_id`: its
/// own, its parent flow runs', the process's; for each name the innermost.
/// For runners whose task code runs where this process's limits cannot be
/// asked (a real Dask cluster's workers enforce them with Dask semaphores).
/// An empty id gives the process's limits.
///
/// ```
/// use flowrun_core::concurrency;
///
/// concurrency::set_limit("limits-for-doc", 2).unwrap();
/// let all = concurrency::limits_for("");
/// let limit = all.iter().find(|l| l.name == "limits-for-doc").unwrap();
/// assert_eq!((limit.slots, limit.set_by.as_deref(), limit.rate), (2, None, false));
/// ```
pub fn limits_for(flow_run_id: &str) -> Vec<AppliedLimit> {
    let scope: Option<Arc<str>> = (!flow_run_id.is_empty()).then(|| Arc::from(flow_run_id));
    registry()
        .applying(scope.as_ref())
        .into_iter()
        .map(|(name, set_by, slots, rate)| AppliedLimit {
            name: name.to_string(),
            set_by: set_by.map(|s| s.to_string()),
            slots,
            rate,
        })
        .collect()
}

/// Opens the scope of a flow run's own limits; closed when dropped.
pub(crate) struct ScopeGuard(Arc<str>);

pub(crate) fn open_scope(flow: &crate::flow::registry::FlowShared) -> ScopeGuard {
    let id: Arc<str> = Arc::from(flow.id.as_str());
    let parent = flow.links.parent().map(|p| Arc::from(p.flow.id.as_str()));
    registry().open_scope(id.clone(), parent);
    ScopeGuard(id)
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        registry().close_scope(&self.0);
    }
}

/// What kind of slots a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKind {
    /// Slots held until released ([`concurrency`]).
    Held,
    /// One slot of a rate limit, never released ([`rate_limit`]).
    Rate,
}

/// Where task code in a worker process asks for slots: the flow's process,
/// through the runner's link. A runner whose workers run task code in other
/// processes installs one there with [`set_provider`].
pub trait SlotProvider: Send + Sync + 'static {
    /// Blocks until `occupy` slots of limit `name` are held for this
    /// process; returns a lease to [`release`](SlotProvider::release) (a
    /// [`SlotKind::Rate`] lease is never released).
    fn acquire(&self, name: &str, occupy: u32, kind: SlotKind) -> Result<u64, ConcurrencyError>;

    /// Gives back the slots of `lease`.
    fn release(&self, lease: u64);
}

static PROVIDER: OnceLock<Box<dyn SlotProvider>> = OnceLock::new();

/// Sends this process's slot requests to `provider` (a worker process of a
/// cluster). Set once; later calls are ignored and return false.
pub fn set_provider(provider: impl SlotProvider) -> bool {
    PROVIDER.set(Box::new(provider)).is_ok()
}

/// Makes every slot request of this process fail at once with `why`
/// ([`ConcurrencyErrorKind::Unavailable`]): for processes that run task
/// code but cannot reach the flow's limits, which must not run unlimited.
pub fn set_unavailable(why: &'static str) -> bool {
    struct Refuse(&'static str);
    impl SlotProvider for Refuse {
        fn acquire(&self, name: &str, _: u32, _: SlotKind) -> Result<u64, ConcurrencyError> {
            Err(ConcurrencyError::new(
                ConcurrencyErrorKind::Unavailable,
                format!(
                    "cannot take a slot of concurrency limit '{name}': {}",
                    self.0
                ),
            ))
        }
        fn release(&self, _: u64) {}
    }
    set_provider(Refuse(why))
}

/// Slots held by a [`concurrency`] guard; released when dropped.
#[must_use = "the slots are released as soon as the guard is dropped"]
pub struct ConcurrencySlot {
    name: Arc<str>,
    occupy: u32,
    held: Held,
}

enum Held {
    Local(#[allow(dead_code)] Permit),
    Provider(u64),
    Nothing,
}

impl ConcurrencySlot {
    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many slots are held.
    pub fn occupy(&self) -> u32 {
        self.occupy
    }
}

impl Drop for ConcurrencySlot {
    fn drop(&mut self) {
        if let Held::Provider(lease) = std::mem::replace(&mut self.held, Held::Nothing) {
            if let Some(p) = PROVIDER.get() {
                p.release(lease);
            }
        }
    }
}

crate::__debug_fields!(ConcurrencySlot { name, occupy });

/// Takes `occupy` slots of the limit `name` (the current flow run's, else
/// the process's), waiting as long as it takes; they are held until the
/// returned guard is dropped.
///
/// An unknown limit, 0 slots or more slots than the limit has are errors,
/// returned at once. Waiting gives the thread's place away (the thread
/// runner starts another thread; a cluster worker takes another task).
pub fn concurrency(name: &str, occupy: u32) -> Result<ConcurrencySlot, ConcurrencyError> {
    acquire_blocking(name, occupy, SlotKind::Held)
}

/// Waits for a slot of the rate limit `name` (see [`set_rate_limit`]).
pub fn rate_limit(name: &str) -> Result<(), ConcurrencyError> {
    acquire_blocking(name, 1, SlotKind::Rate).map(drop)
}

fn acquire_blocking(
    name: &str,
    occupy: u32,
    kind: SlotKind,
) -> Result<ConcurrencySlot, ConcurrencyError> {
    if let Some(p) = PROVIDER.get() {
        let lease = crate::exec::pool::blocking(|| p.acquire(name, occupy, kind))?;
        return Ok(ConcurrencySlot {
            name: Arc::from(name),
            occupy,
            held: match kind {
                SlotKind::Held => Held::Provider(lease),
                SlotKind::Rate => Held::Nothing,
            },
        });
    }
    let cell: Arc<(Mutex<Option<Permit>>, Condvar)> = Arc::default();
    let waiter = cell.clone();
    let admission = request(current_scope().as_ref(), name, occupy, kind, move |p| {
        *lock(&waiter.0) = Some(p);
        waiter.1.notify_all();
    })?;
    let permit = match admission {
        Admission::Free => Permit::empty(),
        Admission::Granted(p) => p,
        Admission::Queued(..) => crate::exec::pool::blocking(|| {
            let mut slot = lock(&cell.0);
            loop {
                if let Some(p) = slot.take() {
                    break p;
                }
                slot = wait(&cell.1, slot);
            }
        }),
    };
    Ok(slot(name, occupy, kind, permit))
}

fn slot(name: &str, occupy: u32, kind: SlotKind, permit: Permit) -> ConcurrencySlot {
    ConcurrencySlot {
        name: Arc::from(name),
        occupy,
        held: match kind {
            SlotKind::Held => Held::Local(permit),
            SlotKind::Rate => {
                // Rate slots decay on their own; nothing to give back.
                std::mem::forget(permit);
                Held::Nothing
            }
        },
    }
}

fn request(
    scope: Option<&Arc<str>>,
    name: &str,
    occupy: u32,
    kind: SlotKind,
    grant: impl FnOnce(Permit) + Send + 'static,
) -> Result<Admission, ConcurrencyError> {
    let admission = registry().request(scope, &[(name, occupy)], false, None, Box::new(grant))?;
    if let (SlotKind::Held, Admission::Granted(_) | Admission::Queued(..)) = (kind, &admission) {
        return Ok(admission);
    }
    if kind == SlotKind::Rate {
        let rate = registry()
            .snapshot(scope, name)
            .is_some_and(|s| s.per_second.is_some());
        if !rate {
            if let Admission::Queued(t, _) = admission {
                registry().cancel(t);
            }
            return Err(ConcurrencyError::new(
                ConcurrencyErrorKind::InvalidLimit,
                format!(
                    "'{name}' is a concurrency limit, not a rate limit: use concurrency(\"{name}\", n), \
                     or set it with set_rate_limit"
                ),
            ));
        }
    }
    Ok(admission)
}

/// The async form of [`concurrency`]: resolves to the guard once the slots
/// are held, without blocking a thread.
pub fn concurrency_async(name: &str, occupy: u32) -> SlotFuture {
    SlotFuture::new(name, occupy, SlotKind::Held)
}

/// The async form of [`rate_limit`].
pub async fn rate_limit_async(name: &str) -> Result<(), ConcurrencyError> {
    SlotFuture::new(name, 1, SlotKind::Rate).await.map(drop)
}

/// Resolves to a [`ConcurrencySlot`] once the slots are held (see
/// [`concurrency_async`]). Dropped before, it stops waiting and takes none.
#[must_use = "futures do nothing unless awaited"]
pub struct SlotFuture {
    name: Arc<str>,
    occupy: u32,
    kind: SlotKind,
    state: FutState,
}

enum FutState {
    Start,
    Waiting(Ticket, Arc<Mutex<(Option<Permit>, Option<Waker>)>>),
    Provider(
        std::sync::mpsc::Receiver<Result<u64, ConcurrencyError>>,
        Arc<Mutex<Option<Waker>>>,
    ),
    Done,
}

impl SlotFuture {
    fn new(name: &str, occupy: u32, kind: SlotKind) -> SlotFuture {
        SlotFuture {
            name: Arc::from(name),
            occupy,
            kind,
            state: FutState::Start,
        }
    }
}

crate::__debug_fields!(SlotFuture { name, occupy, .. });

impl Future for SlotFuture {
    type Output = Result<ConcurrencySlot, ConcurrencyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &this.state {
                FutState::Start => {
                    if let Some(p) = PROVIDER.get() {
                        let _ = p;
                        // A request to the provider blocks: wait for it on a thread.
                        let (tx, rx) = std::sync::mpsc::channel();
                        let waker: Arc<Mutex<Option<Waker>>> =
                            Arc::new(Mutex::new(Some(cx.waker().clone())));
                        let w = waker.clone();
                        let (name, occupy, kind) = (this.name.clone(), this.occupy, this.kind);
                        std::thread::spawn(move || {
                            let r = PROVIDER
                                .get()
                                .expect("set before")
                                .acquire(&name, occupy, kind);
                            let _ = tx.send(r);
                            if let Some(w) = lock(&w).take() {
                                w.wake();
                            }
                        });
                        this.state = FutState::Provider(rx, waker);
                        continue;
                    }
                    let shared: Arc<Mutex<(Option<Permit>, Option<Waker>)>> =
                        Arc::new(Mutex::new((None, Some(cx.waker().clone()))));
                    let s = shared.clone();
                    let admission = request(
                        current_scope().as_ref(),
                        &this.name,
                        this.occupy,
                        this.kind,
                        move |p| {
                            let waker = {
                                let mut g = lock(&s);
                                g.0 = Some(p);
                                g.1.take()
                            };
                            if let Some(w) = waker {
                                w.wake();
                            }
                        },
                    );
                    match admission {
                        Err(e) => {
                            this.state = FutState::Done;
                            return Poll::Ready(Err(e));
                        }
                        Ok(Admission::Free) => {
                            this.state = FutState::Done;
                            return Poll::Ready(Ok(slot(
                                &this.name,
                                this.occupy,
                                this.kind,
                                Permit::empty(),
                            )));
                        }
                        Ok(Admission::Granted(p)) => {
                            this.state = FutState::Done;
                            return Poll::Ready(Ok(slot(&this.name, this.occupy, this.kind, p)));
                        }
                        Ok(Admission::Queued(t, _)) => {
                            this.state = FutState::Waiting(t, shared);
                        }
                    }
                }
                FutState::Waiting(_, shared) => {
                    let mut g = lock(shared);
                    if let Some(p) = g.0.take() {
                        drop(g);
                        this.state = FutState::Done;
                        return Poll::Ready(Ok(slot(&this.name, this.occupy, this.kind, p)));
                    }
                    g.1 = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                FutState::Provider(rx, waker) => {
                    *lock(waker) = Some(cx.waker().clone());
                    match rx.try_recv() {
                        Ok(r) => {
                            this.state = FutState::Done;
                            return Poll::Ready(r.map(|lease| ConcurrencySlot {
                                name: this.name.clone(),
                                occupy: this.occupy,
                                held: match this.kind {
                                    SlotKind::Held => Held::Provider(lease),
                                    SlotKind::Rate => Held::Nothing,
                                },
                            }));
                        }
                        Err(std::sync::mpsc::TryRecvError::Empty) => return Poll::Pending,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            this.state = FutState::Done;
                            return Poll::Ready(Err(ConcurrencyError::new(
                                ConcurrencyErrorKind::Unavailable,
                                "the request for slots was lost",
                            )));
                        }
                    }
                }
                FutState::Done => panic!("SlotFuture polled after it completed"),
            }
        }
    }
}

impl Drop for SlotFuture {
    fn drop(&mut self) {
        if let FutState::Waiting(ticket, shared) =
            std::mem::replace(&mut self.state, FutState::Done)
        {
            if !registry().cancel(ticket) {
                // Granted meanwhile: give the slots back.
                drop(lock(&shared).0.take());
            }
        }
    }
}

/// A request for slots made for someone else (a worker's task), answered
/// later: see [`request_for`].
#[derive(Debug)]
pub enum SlotRequest {
    /// Held at once.
    Granted(ConcurrencySlot),
    /// Queued: the callback gets the slots. Cancel to stop waiting.
    Queued(QueuedRequest),
}

/// A queued [`SlotRequest`].
#[derive(Debug)]
pub struct QueuedRequest(Ticket);

impl QueuedRequest {
    /// Stops waiting; returns false if the slots were granted already.
    pub fn cancel(self) -> bool {
        registry().cancel(self.0)
    }
}

/// Takes `occupy` slots of limit `name` for the flow run `flow` (for a
/// runner serving a worker's [`SlotProvider`]): at once, or later through
/// `on_grant`, which then runs on some thread.
pub fn request_for(
    flow: Option<&FlowHandle>,
    name: &str,
    occupy: u32,
    kind: SlotKind,
    on_grant: impl FnOnce(ConcurrencySlot) + Send + 'static,
) -> Result<SlotRequest, ConcurrencyError> {
    let scope: Option<Arc<str>> = flow.map(|f| Arc::from(f.0.id.as_str()));
    let owned: Arc<str> = Arc::from(name);
    let n2 = owned.clone();
    let admission = request(scope.as_ref(), name, occupy, kind, move |p| {
        on_grant(slot(&n2, occupy, kind, p))
    })?;
    Ok(match admission {
        Admission::Free => SlotRequest::Granted(slot(name, occupy, kind, Permit::empty())),
        Admission::Granted(p) => SlotRequest::Granted(slot(name, occupy, kind, p)),
        Admission::Queued(t, _) => SlotRequest::Queued(QueuedRequest(t)),
    })
}

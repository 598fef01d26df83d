//! Concurrency slots for task code on worker processes
//! (`flowrun::concurrency::concurrency` and `rate_limit`).
//!
//! The slots of every limit live in the flow's process. A worker process
//! installs a [`SlotProvider`] that asks the scheduler over the worker's
//! link and waits for the answer; the scheduler takes the slots in the
//! flow run's limits ([`Leases`]) and holds them for the worker until it
//! says it released them, or until the worker is lost (its process died or
//! its connection ended): then every slot it held, and every request it was
//! waiting on, goes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_channel::Sender;
use flowrun_core::concurrency::{
    self, ConcurrencyError, ConcurrencyErrorKind, ConcurrencySlot, QueuedRequest, SlotKind,
    SlotProvider, SlotRequest,
};
use flowrun_core::plumbing::lock;
use serde::{Deserialize, Serialize};

use super::wire::{ToWorker, ToWorkerOut};
use super::worker::Outgoing;

/// A worker's request about slots.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SlotAsk {
    /// Take `occupy` slots of `name` for request `id` (answered with a
    /// [`SlotAnswer`] once held).
    Acquire {
        id: u64,
        name: String,
        occupy: u32,
        rate: bool,
    },
    /// Give back the slots of request `id`.
    Release(u64),
}

/// The scheduler's answer to [`SlotAsk::Acquire`]: held, or why not.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SlotAnswer {
    id: u64,
    /// The error's kind (see `kind_code`) and message.
    result: Result<(), (u8, String)>,
}

fn kind_code(k: ConcurrencyErrorKind) -> u8 {
    match k {
        ConcurrencyErrorKind::UnknownLimit => 0,
        ConcurrencyErrorKind::InvalidLimit => 1,
        ConcurrencyErrorKind::TooManySlots => 2,
        _ => 3,
    }
}

fn code_kind(c: u8) -> ConcurrencyErrorKind {
    match c {
        0 => ConcurrencyErrorKind::UnknownLimit,
        1 => ConcurrencyErrorKind::InvalidLimit,
        2 => ConcurrencyErrorKind::TooManySlots,
        _ => ConcurrencyErrorKind::Unavailable,
    }
}

// ---- the worker's side -------------------------------------------------

type Reply = crossbeam_channel::Sender<Result<(), ConcurrencyError>>;

/// A worker process's way to the flow's slots.
struct WorkerSlots {
    out: Sender<Outgoing>,
    next: AtomicU64,
    waiting: Mutex<Option<HashMap<u64, Reply>>>,
}

static WORKER: OnceLock<Arc<WorkerSlots>> = OnceLock::new();

/// Makes task code in this worker process ask the scheduler for slots.
pub(super) fn install(out: Sender<Outgoing>) {
    let slots = Arc::new(WorkerSlots {
        out,
        next: AtomicU64::new(1),
        waiting: Mutex::new(Some(HashMap::new())),
    });
    if WORKER.set(slots.clone()).is_ok() {
        concurrency::set_provider(Provider(slots));
    }
}

/// Delivers the scheduler's answer.
pub(super) fn answer(a: SlotAnswer) {
    let Some(w) = WORKER.get() else { return };
    let reply = lock(&w.waiting).as_mut().and_then(|m| m.remove(&a.id));
    if let Some(r) = reply {
        let _ = r.send(
            a.result
                .map_err(|(c, m)| ConcurrencyError::new(code_kind(c), m)),
        );
    }
}

/// The scheduler is gone: nobody waiting will get slots.
pub(super) fn scheduler_gone() {
    let Some(w) = WORKER.get() else { return };
    let waiting = lock(&w.waiting).take().unwrap_or_default();
    for (_, r) in waiting {
        let _ = r.send(Err(ConcurrencyError::new(
            ConcurrencyErrorKind::Unavailable,
            "the worker lost its scheduler while waiting for a concurrency slot",
        )));
    }
}

struct Provider(Arc<WorkerSlots>);

impl SlotProvider for Provider {
    fn acquire(&self, name: &str, occupy: u32, kind: SlotKind) -> Result<u64, ConcurrencyError> {
        let w = &self.0;
        let id = w.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        match lock(&w.waiting).as_mut() {
            Some(m) => {
                m.insert(id, tx);
            }
            None => {
                return Err(ConcurrencyError::new(
                    ConcurrencyErrorKind::Unavailable,
                    "the worker lost its scheduler",
                ))
            }
        }
        let ask = SlotAsk::Acquire {
            id,
            name: name.to_owned(),
            occupy,
            rate: kind == SlotKind::Rate,
        };
        if w.out.send(Outgoing::Slots(ask)).is_err() {
            lock(&w.waiting).as_mut().map(|m| m.remove(&id));
            return Err(ConcurrencyError::new(
                ConcurrencyErrorKind::Unavailable,
                "the worker lost its scheduler",
            ));
        }
        match rx.recv() {
            Ok(r) => r.map(|()| id),
            Err(_) => Err(ConcurrencyError::new(
                ConcurrencyErrorKind::Unavailable,
                "the worker lost its scheduler while waiting for a concurrency slot",
            )),
        }
    }

    fn release(&self, lease: u64) {
        let _ = self.0.out.send(Outgoing::Slots(SlotAsk::Release(lease)));
    }
}

// ---- the scheduler's side ----------------------------------------------

enum Lease {
    /// Asked, the answer not known yet.
    Asking,
    Waiting(QueuedRequest),
    Held(#[allow(dead_code)] ConcurrencySlot),
}

/// The slots the scheduler holds for its workers, by (worker, request).
#[derive(Default, Clone)]
pub(crate) struct Leases(Arc<Mutex<HashMap<(u32, u64), Lease>>>);

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("count", &lock(&self.0).len())
            .finish()
    }
}

impl Leases {
    /// Handles a worker's request; answers go through `writer`.
    pub(super) fn ask(
        &self,
        worker: u32,
        ask: SlotAsk,
        flow: Option<&flowrun_core::FlowHandle>,
        writer: Option<Sender<ToWorkerOut>>,
    ) {
        let (id, name, occupy, rate) = match ask {
            SlotAsk::Release(id) => {
                let gone = lock(&self.0).remove(&(worker, id));
                if let Some(Lease::Waiting(q)) = gone {
                    q.cancel();
                }
                return;
            }
            SlotAsk::Acquire {
                id,
                name,
                occupy,
                rate,
            } => (id, name, occupy, rate),
        };
        let reply = move |result: Result<(), ConcurrencyError>| {
            if let Some(w) = &writer {
                let _ = w.send(ToWorker::Slots(SlotAnswer {
                    id,
                    result: result.map_err(|e| (kind_code(e.kind()), e.message().to_owned())),
                }));
            }
        };
        let kind = if rate { SlotKind::Rate } else { SlotKind::Held };
        lock(&self.0).insert((worker, id), Lease::Asking);
        let leases = self.clone();
        let on_grant_reply = reply.clone();
        let request = concurrency::request_for(flow, &name, occupy, kind, move |slot| {
            // Granted later: keep it only if the worker still waits.
            let mut map = lock(&leases.0);
            match map.get(&(worker, id)) {
                Some(Lease::Asking | Lease::Waiting(_)) => {
                    map.insert((worker, id), Lease::Held(slot));
                    drop(map);
                    on_grant_reply(Ok(()));
                }
                _ => {
                    drop(map);
                    drop(slot);
                }
            }
        });
        match request {
            Err(e) => {
                lock(&self.0).remove(&(worker, id));
                reply(Err(e));
            }
            Ok(SlotRequest::Granted(slot)) => {
                let mut map = lock(&self.0);
                if let Some(lease) = map.get_mut(&(worker, id)) {
                    *lease = Lease::Held(slot);
                    drop(map);
                    reply(Ok(()));
                }
            }
            Ok(SlotRequest::Queued(q)) => {
                let mut map = lock(&self.0);
                match map.get(&(worker, id)) {
                    Some(Lease::Asking) => {
                        map.insert((worker, id), Lease::Waiting(q));
                    }
                    // Granted meanwhile, or the worker is gone.
                    Some(_) => {}
                    None => {
                        drop(map);
                        q.cancel();
                    }
                }
            }
        }
    }

    /// The worker is lost: its slots go back, its requests stop waiting.
    pub(super) fn worker_gone(&self, worker: u32) {
        let gone: Vec<Lease> = {
            let mut map = lock(&self.0);
            let keys: Vec<(u32, u64)> = map.keys().filter(|k| k.0 == worker).copied().collect();
            keys.into_iter().filter_map(|k| map.remove(&k)).collect()
        };
        for lease in gone {
            if let Lease::Waiting(q) = lease {
                q.cancel();
            }
        }
    }
}

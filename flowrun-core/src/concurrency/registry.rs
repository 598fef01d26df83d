//! The table of limits of this process and the queue of requests waiting
//! for slots. One mutex guards both, so that a request for several limits
//! (a run with two limited tags) takes all of its slots at once or none.
//!
//! Requests are served first come, first served per limit: once a request
//! cannot be granted, later requests that share a limit with it wait behind
//! it, so a request for many slots is never starved by a stream of small
//! ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{ConcurrencyError, ConcurrencyErrorKind};
use crate::plumbing::lock;

/// Where a limit is set: for every flow run of the process, or for one flow
/// run (and its subflows).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// The flow run id, or `None` for a limit of the whole process.
    pub(crate) scope: Option<Arc<str>>,
    /// The limit's name; tag limits are named `tag:<tag>`, as in Prefect.
    pub(crate) name: Arc<str>,
}

#[derive(Debug)]
struct Limit {
    slots: u32,
    /// Slots in use; fractional for rate limits, whose slots decay.
    active: f64,
    /// Slots freed per second without a release (rate limits).
    decay: Option<f64>,
    updated: Instant,
}

impl Limit {
    fn refresh(&mut self, now: Instant) {
        if let Some(decay) = self.decay {
            let freed = decay * now.saturating_duration_since(self.updated).as_secs_f64();
            self.active = (self.active - freed).max(0.0);
        }
        self.updated = now;
    }

    fn fits(&self, n: u32) -> bool {
        self.active + f64::from(n) <= f64::from(self.slots) + 1e-9
    }

    /// When `n` slots will be free by decay alone.
    fn free_at(&self, n: u32, now: Instant) -> Option<Instant> {
        let decay = self.decay?;
        let missing = self.active + f64::from(n) - f64::from(self.slots);
        Some(now + Duration::from_secs_f64((missing / decay).max(0.0) + 1e-4))
    }
}

type Grant = Box<dyn FnOnce(Permit) + Send>;

struct Waiter {
    ticket: u64,
    wants: Vec<(Key, u32)>,
    grant: Grant,
    /// The flow run and the run that wait, and why, for status displays.
    label: Option<(Option<Arc<str>>, Arc<str>, String)>,
}

#[derive(Default)]
struct Inner {
    limits: HashMap<Key, Limit>,
    /// Flow run id -> its parent flow run's id.
    parents: HashMap<Arc<str>, Option<Arc<str>>>,
    queue: VecDeque<Waiter>,
    next_ticket: u64,
    wake_at: Option<Instant>,
}

/// The limits of this process.
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        inner: Mutex::new(Inner::default()),
    })
}

/// Slots held; dropping it releases them (rate-limit slots decay instead).
#[must_use = "the slots are released when the permit is dropped"]
pub(crate) struct Permit {
    held: Vec<(Key, u32)>,
}

impl Permit {
    pub(crate) fn empty() -> Permit {
        Permit { held: Vec::new() }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            registry().release(std::mem::take(&mut self.held));
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("held", &self.held).finish()
    }
}

/// A queued request: cancel it to stop waiting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(pub(crate) u64);

/// What a request asks for, resolved against the table.
pub(crate) enum Admission {
    /// No limit applies: go ahead, nothing is held.
    Free,
    /// Granted at once.
    Granted(Permit),
    /// Queued: `grant` runs when the slots are free.
    Queued(Ticket, String),
}

/// A limit as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) slots: u32,
    pub(crate) active: f64,
    pub(crate) waiting: usize,
    pub(crate) per_second: Option<f64>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    pub(crate) fn set(
        &self,
        scope: Option<Arc<str>>,
        name: &str,
        slots: u32,
        decay: Option<f64>,
    ) -> Result<(), ConcurrencyError> {
        if slots == 0 {
            return Err(ConcurrencyError::new(
                ConcurrencyErrorKind::InvalidLimit,
                format!(
                    "concurrency limit '{}' must allow at least 1 slot; a limit of 0 would block \
                     every run that needs it forever (remove the limit instead)",
                    display(name)
                ),
            ));
        }
        if let Some(d) = decay {
            if !(d.is_finite() && d > 0.0) {
                return Err(ConcurrencyError::new(
                    ConcurrencyErrorKind::InvalidLimit,
                    format!(
                        "rate limit '{name}' needs a positive, finite rate per second, not {d}"
                    ),
                ));
            }
        }
        let key = Key {
            scope,
            name: Arc::from(name),
        };
        let now = Instant::now();
        {
            let mut inner = self.lock();
            let limit = inner.limits.entry(key).or_insert(Limit {
                slots,
                active: 0.0,
                decay,
                updated: now,
            });
            limit.refresh(now);
            limit.slots = slots;
            limit.decay = decay;
        }
        // A larger limit may let waiters in.
        self.pump();
        Ok(())
    }

    pub(crate) fn remove(&self, scope: Option<Arc<str>>, name: &str) -> bool {
        let removed = self
            .lock()
            .limits
            .remove(&Key {
                scope,
                name: Arc::from(name),
            })
            .is_some();
        // Requests that waited for it are served again: those that no
        // longer need any slot go ahead.
        self.pump();
        removed
    }

    pub(crate) fn snapshot(&self, scope: Option<&Arc<str>>, name: &str) -> Option<Snapshot> {
        let now = Instant::now();
        let mut inner = self.lock();
        let key = resolve(&inner, scope, name)?;
        let waiting = inner
            .queue
            .iter()
            .filter(|w| w.wants.iter().any(|(k, _)| *k == key))
            .count();
        let limit = inner.limits.get_mut(&key)?;
        limit.refresh(now);
        Some(Snapshot {
            slots: limit.slots,
            active: limit.active,
            waiting,
            per_second: limit.decay,
        })
    }

    /// Every limit that applies to a run of flow run `scope` (for each
    /// name the innermost, as [`resolve`] finds it), tag limits left out:
    /// `(name, the scope that sets it, slots, whether it is a rate limit)`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn applying(
        &self,
        scope: Option<&Arc<str>>,
    ) -> Vec<(Arc<str>, Option<Arc<str>>, u32, bool)> {
        let inner = self.lock();
        let mut names: Vec<Arc<str>> = inner
            .limits
            .keys()
            .filter(|k| !k.name.starts_with("tag:"))
            .map(|k| k.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let key = resolve(&inner, scope, &name)?;
                let limit = inner.limits.get(&key)?;
                Some((name, key.scope, limit.slots, limit.decay.is_some()))
            })
            .collect()
    }

    /// Declares flow run `id` (child of `parent`): its own limits apply to
    /// its runs first, then its parent's, then the process's.
    pub(crate) fn open_scope(&self, id: Arc<str>, parent: Option<Arc<str>>) {
        self.lock().parents.insert(id, parent);
    }

    /// Flow run `id` ended: its own limits go.
    pub(crate) fn close_scope(&self, id: &str) {
        {
            let mut inner = self.lock();
            inner.parents.remove(id);
            inner.limits.retain(|k, _| k.scope.as_deref() != Some(id));
        }
        self.pump();
    }

    /// Asks for `wants` (limit name, slots) in `scope`. Names without a
    /// limit are skipped when `skip_unknown` (tags); otherwise they are an
    /// error. `grant` runs (on some thread) when a queued request is
    /// granted; it is dropped unrun if the request fails or is cancelled.
    pub(crate) fn request(
        &self,
        scope: Option<&Arc<str>>,
        wants: &[(&str, u32)],
        skip_unknown: bool,
        label: Option<(Option<Arc<str>>, Arc<str>)>,
        grant: Grant,
    ) -> Result<Admission, ConcurrencyError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut resolved: Vec<(Key, u32)> = Vec::with_capacity(wants.len());
        for &(name, n) in wants {
            let Some(key) = resolve(&inner, scope, name) else {
                if skip_unknown {
                    continue;
                }
                return Err(ConcurrencyError::new(
                    ConcurrencyErrorKind::UnknownLimit,
                    format!(
                        "no concurrency limit named '{name}' is set; set it first with \
                         flowrun::concurrency::set_limit(\"{name}\", slots) (or \
                         set_rate_limit for a rate limit)"
                    ),
                ));
            };
            let limit = &inner.limits[&key];
            if n == 0 {
                return Err(ConcurrencyError::new(
                    ConcurrencyErrorKind::TooManySlots,
                    format!("asked for 0 slots of concurrency limit '{}'", display(name)),
                ));
            }
            if n > limit.slots {
                return Err(ConcurrencyError::new(
                    ConcurrencyErrorKind::TooManySlots,
                    format!(
                        "asked for {n} slots of concurrency limit '{}', which has only {}: \
                         the request could never be granted",
                        display(name),
                        limit.slots
                    ),
                ));
            }
            match resolved.iter_mut().find(|(k, _)| *k == key) {
                Some((_, m)) => *m += n,
                None => resolved.push((key, n)),
            }
        }
        if resolved.is_empty() {
            return Ok(Admission::Free);
        }
        // Served in order: only when nobody waits for these limits.
        let behind = inner.queue.iter().any(|w| {
            w.wants
                .iter()
                .any(|(k, _)| resolved.iter().any(|(r, _)| r == k))
        });
        if !behind && take(&mut inner, &resolved, now) {
            return Ok(Admission::Granted(Permit::held(&resolved)));
        }
        let reason = waiting_reason(&mut inner, &resolved, now);
        inner.next_ticket += 1;
        let ticket = inner.next_ticket;
        inner.queue.push_back(Waiter {
            ticket,
            wants: resolved,
            grant,
            label: label.map(|(flow, run)| (flow, run, reason.clone())),
        });
        drop(inner);
        // A decaying limit frees slots on its own: arrange a wake-up.
        self.pump();
        Ok(Admission::Queued(Ticket(ticket), reason))
    }

    /// Stops waiting. Returns whether the request was still queued.
    pub(crate) fn cancel(&self, ticket: Ticket) -> bool {
        let removed = {
            let mut inner = self.lock();
            let before = inner.queue.len();
            let dropped: Vec<Waiter> = {
                let (keep, gone): (VecDeque<Waiter>, VecDeque<Waiter>) =
                    std::mem::take(&mut inner.queue)
                        .into_iter()
                        .partition(|w| w.ticket != ticket.0);
                inner.queue = keep;
                gone.into_iter().collect()
            };
            let removed = inner.queue.len() != before;
            drop(inner);
            drop(dropped);
            removed
        };
        if removed {
            // Requests queued behind it may go now.
            self.pump();
        }
        removed
    }

    /// The runs of flow run `scope` waiting for slots, with why.
    pub(crate) fn waiting(&self, scope: &str) -> Vec<(Arc<str>, String)> {
        self.lock()
            .queue
            .iter()
            .filter_map(|w| match &w.label {
                Some((Some(flow), run, why)) if &**flow == scope => {
                    Some((run.clone(), why.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn release(&self, held: Vec<(Key, u32)>) {
        {
            let now = Instant::now();
            let mut inner = self.lock();
            for (key, n) in held {
                if let Some(limit) = inner.limits.get_mut(&key) {
                    if limit.decay.is_none() {
                        limit.refresh(now);
                        limit.active = (limit.active - f64::from(n)).max(0.0);
                    }
                }
            }
        }
        self.pump();
    }

    /// Grants what can be granted, in order; arranges a wake-up for slots
    /// that free themselves (rate limits).
    pub(crate) fn pump(&self) {
        let now = Instant::now();
        let mut granted: Vec<(Grant, Permit)> = Vec::new();
        let mut wake: Option<Instant> = None;
        {
            let mut inner = self.lock();
            let mut blocked: HashSet<Key> = HashSet::new();
            let mut i = 0;
            while i < inner.queue.len() {
                // A limit removed since the request was queued no longer applies.
                let limits = &inner.limits;
                let wants: Vec<(Key, u32)> = inner.queue[i]
                    .wants
                    .iter()
                    .filter(|(k, _)| limits.contains_key(k))
                    .cloned()
                    .collect();
                let free = wants.iter().all(|(k, _)| !blocked.contains(k));
                if free && take(&mut inner, &wants, now) {
                    let w = inner.queue.remove(i).expect("index in range");
                    granted.push((w.grant, Permit::held(&wants)));
                    continue;
                }
                for (k, n) in &wants {
                    if let Some(at) = inner.limits.get(k).and_then(|l| l.free_at(*n, now)) {
                        wake = Some(wake.map_or(at, |w: Instant| w.min(at)));
                    }
                    blocked.insert(k.clone());
                }
                i += 1;
            }
            match wake {
                Some(at) if inner.wake_at.is_none_or(|w| w <= now || at < w) => {
                    inner.wake_at = Some(at);
                }
                _ => wake = None,
            }
        }
        if let Some(at) = wake {
            crate::exec::timer::schedule(at, move || {
                registry().lock().wake_at = None;
                registry().pump();
            });
        }
        for (grant, permit) in granted {
            grant(permit);
        }
    }
}

impl Permit {
    fn held(wants: &[(Key, u32)]) -> Permit {
        Permit {
            // Rate-limit slots are not given back: they decay.
            held: wants.to_vec(),
        }
    }
}

/// The limit `name` applies to a run of flow run `scope`: the innermost
/// flow run that sets it, else the process's.
fn resolve(inner: &Inner, scope: Option<&Arc<str>>, name: &str) -> Option<Key> {
    let mut at = scope.cloned();
    let name: Arc<str> = Arc::from(name);
    let mut hops = 0;
    while let Some(id) = at {
        let key = Key {
            scope: Some(id.clone()),
            name: name.clone(),
        };
        if inner.limits.contains_key(&key) {
            return Some(key);
        }
        at = inner.parents.get(&id).cloned().flatten();
        hops += 1;
        if hops > 1000 {
            break;
        }
    }
    let key = Key { scope: None, name };
    inner.limits.contains_key(&key).then_some(key)
}

/// Takes the slots if every limit has room.
fn take(inner: &mut Inner, wants: &[(Key, u32)], now: Instant) -> bool {
    for (k, n) in wants {
        let Some(limit) = inner.limits.get_mut(k) else {
            continue;
        };
        limit.refresh(now);
        if !limit.fits(*n) {
            return false;
        }
    }
    for (k, n) in wants {
        if let Some(limit) = inner.limits.get_mut(k) {
            limit.active += f64::from(*n);
        }
    }
    true
}

fn waiting_reason(inner: &mut Inner, wants: &[(Key, u32)], now: Instant) -> String {
    let full: Vec<String> = wants
        .iter()
        .filter_map(|(k, n)| {
            let limit = inner.limits.get_mut(k)?;
            limit.refresh(now);
            if limit.fits(*n) {
                // Free, but others queued first.
                return Some(format!(
                    "'{}' (queued behind earlier requests)",
                    display(&k.name)
                ));
            }
            Some(match limit.decay {
                Some(rate) => format!("'{}' (rate limit of {rate}/s)", display(&k.name)),
                None => format!(
                    "'{}' ({} of {} slots in use)",
                    display(&k.name),
                    limit.active.round(),
                    limit.slots
                ),
            })
        })
        .collect();
    format!(
        "waiting for a slot of concurrency limit {}",
        full.join(" and ")
    )
}

/// `tag:db` shows as `tag 'db'`-ish text in messages: keep the prefix, it
/// is the limit's name.
fn display(name: &str) -> &str {
    name
}

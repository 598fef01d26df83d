//! Concurrency guards in task code on a real Dask cluster
//! (`flowrun::concurrency::concurrency` and its async form), enforced with
//! Dask's own semaphores.
//!
//! Task processes cannot reach the flow's process, where its limits live.
//! So the flow sends, with each task, the named limits that apply to the
//! task's flow run (`LimitSpec`, in the task header), and a guard in task
//! code takes leases of a Dask semaphore on the scheduler (its
//! `SemaphoreExtension`: `semaphore_register`, `semaphore_acquire`,
//! `semaphore_release`, `semaphore_refresh_leases`) named after the limit
//! and the flow run (or flow process) that sets it. Every task of the flow
//! run on every worker shares it, and Dask's own clients see it
//! (`distributed.Semaphore(name=...)`, `semaphore_value`).
//!
//! A lease lives as long as it is refreshed: the task process refreshes
//! its leases every [`REFRESH`] while it holds them, and releases them when
//! the guard is dropped, and, at the latest, when the task ends (however it
//! ends). A task process that dies stops refreshing, and Dask lets its
//! leases go after [`LEASE_TIMEOUT`].
//!
//! Dask leases are single slots; a guard of `n > 1` slots takes them one at
//! a time while holding the limit's *gate* (a second semaphore of one
//! lease), so that two such guards never each hold part of what they need
//! and wait for each other forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

use flowrun_core::concurrency::{ConcurrencyError, ConcurrencyErrorKind, SlotKind, SlotProvider};
use flowrun_core::plumbing::lock;
use rmpv::Value;
use serde::{Deserialize, Serialize};

use crate::protocol::{ProtocolError, Security};

/// How long Dask keeps a lease that is not refreshed (Dask's default
/// `distributed.scheduler.locks.lease-timeout`).
pub(crate) const LEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a task process refreshes the leases it holds.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);

/// How long one acquire request waits on the scheduler before it is asked
/// again (so a request never outlives its task process by long).
const ACQUIRE_POLL: Duration = Duration::from_secs(2);

/// How long one call to the scheduler may take, beyond its own wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A named limit as task code on a worker takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LimitSpec {
    /// The limit's name in the flow.
    pub name: String,
    /// The Dask semaphore that enforces it.
    pub semaphore: String,
    /// Its slots (the semaphore's `max_leases`).
    pub slots: u32,
    /// A rate limit, which Dask has no counterpart for.
    pub rate: bool,
}

/// The named limits that apply to the runs of flow run `flow_run_id`, for
/// the header of its tasks.
pub(crate) fn limits_for(flow_run_id: &str) -> Vec<LimitSpec> {
    flowrun_core::concurrency::limits_for(flow_run_id)
        .into_iter()
        .map(|l| LimitSpec {
            semaphore: semaphore_name(&l.name, l.set_by.as_deref()),
            name: l.name,
            slots: l.slots,
            rate: l.rate,
        })
        .collect()
}

/// `flowrun-<limit>-<8 hex digits of the flow run that sets it>`, or of
/// this process for a limit of the whole process: limits of the same name
/// in two flow programs are two limits, as they are on every runner.
fn semaphore_name(name: &str, set_by: Option<&str>) -> String {
    static PROCESS: OnceLock<String> = OnceLock::new();
    let owner = match set_by.and_then(super::flow_tag) {
        Some(tag) => tag,
        None => PROCESS
            .get_or_init(|| format!("{:08x}", fastrand::u32(..)))
            .clone(),
    };
    format!("flowrun-{name}-{owner}")
}

/// The limits of the task this process runs now.
static CURRENT: Mutex<Vec<LimitSpec>> = Mutex::new(Vec::new());

/// Bumped when a task ends: a lease granted after its task ended is given
/// back at once.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// A task starts: its guards take the limits it was sent.
pub(crate) fn begin_task(limits: Vec<LimitSpec>) {
    *lock(&CURRENT) = limits;
}

/// The task ended: leases its guards still hold (a guard leaked or moved
/// to a thread that outlives the task) go back now.
pub(crate) fn end_task() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    lock(&CURRENT).clear();
    if let Some(slots) = PROVIDER.get() {
        let leftover: Vec<u64> = lock(&slots.held).keys().copied().collect();
        for lease in leftover {
            slots.release(lease);
        }
    }
}

static PROVIDER: OnceLock<&'static DaskSlots> = OnceLock::new();

/// Makes guards in this task process's code take Dask semaphores on the
/// scheduler at `scheduler`.
pub(crate) fn install(scheduler: Option<String>, security: Security) {
    let slots: &'static DaskSlots = Box::leak(Box::new(DaskSlots {
        scheduler,
        security,
        idle: Mutex::new(Vec::new()),
        held: Mutex::new(HashMap::new()),
        registered: Mutex::new(Vec::new()),
        next: AtomicU64::new(1),
        refresher: Once::new(),
    }));
    if PROVIDER.set(slots).is_ok() {
        flowrun_core::concurrency::set_provider(Provider(slots));
    }
}

struct Provider(&'static DaskSlots);

impl SlotProvider for Provider {
    fn acquire(&self, name: &str, occupy: u32, kind: SlotKind) -> Result<u64, ConcurrencyError> {
        self.0.acquire(name, occupy, kind)
    }

    fn release(&self, lease: u64) {
        self.0.release(lease)
    }
}

/// Leases of one guard.
struct Held {
    semaphore: String,
    ids: Vec<String>,
}

struct DaskSlots {
    scheduler: Option<String>,
    security: Security,
    /// Connections to the scheduler not in use.
    idle: Mutex<Vec<crate::protocol::Connection>>,
    /// Guard -> its leases.
    held: Mutex<HashMap<u64, Held>>,
    /// Semaphores registered by this process, with their size.
    registered: Mutex<Vec<(String, u32)>>,
    next: AtomicU64,
    refresher: Once,
}

fn unavailable(message: String) -> ConcurrencyError {
    ConcurrencyError::new(ConcurrencyErrorKind::Unavailable, message)
}

impl DaskSlots {
    fn acquire(&self, name: &str, occupy: u32, kind: SlotKind) -> Result<u64, ConcurrencyError> {
        let generation = GENERATION.load(Ordering::Acquire);
        let spec = lock(&CURRENT)
            .iter()
            .find(|l| l.name == name)
            .cloned()
            .ok_or_else(|| {
                ConcurrencyError::new(
                    ConcurrencyErrorKind::UnknownLimit,
                    format!(
                        "no concurrency limit named '{name}' is set for this flow run; set it \
                         first in the flow's process with flowrun::concurrency::set_limit(\"{name}\", \
                         slots)"
                    ),
                )
            })?;
        if spec.rate || kind == SlotKind::Rate {
            return Err(unavailable(format!(
                "cannot take a slot of '{name}': rate limits are not available in task code on \
                 a real Dask cluster (concurrency limits are)"
            )));
        }
        if occupy == 0 || occupy > spec.slots {
            return Err(ConcurrencyError::new(
                ConcurrencyErrorKind::TooManySlots,
                format!(
                    "asked for {occupy} slots of concurrency limit '{name}', which has {}: the \
                     request could never be granted",
                    spec.slots
                ),
            ));
        }
        let fail = |e: ProtocolError| {
            unavailable(format!(
                "cannot take a slot of concurrency limit '{name}' from the Dask scheduler: {e}"
            ))
        };
        self.register(&spec.semaphore, spec.slots).map_err(fail)?;
        let lease = self.next.fetch_add(1, Ordering::Relaxed);
        let mut held = Held {
            semaphore: spec.semaphore.clone(),
            ids: Vec::new(),
        };
        let taken = if occupy == 1 {
            self.take_one(&spec.semaphore, lease, &mut held)
        } else {
            let gate = format!("{}-gate", spec.semaphore);
            self.register(&gate, 1).map_err(fail)?;
            let mut gate_held = Held {
                semaphore: gate.clone(),
                ids: Vec::new(),
            };
            // The gate is a lease too, refreshed while it is held.
            let gate_lease = self.next.fetch_add(1, Ordering::Relaxed);
            let taken = self
                .take_one(&gate, gate_lease, &mut gate_held)
                .and_then(|()| {
                    (0..occupy).try_for_each(|_| self.take_one(&spec.semaphore, lease, &mut held))
                });
            self.release(gate_lease);
            taken
        };
        if let Err(e) = taken {
            self.release(lease);
            return Err(fail(e));
        }
        if GENERATION.load(Ordering::Acquire) != generation {
            // Nobody waits for these any more.
            self.release(lease);
            return Err(unavailable(format!(
                "the task ended while it waited for concurrency limit '{name}'"
            )));
        }
        Ok(lease)
    }

    /// Waits for one lease of `semaphore`, recorded under guard `lease`
    /// as soon as it is granted (so it is refreshed, and released with the
    /// guard).
    fn take_one(&self, semaphore: &str, lease: u64, held: &mut Held) -> Result<(), ProtocolError> {
        let id = format!(
            "flowrun-{}-{lease}-{}-{:08x}",
            std::process::id(),
            held.ids.len(),
            fastrand::u32(..)
        );
        loop {
            let reply = self.call(
                "semaphore_acquire",
                vec![
                    ("name", semaphore.into()),
                    ("timeout", ACQUIRE_POLL.as_secs_f64().into()),
                    ("lease_id", id.as_str().into()),
                ],
                ACQUIRE_POLL,
            )?;
            if reply.as_bool() == Some(true) {
                break;
            }
        }
        held.ids.push(id);
        let mut all = lock(&self.held);
        let entry = all.entry(lease).or_insert_with(|| Held {
            semaphore: held.semaphore.clone(),
            ids: Vec::new(),
        });
        entry.ids = held.ids.clone();
        drop(all);
        self.refresher.call_once(|| {
            let _ = std::thread::Builder::new()
                .name("flowrun-dask-leases".into())
                .spawn(|| loop {
                    std::thread::sleep(REFRESH);
                    if let Some(slots) = PROVIDER.get() {
                        slots.refresh();
                    }
                });
        });
        Ok(())
    }

    /// Registers `semaphore` with `slots` leases, once per process.
    fn register(&self, semaphore: &str, slots: u32) -> Result<(), ProtocolError> {
        if lock(&self.registered)
            .iter()
            .any(|(s, n)| s == semaphore && *n == slots)
        {
            return Ok(());
        }
        self.call(
            "semaphore_register",
            vec![
                ("name", semaphore.into()),
                ("max_leases", slots.into()),
                ("lease_timeout", LEASE_TIMEOUT.as_secs_f64().into()),
            ],
            Duration::ZERO,
        )
        .map_err(|e| match e {
            ProtocolError::Scheduler { text, .. } if text.contains("Inconsistent max leases") => {
                ProtocolError::Scheduler {
                    op: "semaphore_register".into(),
                    text: format!(
                        "the limit now has {slots} slots, but its Dask semaphore '{semaphore}' \
                         was made with another number; a limit keeps its size on a real Dask \
                         cluster while flows use it ({text})"
                    ),
                }
            }
            e => e,
        })?;
        lock(&self.registered).push((semaphore.to_owned(), slots));
        Ok(())
    }

    /// Gives back the leases of guard `lease`.
    fn release(&self, lease: u64) {
        let Some(held) = lock(&self.held).remove(&lease) else {
            return;
        };
        for id in held.ids {
            let released = self.call(
                "semaphore_release",
                vec![
                    ("name", held.semaphore.as_str().into()),
                    ("lease_id", id.as_str().into()),
                ],
                Duration::ZERO,
            );
            if let Err(e) = released {
                // It expires on the scheduler by itself.
                tracing::debug!(target: "flowrun_dask", "releasing lease {id} of {}: {e}", held.semaphore);
            }
        }
    }

    /// Tells the scheduler the leases held are still in use.
    fn refresh(&self) {
        let mut by_semaphore: HashMap<String, Vec<String>> = HashMap::new();
        for held in lock(&self.held).values() {
            by_semaphore
                .entry(held.semaphore.clone())
                .or_default()
                .extend(held.ids.iter().cloned());
        }
        for (semaphore, ids) in by_semaphore {
            let refreshed = self.call(
                "semaphore_refresh_leases",
                vec![
                    ("name", semaphore.as_str().into()),
                    (
                        "lease_ids",
                        Value::Array(ids.iter().map(|i| i.as_str().into()).collect()),
                    ),
                ],
                Duration::ZERO,
            );
            if let Err(e) = refreshed {
                tracing::warn!(target: "flowrun_dask", "refreshing the leases of Dask semaphore {semaphore}: {e}");
            }
        }
    }

    /// One call to the scheduler, on an idle connection or a new one;
    /// `wait` is how long the scheduler may hold the answer back.
    fn call(
        &self,
        op: &'static str,
        args: Vec<(&'static str, Value)>,
        wait: Duration,
    ) -> Result<Value, ProtocolError> {
        let address = self
            .scheduler
            .clone()
            .ok_or_else(|| ProtocolError::Closed {
                reason: "the worker did not say where its scheduler is".into(),
            })?;
        let conn = lock(&self.idle).pop();
        let security = self.security.clone();
        let done = super::block_on(
            async move {
                let mut conn = match conn {
                    Some(conn) => conn,
                    None => {
                        let tls = match address.starts_with("tls://") {
                            true => Some(security.connector(&address)?),
                            false => None,
                        };
                        crate::protocol::Connection::open(&address, tls.as_ref()).await?
                    }
                };
                let reply = conn.call(op, args).await?.body;
                Ok::<_, ProtocolError>((conn, reply))
            },
            wait + CALL_TIMEOUT,
        );
        match done {
            Some(Ok((conn, reply))) => {
                lock(&self.idle).push(conn);
                Ok(reply)
            }
            Some(Err(e)) => Err(e),
            None => Err(ProtocolError::Closed {
                reason: format!(
                    "no answer to {op} within {}s",
                    (wait + CALL_TIMEOUT).as_secs()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semaphores_are_named_after_the_limit_and_who_sets_it() {
        let flow = semaphore_name("db", Some("1a2b3c4d-0000-4000-8000-000000000000"));
        assert_eq!(flow, "flowrun-db-1a2b3c4d");
        let process = semaphore_name("db", None);
        assert!(process.starts_with("flowrun-db-"), "{process}");
        assert_eq!(process, semaphore_name("db", None), "one per process");
        assert_ne!(process, flow);
    }
}

//! Tag limits on task runs: the slots one run holds, per attempt, and the
//! rules that give them back on every way an attempt ends.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::registry::{registry, Admission, Permit, Ticket};
use super::{ConcurrencyError, AWAITING_CONCURRENCY_SLOT};
use crate::flow::registry::FlowShared;
use crate::plumbing::lock;
use crate::run::record::RunCell;
use crate::run::state::StateKind;

/// The tag slots of one task run.
pub(crate) struct RunSlots {
    /// `tag:<tag>` for each of the run's tags.
    names: Box<[String]>,
    scope: Option<Arc<str>>,
    /// Slots held, per attempt.
    held: Mutex<Vec<(u32, Permit)>>,
    /// The attempt whose code runs on a thread of this process now (0: none).
    in_body: AtomicU32,
    gate: Mutex<Gate>,
    said: AtomicBool,
}

#[derive(Default)]
struct Gate {
    requesting: bool,
    early: Option<Permit>,
    queued: Option<Ticket>,
}

/// What [`RunSlots::admit`] decided.
pub(crate) enum Admit {
    /// The attempt may go: its slots are held (or none applies).
    Go,
    /// The attempt waits; `grant` launches it later.
    Wait,
}

impl RunSlots {
    /// The slots of a run with `tags` in `flow`, or `None` when no tag has
    /// a limit (most runs), which keeps the engine's path unchanged.
    pub(crate) fn new(flow: &FlowShared, tags: &[Cow<'static, str>]) -> Option<Box<RunSlots>> {
        if tags.is_empty() {
            return None;
        }
        let scope: Option<Arc<str>> = (!flow.is_detached()).then(|| Arc::from(flow.id.as_str()));
        let names: Box<[String]> = tags.iter().map(|t| super::tag_name(t)).collect();
        if !names
            .iter()
            .any(|n| registry().snapshot(scope.as_ref(), n).is_some())
        {
            return None;
        }
        Some(Box::new(RunSlots {
            names,
            scope,
            held: Mutex::new(Vec::new()),
            in_body: AtomicU32::new(0),
            gate: Mutex::new(Gate::default()),
            said: AtomicBool::new(false),
        }))
    }

    /// Takes the slots of `attempt` or queues for them. `grant` is called
    /// (on some thread) once queued slots are granted; it must call
    /// [`RunSlots::granted`].
    pub(crate) fn admit<T: Send + 'static>(
        &self,
        cell: &Arc<RunCell<T>>,
        attempt: u32,
        grant: impl FnOnce(Permit) + Send + 'static,
    ) -> Result<Admit, ConcurrencyError> {
        let wants: Vec<(&str, u32)> = self.names.iter().map(|n| (n.as_str(), 1)).collect();
        lock(&self.gate).requesting = true;
        let label = (self.scope.clone(), Arc::from(cell.name().as_str()));
        let result = registry().request(
            self.scope.as_ref(),
            &wants,
            true,
            Some(label),
            Box::new(grant),
        );
        let mut g = lock(&self.gate);
        g.requesting = false;
        let admission = result?;
        match admission {
            Admission::Free => Ok(Admit::Go),
            Admission::Granted(p) => {
                drop(g);
                self.hold(cell, attempt, p);
                Ok(Admit::Go)
            }
            Admission::Queued(ticket, reason) => {
                if let Some(p) = g.early.take() {
                    drop(g);
                    self.hold(cell, attempt, p);
                    return Ok(Admit::Go);
                }
                g.queued = Some(ticket);
                // Under the gate: a grant on another thread waits until the
                // run says it waits, so it never goes back to Pending after
                // it started.
                let entered = cell.transition_named(
                    StateKind::Pending,
                    Some(AWAITING_CONCURRENCY_SLOT),
                    Some(Arc::from(reason.as_str())),
                    attempt.saturating_sub(1),
                );
                drop(g);
                if entered && !self.said.swap(true, Ordering::AcqRel) {
                    crate::run_event!(
                        tracing::Level::INFO,
                        format!("Task run '{}'", cell.name()),
                        "{AWAITING_CONCURRENCY_SLOT}: {reason}"
                    );
                }
                Ok(Admit::Wait)
            }
        }
    }

    /// Called by the `grant` of [`RunSlots::admit`]. Returns whether the
    /// caller launches the attempt now: false when `admit` is still running
    /// (it takes the permit and goes at once) or the run ended meanwhile.
    pub(crate) fn granted<T: Send + 'static>(
        &self,
        cell: &Arc<RunCell<T>>,
        attempt: u32,
        permit: Permit,
    ) -> bool {
        let mut g = lock(&self.gate);
        g.queued = None;
        if g.requesting {
            g.early = Some(permit);
            return false;
        }
        drop(g);
        self.hold(cell, attempt, permit)
    }

    /// Keeps `permit` for `attempt`; returns false (and gives it back) when
    /// the run ended meanwhile.
    fn hold<T: Send + 'static>(
        &self,
        cell: &Arc<RunCell<T>>,
        attempt: u32,
        permit: Permit,
    ) -> bool {
        lock(&self.held).push((attempt, permit));
        // The run may have ended (cancelled) while its slots were granted:
        // its final-state callback may have run before the push.
        if cell.is_final() {
            self.release(attempt);
            return false;
        }
        true
    }

    /// Gives back the slots of `attempt`.
    pub(crate) fn release(&self, attempt: u32) {
        let gone: Vec<(u32, Permit)> = {
            let mut held = lock(&self.held);
            let (gone, keep) = std::mem::take(&mut *held)
                .into_iter()
                .partition(|(a, _)| *a == attempt);
            *held = keep;
            gone
        };
        drop(gone);
    }

    /// The attempt's code starts on this thread.
    pub(crate) fn enter_body(&self, attempt: u32) {
        self.in_body.store(attempt, Ordering::Release);
    }

    /// The attempt's code returned: its slots go back.
    pub(crate) fn exit_body(&self, attempt: u32) {
        let _ = self
            .in_body
            .compare_exchange(attempt, 0, Ordering::AcqRel, Ordering::Acquire);
        self.release(attempt);
    }

    /// The run is final: stop waiting, and give back every slot except
    /// those of code still running on a thread (a timed-out attempt keeps
    /// its slots until it returns).
    pub(crate) fn run_final(&self) {
        if let Some(t) = lock(&self.gate).queued.take() {
            registry().cancel(t);
        }
        let body = self.in_body.load(Ordering::Acquire);
        let gone: Vec<(u32, Permit)> = {
            let mut held = lock(&self.held);
            let (keep, gone) = std::mem::take(&mut *held)
                .into_iter()
                .partition(|(a, _)| body != 0 && *a == body);
            *held = keep;
            gone
        };
        drop(gone);
    }
}

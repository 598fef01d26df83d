//! Worker mode: a program started again as a worker process of a cluster
//! diverts into its worker loop when it reaches its first flow call, before
//! any of the flow's own work runs.
//!
//! Runners that start worker processes register a [`WorkerMode`]; the
//! process is a worker when that mode's environment variable is set. The
//! variable is consumed as the process diverts: a flow that a task calls
//! inside the worker, or a program that a task starts, runs normally
//! instead of turning into another worker.

use std::sync::atomic::{AtomicBool, Ordering};

/// A way this program can run as a worker process.
#[derive(Debug)]
pub struct WorkerMode {
    /// The environment variable that selects this mode.
    pub env: &'static str,
    /// Runs the worker; never returns (the process exits at the end).
    pub run: fn() -> !,
}

inventory::collect!(WorkerMode);

/// Set once this process diverted into a worker mode.
static DIVERTED: AtomicBool = AtomicBool::new(false);

/// If this process was started as a worker, runs the worker and exits.
pub fn divert_if_worker() {
    for mode in inventory::iter::<WorkerMode> {
        if std::env::var_os(mode.env).is_none() {
            continue;
        }
        // Only the first flow call of the process diverts (two threads may
        // reach one at once).
        if DIVERTED.swap(true, Ordering::AcqRel) {
            return;
        }
        // Children of this worker (programs its tasks start) must not
        // inherit the marker. The worker reads its settings from stdin, not
        // from this variable.
        std::env::remove_var(mode.env);
        (mode.run)();
    }
}

/// Whether this process runs as a worker of some cluster (or was started
/// to become one).
pub fn is_worker() -> bool {
    DIVERTED.load(Ordering::Acquire)
        || inventory::iter::<WorkerMode>
            .into_iter()
            .any(|m| std::env::var_os(m.env).is_some())
}

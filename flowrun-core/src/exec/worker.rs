//! Worker mode: a program started again as a worker process of a cluster
//! diverts into its worker loop when it reaches its first flow call, before
//! any of the flow's own work runs.
//!
//! Runners that start worker processes register a [`WorkerMode`]; the
//! process is a worker when that mode's environment variable is set.

/// A way this program can run as a worker process.
#[derive(Debug)]
pub struct WorkerMode {
    /// The environment variable that selects this mode.
    pub env: &'static str,
    /// Runs the worker; never returns (the process exits at the end).
    pub run: fn() -> !,
}

inventory::collect!(WorkerMode);

/// If this process was started as a worker, runs the worker and exits.
pub fn divert_if_worker() {
    for mode in inventory::iter::<WorkerMode> {
        if std::env::var_os(mode.env).is_some() {
            (mode.run)();
        }
    }
}

/// Whether this process was started as a worker of some cluster.
pub fn is_worker() -> bool {
    inventory::iter::<WorkerMode>
        .into_iter()
        .any(|m| std::env::var_os(m.env).is_some())
}

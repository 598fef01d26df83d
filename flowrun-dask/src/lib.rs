//! `DaskTaskRunner` for flowrun: a flow's tasks run on a cluster of worker
//! processes x threads with Dask's scheduling semantics (priorities,
//! abstract resources, worker death handling).
//!
//! By default a flow run starts a temporary [`LocalCluster`]: a scheduler
//! inside the flow's process and worker processes, which are this program
//! started again in worker mode.
//!
//! # Worker processes run your program again
//!
//! A worker process starts this same program with the same arguments (in a
//! test binary: the same test). It becomes a worker when it reaches its
//! first flow call, before any of the flow's own work. Everything `main`
//! does before that call therefore also happens in every worker: keep
//! setup that must happen once (writing files, network calls) inside the
//! flow, or after it, or guard it with [`flowrun_core::worker::is_worker`].
//! This is the Rust form of the `if __name__ == "__main__":` guard Python
//! users write for Dask.
//!
//! # Linux only
//!
//! This crate is built on Linux interfaces: a task run on a real Dask
//! worker runs in a child that dies with its worker
//! (`prctl(PR_SET_PDEATHSIG)`) and hands over its output through `memfd`
//! files; worker memory and the machine's memory are read from `/proc`; a
//! worker program is identified by its ELF build id. On any other OS this
//! crate does not compile (a `compile_error!` says so); use `flowrun` with
//! `default-features = false` there, for flows and tasks on the thread-pool
//! and serializing runners.
#![deny(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "flowrun-dask runs on Linux only (it uses memfd, prctl and /proc); \
     on other systems depend on `flowrun` with `default-features = false`"
);

mod annotate;
mod build_id;
mod client;
mod cluster;
mod dashboard;
mod distributed;
mod local;
mod log_shipping;
pub mod protocol;
mod runner;
mod settings;

pub use annotate::{annotate, Annotate};
pub use client::{get_async_dask_client, get_dask_client, AsyncClient, Client, ClientError};
pub use cluster::{
    current_cluster, Cluster, ClusterClass, ClusterHandle, ClusterStatus, StartCluster, TaskStream,
    TaskStreamEntry, WaitingTask, WorkerStatus,
};
pub use dashboard::dashboard_link;
pub use local::LocalCluster;
pub use runner::DaskTaskRunner;
pub use settings::{
    default_shape, parse_resources, AdaptKwargs, ClientKwargs, ClusterKwargs, MemoryLimit,
    SettingsError,
};

/// The build id of this program, as workers compare it with their flow's.
pub fn build_id() -> &'static str {
    build_id::current()
}

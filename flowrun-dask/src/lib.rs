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
#![deny(missing_docs)]

mod annotate;
mod build_id;
mod client;
mod cluster;
pub mod collection;
mod dashboard;
mod distributed;
mod local;
pub mod protocol;
mod runner;
mod settings;

pub use annotate::{annotate, Annotate};
pub use client::{get_async_dask_client, get_dask_client, AsyncClient, Client, ClientError};
pub use cluster::{current_cluster, Cluster, ClusterClass, ClusterHandle, StartCluster};
pub use dashboard::dashboard_link;
pub use local::{
    ClusterStatus, LocalCluster, TaskStream, TaskStreamEntry, WaitingTask, WorkerStatus,
};
pub use runner::DaskTaskRunner;
pub use settings::{
    default_shape, parse_resources, AdaptKwargs, ClientKwargs, ClusterKwargs, MemoryLimit,
    SettingsError,
};

/// The build id of this program, as workers compare it with their flow's.
pub fn build_id() -> &'static str {
    build_id::current()
}

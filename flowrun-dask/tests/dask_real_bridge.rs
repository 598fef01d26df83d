//! The bridge to a real Dask cluster (a scheduler and stock Python workers,
//! as in `dask_real.rs`) where flow runs meet on one scheduler: the Dask
//! keys of subflows, and cancelling runs Dask already holds.
//!
//! The Dask workers run this test binary in task mode, as the current
//! test: every test begins with [`begin`].

mod common;
mod support;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use flowrun::{flow, task};
use flowrun_dask::{ClientKwargs, DaskTaskRunner};
use support::{Cluster, WorkerSpec};

fn begin() -> MutexGuard<'static, ()> {
    flowrun::worker::divert_if_worker();
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn runner(cluster: &Cluster) -> DaskTaskRunner {
    DaskTaskRunner::new()
        .address(&cluster.address)
        .client_kwargs(ClientKwargs::new().timeout(Duration::from_secs(60)))
}

// ---------------------------------------------------------------------------
// Subflows share their parent's cluster, and task run names restart in each
// flow run: the parent's `triple-0`, its child's and its grandchild's are
// three runs, each with its own result.

#[task]
fn triple(x: u64) -> u64 {
    x * 3
}

#[flow]
fn grandchild(x: u64) -> u64 {
    triple.submit(x).result().unwrap()
}

#[flow]
fn middle(x: u64) -> (u64, u64) {
    // Held while the grandchild runs its own `triple-0`.
    let own = triple.submit(x);
    let below = grandchild(x * 10).unwrap();
    (own.result().unwrap(), below)
}

#[flow]
fn top() -> (u64, (u64, u64), (u64, u64)) {
    let own = triple.submit(1);
    own.wait();
    let first = middle(2).unwrap();
    let second = middle(3).unwrap();
    (own.result().unwrap(), first, second)
}

#[test]
fn subflows_on_real_dask_keep_their_own_results() {
    let _serial = begin();
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    let got = top
        .with_runner(runner(&cluster))
        .call()
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_eq!(got, (3, (6, 60), (9, 90)));
}

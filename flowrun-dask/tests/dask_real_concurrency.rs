//! Concurrency limits on a real Dask cluster (a scheduler and stock Python
//! workers, as in `dask_real.rs`): tag limits hold across Dask workers,
//! slots come back on failure, and guards in task code, which cannot reach
//! the flow's limits there, fail with a clear error instead of running
//! unlimited.
//!
//! The Dask workers run this test binary in task mode, as the current
//! test: every test begins with [`begin`].

mod common;
mod support;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use flowrun::concurrency::{self, concurrency, AWAITING_CONCURRENCY_SLOT};
use flowrun::{flow, task, StateKind};
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

/// Records when it ran, in microseconds, and in which process.
#[task(tags = ["dask-db"])]
fn dask_query(dir: String, i: u32) -> u32 {
    common::record_span(&dir, "query", Duration::from_millis(300));
    i
}

#[task(tags = ["dask-db"])]
fn dask_sum(a: u32, b: u32) -> u32 {
    a + b
}

#[test]
fn a_tag_limit_holds_across_the_workers_of_a_real_dask_cluster() {
    let _serial = begin();
    let cluster = Cluster::start(&[WorkerSpec::threads(2), WorkerSpec::threads(2)]);
    #[flow]
    fn limited(dir: String) -> (u32, Vec<String>, u32) {
        std::fs::create_dir_all(&dir).unwrap();
        // A run learns at submission whether it waits for a slot.
        let futures: Vec<_> = (0..8).map(|i| dask_query.submit(dir.clone(), i)).collect();
        let states = futures
            .iter()
            .map(|f| f.state().name().to_owned())
            .collect();
        // A limited run with upstream runs waits for them in the flow.
        let total = dask_sum.submit(&futures[0], &futures[7]);
        let total = total.result().unwrap();
        flowrun::results(futures).unwrap();
        (
            total,
            states,
            concurrency::tag_limit("dask-db").unwrap().active,
        )
    }
    let dir = common::scratch("dask-tag-limit")
        .to_string_lossy()
        .into_owned();
    let (total, states, in_use) = limited
        .with_runner(runner(&cluster).tag_limit("dask-db", 2))
        .call(dir.clone())
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let (most, n, processes) = common::most_at_once(&dir, "query");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(total, 7);
    assert_eq!(in_use, 0);
    assert_eq!(n, 8);
    assert_eq!(most, 2, "at most 2 'dask-db' runs at once on the cluster");
    assert!(processes >= 2, "the runs spread over task processes");
    assert_eq!(
        states
            .iter()
            .filter(|s| *s == AWAITING_CONCURRENCY_SLOT)
            .count(),
        6,
        "{states:?}"
    );
}

#[task(tags = ["dask-fail"])]
fn dask_fails() -> Result<u32, String> {
    Err("refused".to_owned())
}

#[task]
fn dask_guarded() -> Result<u32, concurrency::ConcurrencyError> {
    let _slot = concurrency("dask-guard", 1)?;
    Ok(1)
}

#[test]
fn on_real_dask_a_failed_run_gives_its_slot_back_and_guards_fail_clearly() {
    let _serial = begin();
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    #[flow]
    fn failing() -> (Vec<StateKind>, u32, String) {
        let runs: Vec<_> = (0..3).map(|_| dask_fails.submit()).collect();
        let kinds = runs
            .iter()
            .map(|f| {
                let _ = f.result();
                f.state().kind()
            })
            .collect();
        let in_use = concurrency::tag_limit("dask-fail").unwrap().active;
        let guard = dask_guarded.submit().result().unwrap_err();
        (kinds, in_use, guard.message().to_owned())
    }
    concurrency::set_limit("dask-guard", 1).unwrap();
    let run = failing
        .with_runner(runner(&cluster).tag_limit("dask-fail", 1))
        .return_state();
    let (kinds, in_use, guard) = run
        .result()
        .cloned()
        .unwrap_or_else(|_| panic!("{}\n{}", run.state(), cluster.logs()));
    assert_eq!(kinds, vec![StateKind::Failed; 3]);
    assert_eq!(in_use, 0);
    assert!(
        guard.contains("cannot take a slot of concurrency limit 'dask-guard'")
            && guard.contains("not available in task code on a real Dask cluster"),
        "{guard}"
    );
    concurrency::remove_limit("dask-guard");
}

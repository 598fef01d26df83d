//! `allow_failure(future)`: the dependent runs in any case and receives
//! the upstream's outcome as a `Result`. On the thread runner and on the
//! local cluster.

use flowrun::{allow_failure, flow, task, StateKind, TaskError, TaskErrorKind};
use flowrun_dask::{ClusterKwargs, DaskTaskRunner};

fn cluster() -> DaskTaskRunner {
    DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(1).threads_per_worker(2))
}

#[task]
fn fetch(ok: bool) -> Result<u32, String> {
    if ok {
        Ok(7)
    } else {
        Err("the server is down".into())
    }
}

#[task]
fn explode() -> u32 {
    panic!("boom")
}

/// Describes what it received.
#[task]
fn report(fetched: Result<u32, TaskError>, label: String) -> String {
    match fetched {
        Ok(v) => format!("{label}: got {v}"),
        Err(e) => format!(
            "{label}: {:?} {} ({})",
            e.kind(),
            e.message(),
            e.task_run().unwrap_or("?")
        ),
    }
}

#[task]
fn plus_one(x: u32) -> u32 {
    x + 1
}

fn pipeline() -> Vec<String> {
    let good = fetch.submit(true);
    let bad = fetch.submit(false);
    let boom = explode.submit();
    let reports = vec![
        report.submit(allow_failure(&good), "good"),
        report.submit(allow_failure(bad), "bad"),
        report.submit(allow_failure(boom), "boom"),
    ];
    reports.into_iter().map(|r| r.result().unwrap()).collect()
}

fn check(label: &str, got: Vec<String>) {
    assert_eq!(got[0], "good: got 7", "{label}");
    assert_eq!(got[1], "bad: Error the server is down (fetch-1)", "{label}");
    assert!(
        got[2].starts_with("boom: Panic boom"),
        "{label}: {}",
        got[2]
    );
}

#[test]
fn a_failed_upstream_reaches_the_dependent_as_an_err() {
    #[flow]
    fn threads() -> Vec<String> {
        pipeline()
    }
    #[flow(task_runner = cluster())]
    fn local_cluster() -> Vec<String> {
        pipeline()
    }
    // The failures were passed on, so they count as handled: both flows complete.
    check("threads", threads().unwrap());
    check("local cluster", local_cluster().unwrap());
}

fn without_allow_failure() -> (StateKind, Option<TaskErrorKind>) {
    let bad = fetch.submit(false);
    let downstream = plus_one.submit(fetch.submit(false));
    let _ = bad.result();
    downstream.wait();
    (
        downstream.state().kind(),
        downstream.result().err().map(|e| e.kind().clone()),
    )
}

#[test]
fn without_allow_failure_the_dependent_still_does_not_run() {
    #[flow]
    fn threads() -> (StateKind, Option<TaskErrorKind>) {
        without_allow_failure()
    }
    #[flow(task_runner = cluster())]
    fn local_cluster() -> (StateKind, Option<TaskErrorKind>) {
        without_allow_failure()
    }
    for got in [threads().unwrap(), local_cluster().unwrap()] {
        assert_eq!(got.0, StateKind::Failed);
        assert!(
            matches!(got.1, Some(TaskErrorKind::UpstreamFailed { .. })),
            "{got:?}"
        );
    }
}

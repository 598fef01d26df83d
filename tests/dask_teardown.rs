//! A temporary cluster is closed when its flow run ends, also when the
//! flow fails or panics: no worker process outlives it.

mod common;

use std::time::Duration;

use flowrun::{flow, task};
use flowrun_dask::{current_cluster, ClusterKwargs, DaskTaskRunner};

#[task]
fn my_pid() -> u32 {
    std::process::id()
}

fn worker_pids() -> Vec<u32> {
    let status = current_cluster().unwrap().status().unwrap();
    status.workers.iter().filter_map(|w| w.pid).collect()
}

fn all_gone(pids: &[u32]) -> bool {
    common::eventually(Duration::from_secs(5), || {
        pids.iter().all(|p| !common::pid_alive(*p))
    })
}

fn runner() -> DaskTaskRunner {
    DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(2))
}

#[test]
fn no_worker_outlives_a_completed_flow() {
    #[flow(task_runner = runner())]
    fn completes() -> Vec<u32> {
        let _ = my_pid.submit().result();
        worker_pids()
    }
    let pids = completes().unwrap();
    assert_eq!(pids.len(), 2);
    assert!(
        pids.iter().all(|p| !common::pid_alive(*p)),
        "{pids:?} still alive right after the flow returned"
    );
}

#[test]
fn no_worker_outlives_a_failed_or_panicking_flow() {
    static PIDS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
    #[flow(task_runner = runner())]
    fn fails() -> Result<(), String> {
        let _ = my_pid.submit().result();
        PIDS.lock().unwrap().extend(worker_pids());
        Err("the flow failed".into())
    }
    #[flow(task_runner = runner())]
    fn panics() {
        let _ = my_pid.submit().result();
        PIDS.lock().unwrap().extend(worker_pids());
        panic!("the flow panicked");
    }
    assert!(fails().is_err());
    assert!(panics().is_err());
    let pids = PIDS.lock().unwrap().clone();
    assert_eq!(pids.len(), 4);
    assert!(all_gone(&pids), "{pids:?}");
}

#[test]
fn workers_started_by_a_task_go_with_their_worker() {
    #[task]
    // The child is left running on purpose: closing the cluster must stop it.
    #[allow(clippy::zombie_processes)]
    fn start_child() -> u32 {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        child.id()
    }
    #[flow(task_runner = runner())]
    fn leaves_a_child() -> u32 {
        start_child.submit().result().unwrap()
    }
    let child = leaves_a_child().unwrap();
    assert!(
        all_gone(&[child]),
        "a process a task started outlived the cluster"
    );
}

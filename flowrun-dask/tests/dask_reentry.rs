//! Worker processes are this program started again; they must not be
//! confused by what runs inside them (a flow called by a task, a program a
//! task starts), and they must find their way into worker mode whichever
//! thread of a test binary started the cluster.

use std::time::Duration;

use flowrun::{flow, task};
use flowrun_dask::{ClusterKwargs, DaskTaskRunner};

fn one_worker() -> DaskTaskRunner {
    DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(1).threads_per_worker(1))
}

#[task]
fn double(x: u32) -> u32 {
    x * 2
}

/// A flow with the default (thread) runner.
#[flow]
fn doubled(x: u32) -> u32 {
    double(x)
}

#[task]
fn calls_a_flow(x: u32) -> (u32, u32) {
    (doubled(x).expect("nested flow"), std::process::id())
}

#[test]
fn a_flow_called_inside_a_task_on_a_worker_runs_there_and_the_worker_lives_on() {
    #[flow(task_runner = one_worker())]
    fn outer() -> Vec<(u32, u32)> {
        let futures: Vec<_> = (0..3).map(|i| calls_a_flow.submit(i)).collect();
        flowrun::results(futures).unwrap()
    }
    let got = outer().unwrap();
    let values: Vec<u32> = got.iter().map(|g| g.0).collect();
    assert_eq!(values, [0, 2, 4]);
    let pids: std::collections::HashSet<u32> = got.iter().map(|g| g.1).collect();
    assert_eq!(
        pids.len(),
        1,
        "one worker ran all three, it never died: {got:?}"
    );
    assert!(!pids.contains(&std::process::id()));
}

/// Runs only as the child that `starts_this_program` starts; the test
/// below checks what it prints.
#[test]
fn child_program_helper() {
    if std::env::var_os("FLOWRUN_REENTRY_CHILD").is_none() {
        return;
    }
    println!("child flow result: {}", doubled(21).unwrap());
}

#[task]
fn starts_this_program() -> (bool, String, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_program_helper", "--exact", "--nocapture", "-q"])
        .env("FLOWRUN_REENTRY_CHILD", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_flowrun_program_a_task_starts_runs_normally_instead_of_as_a_worker() {
    #[flow(task_runner = one_worker())]
    fn starter() -> (bool, String, String, u32) {
        let (ok, out, err) = starts_this_program.submit().result().unwrap();
        (ok, out, err, worker_pid.submit().result().unwrap())
    }
    let (ok, stdout, stderr, pid) = starter().unwrap();
    ran_on_a_worker(pid);
    assert!(ok, "the child failed: {stdout}\n{stderr}");
    assert!(
        stdout.contains("child flow result: 42"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

#[task]
fn worker_pid() -> u32 {
    std::process::id()
}

#[flow(task_runner = one_worker())]
fn on_a_worker() -> u32 {
    worker_pid.submit().result().unwrap()
}

fn ran_on_a_worker(pid: u32) {
    assert_ne!(
        pid,
        std::process::id(),
        "the task ran in the flow's process"
    );
}

#[test]
fn a_dask_flow_called_from_a_named_thread_starts_workers_that_work() {
    let pid = std::thread::Builder::new()
        .name("flow-caller".into())
        .spawn(|| on_a_worker().unwrap())
        .unwrap()
        .join()
        .unwrap();
    ran_on_a_worker(pid);
}

#[test]
fn a_dask_flow_called_from_an_unnamed_thread_starts_workers_that_work() {
    let pid = std::thread::spawn(|| on_a_worker().unwrap())
        .join()
        .unwrap();
    ran_on_a_worker(pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dask_flow_called_from_spawn_blocking_starts_workers_that_work() {
    let pid = tokio::task::spawn_blocking(|| on_a_worker().unwrap())
        .await
        .unwrap();
    ran_on_a_worker(pid);
}

#[flow(task_runner = one_worker())]
async fn on_a_worker_async() -> u32 {
    worker_pid.submit().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dask_flow_awaited_in_a_tokio_task_starts_workers_that_work() {
    let pid = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::spawn(async { on_a_worker_async().await.unwrap() }),
    )
    .await
    .expect("the flow finished")
    .unwrap();
    ran_on_a_worker(pid);
}

#[task]
fn runs_a_dask_flow() -> (u32, u32) {
    (on_a_worker().expect("nested Dask flow"), std::process::id())
}

#[test]
fn a_dask_flow_called_inside_a_task_on_a_worker_starts_its_own_cluster() {
    #[flow(task_runner = one_worker())]
    fn outer_dask() -> (u32, u32) {
        runs_a_dask_flow.submit().result().unwrap()
    }
    let (nested, outer) = outer_dask().unwrap();
    ran_on_a_worker(outer);
    ran_on_a_worker(nested);
    assert_ne!(
        nested, outer,
        "the nested flow's task ran on its own worker"
    );
}

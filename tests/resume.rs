//! Resume: a flow process killed with SIGKILL half way through a DAG and
//! started again re-executes none of the tasks that had completed, when
//! its cache policy spans runs (no `RUN_ID`).
//!
//! The flow runs in a child process: this test binary again, with
//! `--exact child_flow`. Executions are counted by the tasks
//! themselves, one line each in a log file; a task counts as completed
//! when its result file exists (named by `result_storage_key`).

mod cached_chains;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowrun::{flow, task, TaskOptions};

const CHAINS: u64 = 12;
const DEPTH: u64 = 10;
/// Every step, plus the final sum.
const TASKS: usize = (CHAINS * DEPTH) as usize + 1;

#[task(
    cache_policy = INPUTS + TASK_SOURCE,
    task_run_name = "total",
    result_storage_key = "{task_run.name}"
)]
fn total(log: String, values: Vec<u64>) -> u64 {
    common::append(&log, "total");
    values.iter().sum()
}

/// Chains of steps, each level waiting for the one before, and their sum.
#[flow]
fn chains(storage: PathBuf, log: String) -> u64 {
    submit_chains(storage, log)
}

/// The same on the local cluster: the steps run in worker processes.
#[flow(task_runner = common::local_cluster(2, 2))]
fn chains_on_cluster(storage: PathBuf, log: String) -> u64 {
    submit_chains(storage, log)
}

fn submit_chains(storage: PathBuf, log: String) -> u64 {
    let opts = || TaskOptions::new().result_storage(&storage);
    let ends = cached_chains::submit_chains(&storage, &log, CHAINS, DEPTH, 20);
    let values: Vec<u64> = ends.iter().map(|f| f.result().unwrap()).collect();
    total
        .with_options(opts())
        .submit(log, values)
        .result()
        .unwrap()
}

fn expected_total() -> u64 {
    cached_chains::chains_total(CHAINS, DEPTH)
}

/// The flow process of the tests below (a no-op without its environment).
/// Not `#[ignore]`d: the local cluster's workers start this test again by
/// name, without `--ignored`.
#[test]
fn child_flow() {
    let Ok(dir) = std::env::var("FLOWRUN_RESUME_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let log = dir.join("executions.log").to_str().unwrap().to_owned();
    let sum = if std::env::var_os("FLOWRUN_RESUME_CLUSTER").is_some() {
        chains_on_cluster(dir.join("storage"), log)
    } else {
        chains(dir.join("storage"), log)
    };
    assert_eq!(sum.unwrap(), expected_total());
}

fn child(dir: &Path, cluster: bool) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    if cluster {
        cmd.env("FLOWRUN_RESUME_CLUSTER", "1");
    }
    cmd.args(["--exact", "child_flow", "--nocapture"])
        .env("FLOWRUN_RESUME_DIR", dir)
        .env("FLOWRUN_HISTORY", "off")
        .env("FLOWRUN_HOME", dir.join("home"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_flow_killed_half_way_resumes_without_re_executing_completed_tasks() {
    kill_and_resume(false);
}

#[test]
fn a_flow_on_the_local_cluster_killed_half_way_resumes_the_same_way() {
    kill_and_resume(true);
}

fn kill_and_resume(cluster: bool) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("executions.log");
    let log_s = log.to_str().unwrap();
    let storage = dir.path().join("storage");

    let mut first = child(dir.path(), cluster);
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::lines(log_s).len() < TASKS / 3 {
        assert!(Instant::now() < deadline, "the flow made no progress");
        assert!(first.try_wait().unwrap().is_none(), "the flow ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before_kill = common::lines(log_s);
    let done = cached_chains::completed(&storage);
    assert!(
        !done.is_empty() && done.len() < TASKS,
        "killed half way: {} of {TASKS} completed",
        done.len()
    );

    let status = child(dir.path(), cluster).wait().unwrap();
    assert!(status.success(), "the rerun completes the flow: {status}");
    let all = common::lines(log_s);
    let rerun = &all[before_kill.len()..];
    let re_executed: Vec<&String> = rerun.iter().filter(|t| done.contains(t)).collect();
    assert!(
        re_executed.is_empty(),
        "completed before the kill, executed again: {re_executed:?}"
    );
    // Everything else ran, and now every task has its result.
    assert_eq!(cached_chains::completed(&storage).len(), TASKS);
    let mut ran: Vec<&String> = all.iter().collect();
    ran.sort();
    ran.dedup();
    assert_eq!(ran.len(), TASKS);

    // A third run executes nothing at all.
    assert!(child(dir.path(), cluster).wait().unwrap().success());
    assert_eq!(common::lines(log_s).len(), all.len());
}

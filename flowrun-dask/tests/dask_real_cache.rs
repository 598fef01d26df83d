//! Persisted results and caching on a real Dask cluster (a scheduler and
//! stock Python workers from PyPI, through `flowrun-dask/tests/support`):
//! a flow run again completes every cached task from storage without
//! executing it, and each result file is written by the task process that
//! made the value, not by the flow process.
//!
//! As in `dask_real.rs`, the Dask workers run this test binary in task
//! mode, as the current test; every test begins with [`begin`], which
//! diverts such a process before the test starts a cluster of its own.
//! Executions are counted by the tasks themselves, in a file (they run in
//! other processes), never from the engine's own report. A missing Dask
//! install fails the tests; nothing is skipped.

mod common;
mod support;

use std::path::PathBuf;

use flowrun::cache::{Lookup, ResultStorage};
use flowrun::{flow, task, TaskOptions};
use flowrun_dask::DaskTaskRunner;
use support::{begin, runner, Cluster, WorkerSpec};

/// Logs `what pid` for each execution, in the process that executes it.
fn executed(log: &str, what: &str) {
    common::append(log, &format!("{what} {}", std::process::id()));
}

#[task(
    cache_policy = INPUTS + TASK_SOURCE,
    result_storage_key = "cube-{parameters[x]}"
)]
fn cube(log: String, x: u64) -> u64 {
    executed(&log, &format!("cube-{x}"));
    x * x * x
}

/// Takes the cubes as upstream futures: its key follows theirs.
#[task(
    cache_policy = INPUTS + TASK_SOURCE,
    result_storage_key = "sum-{parameters[n]}"
)]
fn sum(log: String, n: u64, values: Vec<u64>) -> u64 {
    executed(&log, &format!("sum-{n}"));
    values.iter().sum()
}

/// The sum of the first `n` cubes, and the state name of every run.
#[flow(task_runner = DaskTaskRunner::new())]
fn cubes(dir: PathBuf, log: String, n: u64) -> (u64, Vec<String>) {
    let at = || TaskOptions::new().result_storage(&dir);
    let runs: Vec<_> = (0..n)
        .map(|x| cube.with_options(at()).submit(log.clone(), x))
        .collect();
    let total = sum.with_options(at()).submit(log.clone(), n, &runs);
    let value = total.result().unwrap();
    let mut names: Vec<String> = runs.iter().map(|f| f.state().name().to_owned()).collect();
    names.push(total.state().name().to_owned());
    (value, names)
}

#[test]
fn a_second_flow_run_on_real_dask_is_all_cached_and_executes_nothing() {
    let _t = begin("a_second_flow_run_on_real_dask_is_all_cached_and_executes_nothing");
    let dir = common::scratch("dask-real-cache-results");
    let log = common::scratch("dask-real-cache-log");
    let log_s = log.to_str().unwrap().to_owned();
    let cluster = Cluster::start(&[WorkerSpec::threads(2), WorkerSpec::threads(1)]);
    let run = |n: u64| {
        cluster.or_logs(
            cubes
                .with_runner(runner(&cluster))
                .call(dir.clone(), log_s.clone(), n),
        )
    };

    let (value, names) = run(3);
    assert_eq!(value, 1 + 8);
    assert!(names.iter().all(|n| n == "Completed"), "{names:?}");
    let lines = common::lines(&log_s);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(
        common::result_files(&dir),
        ["cube-0", "cube-1", "cube-2", "sum-3"]
    );

    // Each file was written by the process that executed its task: a
    // task process of a Dask worker, not this flow process.
    let storage = ResultStorage::new(&dir);
    let me = std::process::id();
    for line in &lines {
        let (what, pid) = line.split_once(' ').unwrap();
        let pid: u32 = pid.parse().unwrap();
        assert_ne!(pid, me, "{what} executed on a Dask worker");
        let info = storage
            .info(what)
            .unwrap_or_else(|| panic!("no result file {what}"));
        assert_eq!(
            info.writer_pid, pid,
            "{what} was written by its task process"
        );
    }
    let Lookup::Hit(bytes) = storage.read("sum-3") else {
        panic!("sum-3 cannot be read")
    };
    assert_eq!(flowrun::runner::decode_value::<u64>(&bytes).unwrap(), 9);

    // Again: every run completes from storage and nothing executes.
    let (value, names) = run(3);
    assert_eq!(value, 9);
    assert_eq!(names, ["Cached"; 4]);
    assert_eq!(common::lines(&log_s), lines, "nothing executed");

    // One more input: only it and the sum (whose inputs changed) execute.
    let (value, names) = run(4);
    assert_eq!(value, 9 + 27);
    assert_eq!(
        names,
        ["Cached", "Cached", "Cached", "Completed", "Completed"]
    );
    let after: Vec<String> = common::lines(&log_s)[lines.len()..]
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(after, ["cube-3", "sum-4"]);

    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}

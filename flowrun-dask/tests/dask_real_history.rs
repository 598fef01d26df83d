//! The run history of flow runs on a real Dask cluster (a scheduler and
//! stock Python workers, as in `dask_real.rs`): what each run's tasks print
//! and log is recorded as theirs, also when flow runs meet on one scheduler.
//!
//! The Dask workers run this test binary in task mode, as the current
//! test: every test begins with [`begin`]. The console capture records
//! into the run history here, so this binary holds only such tests.

mod common;
mod support;

use std::time::Duration;

use flowrun::{flow, task};
use support::{begin, runner, Cluster, WorkerSpec};

// keeps its own runs' lines.

#[task]
fn tagged(tag: String, n: u64) -> u64 {
    flowrun::get_run_logger().info(format!("{tag} logs {n}"));
    println!("{tag} prints {n}");
    std::thread::sleep(Duration::from_millis(20));
    n
}

#[flow]
fn tagging(tag: String, n: u64) -> u64 {
    let futures: Vec<_> = (0..n).map(|i| tagged.submit(tag.clone(), i)).collect();
    futures.into_iter().map(|f| f.result().unwrap()).sum()
}

#[test]
fn two_flows_at_once_on_one_scheduler_keep_each_task_run_s_lines_to_itself() {
    // In a task process (this binary started again by a worker), task
    // mode takes over here, before any capture is installed.
    flowrun::worker::divert_if_worker();
    // Before `begin`: the first capture installed decides, and this one
    // records lines in the run history too.
    common::console_lines_and_history();
    let _t = begin("two_flows_at_once_on_one_scheduler_keep_each_task_run_s_lines_to_itself");
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    let home = flowrun::history::temp_home();
    let flows: Vec<_> = ["alpha", "beta"]
        .into_iter()
        .map(|tag| {
            let (path, runner) = (home.path().to_owned(), runner(&cluster));
            std::thread::spawn(move || {
                let _home = flowrun::history::use_home(path);
                tagging.with_runner(runner).call(tag.to_owned(), 6)
            })
        })
        .collect();
    for flow in flows {
        assert_eq!(flow.join().unwrap().unwrap(), 15, "{}", cluster.logs());
    }
    common::assert_each_flow_run_holds_its_own_tagged_lines(home.path(), 6);
}

//! `set_log_completed_task_runs(false)`: a large map's completed task runs
//! stay out of the console (their lines go to DEBUG); failed ones are
//! always shown. On the thread runner and on the local cluster.

mod common;

use flowrun::{flow, task};

#[task]
fn check(x: u32) -> Result<u32, String> {
    common::ok_unless(x, 13, "unlucky")
}

fn map_forty() -> usize {
    let runs = check.map(0..40).unwrap();
    runs.iter().filter(|r| r.result().is_ok()).count()
}

/// The `Finished in state` lines of `check` runs in the console, as
/// (completed at INFO, failed).
fn finished_lines() -> (usize, usize) {
    let lines = common::console_lines().lock().unwrap().clone();
    let ours: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("Task run 'check-") && l.contains("Finished in state"))
        .collect();
    let completed = ours
        .iter()
        .filter(|l| l.contains("Completed") && !l.contains("DEBUG"))
        .count();
    let failed = ours
        .iter()
        .filter(|l| l.contains("Failed('unlucky')"))
        .count();
    (completed, failed)
}

#[test]
fn completed_task_runs_stay_out_of_the_console_and_failures_do_not() {
    common::console_lines();
    flowrun::logging::set_log_completed_task_runs(false);
    #[flow]
    fn threads() -> usize {
        map_forty()
    }
    #[flow(task_runner = common::local_cluster(1, 2))]
    fn local_cluster() -> usize {
        map_forty()
    }
    assert_eq!(threads().unwrap(), 39);
    assert_eq!(local_cluster().unwrap(), 39);
    assert_eq!(finished_lines(), (0, 2));
    flowrun::logging::set_log_completed_task_runs(true);
    assert_eq!(threads().unwrap(), 39);
    assert_eq!(finished_lines(), (39, 3));
}

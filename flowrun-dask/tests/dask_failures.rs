//! Failures on the local cluster: task errors with their location, workers
//! killed or aborting mid-run, KilledWorker, and retries of crashed runs.

mod common;

use std::time::Duration;

use flowrun::{flow, task, StateKind, TaskErrorKind};

#[task]
fn fails(kind: String) -> Result<u32, String> {
    match kind.as_str() {
        "err" => Err("bad input".into()),
        _ => panic!("exploded on purpose"),
    }
}

#[test]
fn errors_and_panics_come_back_with_their_message_and_location() {
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn failing() -> Vec<(TaskErrorKind, String)> {
        ["err", "panic"]
            .iter()
            .map(|k| {
                let e = fails.submit(*k).result().unwrap_err();
                (e.kind().clone(), e.message().to_owned())
            })
            .collect()
    }
    let got = failing().unwrap();
    assert_eq!(got[0], (TaskErrorKind::Error, "bad input".to_owned()));
    assert_eq!(got[1].0, TaskErrorKind::Panic);
    assert!(
        got[1]
            .1
            .starts_with("exploded on purpose (panicked at flowrun-dask/tests/dask_failures.rs:"),
        "{}",
        got[1].1
    );
}

/// Writes its pid; the first execution then waits to be killed.
#[task]
fn victim(dir: String) -> u32 {
    let marker = format!("{dir}/victim.started");
    common::append(
        &format!("{dir}/executions.log"),
        &format!("victim {}", std::process::id()),
    );
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, std::process::id().to_string()).unwrap();
        std::thread::sleep(Duration::from_secs(30));
    }
    std::process::id()
}

#[task]
fn quick(dir: String, i: u32) -> u32 {
    common::append(
        &format!("{dir}/executions.log"),
        &format!("quick{i} {}", std::process::id()),
    );
    i
}

#[test]
fn a_worker_killed_mid_run_has_its_task_rescheduled_and_finished_work_kept() {
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn survives(dir: String) -> (u32, u32, Vec<u32>) {
        std::fs::create_dir_all(&dir).unwrap();
        let done: Vec<_> = (0..4).map(|i| quick.submit(dir.clone(), i)).collect();
        flowrun::wait(&done);
        let v = victim.submit(dir.clone());
        let marker = format!("{dir}/victim.started");
        assert!(common::eventually(Duration::from_secs(20), || {
            std::fs::metadata(&marker).is_ok()
        }));
        let doomed: u32 = std::fs::read_to_string(&marker).unwrap().parse().unwrap();
        // SAFETY: sending SIGKILL to a worker process of this test.
        unsafe {
            libc::kill(doomed as i32, libc::SIGKILL);
        }
        let rescued = v.result().unwrap();
        let more: Vec<_> = (4..6).map(|i| quick.submit(dir.clone(), i)).collect();
        (doomed, rescued, flowrun::results(more).unwrap())
    }
    let dir = common::scratch("killed").to_string_lossy().into_owned();
    let (doomed, rescued, more) = survives(dir.clone()).unwrap();
    assert_ne!(doomed, rescued, "the task finished on another worker");
    assert_eq!(more, vec![4, 5]);
    let log = common::lines(&format!("{dir}/executions.log"));
    let _ = std::fs::remove_dir_all(&dir);
    for i in 0..6 {
        let n = log
            .iter()
            .filter(|l| l.starts_with(&format!("quick{i} ")))
            .count();
        assert_eq!(
            n, 1,
            "quick{i} ran {n} times: completed work must not be recomputed\n{log:#?}"
        );
    }
    assert_eq!(log.iter().filter(|l| l.starts_with("victim ")).count(), 2);
}

/// Kills its own worker process every time.
#[task]
fn suicidal() -> u32 {
    // SAFETY: the task deliberately kills the process it runs in.
    unsafe {
        libc::kill(std::process::id() as i32, libc::SIGKILL);
    }
    0
}

#[test]
fn a_task_that_keeps_killing_its_workers_ends_crashed_with_killed_worker() {
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn doomed() -> (StateKind, TaskErrorKind, String, u32) {
        let f = suicidal.submit();
        let e = f.result().unwrap_err();
        let ok = quick.submit("/tmp".to_owned(), 9).result().unwrap();
        (
            f.state().kind(),
            e.kind().clone(),
            e.message().to_owned(),
            ok,
        )
    }
    let (state, kind, message, ok) = doomed().unwrap();
    assert_eq!(state, StateKind::Crashed);
    assert_eq!(kind, TaskErrorKind::KilledWorker);
    common::assert_holds(&message, &["KilledWorker", "on 4 different workers"]);
    // Each death says why the worker died.
    assert_eq!(
        message.matches("killed by signal 9 (SIGKILL").count(),
        4,
        "{message}"
    );
    assert_eq!(
        ok, 9,
        "the cluster replaced its dead workers and still works"
    );
}

/// Kills its worker on its first four executions, then succeeds.
#[task(retries = 1)]
fn dies_four_times(dir: String) -> u32 {
    let log = format!("{dir}/deaths.log");
    let n = common::lines(&log).len();
    common::append(&log, "x");
    if n < 4 {
        // SAFETY: deliberately kills this worker process.
        unsafe {
            libc::kill(std::process::id() as i32, libc::SIGKILL);
        }
    }
    n as u32
}

#[test]
fn retries_apply_to_a_run_that_crashed_with_killed_worker() {
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn recovers(dir: String) -> (u32, u32) {
        std::fs::create_dir_all(&dir).unwrap();
        let f = dies_four_times.submit(dir.clone());
        (f.result().unwrap(), f.run_ref().attempts())
    }
    let dir = common::scratch("retry-crash")
        .to_string_lossy()
        .into_owned();
    let (executions_before, attempts) = recovers(dir.clone()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(executions_before, 4);
    assert_eq!(
        attempts, 2,
        "the first attempt crashed, the retry completed"
    );
}

#[task]
fn aborts_once(dir: String) -> String {
    let marker = format!("{dir}/aborted");
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, "").unwrap();
        std::process::abort();
    }
    "second time lucky".to_owned()
}

#[test]
fn a_task_that_aborts_its_worker_is_rescheduled() {
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn aborting(dir: String) -> String {
        std::fs::create_dir_all(&dir).unwrap();
        aborts_once.submit(dir).result().unwrap()
    }
    let dir = common::scratch("abort").to_string_lossy().into_owned();
    let value = aborting(dir.clone()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(value, "second time lucky");
}

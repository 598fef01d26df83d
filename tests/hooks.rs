//! Hooks: task and flow runs call `on_completion`, `on_failure`,
//! `on_running` (and flows `on_crashed`, `on_cancellation`) with the run
//! and its state; a failing hook is logged and changes nothing. Each
//! behaviour on the thread runner and on the local cluster, where the hooks
//! of a task's attribute run in the worker process that runs the task.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use flowrun::{flow, task, FlowOptions, FlowRunInfo, RunRef, State, StateKind, TaskOptions};
use flowrun_dask::{ClusterKwargs, DaskTaskRunner};

/// What the hooks of one test saw, as `kind name state`.
type Seen = Mutex<Vec<String>>;

fn note(seen: &Seen, kind: &str, name: &str, state: &State) {
    seen.lock()
        .unwrap()
        .push(format!("{kind} {name} {}", state.kind()));
}

fn sorted(seen: &Seen) -> Vec<String> {
    let mut v = seen.lock().unwrap().clone();
    v.sort();
    v
}

static ATTR_SEEN: Seen = Mutex::new(Vec::new());

/// The pid of the flow process: a local cluster's worker is its child.
fn flow_pid() -> u32 {
    if flowrun::worker::is_worker() {
        std::os::unix::process::parent_id()
    } else {
        std::process::id()
    }
}

/// Where the attribute's hooks also write what they saw, with the pid of
/// the process they ran in (a worker's hooks cannot reach `ATTR_SEEN`).
fn attr_log() -> String {
    std::env::temp_dir()
        .join(format!("flowrun-test-hooks-{}", flow_pid()))
        .display()
        .to_string()
}

/// A hook of the attribute: notes `kind` in `ATTR_SEEN` and the log.
fn attr_noting(kind: &'static str) -> impl Fn(&RunRef, &State) + Send + Sync + 'static {
    move |run, state| {
        note(&ATTR_SEEN, kind, &run.name(), state);
        common::note_hook(attr_log(), kind, run, state);
    }
}

/// Tests that read the log of the attribute's hooks take turns.
static LOG_TURN: Mutex<()> = Mutex::new(());

/// The lines of the hooks' log (`kind run state`) with the pid each ran in;
/// empties the log.
fn take_attr_log() -> Vec<(String, u32)> {
    let logged = common::hook_notes(attr_log());
    let _ = std::fs::remove_file(attr_log());
    logged
}

#[task(
    on_completion = [attr_noting("completed")],
    on_failure = [attr_noting("failed")],
    on_running = [attr_noting("running")]
)]
fn checked(x: u32) -> Result<u32, String> {
    common::ok_unless(x, 0, "zero")
}

fn task_hooks_fire_once_per_final_state(label: &str, seen: Vec<String>) {
    assert_eq!(
        seen,
        [
            "completed checked-0 Completed",
            "failed checked-1 Failed",
            "running checked-0 Running",
            "running checked-1 Running",
        ],
        "{label}"
    );
}

#[test]
fn task_hooks_from_the_attribute_run_with_the_final_state() {
    #[flow]
    fn threads() {
        assert_eq!(checked.submit(1).result().unwrap(), 1);
        // The hook ran before the result was handed out.
        assert!(ATTR_SEEN
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.starts_with("completed")));
        assert!(checked.submit(0).result().is_err());
    }
    #[flow(task_runner = common::local_cluster(1, 2))]
    fn local_cluster() -> u32 {
        let one = checked.submit(1);
        assert_eq!(one.result().unwrap(), 1);
        // The hook ran (on the worker) before the result was handed out.
        assert!(std::fs::read_to_string(attr_log())
            .unwrap()
            .lines()
            .any(|l| l.starts_with("completed")));
        assert!(checked.submit(0).result().is_err());
        checked.submit(2).result().unwrap()
    }
    let _turn = LOG_TURN.lock().unwrap_or_else(|p| p.into_inner());
    let _ = std::fs::remove_file(attr_log());
    ATTR_SEEN.lock().unwrap().clear();
    threads().unwrap();
    task_hooks_fire_once_per_final_state("threads", sorted(&ATTR_SEEN));
    ATTR_SEEN.lock().unwrap().clear();
    let _ = std::fs::remove_file(attr_log());
    local_cluster().unwrap();
    assert!(
        ATTR_SEEN.lock().unwrap().is_empty(),
        "no hook of the attribute ran in the flow process: {:?}",
        ATTR_SEEN.lock().unwrap()
    );
    let mut seen = Vec::new();
    for (what, pid) in take_attr_log() {
        assert_ne!(pid, std::process::id(), "{what}: ran in the flow process");
        if !what.contains("checked-2") {
            seen.push(what);
        }
    }
    seen.sort();
    task_hooks_fire_once_per_final_state("local cluster", seen);
}

#[task(retries = 1, retry_delay = 0, on_failure = [attr_noting("failed")], on_running = [attr_noting("running")])]
fn flaky_on_worker() -> Result<(), String> {
    Err("always".into())
}

#[task(
    on_failure = [attr_noting("failed")],
    on_completion = [attr_noting("completed")],
    on_running = [attr_noting("running")]
)]
fn never_runs(_x: u32) {}

#[test]
fn on_a_local_cluster_failures_of_the_task_call_on_failure_on_the_worker_and_others_in_the_flow() {
    #[flow(task_runner = common::local_cluster(1, 2))]
    fn local_cluster() {
        let f = flaky_on_worker.submit();
        f.wait();
        assert_eq!(f.run_ref().attempts(), 2);
        // Its upstream failed: it never reaches a worker, so the flow
        // process calls its on_failure.
        let h = never_runs.submit(checked.submit(0));
        h.wait();
    }
    let _turn = LOG_TURN.lock().unwrap_or_else(|p| p.into_inner());
    let _ = std::fs::remove_file(attr_log());
    let _ = local_cluster();
    let me = std::process::id();
    let mut seen: Vec<_> = take_attr_log()
        .into_iter()
        .filter(|(w, _)| !w.contains("checked-"))
        .map(|(what, pid)| format!("{what} {}", if pid == me { "flow" } else { "worker" }))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "failed flaky_on_worker-0 Failed worker",
            "failed never_runs-0 Failed flow",
            "running flaky_on_worker-0 Retrying worker",
            "running flaky_on_worker-0 Running worker",
        ]
    );
}

static RETRY_SEEN: Seen = Mutex::new(Vec::new());

#[task(retries = 2, retry_delay = 0)]
fn always_fails() -> Result<(), String> {
    Err("no".into())
}

#[test]
fn on_failure_runs_once_after_the_last_retry_and_on_running_per_attempt() {
    fn options() -> TaskOptions {
        TaskOptions::new()
            .on_failure(|run: &RunRef, s: &State| note(&RETRY_SEEN, "failed", &run.name(), s))
            .on_running(|run: &RunRef, s: &State| note(&RETRY_SEEN, "running", &run.name(), s))
    }
    #[flow]
    fn threads() -> u32 {
        let f = always_fails.with_options(options()).submit();
        f.wait();
        assert_eq!(f.state().kind(), StateKind::Failed);
        f.run_ref().attempts()
    }
    #[flow(task_runner = common::local_cluster(1, 2))]
    fn local_cluster() -> u32 {
        let f = always_fails.with_options(options()).submit();
        f.wait();
        assert_eq!(f.state().kind(), StateKind::Failed);
        f.run_ref().attempts()
    }
    let expected = [
        "failed always_fails-0 Failed",
        // Retries run in Prefect's `Retrying`, a running state.
        "running always_fails-0 Retrying",
        "running always_fails-0 Retrying",
        "running always_fails-0 Running",
    ];
    assert_eq!(threads().unwrap(), 3);
    assert_eq!(sorted(&RETRY_SEEN), expected, "threads");
    RETRY_SEEN.lock().unwrap().clear();
    assert_eq!(local_cluster().unwrap(), 3);
    assert_eq!(sorted(&RETRY_SEEN), expected, "local cluster");
}

static BAD_SEEN: Seen = Mutex::new(Vec::new());

#[task]
fn fine() -> u32 {
    7
}

#[test]
fn a_hook_that_fails_is_logged_and_does_not_change_the_state() {
    fn options() -> TaskOptions {
        TaskOptions::new()
            .on_completion(|_: &RunRef, _: &State| -> Result<(), String> {
                Err("the pager is down".into())
            })
            .on_completion(|_: &RunRef, _: &State| -> () { panic!("hook exploded") })
            // Hooks after a failing one still run.
            .on_completion(|run: &RunRef, s: &State| note(&BAD_SEEN, "after", &run.name(), s))
    }
    #[flow]
    fn threads() -> (u32, StateKind) {
        let f = fine.with_options(options()).submit();
        (f.result().unwrap(), f.state().kind())
    }
    #[flow(task_runner = common::local_cluster(1, 2))]
    fn local_cluster() -> (u32, StateKind) {
        let f = fine.with_options(options()).submit();
        (f.result().unwrap(), f.state().kind())
    }
    assert_eq!(threads().unwrap(), (7, StateKind::Completed));
    assert_eq!(local_cluster().unwrap(), (7, StateKind::Completed));
    assert_eq!(
        sorted(&BAD_SEEN),
        ["after fine-0 Completed", "after fine-0 Completed"]
    );
}

static FLOW_SEEN: Seen = Mutex::new(Vec::new());

fn flow_completed(run: &FlowRunInfo, state: &State) {
    note(&FLOW_SEEN, "completed", &run.flow_name, state);
}

fn flow_failed(run: &FlowRunInfo, state: &State) {
    note(&FLOW_SEEN, "failed", &run.flow_name, state);
}

fn flow_running(run: &FlowRunInfo, state: &State) {
    note(&FLOW_SEEN, "running", &run.flow_name, state);
}

#[test]
fn flow_hooks_run_with_the_flow_runs_final_state() {
    #[flow(on_completion = [flow_completed], on_failure = [flow_failed], on_running = [flow_running])]
    fn threads(fail: bool) -> Result<u32, String> {
        if fail {
            Err("asked to fail".into())
        } else {
            Ok(fine())
        }
    }
    #[flow(task_runner = common::local_cluster(1, 2), on_completion = [flow_completed], on_failure = [flow_failed], on_running = [flow_running])]
    fn local_cluster(fail: bool) -> Result<u32, String> {
        if fail {
            Err("asked to fail".into())
        } else {
            Ok(fine.submit().result().unwrap())
        }
    }
    assert_eq!(threads(false).unwrap(), 7);
    assert!(threads(true).is_err());
    assert_eq!(local_cluster(false).unwrap(), 7);
    assert!(local_cluster(true).is_err());
    assert_eq!(
        sorted(&FLOW_SEEN),
        [
            "completed local-cluster Completed",
            "completed threads Completed",
            "failed local-cluster Failed",
            "failed threads Failed",
            "running local-cluster Running",
            "running local-cluster Running",
            "running threads Running",
            "running threads Running",
        ]
    );
}

static CRASH_SEEN: Seen = Mutex::new(Vec::new());

#[test]
fn a_flow_whose_runner_cannot_start_is_crashed_and_calls_on_crashed() {
    #[flow]
    fn unstartable() -> u32 {
        1
    }
    // A local cluster that cannot start: its workers would have no thread.
    let broken = DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().threads_per_worker(0));
    let options = FlowOptions::new()
        .on_crashed(|run: &FlowRunInfo, s: &State| note(&CRASH_SEEN, "crashed", &run.flow_name, s))
        .on_failure(|run: &FlowRunInfo, s: &State| note(&CRASH_SEEN, "failed", &run.flow_name, s));
    let run = unstartable
        .with_options(options)
        .with_runner(broken)
        .return_state();
    assert_eq!(run.state().kind(), StateKind::Crashed, "{:?}", run.state());
    assert_eq!(sorted(&CRASH_SEEN), ["crashed unstartable Crashed"]);
}

static CANCEL_SEEN: Seen = Mutex::new(Vec::new());

#[task]
fn slow() {
    std::thread::sleep(Duration::from_secs(5));
}

#[test]
fn an_async_flow_dropped_before_it_ends_calls_on_cancellation() {
    #[flow]
    async fn dropped() {
        let _ = slow.submit().await;
    }
    let options = FlowOptions::new().on_cancellation(|run: &FlowRunInfo, s: &State| {
        note(&CANCEL_SEEN, "cancelled", &run.flow_name, s)
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let run = dropped.with_options(options).call();
        let out = tokio::time::timeout(Duration::from_millis(200), run).await;
        assert!(out.is_err(), "the flow should still be running");
    });
    assert_eq!(sorted(&CANCEL_SEEN), ["cancelled dropped Cancelled"]);
}

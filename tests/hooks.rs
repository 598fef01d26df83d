//! Hooks: task and flow runs call `on_completion`, `on_failure`,
//! `on_running` (and flows `on_crashed`, `on_cancellation`) with the run
//! and its state. Where hooks run: on the thread runner in the flow
//! process, on the local cluster the hooks of a task's attribute in the
//! worker process that runs the task. (The scenarios every runner must
//! pass, hooks of retried runs, a failing hook, flow hooks:
//! flowrun-dask/tests/scenarios.rs.)

mod common;

use std::sync::Mutex;
use std::time::Duration;

use flowrun::{flow, task, FlowOptions, FlowRunInfo, RunRef, State, StateKind};
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

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

#[task]
fn sleeps(seconds: u64) {
    std::thread::sleep(Duration::from_secs(seconds));
}

/// Submits a long task and returns once it runs, with the worker pids.
fn long_task_running() -> (flowrun::TaskFuture<()>, Vec<u32>) {
    let f = sleeps.submit(60);
    let running = || f.run_ref().state().is_running();
    assert!(common::eventually(Duration::from_secs(30), running));
    (f, worker_pids())
}

#[test]
fn a_failing_panicking_or_timed_out_flow_stops_its_running_tasks_and_returns_at_once() {
    static PIDS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
    #[flow(task_runner = common::local_cluster(1, 1))]
    fn fails() -> Result<(), String> {
        PIDS.lock().unwrap().extend(long_task_running().1);
        Err("the flow failed".into())
    }
    #[flow(task_runner = common::local_cluster(1, 1))]
    fn panics() {
        PIDS.lock().unwrap().extend(long_task_running().1);
        panic!("the flow panicked");
    }
    #[flow(task_runner = common::local_cluster(1, 1), timeout = 10)]
    fn times_out() {
        let (f, pids) = long_task_running();
        PIDS.lock().unwrap().extend(pids);
        // The timeout ends the run, and so this wait.
        f.wait();
    }
    let check = |name: &str, flow_run: &dyn Fn() -> bool| {
        PIDS.lock().unwrap().clear();
        let began = std::time::Instant::now();
        assert!(flow_run(), "the {name} flow must fail");
        // The body ends at once (failing, panicking) or after its 10 s
        // timeout; the running 60 s task must not hold the flow.
        let limit = if name == "timed-out" { 30 } else { 20 };
        assert!(
            began.elapsed() < Duration::from_secs(limit),
            "the {name} flow waited {:?} for its running task",
            began.elapsed()
        );
        let pids = PIDS.lock().unwrap().clone();
        assert_eq!(pids.len(), 1);
        assert!(
            pids.iter().all(|p| !common::pid_alive(*p)),
            "{pids:?} outlived the {name} flow"
        );
    };
    check("failing", &|| fails().is_err());
    check("panicking", &|| panics().is_err());
    check("timed-out", &|| times_out().is_err());
}

#[test]
fn close_kills_a_worker_that_does_not_leave() {
    static PID: std::sync::Mutex<Option<u32>> = std::sync::Mutex::new(None);
    #[flow(task_runner = common::local_cluster(1, 1))]
    fn stops_its_worker() {
        let _ = my_pid.submit().result();
        let pid = worker_pids()[0];
        *PID.lock().unwrap() = Some(pid);
        // SAFETY: stopping a worker process this test's cluster started.
        unsafe {
            libc::kill(pid as i32, libc::SIGSTOP);
        }
    }
    // Should close() wait for the stopped worker forever, this ends it late
    // so that the test fails instead of hanging.
    let rescue = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        if let Some(pid) = *PID.lock().unwrap() {
            // SAFETY: killing the worker process the test stopped.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    });
    let began = std::time::Instant::now();
    stops_its_worker().unwrap();
    let took = began.elapsed();
    let pid = PID.lock().unwrap().expect("the flow ran");
    assert!(
        took < Duration::from_secs(20),
        "closing waited {took:?} for a stopped worker"
    );
    assert!(all_gone(&[pid]), "the stopped worker {pid} was not killed");
    drop(rescue);
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_an_async_flows_future_tears_its_cluster_down_and_ends_it_cancelled() {
    use flowrun::runner::observe::{RunEvent, RunObserver};
    static PIDS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
    static FINAL: std::sync::Mutex<Option<flowrun::State>> = std::sync::Mutex::new(None);
    struct Watch;
    impl RunObserver for Watch {
        fn run_changed(&self, _event: &RunEvent) {}
        fn flow_finished(&self, state: &flowrun::State) {
            *FINAL.lock().unwrap() = Some(state.clone());
        }
    }
    #[flow(task_runner = common::local_cluster(1, 1))]
    async fn endless() {
        flowrun::runner::current_flow_handle()
            .unwrap()
            .add_observer(std::sync::Arc::new(Watch));
        let f = sleeps.submit(60);
        while !f.run_ref().state().is_running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        PIDS.lock().unwrap().extend(worker_pids());
        let _ = f.await;
    }
    let cut = tokio::time::timeout(Duration::from_secs(20), endless()).await;
    assert!(cut.is_err(), "the flow cannot finish within 20 s");
    let pids = PIDS.lock().unwrap().clone();
    assert_eq!(pids.len(), 1, "the task ran before the future was dropped");
    assert!(all_gone(&pids), "{pids:?} outlived the dropped flow");
    let state = FINAL.lock().unwrap().clone();
    assert_eq!(
        state.map(|s| s.kind()),
        Some(flowrun::StateKind::Cancelled),
        "the flow run must end Cancelled"
    );
}

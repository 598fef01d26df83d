//! Scheduling on the local cluster: priorities, resources, annotation
//! scopes, and tasks that wait because no worker can run them.

mod common;

use std::time::Duration;

use flowrun::{flow, task, TaskErrorKind, TaskOptions};
use flowrun_dask::{annotate, current_cluster, ClusterKwargs, DaskTaskRunner};

#[task]
fn record(path: String, label: String, millis: u64) {
    std::thread::sleep(Duration::from_millis(millis));
    common::append(&path, &label);
}

#[test]
fn higher_priority_runs_first_and_equal_priorities_in_submission_order() {
    #[flow(task_runner = common::local_cluster(1, 1))]
    fn ordered(path: String) {
        // Occupies the only slot while the rest queue up.
        let blocker = record.submit(path.clone(), "blocker", 400);
        let running = || blocker.run_ref().state().is_running();
        assert!(common::eventually(Duration::from_secs(20), running));
        for i in 0..3 {
            annotate()
                .priority(-10)
                .run(|| record.submit(path.clone(), format!("low{i}"), 0));
            // The block form of the same scope.
            annotate!(priority = 10 => {
                record.submit(path.clone(), format!("high{i}"), 0);
            });
            record.submit(path.clone(), format!("mid{i}"), 0);
        }
        // An explicit per-call priority beats the scope around it.
        let _scope = annotate().priority(-10).enter();
        record
            .with_options(TaskOptions::new().priority(20))
            .submit(path.clone(), "explicit", 0);
        blocker.wait();
    }
    let path = common::scratch("priority.log");
    let path_str = path.to_string_lossy().into_owned();
    ordered(path_str.clone()).unwrap();
    let order = common::lines(&path_str);
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        order,
        vec![
            "blocker", "explicit", "high0", "high1", "high2", "mid0", "mid1", "mid2", "low0",
            "low1", "low2"
        ]
    );
}

#[test]
fn annotation_scopes_nest_and_inner_keys_win() {
    let outer = annotate().priority(1).resources([("GPU", 1.0)]).enter();
    let inner = annotate().priority(5).enter();
    let now = flowrun::annotations::current();
    assert_eq!(now.priority, Some(5));
    assert_eq!(now.resources.as_ref().and_then(|r| r.get("GPU")), Some(1.0));
    drop(inner);
    assert_eq!(flowrun::annotations::current().priority, Some(1));
    drop(outer);
    assert_eq!(flowrun::annotations::current(), Default::default());

    // The block form nests the same way and ends with its block.
    let seen = annotate!(priority = 1, resources = [("GPU", 2.0)] => {
        annotate!(priority = 7 => { flowrun::annotations::current() })
    });
    assert_eq!(seen.priority, Some(7));
    assert_eq!(
        seen.resources.as_ref().and_then(|r| r.get("GPU")),
        Some(2.0)
    );
    assert_eq!(flowrun::annotations::current(), Default::default());
}

#[task]
fn hold(path: String, millis: u64) {
    let start = common::now_us();
    std::thread::sleep(Duration::from_millis(millis));
    let end = common::now_us();
    common::append(&path, &format!("{} {start} {end}", std::process::id()));
}

#[test]
fn a_resource_is_held_by_one_task_at_a_time_per_worker() {
    #[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(
        common::cluster_of(2, 2).resources([("process", 1.0)])
    ))]
    fn exclusive(path: String) {
        let futures: Vec<_> = (0..8)
            .map(|_| {
                annotate()
                    .resources([("process", 1.0)])
                    .run(|| hold.submit(path.clone(), 150))
            })
            .collect();
        flowrun::wait(&futures);
    }
    let path = common::scratch("resources.log");
    let path_str = path.to_string_lossy().into_owned();
    exclusive(path_str.clone()).unwrap();
    let spans: Vec<(u32, u64, u64)> = common::lines(&path_str)
        .iter()
        .map(|l| {
            let p: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            (p[0] as u32, p[1], p[2])
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    assert_eq!(spans.len(), 8);
    for (i, a) in spans.iter().enumerate() {
        for b in spans.iter().skip(i + 1) {
            let overlap = b.1 < a.2 && a.1 < b.2;
            assert!(
                !(overlap && a.0 == b.0),
                "two holders of 'process' at once on worker {}",
                a.0
            );
        }
    }
    // Sweep the start and end events for the largest number running at once.
    let mut events: Vec<(u64, i32)> = spans.iter().flat_map(|s| [(s.1, 1), (s.2, -1)]).collect();
    events.sort_by_key(|(t, d)| (*t, *d));
    let (mut running, mut most_at_once) = (0, 0);
    for (_, d) in events {
        running += d;
        most_at_once = most_at_once.max(running);
    }
    assert_eq!(
        most_at_once, 2,
        "each of the two workers runs one holder at a time, in parallel: {spans:?}"
    );
}

#[test]
fn a_task_no_worker_can_satisfy_waits_and_says_why() {
    #[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(
        ClusterKwargs::new().n_workers(1).resources([("GPU", 1.0)]).no_workers_timeout(Duration::from_millis(1500))
    ))]
    fn impossible() -> (Vec<(String, String)>, TaskErrorKind, String) {
        let waiting = annotate()
            .resources([("GPU", 2.0)])
            .run(|| record.submit("/dev/null", "never", 0));
        let cluster = current_cluster().unwrap();
        assert!(common::eventually(Duration::from_secs(5), || !cluster
            .status()
            .unwrap()
            .waiting
            .is_empty()));
        let reasons = cluster
            .status()
            .unwrap()
            .waiting
            .into_iter()
            .map(|w| (w.run, w.reason))
            .collect();
        assert!(
            !waiting.state().is_final(),
            "it waits rather than failing at once"
        );
        let error = waiting.result().unwrap_err();
        (reasons, error.kind().clone(), error.message().to_owned())
    }
    let (reasons, kind, message) = impossible().unwrap();
    assert_eq!(reasons.len(), 1);
    assert_eq!(reasons[0].0, "record-0");
    assert!(
        reasons[0].1.contains(r#"needs {"GPU": 2}"#),
        "{}",
        reasons[0].1
    );
    assert!(
        reasons[0].1.contains(r#"offers {"GPU": 1}"#),
        "{}",
        reasons[0].1
    );
    assert_eq!(kind, TaskErrorKind::Runner);
    assert!(message.contains("no_workers_timeout"), "{message}");
}

#[task]
fn load(path: String, i: u32) -> u32 {
    common::append(&path, &format!("load{i}"));
    std::thread::sleep(Duration::from_millis(20));
    i
}

#[task]
fn check(path: String, value: u32) {
    common::append(&path, &format!("check{value}"));
}

#[test]
fn a_dependent_of_an_early_task_runs_before_independent_tasks_submitted_later() {
    #[flow(task_runner = common::local_cluster(1, 1))]
    fn pipeline(path: String) {
        let loads: Vec<_> = (0..12).map(|i| load.submit(path.clone(), i)).collect();
        let checks: Vec<_> = loads
            .iter()
            .map(|l| check.submit(path.clone(), l))
            .collect();
        flowrun::wait(&checks);
    }
    let path = common::scratch("graph-order.log");
    let path_str = path.to_string_lossy().into_owned();
    pipeline(path_str.clone()).unwrap();
    let order = common::lines(&path_str);
    let _ = std::fs::remove_file(&path);
    let at = |label: &str| order.iter().position(|l| l == label).unwrap();
    // As Dask orders a graph: check0 soon after load0, not after the last
    // load (which would hold every intermediate result at once).
    assert!(
        at("check0") < at("load11"),
        "check0 ran after every load: {order:?}"
    );
}

#[task]
fn marks(path: String) {
    common::append(&path, "ran");
}

#[test]
fn a_cancelled_run_the_cluster_already_holds_never_runs() {
    #[flow(task_runner = common::local_cluster(1, 1))]
    fn cancelling(path: String) -> bool {
        let blocker = record.submit(path.clone(), "blocker", 600);
        let running = || blocker.run_ref().state().is_running();
        assert!(common::eventually(Duration::from_secs(20), running));
        // Queued behind the blocker, in the cluster's hands.
        let victim = marks.submit(path.clone());
        std::thread::sleep(Duration::from_millis(100));
        let cancelled = victim.cancel();
        blocker.wait();
        // Time for the worker to run it, if it was sent there anyway.
        std::thread::sleep(Duration::from_millis(500));
        cancelled
    }
    let path = common::scratch("cancel-held.log");
    let path_str = path.to_string_lossy().into_owned();
    assert!(cancelling(path_str.clone()).unwrap());
    let log = common::lines(&path_str);
    let _ = std::fs::remove_file(&path);
    assert_eq!(log, vec!["blocker"], "the cancelled run ran anyway");
}

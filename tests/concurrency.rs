//! Concurrency limits on the thread runner and the local cluster: tag
//! limits, guards around code, rate limits; the most runs that really run
//! at once, measured by the tasks themselves; slots given back on every
//! way a run ends; bad limits refused at once.
//!
//! Limits of the whole process are shared by the tests of this file, which
//! run in parallel: each test uses its own names.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowrun::concurrency::{self, concurrency, ConcurrencyErrorKind, AWAITING_CONCURRENCY_SLOT};
use flowrun::{flow, task, StateKind, TaskErrorKind, ThreadPoolTaskRunner};

/// Counts how many holders run at once and remembers the most.
#[derive(Default)]
struct Gauge {
    now: AtomicU32,
    most: AtomicU32,
}

impl Gauge {
    fn hold(&self, d: Duration) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(d);
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn most(&self) -> u32 {
        self.most.load(Ordering::SeqCst)
    }
}

static TAGGED: Gauge = Gauge {
    now: AtomicU32::new(0),
    most: AtomicU32::new(0),
};

#[task(tags = ["tl-db"])]
fn tagged_query(i: u32) -> u32 {
    TAGGED.hold(Duration::from_millis(120));
    i
}

#[test]
fn a_flow_tag_limit_caps_running_runs_and_waiting_runs_say_so() {
    let lines = common::console_lines();
    #[flow(concurrency_limits = [("tl-db", 2)], task_runner = ThreadPoolTaskRunner::new(8))]
    fn limited() -> (Vec<u32>, Vec<String>, u32) {
        // A run learns at submission whether it waits for a slot.
        let futures: Vec<_> = (0..8).map(|i| tagged_query.submit(i)).collect();
        let states: Vec<String> = futures
            .iter()
            .map(|f| f.state().name().to_owned())
            .collect();
        let in_use = concurrency::tag_limit("tl-db").unwrap().active;
        (flowrun::results(futures).unwrap(), states, in_use)
    }
    let (values, states, in_use) = limited().unwrap();
    assert_eq!(values, (0..8).collect::<Vec<_>>());
    assert_eq!(TAGGED.most(), 2, "at most 2 runs tagged 'tl-db' at once");
    assert_eq!(in_use, 2);
    let waiting = states
        .iter()
        .filter(|s| *s == AWAITING_CONCURRENCY_SLOT)
        .count();
    assert_eq!(waiting, 6, "{states:?}");
    let said: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(AWAITING_CONCURRENCY_SLOT) && l.contains("tagged_query"))
        .cloned()
        .collect();
    assert_eq!(said.len(), 6, "one line per waiting run: {said:#?}");
    assert!(
        said[0]
            .contains("waiting for a slot of concurrency limit 'tag:tl-db' (2 of 2 slots in use)"),
        "{}",
        said[0]
    );
    // The flow's limit ended with its run.
    assert!(concurrency::tag_limit("tl-db").is_none());
}

static RUNNER_TAGGED: Gauge = Gauge {
    now: AtomicU32::new(0),
    most: AtomicU32::new(0),
};

#[task(tags = ["rl-db", "other"])]
fn runner_tagged() {
    RUNNER_TAGGED.hold(Duration::from_millis(80));
}

#[test]
fn a_runner_tag_limit_and_a_process_tag_limit_hold_too() {
    #[flow(task_runner = ThreadPoolTaskRunner::new(8).with_tag_limit("rl-db", 3))]
    fn on_runner() {
        for _ in 0..9 {
            runner_tagged.submit();
        }
    }
    on_runner().unwrap();
    assert_eq!(RUNNER_TAGGED.most(), 3);

    // A process-wide limit on a task's other tag applies as well: the
    // run needs a slot of each.
    concurrency::set_tag_limit("other", 1).unwrap();
    RUNNER_TAGGED.most.store(0, Ordering::SeqCst);
    on_runner().unwrap();
    assert_eq!(RUNNER_TAGGED.most(), 1);
    assert_eq!(concurrency::tag_limit("other").unwrap().active, 0);
    assert!(concurrency::remove_tag_limit("other"));
}

static PATHS: Gauge = Gauge {
    now: AtomicU32::new(0),
    most: AtomicU32::new(0),
};

/// Times out (its code keeps running until it returns).
#[task(tags = ["paths"], timeout = 0.2)]
fn times_out() -> Result<u32, String> {
    ends_body("slow")
}

#[task(tags = ["paths"])]
fn ends(how: String) -> Result<u32, String> {
    ends_body(&how)
}

fn ends_body(how: &str) -> Result<u32, String> {
    let start = Instant::now();
    PATHS.now.fetch_add(1, Ordering::SeqCst);
    PATHS
        .most
        .fetch_max(PATHS.now.load(Ordering::SeqCst), Ordering::SeqCst);
    let out = match how {
        "ok" => Ok(1),
        "err" => Err("refused".to_owned()),
        "panic" => {
            PATHS.now.fetch_sub(1, Ordering::SeqCst);
            panic!("exploded");
        }
        "slow" => {
            std::thread::sleep(Duration::from_millis(600));
            Ok(2)
        }
        _ => Ok(0),
    };
    let _ = start;
    PATHS.now.fetch_sub(1, Ordering::SeqCst);
    out
}

/// Submits a run that ends `ok`, `err`, `panic` (through `end_as`) and
/// `timeout` (through `time_out`), one after the other, and hands each to
/// `seen` once it is final.
fn each_way_a_run_ends<T: Clone + Send + 'static>(
    end_as: impl Fn(String) -> flowrun::TaskFuture<T>,
    time_out: impl Fn() -> flowrun::TaskFuture<T>,
    mut seen: impl FnMut(&str, &flowrun::TaskFuture<T>),
) {
    for how in ["ok", "err", "panic", "timeout"] {
        let f = if how == "timeout" {
            time_out()
        } else {
            end_as(how.to_owned())
        };
        let _ = f.result();
        seen(how, &f);
    }
}

#[test]
fn every_way_a_run_ends_gives_its_slot_back() {
    #[flow(concurrency_limits = [("paths", 1)], task_runner = ThreadPoolTaskRunner::new(8))]
    fn paths() -> Vec<(String, StateKind, u32)> {
        let mut seen = Vec::new();
        each_way_a_run_ends(
            |how| ends.submit(how),
            || times_out.submit(),
            |how, f| {
                let kind = f.state().kind();
                // A timed-out run keeps its slot until its code returns.
                if how == "timeout" {
                    assert_eq!(f.state().name(), "TimedOut");
                    assert_eq!(concurrency::tag_limit("paths").unwrap().active, 1);
                    assert!(common::eventually(Duration::from_secs(5), || {
                        concurrency::tag_limit("paths").unwrap().active == 0
                    }));
                }
                seen.push((
                    how.to_owned(),
                    kind,
                    concurrency::tag_limit("paths").unwrap().active,
                ));
            },
        );
        // Cancelled while waiting for its slot: takes none.
        let holder = ends.submit("slow".to_owned());
        std::thread::sleep(Duration::from_millis(50));
        let waiter = ends.submit("ok".to_owned());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(waiter.state().name(), AWAITING_CONCURRENCY_SLOT);
        assert!(waiter.cancel());
        let status = concurrency::tag_limit("paths").unwrap();
        assert_eq!((status.active, status.waiting), (1, 0));
        let _ = holder.result();
        assert!(common::eventually(Duration::from_secs(5), || {
            concurrency::tag_limit("paths").unwrap().active == 0
        }));
        seen.push((
            "cancelled".to_owned(),
            waiter.state().kind(),
            concurrency::tag_limit("paths").unwrap().active,
        ));
        seen
    }
    let run = paths.return_state();
    let seen = run.result().cloned().unwrap_or_default();
    assert_eq!(
        seen,
        vec![
            ("ok".to_owned(), StateKind::Completed, 0),
            ("err".to_owned(), StateKind::Failed, 0),
            ("panic".to_owned(), StateKind::Failed, 0),
            ("timeout".to_owned(), StateKind::Failed, 0),
            ("cancelled".to_owned(), StateKind::Cancelled, 0),
        ]
    );
    assert_eq!(PATHS.most(), 1, "never two 'paths' runs executing at once");
}

static GUARDED: Gauge = Gauge {
    now: AtomicU32::new(0),
    most: AtomicU32::new(0),
};

#[task]
fn guarded(i: u32) -> Result<u32, concurrency::ConcurrencyError> {
    let _slot = concurrency("guard-db", 1)?;
    GUARDED.hold(Duration::from_millis(60));
    Ok(i)
}

#[task]
async fn guarded_async(i: u32) -> Result<u32, concurrency::ConcurrencyError> {
    let _slot = concurrency::concurrency_async("guard-db", 1).await?;
    let n = GUARDED.now.fetch_add(1, Ordering::SeqCst) + 1;
    GUARDED.most.fetch_max(n, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(60)).await;
    GUARDED.now.fetch_sub(1, Ordering::SeqCst);
    Ok(i)
}

#[test]
fn guards_hold_a_named_limit_around_code_blocking_and_async() {
    concurrency::set_limit("guard-db", 2).unwrap();
    #[flow(task_runner = ThreadPoolTaskRunner::new(8))]
    fn guarded_flow() -> u32 {
        let a: Vec<_> = (0..6).map(|i| guarded.submit(i)).collect();
        let b: Vec<_> = (0..6).map(|i| guarded_async.submit(i)).collect();
        flowrun::results(a).unwrap().into_iter().sum::<u32>()
            + flowrun::results(b).unwrap().into_iter().sum::<u32>()
    }
    assert_eq!(guarded_flow().unwrap(), 30);
    assert_eq!(GUARDED.most(), 2);
    assert_eq!(concurrency::limit("guard-db").unwrap().active, 0);
    // In the flow body itself, too; released on drop.
    {
        let _a = concurrency("guard-db", 2).unwrap();
        assert_eq!(concurrency::limit("guard-db").unwrap().active, 2);
    }
    assert_eq!(concurrency::limit("guard-db").unwrap().active, 0);
    concurrency::remove_limit("guard-db");
}

#[test]
fn a_guard_that_waits_is_released_by_the_holder_and_a_dropped_wait_takes_nothing() {
    concurrency::set_limit("handoff", 1).unwrap();
    let first = concurrency("handoff", 1).unwrap();
    let got = Arc::new(Mutex::new(None));
    let g = got.clone();
    let waiter = std::thread::spawn(move || {
        let slot = concurrency("handoff", 1).unwrap();
        *g.lock().unwrap() = Some(Instant::now());
        drop(slot);
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        got.lock().unwrap().is_none(),
        "waits while the slot is held"
    );
    assert_eq!(concurrency::limit("handoff").unwrap().waiting, 1);
    let released = Instant::now();
    drop(first);
    waiter.join().unwrap();
    assert!(got.lock().unwrap().unwrap() >= released);

    // An async wait dropped before it is granted takes no slot.
    let held = concurrency("handoff", 1).unwrap();
    flowrun::runner::runtime().block_on(async {
        let wait = concurrency::concurrency_async("handoff", 1);
        let r = tokio::time::timeout(Duration::from_millis(50), wait).await;
        assert!(r.is_err(), "still waiting");
    });
    assert_eq!(concurrency::limit("handoff").unwrap().waiting, 0);
    drop(held);
    assert_eq!(concurrency::limit("handoff").unwrap().active, 0);
    concurrency::remove_limit("handoff");
}

#[test]
fn a_rate_limit_lets_calls_through_at_its_rate() {
    concurrency::set_rate_limit("api-rate", 20.0).unwrap();
    let start = Instant::now();
    let mut at = Vec::new();
    for _ in 0..40 {
        concurrency::rate_limit("api-rate").unwrap();
        at.push(start.elapsed());
    }
    // A burst of 20, then 20 more at 20 a second: about one second.
    assert!(at[19] < Duration::from_millis(500), "{at:?}");
    assert!(at[39] >= Duration::from_millis(900), "{at:?}");
    // Never more than burst + rate * t calls by time t.
    for (i, t) in at.iter().enumerate() {
        let allowed = 20.0 + 20.0 * t.as_secs_f64() + 1.0;
        assert!((i as f64) < allowed, "call {i} at {t:?}");
    }
    flowrun::runner::runtime().block_on(async {
        concurrency::rate_limit_async("api-rate").await.unwrap();
    });
    // A rate limit is not a concurrency limit, and the other way round.
    concurrency::set_limit("not-rate", 1).unwrap();
    let e = concurrency::rate_limit("not-rate").unwrap_err();
    assert_eq!(e.kind(), ConcurrencyErrorKind::InvalidLimit);
    assert_eq!(concurrency::limit("not-rate").unwrap().active, 0);
    concurrency::remove_limit("not-rate");
    concurrency::remove_limit("api-rate");
}

#[test]
fn bad_limits_and_requests_are_clear_errors_never_hangs() {
    let e = concurrency::set_tag_limit("zero", 0).unwrap_err();
    assert_eq!(e.kind(), ConcurrencyErrorKind::InvalidLimit);
    assert!(e.message().contains("at least 1 slot"), "{e}");
    assert!(concurrency::set_rate_limit("neg", -1.0).is_err());

    concurrency::set_limit("small", 2).unwrap();
    let e = concurrency("small", 3).unwrap_err();
    assert_eq!(e.kind(), ConcurrencyErrorKind::TooManySlots);
    assert_eq!(
        e.message(),
        "asked for 3 slots of concurrency limit 'small', which has only 2: the request could never be granted"
    );
    assert_eq!(
        concurrency("small", 0).unwrap_err().kind(),
        ConcurrencyErrorKind::TooManySlots
    );
    let e = concurrency("nobody-set-this", 1).unwrap_err();
    assert_eq!(e.kind(), ConcurrencyErrorKind::UnknownLimit);
    assert!(e.message().contains("'nobody-set-this'"), "{e}");
    concurrency::remove_limit("small");

    // A runner limit of 0 keeps the flow from starting, saying why.
    #[flow(task_runner = ThreadPoolTaskRunner::new(2).with_tag_limit("zero", 0))]
    fn never() {}
    let run = never.return_state();
    assert!(run.state().is_crashed(), "{}", run.state());
    assert!(
        run.state()
            .message()
            .unwrap()
            .contains("concurrency limit 'tag:zero' must allow at least 1 slot"),
        "{}",
        run.state()
    );

    // A task that asks for too many slots fails at once with the reason.
    concurrency::set_limit("small2", 1).unwrap();
    #[task]
    fn greedy() -> Result<(), concurrency::ConcurrencyError> {
        let _s = concurrency("small2", 5)?;
        Ok(())
    }
    #[flow]
    fn greedy_flow() -> TaskErrorKind {
        greedy.submit().result().unwrap_err().kind().clone()
    }
    assert_eq!(greedy_flow().unwrap(), TaskErrorKind::Error);
    concurrency::remove_limit("small2");
}

// ---- the local cluster: worker processes of this test program ----------

#[task(tags = ["cl-db"])]
fn cluster_tagged(dir: String) {
    common::record_span(&dir, "tagged", Duration::from_millis(150));
}

#[task]
fn cluster_guarded(dir: String) -> Result<(), concurrency::ConcurrencyError> {
    let _slot = concurrency("cl-guard", 1)?;
    common::record_span(&dir, "guarded", Duration::from_millis(100));
    Ok(())
}

#[test]
fn on_the_local_cluster_tag_limits_and_guards_hold_across_worker_processes() {
    #[flow(task_runner = common::local_cluster(2, 2), concurrency_limits = [("cl-db", 1)])]
    fn across(dir: String) -> (Vec<String>, u32) {
        std::fs::create_dir_all(&dir).unwrap();
        concurrency::flow_limits(&flowrun::runner::current_flow_handle().unwrap())
            .set_limit("cl-guard", 1)
            .unwrap();
        let tagged: Vec<_> = (0..6).map(|_| cluster_tagged.submit(dir.clone())).collect();
        std::thread::sleep(Duration::from_millis(50));
        let states = tagged.iter().map(|f| f.state().name().to_owned()).collect();
        let guards: Vec<_> = (0..6)
            .map(|_| cluster_guarded.submit(dir.clone()))
            .collect();
        flowrun::results(tagged).unwrap();
        flowrun::results(guards).unwrap();
        let in_use = concurrency::limit("cl-guard").unwrap().active
            + concurrency::tag_limit("cl-db").unwrap().active;
        (states, in_use)
    }
    let dir = common::scratch("cluster-limits")
        .to_string_lossy()
        .into_owned();
    let (states, in_use) = across(dir.clone()).unwrap();
    let tagged = common::most_at_once(&dir, "tagged");
    let guards = common::most_at_once(&dir, "guarded");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(in_use, 0);
    assert!(
        states.iter().any(|s| s == AWAITING_CONCURRENCY_SLOT),
        "{states:?}"
    );
    assert_eq!(tagged.0, 1, "tag limit across workers: {tagged:?}");
    assert_eq!(tagged.1, 6);
    assert_eq!(guards.0, 1, "guard across workers: {guards:?}");
    assert_eq!(guards.1, 6);
    assert_eq!(guards.2, 2, "the guarded runs ran on both workers");
}

#[task(tags = ["cl-paths"])]
fn cl_ends(how: String) -> Result<u32, String> {
    match how.as_str() {
        "ok" => Ok(1),
        "err" => Err("refused".to_owned()),
        "panic" => panic!("exploded"),
        _ => {
            std::thread::sleep(Duration::from_millis(800));
            Ok(2)
        }
    }
}

#[task(tags = ["cl-paths"], timeout = 0.3)]
fn cl_times_out() -> u32 {
    std::thread::sleep(Duration::from_millis(900));
    3
}

/// Holds the guard "cl-held"; its first execution waits to be killed.
#[task(tags = ["cl-paths"])]
fn cl_victim(dir: String) -> Result<u32, concurrency::ConcurrencyError> {
    let _slot = concurrency("cl-held", 1)?;
    let marker = format!("{dir}/victim.pid");
    if std::fs::metadata(&marker).is_err() {
        std::fs::write(&marker, std::process::id().to_string()).unwrap();
        std::thread::sleep(Duration::from_secs(30));
    }
    Ok(std::process::id())
}

#[test]
fn on_the_local_cluster_every_way_a_run_ends_gives_its_slots_back() {
    #[flow(task_runner = common::local_cluster(2, 2), concurrency_limits = [("cl-paths", 1)])]
    fn cluster_paths(dir: String) -> Vec<(String, String, u32)> {
        std::fs::create_dir_all(&dir).unwrap();
        let handle = flowrun::runner::current_flow_handle().unwrap();
        concurrency::flow_limits(&handle)
            .set_limit("cl-held", 1)
            .unwrap();
        let active = || {
            concurrency::tag_limit("cl-paths").unwrap().active
                + concurrency::limit("cl-held").unwrap().active
        };
        let mut seen = Vec::new();
        each_way_a_run_ends(
            |how| cl_ends.submit(how),
            || cl_times_out.submit(),
            |how, f| seen.push((how.to_owned(), f.state().name().to_owned(), active())),
        );
        // Cancelled while waiting for its slot: takes none.
        let holder = cl_ends.submit("slow".to_owned());
        assert!(common::eventually(Duration::from_secs(10), || holder
            .state()
            .is_running()));
        let waiter = cl_ends.submit("ok".to_owned());
        assert_eq!(waiter.state().name(), AWAITING_CONCURRENCY_SLOT);
        assert!(waiter.cancel());
        let _ = holder.result();
        seen.push((
            "cancelled".to_owned(),
            waiter.state().name().to_owned(),
            active(),
        ));

        // Crashed: the worker holding the guard (and the tag slot) dies.
        // Its rerun needs the same guard: it would wait forever if the dead
        // worker's slot were kept.
        let v = cl_victim.submit(dir.clone());
        let marker = format!("{dir}/victim.pid");
        assert!(common::eventually(Duration::from_secs(20), || {
            std::fs::metadata(&marker).is_ok()
        }));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(active(), 2, "the victim holds its tag slot and its guard");
        let doomed: u32 = std::fs::read_to_string(&marker).unwrap().parse().unwrap();
        // SAFETY: sending SIGKILL to a worker process of this test.
        unsafe {
            libc::kill(doomed as i32, libc::SIGKILL);
        }
        let rescued = v
            .result_timeout(Duration::from_secs(30))
            .expect("the rerun got the dead worker's guard slot")
            .unwrap();
        assert_ne!(rescued, doomed);
        seen.push(("crashed".to_owned(), v.state().name().to_owned(), active()));
        seen
    }
    let dir = common::scratch("cluster-paths")
        .to_string_lossy()
        .into_owned();
    let run = cluster_paths.return_state(dir.clone());
    let _ = std::fs::remove_dir_all(&dir);
    let seen = run.result().cloned().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        seen,
        vec![
            ("ok".to_owned(), "Completed".to_owned(), 0),
            ("err".to_owned(), "Failed".to_owned(), 0),
            ("panic".to_owned(), "Failed".to_owned(), 0),
            ("timeout".to_owned(), "TimedOut".to_owned(), 0),
            ("cancelled".to_owned(), "Cancelled".to_owned(), 0),
            ("crashed".to_owned(), "Completed".to_owned(), 0),
        ]
    );
}

#[task(tags = ["cl-stop"])]
fn cl_long() -> u32 {
    std::thread::sleep(Duration::from_secs(20));
    1
}

#[test]
fn on_the_local_cluster_a_failing_flow_cancels_running_runs_and_their_slots_go_back() {
    concurrency::set_tag_limit("cl-stop", 1).unwrap();
    #[flow(task_runner = common::local_cluster(2, 2))]
    fn stops() {
        let running = cl_long.submit();
        let _waiting = cl_long.submit();
        assert!(common::eventually(Duration::from_secs(10), || running
            .state()
            .is_running()));
        panic!("the flow fails");
    }
    let started = Instant::now();
    let run = stops.return_state();
    assert!(run.state().is_failed(), "{}", run.state());
    assert!(started.elapsed() < Duration::from_secs(15));
    let status = concurrency::tag_limit("cl-stop").unwrap();
    assert_eq!((status.active, status.waiting), (0, 0));
    concurrency::remove_tag_limit("cl-stop");
}

#[task(tags = ["dash-db"])]
fn dash_hold(gate: String) {
    while std::fs::metadata(&gate).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A GET of the dashboard's `/api/state` over a raw connection.
fn dashboard_state(link: &str) -> String {
    common::http_get(common::socket_of(link), "/api/state", "127.0.0.1").1
}

#[test]
fn the_dashboard_lists_a_run_waiting_for_a_slot_with_its_reason() {
    #[flow(task_runner = common::local_cluster(2, 2), concurrency_limits = [("dash-db", 1)])]
    fn shown(gate: String) -> (String, String) {
        let first = dash_hold.submit(gate.clone());
        let second = dash_hold.submit(gate.clone());
        assert!(common::eventually(Duration::from_secs(20), || first
            .state()
            .is_running()));
        let link = flowrun_dask::dashboard_link().expect("the flow run's dashboard link");
        let mut state = String::new();
        common::eventually(Duration::from_secs(10), || {
            state = dashboard_state(&link);
            state.contains(&second.name())
        });
        std::fs::write(&gate, "go").unwrap();
        flowrun::results([first, second]).unwrap();
        let handle = flowrun::runner::current_flow_handle().unwrap();
        (
            state,
            format!("{:?}", concurrency::flow_limits(&handle).waiting()),
        )
    }
    let gate = common::scratch("dash-gate").to_string_lossy().into_owned();
    let (during, after) = shown(gate.clone()).unwrap();
    let _ = std::fs::remove_file(&gate);
    assert!(
        during.contains(
            r#"{"reason":"AwaitingConcurrencySlot: waiting for a slot of concurrency limit 'tag:dash-db' (1 of 1 slots in use)","run":"dash_hold-1"}"#
        ),
        "{during}"
    );
    assert_eq!(after, "[]", "nothing waits once the runs ended");
}

//! Scenarios every task runner must pass, written once and run on each
//! backend: the thread pool, a local cluster (worker processes running this
//! test binary), and a real Dask cluster (a scheduler and stock Python
//! workers from PyPI, see `tests/support`).
//!
//! A scenario is a function taking the runner its flows run on; it asserts
//! only what a user may rely on whatever the runner (which worker or
//! process ran a task, for example, is the runner's business).
//! [`scenarios!`] turns the list into one test per scenario and
//! backend: `<scenario>::threads`, `<scenario>::local_cluster` and
//! `<scenario>::real_dask`, so `cargo test -p flowrun-dask --test scenarios
//! retries::` runs one scenario everywhere. The real-Dask tests share one
//! cluster, started by the first of them and stopped when the test process
//! exits.
//!
//! Task state that must survive the process boundary (a retry counter, a
//! "this ran" marker) lives in files under [`Scratch`].

mod called_subflows;
mod common;
mod support;
mod tasks;

use called_subflows::{double, failing_child, tasks_call_flows};
use tasks::{first_and_last, square, total};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use flowrun::runner::TaskRunner;
use flowrun::{
    allow_failure, as_completed_timeout, current_flow_run_name, current_task_run_name, flow, task,
    unmapped, wait_timeout, FlowOptions, MapError, RunRef, State, StateKind, TaskError,
    TaskErrorKind, TaskFuture, TaskOptions, ThreadPoolTaskRunner,
};
use flowrun_dask::{ClientKwargs, DaskTaskRunner};

/// One test per scenario and backend it runs on: `<scenario>::<backend>`.
/// Every scenario runs on every backend of the one list.
macro_rules! scenarios {
    (on $backends:tt: $($scenario:ident),+ $(,)?) => {
        $(scenarios!(@one $scenario $backends);)+
    };
    (@one $scenario:ident [$($backend:ident),+]) => {
        mod $scenario {
            $(#[test]
            fn $backend() {
                let _watch = super::begin(concat!(stringify!($scenario), "::", stringify!($backend)));
                super::$scenario(super::$backend());
            })+
        }
    };
}

scenarios! {
    on [threads, local_cluster, real_dask]:
    dependencies,
    failures_propagate,
    allow_failure_hands_over_the_outcome,
    retries,
    timeouts,
    map,
    futures_inside_collections,
    results_and_waiting,
    cancellation,
    subflows,
    subflows_in_tasks,
    task_hooks,
    wait_timeout_splits_done_and_not_done,
    as_completed_timeout_hands_back_the_rest,
    task_run_names,
    flow_run_names,
    a_failing_hook_changes_nothing,
    flow_hooks,
    quiet_task_completions,
    retry_condition_from_the_attribute,
    retry_condition_per_call,
    hooks_of_retried_runs,
}

// ---------------------------------------------------------------------------
// The backends.

fn threads() -> ThreadPoolTaskRunner {
    ThreadPoolTaskRunner::new(4)
}

fn local_cluster() -> DaskTaskRunner {
    common::local_cluster(2, 2)
}

/// A runner on the shared real Dask cluster.
fn real_dask() -> DaskTaskRunner {
    DaskTaskRunner::new()
        .address(shared_cluster())
        .client_kwargs(ClientKwargs::new().timeout(Duration::from_secs(60)))
}

/// The shared cluster (2 workers x 2 threads) lives in the static below.
/// The thread that starts it stays for the life of the process: the Dask
/// processes get SIGKILL from the kernel when the thread that started them
/// ends. At exit the cluster is stopped properly (and its directory
/// removed).
static SHARED: Mutex<Option<support::Cluster>> = Mutex::new(None);

fn shared_cluster() -> &'static str {
    static ADDRESS: OnceLock<String> = OnceLock::new();
    ADDRESS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("shared-dask-cluster".into())
            .spawn(move || {
                let workers = [
                    support::WorkerSpec::threads(2),
                    support::WorkerSpec::threads(2),
                ];
                let cluster = support::Cluster::start(&workers);
                let address = cluster.address.clone();
                *SHARED.lock().unwrap_or_else(|p| p.into_inner()) = Some(cluster);
                // SAFETY: registers a plain function without arguments; it
                // runs at process exit, after the tests.
                unsafe {
                    libc::atexit(stop_shared_cluster);
                }
                let _ = tx.send(address);
                loop {
                    std::thread::park();
                }
            })
            .expect("start the thread of the shared Dask cluster");
        rx.recv()
            .expect("the shared Dask cluster did not start (see the panic above)")
    })
}

extern "C" fn stop_shared_cluster() {
    let _ = std::panic::catch_unwind(|| {
        drop(SHARED.lock().unwrap_or_else(|p| p.into_inner()).take());
    });
}

/// The longest a scenario may take before it is declared hung.
const HANG: Duration = Duration::from_secs(300);

/// Diverts a process that is a worker of a cluster (local or Dask's task
/// mode, both run this binary as the current test) before the test does
/// anything; then guards against a hang.
fn begin(test: &'static str) -> common::HangGuard {
    flowrun::worker::divert_if_worker();
    // Before any flow: the console of this process is captured (with the
    // run history's tap, as flowrun's own console has) for the scenarios
    // that read it.
    common::console_lines_and_history();
    common::HangGuard::new(test, HANG)
}

/// A directory for files that tasks in other processes write; removed on
/// drop.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Scratch {
        Scratch(
            tempfile::Builder::new()
                .prefix("flowrun-scenario-")
                .tempdir()
                .expect("create a scratch directory"),
        )
    }

    /// The path of `name` in it, as a task argument.
    fn file(&self, name: &str) -> String {
        self.0.path().join(name).display().to_string()
    }
}

/// How many lines a task appended to `path`.
fn count_lines(path: &str) -> usize {
    common::lines(path).len()
}

/// Calls `run` with the path of a fresh marker file that a run which must
/// not happen writes to, and checks that none did (`what` names that run).
fn never_marked<T>(what: &str, run: impl FnOnce(String) -> T) -> T {
    let scratch = Scratch::new();
    let marker = scratch.file("marker");
    let got = run(marker.clone());
    assert_eq!(count_lines(&marker), 0, "{what} ran");
    got
}

// ---------------------------------------------------------------------------
// Dependencies: a future argument makes the downstream run wait for it
// and receive its value; futures and values mix and one future feeds many
// runs; `wait_for` orders runs without passing values, and a failed run it
// waits for fails the waiting run; a long chain completes in order.
// (A failed upstream's dependents: `failures_propagate`.)

#[task]
fn load(n: u64) -> Vec<u64> {
    std::thread::sleep(Duration::from_millis(200));
    (0..n).collect()
}

#[task]
fn sum(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

#[task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Appends `line` to `path` and returns the line count after it.
#[task]
fn append_line(path: String, line: String) -> usize {
    std::thread::sleep(Duration::from_millis(150));
    common::append(&path, &line);
    count_lines(&path)
}

#[flow]
fn dependent_runs(path: String) -> (u64, Vec<u64>, u64, (usize, usize), StateKind) {
    let loaded = load.submit(5);
    let summed = sum.submit(loaded).result().unwrap();
    let a = add.submit(1, 2);
    let b = add.submit(&a, 10);
    let c = add.submit(&a, &b);
    let d = add.submit(a, c.clone());
    let mixed = vec![
        b.result().unwrap(),
        c.result().unwrap(),
        d.result().unwrap(),
    ];
    let mut chain = add.submit(0, 0);
    for i in 1..=200 {
        chain = add.submit(chain, i);
    }
    let first = append_line.submit(path.clone(), "first".to_owned());
    let second = append_line
        .wait_for(&first)
        .submit(path.clone(), "second".to_owned());
    let bad = kaboom.submit();
    let waiting = append_line.wait_for(&bad).submit(path, "never".to_owned());
    waiting.wait();
    (
        summed,
        mixed,
        chain.result().unwrap(),
        (first.result().unwrap(), second.result().unwrap()),
        waiting.state().kind(),
    )
}

fn dependencies<R: TaskRunner + Clone>(runner: R) {
    let scratch = Scratch::new();
    let got = dependent_runs
        .with_runner(runner)
        .call(scratch.file("order"))
        .unwrap();
    assert_eq!(
        got,
        (
            10,
            vec![13, 16, 19],
            200 * 201 / 2,
            (1, 2),
            StateKind::Failed
        )
    );
    assert_eq!(common::lines(&scratch.file("order")), ["first", "second"]);
}

// ---------------------------------------------------------------------------
// Failures: an `Err` keeps its value's message, a panic its message and
// place; a failed upstream fails its dependents (naming it) without running
// them; a failure the flow did not handle fails the flow.

#[task]
fn disk_full(label: String) -> Result<u64, String> {
    Err(format!("disk full ({label})"))
}

#[task]
fn kaboom() -> u64 {
    panic!("kaboom")
}

/// Marks that it ran (it must not).
#[task]
fn after(x: u64, marker: String) -> u64 {
    common::append(&marker, "ran");
    x + 1
}

type Seen = (TaskErrorKind, String, StateKind);

#[flow]
fn failing(marker: String) -> Vec<Seen> {
    let a = disk_full.submit("a".to_owned());
    let b = after.submit(&a, marker.clone());
    let c = after.submit(&b, marker);
    let p = kaboom.submit();
    [a, b, c, p]
        .iter()
        .map(|f| {
            let e = f.result().unwrap_err();
            (e.kind().clone(), e.message().to_owned(), f.state().kind())
        })
        .collect()
}

#[flow]
fn unhandled() -> u64 {
    let failed = kaboom.submit();
    failed.wait();
    7
}

fn failures_propagate<R: TaskRunner + Clone>(runner: R) {
    let seen = never_marked("a dependent of a failure", |marker| {
        failing.with_runner(runner.clone()).call(marker).unwrap()
    });
    assert_eq!(
        seen[0],
        (
            TaskErrorKind::Error,
            "disk full (a)".to_owned(),
            StateKind::Failed
        )
    );
    let b = common::upstream_failed("disk_full-0", "disk full (a)");
    assert_eq!(seen[1], (b.0.clone(), b.1.clone(), StateKind::Failed));
    let c = common::upstream_failed("after-0", &b.1);
    assert_eq!((&seen[2].0, &seen[2].1), (&c.0, &c.1));
    assert_eq!(seen[3].0, TaskErrorKind::Panic);
    // Workers add where the panic happened (" (panicked at file:line)"):
    // the panic's own report went to their stderr.
    assert!(seen[3].1.starts_with("kaboom"), "{}", seen[3].1);

    let error = unhandled.with_runner(runner).call().unwrap_err();
    assert!(error.to_string().contains("kaboom"), "{error}");
}

// ---------------------------------------------------------------------------
// allow_failure: the dependent runs in any case and receives the
// upstream's outcome as a `Result`.

#[task]
fn fetch(ok: bool) -> Result<u32, String> {
    if ok {
        Ok(7)
    } else {
        Err("the server is down".into())
    }
}

#[task]
fn explode() -> u32 {
    panic!("boom")
}

/// Describes what it received.
#[task]
fn report(fetched: Result<u32, TaskError>, label: String) -> String {
    match fetched {
        Ok(v) => format!("{label}: got {v}"),
        Err(e) => format!(
            "{label}: {:?} {} ({})",
            e.kind(),
            e.message(),
            e.task_run().unwrap_or("?")
        ),
    }
}

#[task]
fn plus_one(x: u32) -> u32 {
    x + 1
}

#[flow]
fn report_outcomes() -> (Vec<String>, StateKind, Option<TaskErrorKind>) {
    let good = fetch.submit(true);
    let bad = fetch.submit(false);
    let boom = explode.submit();
    let reports = vec![
        report.submit(allow_failure(&good), "good"),
        report.submit(allow_failure(bad), "bad"),
        report.submit(allow_failure(boom), "boom"),
    ];
    let reports = reports.into_iter().map(|r| r.result().unwrap()).collect();
    // Without allow_failure the dependent still does not run.
    let downstream = plus_one.submit(fetch.submit(false));
    downstream.wait();
    (
        reports,
        downstream.state().kind(),
        downstream.result().err().map(|e| e.kind().clone()),
    )
}

fn allow_failure_hands_over_the_outcome<R: TaskRunner + Clone>(runner: R) {
    // The failures were passed on, so they count as handled: the flow
    // completes.
    let (got, state, kind) = report_outcomes.with_runner(runner).call().unwrap();
    assert_eq!(got[0], "good: got 7");
    assert_eq!(got[1], "bad: Error the server is down (fetch-1)");
    assert!(got[2].starts_with("boom: Panic boom"), "{}", got[2]);
    assert_eq!(state, StateKind::Failed);
    assert_eq!(
        kind,
        Some(TaskErrorKind::UpstreamFailed {
            upstream: "fetch-2".into()
        })
    );
}

// ---------------------------------------------------------------------------
// Retries: a failing run is run again until it succeeds or its retries are
// used up; options set per call apply.

/// Fails (by panic) until its `succeed_on`-th run; each run appends a line.
#[task(retries = 2, retry_delay = 0)]
fn flaky(counter: String, succeed_on: usize) -> usize {
    common::append(&counter, "run");
    let runs = count_lines(&counter);
    if runs < succeed_on {
        panic!("not yet (run {runs})");
    }
    runs
}

#[task]
fn fails_always(counter: String) -> Result<(), String> {
    common::append(&counter, "run");
    Err("still broken".into())
}

#[flow]
fn retried(dir: String) -> (usize, String, usize, String) {
    let second = flaky.submit(format!("{dir}/second"), 2).result().unwrap();
    let never = flaky
        .submit(format!("{dir}/never"), 10)
        .result()
        .unwrap_err()
        .message()
        .to_owned();
    let options = TaskOptions::new().retries(1);
    let broken = fails_always
        .with_options(options)
        .submit(format!("{dir}/per-call"))
        .result()
        .unwrap_err()
        .message()
        .to_owned();
    (second, never, count_lines(&format!("{dir}/never")), broken)
}

fn retries<R: TaskRunner + Clone>(runner: R) {
    let scratch = Scratch::new();
    let dir = scratch.0.path().display().to_string();
    let (second, never, never_runs, broken) =
        retried.with_runner(runner).call(dir.clone()).unwrap();
    assert_eq!(second, 2, "succeeded on its second run");
    assert!(never.starts_with("not yet (run 3)"), "{never}");
    assert_eq!(never_runs, 3, "one run and two retries");
    assert_eq!(broken, "still broken");
    assert_eq!(count_lines(&format!("{dir}/per-call")), 2);
}

// ---------------------------------------------------------------------------
// Timeouts: an attempt that runs too long fails as timed out, without the
// flow waiting for it; one within its timeout completes.

#[task(timeout = 0.5)]
fn sleeps(millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    millis
}

#[flow]
fn timed() -> (TaskErrorKind, String, String, u64) {
    let slow = sleeps.submit(20_000);
    let error = slow.result().unwrap_err();
    let quick = sleeps.submit(10).result().unwrap();
    (
        error.kind().clone(),
        error.to_string(),
        slow.state().name().to_owned(),
        quick,
    )
}

fn timeouts<R: TaskRunner + Clone>(runner: R) {
    let started = Instant::now();
    let (kind, message, state, quick) = timed.with_runner(runner).call().unwrap();
    assert_eq!(kind, TaskErrorKind::TimedOut);
    assert!(message.contains("timed out after 500ms"), "{message}");
    assert_eq!(state, "TimedOut");
    assert_eq!(quick, 10);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the flow waited for the timed-out sleeper"
    );
}

// ---------------------------------------------------------------------------
// map: one run per element in order, zipped iterables, `unmapped`
// arguments, futures as elements and as the unmapped argument, nothing for
// an empty iterable; arguments of different lengths, or nothing to map, are
// an error naming them.

#[task]
fn times(value: i64, factor: i64) -> i64 {
    value * factor
}

#[task]
fn negate(value: i64) -> i64 {
    -value
}

#[flow]
fn mapped() -> [Vec<i64>; 5] {
    let negated = negate.map(vec![1, 2, 3]).unwrap();
    assert_eq!(negated.len(), 3);
    let factor = times.submit(2, 5);
    let products = times.map(&negated, unmapped(factor)).unwrap();
    [
        flowrun::results(negated).unwrap(),
        flowrun::results(times.map([1, 2, 3], 10..13).unwrap()).unwrap(),
        flowrun::results(times.map(vec![1, 2, 3], unmapped(100)).unwrap()).unwrap(),
        flowrun::results(products).unwrap(),
        flowrun::results(negate.map(Vec::<i64>::new()).unwrap()).unwrap(),
    ]
}

#[flow]
fn bad_maps() -> (MapError, MapError) {
    (
        times.map(vec![1, 2, 3], vec![1, 2]).unwrap_err(),
        times.map(unmapped(1), unmapped(2)).unwrap_err(),
    )
}

fn map<R: TaskRunner + Clone>(runner: R) {
    assert_eq!(
        mapped.with_runner(runner.clone()).call().unwrap(),
        [
            vec![-1, -2, -3],
            vec![10, 22, 36],
            vec![100, 200, 300],
            vec![-10, -20, -30],
            vec![],
        ]
    );
    // Bad arguments are an error naming them, before anything is submitted.
    let (unequal, all_unmapped) = bad_maps.with_runner(runner).call().unwrap();
    assert!(matches!(unequal, MapError::UnequalLengths { .. }));
    let message = unequal.to_string();
    common::assert_holds(&message, &["`value` has 3", "`factor` has 2"]);
    assert!(matches!(all_unmapped, MapError::NothingToMap { .. }));
}

// ---------------------------------------------------------------------------
// Futures inside collections: a task that takes a `Vec<T>` (an array, an
// `Option<T>`, a tuple, a map of `T`s) takes the same collection of
// futures, each a dependency; `map` takes the future of a list; a failed
// element fails the reducer without running it.

#[task]
fn or_zero(value: Option<i64>) -> i64 {
    value.unwrap_or(0)
}

#[task]
fn pair(both: (i64, String)) -> String {
    format!("{}:{}", both.1, both.0)
}

#[task]
fn tag(x: i64) -> String {
    format!("n{x}")
}

#[task]
fn hashed(values: HashMap<String, i64>) -> Vec<(String, i64)> {
    let mut v: Vec<_> = values.into_iter().collect();
    v.sort();
    v
}

#[task]
fn ordered(values: BTreeMap<u32, i64>) -> Vec<(u32, i64)> {
    values.into_iter().collect()
}

#[task]
fn numbers(n: i64) -> Vec<i64> {
    (0..n).collect()
}

#[task]
fn no_numbers(_n: i64) -> Vec<i64> {
    panic!("no list today")
}

#[task]
fn shatter(_x: i64) -> i64 {
    panic!("one element exploded")
}

/// Marks that it ran (it must not).
#[task]
fn reduce_and_mark(values: Vec<i64>, marker: String) -> i64 {
    common::append(&marker, "ran");
    values.iter().sum()
}

fn upstream_of(error: &TaskError) -> String {
    match error.kind() {
        TaskErrorKind::UpstreamFailed { upstream } => upstream.clone(),
        other => panic!("expected UpstreamFailed, got {other:?}"),
    }
}

/// Every collection form, as the flow returns them.
type Forms = (
    (i64, i64),
    (i64, i64),
    (i64, i64),
    String,
    Vec<(String, i64)>,
    Vec<(u32, i64)>,
    Vec<i64>,
    Vec<i64>,
);

#[flow]
fn collected() -> Forms {
    let squares: Vec<TaskFuture<i64>> = (1..=4).map(|x| square.submit(x)).collect();
    let by_value = total.submit(squares.clone()).result().unwrap();
    let by_ref = total.submit(&squares).result().unwrap();
    let array = [square.submit(2), square.submit(3), square.submit(4)];
    let ends = first_and_last.submit(array).result().unwrap();
    let some = or_zero.submit(Some(square.submit(5))).result().unwrap();
    let none = or_zero.submit(None::<TaskFuture<i64>>).result().unwrap();
    let tuple = pair
        .submit((square.submit(6), tag.submit(6)))
        .result()
        .unwrap();
    let hash: HashMap<String, TaskFuture<i64>> = [("a", 1), ("b", 2)]
        .into_iter()
        .map(|(k, x)| (k.to_owned(), square.submit(x)))
        .collect();
    let tree: BTreeMap<u32, TaskFuture<i64>> =
        (1..=3).map(|x| (x, square.submit(i64::from(x)))).collect();
    // `map` over collections of futures: one call per inner collection.
    let groups = vec![
        vec![square.submit(1), square.submit(2)],
        vec![square.submit(3)],
        Vec::new(),
    ];
    let per_group = flowrun::results(total.map(groups).unwrap()).unwrap();
    // `map` over the future of a list: one run per element.
    let list = numbers.submit(4);
    let per_element = flowrun::results(square.map(&list).unwrap()).unwrap();
    (
        (by_value, by_ref),
        ends,
        (some, none),
        tuple,
        hashed.submit(hash).result().unwrap(),
        ordered.submit(tree).result().unwrap(),
        per_group,
        per_element,
    )
}

#[flow]
fn failed_elements(marker: String) -> (String, StateKind, usize, String) {
    let parts = vec![square.submit(1), shatter.submit(2), square.submit(3)];
    let reduced = reduce_and_mark.submit(parts, marker);
    let upstream = upstream_of(&reduced.result().unwrap_err());
    // A failed list gives one run that fails as its upstream did.
    let failed = square.map(no_numbers.submit(1)).unwrap();
    let list_upstream = upstream_of(&failed[0].result().unwrap_err());
    (
        upstream,
        reduced.state().kind(),
        failed.len(),
        list_upstream,
    )
}

fn futures_inside_collections<R: TaskRunner + Clone>(runner: R) {
    let got = collected.with_runner(runner.clone()).call().unwrap();
    assert_eq!(
        got,
        (
            (1 + 4 + 9 + 16, 30),
            (4, 16),
            (25, 0),
            "n6:36".to_owned(),
            vec![("a".to_owned(), 1), ("b".to_owned(), 4)],
            vec![(1, 1), (2, 4), (3, 9)],
            vec![5, 9, 0],
            vec![0, 1, 4, 9],
        )
    );
    let got = never_marked("the reducer", |marker| {
        failed_elements.with_runner(runner).call(marker).unwrap()
    });
    assert_eq!(
        got,
        (
            "shatter-0".to_owned(),
            StateKind::Failed,
            1,
            "no_numbers-0".to_owned()
        )
    );
}

// ---------------------------------------------------------------------------
// Reading results: `result` many times, `results` in order, `wait`,
// `as_completed` yields every run once, `result_timeout` gives up on a run
// still going.

#[task]
fn slow_square(x: u64, millis: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(millis));
    x * x
}

#[flow]
fn read_results() -> (u64, u64, Vec<u64>, bool, Vec<u64>, (bool, u64)) {
    let one = slow_square.submit(3, 0);
    let first = one.result().unwrap();
    let again = one.result().unwrap();
    let many: Vec<_> = (1..=5).map(|x| slow_square.submit(x, 0)).collect();
    flowrun::wait(&many);
    let all_final = many.iter().all(|f| f.state().is_final());
    let in_order = flowrun::results(many.clone()).unwrap();
    let mut completed: Vec<u64> = flowrun::as_completed(many)
        .map(|f| f.result().unwrap())
        .collect();
    completed.sort();
    let slow = slow_square.submit(4, 2_000);
    let waits = common::gives_up_then_gets(&slow, Duration::from_secs(60));
    (first, again, in_order, all_final, completed, waits)
}

fn results_and_waiting<R: TaskRunner + Clone>(runner: R) {
    assert_eq!(
        read_results.with_runner(runner).call().unwrap(),
        (
            9,
            9,
            vec![1, 4, 9, 16, 25],
            true,
            vec![1, 4, 9, 16, 25],
            (true, 16)
        )
    );
}

// ---------------------------------------------------------------------------
// Cancellation: a run still waiting for its upstream can be cancelled; it
// never runs and ends Cancelled.

#[flow]
fn cancel_waiting(marker: String) -> (bool, bool, StateKind, u64) {
    let blocker = slow_square.submit(2, 1_500);
    let waiting = after.submit(&blocker, marker);
    let pending = waiting.state().is_pending();
    let cancelled = waiting.cancel();
    let upstream = blocker.result().unwrap();
    waiting.wait();
    (pending, cancelled, waiting.state().kind(), upstream)
}

fn cancellation<R: TaskRunner + Clone>(runner: R) {
    let got = never_marked("the cancelled run", |marker| {
        cancel_waiting.with_runner(runner).call(marker).unwrap()
    });
    assert_eq!(got, (true, true, StateKind::Cancelled, 4));
}

// ---------------------------------------------------------------------------
// Subflows: a flow called in a flow run is a child run; its tasks run on
// the parent's runner (in the same processes: the parent's task and the
// child's report the same kind of process); its failure reaches the parent
// as an `Err`.

#[task]
fn in_flow_process(flow_pid: u32) -> bool {
    std::process::id() == flow_pid
}

#[flow]
fn child(x: u64) -> (u64, bool) {
    let a = double.submit(x);
    let b = double.submit(x + 1);
    let here = in_flow_process.submit(std::process::id());
    (
        a.result().unwrap() + b.result().unwrap(),
        here.result().unwrap(),
    )
}

#[flow]
fn parent() -> ((u64, bool), bool, String) {
    let parent_here = in_flow_process.submit(std::process::id()).result().unwrap();
    let child_run = child.return_state(1);
    let failed = failing_child().unwrap_err().to_string();
    let children = *child_run.result().unwrap();
    (children, parent_here, failed)
}

fn subflows<R: TaskRunner + Clone>(runner: R) {
    let run = parent.with_runner(runner).return_state();
    assert_eq!(run.state().kind(), StateKind::Completed);
    let ((value, child_here), parent_here, failed) = run.result().unwrap().clone();
    assert_eq!(value, 2 + 4);
    assert_eq!(
        child_here, parent_here,
        "the child's tasks ran where the parent's did"
    );
    assert!(failed.contains("the child gave up"), "{failed}");
    let children: Vec<(String, StateKind)> = run
        .subflows()
        .iter()
        .map(|s| (s.flow_name.clone(), s.state.kind()))
        .collect();
    assert_eq!(
        children,
        [
            ("child".to_owned(), StateKind::Completed),
            ("failing-child".to_owned(), StateKind::Failed)
        ]
    );
}

// A flow that a task calls is the child of that task's run, wherever the
// task runs (a worker process, a Dask task process): the parent lists it
// with its task run and state, and the run history records it with the
// task run that called it.

fn subflows_in_tasks<R: TaskRunner + Clone>(runner: R) {
    let home = flowrun::history::temp_home();
    called_subflows::check(&home, tasks_call_flows.with_runner(runner).return_state());
}

// ---------------------------------------------------------------------------
// Hooks: task hooks run where the task runs (the flow's process on the
// thread pool, a worker's on a cluster): `on_running` as a run starts, the
// final-state hooks once, before the result is handed out; flow hooks see
// the flow run's final state.

/// The backends' hook scenarios take turns with the hooks' log.
static HOOKS_TURN: Mutex<()> = Mutex::new(());

/// Where hooks write what they saw, from whichever process they run in:
/// every process of a scenario (the flow's, a local worker, a Dask task
/// process) runs this same test binary.
fn hooks_log() -> std::path::PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::env::current_exe().ok().hash(&mut h);
    std::env::temp_dir().join(format!("flowrun-scenario-hooks-{:x}.log", h.finish()))
}

fn note(seen: String) {
    common::append(&hooks_log().display().to_string(), &seen);
}

fn hooks_seen() -> Vec<String> {
    let text = std::fs::read_to_string(hooks_log()).unwrap_or_default();
    let mut seen: Vec<String> = text.lines().map(str::to_owned).collect();
    seen.sort();
    seen
}

fn hooked_completed(run: &RunRef, state: &State) {
    note(format!("completed {} {}", run.name(), state.kind()));
}

fn hooked_failed(run: &RunRef, state: &State) {
    note(format!("failed {} {}", run.name(), state.kind()));
}

fn hooked_running(run: &RunRef, state: &State) {
    note(format!("running {} {}", run.name(), state.kind()));
}

fn flow_completed(run: &flowrun::FlowRunInfo, state: &State) {
    note(format!("flow {} {}", run.flow_name, state.kind()));
}

#[task(on_completion = [hooked_completed], on_failure = [hooked_failed], on_running = [hooked_running])]
fn checked(x: u32) -> Result<u32, String> {
    common::ok_unless(x, 0, "zero")
}

#[flow]
fn hooked() -> (bool, bool) {
    assert_eq!(checked.submit(1).result().unwrap(), 1);
    let seen_before_result = hooks_seen().iter().any(|s| s.starts_with("completed"));
    let failed = checked.submit(0).result().is_err();
    (seen_before_result, failed)
}

fn task_hooks<R: TaskRunner + Clone>(runner: R) {
    let _turn = HOOKS_TURN.lock().unwrap_or_else(|p| p.into_inner());
    let _ = std::fs::remove_file(hooks_log());
    let options = FlowOptions::new().on_completion(flow_completed);
    let got = hooked
        .with_runner(runner)
        .with_options(options)
        .call()
        .unwrap();
    assert_eq!(got, (true, true));
    assert_eq!(
        hooks_seen(),
        [
            "completed checked-0 Completed",
            "failed checked-1 Failed",
            "flow hooked Completed",
            "running checked-0 Running",
            "running checked-1 Running",
        ]
    );
    let _ = std::fs::remove_file(hooks_log());
}

// ---------------------------------------------------------------------------
// The scenarios below note what they saw in statics of the flow process
// (per-call hooks and retry conditions run there), so the backends take
// turns with them.

/// The backends' scenarios that note into statics take turns.
static STATICS_TURN: Mutex<()> = Mutex::new(());

fn statics_turn() -> std::sync::MutexGuard<'static, ()> {
    STATICS_TURN.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the hooks of one scenario saw, as `kind name state`.
type Noted = Mutex<Vec<String>>;

fn note_in(seen: &Noted, kind: &str, name: &str, state: &State) {
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{kind} {name} {}", state.kind()));
}

/// Takes what `seen` holds, sorted, and empties it.
fn take_sorted(seen: &Noted) -> Vec<String> {
    let mut v = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Waiting with a timeout: `wait_timeout(&futures, timeout)` splits the
// futures into done and not done, and `as_completed_timeout` ends at its
// timeout, as Prefect's `wait` and `as_completed` do.

/// Sleeps `ms` milliseconds and returns it.
#[task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// One quick run and one that outlasts the timeout by far: the split and
/// how long the wait took.
#[flow(timeout = 60)]
fn split() -> (Vec<u64>, Vec<String>, Duration) {
    let quick = nap.submit(0);
    quick.wait();
    let slow = nap.submit(4_000);
    let began = Instant::now();
    let sets = wait_timeout(&[quick, slow], Duration::from_millis(300));
    let waited = began.elapsed();
    let done = sets.done.iter().map(|f| f.result().unwrap()).collect();
    let not_done = sets.not_done.iter().map(|f| f.name()).collect();
    for late in &sets.not_done {
        assert_eq!(late.state().kind(), StateKind::Running);
        late.cancel();
    }
    (done, not_done, waited)
}

fn wait_timeout_splits_done_and_not_done<R: TaskRunner + Clone>(runner: R) {
    let (done, not_done, waited) = split.with_runner(runner).call().unwrap();
    assert_eq!(done, [0]);
    assert_eq!(not_done, ["nap-1"]);
    // Wide margins: the machine is shared.
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}

/// Yields what finished within the timeout, then says it timed out and
/// hands back the rest.
#[flow(timeout = 60)]
fn first_within_timeout() -> (Vec<u64>, bool, Vec<String>) {
    let futures = vec![nap.submit(4_000), nap.submit(0), nap.submit(50)];
    let mut finished = as_completed_timeout(futures, Duration::from_secs(1));
    let values = finished.by_ref().map(|f| f.result().unwrap()).collect();
    let timed_out = finished.timed_out();
    let rest: Vec<String> = finished
        .into_not_done()
        .into_iter()
        .map(|f| {
            f.cancel();
            f.name()
        })
        .collect();
    (values, timed_out, rest)
}

fn as_completed_timeout_hands_back_the_rest<R: TaskRunner + Clone>(runner: R) {
    let (values, timed_out, rest) = first_within_timeout.with_runner(runner).call().unwrap();
    assert_eq!(values, [0, 50]);
    assert!(timed_out);
    assert_eq!(rest, ["nap-0"]);
}

// ---------------------------------------------------------------------------
// Run names: `task_run_name` and `flow_run_name` templates filled with the
// call's parameters, or a function. (Templates that name no parameter do
// not compile: tests/ui/fail/run_name_*.rs at the root.)

/// Returns the name of the run it ran as.
#[task(task_run_name = "shout-{number}")]
fn shout(number: u32) -> String {
    let _ = number; // Used by the run's name only.
    current_task_run_name().unwrap_or_default()
}

#[task(task_run_name = "{label:>4}|{{literal}}")]
fn padded(label: String, unused: u8) -> String {
    let _ = (label, unused);
    current_task_run_name().unwrap_or_default()
}

fn nightly() -> String {
    "nightly-report".to_owned()
}

#[task(task_run_name = nightly)]
fn named_by_function() -> String {
    current_task_run_name().unwrap_or_default()
}

#[task]
fn seven() -> u32 {
    7
}

/// (name seen by the run, name of its future) for each form.
#[flow]
fn names() -> Vec<(String, String)> {
    let submitted = shout.submit(3);
    let each = shout.map(vec![4, 5]).unwrap();
    let upstream = seven.submit();
    let from_future = shout.submit(&upstream);
    let mut out = vec![(submitted.result().unwrap(), submitted.name())];
    for m in each {
        out.push((m.result().unwrap(), m.name()));
    }
    out.push((from_future.result().unwrap(), from_future.name()));
    let p = padded.submit("ab", 0);
    out.push((p.result().unwrap(), p.name()));
    let r = named_by_function.submit();
    out.push((r.result().unwrap(), r.name()));
    // A direct call is named from its arguments too.
    let direct = shout(9);
    out.push((direct.clone(), direct));
    out
}

fn task_run_names<R: TaskRunner + Clone>(runner: R) {
    let got = names.with_runner(runner).call().unwrap();
    let expected = [
        "shout-3",
        "shout-4",
        "shout-5",
        // A future shows as its run's name: the name is given at the call.
        "shout-seven-0",
        "  ab|{literal}",
        "nightly-report",
        "shout-9",
    ];
    let seen: Vec<&str> = got.iter().map(|(seen, _)| seen.as_str()).collect();
    let futures: Vec<&str> = got.iter().map(|(_, f)| f.as_str()).collect();
    assert_eq!(seen, expected, "names the runs saw");
    assert_eq!(futures, expected, "names of the futures");
}

#[flow(flow_run_name = "daily-{day}")]
fn daily(day: u32) -> String {
    let _ = day; // Used by the run's name only.
    seven.submit().result().unwrap();
    current_flow_run_name().unwrap_or_default()
}

fn flow_run_names<R: TaskRunner + Clone>(runner: R) {
    assert_eq!(
        daily.with_runner(runner.clone()).call(3).unwrap(),
        "daily-3"
    );
    assert_eq!(
        daily.with_runner(runner.clone()).return_state(4).name(),
        "daily-4"
    );
    // `run_name` given per call still wins.
    let renamed = daily
        .with_runner(runner)
        .with_options(FlowOptions::new().run_name("by-hand"));
    assert_eq!(renamed.call(6).unwrap(), "by-hand");
}

// ---------------------------------------------------------------------------
// `retry_condition_fn`: a function of the run and its error decides
// whether a failed attempt is retried, from the attribute and per call.

/// Retries only errors that say they are transient.
fn transient_only(_run: &RunRef, error: &TaskError) -> bool {
    error.message().contains("transient")
}

#[task(retries = 3, retry_delay = 0, retry_condition_fn = transient_only)]
fn fails_with(message: String) -> Result<(), String> {
    Err(message)
}

#[flow]
fn conditioned() -> Vec<(u32, StateKind)> {
    ["transient glitch", "bad input"]
        .into_iter()
        .map(|message| {
            let f = fails_with.submit(message.to_owned());
            f.wait();
            (f.run_ref().attempts(), f.state().kind())
        })
        .collect()
}

fn retry_condition_from_the_attribute<R: TaskRunner + Clone>(runner: R) {
    assert_eq!(
        conditioned.with_runner(runner).call().unwrap(),
        [(4, StateKind::Failed), (1, StateKind::Failed)]
    );
}

/// How many times the per-call condition was asked.
static CONDITION_CALLS: AtomicU32 = AtomicU32::new(0);

#[task(retries = 5, retry_delay = 0)]
fn panics() {
    panic!("always")
}

#[flow]
fn per_call_condition() -> (u32, u32) {
    // Retry panics twice, by counting in the condition.
    let options = TaskOptions::new().retry_condition_fn(|run, error| {
        CONDITION_CALLS.fetch_add(1, Ordering::SeqCst);
        *error.kind() == TaskErrorKind::Panic && run.attempts() < 3
    });
    let f = panics.with_options(options).submit();
    f.wait();
    assert_eq!(f.state().kind(), StateKind::Failed);
    (
        f.run_ref().attempts(),
        CONDITION_CALLS.load(Ordering::SeqCst),
    )
}

fn retry_condition_per_call<R: TaskRunner + Clone>(runner: R) {
    let _turn = statics_turn();
    CONDITION_CALLS.store(0, Ordering::SeqCst);
    assert_eq!(
        per_call_condition.with_runner(runner).call().unwrap(),
        (3, 3)
    );
}

// ---------------------------------------------------------------------------
// Hooks given per call: `on_failure` runs once, after the last retry, and
// `on_running` once per attempt; a hook that fails is logged and changes
// nothing, and the hooks after it still run. Flow hooks run with the flow
// run's final state.

static RETRY_SEEN: Noted = Mutex::new(Vec::new());

#[task(retries = 2, retry_delay = 0)]
fn always_fails() -> Result<(), String> {
    Err("no".into())
}

#[flow]
fn retried_with_hooks() -> u32 {
    let options = TaskOptions::new()
        .on_failure(|run: &RunRef, s: &State| note_in(&RETRY_SEEN, "failed", &run.name(), s))
        .on_running(|run: &RunRef, s: &State| note_in(&RETRY_SEEN, "running", &run.name(), s));
    let f = always_fails.with_options(options).submit();
    f.wait();
    assert_eq!(f.state().kind(), StateKind::Failed);
    f.run_ref().attempts()
}

fn hooks_of_retried_runs<R: TaskRunner + Clone>(runner: R) {
    let _turn = statics_turn();
    RETRY_SEEN.lock().unwrap_or_else(|p| p.into_inner()).clear();
    assert_eq!(retried_with_hooks.with_runner(runner).call().unwrap(), 3);
    assert_eq!(
        take_sorted(&RETRY_SEEN),
        [
            "failed always_fails-0 Failed",
            // Retries run in Prefect's `Retrying`, a running state.
            "running always_fails-0 Retrying",
            "running always_fails-0 Retrying",
            "running always_fails-0 Running",
        ]
    );
}

static BAD_HOOK_SEEN: Noted = Mutex::new(Vec::new());

#[task]
fn fine() -> u32 {
    7
}

#[flow]
fn with_failing_hooks() -> (u32, StateKind) {
    let options = TaskOptions::new()
        .on_completion(|_: &RunRef, _: &State| -> Result<(), String> {
            Err("the pager is down".into())
        })
        .on_completion(|_: &RunRef, _: &State| -> () { panic!("hook exploded") })
        // Hooks after a failing one still run.
        .on_completion(|run: &RunRef, s: &State| note_in(&BAD_HOOK_SEEN, "after", &run.name(), s));
    let f = fine.with_options(options).submit();
    (f.result().unwrap(), f.state().kind())
}

fn a_failing_hook_changes_nothing<R: TaskRunner + Clone>(runner: R) {
    let _turn = statics_turn();
    BAD_HOOK_SEEN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    assert_eq!(
        with_failing_hooks.with_runner(runner).call().unwrap(),
        (7, StateKind::Completed)
    );
    assert_eq!(take_sorted(&BAD_HOOK_SEEN), ["after fine-0 Completed"]);
}

static FLOW_SEEN: Noted = Mutex::new(Vec::new());

fn flow_done(run: &flowrun::FlowRunInfo, state: &State) {
    note_in(&FLOW_SEEN, "completed", &run.flow_name, state);
}

fn flow_failed(run: &flowrun::FlowRunInfo, state: &State) {
    note_in(&FLOW_SEEN, "failed", &run.flow_name, state);
}

fn flow_running(run: &flowrun::FlowRunInfo, state: &State) {
    note_in(&FLOW_SEEN, "running", &run.flow_name, state);
}

#[flow(on_completion = [flow_done], on_failure = [flow_failed], on_running = [flow_running])]
fn hooked_flow(fail: bool) -> Result<u32, String> {
    if fail {
        Err("asked to fail".into())
    } else {
        Ok(fine.submit().result().unwrap())
    }
}

fn flow_hooks<R: TaskRunner + Clone>(runner: R) {
    let _turn = statics_turn();
    FLOW_SEEN.lock().unwrap_or_else(|p| p.into_inner()).clear();
    assert_eq!(
        hooked_flow.with_runner(runner.clone()).call(false).unwrap(),
        7
    );
    assert!(hooked_flow.with_runner(runner).call(true).is_err());
    assert_eq!(
        take_sorted(&FLOW_SEEN),
        [
            "completed hooked-flow Completed",
            "failed hooked-flow Failed",
            "running hooked-flow Running",
            "running hooked-flow Running",
        ]
    );
}

// ---------------------------------------------------------------------------
// `set_log_completed_task_runs(false)`: a large map's completed task runs
// stay out of the console (their lines go to DEBUG); failed ones are
// always shown.

#[task]
fn check(x: u32) -> Result<u32, String> {
    common::ok_unless(x, 13, "unlucky")
}

#[flow]
fn map_forty() -> usize {
    let runs = check.map(0..40).unwrap();
    runs.iter().filter(|r| r.result().is_ok()).count()
}

/// The `Finished in state` lines of `check` runs among `lines`, as
/// (completed at INFO, failed).
fn finished_lines(lines: &[String]) -> (usize, usize) {
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

/// Calls `map_forty` on `runner`: its result and the console lines of
/// its `check` runs.
fn map_forty_lines<R: TaskRunner + Clone>(runner: R) -> (usize, (usize, usize)) {
    let console = common::console_lines_and_history();
    let from = console.lock().unwrap_or_else(|p| p.into_inner()).len();
    let ok = map_forty.with_runner(runner).call().unwrap();
    let lines = console.lock().unwrap_or_else(|p| p.into_inner())[from..].to_vec();
    (ok, finished_lines(&lines))
}

fn quiet_task_completions<R: TaskRunner + Clone>(runner: R) {
    // The setting is the process's: the backends take turns with it.
    let _turn = statics_turn();
    flowrun::logging::set_log_completed_task_runs(false);
    let quiet = map_forty_lines(runner.clone());
    flowrun::logging::set_log_completed_task_runs(true);
    assert_eq!(quiet, (39, (0, 1)));
    assert_eq!(map_forty_lines(runner), (39, (39, 1)));
}

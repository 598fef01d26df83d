//! Futures inside collections: a task that takes a `Vec<T>` (an array, an
//! `Option<T>`, a tuple, a map of `T`s) takes the same collection of
//! futures, each a dependency, so a fan-in needs no gathering in the flow.
//! On the thread runner and on a local cluster, where the reducer reads the
//! upstream results itself.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use flowrun::{flow, task, StateKind, TaskErrorKind, TaskFuture};
use flowrun_dask::{ClusterKwargs, DaskTaskRunner};

#[task]
fn square(x: i64) -> i64 {
    x * x
}

#[task]
fn total(values: Vec<i64>) -> i64 {
    values.iter().sum()
}

#[task]
fn first_and_last(values: [i64; 3]) -> (i64, i64) {
    (values[0], values[2])
}

#[task]
fn or_zero(value: Option<i64>) -> i64 {
    value.unwrap_or(0)
}

#[task]
fn pair(both: (i64, String)) -> String {
    format!("{}:{}", both.1, both.0)
}

#[task]
fn label(x: i64) -> String {
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
fn explode(_x: i64) -> i64 {
    panic!("one element exploded")
}

static REDUCER_RAN: AtomicBool = AtomicBool::new(false);

#[task]
fn reduce_or_flag(values: Vec<i64>) -> i64 {
    REDUCER_RAN.store(true, Ordering::SeqCst);
    values.iter().sum()
}

/// The tests take turns: one measures this process's peak memory.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Every collection form, as a flow returns them.
type Forms = (
    i64,
    i64,
    (i64, i64),
    (i64, i64),
    String,
    Vec<(String, i64)>,
    Vec<(u32, i64)>,
    Vec<i64>,
);

/// The collection forms, submitted on whatever runner the flow has.
fn every_form() -> Forms {
    let squares: Vec<TaskFuture<i64>> = (1..=4).map(|x| square.submit(x)).collect();
    let by_value = total.submit(squares.clone()).result().unwrap();
    let by_ref = total.submit(&squares).result().unwrap();
    let array = [square.submit(2), square.submit(3), square.submit(4)];
    let ends = first_and_last.submit(array).result().unwrap();
    let some = or_zero.submit(Some(square.submit(5))).result().unwrap();
    let none = or_zero.submit(None::<TaskFuture<i64>>).result().unwrap();
    let tuple = pair
        .submit((square.submit(6), label.submit(6)))
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
    let mapped = flowrun::results(total.map(groups).unwrap()).unwrap();
    (
        by_value,
        by_ref,
        ends,
        (some, none),
        tuple,
        hashed.submit(hash).result().unwrap(),
        ordered.submit(tree).result().unwrap(),
        mapped,
    )
}

fn check_forms(got: Forms) {
    let (by_value, by_ref, ends, options, tuple, hash, tree, mapped) = got;
    assert_eq!(by_value, 1 + 4 + 9 + 16);
    assert_eq!(by_ref, 30);
    assert_eq!(ends, (4, 16));
    assert_eq!(options, (25, 0));
    assert_eq!(tuple, "n6:36");
    assert_eq!(hash, vec![("a".to_owned(), 1), ("b".to_owned(), 4)]);
    assert_eq!(tree, vec![(1, 1), (2, 4), (3, 9)]);
    assert_eq!(mapped, vec![5, 9, 0]);
}

#[test]
fn collections_of_futures_are_dependencies_on_threads() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow]
    fn forms() -> Forms {
        every_form()
    }
    check_forms(forms().unwrap());
}

#[test]
fn a_failed_element_fails_the_reducer_without_running_it() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow]
    fn fails() -> (String, StateKind) {
        let parts = vec![square.submit(1), explode.submit(2), square.submit(3)];
        let reduced = reduce_or_flag.submit(parts);
        let error = reduced.result().unwrap_err();
        let upstream = match error.kind() {
            TaskErrorKind::UpstreamFailed { upstream } => upstream.clone(),
            other => panic!("expected UpstreamFailed, got {other:?}"),
        };
        (upstream, reduced.state().kind())
    }
    let (upstream, state) = fails().unwrap();
    assert_eq!(upstream, "explode-0");
    assert_eq!(state, StateKind::Failed);
    assert!(!REDUCER_RAN.load(Ordering::SeqCst));
}

fn two_workers() -> DaskTaskRunner {
    DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(2).threads_per_worker(1))
}

#[test]
fn collections_of_futures_are_dependencies_on_a_local_cluster() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow(task_runner = two_workers())]
    fn forms() -> Forms {
        every_form()
    }
    check_forms(forms().unwrap());
}

#[test]
fn a_failed_element_fails_the_reducer_on_a_local_cluster() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow(task_runner = two_workers())]
    fn fails() -> (String, StateKind) {
        let parts = vec![square.submit(1), explode.submit(2)];
        let reduced = total.submit(parts);
        let error = reduced.result().unwrap_err();
        let upstream = match error.kind() {
            TaskErrorKind::UpstreamFailed { upstream } => upstream.clone(),
            other => panic!("expected UpstreamFailed, got {other:?}"),
        };
        (upstream, reduced.state().kind())
    }
    let (upstream, state) = fails().unwrap();
    assert_eq!(upstream, "explode-0");
    assert_eq!(state, StateKind::Failed);
}

#[task]
fn numbers(n: i64) -> Vec<i64> {
    (0..n).collect()
}

#[task]
fn no_numbers(_n: i64) -> Vec<i64> {
    panic!("no list today")
}

/// `map` over the future of a list: one run per element; a failed list
/// gives one run that fails as its upstream did.
fn map_over_futures() -> (Vec<i64>, usize, String) {
    let list = numbers.submit(4);
    let squares = flowrun::results(square.map(&list).unwrap()).unwrap();
    let failed = square.map(no_numbers.submit(1)).unwrap();
    let upstream = match failed[0].result().unwrap_err().kind() {
        TaskErrorKind::UpstreamFailed { upstream } => upstream.clone(),
        other => panic!("expected UpstreamFailed, got {other:?}"),
    };
    (squares, failed.len(), upstream)
}

fn check_map(got: (Vec<i64>, usize, String)) {
    assert_eq!(got, (vec![0, 1, 4, 9], 1, "no_numbers-0".to_owned()));
}

#[test]
fn map_takes_the_future_of_a_list_on_threads() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow]
    fn mapped() -> (Vec<i64>, usize, String) {
        map_over_futures()
    }
    check_map(mapped().unwrap());
}

#[test]
fn map_takes_the_future_of_a_list_on_a_local_cluster() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow(task_runner = two_workers())]
    fn mapped() -> (Vec<i64>, usize, String) {
        map_over_futures()
    }
    check_map(mapped().unwrap());
}

/// Large enough to dwarf what the flow allocates for itself.
const BIG: usize = 16 << 20;

#[task]
fn make(fill: u8) -> Vec<u8> {
    vec![fill; BIG]
}

#[task]
fn sizes(parts: Vec<Vec<u8>>) -> (usize, u64) {
    let bytes = parts.iter().map(Vec::len).sum();
    let sum = parts.iter().flatten().map(|&b| u64::from(b)).sum();
    (bytes, sum)
}

/// The kB of a line of /proc/self/status.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_fan_in_of_large_values_goes_to_the_reducer_not_through_the_flow() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow(task_runner = two_workers())]
    fn fan_in() -> ((usize, u64), u64) {
        // The cluster is up once a first task ran.
        let _ = sizes.submit(Vec::<Vec<u8>>::new()).result().unwrap();
        // Reset this process's peak resident memory (VmHWM) to its current one.
        std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
        let start = status_kb("VmRSS:");
        let parts: Vec<_> = (1..=4u8).map(|b| make.submit(b)).collect();
        let got = sizes.submit(parts).result().unwrap();
        (got, status_kb("VmHWM:").saturating_sub(start))
    }
    let ((bytes, sum), peak_kb) = fan_in().unwrap();
    assert_eq!(bytes, 4 * BIG);
    assert_eq!(sum, (1 + 2 + 3 + 4) * BIG as u64);
    assert!(
        peak_kb * 1024 < BIG as u64 / 2,
        "the flow's peak memory rose by {} MiB while 4 x {} MiB values went to the reducer",
        peak_kb / 1024,
        BIG >> 20
    );
}

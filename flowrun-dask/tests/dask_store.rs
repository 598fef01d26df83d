//! The local cluster's result store: large results stay out of the flow's
//! process unless it reads them, survive the worker that made them, and are
//! deleted once nothing can read them and when the cluster closes.
//!
//! The tests take turns (one lock): they measure this process's peak memory
//! and look for this process's store directory.

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use flowrun::{flow, task};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Large enough to dwarf what the flow allocates for itself.
const BIG: usize = 32 << 20;

#[task]
fn make(dir: String, fill: u8) -> Vec<u8> {
    common::append(
        &format!("{dir}/executions.log"),
        &format!("make {}", std::process::id()),
    );
    vec![fill; BIG]
}

#[task]
fn step(mut value: Vec<u8>) -> Vec<u8> {
    for b in &mut value {
        *b += 1;
    }
    value
}

#[task]
fn summary(value: Vec<u8>) -> (usize, u8) {
    (value.len(), value.first().copied().unwrap_or(0))
}

/// Resets this process's peak resident memory (VmHWM) to its current one.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
}

/// This process's result store directories (one per open cluster).
fn store_dirs() -> Vec<PathBuf> {
    let prefix = format!("flowrun-store-{}-", std::process::id());
    [PathBuf::from("/dev/shm"), std::env::temp_dir()]
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Stored values (not the freed files a store pools for reuse, `free-*`).
fn stored_files() -> usize {
    store_dirs()
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("free-"))
        .count()
}

#[test]
fn a_large_value_passed_along_a_chain_never_enters_the_flows_memory() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn chain(dir: String) -> ((usize, u8), u64) {
        std::fs::create_dir_all(&dir).unwrap();
        // The cluster is up once a first task ran.
        let _ = summary.submit(Vec::<u8>::new()).result().unwrap();
        reset_peak();
        let start = common::status_kb("VmRSS:");
        let mut value = make.submit(dir.clone(), b'a');
        for _ in 0..3 {
            value = step.submit(value);
        }
        let got = summary.submit(value).result().unwrap();
        (got, common::status_kb("VmHWM:").saturating_sub(start))
    }
    let dir = common::scratch("store-chain")
        .to_string_lossy()
        .into_owned();
    let ((len, first), peak_kb) = chain(dir.clone()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((len, first), (BIG, b'd'));
    assert!(
        peak_kb * 1024 < BIG as u64 / 2,
        "the flow's peak memory rose by {} MiB while {} MiB values passed from task to task",
        peak_kb / 1024,
        BIG >> 20
    );
}

#[test]
fn the_flow_reads_a_stored_value_when_it_asks() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn reads(dir: String) -> (bool, bool, usize) {
        std::fs::create_dir_all(&dir).unwrap();
        let value = step.submit(make.submit(dir.clone(), b'x'));
        value.wait();
        let files = stored_files();
        let first = value.result().unwrap();
        let again = value.result().unwrap();
        let expected = vec![b'y'; BIG];
        (first == expected, again == expected, files)
    }
    let dir = common::scratch("store-reads")
        .to_string_lossy()
        .into_owned();
    let (first, again, files) = reads(dir.clone()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(first && again, "the value read back is the value computed");
    assert!(files >= 1, "the value was in the store before it was read");
}

#[test]
fn a_stored_result_outlives_the_worker_that_made_it_and_is_not_recomputed() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn survives(dir: String) -> ((usize, u8), usize, u64) {
        std::fs::create_dir_all(&dir).unwrap();
        let _ = summary.submit(Vec::<u8>::new()).result().unwrap();
        reset_peak();
        let start = common::status_kb("VmRSS:");
        let value = make.submit(dir.clone(), b'k');
        value.wait();
        let log = common::lines(&format!("{dir}/executions.log"));
        let maker: i32 = log[0].split(' ').nth(1).unwrap().parse().unwrap();
        // SAFETY: sending SIGKILL to a worker process of this test.
        unsafe {
            libc::kill(maker, libc::SIGKILL);
        }
        assert!(common::eventually(Duration::from_secs(10), || {
            !common::pid_alive(maker as u32)
        }));
        let got = summary.submit(&value).result().unwrap();
        let peak = common::status_kb("VmHWM:").saturating_sub(start);
        let read = value.result().unwrap().len();
        (got, read, peak)
    }
    let dir = common::scratch("store-survives")
        .to_string_lossy()
        .into_owned();
    let ((len, first), read, peak_kb) = survives(dir.clone()).unwrap();
    let log = common::lines(&format!("{dir}/executions.log"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((len, first, read), (BIG, b'k', BIG));
    assert_eq!(log.len(), 1, "make ran once: {log:?}");
    assert!(
        peak_kb * 1024 < BIG as u64 / 2,
        "the flow held the value ({} MiB) before it read it",
        peak_kb / 1024
    );
}

#[test]
fn stored_values_are_deleted_once_unreadable_and_with_their_cluster() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn frees(dir: String) -> (usize, usize, usize, Vec<PathBuf>) {
        std::fs::create_dir_all(&dir).unwrap();
        let values: Vec<_> = [b'a', b'b', b'c']
            .into_iter()
            .map(|c| make.submit(dir.clone(), c))
            .collect();
        flowrun::wait(&values);
        let held = stored_files();
        // A dependent still to run keeps its argument.
        let last = values.last().unwrap().clone();
        drop(values);
        let kept = stored_files();
        let (len, _) = summary.submit(last).result().unwrap();
        assert_eq!(len, BIG);
        let mut after = stored_files();
        common::eventually(Duration::from_secs(10), || {
            after = stored_files();
            after == 0
        });
        (held, kept, after, store_dirs())
    }
    let dir = common::scratch("store-frees")
        .to_string_lossy()
        .into_owned();
    let (held, kept, after, dirs) = frees(dir.clone()).unwrap();
    assert_eq!(held, 3, "each large result is a stored file");
    assert_eq!(
        kept, 1,
        "dropped futures free their values, pending dependents keep theirs"
    );
    assert_eq!(after, 0, "nothing can read any value any more");
    assert_eq!(dirs.len(), 1);
    assert!(store_dirs().is_empty(), "the store left with the cluster");

    #[flow(task_runner = common::local_cluster(2, 1))]
    fn panics(dir: String) -> usize {
        let value = make.submit(dir, b'p');
        value.wait();
        assert_eq!(stored_files(), 1);
        panic!("the flow fails while it holds a stored value");
    }
    let failed = panics(dir.clone()).unwrap_err().to_string();
    assert!(failed.contains("while it holds a stored value"), "{failed}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        store_dirs().is_empty(),
        "a failed flow removes its store too"
    );
}

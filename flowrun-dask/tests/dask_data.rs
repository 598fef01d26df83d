//! Data between tasks of a local cluster: a worker keeps the values it
//! stored and hands them to the next task it runs without decoding them;
//! a result of several GiB goes through the store and arrives whole; the
//! result of a run a task submitted reaches that task by reference.
//!
//! The tests take turns (one lock): the large one needs the memory.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use flowrun::{flow, task};
use flowrun_dask::DaskTaskRunner;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Times a [`Blob`] was decoded in this process.
static DECODED: AtomicUsize = AtomicUsize::new(0);

/// Bytes that count their decodings.
#[derive(Serialize)]
struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DECODED.fetch_add(1, Ordering::SeqCst);
        Ok(Blob(ByteBuf::deserialize(d)?.into_vec()))
    }
}

/// Larger than what travels inline: stored.
const SIZE: usize = 8 << 20;

#[task]
fn make_blob(fill: u8) -> Blob {
    Blob(vec![fill; SIZE])
}

/// Adds one to every byte, and logs its worker and how many blobs that
/// worker decoded so far.
#[task]
fn bump(log: String, mut b: Blob) -> Blob {
    common::append(
        &log,
        &format!("{} {}", std::process::id(), DECODED.load(Ordering::SeqCst)),
    );
    for x in &mut b.0 {
        *x += 1;
    }
    b
}

#[task]
fn first_and_len(b: Blob) -> (u8, usize) {
    (b.0[0], b.0.len())
}

#[test]
fn a_chain_runs_on_the_worker_that_keeps_its_value_and_never_decodes_it() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn chain(log: String) -> (u8, usize) {
        let mut b = make_blob.submit(10);
        for _ in 0..4 {
            b = bump.submit(log.clone(), b);
        }
        first_and_len.submit(b).result().unwrap()
    }
    // A file, not a folder made for it: the workers run this test again
    // up to the flow call, and would each make one.
    let log = common::scratch("data-chain-bumps.log");
    let log = log.to_string_lossy().into_owned();
    let got = chain(log.clone()).unwrap();
    let lines = common::lines(&log);
    let _ = std::fs::remove_file(&log);
    assert_eq!(got, (14, SIZE), "the value went through every link");
    assert_eq!(lines.len(), 4);
    let pids: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(
        pids.iter().all(|p| *p == pids[0]),
        "every link ran on the worker that kept its input: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| l.ends_with(" 0")),
        "no link decoded its input (each took the value its worker kept): {lines:?}"
    );
}

/// A result of `n` bytes of `fill`, all touched.
#[task]
fn bytes_of(n: usize, fill: u8) -> ByteBuf {
    ByteBuf::from(vec![fill; n])
}

#[test]
fn a_3_gib_result_is_stored_and_arrives_whole() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const N: usize = 3 << 30;
    // The worker encodes the result straight into the store: it needs room
    // for the value, not for an encoded copy beside it.
    #[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(
        common::cluster_of(1, 1).memory_limit("4.5GiB")))]
    fn huge() -> (usize, u8, u8) {
        let b = bytes_of.submit(N, 7).result().unwrap();
        (b.len(), b[0], b[N - 1])
    }
    assert_eq!(huge().unwrap(), (N, 7, 7));
}

const BIG: usize = 32 << 20;

#[task]
fn make_big(fill: u8) -> Vec<u8> {
    vec![fill; BIG]
}

/// Submits `make_big` from inside a task and reads its result there.
#[task]
fn through_client(fill: u8) -> (usize, u8) {
    let client = flowrun_dask::get_dask_client().unwrap();
    let v = client.submit(&make_big, (fill,)).result().unwrap();
    (v.len(), v[BIG - 1])
}

#[test]
fn a_result_of_a_run_submitted_from_a_task_reaches_it_by_reference_not_through_the_flow() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn nested() -> ((usize, u8), u64) {
        // The cluster is up once a first task ran.
        let _ = first_and_len.submit(Blob(vec![1])).result().unwrap();
        std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
        let start = common::status_kb("VmRSS:");
        let got = through_client.submit(9).result().unwrap();
        (got, common::status_kb("VmHWM:").saturating_sub(start))
    }
    let ((len, last), peak_kb) = nested().unwrap();
    assert_eq!((len, last), (BIG, 9));
    assert!(
        peak_kb * 1024 < BIG as u64 / 2,
        "the flow's peak memory rose by {} MiB while a task read a {} MiB result of a run it submitted",
        peak_kb / 1024,
        BIG >> 20
    );
}

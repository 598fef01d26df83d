//! The local cluster's connections under hostile input and large values:
//! strangers on the scheduler's port cost little and leave at the
//! handshake's deadline; values larger than a frame are split or fail at
//! once with their size and the limit, never a dead worker or a hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use flowrun::{flow, task};
use flowrun_dask::{current_cluster, ClusterKwargs, DaskTaskRunner};
use serde_bytes::ByteBuf;

#[task]
fn square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(10));
    x * x
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Garbage {
    /// An HTTP request.
    Http,
    /// Random bytes.
    Noise(u64),
    /// A plausible small frame, one byte a second.
    Slow,
}

/// Sends `kind`, and returns how long the scheduler kept the connection.
fn intrude(addr: SocketAddr, kind: Garbage) -> Duration {
    let began = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(30)) else {
        return began.elapsed();
    };
    let mut bytes = match kind {
        Garbage::Http => b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
        Garbage::Noise(mut x) => (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect(),
        Garbage::Slow => {
            let mut v = 100u32.to_le_bytes().to_vec();
            v.extend([0u8; 100]);
            v
        }
    };
    let pace = if kind == Garbage::Slow {
        Duration::from_secs(1)
    } else {
        let _ = s.write_all(&bytes);
        bytes.clear();
        Duration::from_millis(200)
    };
    s.set_read_timeout(Some(pace)).unwrap();
    let mut sink = [0u8; 512];
    let mut next = bytes.into_iter();
    loop {
        if let Some(b) = next.next() {
            if s.write_all(&[b]).is_err() {
                return began.elapsed();
            }
        }
        match s.read(&mut sink) {
            Ok(0) => return began.elapsed(),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if began.elapsed() > Duration::from_secs(60) {
                    return began.elapsed();
                }
            }
            Err(_) => return began.elapsed(),
        }
    }
}

/// The deadline a stranger has for the whole handshake.
const DEADLINE: Duration = Duration::from_secs(5);

#[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(2).threads_per_worker(2)))]
fn attacked() -> (Vec<u64>, u64, Vec<(Garbage, Duration)>) {
    let address: SocketAddr = current_cluster()
        .unwrap()
        .status()
        .unwrap()
        .address
        .parse()
        .unwrap();
    // Workers up, buffers warm, before the baseline.
    let warm: Vec<_> = (0..20).map(|i| square.submit(i)).collect();
    flowrun::results(warm).unwrap();
    let before = rss_kib();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(Ordering::Acquire) {
                peak = peak.max(rss_kib());
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let kinds = (0..100u64).map(|i| match i % 10 {
        0..=3 => Garbage::Http,
        4..=6 => Garbage::Noise(0x9e37_79b9_7f4a_7c15 ^ (i + 1)),
        _ => Garbage::Slow,
    });
    let intruders: Vec<_> = kinds
        .map(|kind| {
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || (kind, intrude(address, kind)))
                .unwrap()
        })
        .collect();
    let work: Vec<_> = (0..200).map(|i| square.submit(i)).collect();
    let results = flowrun::results(work).unwrap();
    let held = intruders.into_iter().map(|t| t.join().unwrap()).collect();
    sampling.store(false, Ordering::Release);
    let peak = sampler.join().unwrap();
    (results, peak.saturating_sub(before), held)
}

/// The tests take turns: the garbage test measures this process's memory,
/// which the others' large values would inflate.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_hundred_garbage_connections_during_a_flow_cost_little_and_are_dropped_at_the_deadline() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (results, grew_kib, held) = attacked().unwrap();
    let slowest = |slow: bool| {
        held.iter()
            .filter(|(k, _)| (*k == Garbage::Slow) == slow)
            .map(|(_, t)| *t)
            .max()
    };
    eprintln!(
        "flow RSS grew by {grew_kib} KiB; garbage held at most {:?}, slow ones at most {:?}",
        slowest(false),
        slowest(true)
    );
    assert_eq!(results, (0..200).map(|i| i * i).collect::<Vec<u64>>());
    // Intruder threads (small stacks) count in this process's memory too.
    assert!(
        grew_kib < 10 * 1024,
        "the flow's process grew by {grew_kib} KiB"
    );
    for (kind, took) in held {
        match kind {
            // Refused at their first bytes.
            Garbage::Http | Garbage::Noise(_) => {
                assert!(took < DEADLINE, "{kind:?} held for {took:?}")
            }
            // Cut at the deadline (a little later on a loaded machine).
            Garbage::Slow => assert!(
                took >= DEADLINE - Duration::from_millis(500)
                    && took < DEADLINE + Duration::from_secs(10),
                "{kind:?} held for {took:?}"
            ),
        }
    }
}

// The 3 GiB result: tests/dask_data.rs.

/// Waits until `n` tasks of this worker got here, so that their results
/// leave in one batch.
fn meet(n: usize) {
    static BARRIER: OnceLock<Barrier> = OnceLock::new();
    BARRIER.get_or_init(|| Barrier::new(n)).wait();
}

#[task]
fn chunk_together(i: u8, n: usize, len: usize) -> ByteBuf {
    let b = ByteBuf::from(vec![i; len]);
    meet(n);
    b
}

#[test]
fn results_that_together_exceed_a_frame_are_split_not_a_dead_worker() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const TASKS: usize = 6;
    const LEN: usize = 64 << 20;
    #[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(
        ClusterKwargs::new().n_workers(1).threads_per_worker(TASKS as u32).memory_limit("0")))]
    fn together() -> Vec<(usize, u8, u8)> {
        let futures: Vec<_> = (0..TASKS as u8)
            .map(|i| chunk_together.submit(i + 1, TASKS, LEN))
            .collect();
        futures
            .into_iter()
            .map(|f| {
                let b = f.result().unwrap();
                (b.len(), b[0], b[b.len() - 1])
            })
            .collect()
    }
    let got = together().unwrap();
    let want: Vec<_> = (1..=TASKS as u8).map(|i| (LEN, i, i)).collect();
    assert_eq!(got, want);
}

#[task]
fn length_of(b: ByteBuf) -> usize {
    b.len()
}

#[test]
fn an_input_larger_than_a_frame_fails_its_run_at_once_naming_its_size() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const N: usize = 300 << 20;
    #[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(
        ClusterKwargs::new().n_workers(1).threads_per_worker(1).memory_limit("0")))]
    fn big_input() -> (Result<usize, String>, usize) {
        let big = length_of
            .submit(ByteBuf::from(vec![0u8; N]))
            .result()
            .map_err(|e| e.message().to_owned());
        // The worker is still there for the next run.
        let small = length_of
            .submit(ByteBuf::from(vec![1u8; 10]))
            .result()
            .unwrap();
        (big, small)
    }
    let began = Instant::now();
    let (big, small) = big_input().unwrap();
    assert!(began.elapsed() < Duration::from_secs(120));
    assert_eq!(small, 10);
    match big {
        Ok(len) => assert_eq!(len, N),
        Err(message) => assert!(
            message.contains("limit") && message.contains(&format!("{}", N as u64 / 10)[..2]),
            "{message}"
        ),
    }
}

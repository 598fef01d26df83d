//! flowrun on a real Dask cluster against Dask's own client, side by side
//! on the same cluster in one run.
//!
//! * Many trivial tasks (N = 1,000 and 10,000 by default): a flowrun flow
//!   submits N tasks to `DaskTaskRunner::address(...)` and waits until every
//!   run is final (results stay on the workers), and, separately, reads
//!   every result; Dask's `Client.map(inc, range(N), pure=False)` of a
//!   Python function, then `gather`, from the cluster's own Python. Each
//!   side is timed from the first submit; connecting is not timed.
//! * A chain of 8 tasks passing 256 MiB, in two kinds, each timed from the
//!   first submit until the last task's small answer is read:
//!   - *text*: the first makes 256 MiB, each of the next six returns its
//!     input with one byte more, the last returns the length (flowrun with
//!     `String`s, Dask with `bytes`);
//!   - *numpy-style x + 1* (as in the local cluster's `data`
//!     bench): the first makes 256 MiB of ones, each of the next six adds 1
//!     to every byte, the last counts the bytes that are 7 (flowrun with
//!     `Vec<u8>`, Dask with a numpy `uint8` array; numpy is installed into
//!     the Dask venv with pip on first use).
//!
//! The cluster is one scheduler and 2 workers x 2 threads on 127.0.0.1
//! (`flowrun-dask/tests/support`). Runs are interleaved (the side that goes
//! first alternates); the medians and their ratios are printed.
//!
//! ```text
//! cargo bench --bench real_dask                      # N=1000 and 10000, 3 runs
//! cargo bench --bench real_dask -- 200 5             # N=200, 5 runs
//! cargo bench --bench real_dask -- 0 3               # the chain only
//! FLOWRUN_DASK_VERSION=2025.4.0 cargo bench --bench real_dask
//! ```

// Its helpers are `pub` for flowrun-dask's own tests, which share it.
#[allow(unreachable_pub)]
#[path = "../flowrun-dask/tests/support/mod.rs"]
mod support;

mod common;

// The byte tasks of the numpy-style chain, shared with flowrun-dask's
// tests of large values on real Dask.
#[path = "../flowrun-dask/tests/tasks/mod.rs"]
mod tasks;

use std::process::Command;
use std::time::{Duration, Instant};

use flowrun::{flow, task, TaskFuture};
use flowrun_dask::{ClientKwargs, DaskTaskRunner};
use support::{Cluster, WorkerSpec};
use tasks::{ones, plus_one};

#[task]
fn bump(x: u64) -> u64 {
    x + 1
}

#[flow(task_runner = DaskTaskRunner::new())]
fn submit_and_wait(n: u64) -> Duration {
    let started = Instant::now();
    let futures: Vec<_> = (0..n).map(|i| bump.submit(i)).collect();
    flowrun::wait(&futures);
    let elapsed = started.elapsed();
    assert!(futures.iter().all(|f| f.state().is_completed()));
    elapsed
}

#[flow(task_runner = DaskTaskRunner::new())]
fn submit_and_read(n: u64) -> Duration {
    let started = Instant::now();
    let futures: Vec<_> = (0..n).map(|i| bump.submit(i)).collect();
    let values = flowrun::results(futures).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(values.len() as u64, n);
    elapsed
}

#[task]
fn chunk(mb: usize) -> String {
    "a".repeat(mb << 20)
}

#[task]
fn pass_on(data: String) -> String {
    let mut data = data;
    data.push('b');
    data
}

#[task]
fn length(data: String) -> usize {
    data.len()
}

/// The bytes of `x` equal to 7, counted in blocks of 255 with a byte
/// counter each, which the compiler turns into vector instructions as
/// numpy's `count_nonzero(x == 7)` is (`filter(..).count()` stays a byte
/// at a time: 95 ms for 256 MiB here, where this takes 12): the chain
/// compares how tasks pass data, not how well a loop is written.
#[task]
fn count_sevens(x: Vec<u8>) -> usize {
    x.chunks(255)
        .map(|block| usize::from(block.iter().map(|&b| u8::from(b == 7)).sum::<u8>()))
        .sum()
}

/// Times a chain of eight runs: `first`, six of `step`, each taking the
/// one before, and `last`, whose result it returns beside the time.
fn timed_chain<T: Send + 'static>(
    first: impl FnOnce() -> TaskFuture<T>,
    step: impl Fn(TaskFuture<T>) -> TaskFuture<T>,
    last: impl FnOnce(TaskFuture<T>) -> TaskFuture<usize>,
) -> (Duration, usize) {
    let started = Instant::now();
    let mut future = first();
    for _ in 0..6 {
        future = step(future);
    }
    let n = last(future).result().unwrap();
    (started.elapsed(), n)
}

/// The two kinds of chain the bench times.
#[derive(Debug, Clone, Copy)]
enum Chain {
    /// `String`s, one byte longer at each step.
    Text,
    /// Bytes, each one plus 1 at each step.
    Bytes,
}

#[flow(task_runner = DaskTaskRunner::new())]
fn chain_of_eight(chain: Chain, mb: usize) -> Duration {
    let ((elapsed, n), expected) = match chain {
        Chain::Text => (
            timed_chain(
                || chunk.submit(mb),
                |data| pass_on.submit(data),
                |data| length.submit(data),
            ),
            (mb << 20) + 6,
        ),
        Chain::Bytes => (
            timed_chain(
                || ones.submit(mb),
                |x| plus_one.submit(x),
                |x| count_sevens.submit(x),
            ),
            mb << 20,
        ),
    };
    assert_eq!(n, expected);
    elapsed
}

const DASK_SIDE: &str = r#"
import sys, time
from distributed import Client

def inc(x):
    return x + 1

def chunk(mb):
    return b"a" * (mb << 20)

def pass_on(data):
    return data + b"b"

def ones(mb):
    import numpy as np
    return np.ones(mb << 20, dtype=np.uint8)

def plus_one(x):
    return x + 1

def count_sevens(x):
    import numpy as np
    return int(np.count_nonzero(x == 7))

client = Client(sys.argv[1], timeout=60)
what, n = sys.argv[2], int(sys.argv[3])
started = time.perf_counter()
if what == "map":
    futures = client.map(inc, range(n), pure=False)
    results = client.gather(futures)
    assert len(results) == n
elif what == "bytes":
    last = client.submit(ones, n, pure=False)
    for _ in range(6):
        last = client.submit(plus_one, last, pure=False)
    assert client.submit(count_sevens, last, pure=False).result() == n << 20
else:
    last = client.submit(chunk, n, pure=False)
    for _ in range(6):
        last = client.submit(pass_on, last, pure=False)
    assert client.submit(len, last, pure=False).result() == (n << 20) + 6
elapsed = time.perf_counter() - started
client.close()
print(elapsed)
"#;

/// Runs Dask's side: `"map"` of `n` trivial tasks and a gather, or
/// `"chain"` (text) or `"bytes"` (+ 1) of eight tasks passing `n` MiB.
fn dask_side(python: &std::path::Path, address: &str, what: &str, n: u64) -> Duration {
    let out = common::output_ok(
        Command::new(python).args(["-c", DASK_SIDE, address, what, &n.to_string()]),
        "Dask's side",
    );
    let seconds: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the script prints its time");
    Duration::from_secs_f64(seconds)
}

/// Installs numpy into the Dask venv (its workers run the numpy chain)
/// unless it is there.
fn ensure_numpy(python: &std::path::Path) {
    let has = |python| {
        Command::new(python)
            .args(["-c", "import numpy"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(python) {
        return;
    }
    eprintln!("real_dask: installing numpy into the Dask venv for the numpy chain");
    let installed = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "numpy",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed && has(python),
        "could not install numpy into the Dask venv"
    );
}

/// CPU seconds used so far by these processes and their finished children
/// (the task subprocesses), from `/proc/<pid>/stat`.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            let fields: Vec<&str> = stat
                .rsplit_once(") ")
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // utime, stime, cutime, cstime
            fields
                .get(11..15)
                .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>())
                .unwrap_or(0.0)
        })
        .sum::<f64>()
        / ticks
}

/// CPU seconds this process has used.
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn show(v: &[Duration]) -> String {
    v.iter()
        .map(|d| format!("{:.3}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    // A Dask worker runs this program in task mode: run the task, exit.
    flowrun::worker::divert_if_worker();
    // `cargo bench` passes `--bench`; take the numbers among the arguments.
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = match numbers.first() {
        Some(0) => vec![],
        Some(&n) => vec![n],
        None => vec![1000, 10_000],
    };
    let runs = numbers.get(1).copied().unwrap_or(3).max(1) as usize;
    let chain_mb = 256;
    let version = support::dask_version();
    let cluster = Cluster::start(&[WorkerSpec::threads(2), WorkerSpec::threads(2)]);
    let python = support::venv_bin(&version).join("python");
    let runner = || {
        DaskTaskRunner::new()
            .address(&cluster.address)
            .client_kwargs(ClientKwargs::new().timeout(Duration::from_secs(60)))
    };
    eprintln!(
        "real_dask: N={sizes:?}, {runs} interleaved runs, distributed {version}, 2 workers x 2 threads"
    );
    // Warm-up: page in the program and Python's imports on the workers.
    submit_and_wait
        .with_runner(runner())
        .call(20)
        .expect("warm-up flow");
    dask_side(&python, &cluster.address, "map", 20);

    let pids = cluster.pids();
    for &n in &sizes {
        let (mut waited, mut read, mut dask) = (vec![], vec![], vec![]);
        let (mut flowrun_cpu, mut dask_cpu, mut flow_cpu) = (vec![], vec![], vec![]);
        for run in 0..runs {
            let flowrun_side = || {
                let cpu = cpu_seconds(&pids);
                let own = own_cpu_seconds();
                waited.push(
                    submit_and_wait
                        .with_runner(runner())
                        .call(n)
                        .expect("flow failed"),
                );
                flowrun_cpu.push(Duration::from_secs_f64(cpu_seconds(&pids) - cpu));
                flow_cpu.push(Duration::from_secs_f64(own_cpu_seconds() - own));
                read.push(
                    submit_and_read
                        .with_runner(runner())
                        .call(n)
                        .expect("flow failed"),
                );
            };
            let dask_run = || {
                let cpu = cpu_seconds(&pids);
                dask.push(dask_side(&python, &cluster.address, "map", n));
                dask_cpu.push(Duration::from_secs_f64(cpu_seconds(&pids) - cpu));
            };
            common::alternate(run, flowrun_side, dask_run);
            eprintln!(
                "N={n} run {run}: flowrun wait {:.3} s, read {:.3} s; Dask map+gather {:.3} s",
                waited[run].as_secs_f64(),
                read[run].as_secs_f64(),
                dask[run].as_secs_f64(),
            );
        }
        let base = common::median(dask.clone());
        println!("N={n} trivial tasks, median of {runs} runs (seconds):");
        println!(
            "  Dask Client.map(inc) + gather: {:.3}  [{}]",
            base.as_secs_f64(),
            show(&dask)
        );
        for (name, v) in [
            ("flowrun submit + wait", &waited),
            ("flowrun submit + read every result", &read),
        ] {
            let m = common::median(v.clone());
            println!(
                "  {name}: {:.3}  [{}]  ratio to Dask {:.2}x",
                m.as_secs_f64(),
                show(v),
                m.as_secs_f64() / base.as_secs_f64()
            );
        }
        println!(
            "  cluster CPU (scheduler + workers + task processes): flowrun {:.2}, Dask {:.2}; \
             flow process CPU {:.2}",
            common::median(flowrun_cpu).as_secs_f64(),
            common::median(dask_cpu).as_secs_f64(),
            common::median(flow_cpu).as_secs_f64()
        );
    }

    ensure_numpy(&python);
    let chains = [
        ("text", "chain", Chain::Text),
        ("numpy-style x + 1", "bytes", Chain::Bytes),
    ];
    for (name, what, chain) in chains {
        let (mut ours, mut theirs) = (vec![], vec![]);
        for run in 0..runs {
            let flowrun_side = || {
                ours.push(
                    chain_of_eight
                        .with_runner(runner())
                        .call(chain, chain_mb)
                        .expect("flow failed"),
                )
            };
            let dask_run =
                || theirs.push(dask_side(&python, &cluster.address, what, chain_mb as u64));
            common::alternate(run, flowrun_side, dask_run);
            eprintln!(
                "chain ({name}) run {run}: flowrun {:.3} s, Dask {:.3} s",
                ours[run].as_secs_f64(),
                theirs[run].as_secs_f64()
            );
        }
        let (m_ours, m_theirs) = (common::median(ours.clone()), common::median(theirs.clone()));
        println!(
            "chain of 8 tasks passing {chain_mb} MiB ({name}), median of {runs} runs (seconds):"
        );
        println!("  Dask: {:.3}  [{}]", m_theirs.as_secs_f64(), show(&theirs));
        println!(
            "  flowrun: {:.3}  [{}]  ratio to Dask {:.2}x",
            m_ours.as_secs_f64(),
            show(&ours),
            m_ours.as_secs_f64() / m_theirs.as_secs_f64()
        );
    }
}

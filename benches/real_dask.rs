//! flowrun on a real Dask cluster against Dask's own client, on the same
//! cluster: 1000 tasks that each start a subprocess.
//!
//! * flowrun: a flow submits N tasks to `DaskTaskRunner::address(...)`; each
//!   runs as this program in task mode, started by the worker. Timed inside
//!   the flow from the first submit until every run is final (results stay
//!   on the workers), and, separately, until every result has been read.
//! * Dask: `Client.map(subprocess.check_output, [["/bin/cat"]] * N,
//!   input=b"x", pure=False)` then `gather`, from the cluster's own Python.
//!   Timed from `map` until the results are gathered; connecting is not
//!   timed. Also with `Future.result()` one by one, which is what reading
//!   every flowrun result compares with (one gather per result).
//!
//! The cluster is one scheduler and 2 workers x 2 threads on 127.0.0.1
//! (`flowrun-dask/tests/support`). Runs are interleaved, median of RUNS each.
//!
//! ```text
//! cargo bench --bench real_dask                 # N=1000, RUNS=3
//! cargo bench --bench real_dask -- 200 5        # N=200, RUNS=5
//! FLOWRUN_DASK_VERSION=2025.4.0 cargo bench --bench real_dask
//! ```

// Its helpers are `pub` for flowrun-dask's own tests, which share it.
#[allow(unreachable_pub)]
#[path = "../flowrun-dask/tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use flowrun::{flow, task};
use flowrun_dask::{ClientKwargs, DaskTaskRunner};
use support::{Cluster, WorkerSpec};

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

const DASK_MAP: &str = r#"
import subprocess, sys, time
from distributed import Client
n = int(sys.argv[2])
client = Client(sys.argv[1], timeout=60)
started = time.perf_counter()
futures = client.map(subprocess.check_output, [["/bin/cat"]] * n, input=b"x", pure=False)
if sys.argv[3] == "gather":
    results = client.gather(futures)
else:
    results = [f.result() for f in futures]
elapsed = time.perf_counter() - started
assert len(results) == n
del futures
client.close()
print(elapsed)
"#;

/// Runs `Client.map` and reads the results with one `gather` (`"gather"`)
/// or one `Future.result()` each (`"each"`).
fn dask_map(python: &std::path::Path, address: &str, n: u64, read: &str) -> Duration {
    let out = Command::new(python)
        .args(["-c", DASK_MAP, address, &n.to_string(), read])
        .output()
        .expect("run the venv's python");
    assert!(
        out.status.success(),
        "Client.map failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seconds: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the script prints its time");
    Duration::from_secs_f64(seconds)
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
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
    let n = numbers.first().copied().unwrap_or(1000);
    let runs = numbers.get(1).copied().unwrap_or(3).max(1) as usize;
    let version = support::dask_version();
    let cluster = Cluster::start(&[WorkerSpec::threads(2), WorkerSpec::threads(2)]);
    let python = support::venv_bin(&version).join("python");
    let runner = || {
        DaskTaskRunner::new()
            .address(&cluster.address)
            .client_kwargs(ClientKwargs::new().timeout(Duration::from_secs(60)))
    };
    eprintln!(
        "real_dask: N={n}, {runs} interleaved runs, distributed {version}, 2 workers x 2 threads"
    );
    // Warm-up: page in the program and Python's imports on the workers.
    submit_and_wait
        .with_runner(runner())
        .call(20)
        .expect("warm-up flow");
    dask_map(&python, &cluster.address, 20, "gather");

    let pids = cluster.pids();
    let (mut waited, mut read, mut flows, mut dask, mut dask_each) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut flowrun_cpu, mut dask_cpu, mut flow_cpu) = (vec![], vec![], vec![]);
    for run in 0..runs {
        let mut flowrun_side = || {
            let started = Instant::now();
            let cpu = cpu_seconds(&pids);
            let own = own_cpu_seconds();
            let inner = submit_and_wait
                .with_runner(runner())
                .call(n)
                .expect("flow failed");
            flowrun_cpu.push(Duration::from_secs_f64(cpu_seconds(&pids) - cpu));
            flow_cpu.push(Duration::from_secs_f64(own_cpu_seconds() - own));
            flows.push(started.elapsed());
            waited.push(inner);
            read.push(
                submit_and_read
                    .with_runner(runner())
                    .call(n)
                    .expect("flow failed"),
            );
        };
        let mut dask_side = || {
            let cpu = cpu_seconds(&pids);
            dask.push(dask_map(&python, &cluster.address, n, "gather"));
            dask_cpu.push(Duration::from_secs_f64(cpu_seconds(&pids) - cpu));
            dask_each.push(dask_map(&python, &cluster.address, n, "each"));
        };
        if run % 2 == 0 {
            flowrun_side();
            dask_side();
        } else {
            dask_side();
            flowrun_side();
        }
        eprintln!(
            "run {run}: flowrun wait {:.3} s, read {:.3} s, whole flow call {:.3} s; \
             Dask Client.map+gather {:.3} s; cluster CPU flowrun {:.2} s, Dask {:.2} s",
            waited[run].as_secs_f64(),
            read[run].as_secs_f64(),
            flows[run].as_secs_f64(),
            dask[run].as_secs_f64(),
            flowrun_cpu[run].as_secs_f64(),
            dask_cpu[run].as_secs_f64()
        );
    }
    let dask_median = median(dask.clone());
    let ratio = |d: Duration| d.as_secs_f64() / dask_median.as_secs_f64();
    println!("N={n} tasks, median of {runs} runs (seconds):");
    println!(
        "  Dask Client.map + gather (check_output /bin/cat): {:.3}  [{}]",
        dask_median.as_secs_f64(),
        show(&dask)
    );
    let each = median(dask_each.clone());
    println!(
        "  Dask Client.map + Future.result() one by one: {:.3}  [{}]",
        each.as_secs_f64(),
        show(&dask_each)
    );
    println!(
        "  cluster CPU (scheduler + workers + task processes): flowrun {:.2}, Dask {:.2}, ratio {:.2}x",
        median(flowrun_cpu.clone()).as_secs_f64(),
        median(dask_cpu.clone()).as_secs_f64(),
        median(flowrun_cpu).as_secs_f64() / median(dask_cpu).as_secs_f64()
    );
    println!(
        "  flow process CPU (flowrun's client side, submit + wait): {:.2}",
        median(flow_cpu).as_secs_f64()
    );
    for (name, v) in [
        ("flowrun submit + wait (results stay on workers)", &waited),
        ("flowrun submit + read every result", &read),
        ("flowrun whole flow call (connect .. close, wait)", &flows),
    ] {
        let m = median(v.clone());
        println!(
            "  {name}: {:.3}  [{}]  ratio to Dask {:.2}x",
            m.as_secs_f64(),
            show(v),
            ratio(m)
        );
    }
}

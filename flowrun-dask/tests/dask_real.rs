//! flowrun tasks on a real Dask cluster: a scheduler and stock Python
//! workers from PyPI (through `tests/support`), on 127.0.0.1.
//!
//! The Dask version is `FLOWRUN_DASK_VERSION` (default 2026.8.0); run the
//! file once per supported version, e.g. `FLOWRUN_DASK_VERSION=2025.4.0`
//! for the oldest. A missing Dask install fails the tests with the
//! installer's output; nothing is skipped.
//!
//! The Dask workers run this test binary in task mode, as the current test
//! (`<name> --exact`). Every test therefore begins with [`begin`], which
//! diverts such a process into task mode before the test starts a cluster
//! of its own: the `if __name__ == "__main__"` of a flowrun program.

mod common;
mod support;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pid_alive;
use flowrun::{flow, task, FlowErrorKind, StateKind, TaskErrorKind};
use flowrun_dask::protocol::{DaskClient, Security};
use flowrun_dask::{
    annotate, current_cluster, AdaptKwargs, ClientKwargs, ClusterKwargs, DaskTaskRunner,
    WaitingTask,
};
use support::{begin, runner, Cluster, WorkerSpec};

/// Every console line of the flows, as flowrun formats them.
fn console() -> Arc<Mutex<Vec<String>>> {
    common::console_lines()
}

fn console_has(text: &str) -> bool {
    console().lock().unwrap().iter().any(|l| l.contains(text))
}

/// Every process of this machine: (pid, its `/proc` directory).
fn processes() -> impl Iterator<Item = (u32, PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, entry.path()))
        })
}

/// Task-mode processes of this machine that are still running.
fn task_mode_processes() -> Vec<u32> {
    let mut found = Vec::new();
    for (pid, dir) in processes() {
        let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
        if environ
            .split(|b| *b == 0)
            .any(|v| v == b"FLOWRUN_DASK_TASK=1")
            && pid_alive(pid)
        {
            found.push(pid);
        }
    }
    found
}

fn no_task_mode_left() {
    support::poll(
        "task-mode processes to exit",
        Duration::from_secs(20),
        || task_mode_processes().is_empty().then_some(()),
    );
}

/// Every process below this one: (pid, command line).
fn descendants() -> Vec<(u32, String)> {
    let mut parent_of = HashMap::new();
    for (pid, dir) in processes() {
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.insert(pid, ppid);
        }
    }
    let me = std::process::id();
    let mut out = Vec::new();
    for &pid in parent_of.keys() {
        let mut p = pid;
        while let Some(&parent) = parent_of.get(&p) {
            if parent == me {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                out.push((pid, cmd));
                break;
            }
            if parent <= 1 {
                break;
            }
            p = parent;
        }
    }
    out
}

/// Asks the scheduler (from a client of its own) for the state of keys.
fn scheduler_states(address: &str, keys: &[String]) -> HashMap<String, Option<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let address = address.to_owned();
    let keys = keys.to_vec();
    rt.block_on(async move {
        let client = DaskClient::connect(&address, Duration::from_secs(30))
            .await
            .unwrap();
        let states = client.task_status(&keys).await.unwrap();
        client.close().await.unwrap();
        states
    })
}

// ---------------------------------------------------------------------------
// count_to: ten tasks of 0.5 s, in parallel, output attributed, keys named.

#[task]
fn shout(number: u32) {
    std::thread::sleep(Duration::from_millis(500));
    println!("#{number}");
}

#[flow(task_runner = DaskTaskRunner::new())]
fn count_to(highest_number: u32, address: String) -> (Vec<String>, Vec<String>) {
    let futures: Vec<_> = (0..highest_number).map(|n| shout.submit(n)).collect();
    flowrun::wait(&futures);
    let id = flowrun::current_flow_run_id().unwrap();
    let keys: Vec<String> = futures
        .iter()
        .map(|f| format!("{}-{}-1", f.name(), &id[..8]))
        .collect();
    // The keys are still held by the flow's client, so the scheduler knows
    // them by these names.
    let states = scheduler_states(&address, &keys);
    let locations = futures
        .iter()
        .map(|f| {
            f.run_ref()
                .location()
                .map(|l| l.to_string())
                .unwrap_or_default()
        })
        .collect();
    let bad: Vec<_> = states
        .iter()
        .filter(|(_, s)| s.as_deref() != Some("memory"))
        .collect();
    assert!(bad.is_empty(), "keys not in memory: {bad:?}");
    (keys, locations)
}

#[test]
fn count_to_runs_in_parallel_on_two_workers() {
    let _t = begin("count_to_runs_in_parallel_on_two_workers");
    let cluster = Cluster::start(&[WorkerSpec::threads(2), WorkerSpec::threads(2)]);
    let seen = console().lock().unwrap().len();
    let started = Instant::now();
    let (keys, locations) = cluster.or_logs(
        count_to
            .with_runner(runner(&cluster))
            .call(10, cluster.address.clone()),
    );
    let elapsed = started.elapsed();
    // Ten sleeps in a row would take 5 s; four slots take three waves.
    assert!(elapsed < Duration::from_millis(4500), "{elapsed:?}");
    for n in 0..10 {
        assert!(
            console_has(&format!("Task run 'shout-{n}' - #{n}")),
            "no attributed output of shout-{n}"
        );
    }
    assert!(keys[3].starts_with("shout-3-"), "{keys:?}");
    // Joining a running scheduler is not creating a cluster.
    let lines = console().lock().unwrap()[seen..].to_vec();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Connecting to an existing Dask cluster: Dask cluster at tcp://")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("temporary cluster")),
        "{lines:?}"
    );
    let workers: BTreeSet<&str> = locations.iter().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [cluster.worker_address(0), cluster.worker_address(1)].into();
    assert_eq!(
        workers, expected,
        "every task ran on a worker, both were used"
    );
    no_task_mode_left();
}

// ---------------------------------------------------------------------------
// A chain of large values moves between workers, never through the flow.

#[task]
fn blob(mb: usize) -> String {
    "a".repeat(mb << 20)
}

#[task]
fn grow(data: String, mb: usize) -> String {
    let mut data = data;
    data.push_str(&"b".repeat(mb << 20));
    data
}

#[task]
fn measure(data: String) -> usize {
    data.len()
}

/// Resets this process's peak resident memory (`VmHWM`), so that the next
/// [`peak_memory`] is the peak since now.
fn reset_peak_memory() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// This process's peak resident memory, in bytes.
fn peak_memory() -> u64 {
    common::status_kb("VmHWM:") * 1024
}

/// The bytes Dask's workers sent, from their own transfer records: to
/// other workers, and to anyone else (the scheduler's gathers for the flow).
fn worker_transfers(address: &str) -> (u64, u64) {
    let text = support::with_client(
        address,
        "workers = set(c.scheduler_info()['workers'])\n\
         logs = c.run(lambda dask_worker: list(dask_worker.transfer_outgoing_log))\n\
         peers = sum(t['total'] for l in logs.values() for t in l if t['who'] in workers)\n\
         other = sum(t['total'] for l in logs.values() for t in l if t['who'] not in workers)\n\
         print(peers, other)",
    );
    let mut numbers = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

#[flow(task_runner = DaskTaskRunner::new())]
fn chain(mb: usize, read_last: bool) -> usize {
    let first = blob.submit(mb);
    let second = grow.submit(first, mb);
    let third = grow.submit(second, mb);
    if read_last {
        // What the check below must catch: the data coming to the flow.
        return third.result().unwrap().len();
    }
    measure.submit(third).result().unwrap()
}

#[test]
fn dependency_data_moves_between_workers_not_through_the_flow() {
    let _t = begin("dependency_data_moves_between_workers_not_through_the_flow");
    let mb = 16;
    let moved = |read_last: bool| {
        // A fresh cluster each time: the workers' records start empty.
        let cluster = Cluster::start(&[WorkerSpec::threads(1), WorkerSpec::threads(1)]);
        reset_peak_memory();
        let before = peak_memory();
        let length = cluster.or_logs(chain.with_runner(runner(&cluster)).call(mb, read_last));
        assert_eq!(length, 3 * (mb << 20));
        let grown = peak_memory().saturating_sub(before);
        let (peers, to_flow) = worker_transfers(&cluster.address);
        (grown, peers, to_flow)
    };
    let (grown, peers, to_flow) = moved(false);
    // 16 + 32 + 48 MiB went from task to task, on one worker or between
    // the two; what went towards the flow was a few bytes.
    assert!(
        to_flow < 64 << 10,
        "the workers sent {to_flow} bytes towards the flow"
    );
    assert!(
        grown < 24 << 20,
        "the flow's peak memory grew by {grown} bytes"
    );
    // The same chain that reads its last value shows up in both measures.
    let (grown_read, _, to_flow_read) = moved(true);
    assert!(to_flow_read >= 48 << 20, "{to_flow_read} {peers}");
    assert!(grown_read >= 48 << 20, "{grown_read}");
}

#[task]
fn append_b(data: String) -> String {
    let mut data = data;
    data.push('b');
    data
}

#[flow(task_runner = DaskTaskRunner::new())]
fn appended(mb: usize, links: usize, read_last: bool) -> (usize, bool) {
    let mut last = blob.submit(mb);
    for _ in 0..links {
        last = append_b.submit(last);
    }
    if !read_last {
        return (measure.submit(last).result().unwrap(), true);
    }
    let value = last.result().unwrap();
    let (head, tail) = value.split_at(mb << 20);
    let intact = head.bytes().all(|b| b == b'a') && tail == "b".repeat(links);
    (value.len(), intact)
}

/// Resets the peak resident memory (`VmHWM`) of process `pid`.
fn reset_peak_memory_of(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// The peak resident memory of process `pid`, in bytes.
fn peak_memory_of(pid: u32) -> u64 {
    common::status_kb_of(pid, "VmHWM:") * 1024
}

/// The fds of process `pid` open on large results held in shared memory.
fn held_results(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().contains("flowrun-result"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_large_value_passes_a_chain_in_shared_memory_and_arrives_intact() {
    let _t = begin("a_large_value_passes_a_chain_in_shared_memory_and_arrives_intact");
    // One worker: no value moves between workers (a move reads it).
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let worker = cluster.worker_pids()[0];
    let (mb, links) = (64, 4);
    // The warm-up starts the task process and Python's imports.
    cluster.or_logs(appended.with_runner(runner(&cluster)).call(1, 1, false));
    reset_peak_memory_of(worker);
    let before = peak_memory_of(worker);
    let (length, _) = cluster.or_logs(
        appended
            .with_runner(runner(&cluster))
            .call(mb, links, false),
    );
    assert_eq!(length, (mb << 20) + links);
    // Five values of 64 MiB went from task process to task process through
    // the worker, which never touched them: they stayed in the shared
    // memory the task processes wrote and mapped.
    let grown = peak_memory_of(worker).saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "the worker's peak memory grew by {} MiB passing {mb} MiB values",
        grown >> 20
    );
    // The same chain read by the flow: every byte arrives.
    let (length, intact) =
        cluster.or_logs(appended.with_runner(runner(&cluster)).call(mb, links, true));
    assert_eq!(length, (mb << 20) + links);
    assert!(
        intact,
        "the value read by the flow is not the one the chain made"
    );
    // Released values give their shared memory back.
    support::poll(
        "the worker to let go of the flow's results",
        Duration::from_secs(20),
        || (held_results(worker) == 0).then_some(()),
    );
}

// ---------------------------------------------------------------------------
// Reads in batches: reading many results costs a few gathers, not one each.

/// A TCP proxy in front of the scheduler that counts the `gather` requests
/// passing through it (the msgpack str "gather" of the request's op).
struct CountingProxy {
    address: String,
    gathers: Arc<AtomicUsize>,
}

impl CountingProxy {
    fn start(scheduler: &str) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("tcp://{}", listener.local_addr().unwrap());
        let target = scheduler.trim_start_matches("tcp://").to_owned();
        let gathers = Arc::new(AtomicUsize::new(0));
        let counter = gathers.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let mut server = std::net::TcpStream::connect(&target).unwrap();
                let (mut client_out, mut server_in) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_in, &mut client_out);
                    let _ = client_out.shutdown(std::net::Shutdown::Write);
                });
                let counter = counter.clone();
                std::thread::spawn(move || {
                    const OP: &[u8] = b"\xa6gather";
                    let mut buf = vec![0u8; 1 << 16];
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        let n = match std::io::Read::read(&mut client, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        tail.extend_from_slice(&buf[..n]);
                        let found = tail.windows(OP.len()).filter(|w| *w == OP).count();
                        counter.fetch_add(found, Ordering::Relaxed);
                        let keep = tail.len().saturating_sub(OP.len() - 1);
                        tail.drain(..keep);
                    }
                    let _ = server.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CountingProxy { address, gathers }
    }

    fn gathers(&self) -> usize {
        self.gathers.load(Ordering::Relaxed)
    }
}

#[task]
fn plus_one(x: u64) -> u64 {
    x + 1
}

#[flow(task_runner = DaskTaskRunner::new())]
fn read_every_result(n: u64) -> (u64, u64) {
    let futures: Vec<_> = (0..n).map(|i| plus_one.submit(i)).collect();
    flowrun::wait(&futures);
    let again = futures[0].clone();
    let total = flowrun::results(futures).unwrap().iter().sum();
    (total, again.result().unwrap())
}

#[test]
fn results_are_read_in_batches_and_a_single_read_is_one_gather() {
    let _t = begin("results_are_read_in_batches_and_a_single_read_is_one_gather");
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    let proxy = CountingProxy::start(&cluster.address);
    let n = 300;
    let (total, first) = cluster.or_logs(
        read_every_result
            .with_runner(runner(&cluster).address(&proxy.address))
            .call(n),
    );
    assert_eq!(total, n * (n + 1) / 2);
    assert_eq!(first, 1, "a result read twice is read again");
    // Every result read ahead by the first read, plus the second read of
    // the first result.
    let gathers = proxy.gathers();
    assert!(gathers <= 3, "{gathers} gathers for {n} results");
}

// ---------------------------------------------------------------------------
// Nothing left behind on a long-lived scheduler.

/// The resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    common::status_kb_of(pid, "VmRSS:") * 1024
}

#[flow(task_runner = DaskTaskRunner::new())]
fn many(n: u64) -> u64 {
    let futures: Vec<_> = (0..n).map(|i| plus_one.submit(i)).collect();
    flowrun::results(futures).unwrap().iter().sum()
}

#[flow(task_runner = DaskTaskRunner::new())]
fn drops_a_future(address: String) -> Vec<Option<String>> {
    let id = flowrun::current_flow_run_id().unwrap();
    let key = |f: &flowrun::TaskFuture<u64>| format!("{}-{}-1", f.name(), &id[..8]);
    let kept = plus_one.submit(1);
    let dropped = plus_one.submit(2);
    let dependent = plus_one.submit(&dropped);
    // Waiting reads nothing: its result stays on the cluster (a read
    // result is the flow's, and its key goes too).
    dependent.wait();
    assert!(dependent.state().is_completed());
    let keys = vec![key(&kept), key(&dropped), key(&dependent)];
    kept.wait();
    drop(dependent);
    drop(dropped);
    // Nothing can read them now: they go, while the kept one stays.
    support::poll("the dropped keys' release", Duration::from_secs(30), || {
        let states = scheduler_states(&address, &keys[1..]);
        states.values().all(Option::is_none).then_some(())
    });
    let states = scheduler_states(&address, &keys);
    keys.iter().map(|k| states[k].clone()).collect()
}

#[test]
fn a_key_is_released_once_no_future_and_no_dependent_needs_it() {
    let _t = begin("a_key_is_released_once_no_future_and_no_dependent_needs_it");
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    let states = cluster.or_logs(
        drops_a_future
            .with_runner(runner(&cluster))
            .call(cluster.address.clone()),
    );
    assert_eq!(states, vec![Some("memory".to_owned()), None, None]);
}

/// What flowrun leaves on the scheduler: keys, event topics, worker
/// plugins. (The scheduler itself keeps a topic of a few events per client
/// it has seen, named after the client, for Python clients too.)
const LEFT_BEHIND: &str = "(len(s.tasks), \
    sorted(t for t, v in s._broker._topics.items() if t.startswith('flowrun') \
        and not (v.events and isinstance(v.events[-1][1], dict) \
            and str(v.events[-1][1].get('action')).endswith('-client'))), \
    sorted(p for p in s.worker_plugins if p.startswith('flowrun')))";

#[test]
fn a_flow_of_ten_thousand_tasks_leaves_nothing_on_a_long_lived_scheduler() {
    let _t = begin("a_flow_of_ten_thousand_tasks_leaves_nothing_on_a_long_lived_scheduler");
    // Dask keeps its last transitions (100,000 by default, some five per
    // task) and, per worker connection, its last 1,000 message batches
    // (compute-task messages hold a task's whole spec: as many tasks as the
    // batches were long, which varies with the load). One setting bounds
    // both; short, the first flow fills them, so that what the second flow
    // adds is only what a flow leaves behind.
    const LOGS: &str = "DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH";
    std::env::set_var(LOGS, "10");
    let cluster = Cluster::start(&[WorkerSpec::threads(2), WorkerSpec::threads(2)]);
    std::env::remove_var(LOGS);
    let nothing = "(0, [], [])";
    let n = 10_000;
    let flow = || {
        let total = cluster.or_logs(many.with_runner(runner(&cluster)).call(n));
        assert_eq!(total, n * (n + 1) / 2);
        assert_eq!(
            support::on_scheduler(&cluster.address, LEFT_BEHIND),
            nothing
        );
        let objects: u64 = support::on_scheduler(
            &cluster.address,
            "__import__('gc').collect() * 0 + len(__import__('gc').get_objects())",
        )
        .parse()
        .unwrap();
        (objects, rss(cluster.scheduler_pid()))
    };
    // The first flow takes the scheduler's memory to where any 10,000
    // tasks take it (Python keeps freed memory for reuse); a flow that left
    // something behind would make the second one grow it again.
    let (first_objects, first_rss) = flow();
    let (second_objects, second_rss) = flow();
    // The scheduler's Python objects are back where they were: anything
    // left per task would be at least n more. (Dask keeps a topic of a few
    // events per client it has seen, the measuring clients' included.)
    assert!(
        second_objects < first_objects + n / 2,
        "the scheduler holds {first_objects} objects after the first flow, \
         {second_objects} after the second"
    );
    // ... and its process did not grow by a flow's worth of tasks (the
    // malloc heap keeps some room it had freed: about 20 MiB here).
    let grown = second_rss.saturating_sub(first_rss);
    assert!(
        grown < 48 << 20,
        "the scheduler grew by {} MiB in the second flow ({} -> {} MiB)",
        grown >> 20,
        first_rss >> 20,
        second_rss >> 20
    );
    no_task_mode_left();
}

// ---------------------------------------------------------------------------
// Priorities: on a one-thread worker, higher first, ties in submission order.

#[task]
fn gate(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[task]
fn record(_gate: (), path: String, label: String) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(file, "{label}").unwrap();
}

#[flow(task_runner = DaskTaskRunner::new())]
fn prioritised(path: String) {
    // Everything waits for the gate, so all are queued when it opens.
    let opened = gate.submit(1000);
    let order = [
        (3, "p3"),
        (10, "p10"),
        (1, "p1"),
        (0, "tie-a"),
        (7, "p7"),
        (0, "tie-b"),
        (-2, "p-2"),
        (5, "p5"),
    ];
    let futures: Vec<_> = order
        .iter()
        .map(|(priority, label)| {
            annotate()
                .priority(*priority)
                .run(|| record.submit(&opened, path.clone(), label.to_string()))
        })
        .collect();
    flowrun::wait(&futures);
}

#[test]
fn priority_orders_queued_tasks_on_a_one_thread_worker() {
    let _t = begin("priority_orders_queued_tasks_on_a_one_thread_worker");
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let path = cluster.dir().join("order");
    cluster.or_logs(
        prioritised
            .with_runner(runner(&cluster))
            .call(path.display().to_string()),
    );
    let ran: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        ran,
        ["p10", "p7", "p5", "p3", "p1", "tie-a", "tie-b", "p-2"]
    );
}

// ---------------------------------------------------------------------------
// Resources: GPU tasks run only on the worker that has a GPU.

#[task]
fn which_worker(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    // The Dask worker (started without a nanny) runs task mode directly.
    std::os::unix::process::parent_id()
}

#[flow(task_runner = DaskTaskRunner::new())]
fn placed() -> (Vec<(u32, String)>, Vec<u32>) {
    let gpu: Vec<_> = annotate()
        .resources([("GPU", 1.0)])
        .run(|| (0..4).map(|_| which_worker.submit(300)).collect());
    let plain: Vec<_> = (0..4).map(|_| which_worker.submit(300)).collect();
    let gpu = gpu
        .iter()
        .map(|f| {
            let pid = f.result().unwrap();
            let location = f.run_ref().location().map(|l| l.to_string());
            (pid, location.unwrap_or_default())
        })
        .collect();
    (gpu, flowrun::results(plain).unwrap())
}

#[test]
fn a_resource_task_runs_only_where_the_resource_is() {
    let _t = begin("a_resource_task_runs_only_where_the_resource_is");
    let cluster = Cluster::start(&[
        WorkerSpec::threads(2),
        WorkerSpec::threads(2).with_resources("GPU=1"),
    ]);
    let gpu_pid = cluster.worker_pids()[1];
    let (gpu, plain) = cluster.or_logs(placed.with_runner(runner(&cluster)).call());
    for (pid, location) in &gpu {
        assert_eq!(*pid, gpu_pid, "a GPU task ran on the wrong worker");
        assert_eq!(location, cluster.worker_address(1));
    }
    assert!(plain.iter().all(|p| cluster.worker_pids().contains(p)));

    // A resource no worker offers: the task waits, and the runner says why.
    let (waiting, cancelled) = cluster.or_logs(unplaceable.with_runner(runner(&cluster)).call());
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0].run, "which_worker-0");
    assert!(waiting[0].reason.contains("TPU"), "{waiting:?}");
    assert!(cancelled);
    assert!(console_has("which no worker of the Dask cluster at"));
}

#[flow(task_runner = DaskTaskRunner::new())]
fn unplaceable() -> (Vec<WaitingTask>, bool) {
    let future = annotate()
        .resources([("TPU", 1.0)])
        .run(|| which_worker.submit(1));
    let cluster = current_cluster().expect("the flow's cluster");
    let waiting = support::poll(
        "the task to be reported waiting",
        Duration::from_secs(30),
        || {
            let status = cluster.status()?;
            (!status.waiting.is_empty()).then_some(status.waiting)
        },
    );
    // Nothing will ever run it; end the flow.
    (waiting, future.cancel())
}

// ---------------------------------------------------------------------------
// Failures come back as the task's own error, with what it printed.

#[task]
fn fragile(label: String) -> Result<u64, String> {
    println!("about to fail: {label}");
    Err(format!("disk full ({label})"))
}

#[task]
fn after(x: u64) -> u64 {
    x + 1
}

#[task]
fn boom() -> u64 {
    panic!("kaboom")
}

type Seen = (TaskErrorKind, String, Option<String>, StateKind);

#[flow(task_runner = DaskTaskRunner::new())]
fn failing() -> Vec<Seen> {
    let a = fragile.submit("a".to_owned());
    let b = after.submit(&a);
    let c = after.submit(&b);
    let p = boom.submit();
    [a, b, c, p]
        .iter()
        .map(|f| {
            let e = f.result().unwrap_err();
            (
                e.kind().clone(),
                e.message().to_owned(),
                e.printed().map(str::to_owned),
                f.state().kind(),
            )
        })
        .collect()
}

#[test]
fn a_failure_is_the_tasks_own_error_and_fails_its_dependents() {
    let _t = begin("a_failure_is_the_tasks_own_error_and_fails_its_dependents");
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    let seen = cluster.or_logs(failing.with_runner(runner(&cluster)).call());
    let (kind, message, output, state) = &seen[0];
    assert_eq!(kind, &TaskErrorKind::Error);
    assert_eq!(message, "disk full (a)");
    assert!(
        output.as_deref().unwrap_or("").contains("about to fail: a"),
        "{output:?}"
    );
    assert_eq!(*state, StateKind::Failed);
    let b = common::upstream_failed("fragile-0", "disk full (a)");
    assert_eq!((&seen[1].0, &seen[1].1), (&b.0, &b.1));
    let c = common::upstream_failed("after-0", &b.1);
    assert_eq!((&seen[2].0, &seen[2].1), (&c.0, &c.1));
    assert_eq!(seen[3].0, TaskErrorKind::Panic);
    assert!(
        seen[3].1.starts_with("kaboom (panicked at "),
        "{}",
        seen[3].1
    );
    for (_, message, _, _) in &seen {
        assert!(
            !message.contains("Traceback") && !message.contains("CalledProcessError"),
            "{message}"
        );
    }
    assert!(console_has("Task run 'fragile-0' - about to fail: a"));
}

// ---------------------------------------------------------------------------
// Retries: a flaky task runs again, each attempt a Dask key of its own.

#[task(retries = 2)]
fn flaky(counter: String) -> u32 {
    let attempt = std::fs::read_to_string(&counter)
        .map(|s| s.trim().parse::<u32>().unwrap_or(0))
        .unwrap_or(0)
        + 1;
    std::fs::write(&counter, attempt.to_string()).unwrap();
    println!("attempt {attempt}");
    if attempt < 2 {
        panic!("not yet (attempt {attempt})");
    }
    attempt
}

#[flow(task_runner = DaskTaskRunner::new())]
fn retried(counter: String) -> (u32, u32) {
    let future = flaky.submit(counter);
    let value = future.result().unwrap();
    (value, future.run_ref().attempts())
}

#[test]
fn a_flaky_task_is_retried_until_it_succeeds() {
    let _t = begin("a_flaky_task_is_retried_until_it_succeeds");
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let counter = cluster.dir().join("attempts");
    let (value, attempts) = cluster.or_logs(
        retried
            .with_runner(runner(&cluster))
            .call(counter.display().to_string()),
    );
    assert_eq!(value, 2, "succeeded on its second run");
    assert_eq!(attempts, 2, "the run counts its retry");
    assert!(console_has("Task run 'flaky-0' - attempt 1"));
    assert!(console_has("Task run 'flaky-0' - attempt 2"));
    assert!(console_has(
        "Task run 'flaky-0' - Attempt failed: not yet (attempt 1) (panicked at"
    ));
}

// ---------------------------------------------------------------------------
// Logs: what a task logs in its task process reaches the flow's console at
// its level, attributed to the task run, filtered as on the console.

#[task]
fn logs_twice(n: u32) -> u32 {
    flowrun::get_run_logger().info(format!("logger line {n}"));
    tracing::warn!(rows = n, "tracing line");
    tracing::debug!("debug line {n} stays below the default level");
    n
}

#[test]
fn task_logs_reach_the_flow_at_their_level_attributed_to_the_task_run() {
    #[flow(task_runner = DaskTaskRunner::new())]
    fn logged() -> u32 {
        logs_twice.submit(7).result().unwrap()
    }
    let _t = begin("task_logs_reach_the_flow_at_their_level_attributed_to_the_task_run");
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    assert_eq!(
        cluster.or_logs(logged.with_runner(runner(&cluster)).call()),
        7
    );
    assert!(console_has(
        "| INFO    | Task run 'logs_twice-0' - logger line 7"
    ));
    assert!(console_has(
        "| WARNING | Task run 'logs_twice-0' - tracing line rows=7"
    ));
    assert!(!console_has("debug line 7"));
}

// ---------------------------------------------------------------------------
// Task processes: long-lived per worker (one call per task), or one per
// attempt with isolate_tasks; one that dies is a crash, retried, and a
// new process takes over.

#[task]
fn whose_process() -> (u32, u32) {
    (std::process::id(), std::os::unix::process::parent_id())
}

#[flow(task_runner = DaskTaskRunner::new())]
fn process_ids(n: u32) -> Vec<(u32, u32, String)> {
    // One after the other: on a one-thread worker each could reuse the last.
    (0..n)
        .map(|_| {
            let future = whose_process.submit();
            let (pid, parent) = future.result().unwrap();
            // Short and silent, it still knows where it ran.
            let location = future.run_ref().location().unwrap_or_default();
            (pid, parent, location.to_string())
        })
        .collect()
}

#[test]
fn tasks_are_calls_into_a_long_lived_task_process_unless_isolated() {
    let _t = begin("tasks_are_calls_into_a_long_lived_task_process_unless_isolated");
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let worker = cluster.worker_pids()[0];
    let served = cluster.or_logs(process_ids.with_runner(runner(&cluster)).call(4));
    let pids: BTreeSet<u32> = served.iter().map(|(pid, _, _)| *pid).collect();
    assert_eq!(
        pids.len(),
        1,
        "one task process served them all: {served:?}"
    );
    assert!(
        served.iter().all(|(_, parent, location)| *parent == worker
            && location == cluster.worker_address(0)),
        "{served:?}"
    );
    // The flow run's end stops it.
    no_task_mode_left();
    let isolated = cluster.or_logs(
        process_ids
            .with_runner(runner(&cluster).isolate_tasks(true))
            .call(4),
    );
    let pids: BTreeSet<u32> = isolated.iter().map(|(pid, _, _)| *pid).collect();
    assert_eq!(pids.len(), 4, "a process per task: {isolated:?}");
    no_task_mode_left();
}

fn kill_own_process() {
    // SAFETY: SIGKILL to this task process, which the test means to end.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

#[task]
fn dies() -> u32 {
    kill_own_process();
    0
}

#[task(retries = 1)]
fn dies_once(marker: String) -> u32 {
    if std::fs::read(&marker).is_err() {
        std::fs::write(&marker, std::process::id().to_string()).unwrap();
        kill_own_process();
    }
    std::process::id()
}

#[flow(task_runner = DaskTaskRunner::new())]
fn dying(marker: String) -> (TaskErrorKind, String, u32, u32) {
    let first = whose_process.submit().result().unwrap().0;
    let error = dies.submit().result().unwrap_err();
    let survivor = dies_once.submit(marker).result().unwrap();
    (
        error.kind().clone(),
        error.message().to_owned(),
        first,
        survivor,
    )
}

#[test]
fn a_task_process_that_dies_is_a_crash_that_is_retried_and_a_new_one_serves() {
    let _t = begin("a_task_process_that_dies_is_a_crash_that_is_retried_and_a_new_one_serves");
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let marker = cluster.dir().join("dies-once");
    let (kind, message, first, survivor) = cluster.or_logs(
        dying
            .with_runner(runner(&cluster))
            .call(marker.display().to_string()),
    );
    assert_eq!(kind, TaskErrorKind::Crashed, "{message}");
    assert!(message.contains("signal 9"), "{message}");
    let killed_in: u32 = std::fs::read_to_string(&marker).unwrap().parse().unwrap();
    assert_ne!(killed_in, first, "the task that died had a fresh process");
    assert_ne!(survivor, killed_in, "the retry ran in a new process");
    no_task_mode_left();
}

// ---------------------------------------------------------------------------
// A worker killed mid-task: Dask reruns the task elsewhere.

#[task]
fn long_job(dir: String) -> u32 {
    let worker = std::os::unix::process::parent_id();
    std::fs::write(Path::new(&dir).join(format!("started-{worker}")), "").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    worker
}

#[flow(task_runner = DaskTaskRunner::new())]
fn survives(dir: String) -> u32 {
    long_job.submit(dir).result().unwrap()
}

fn started_on(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("started-")?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn a_task_on_a_killed_worker_is_rerun_elsewhere() {
    let _t = begin("a_task_on_a_killed_worker_is_rerun_elsewhere");
    let cluster = Cluster::start(&[WorkerSpec::threads(1), WorkerSpec::threads(1)]);
    let dir = cluster.dir().join("marks");
    std::fs::create_dir(&dir).unwrap();
    let workers = cluster.worker_pids();
    let killer = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let first = support::poll("the task to start", Duration::from_secs(120), || {
                started_on(&dir).first().copied()
            });
            assert!(workers.contains(&first));
            // SAFETY: SIGKILL to a Dask worker this test started.
            unsafe {
                libc::kill(first as libc::pid_t, libc::SIGKILL);
            }
            first
        })
    };
    let ran_on = cluster.or_logs(
        survives
            .with_runner(runner(&cluster))
            .call(dir.display().to_string()),
    );
    let killed = killer.join().unwrap();
    assert_ne!(ran_on, killed);
    let mut starts = started_on(&dir);
    starts.sort();
    let mut expected = vec![killed, ran_on];
    expected.sort();
    assert_eq!(starts, expected, "started once on each worker");
    // The attempt on the killed worker died with it.
    no_task_mode_left();
}

// ---------------------------------------------------------------------------
// get_dask_client(): from the flow and from inside a task, the same cluster.

#[task]
fn square_where(x: u64) -> (u64, u32) {
    (x * x, std::os::unix::process::parent_id())
}

#[task]
fn sum_of_squares(n: u64) -> (u64, Vec<u32>) {
    let client = flowrun_dask::get_dask_client().expect("a client inside the task");
    let futures = client.map(&square_where, (1..=n).map(|i| (i,)));
    let results = client.gather(futures).expect("the inner tasks");
    (
        results.iter().map(|(v, _)| v).sum(),
        results.iter().map(|(_, pid)| *pid).collect(),
    )
}

#[flow(task_runner = DaskTaskRunner::new())]
fn nested(n: u64) -> ((u64, Vec<u32>), (u64, Vec<u32>)) {
    let inside = sum_of_squares.submit(n).result().unwrap();
    let client = flowrun_dask::get_dask_client().expect("a client in the flow");
    let results = client
        .gather(client.map(&square_where, (1..=n).map(|i| (i,))))
        .unwrap();
    let from_flow = (
        results.iter().map(|(v, _)| v).sum(),
        results.iter().map(|(_, pid)| *pid).collect(),
    );
    (inside, from_flow)
}

#[test]
fn get_dask_client_submits_to_the_same_real_cluster() {
    let _t = begin("get_dask_client_submits_to_the_same_real_cluster");
    // One thread: the task that waits for its own submissions must hand
    // its thread to them, or this never ends.
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let worker = cluster.worker_pids()[0];
    let seen = console().lock().unwrap().len();
    let ((inside, inside_pids), (from_flow, flow_pids)) =
        cluster.or_logs(nested.with_runner(runner(&cluster)).call(5));
    assert_eq!(inside, 55);
    assert_eq!(from_flow, 55);
    // The inner runs' lines carry their own names, not the outer task's.
    let finished = |run: &str| {
        console().lock().unwrap()[seen..]
            .iter()
            .filter(|l| l.contains(&format!("{run} - Finished in state")))
            .count()
    };
    assert_eq!(finished("Task run 'sum_of_squares-0'"), 1);
    assert!(
        inside_pids.iter().chain(&flow_pids).all(|p| *p == worker),
        "every task ran on the Dask worker {worker}: {inside_pids:?} {flow_pids:?}"
    );
    no_task_mode_left();
}

// ---------------------------------------------------------------------------
// TLS: a cluster that requires it, with certificates made here.

#[test]
fn a_tls_cluster_is_reached_with_dask_security_and_a_wrong_certificate_names_the_address() {
    let _t = begin(
        "a_tls_cluster_is_reached_with_dask_security_and_a_wrong_certificate_names_the_address",
    );
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = support::certificates(dir.path(), "cluster");
    let (other_ca, other_cert, other_key) = support::certificates(dir.path(), "other");
    let tls = |flag: &str, path: &Path| [flag.to_owned(), path.display().to_string()];
    let extra: Vec<String> = [
        ["--protocol".to_owned(), "tls".to_owned()],
        tls("--tls-ca-file", &ca),
        tls("--tls-cert", &cert),
        tls("--tls-key", &key),
    ]
    .concat();
    // One thread: the nested flow checks that a task reaches the cluster
    // over TLS too, with its worker's certificate.
    let cluster = Cluster::start_with(&support::dask_version(), &[WorkerSpec::threads(1)], &extra);
    assert!(cluster.address.starts_with("tls://"), "{}", cluster.address);
    let security = |ca: &Path, cert: &Path, key: &Path| {
        Security::new()
            .tls_ca_file(ca)
            .tls_client_cert(cert)
            .tls_client_key(key)
    };
    let ((inside, _), (from_flow, _)) = cluster.or_logs(
        nested
            .with_runner(runner(&cluster).security(security(&ca, &cert, &key)))
            .call(3),
    );
    assert_eq!((inside, from_flow), (14, 14));
    no_task_mode_left();
    for (wrong, what) in [
        (
            security(&other_ca, &cert, &key),
            "a CA that did not sign the scheduler's",
        ),
        (
            security(&ca, &other_cert, &other_key),
            "a client certificate of another CA",
        ),
        (Security::new(), "no TLS settings"),
    ] {
        let error = trivial
            .with_runner(runner(&cluster).security(wrong))
            .call()
            .expect_err(what)
            .to_string();
        assert!(error.contains(&cluster.address), "{what}: {error}");
        assert!(
            ["certificate", "TLS", "tls"]
                .iter()
                .any(|w| error.contains(w)),
            "{what}: {error}"
        );
    }
}

// ---------------------------------------------------------------------------
// cluster_class = "distributed.LocalCluster", scaled by adapt from zero.

#[task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[flow(task_runner = DaskTaskRunner::new())]
fn adaptive() -> (u64, Vec<(u32, String)>) {
    let futures: Vec<_> = (0..6).map(|_| nap.submit(300)).collect();
    let total = flowrun::results(futures).unwrap().iter().sum();
    (total, descendants())
}

#[test]
fn a_python_cluster_class_is_started_adapted_and_closed() {
    let _t = begin("a_python_cluster_class_is_started_adapted_and_closed");
    let python = support::python();
    let runner = DaskTaskRunner::new()
        .cluster_class("distributed.LocalCluster")
        .cluster_kwargs(
            common::cluster_of(0, 2)
                .processes(true)
                .set("host", "127.0.0.1")
                .no_dashboard(),
        )
        .adapt_kwargs(
            AdaptKwargs::new()
                .minimum(0)
                .maximum(2)
                .interval(Duration::from_millis(200))
                .target_duration(Duration::from_secs(1)),
        )
        .python(&python);
    let (total, processes) = adaptive
        .with_runner(runner)
        .call()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(total, 1800);
    // The helper, and the workers adapt started from zero.
    let workers: Vec<_> = processes
        .iter()
        .filter(|(_, cmd)| cmd.contains("multiprocessing") || cmd.contains("spawn_main"))
        .collect();
    assert!(!workers.is_empty(), "no worker process: {processes:?}");
    for (pid, cmd) in &processes {
        support::poll(
            &format!("process {pid} ({cmd}) to end"),
            Duration::from_secs(10),
            || (!pid_alive(*pid)).then_some(()),
        );
    }
}

#[flow(task_runner = DaskTaskRunner::new())]
fn naps(n: u64) -> u64 {
    let futures: Vec<_> = (0..n).map(|i| nap.submit(10 * i)).collect();
    flowrun::results(futures).unwrap().iter().sum()
}

#[test]
fn a_performance_report_is_written_for_a_real_cluster() {
    let _t = begin("a_performance_report_is_written_for_a_real_cluster");
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    let path = cluster.dir().join("report.html");
    let total = cluster.or_logs(
        naps.with_runner(runner(&cluster).performance_report_path(&path))
            .call(4),
    );
    assert_eq!(total, 60);
    let html = std::fs::read_to_string(&path).expect("the report was written");
    for run in ["nap-0", "nap-3"] {
        assert!(html.contains(run), "{run} is in the report's task stream");
    }
    assert!(
        !html.contains("<script src") && !html.contains("<link "),
        "the report is one file: no external scripts or styles"
    );
}

#[flow(task_runner = DaskTaskRunner::new())]
fn trivial() -> u64 {
    nap.submit(1).result().unwrap()
}

fn runner_failure(runner: DaskTaskRunner) -> String {
    let run = trivial.with_runner(runner).return_state();
    let error = run.result().expect_err("the runner should not start");
    assert_eq!(error.kind(), &FlowErrorKind::RunnerFailed, "{error}");
    error.to_string()
}

#[test]
fn a_python_cluster_class_that_cannot_start_says_why() {
    let _t = begin("a_python_cluster_class_that_cannot_start_says_why");
    let python = support::python();
    let missing = PathBuf::from("/nonexistent/bin/python3");
    let bad_kwarg = ClusterKwargs::new().set("no_such_option", 1);
    // (class, python, kwargs, what the message names)
    let cases: [(&str, &Path, ClusterKwargs, &[&str]); 4] = [
        (
            "distributed.LocalCluster",
            &missing,
            ClusterKwargs::new(),
            &["/nonexistent/bin/python3", "No such file"],
        ),
        (
            "no_such_module.Cluster",
            &python,
            ClusterKwargs::new(),
            &["cannot import module 'no_such_module'"],
        ),
        (
            "distributed.NoSuchCluster",
            &python,
            ClusterKwargs::new(),
            &["module 'distributed' has no attribute 'NoSuchCluster'"],
        ),
        (
            "distributed.LocalCluster",
            &python,
            bad_kwarg,
            &["no_such_option"],
        ),
    ];
    for (class, python, kwargs, expected) in cases {
        let message = runner_failure(
            DaskTaskRunner::new()
                .cluster_class(class)
                .cluster_kwargs(kwargs)
                .python(python),
        );
        for part in expected {
            assert!(message.contains(part), "{class}: {message}");
        }
    }
    assert!(descendants().is_empty(), "{:?}", descendants());
}

// ---------------------------------------------------------------------------
// Connection errors: an unreachable address, an old scheduler.

#[test]
fn an_unreachable_address_fails_within_the_timeout_naming_it() {
    let _t = begin("an_unreachable_address_fails_within_the_timeout_naming_it");
    // Accepts connections (the kernel does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let message = runner_failure(
        DaskTaskRunner::new()
            .address(&address)
            .client_kwargs(ClientKwargs::new().timeout(Duration::from_secs(2))),
    );
    let elapsed = started.elapsed();
    assert!(message.contains(&address), "{message}");
    assert!(message.contains("timed out"), "{message}");
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");

    // A closed port is refused at once.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("tcp://{}", l.local_addr().unwrap())
    };
    let started = Instant::now();
    let message = runner_failure(DaskTaskRunner::new().address(&closed));
    assert!(message.contains(&closed), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_old_scheduler_is_refused_naming_both_versions() {
    let _t = begin("an_old_scheduler_is_refused_naming_both_versions");
    let cluster = Cluster::start_version("2025.3.0", &[WorkerSpec::threads(1)]);
    let message = runner_failure(runner(&cluster));
    assert!(
        message.contains("2025.3.0") && message.contains("2025.4.0"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------
// A task program of another build is refused.

/// A copy of this test binary whose ELF build id differs in one byte.
fn other_build(dir: &Path) -> PathBuf {
    let own = flowrun_dask::build_id();
    let hex = own.strip_prefix("gnu-").expect("an ELF build id");
    let id: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let mut changed = 0;
    let mut at = 0;
    while let Some(pos) = bytes[at..].windows(id.len()).position(|w| w == id) {
        let end = at + pos + id.len();
        bytes[end - 1] ^= 0xff;
        changed += 1;
        at = end;
    }
    assert!(changed > 0, "the build id is not in the binary");
    let copy = dir.join("other-build");
    std::fs::write(&copy, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

#[flow(task_runner = DaskTaskRunner::new())]
fn refused() -> (TaskErrorKind, String) {
    let e = nap.submit(1).result().unwrap_err();
    (e.kind().clone(), e.message().to_owned())
}

#[test]
fn a_task_program_of_another_build_is_refused() {
    let _t = begin("a_task_program_of_another_build_is_refused");
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let copy = other_build(cluster.dir());
    let (kind, message) = cluster.or_logs(
        refused
            .with_runner(runner(&cluster).task_program(&copy))
            .call(),
    );
    assert_eq!(kind, TaskErrorKind::Runner, "{message}");
    assert!(
        message.contains(flowrun_dask::build_id()) && message.contains("task_program"),
        "{message}"
    );
    assert!(message.contains(&copy.display().to_string()), "{message}");

    // A task program the workers do not have is named in the error.
    let (kind, message) = cluster.or_logs(
        refused
            .with_runner(runner(&cluster).task_program("/nonexistent/flow-program"))
            .call(),
    );
    assert_eq!(kind, TaskErrorKind::Runner, "{message}");
    assert!(
        message.contains("cannot start the task program /nonexistent/flow-program"),
        "{message}"
    );

    // A program that is not a flowrun program, and leaves a process behind
    // that holds its output pipes: the task ends when the program does.
    let script = cluster.dir().join("not-flowrun.sh");
    std::fs::write(&script, "#!/bin/sh\nsleep 60 &\necho hello\nexit 0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let (kind, message) = cluster.or_logs(
        refused
            .with_runner(runner(&cluster).task_program(&script))
            .call(),
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited for the leftover process: {:?}",
        started.elapsed()
    );
    assert_eq!(kind, TaskErrorKind::Runner, "{message}");
    assert!(
        message.contains("exited without a flowrun result"),
        "{message}"
    );
}

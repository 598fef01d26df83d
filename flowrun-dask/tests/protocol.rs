//! The protocol client against a real Dask cluster (scheduler and stock
//! Python workers from PyPI) on 127.0.0.1.
//!
//! The Dask version is `FLOWRUN_DASK_VERSION` (default 2026.8.0); run the
//! suite once per supported version, e.g. with `FLOWRUN_DASK_VERSION=2025.4.0`
//! for the oldest. The version-gate test always uses 2025.3.0.

mod common;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pid_alive;
use flowrun_dask::protocol::{
    ClientEvent, DaskClient, EventReceiver, EventValue, ProtocolError, PythonShim, StdinPart,
    SubprocessTask, TaskException, MIN_SUPPORTED_VERSION,
};
use support::{group_alive, Cluster, WorkerSpec};

/// The longest any single wait may take; generous because two cores may be
/// shared by several clusters at once.
const WAIT: Duration = Duration::from_secs(120);
const CONNECT: Duration = Duration::from_secs(30);

/// Keys unique across tests and runs (the scheduler remembers keys).
fn namespace(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{test}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn sh(key: &str, script: &str) -> SubprocessTask {
    SubprocessTask::new(key, ["/bin/sh", "-c", script])
}

fn cat(key: &str, stdin: Vec<StdinPart>) -> SubprocessTask {
    let mut task = SubprocessTask::new(key, ["/bin/cat"]);
    task.stdin = stdin;
    task
}

fn dep(key: &str) -> StdinPart {
    StdinPart::Dep(key.to_string())
}

fn lit(bytes: &[u8]) -> StdinPart {
    StdinPart::Literal(bytes.to_vec())
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[derive(Debug, Clone)]
enum Outcome {
    Memory,
    Erred(TaskException),
    Cancelled(String),
}

/// Collects events so that several waits can share one receiver.
struct Tracker {
    events: EventReceiver,
    outcomes: HashMap<String, Outcome>,
    log: Vec<ClientEvent>,
}

impl Tracker {
    fn new(client: &DaskClient) -> Tracker {
        Tracker {
            events: client.events().expect("events taken once"),
            outcomes: HashMap::new(),
            log: Vec::new(),
        }
    }

    /// Waits until every key has an outcome, and returns them.
    async fn wait(&mut self, keys: &[&str]) -> HashMap<String, Outcome> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Some(missing) = keys.iter().find(|k| !self.outcomes.contains_key(**k)) {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => panic!("event stream ended while waiting for {missing}"),
                Err(_) => panic!(
                    "timed out waiting for {missing}; events so far: {:?}",
                    self.log
                ),
            };
            self.log.push(event.clone());
            match event {
                ClientEvent::KeyInMemory { key } => {
                    self.outcomes.insert(key, Outcome::Memory);
                }
                ClientEvent::TaskErred { key, error } => {
                    self.outcomes.insert(key, Outcome::Erred(error));
                }
                ClientEvent::CancelledKeys { keys, reason } => {
                    for key in keys {
                        self.outcomes
                            .insert(key, Outcome::Cancelled(reason.clone()));
                    }
                }
                ClientEvent::LostData { key } => {
                    self.outcomes.remove(&key);
                }
                ClientEvent::Closed { reason } => panic!("stream closed: {reason}"),
                _ => {}
            }
        }
        keys.iter()
            .map(|k| (k.to_string(), self.outcomes[*k].clone()))
            .collect()
    }

    /// Waits until the keys are in memory, failing on any other outcome.
    async fn in_memory(&mut self, keys: &[&str]) {
        for (key, outcome) in self.wait(keys).await {
            assert!(matches!(outcome, Outcome::Memory), "{key}: {outcome:?}");
        }
    }
}

async fn connect(cluster: &Cluster) -> DaskClient {
    let client = DaskClient::connect(&cluster.address, CONNECT)
        .await
        .unwrap_or_else(|e| panic!("connect failed: {e}\n{}", cluster.logs()));
    assert_eq!(client.scheduler_version(), cluster.version);
    client
}

/// What most tests start from: a cluster of `workers`, a client connected
/// to it, the client's events, and the namespace of the test `test`'s keys.
async fn setup(test: &str, workers: &[WorkerSpec]) -> (Cluster, DaskClient, Tracker, String) {
    let cluster = Cluster::start(workers);
    let client = connect(&cluster).await;
    let tracker = Tracker::new(&client);
    (cluster, client, tracker, namespace(test))
}

async fn gather(client: &DaskClient, keys: &[&str]) -> HashMap<String, Vec<u8>> {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    tokio::time::timeout(WAIT, client.gather(&keys))
        .await
        .expect("gather timed out")
        .expect("gather failed")
}

/// Waits until `path` holds text that `ready` accepts, and returns it.
async fn wait_for_text(path: &Path, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        match std::fs::read_to_string(path) {
            Ok(text) if ready(&text) => return text,
            _ => assert!(
                Instant::now() < deadline,
                "timed out waiting for {}",
                path.display()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for what a task writes to `path`.
async fn wait_for_file(path: &Path) -> String {
    wait_for_text(path, |text| !text.is_empty()).await
}

/// Waits until a task has created `path`.
async fn wait_for_file_exists(path: &Path) {
    wait_for_text(path, |_| true).await;
}

/// 1. Subprocess round trip: argv, literal stdin (binary-safe), env, gather.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprocess_round_trip_and_gather() {
    let (cluster, client, mut tracker, ns) = setup("roundtrip", &[WorkerSpec::threads(2)]).await;
    assert!(client.events().is_none(), "one receiver per client");

    let info = client.identity().await.unwrap();
    assert_eq!(info.workers.len(), 1);
    assert_eq!(info.workers[0].nthreads, 2);
    assert_eq!(info.workers[0].name, "w0");
    assert_eq!(info.workers[0].address, cluster.worker_address(0));
    assert!(info.workers[0].memory_limit > 0);
    assert_eq!(info.total_threads(), 2);

    let echo = format!("{ns}-echo");
    let cat_key = format!("{ns}-cat");
    let env_key = format!("{ns}-env");
    let big_key = format!("{ns}-big");
    // A str argv item equal to a key must stay literal: argv is sent as bytes.
    let mut tasks = vec![
        SubprocessTask::new(
            &echo,
            ["/bin/echo".to_string(), "hello".into(), cat_key.clone()],
        ),
        cat(&cat_key, vec![lit(b"binary\x00\xff\n"), lit(b"more")]),
        sh(&env_key, "printf '%s' \"$FLOWRUN_TEST_VAR\""),
        // Large enough that Python sends the frame after the counted block.
        SubprocessTask::new(&big_key, ["/usr/bin/head", "-c", "5000000", "/dev/zero"]),
    ];
    tasks[2].env = Some(BTreeMap::from([(
        "FLOWRUN_TEST_VAR".to_string(),
        "from env".to_string(),
    )]));
    client.submit(tasks).await.unwrap();
    tracker
        .in_memory(&[&echo, &cat_key, &env_key, &big_key])
        .await;

    let results = gather(&client, &[&echo, &cat_key, &env_key, &big_key]).await;
    assert_eq!(results[&echo], format!("hello {cat_key}\n").into_bytes());
    assert_eq!(results[&cat_key], b"binary\x00\xff\nmore");
    assert_eq!(results[&env_key], b"from env");
    assert_eq!(results[&big_key].len(), 5_000_000);
    assert!(results[&big_key].iter().all(|&b| b == 0));
    client.close().await.unwrap();
}

/// 2. A -> B across two submits (TaskRef across update-graphs) with stdin =
/// A's output + literal bytes, a single-dependency task and a 2-way join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_chain_across_submits_and_join() {
    let (_cluster, client, mut tracker, ns) = setup("chain", &[WorkerSpec::threads(2)]).await;
    let [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map(|s| format!("{ns}-{s}"));

    client
        .submit(vec![SubprocessTask::new(&a, ["/bin/echo", "alpha"])])
        .await
        .unwrap();
    client
        .submit(vec![cat(&b, vec![lit(b"<"), dep(&a), lit(b"+tail")])])
        .await
        .unwrap();
    client
        .submit(vec![
            SubprocessTask::new(&c, ["/bin/echo", "gamma"]),
            cat(&d, vec![dep(&a), dep(&c)]),
            cat(&e, vec![dep(&b)]),
        ])
        .await
        .unwrap();
    tracker.in_memory(&[&a, &b, &c, &d, &e]).await;

    let results = gather(&client, &[&a, &b, &c, &d, &e]).await;
    assert_eq!(results[&a], b"alpha\n");
    assert_eq!(results[&b], b"<alpha\n+tail");
    assert_eq!(results[&d], b"alpha\ngamma\n");
    assert_eq!(results[&e], b"<alpha\n+tail");
    client.close().await.unwrap();
}

/// 3. On a one-thread worker, queued tasks run by priority (higher first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_order_execution() {
    let (cluster, client, mut tracker, ns) = setup("prio", &[WorkerSpec::threads(1)]).await;
    let started = cluster.dir().join("blocker-started");
    let order = cluster.dir().join("order");

    let blocker = format!("{ns}-blocker");
    client
        .submit(vec![sh(
            &blocker,
            &format!(
                "touch {}; sleep 3; echo blocker >> {}",
                quoted(&started),
                quoted(&order)
            ),
        )])
        .await
        .unwrap();
    wait_for_file_exists(&started).await;

    let priorities = [3i64, 10, 1, 7, 5, -2];
    let tasks: Vec<SubprocessTask> = priorities
        .iter()
        .map(|p| {
            let mut task = sh(
                &format!("{ns}-p{p}"),
                &format!("echo p{p} >> {}", quoted(&order)),
            );
            task.priority = *p;
            task
        })
        .collect();
    let keys: Vec<String> = tasks.iter().map(|t| t.key.clone()).collect();
    client.submit(tasks).await.unwrap();
    let mut all: Vec<&str> = keys.iter().map(String::as_str).collect();
    all.push(&blocker);
    tracker.in_memory(&all).await;

    let ran: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut expected = priorities.to_vec();
    expected.sort_by(|x, y| y.cmp(x));
    let mut expected: Vec<String> = expected.iter().map(|p| format!("p{p}")).collect();
    expected.insert(0, "blocker".into());
    assert_eq!(ran, expected);
    client.close().await.unwrap();
}

/// 4. A task needing {"GPU": 1} runs only on the worker that offers it, even
/// when it depends on an unannotated task of the same submit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_restrict_placement() {
    let (cluster, client, mut tracker, ns) = setup(
        "res",
        &[
            WorkerSpec::threads(2).with_resources("GPU=1"),
            WorkerSpec::threads(2),
        ],
    )
    .await;
    let gpu_pid = cluster.worker_pids()[0];

    let info = client.identity().await.unwrap();
    let gpu = BTreeMap::from([("GPU".to_string(), 1.0)]);
    let two_gpus = BTreeMap::from([("GPU".to_string(), 2.0)]);
    assert!(info.can_satisfy(&gpu));
    assert!(!info.can_satisfy(&two_gpus));
    let gpu_worker = info
        .workers
        .iter()
        .find(|w| w.address == cluster.worker_address(0))
        .unwrap();
    assert_eq!(gpu_worker.resources, gpu);

    // The shell's parent is the worker process (no nanny), so $PPID tells
    // where the task ran.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mut task = sh(&format!("{ns}-gpu{i}"), "sleep 0.1; echo $PPID");
        task.resources = gpu.clone();
        tasks.push(task);
        tasks.push(sh(&format!("{ns}-cpu{i}"), "sleep 0.1; echo $PPID"));
    }
    let mut after = sh(&format!("{ns}-gpu-after"), "cat >/dev/null; echo $PPID");
    after.stdin = vec![dep(&format!("{ns}-cpu0"))];
    after.resources = gpu.clone();
    after.retries = 1;
    tasks.insert(0, after);
    let gpu_keys: Vec<String> = tasks
        .iter()
        .filter(|t| !t.resources.is_empty())
        .map(|t| t.key.clone())
        .collect();
    let keys: Vec<String> = tasks.iter().map(|t| t.key.clone()).collect();
    client.submit(tasks).await.unwrap();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    tracker.in_memory(&key_refs).await;

    let results = gather(&client, &key_refs).await;
    for key in &gpu_keys {
        let pid: u32 = String::from_utf8_lossy(&results[key])
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, gpu_pid, "{key} ran outside the GPU worker");
    }
    let who_has = client.who_has(&gpu_keys).await.unwrap();
    for key in &gpu_keys {
        assert_eq!(
            who_has[key],
            vec![cluster.worker_address(0).to_string()],
            "{key}"
        );
    }
    client.close().await.unwrap();
}

/// 5. A failing subprocess gives its returncode, stdout and stderr; its
/// dependents (same submit and a later one) get the same error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_carries_returncode_stdout_stderr_to_dependents() {
    let (_cluster, client, mut tracker, ns) = setup("fail", &[WorkerSpec::threads(2)]).await;
    let [fail, dependent, later] = ["fail", "dependent", "later"].map(|s| format!("{ns}-{s}"));

    client
        .submit(vec![
            sh(&fail, "echo out; echo err >&2; exit 3"),
            cat(&dependent, vec![dep(&fail), lit(b"x")]),
        ])
        .await
        .unwrap();
    let outcomes = tracker.wait(&[&fail, &dependent]).await;
    let Outcome::Erred(error) = &outcomes[&fail] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(error.class, "subprocess.CalledProcessError");
    assert_eq!(error.returncode, Some(3));
    assert_eq!(error.stdout, b"out\n");
    assert_eq!(error.stderr, b"err\n");
    assert!(
        error.message.contains("non-zero exit status 3"),
        "{}",
        error.message
    );
    assert!(error.to_string().contains("err"), "{error}");
    let Outcome::Erred(blamed) = &outcomes[&dependent] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(blamed, error);

    // A dependent submitted after the failure is reported erred as well.
    client
        .submit(vec![cat(&later, vec![dep(&fail)])])
        .await
        .unwrap();
    let outcomes = tracker.wait(&[&later]).await;
    let Outcome::Erred(late) = &outcomes[&later] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(late, error);

    // A dependency the scheduler never heard of cancels the dependent.
    let orphan = format!("{ns}-orphan");
    client
        .submit(vec![cat(
            &orphan,
            vec![dep(&format!("{ns}-never-submitted"))],
        )])
        .await
        .unwrap();
    match &tracker.wait(&[&orphan]).await[&orphan] {
        Outcome::Cancelled(reason) => assert_eq!(reason, "lost dependencies"),
        other => panic!("{other:?}"),
    }

    match client.gather(std::slice::from_ref(&fail)).await {
        Err(ProtocolError::NotInMemory { keys }) => assert_eq!(keys, vec![fail.clone()]),
        other => panic!("gather of an erred key: {other:?}"),
    }
    client.close().await.unwrap();
}

/// 6. Retries: a task failing on its first attempt succeeds with retries 2,
/// and the same task without retries fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_rerun_a_flaky_task() {
    let (cluster, client, mut tracker, ns) = setup("retry", &[WorkerSpec::threads(2)]).await;
    let flaky = |key: &str, marker: &Path| {
        sh(
            key,
            &format!(
                "if [ -e {m} ]; then echo recovered; else touch {m}; echo first >&2; exit 4; fi",
                m = quoted(marker)
            ),
        )
    };
    let with_retries = format!("{ns}-with");
    let without = format!("{ns}-without");
    let mut task = flaky(&with_retries, &cluster.dir().join("m1"));
    task.retries = 2;
    client
        .submit(vec![task, flaky(&without, &cluster.dir().join("m2"))])
        .await
        .unwrap();
    let outcomes = tracker.wait(&[&with_retries, &without]).await;
    assert!(
        matches!(outcomes[&with_retries], Outcome::Memory),
        "{outcomes:?}"
    );
    let Outcome::Erred(error) = &outcomes[&without] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(error.returncode, Some(4));
    assert_eq!(error.stderr, b"first\n");
    assert_eq!(
        gather(&client, &[&with_retries]).await[&with_retries],
        b"recovered\n"
    );
    client.close().await.unwrap();
}

/// 7. A worker killed with SIGKILL while running a task: Dask reruns the
/// task on the other worker and the key still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_task_is_rescheduled() {
    let (mut cluster, client, mut tracker, ns) =
        setup("kill", &[WorkerSpec::threads(1), WorkerSpec::threads(1)]).await;
    let pids_file = cluster.dir().join("pids");
    let long = format!("{ns}-long");
    client
        .submit(vec![sh(
            &long,
            &format!("echo $PPID >> {}; sleep 3; echo $PPID", quoted(&pids_file)),
        )])
        .await
        .unwrap();

    let first: u32 = wait_for_file(&pids_file).await.trim().parse().unwrap();
    let victim = cluster
        .worker_pids()
        .iter()
        .position(|&p| p == first)
        .expect("the task runs on one of our workers");
    cluster.kill_worker(victim);
    let survivor = cluster.worker_pids()[1 - victim];

    tracker.in_memory(&[&long]).await;
    let output = gather(&client, &[&long]).await.remove(&long).unwrap();
    let ran_on: u32 = String::from_utf8_lossy(&output).trim().parse().unwrap();
    assert_eq!(ran_on, survivor);
    let attempts = std::fs::read_to_string(&pids_file).unwrap();
    assert_eq!(attempts.lines().count(), 2, "{attempts}");
    let info = client.identity().await.unwrap();
    assert_eq!(info.workers.len(), 1);
    client.close().await.unwrap();
}

/// 8. Unreachable or silent addresses fail within the timeout, naming the
/// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_address_fails_within_timeout() {
    // A port nobody listens on: refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("tcp://127.0.0.1:{port}");
    let started = Instant::now();
    let err = DaskClient::connect(&address, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains(&address), "{err}");

    // A listener that accepts and never answers the handshake: times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("tcp://{}", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let err = DaskClient::connect(&address, Duration::from_millis(500))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert!(
        matches!(err, ProtocolError::ConnectTimeout { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&address), "{err}");
    holder.abort();

    let err = DaskClient::connect("ucx://127.0.0.1:1", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProtocolError::InvalidAddress { .. }),
        "{err:?}"
    );
    // A tls:// address without TLS settings says what it lacks, at once.
    let err = DaskClient::connect("tls://127.0.0.1:1", Duration::from_secs(1))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("tls://127.0.0.1:1") && text.contains("tls_ca_file"),
        "{text}"
    );
}

/// 9. A scheduler older than 2025.4.0 is refused before anything is sent
/// that it would choke on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_scheduler_is_refused_by_version() {
    let cluster = Cluster::start_version("2025.3.0", &[]);
    let err = DaskClient::connect(&cluster.address, CONNECT)
        .await
        .unwrap_err();
    match &err {
        ProtocolError::UnsupportedVersion { found, minimum, .. } => {
            assert_eq!(found, "2025.3.0");
            assert_eq!(minimum, MIN_SUPPORTED_VERSION);
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("2025.3.0") && text.contains("2025.4.0"),
        "{text}"
    );
    // Nothing was registered, so the scheduler never saw a client.
    assert!(!cluster
        .scheduler_log()
        .contains("Receive client connection"));
}

/// 10. release and close leave the scheduler clean, and teardown leaves no
/// process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_and_close_leave_nothing_behind() {
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    let pids = cluster.pids();
    let ns = namespace("clean");
    let [a, b, kept] = ["a", "b", "kept"].map(|s| format!("{ns}-{s}"));
    let all = vec![a.clone(), b.clone(), kept.clone()];
    {
        let client = connect(&cluster).await;
        let mut tracker = Tracker::new(&client);
        client
            .submit(vec![
                SubprocessTask::new(&a, ["/bin/echo", "a"]),
                cat(&b, vec![dep(&a)]),
                SubprocessTask::new(&kept, ["/bin/echo", "kept"]),
            ])
            .await
            .unwrap();
        tracker.in_memory(&[&a, &b, &kept]).await;
        assert_eq!(gather(&client, &[&b]).await[&b], b"a\n");

        client.release(&[a.clone(), b.clone()]).await.unwrap();
        wait_until_forgotten(&client, &[a.clone(), b.clone()]).await;
        let status = client
            .task_status(std::slice::from_ref(&kept))
            .await
            .unwrap();
        assert_eq!(status[&kept].as_deref(), Some("memory"));
        // `kept` is not released: closing the client must release it.
        client.close().await.unwrap();
    }
    {
        let observer = connect(&cluster).await;
        wait_until_forgotten(&observer, &all).await;
        observer.close().await.unwrap();
    }
    let log = cluster.scheduler_log();
    assert!(log.contains("Remove client"), "{log}");
    assert!(
        !log.contains("Traceback") && !log.contains(" - ERROR - "),
        "{log}"
    );

    drop(cluster);
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} survived teardown");
        assert!(!group_alive(pid), "process group {pid} survived teardown");
    }
}

async fn wait_until_forgotten(client: &DaskClient, keys: &[String]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = client.task_status(keys).await.unwrap();
        if keys
            .iter()
            .all(|k| status.get(k).is_some_and(Option::is_none))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "keys never forgotten: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cancelling a queued task also cancels its dependents, and the scheduler
/// confirms with cancelled-keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drops_a_task_and_its_dependents() {
    let (cluster, client, mut tracker, ns) = setup("cancel", &[WorkerSpec::threads(1)]).await;
    let started = cluster.dir().join("started");
    let [blocker, queued, dependent] =
        ["blocker", "queued", "dependent"].map(|s| format!("{ns}-{s}"));
    client
        .submit(vec![
            sh(
                &blocker,
                &format!("touch {}; sleep 3; echo done", quoted(&started)),
            ),
            sh(&queued, "echo queued"),
            cat(&dependent, vec![dep(&queued)]),
        ])
        .await
        .unwrap();
    wait_for_file_exists(&started).await;
    client.cancel(std::slice::from_ref(&queued)).await.unwrap();
    let outcomes = tracker.wait(&[&queued, &dependent, &blocker]).await;
    assert!(
        matches!(outcomes[&blocker], Outcome::Memory),
        "{outcomes:?}"
    );
    for key in [&queued, &dependent] {
        match &outcomes[key] {
            Outcome::Cancelled(reason) => assert_eq!(reason, "cancelled by flowrun"),
            other => panic!("{key}: {other:?}"),
        }
    }
    wait_until_forgotten(&client, &[queued.clone(), dependent.clone()]).await;
    client.close().await.unwrap();
}

/// 1000 `/bin/cat` tasks in one submit: every result is right. Prints the
/// time from submit to all results gathered (compare with the raw Python
/// client's ~1.9-2.3 s for the same shape, on 2 workers x 2 threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_subprocess_tasks_in_one_submit() {
    let (cluster, client, mut tracker, ns) =
        setup("bulk", &[WorkerSpec::threads(2), WorkerSpec::threads(2)]).await;
    let tasks: Vec<SubprocessTask> = (0..1000)
        .map(|i| {
            cat(
                &format!("{ns}-{i}"),
                vec![StdinPart::Literal(format!("x{i}").into_bytes())],
            )
        })
        .collect();
    let keys: Vec<String> = tasks.iter().map(|t| t.key.clone()).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();

    let started = Instant::now();
    client.submit(tasks).await.unwrap();
    let submitted = started.elapsed();
    tracker.in_memory(&key_refs).await;
    let done = started.elapsed();
    let results = gather(&client, &key_refs).await;
    let total = started.elapsed();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(results[key], format!("x{i}").into_bytes());
    }
    eprintln!(
        "1000 cat tasks on distributed {}: submit {:.3}s, all in memory {:.3}s, gathered {:.3}s",
        cluster.version,
        submitted.as_secs_f64(),
        done.as_secs_f64(),
        total.as_secs_f64()
    );
    client.release(&keys).await.unwrap();
    client.close().await.unwrap();
}

/// When the scheduler goes away the event stream ends with `Closed`, and
/// later operations fail instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_going_away_closes_the_stream() {
    let mut cluster = Cluster::start(&[]);
    let client = connect(&cluster).await;
    let mut events = client.events().unwrap();
    cluster.stop();
    let event = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("no event after the scheduler stopped");
    assert!(
        matches!(event, Some(ClientEvent::Closed { .. })),
        "{event:?}"
    );
    assert_eq!(events.recv().await, None);
    let err = client
        .submit(vec![SubprocessTask::new(namespace("gone"), ["/bin/true"])])
        .await
        .unwrap_err();
    assert!(matches!(err, ProtocolError::Closed { .. }), "{err:?}");
    assert!(err.to_string().contains(&cluster.address), "{err}");
    let err = tokio::time::timeout(WAIT, client.identity())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains(&cluster.address), "{err}");
}

/// A task with a `PythonShim` runs through it instead of `check_output`:
/// its stdin parts arrive with dependencies replaced by their values, its
/// return value is the result, what it raises is the error, and what it
/// publishes on a topic reaches a subscribed client with the worker's
/// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_shim_returns_raises_and_publishes() {
    let (cluster, client, mut tracker, ns) = setup("shim", &[WorkerSpec::threads(1)]).await;
    let topic = format!("{ns}-topic");
    client.subscribe_topic(&topic).await.unwrap();
    let shim = Arc::new(PythonShim {
        module: format!("_flowrun_test_{}", ns.replace('-', "_")),
        source: r#"
import subprocess
from distributed import get_worker

def run(key, argv, stdin, env, params):
    out = subprocess.run(argv, input=b"|".join(stdin), capture_output=True, check=True).stdout
    get_worker().log_event(params["topic"], {"k": key, "o": out, "parts": len(stdin)})
    return out
"#
        .into(),
        params: BTreeMap::from([("topic".to_string(), topic.clone())]),
        installed: false,
    });
    let [a, b, c] = ["a", "b", "c"].map(|s| format!("{ns}-{s}"));
    let mut joined = cat(&b, vec![lit(b"head"), dep(&a), lit(b"tail")]);
    joined.shim = Some(shim.clone());
    let mut missing = SubprocessTask::new(&c, ["/nonexistent/program"]);
    missing.shim = Some(shim);
    client
        .submit(vec![
            SubprocessTask::new(&a, ["/bin/echo", "alpha"]),
            joined,
            missing,
        ])
        .await
        .unwrap();
    let outcomes = tracker.wait(&[&a, &b, &c]).await;
    assert!(matches!(outcomes[&b], Outcome::Memory), "{outcomes:?}");
    let Outcome::Erred(error) = &outcomes[&c] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(error.class, "builtins.FileNotFoundError", "{error:?}");
    assert!(error.message.contains("No such file"), "{error:?}");

    let results = gather(&client, &[&b]).await;
    assert_eq!(results[&b], b"head|alpha\n|tail");

    // The event was published before the task finished, so it came first.
    let event = tracker
        .log
        .iter()
        .find_map(|e| match e {
            ClientEvent::Topic(t) if t.topic == topic => Some(t.clone()),
            _ => None,
        })
        .expect("the shim's event");
    let message = &event.message;
    assert_eq!(
        message.get("k").and_then(EventValue::as_str),
        Some(b.as_str())
    );
    assert_eq!(
        message.get("o").and_then(EventValue::as_bytes),
        Some(&b"head|alpha\n|tail"[..])
    );
    assert_eq!(message.get("parts").and_then(EventValue::as_i64), Some(3));
    assert_eq!(
        message.get("worker").and_then(EventValue::as_str),
        Some(cluster.worker_address(0))
    );
    assert!(event.time > 0.0);
    client.close().await.unwrap();
}

/// A worker plugin made from a shim installs its module on every worker,
/// also one that joins later; tasks of an installed shim leave the source
/// out; `nbytes` reports result sizes; unregistering runs the plugin's
/// teardown; a topic is removed with its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shim_plugin_installs_the_module_everywhere_and_tears_down() {
    let (mut cluster, client, mut tracker, ns) = setup("plugin", &[WorkerSpec::threads(1)]).await;
    let marks = cluster.dir().join(format!("{ns}-marks"));
    std::fs::create_dir(&marks).unwrap();
    let shim = PythonShim {
        module: format!("_flowrun_test_{}", ns.replace('-', "_")),
        source: r#"
import os
from distributed.diagnostics.plugin import WorkerPlugin

class Plugin(WorkerPlugin):
    def __init__(self, params):
        self.marks = params["marks"]
    def setup(self, worker):
        open(os.path.join(self.marks, "setup-" + worker.name), "w").close()
    def teardown(self, worker):
        open(os.path.join(self.marks, "teardown-" + worker.name), "w").close()

def run(key, argv, stdin, env, params):
    return b"x" * int(stdin[0])
"#
        .into(),
        params: BTreeMap::from([("marks".to_string(), marks.display().to_string())]),
        installed: true,
    };
    let plugin = format!("{ns}-plugin");
    cluster.or_logs(
        client
            .register_worker_plugin(&plugin, shim.plugin_pickle("Plugin"))
            .await,
    );
    let shim = Arc::new(shim);
    let sized = |key: &str, n: usize| {
        let mut task = SubprocessTask::new(key, ["unused"]);
        task.stdin = vec![lit(n.to_string().as_bytes())];
        task.shim = Some(shim.clone());
        task
    };
    let [a, b] = ["a", "b"].map(|s| format!("{ns}-{s}"));
    client.submit(vec![sized(&a, 1000)]).await.unwrap();
    tracker.in_memory(&[&a]).await;
    // A worker that joins now gets the plugin (and so the module) too.
    cluster.add_worker(WorkerSpec::threads(1).with_resources("LATE=1"));
    let mut late = sized(&b, 10);
    late.resources.insert("LATE".into(), 1.0);
    client.submit(vec![late]).await.unwrap();
    tracker.in_memory(&[&b]).await;
    let sizes = client.nbytes(&[a.clone(), b.clone()]).await.unwrap();
    assert!(sizes[&a] >= 1000 && sizes[&a] < 1200, "{sizes:?}");
    assert!(sizes[&b] >= 10 && sizes[&b] < 200, "{sizes:?}");
    assert_eq!(gather(&client, &[&b]).await[&b], b"x".repeat(10));
    client.unregister_worker_plugin(&plugin).await.unwrap();
    let mut seen: Vec<String> = std::fs::read_dir(&marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    assert_eq!(seen, ["setup-w0", "setup-w1", "teardown-w0", "teardown-w1"]);

    let topic = format!("{ns}-topic");
    client.subscribe_topic(&topic).await.unwrap();
    client.remove_topic(&topic).await.unwrap();
    client.close().await.unwrap();
}

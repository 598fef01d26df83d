//! Concurrency limits on a real Dask cluster (a scheduler and stock Python
//! workers, as in `dask_real.rs`): tag limits hold across Dask workers and
//! slots come back on failure; guards in task code (`concurrency`, its
//! async form) take Dask semaphores, so they hold across the workers too,
//! show in Dask, and come back however the task ends; rate limits in task
//! code, which Dask has no counterpart for, fail with a clear error.
//!
//! The Dask workers run this test binary in task mode, as the current
//! test: every test begins with [`begin`].

mod common;
mod support;

use std::time::Duration;

use flowrun::concurrency::{self, concurrency, AWAITING_CONCURRENCY_SLOT};
use flowrun::{flow, task, StateKind, TaskFuture};
use support::{begin, runner, Cluster, WorkerSpec};

/// Records when it ran, in microseconds, and in which process.
#[task(tags = ["dask-db"])]
fn dask_query(dir: String, i: u32) -> u32 {
    common::record_span(&dir, "query", Duration::from_millis(300));
    i
}

#[task(tags = ["dask-db"])]
fn dask_sum(a: u32, b: u32) -> u32 {
    a + b
}

#[test]
fn a_tag_limit_holds_across_the_workers_of_a_real_dask_cluster() {
    let (_t, cluster) =
        begin_on_two_workers("a_tag_limit_holds_across_the_workers_of_a_real_dask_cluster");
    #[flow]
    fn limited(dir: String) -> (u32, Vec<String>, u32) {
        std::fs::create_dir_all(&dir).unwrap();
        // A run learns at submission whether it waits for a slot.
        let futures: Vec<_> = (0..8).map(|i| dask_query.submit(dir.clone(), i)).collect();
        let states = futures
            .iter()
            .map(|f| f.state().name().to_owned())
            .collect();
        // A limited run with upstream runs waits for them in the flow.
        let total = dask_sum.submit(&futures[0], &futures[7]);
        let total = total.result().unwrap();
        flowrun::results(futures).unwrap();
        (
            total,
            states,
            concurrency::tag_limit("dask-db").unwrap().active,
        )
    }
    let dir = common::scratch("dask-tag-limit")
        .to_string_lossy()
        .into_owned();
    let (total, states, in_use) = cluster.or_logs(
        limited
            .with_runner(runner(&cluster).tag_limit("dask-db", 2))
            .call(dir.clone()),
    );
    let (most, n, processes) = common::most_at_once(&dir, "query");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(total, 7);
    assert_eq!(in_use, 0);
    assert_eq!(n, 8);
    assert_eq!(most, 2, "at most 2 'dask-db' runs at once on the cluster");
    assert!(processes >= 2, "the runs spread over task processes");
    assert_eq!(
        states
            .iter()
            .filter(|s| *s == AWAITING_CONCURRENCY_SLOT)
            .count(),
        6,
        "{states:?}"
    );
}

#[task(tags = ["dask-fail"])]
fn dask_fails() -> Result<u32, String> {
    Err("refused".to_owned())
}

#[task]
fn dask_rate_limited() -> Result<u32, concurrency::ConcurrencyError> {
    concurrency::rate_limit("dask-rate")?;
    Ok(1)
}

#[test]
fn on_real_dask_a_failed_run_gives_its_slot_back_and_rate_limits_fail_clearly() {
    let _t = begin("on_real_dask_a_failed_run_gives_its_slot_back_and_rate_limits_fail_clearly");
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    #[flow]
    fn failing() -> (Vec<StateKind>, u32, String) {
        let runs: Vec<_> = (0..3).map(|_| dask_fails.submit()).collect();
        let kinds = final_kinds(&runs);
        let in_use = concurrency::tag_limit("dask-fail").unwrap().active;
        let rate = dask_rate_limited.submit().result().unwrap_err();
        (kinds, in_use, rate.message().to_owned())
    }
    concurrency::set_rate_limit("dask-rate", 5.0).unwrap();
    let run = failing
        .with_runner(runner(&cluster).tag_limit("dask-fail", 1))
        .return_state();
    let (kinds, in_use, rate) = run
        .result()
        .cloned()
        .unwrap_or_else(|_| panic!("{}\n{}", run.state(), cluster.logs()));
    assert_eq!(kinds, vec![StateKind::Failed; 3]);
    assert_eq!(in_use, 0);
    assert!(
        rate.contains("cannot take a slot of 'dask-rate'")
            && rate.contains("rate limits are not available in task code on a real Dask cluster"),
        "{rate}"
    );
    concurrency::remove_limit("dask-rate");
}

/// Holds a slot of `dask-guard` for `ms`, recording the span; then ends as
/// `end` says: "ok", "err" or "panic".
#[task]
fn guarded_span(dir: String, ms: u64, end: String) -> Result<u32, String> {
    let _slot = concurrency("dask-guard", 1).map_err(|e| e.to_string())?;
    let start = common::now_us();
    if end == "hold" {
        common::append(&format!("{dir}/holding"), "1");
    }
    std::thread::sleep(Duration::from_millis(ms));
    let end_us = common::now_us();
    common::append(
        &format!("{dir}/spans.log"),
        &format!("guard {start} {end_us} {}", std::process::id()),
    );
    match end.as_str() {
        "err" => Err("gave up while holding the slot".into()),
        "panic" => panic!("panicked while holding the slot"),
        _ => Ok(1),
    }
}

/// The async form, in an async task.
#[task]
async fn guarded_async(dir: String) -> Result<u32, String> {
    let _slot = concurrency::concurrency_async("dask-guard", 1)
        .await
        .map_err(|e| e.to_string())?;
    let start = common::now_us();
    std::thread::sleep(Duration::from_millis(300));
    let end = common::now_us();
    common::append(
        &format!("{dir}/spans.log"),
        &format!("guard {start} {end} {}", std::process::id()),
    );
    Ok(1)
}

/// The leases of the Dask semaphores of limit `name` on the scheduler, as
/// a Python Dask client sees them: `semaphore name -> (max, held)`.
fn dask_semaphores(address: &str, name: &str) -> String {
    support::on_scheduler(
        address,
        &format!(
            "sorted((k, v, len(s.extensions['semaphores'].leases[k])) \
             for k, v in s.extensions['semaphores'].max_leases.items() \
             if k.startswith('flowrun-{name}-') and not k.endswith('-gate'))"
        ),
    )
}

/// Waits for each run and gives its final state (a failure, which some
/// tests expect, is printed rather than raised).
fn final_kinds<T: Clone + Send + 'static>(runs: &[TaskFuture<T>]) -> Vec<StateKind> {
    runs.iter()
        .map(|f| {
            if let Err(e) = f.result() {
                eprintln!("{e}");
            }
            f.state().kind()
        })
        .collect()
}

/// What [`begin`] returns: held until the test ends.
type Turn = (std::sync::MutexGuard<'static, ()>, common::HangGuard);

/// Starts the test `test` (see [`begin`]) with a new cluster of two
/// workers of two threads each.
fn begin_on_two_workers(test: &'static str) -> (Turn, Cluster) {
    let turn = begin(test);
    (
        turn,
        Cluster::start(&[WorkerSpec::threads(2), WorkerSpec::threads(2)]),
    )
}

/// Submits a guarded span of `ms` for each of `ends` (how it ends), in a
/// flow, writing into `dir`.
fn submit_guarded_spans(dir: &str, ms: u64, ends: &[&str]) -> Vec<TaskFuture<u32>> {
    std::fs::create_dir_all(dir).unwrap();
    ends.iter()
        .map(|end| guarded_span.submit(dir.to_owned(), ms, end.to_string()))
        .collect()
}

/// Runs `n` guarded spans of `ms` each that end well, in a flow: their
/// final states.
fn guarded_spans(dir: &str, n: usize, ms: u64) -> Vec<StateKind> {
    final_kinds(&submit_guarded_spans(dir, ms, &vec!["ok"; n]))
}

#[test]
fn a_guard_in_task_code_holds_across_dask_workers_and_shows_in_dask() {
    let (_t, cluster) =
        begin_on_two_workers("a_guard_in_task_code_holds_across_dask_workers_and_shows_in_dask");
    #[flow]
    fn guarded(dir: String) -> Vec<StateKind> {
        let mut runs = submit_guarded_spans(&dir, 300, &["ok", "err", "ok", "panic", "ok", "ok"]);
        runs.push(guarded_span.submit(dir.clone(), 4_000, "hold".to_string()));
        let asynchronous = guarded_async.submit(dir.clone());
        let mut kinds = final_kinds(&runs);
        let _ = asynchronous.result();
        kinds.push(asynchronous.state().kind());
        kinds
    }
    concurrency::set_limit("dask-guard", 1).unwrap();
    let dir = common::scratch("dask-guard").to_string_lossy().into_owned();
    let flow_dir = dir.clone();
    let runner = runner(&cluster);
    let flow = std::thread::spawn(move || guarded.with_runner(runner).call(flow_dir));
    // While a run holds the slot, Dask shows the lease.
    support::poll("a run holding the slot", Duration::from_secs(120), || {
        (!common::lines(&format!("{dir}/holding")).is_empty()).then_some(())
    });
    let during = dask_semaphores(&cluster.address, "dask-guard");
    let kinds = cluster.or_logs(flow.join().unwrap());
    let after = dask_semaphores(&cluster.address, "dask-guard");
    let (most, n, processes) = common::most_at_once(&dir, "guard");
    let _ = std::fs::remove_dir_all(&dir);
    concurrency::remove_limit("dask-guard");
    use StateKind::*;
    assert_eq!(
        kinds,
        [Completed, Failed, Completed, Failed, Completed, Completed, Completed, Completed]
    );
    assert_eq!(
        n, 8,
        "every guarded run ran, also after runs that failed holding the slot"
    );
    assert_eq!(most, 1, "at most 1 guarded run at once on the cluster");
    assert!(processes >= 2, "the runs spread over task processes");
    // One semaphore of 1 lease, held by the run, then given back.
    assert!(
        during.starts_with("[('flowrun-dask-guard-") && during.ends_with(", 1, 1)]"),
        "{during}"
    );
    assert!(after.ends_with(", 1, 0)]"), "{after}");
}

/// Holds `occupy` slots of `dask-pair` for a while, recording the span.
#[task]
fn paired_span(dir: String, occupy: u32) -> Result<u32, String> {
    let _slot = concurrency("dask-pair", occupy).map_err(|e| e.to_string())?;
    let start = common::now_us();
    std::thread::sleep(Duration::from_millis(250));
    let end = common::now_us();
    common::append(
        &format!("{dir}/pairs.log"),
        &format!("{start} {end} {occupy}"),
    );
    Ok(occupy)
}

/// The most slots held at any instant, from `start end slots` lines.
fn most_slots(path: &str) -> (u32, usize) {
    let mut points = Vec::new();
    for l in common::lines(path) {
        let p: Vec<&str> = l.split(' ').collect();
        let n: i64 = p[2].parse().unwrap();
        points.push((p[0].parse::<u64>().unwrap(), n));
        points.push((p[1].parse::<u64>().unwrap(), -n));
    }
    let spans = points.len() / 2;
    // At equal times a release comes before a take.
    points.sort();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, d) in points {
        now += d;
        most = most.max(now);
    }
    (most as u32, spans)
}

#[test]
fn guards_of_several_slots_on_real_dask_share_the_limit_without_deadlock() {
    let (_t, cluster) = begin_on_two_workers(
        "guards_of_several_slots_on_real_dask_share_the_limit_without_deadlock",
    );
    #[flow]
    fn pairs(dir: String) -> (u32, String) {
        std::fs::create_dir_all(&dir).unwrap();
        let runs: Vec<_> = [2, 1, 2, 1, 2, 1, 1, 2]
            .into_iter()
            .map(|n| paired_span.submit(dir.clone(), n))
            .collect();
        let total = flowrun::results(runs).unwrap().iter().sum();
        // More slots than the limit has can never be granted: an error.
        let too_many = paired_span.submit(dir, 3).result().unwrap_err();
        (total, too_many.message().to_owned())
    }
    concurrency::set_limit("dask-pair", 2).unwrap();
    let dir = common::scratch("dask-pair").to_string_lossy().into_owned();
    let (total, too_many) = cluster.or_logs(pairs.with_runner(runner(&cluster)).call(dir.clone()));
    let (most, spans) = most_slots(&format!("{dir}/pairs.log"));
    let _ = std::fs::remove_dir_all(&dir);
    concurrency::remove_limit("dask-pair");
    assert_eq!(total, 12);
    assert_eq!(spans, 8);
    assert_eq!(most, 2, "at most 2 slots of 'dask-pair' held at once");
    assert!(
        too_many.contains("asked for 3 slots of concurrency limit 'dask-pair', which has 2"),
        "{too_many}"
    );
}

#[test]
fn guards_in_task_code_reach_a_tls_scheduler_with_the_workers_certificates() {
    let _t = begin("guards_in_task_code_reach_a_tls_scheduler_with_the_workers_certificates");
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = support::certificates(dir.path(), "guards");
    let extra: Vec<String> = [
        ("--protocol", &*std::path::PathBuf::from("tls")),
        ("--tls-ca-file", &ca),
        ("--tls-cert", &cert),
        ("--tls-key", &key),
    ]
    .iter()
    .flat_map(|(flag, value)| [flag.to_string(), value.display().to_string()])
    .collect();
    let cluster = Cluster::start_with(&support::dask_version(), &[WorkerSpec::threads(2)], &extra);
    assert!(cluster.address.starts_with("tls://"), "{}", cluster.address);
    #[flow]
    fn guarded_tls(dir: String) -> Vec<StateKind> {
        guarded_spans(&dir, 3, 200)
    }
    concurrency::set_limit("dask-guard", 1).unwrap();
    let spans = dir.path().join("spans").to_string_lossy().into_owned();
    let security = flowrun_dask::protocol::Security::new()
        .tls_ca_file(&ca)
        .tls_client_cert(&cert)
        .tls_client_key(&key);
    let kinds = cluster.or_logs(
        guarded_tls
            .with_runner(runner(&cluster).security(security))
            .call(spans.clone()),
    );
    concurrency::remove_limit("dask-guard");
    assert_eq!(kinds, [StateKind::Completed; 3]);
    assert_eq!(common::most_at_once(&spans, "guard").0, 1);
}

/// Takes the slot, says so, and dies holding it (as a process killed by
/// the kernel would).
#[task]
fn dies_holding(dir: String) -> u32 {
    let _slot = concurrency("dask-orphan", 1).unwrap();
    common::append(&format!("{dir}/took"), &common::now_us().to_string());
    // SAFETY: kill on this very process; nothing runs after it.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL ends the process")
}

#[task]
fn takes_after() -> Result<u64, String> {
    let _slot = concurrency("dask-orphan", 1).map_err(|e| e.to_string())?;
    Ok(common::now_us())
}

#[test]
fn the_slot_of_a_task_process_that_died_comes_back_by_dasks_lease_timeout() {
    let _t = begin("the_slot_of_a_task_process_that_died_comes_back_by_dasks_lease_timeout");
    let cluster = Cluster::start(&[WorkerSpec::threads(2)]);
    #[flow]
    fn orphaned(dir: String) -> (StateKind, u64) {
        std::fs::create_dir_all(&dir).unwrap();
        let dead = dies_holding.submit(dir.clone());
        let _ = dead.result();
        let after = takes_after.submit().result().unwrap();
        (dead.state().kind(), after)
    }
    concurrency::set_limit("dask-orphan", 1).unwrap();
    let dir = common::scratch("dask-orphan")
        .to_string_lossy()
        .into_owned();
    let (dead, after) = cluster.or_logs(orphaned.with_runner(runner(&cluster)).call(dir.clone()));
    let took: u64 = common::lines(&format!("{dir}/took"))[0].parse().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    concurrency::remove_limit("dask-orphan");
    assert_eq!(dead, StateKind::Crashed);
    // Nobody gave the dead process's lease back: Dask let it go once it
    // was not refreshed for the lease timeout (30 s).
    let waited = Duration::from_micros(after - took);
    assert!(
        waited >= Duration::from_secs(25) && waited < Duration::from_secs(120),
        "the next guard got the slot after {waited:?}"
    );
}

#[test]
fn guards_hold_with_a_process_per_attempt_too() {
    let (_t, cluster) = begin_on_two_workers("guards_hold_with_a_process_per_attempt_too");
    #[flow]
    fn isolated(dir: String) -> Vec<StateKind> {
        guarded_spans(&dir, 4, 300)
    }
    concurrency::set_limit("dask-guard", 1).unwrap();
    let dir = common::scratch("dask-guard-isolated")
        .to_string_lossy()
        .into_owned();
    let kinds = cluster.or_logs(
        isolated
            .with_runner(runner(&cluster).isolate_tasks(true))
            .call(dir.clone()),
    );
    let (most, n, processes) = common::most_at_once(&dir, "guard");
    let _ = std::fs::remove_dir_all(&dir);
    concurrency::remove_limit("dask-guard");
    assert_eq!(kinds, [StateKind::Completed; 4]);
    assert_eq!(
        (most, n, processes),
        (1, 4, 4),
        "one process per attempt, one at a time"
    );
}

//! The scheduler driven in memory: a fake launcher, channels for worker
//! links, fake attempts that record their outcome, and a clock the test
//! moves. No process, no socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use flowrun_core::{ArgSlot, Resources, TaskError, TaskErrorKind};
use serde_bytes::ByteBuf;

use super::super::wire::{Completion, Start, ToScheduler, ToWorker, ToWorkerOut, WireError};
use super::state::WState;
use super::{Adapt, Attempt, Config, Event, Launcher, Scheduler};

type Outcome = Result<Vec<u8>, (TaskErrorKind, String)>;
type Outcomes = Arc<Mutex<Vec<(u64, Outcome)>>>;

/// An attempt that records its outcome by run id. Its run index is its run
/// id, so assignments name the run they carry.
struct Fake {
    key: &'static str,
    run_id: u64,
    order: u64,
    outcomes: Outcomes,
    /// The worker keeping its stored arguments.
    home: Option<u32>,
}

impl Attempt for Fake {
    fn key(&self) -> &'static str {
        self.key
    }
    fn task_name(&self) -> Arc<str> {
        Arc::from(self.key)
    }
    fn index(&self) -> u64 {
        self.run_id
    }
    fn run_id(&self) -> u64 {
        self.run_id
    }
    fn order(&self) -> u64 {
        self.order
    }
    fn args(&self) -> Arc<[ArgSlot]> {
        Arc::from(Vec::new())
    }
    fn home(&self) -> Option<u32> {
        self.home
    }
    fn started(&self, _worker: Arc<str>) {}
    fn finish(self, result: Result<Bytes, TaskError>) {
        let outcome = result
            .map(|b| b.to_vec())
            .map_err(|e| (e.kind().clone(), e.message().to_owned()));
        self.outcomes.lock().unwrap().push((self.run_id, outcome));
    }
}

#[derive(Default)]
struct FakeLauncher {
    launched: Vec<u32>,
    killed: Vec<u32>,
    /// Launches fail while set.
    failing: bool,
    /// Resident memory reported per worker.
    memory: HashMap<u32, u64>,
}

impl Launcher for FakeLauncher {
    fn launch(&mut self, id: u32, _name: &str) -> Result<u32, String> {
        if self.failing {
            return Err("Resource temporarily unavailable (os error 11)".into());
        }
        self.launched.push(id);
        Ok(1000 + id)
    }
    fn kill(&mut self, id: u32) {
        self.killed.push(id);
    }
    fn pid(&self, id: u32) -> Option<u32> {
        Some(1000 + id)
    }
    fn memory(&self, id: u32) -> Option<u64> {
        self.memory.get(&id).copied()
    }
}

fn config(n_workers: usize, nthreads: usize, resources: Resources) -> Config {
    Config {
        address: "127.0.0.1:0".into(),
        n_workers,
        nthreads,
        resources,
        allowed_failures: 3,
        no_workers_timeout: None,
        startup_timeout: Duration::from_secs(60),
        memory_limit: None,
        adapt: None,
    }
}

struct Harness {
    s: Scheduler<FakeLauncher, Fake>,
    links: HashMap<u32, Receiver<ToWorkerOut>>,
    outcomes: Outcomes,
    next_run: u64,
    now: Instant,
}

impl Harness {
    fn new(cfg: Config) -> Harness {
        let mut h = Harness {
            s: Scheduler::new(cfg, FakeLauncher::default()),
            links: HashMap::new(),
            outcomes: Arc::default(),
            next_run: 1,
            now: Instant::now(),
        };
        h.s.fill_to_target(h.now);
        h
    }

    /// A cluster whose `n` workers of `threads` threads all connected.
    fn running(n: usize, threads: usize, resources: Resources) -> Harness {
        let mut h = Harness::new(config(n, threads, resources));
        for id in h.s.launcher.launched.clone() {
            h.connect(id);
        }
        h
    }

    fn connect(&mut self, worker: u32) {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.links.insert(worker, rx);
        self.s.handle(Event::Connected {
            worker,
            pid: 1000 + worker,
            writer: tx,
        });
    }

    /// Submits a new run of `key`, ranked by its own id unless `order`.
    fn submit(&mut self, key: &'static str, priority: i64, order: Option<u64>) -> u64 {
        let run = self.next_run;
        self.next_run += 1;
        self.resubmit(key, priority, run, order.unwrap_or(run), None);
        run
    }

    /// Submits a run whose stored arguments worker `home` keeps.
    fn submit_at_home(&mut self, key: &'static str, home: u32) -> u64 {
        let run = self.next_run;
        self.next_run += 1;
        self.s.handle(Event::Submit {
            attempt: Fake {
                key,
                run_id: run,
                order: run,
                outcomes: self.outcomes.clone(),
                home: Some(home),
            },
            priority: 0,
            needs: None,
        });
        run
    }

    fn submit_needing(&mut self, key: &'static str, needs: Resources) -> u64 {
        let run = self.next_run;
        self.next_run += 1;
        self.resubmit(key, 0, run, run, Some(needs));
        run
    }

    /// Submits an attempt of run `run` (a retry, when it ran before).
    fn resubmit(
        &mut self,
        key: &'static str,
        priority: i64,
        run: u64,
        order: u64,
        needs: Option<Resources>,
    ) {
        let attempt = Fake {
            key,
            run_id: run,
            order,
            outcomes: self.outcomes.clone(),
            home: None,
        };
        self.s.handle(Event::Submit {
            attempt,
            priority,
            needs,
        });
    }

    fn pump(&mut self) {
        self.s.pump(self.now);
    }

    /// What worker `w` was sent since last asked: (task id, run id) of
    /// assignments, and task ids it was told to cancel.
    fn sent(&mut self, w: u32) -> (Vec<(u64, u64)>, Vec<u64>) {
        let mut runs = Vec::new();
        let mut cancels = Vec::new();
        if let Some(rx) = self.links.get(&w) {
            for m in rx.try_iter() {
                match m {
                    ToWorker::Run(batch) => runs.extend(batch.iter().map(|a| (a.id, a.index))),
                    ToWorker::Cancel(ids) => cancels.extend(ids),
                    _ => {}
                }
            }
        }
        (runs, cancels)
    }

    fn assigned(&mut self, w: u32) -> Vec<(u64, u64)> {
        self.sent(w).0
    }

    fn started(&mut self, w: u32, task: u64) {
        self.message(
            w,
            ToScheduler::Started(vec![Start {
                id: task,
                thread: 0,
                at_us: 1,
            }]),
        );
    }

    fn done(&mut self, w: u32, task: u64, ok: bool, duration: Duration) {
        let result = if ok {
            Ok(crate::local::store::Payload::Inline(ByteBuf::from(vec![1])))
        } else {
            Err(WireError {
                panic: false,
                message: "boom".into(),
                kind: None,
            })
        };
        self.message(
            w,
            ToScheduler::Done(vec![Completion {
                id: task,
                result,
                duration_us: duration.as_micros() as u64,
            }]),
        );
    }

    fn message(&mut self, w: u32, m: ToScheduler) {
        self.s.handle(Event::Messages {
            worker: w,
            batch: vec![m],
        });
    }

    fn exited(&mut self, w: u32, status: &str) {
        self.s.handle(Event::Exited {
            worker: w,
            status: status.into(),
            output_tail: String::new(),
        });
    }

    fn outcomes(&self) -> Vec<(u64, Outcome)> {
        self.outcomes.lock().unwrap().clone()
    }

    fn free(&self, w: u32, resource: &str) -> Option<f64> {
        self.s.workers.get(&w).and_then(|w| w.free.get(resource))
    }
}

fn gpu(n: f64) -> Resources {
    Resources::new().with("GPU", n)
}

const SHORT: Duration = Duration::from_micros(50);
const LONG: Duration = Duration::from_millis(10);

#[test]
fn higher_priority_runs_first_then_the_order_of_the_graph() {
    let mut h = Harness::new(config(1, 1, Resources::new()));
    let a = h.submit("t", 0, None);
    let b = h.submit("t", 5, None);
    let c = h.submit("t", 0, None);
    let d = h.submit("t", 5, None);
    h.connect(0);
    let mut order = Vec::new();
    for _ in 0..4 {
        h.pump();
        let sent = h.assigned(0);
        assert_eq!(sent.len(), 1, "one thread, unmeasured tasks: one at a time");
        order.push(sent[0].1);
        h.done(0, sent[0].0, true, LONG);
    }
    assert_eq!(order, vec![b, d, a, c]);
}

#[test]
fn a_dependent_of_an_early_task_runs_before_independent_tasks_submitted_later() {
    let mut h = Harness::running(1, 1, Resources::new());
    let loads: Vec<u64> = (0..5).map(|_| h.submit("load", 0, None)).collect();
    h.pump();
    let (t, run) = h.assigned(0)[0];
    assert_eq!(run, loads[0]);
    h.done(0, t, true, LONG);
    // check(load-0) becomes ready now; it ranks with load-0.
    let check = h.submit("check", 0, Some(loads[0]));
    h.pump();
    assert_eq!(h.assigned(0)[0].1, check, "check-0 must run before load-1");
}

#[test]
fn a_retry_keeps_its_priority_and_place_and_waits_behind_no_prefetched_work() {
    let mut h = Harness::running(1, 1, Resources::new());
    let flaky = h.submit("flaky", 10, None);
    h.pump();
    let (t, _) = h.assigned(0)[0];
    // It fails at once: a very short measured duration.
    h.done(0, t, false, Duration::ZERO);
    let later: Vec<u64> = (0..200).map(|_| h.submit("slow", 0, None)).collect();
    h.pump();
    let first = h.assigned(0);
    assert_eq!(first.len(), 1, "unmeasured tasks are not prefetched");
    assert_eq!(first[0].1, later[0]);
    h.done(0, first[0].0, true, LONG);
    // The retry arrives ("will start 200ms from now").
    h.resubmit("flaky", 10, flaky, flaky, None);
    h.pump();
    assert_eq!(h.assigned(0)[0].1, flaky, "the retry goes next");
}

#[test]
fn a_resource_task_is_not_starved_by_prefetched_short_tasks() {
    let mut h = Harness::running(1, 1, gpu(1.0));
    let first = h.submit("fast", 0, None);
    h.pump();
    let (t, run) = h.assigned(0)[0];
    assert_eq!(run, first);
    h.done(0, t, true, SHORT);
    for _ in 0..300 {
        h.submit("fast", 0, None);
    }
    h.pump();
    let mut on_worker: std::collections::VecDeque<u64> =
        h.assigned(0).into_iter().map(|(t, _)| t).collect();
    assert!(on_worker.len() > 1, "short tasks are prefetched");
    let gpu_run = h.submit_needing("gpu", gpu(1.0));
    // A steady stream of short tasks keeps coming; the worker keeps going.
    for round in 0..2_000 {
        let Some(t) = on_worker.pop_front() else {
            panic!("the worker ran dry without the resource task");
        };
        h.done(0, t, true, SHORT);
        h.submit("fast", 0, None);
        h.pump();
        for (t, run) in h.assigned(0) {
            if run == gpu_run {
                assert!(round < 600, "it waited {round} rounds");
                return;
            }
            on_worker.push_back(t);
        }
    }
    panic!("the resource task never ran");
}

#[test]
fn resources_are_taken_and_given_back_on_every_path() {
    let mut h = Harness::running(2, 2, gpu(2.0));
    // Completed and failed.
    let ok = h.submit_needing("g", gpu(1.0));
    let bad = h.submit_needing("g", gpu(1.0));
    h.pump();
    let mut held: Vec<(u32, u64, u64)> = Vec::new();
    for w in [0, 1] {
        held.extend(h.assigned(w).into_iter().map(|(t, r)| (w, t, r)));
    }
    assert_eq!(held.len(), 2);
    let total_free = |h: &Harness| h.free(0, "GPU").unwrap() + h.free(1, "GPU").unwrap();
    assert_eq!(total_free(&h), 2.0);
    for (w, t, r) in &held {
        h.done(*w, *t, *r == ok, LONG);
    }
    assert_eq!(total_free(&h), 4.0);
    let _ = bad;

    // Cancelled while assigned: the worker answers, the resources return.
    let c = h.submit_needing("g", gpu(2.0));
    h.pump();
    let (w, t) = [0, 1]
        .into_iter()
        .find_map(|w| h.assigned(w).first().map(|(t, _)| (w, *t)))
        .expect("placed");
    assert_eq!(h.free(w, "GPU"), Some(0.0));
    h.s.handle(Event::Cancel { run_id: c });
    h.pump();
    assert_eq!(h.sent(w).1, vec![t], "the worker is told");
    h.message(
        w,
        ToScheduler::Done(vec![Completion {
            id: t,
            result: Err(WireError {
                panic: false,
                message: "cancelled before it started".into(),
                kind: Some(super::super::wire::WireKind::Cancelled),
            }),
            duration_us: 0,
        }]),
    );
    assert_eq!(h.free(w, "GPU"), Some(2.0));

    // Lost: the worker dies; the task goes elsewhere and takes resources there.
    let l = h.submit_needing("g", gpu(2.0));
    h.pump();
    let (w, _) = [0, 1]
        .into_iter()
        .find_map(|w| h.assigned(w).first().map(|_| (w, ())))
        .expect("placed");
    let other = 1 - w;
    h.exited(w, "killed by signal 9");
    h.pump();
    let moved = h.assigned(other);
    assert_eq!(moved.iter().map(|m| m.1).collect::<Vec<_>>(), vec![l]);
    assert_eq!(h.free(other, "GPU"), Some(0.0));
    h.done(other, moved[0].0, true, LONG);
    assert_eq!(h.free(other, "GPU"), Some(2.0));
}

#[test]
fn a_worker_death_requeues_its_tasks_and_too_many_end_killed_worker_with_causes() {
    let mut cfg = config(1, 1, Resources::new());
    cfg.allowed_failures = 1;
    let mut h = Harness::new(cfg);
    h.connect(0);
    let run = h.submit("t", 0, None);
    h.pump();
    let (t, _) = h.assigned(0)[0];
    h.started(0, t);
    h.exited(0, "killed by signal 9 (SIGKILL)");
    h.pump();
    assert!(h.outcomes().is_empty(), "requeued, not failed");
    assert_eq!(h.s.launcher.launched, vec![0, 1], "a replacement starts");
    h.connect(1);
    h.pump();
    let (t, r) = h.assigned(1)[0];
    assert_eq!(r, run);
    h.started(1, t);
    h.exited(1, "exit code 101");
    let out = h.outcomes();
    assert_eq!(out.len(), 1);
    let (kind, message) = out[0].1.clone().unwrap_err();
    assert_eq!(kind, TaskErrorKind::KilledWorker);
    assert!(message.contains("worker-0 (pid 1000)"), "{message}");
    assert!(message.contains("SIGKILL"), "{message}");
    assert!(message.contains("worker-1 (pid 1001)"), "{message}");
    assert!(message.contains("exit code 101"), "{message}");
}

#[test]
fn killed_worker_says_a_worker_died_of_its_memory_limit() {
    let mut cfg = config(1, 1, Resources::new());
    cfg.allowed_failures = 0;
    cfg.memory_limit = Some(100_000_000);
    let mut h = Harness::new(cfg);
    h.connect(0);
    h.submit("t", 0, None);
    h.pump();
    let (t, _) = h.assigned(0)[0];
    h.started(0, t);
    h.s.launcher.memory.insert(0, 250_000_000);
    h.s.tick(h.now);
    assert!(h.s.launcher.killed.contains(&0));
    h.exited(0, "killed by signal 9 (SIGKILL)");
    let (kind, message) = h.outcomes()[0].1.clone().unwrap_err();
    assert_eq!(kind, TaskErrorKind::KilledWorker);
    assert!(
        message.contains("above its memory limit of 100 MB"),
        "{message}"
    );
}

#[test]
fn a_late_done_from_a_worker_declared_dead_is_ignored() {
    let mut h = Harness::running(2, 1, gpu(1.0));
    let run = h.submit_needing("t", gpu(1.0));
    h.pump();
    let (first, second) = if h.s.workers[&0].tasks.is_empty() {
        (1, 0)
    } else {
        (0, 1)
    };
    let (t, _) = h.assigned(first)[0];
    h.started(first, t);
    // Its process is reported dead before its last messages are read.
    h.exited(first, "killed by signal 9");
    h.pump();
    let (t2, r2) = h.assigned(second)[0];
    assert_eq!(r2, run);
    h.started(second, t2);
    h.done(first, t, true, LONG);
    assert!(
        h.outcomes().is_empty(),
        "the dead worker's outcome is not applied"
    );
    assert!(h.s.workers[&second].tasks.contains(&t2));
    assert_eq!(
        h.free(second, "GPU"),
        Some(0.0),
        "still held by the live placement"
    );
    h.done(second, t2, true, LONG);
    assert_eq!(h.outcomes().len(), 1);
    assert_eq!(h.free(second, "GPU"), Some(1.0));
}

#[test]
fn a_burst_of_launch_failures_backs_off_and_fails_after_a_bound() {
    let mut h = Harness::running(1, 1, Resources::new());
    let run = h.submit("t", 0, None);
    h.s.launcher.failing = true;
    // The only worker dies; every replacement fails to launch. Before, each
    // failure launched the next from inside itself until the stack overflowed.
    h.exited(0, "exit code 1");
    assert_eq!(h.s.launch_failures, 1, "one launch per round, no recursion");
    let mut rounds = 0;
    while h.outcomes().is_empty() {
        rounds += 1;
        assert!(rounds < 100, "it never gave up");
        h.now += Duration::from_secs(3);
        h.pump();
    }
    let (kind, message) = h.outcomes()[0].1.clone().unwrap_err();
    assert_eq!(kind, TaskErrorKind::Crashed);
    assert!(message.contains("fail to start"), "{message}");
    assert!(message.contains("os error 11"), "{message}");
    assert_eq!(h.outcomes()[0].0, run);
    // Later work is refused at once with the same cause.
    h.submit("t", 0, None);
    assert_eq!(h.outcomes().len(), 2);
}

#[test]
fn launch_failures_with_workers_running_back_off_then_give_up() {
    let mut h = Harness::running(1, 1, Resources::new());
    h.s.launcher.failing = true;
    h.s.handle(Event::Scale(2));
    assert_eq!(h.s.launch_failures, 1);
    // Within the back-off, nothing is launched again.
    h.pump();
    assert_eq!(h.s.launch_failures, 1);
    let mut rounds = 0;
    while h.s.broken.is_none() {
        rounds += 1;
        assert!(rounds < 100, "it never gave up");
        h.now += Duration::from_secs(3);
        h.pump();
    }
    assert_eq!(h.s.launch_failures, super::policy::MAX_LAUNCH_FAILURES);
}

fn adaptive(minimum: usize, maximum: usize) -> Config {
    let mut cfg = config(minimum, 1, Resources::new());
    cfg.adapt = Some(Adapt {
        minimum,
        maximum: Some(maximum),
        interval: Duration::from_millis(100),
        wait_count: 2,
        target_duration: Duration::from_secs(1),
    });
    cfg
}

#[test]
fn adapt_scales_up_from_zero_within_the_maximum_and_down_to_the_minimum() {
    let mut h = Harness::new(adaptive(0, 3));
    assert!(h.s.launcher.launched.is_empty(), "minimum 0 starts none");
    for _ in 0..20 {
        h.submit("t", 0, None);
    }
    h.pump();
    assert_eq!(h.s.launcher.launched.len(), 3, "never above the maximum");
    for id in h.s.launcher.launched.clone() {
        h.connect(id);
    }
    h.pump();
    // Run everything.
    while h.outcomes().len() < 20 {
        for w in 0..3 {
            for (t, _) in h.assigned(w) {
                h.done(w, t, true, LONG);
            }
        }
        h.pump();
    }
    for _ in 0..5 {
        h.s.adapt_down();
    }
    let alive = h.s.workers.values().filter(|w| w.alive()).count();
    assert_eq!(alive, 0, "scaled down to the minimum");

    let mut h = Harness::new(adaptive(1, 2));
    assert_eq!(h.s.launcher.launched.len(), 1, "starts at the minimum");
    h.connect(0);
    for _ in 0..5 {
        h.s.adapt_down();
    }
    let alive = h.s.workers.values().filter(|w| w.alive()).count();
    assert_eq!(alive, 1, "never below the minimum");
}

#[test]
fn cancel_drops_a_queued_attempt_and_tells_the_worker_of_an_assigned_one() {
    let mut h = Harness::running(1, 1, Resources::new());
    let running = h.submit("t", 0, None);
    let assigned_later = h.submit("t", 0, None);
    h.pump();
    let (t0, _) = h.assigned(0)[0];
    h.started(0, t0);
    // Queued: dropped, never sent.
    h.s.handle(Event::Cancel {
        run_id: assigned_later,
    });
    h.pump();
    let out = h.outcomes();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.clone().unwrap_err().0, TaskErrorKind::Cancelled);
    // Running: nothing to tell; its outcome comes and is reported.
    h.s.handle(Event::Cancel { run_id: running });
    h.pump();
    assert!(h.sent(0).1.is_empty());
    h.done(0, t0, true, LONG);

    // Assigned, not started: the worker is told to drop it.
    let later = h.submit("t", 0, None);
    h.pump();
    let (t, r) = h.assigned(0)[0];
    assert_eq!(r, later);
    h.s.handle(Event::Cancel { run_id: later });
    h.pump();
    assert_eq!(h.sent(0).1, vec![t]);
}

#[test]
fn many_distinct_resource_amounts_take_linear_work_and_leave_no_groups() {
    let n = 3_000u64;
    let mut h = Harness::running(1, 1, Resources::new().with("MEM", 1e12));
    for i in 0..n {
        h.submit_needing("m", Resources::new().with("MEM", (i + 1) as f64));
    }
    h.pump();
    let mut finished = 0;
    while finished < n {
        let sent = h.assigned(0);
        assert_eq!(sent.len(), 1);
        h.done(0, sent[0].0, true, LONG);
        finished += 1;
        h.pump();
    }
    assert_eq!(h.outcomes().len(), n as usize);
    assert!(
        h.s.steps <= 4 * n,
        "{} placement steps for {n} tasks: not linear",
        h.s.steps
    );
    assert_eq!(h.s.queue.resource_groups(), 0, "empty groups are removed");
}

#[test]
fn close_kills_a_worker_that_does_not_leave_within_its_grace_period() {
    let mut h = Harness::running(2, 1, Resources::new());
    h.s.handle(Event::Close);
    assert!(h
        .links
        .values()
        .all(|rx| rx.try_iter().any(|m| matches!(m, ToWorker::Shutdown))));
    // Worker 0 leaves; worker 1 is stopped and never does.
    h.exited(0, "exit code 0");
    h.s.tick(h.now);
    assert!(
        !h.s.launcher.killed.contains(&1),
        "not before the grace period"
    );
    h.s.tick(h.now + super::CLOSE_GRACE + Duration::from_millis(1));
    assert!(h.s.launcher.killed.contains(&1));
    assert!(h.s.workers.is_empty(), "the scheduler can stop");
}

#[test]
fn a_closed_connection_waits_for_the_exit_status_before_requeueing() {
    let mut h = Harness::running(1, 1, Resources::new());
    h.submit("t", 0, None);
    h.pump();
    let (t, _) = h.assigned(0)[0];
    h.started(0, t);
    h.s.handle(Event::Disconnected { worker: 0 });
    assert_eq!(h.s.workers[&0].state, WState::Gone);
    assert!(h.s.launcher.killed.contains(&0), "stopped for good");
    h.exited(0, "killed by signal 11 (SIGSEGV: invalid memory access)");
    assert!(!h.s.workers.contains_key(&0));
    assert!(h.s.tasks.get(t).is_some(), "requeued");
    assert_eq!(h.s.tasks.get(t).unwrap().deaths.as_ref().unwrap().len(), 1);
    assert!(h.s.tasks.get(t).unwrap().deaths.as_ref().unwrap()[0].contains("SIGSEGV"));
}

#[test]
fn a_task_runs_where_its_stored_arguments_are_kept_unless_that_worker_is_busy() {
    let mut h = Harness::running(2, 1, Resources::new());
    // Ties go to the lowest id: worker 0 would take it without a home.
    let a = h.submit_at_home("step", 1);
    h.pump();
    assert_eq!(
        h.assigned(1).iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![a]
    );
    assert!(h.assigned(0).is_empty());
    // Its home is busy (one thread, nothing prefetched for an unmeasured
    // task): the next one is not held back, it reads its arguments elsewhere.
    let b = h.submit_at_home("step", 1);
    h.pump();
    assert_eq!(
        h.assigned(0).iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![b]
    );
    // A home that died is no place: the task goes where there is room.
    let task_a = h.s.workers[&1].tasks.iter().copied().next().unwrap();
    h.done(1, task_a, true, Duration::from_millis(5));
    h.exited(1, "killed by signal 9");
    let c = h.submit_at_home("step", 1);
    let task_b = h.s.workers[&0].tasks.iter().copied().next().unwrap();
    h.done(0, task_b, true, Duration::from_millis(5));
    h.pump();
    assert_eq!(
        h.assigned(0).iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![c]
    );
}

//! Worker lifecycle: launching (with back-off, never recursively), start-up
//! failures, death and what it does to the tasks a worker held, retiring,
//! closing (with a grace period, then a kill), the periodic checks, and
//! adaptive scaling.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowrun_core::{TaskError, TaskErrorKind};
use rustc_hash::FxHashSet;

use super::super::wire::ToWorker;
use super::report::Bar;
use super::state::{TaskState, WState, Worker};
use super::{policy, Attempt, Launcher, Scheduler, CLOSE_GRACE, EXIT_WAIT};

impl<L: Launcher, A: Attempt> Scheduler<L, A> {
    /// Workers that count toward the cluster's size.
    pub(super) fn alive(&self) -> usize {
        self.workers.values().filter(|w| w.alive()).count()
    }

    /// Launches workers up to the target. A failed launch stops the loop and
    /// sets a back-off; the next round tries again (no recursion).
    pub(super) fn fill_to_target(&mut self, now: Instant) {
        if self.closing.is_some() || self.broken.is_some() {
            return;
        }
        if self.next_launch.is_some_and(|at| now < at) {
            return;
        }
        self.next_launch = None;
        while self.alive() < self.target {
            let id = self.next_worker;
            self.next_worker += 1;
            let name: Arc<str> = Arc::from(format!("worker-{id}"));
            self.worker_names.insert(id, name.clone());
            self.workers.insert(
                id,
                Worker::new(
                    name.clone(),
                    self.cfg.nthreads,
                    self.cfg.resources.clone(),
                    now,
                ),
            );
            match self.launcher.launch(id, &name) {
                Ok(pid) => {
                    if let Some(w) = self.workers.get_mut(&id) {
                        w.pid = (pid != 0).then_some(pid);
                    }
                }
                Err(reason) => {
                    self.workers.remove(&id);
                    self.launcher.kill(id);
                    self.startup_failed(format!("it could not be started: {reason}"), now);
                    return;
                }
            }
        }
    }

    /// A worker failed to launch or to start (already removed). Counts the
    /// failure and backs off, or gives up after too many in a row.
    pub(super) fn startup_failed(&mut self, reason: String, now: Instant) {
        if self.closing.is_some() {
            return;
        }
        self.launch_failures += 1;
        let n = self.launch_failures;
        tracing::warn!(target: "flowrun_dask::cluster", "A worker failed to start: {reason}");
        let any_running = self.workers.values().any(|w| w.state == WState::Running);
        if (n >= policy::MAX_STARTUP_FAILURES && !any_running) || n >= policy::MAX_LAUNCH_FAILURES {
            let why = format!(
                "the cluster's worker processes fail to start ({n} attempts in a row); the last one: {reason}"
            );
            tracing::error!(target: "flowrun_dask::cluster", "{why}");
            self.broken = Some(why.clone());
            self.fail_everything(&why);
        } else {
            self.next_launch = Some(now + policy::launch_backoff(n));
        }
    }

    /// Fails every task the scheduler holds.
    pub(super) fn fail_everything(&mut self, why: &str) {
        for (_, t) in self.tasks.drain() {
            if let Some(a) = t.attempt {
                a.finish(Err(TaskError::new(TaskErrorKind::Crashed, why)));
            }
        }
        self.queue.clear();
        self.pending_keys.clear();
        for w in self.workers.values_mut() {
            w.tasks.clear();
            w.outbox.clear();
        }
    }

    /// A worker is gone: requeue what it held, count a death for the tasks
    /// it was executing (ending those with too many as KilledWorker, with
    /// each death's cause), and start a replacement.
    pub(super) fn lost(&mut self, id: u32, why: String) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        self.launcher.kill(id);
        // What its tasks submitted needs no keeping for them any more.
        self.forwarded.retain(|(w, _), _| *w != id);
        if w.state == WState::Running {
            self.running_changed(-1);
        }
        self.forwarded.retain(|(worker, _), _| *worker != id);
        self.slots.worker_gone(id);
        let expected = w.state == WState::Closing || self.closing.is_some();
        if !expected {
            self.deaths += 1;
        }
        let cause = w.cause.clone().unwrap_or(why);
        let held = w
            .tasks
            .iter()
            .filter_map(|tid| {
                let t = self.tasks.get(*tid).filter(|t| t.owned_by(id))?;
                Some((matches!(t.state, TaskState::Running { .. }), t.rank, *tid))
            })
            .collect();
        let executing: FxHashSet<u64> = policy::executing(held, w.nthreads + w.seceded)
            .into_iter()
            .collect();
        let (mut rescheduled, mut crashed) = (0, 0);
        for tid in w.tasks {
            let Some(t) = self.tasks.get_mut(tid).filter(|t| t.owned_by(id)) else {
                continue;
            };
            if let Some((thread, start)) = t.started {
                let end = super::super::worker::now_us();
                let bar = Bar {
                    task: t.task_name.clone(),
                    index: t.index,
                    worker: id,
                    thread,
                    start_us: start,
                    end_us: end.max(start),
                    outcome: "crashed",
                };
                self.push_stream(bar);
            }
            let t = self.tasks.get_mut(tid).expect("present");
            if executing.contains(&tid) && !expected {
                let pid = w.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                t.deaths
                    .get_or_insert_with(Default::default)
                    .push(format!("{}{pid}: {cause}", w.name));
            }
            let deaths = t.deaths.as_ref().map_or(0, |d| d.len());
            if t.cancelled || policy::killed_worker(deaths, self.cfg.allowed_failures) {
                let t = self.tasks.remove(tid).expect("present");
                self.unpend(t.key);
                let error = if t.cancelled {
                    TaskError::new(TaskErrorKind::Cancelled, "cancelled before it started")
                } else {
                    crashed += 1;
                    TaskError::new(
                        TaskErrorKind::KilledWorker,
                        format!(
                            "KilledWorker: attempted to run task run '{}-{}' on {deaths} different workers, but all those workers died while running it: {}",
                            t.task_name,
                            t.index,
                            t.deaths.as_deref().map(|d| d.join("; ")).unwrap_or_default()
                        ),
                    )
                };
                if let Some(a) = t.attempt {
                    a.finish(Err(error));
                }
            } else {
                t.requeue();
                self.queue.push(t.rank, tid, t.needs.as_deref());
                rescheduled += 1;
            }
        }
        if !expected {
            tracing::warn!(
                target: "flowrun_dask::cluster",
                "Worker '{}'{} was lost: {cause}; {rescheduled} task run(s) rescheduled{}",
                w.name,
                w.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                if crashed > 0 {
                    format!(", {crashed} crashed after too many worker deaths")
                } else {
                    String::new()
                }
            );
            self.fill_to_target(Instant::now());
        }
    }

    /// Closes idle workers above the target (scaling down).
    pub(super) fn retire_extra(&mut self, now: Instant) {
        let mut extra = self.alive().saturating_sub(self.target);
        if extra == 0 {
            return;
        }
        let mut idle: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.alive() && w.tasks.is_empty())
            .map(|(id, _)| *id)
            .collect();
        idle.sort_unstable_by(|a, b| b.cmp(a));
        for id in idle {
            if extra == 0 {
                break;
            }
            self.retire(id, now);
            extra -= 1;
        }
    }

    /// Tells a worker to leave; one that has not connected is stopped.
    pub(super) fn retire(&mut self, id: u32, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let was_running = w.state == WState::Running;
        if w.state == WState::Gone {
            return;
        }
        w.state = WState::Closing;
        w.since = now;
        match &w.writer {
            Some(tx) => {
                let _ = tx.send(ToWorker::Shutdown);
            }
            None => self.launcher.kill(id),
        }
        if was_running {
            // Counted as gone from now on, in status and history alike.
            self.running_changed(-1);
        }
    }

    /// Tells every worker to leave; those still there after the grace
    /// period are killed (see [`Scheduler::tick`]).
    pub(super) fn close(&mut self, now: Instant) {
        if self.closing.is_none() {
            self.closing = Some(now + CLOSE_GRACE);
        }
        let ids: Vec<u32> = self.workers.keys().copied().collect();
        for id in ids {
            self.retire(id, now);
        }
    }

    /// The periodic checks: slow start-ups, workers that do not exit,
    /// memory limits, tasks no worker can run, and the close deadline.
    pub(super) fn tick(&mut self, now: Instant) {
        if let Some(deadline) = self.closing {
            if now >= deadline {
                let stuck: Vec<u32> = self.workers.keys().copied().collect();
                for id in stuck {
                    if let Some(w) = self.workers.remove(&id) {
                        tracing::warn!(
                            target: "flowrun_dask::cluster",
                            "Worker '{}' did not leave within {CLOSE_GRACE:?} of the cluster closing: killed it",
                            w.name
                        );
                    }
                    self.launcher.kill(id);
                }
            }
            return;
        }
        let slow: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.state == WState::Starting && now - w.since > self.cfg.startup_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in slow {
            self.launcher.kill(id);
            self.workers.remove(&id);
            let t = self.cfg.startup_timeout;
            self.startup_failed(
                format!("it did not connect within {t:?} (client_kwargs.startup_timeout)"),
                now,
            );
        }
        let silent: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WState::Gone && now - w.since > EXIT_WAIT)
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            self.lost(id, "its connection closed".into());
        }
        // Workers above their memory limit are restarted, like Dask's nanny does.
        if let Some(limit) = self.cfg.memory_limit {
            let over: Vec<(u32, u64)> = self
                .workers
                .iter()
                .filter(|(_, w)| w.state == WState::Running && w.cause.is_none())
                .filter_map(|(id, _)| {
                    self.launcher
                        .memory(*id)
                        .filter(|m| *m > limit)
                        .map(|m| (*id, m))
                })
                .collect();
            for (id, used) in over {
                let Some(w) = self.workers.get_mut(&id) else {
                    continue;
                };
                let cause = format!(
                    "it used {} MB, above its memory limit of {} MB (cluster_kwargs.memory_limit)",
                    used / 1_000_000,
                    limit / 1_000_000
                );
                tracing::warn!(target: "flowrun_dask::cluster", "Worker '{}' {cause}: restarting it", w.name);
                w.cause = Some(cause);
                self.launcher.kill(id);
            }
        }
        self.expire_waiting(now);
        if now - self.last_waiting_log > Duration::from_secs(30) {
            let waiting = self.waiting();
            if !waiting.is_empty() {
                self.last_waiting_log = now;
                tracing::warn!(
                    target: "flowrun_dask::cluster",
                    "{} task run(s) are waiting for a worker that can run them: {}",
                    waiting.len(),
                    waiting.iter().take(5).map(|w| format!("'{}' ({})", w.run, w.reason)).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }

    /// Tasks no worker can run fail after `no_workers_timeout`, if set.
    fn expire_waiting(&mut self, now: Instant) {
        let Some(limit) = self.cfg.no_workers_timeout else {
            return;
        };
        let expired: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                t.state == TaskState::NoWorker && t.since.is_some_and(|s| now - s > limit)
            })
            .map(|(id, _)| id)
            .collect();
        for id in expired {
            let Some(t) = self.tasks.remove(id) else {
                continue;
            };
            if let Some(a) = t.attempt {
                let needs = t.needs.map(|n| n.to_string()).unwrap_or_default();
                a.finish(Err(TaskError::new(
                    TaskErrorKind::Runner,
                    format!(
                        "no worker could run it within {limit:?} (cluster_kwargs.no_workers_timeout): it needs {needs}"
                    ),
                )));
            }
        }
    }

    pub(super) fn unpend(&mut self, key: &'static str) {
        if let Some(n) = self.pending_keys.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.pending_keys.remove(key);
            }
        }
    }

    pub(super) fn running_changed(&mut self, delta: i64) {
        self.running_workers = (self.running_workers as i64 + delta).max(0) as usize;
        self.history
            .push((std::time::SystemTime::now(), self.running_workers));
        if self.cfg.adapt.is_some() && self.closing.is_none() {
            tracing::info!(
                target: "flowrun_dask::adaptive",
                "The cluster has {} worker{} now",
                self.running_workers,
                if self.running_workers == 1 { "" } else { "s" }
            );
        }
    }

    /// Estimated work queued or running, and how many tasks.
    fn pending_work(&self) -> (Duration, usize) {
        let mut work = Duration::ZERO;
        let mut tasks = 0;
        for (key, n) in &self.pending_keys {
            let each = self
                .durations
                .get(key)
                .copied()
                .unwrap_or(policy::UNKNOWN_DURATION);
            work += each * (*n as u32);
            tasks += n;
        }
        (work, tasks)
    }

    fn desired_workers(&self, a: &policy::Adapt) -> usize {
        let (work, tasks) = self.pending_work();
        policy::desired_workers(work, tasks, self.cfg.nthreads, a)
    }

    /// Scales up as soon as the work ahead exceeds what the workers can do
    /// within the target duration.
    pub(super) fn adapt_up(&mut self, now: Instant) {
        let Some(a) = self.cfg.adapt.clone() else {
            return;
        };
        if self.closing.is_some() || self.broken.is_some() {
            return;
        }
        let desired = self.desired_workers(&a);
        if desired > self.alive() && desired > self.target {
            let (work, tasks) = self.pending_work();
            tracing::info!(
                target: "flowrun_dask::adaptive",
                "Scaling up from {} to {desired} workers: {tasks} task run(s) with about {:.1} s of work ahead",
                self.alive(),
                work.as_secs_f64()
            );
            self.target = desired;
        }
        self.fill_to_target(now);
    }

    /// Scales down workers that stayed idle for `wait_count` checks in a row,
    /// never below the minimum or what the work ahead needs.
    pub(super) fn adapt_down(&mut self) {
        let Some(a) = self.cfg.adapt.clone() else {
            return;
        };
        if self.closing.is_some() {
            return;
        }
        for w in self.workers.values_mut() {
            if w.state == WState::Running && w.tasks.is_empty() && w.seceded == 0 {
                w.idle_checks += 1;
            } else {
                w.idle_checks = 0;
            }
        }
        let keep = self.desired_workers(&a);
        let mut alive = self.alive();
        if alive <= keep {
            self.target = self.target.max(keep);
            return;
        }
        let mut idle: Vec<(u32, u32)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WState::Running && w.idle_checks >= a.wait_count)
            .map(|(id, w)| (*id, w.idle_checks))
            .collect();
        idle.sort_by_key(|(id, checks)| (Reverse(*checks), Reverse(*id)));
        let now = Instant::now();
        for (id, _) in idle {
            if alive <= keep {
                break;
            }
            tracing::info!(
                target: "flowrun_dask::adaptive",
                "Scaling down: worker '{}' was idle for {} checks",
                self.workers.get(&id).map(|w| &*w.name).unwrap_or("?"),
                a.wait_count
            );
            self.retire(id, now);
            alive -= 1;
        }
        self.target = a.clamp(alive);
    }
}

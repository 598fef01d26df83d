//! The reactor: one handler per event, and the placement round that runs
//! after each batch of events. A worker's message about a task is applied
//! only if that worker owns the task now.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::local::store::Payload;
use crossbeam_channel::Sender;
use flowrun_core::{ArgSlot, Resources, TaskError, TaskErrorKind};

use super::super::wire::{
    AssignmentOut, Completion, Start, Submission, ToScheduler, ToWorker, ToWorkerOut, WireError,
};
use super::queue::{Head, PLAIN};
use super::report::{emit_log, emit_output, tail};
use super::state::{Task, TaskState, WState};
use super::{policy, Attempt, Event, Launcher, Scheduler};

impl<L: Launcher, A: Attempt> Scheduler<L, A> {
    pub(super) fn handle(&mut self, ev: Event<A>) {
        // Read only for the events that use it: not per task.
        let now = Instant::now;
        match ev {
            Event::Submit {
                attempt,
                priority,
                needs,
            } => self.on_submit(attempt, priority, needs),
            Event::Cancel { run_id } => {
                self.to_cancel.insert(run_id);
            }
            Event::Connected {
                worker,
                pid,
                writer,
            } => self.on_connected(worker, pid, writer),
            Event::Messages { worker, batch } => {
                for m in batch {
                    self.on_message(worker, m);
                }
            }
            Event::Disconnected { worker } => self.on_disconnected(worker, now()),
            Event::Exited {
                worker,
                status,
                output_tail,
            } => self.on_exited(worker, status, output_tail, now()),
            Event::Refused { worker, reason } => self.on_refused(worker, reason, now()),
            Event::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Event::Stream(since, reply) => {
                let _ = reply.send(self.stream_since(since));
            }
            Event::Scale(n) => {
                self.target = n;
                let now = now();
                self.fill_to_target(now);
                self.retire_extra(now);
            }
            Event::BindFlow(handle) => self.flow = Some(handle),
            Event::Close => self.close(now()),
        }
    }

    fn on_submit(&mut self, attempt: A, priority: i64, needs: Option<Resources>) {
        if let Some(why) = &self.broken {
            let why = why.clone();
            attempt.finish(Err(TaskError::new(TaskErrorKind::Runner, why)));
            return;
        }
        if self.closing.is_some() {
            attempt.finish(Err(TaskError::new(
                TaskErrorKind::Runner,
                "the cluster is closing",
            )));
            return;
        }
        let needs = needs.filter(|r| !r.is_empty());
        let id = self.tasks.next_id();
        let key = attempt.key();
        let rank = (
            priority,
            Reverse(attempt.order()),
            Reverse(attempt.run_id()),
        );
        let home = attempt.home();
        let mut task = Task {
            key,
            task_name: attempt.task_name(),
            index: attempt.index(),
            attempt: Some(attempt),
            priority,
            rank,
            needs: needs.map(Box::new),
            state: TaskState::Queued,
            placements: 0,
            started: None,
            deaths: None,
            cancelled: false,
            home,
            since: None,
        };
        if let Some(n) = task.needs.as_deref() {
            if !self.cfg.resources.covers(n) {
                task.state = TaskState::NoWorker;
                task.since = Some(Instant::now());
                tracing::warn!(
                    target: "flowrun_dask::cluster",
                    { flowrun.run = format!("Task run '{}-{}'", task.task_name, task.index) },
                    "Waits: it needs {n}, and no worker of this cluster offers that (each offers {})",
                    self.cfg.resources
                );
                self.tasks.insert(id, task);
                return;
            }
        }
        self.queue.push(rank, id, task.needs.as_deref());
        *self.pending_keys.entry(key).or_insert(0) += 1;
        self.tasks.insert(id, task);
    }

    /// Runs cancelled since the last round (they are final already): drops
    /// their queued attempts, and asks the workers holding unstarted ones to
    /// drop them too. One pass over the tasks however many were cancelled.
    pub(super) fn cancel_runs(&mut self) {
        let runs = std::mem::take(&mut self.to_cancel);
        let found: Vec<(u64, TaskState)> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                t.attempt
                    .as_ref()
                    .is_some_and(|a| runs.contains(&a.run_id()))
            })
            .map(|(id, t)| (id, t.state))
            .collect();
        for (id, state) in found {
            match state {
                TaskState::Queued | TaskState::NoWorker => {
                    let task = self.tasks.remove(id).expect("found");
                    if state == TaskState::Queued {
                        self.unpend(task.key);
                    }
                    if let Some(a) = task.attempt {
                        a.finish(Err(TaskError::new(
                            TaskErrorKind::Cancelled,
                            "cancelled before it started",
                        )));
                    }
                }
                TaskState::Assigned { worker } => {
                    if let Some(t) = self.tasks.get_mut(id) {
                        t.cancelled = true;
                    }
                    if let Some(w) = self.workers.get_mut(&worker) {
                        w.cancels.push(id);
                    }
                }
                // It runs; its outcome is dropped when it comes.
                TaskState::Running { .. } => {}
            }
        }
    }

    fn on_connected(&mut self, id: u32, pid: u32, writer: Sender<ToWorkerOut>) {
        let closing = self.closing.is_some();
        let Some(w) = self
            .workers
            .get_mut(&id)
            .filter(|w| w.state == WState::Starting)
        else {
            let _ = writer.send(ToWorker::Shutdown);
            return;
        };
        w.pid = Some(pid);
        w.since = Instant::now();
        if closing {
            w.state = WState::Closing;
            let _ = writer.send(ToWorker::Shutdown);
        } else {
            w.state = WState::Running;
        }
        w.writer = Some(writer);
        tracing::debug!(target: "flowrun_dask::cluster", "Worker '{}' (pid {pid}) joined", w.name);
        self.launch_failures = 0;
        if !closing {
            self.running_changed(1);
        }
    }

    /// The id of the attempt of the run named `run` that `worker` holds:
    /// a line a worker sent names its run only, and another flow run (a
    /// subflow sharing the cluster) may have a run of that name too.
    fn running_attempt(&self, worker: u32, run: &str) -> Option<u64> {
        let w = self.workers.get(&worker)?;
        w.tasks.iter().copied().find(|&id| {
            self.tasks
                .get(id)
                .is_some_and(|t| t.owned_by(worker) && t.is_run_named(run))
        })
    }

    /// Calls `emit` as the attempt `id`'s run, when there is one, so that
    /// what it logs is that run's (in the run history too), not any run of
    /// the same name's.
    fn as_run(&self, id: Option<u64>, emit: impl FnOnce()) {
        match id.and_then(|id| self.tasks.get(id)?.attempt.as_ref()) {
            Some(attempt) => attempt.in_run(emit),
            None => emit(),
        }
    }

    fn on_message(&mut self, worker: u32, msg: ToScheduler) {
        match msg {
            ToScheduler::Started(starts) => self.on_started(worker, starts),
            ToScheduler::Done(done) => {
                for c in done {
                    self.on_done(worker, c);
                }
            }
            ToScheduler::Output(lines) => {
                let name = self
                    .workers
                    .get(&worker)
                    .map(|w| w.name.clone())
                    .unwrap_or_else(|| Arc::from(""));
                for l in lines {
                    let run = match l.runs.as_slice() {
                        [run] => self.running_attempt(worker, run),
                        _ => None,
                    };
                    self.as_run(run, || emit_output(&name, l));
                }
            }
            ToScheduler::Log(lines) => {
                for l in lines {
                    let run = l
                        .run
                        .as_deref()
                        .and_then(|r| self.running_attempt(worker, r));
                    self.as_run(run, || emit_log(l));
                }
            }
            ToScheduler::Secede(_) => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.seceded += 1;
                }
            }
            ToScheduler::Rejoin(_) => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.seceded = w.seceded.saturating_sub(1);
                }
            }
            ToScheduler::Submit(subs) => {
                for s in subs {
                    self.forward(worker, s);
                }
            }
            ToScheduler::Handled(ids) => {
                for id in ids {
                    if let Some((run, _)) = self.forwarded.get(&(worker, id)) {
                        run.mark_handled();
                    }
                }
            }
            ToScheduler::Slots(ask) => {
                let writer = self.workers.get(&worker).and_then(|w| w.writer.clone());
                self.slots.ask(worker, ask, self.flow.as_ref(), writer);
            }
            ToScheduler::Released(ids) => {
                for id in ids {
                    self.forwarded.remove(&(worker, id));
                }
            }
            ToScheduler::Subflow(id, report) => {
                if let Some(a) = self
                    .tasks
                    .get(id)
                    .filter(|t| t.owned_by(worker))
                    .and_then(|t| t.attempt.as_ref())
                {
                    a.subflow(*report);
                }
            }
        }
    }

    fn on_started(&mut self, worker: u32, starts: Vec<Start>) {
        let Some(name) = self.workers.get(&worker).map(|w| w.name.clone()) else {
            return;
        };
        for s in starts {
            if let Some(t) = self.tasks.get_mut(s.id) {
                if t.start(worker, s.thread, s.at_us) {
                    if let Some(a) = &t.attempt {
                        a.started(name.clone());
                    }
                }
            }
        }
    }

    fn on_done(&mut self, worker: u32, c: Completion) {
        if !self.tasks.get(c.id).is_some_and(|t| t.owned_by(worker)) {
            // A worker declared dead, or one that no longer holds it: the
            // task was placed again; this outcome is not the one it waits for.
            tracing::debug!(
                target: "flowrun_dask::cluster",
                "Ignored an outcome from worker {worker} for a task it does not hold"
            );
            return;
        }
        let mut task = self.tasks.remove(c.id).expect("checked");
        if let Some(w) = self.workers.get_mut(&worker) {
            w.tasks.remove(&c.id);
            if let Some(n) = task.needs.as_deref() {
                w.release(n);
            }
        }
        self.unpend(task.key);
        let d = Duration::from_micros(c.duration_us);
        let outcome = if task.cancelled {
            "cancelled"
        } else {
            self.finished += 1;
            let per_key = self.durations.entry(task.key).or_insert(d);
            *per_key = (*per_key * 3 + d) / 4;
            if c.result.is_ok() {
                "completed"
            } else {
                "failed"
            }
        };
        self.record(&task, worker, d, outcome);
        if let Some(a) = task.attempt.take() {
            let result = c
                .result
                .map_err(WireError::into_task_error)
                .and_then(crate::local::store::Payload::into_bytes);
            a.finish(result);
        }
    }

    /// The connection ended. A running worker is stopped for good, and its
    /// tasks wait for its exit, which says why it died.
    fn on_disconnected(&mut self, id: u32, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        match w.state {
            WState::Running => {
                w.state = WState::Gone;
                w.since = now;
                w.writer = None;
                self.running_changed(-1);
                self.launcher.kill(id);
            }
            WState::Starting => {
                self.launcher.kill(id);
                self.workers.remove(&id);
                self.startup_failed("its connection closed during start-up".into(), now);
            }
            WState::Gone | WState::Closing => {}
        }
    }

    fn on_exited(&mut self, id: u32, status: String, output_tail: String, now: Instant) {
        let starting = self
            .workers
            .get(&id)
            .is_some_and(|w| w.state == WState::Starting);
        if starting {
            self.workers.remove(&id);
            self.launcher.kill(id);
            self.startup_failed(
                format!("it exited during start-up ({status}){}", tail(&output_tail)),
                now,
            );
        } else {
            self.lost(id, format!("its process exited ({status})"));
        }
    }

    fn on_refused(&mut self, worker: Option<u32>, reason: String, now: Instant) {
        // A worker still starting when the cluster closes knocks after it
        // stopped expecting anyone: not worth a warning.
        if self.closing.is_some() {
            tracing::debug!(target: "flowrun_dask::cluster", "Refused a connection to the closing cluster: {reason}");
        } else {
            tracing::warn!(target: "flowrun_dask::cluster", "Refused a connection to the cluster: {reason}");
        }
        if let Some(id) = worker {
            if self
                .workers
                .get(&id)
                .is_some_and(|w| w.state == WState::Starting)
            {
                self.launcher.kill(id);
                self.workers.remove(&id);
                self.startup_failed(reason, now);
            }
        }
    }

    /// Runs a task a worker's task submitted, in the flow run, and sends the
    /// outcome back to that worker.
    fn forward(&mut self, worker: u32, s: Submission) {
        let writer = self.workers.get(&worker).and_then(|w| w.writer.clone());
        let reply = move |result: Result<Payload, WireError>| {
            if let Some(w) = &writer {
                let _ = w.send(ToWorker::Resolved(vec![(s.id, result)]));
            }
        };
        let Some(flow) = &self.flow else {
            reply(Err(WireError::from_task_error(&TaskError::new(
                TaskErrorKind::Runner,
                "this cluster serves no flow run, so it cannot run work submitted from a task",
            ))));
            return;
        };
        let mut options = flowrun_core::TaskOptions::new();
        if let Some(p) = s.priority {
            options = options.priority(p);
        }
        if let Some(r) = s.resources {
            options = options.resources(r.into_iter().collect::<Resources>());
        }
        let args = s
            .args
            .into_iter()
            .map(|b| ArgSlot::Bytes(bytes::Bytes::from(b.into_vec())))
            .collect();
        match flow.submit_encoded(&s.key, args, options) {
            Err(e) => reply(Err(WireError::from_task_error(&e))),
            Ok(future) => {
                let run = future.run_ref();
                // The future keeps the result (and a stored one's file) for
                // the worker to read until the submitting task finishes.
                self.forwarded.insert((worker, s.id), (run.clone(), future));
                let done = run.clone();
                run.on_final(move || {
                    let result = match done.error() {
                        Some(e) => Err(WireError::from_task_error(&e)),
                        None => done
                            .encoded_result()
                            .and_then(|b| Payload::by_reference(&b))
                            .map_err(|e| WireError::from_task_error(&e)),
                    };
                    reply(result);
                });
            }
        }
    }

    /// Places queued tasks on workers, most urgent first (see README.md).
    pub(super) fn schedule(&mut self) {
        // Resource groups already looked at this round.
        let mut below: Option<Head> = None;
        let mut plain_blocked = false;
        // Once a more urgent task waits, nothing below it is prefetched: a
        // worker's queue must drain for it.
        let mut prefetch_ok = true;
        let mut last_key: Option<(&'static str, usize)> = None;
        loop {
            #[cfg(test)]
            {
                self.steps += 1;
            }
            let plain = if plain_blocked {
                None
            } else {
                self.queue.plain_head()
            };
            let res = self.queue.resource_head(below.as_ref());
            let (group, tid, head) = match (plain, res) {
                (None, None) => break,
                (Some((_, id)), None) => (PLAIN, id, None),
                (None, Some(h)) => (h.2, h.1, Some(h)),
                (Some((r, id)), Some(h)) if (r, id) > (h.0, h.1) => (PLAIN, id, None),
                (Some(_), Some(h)) => (h.2, h.1, Some(h)),
            };
            let Some(key) = self
                .tasks
                .get(tid)
                .filter(|t| t.state == TaskState::Queued)
                .map(|t| t.key)
            else {
                // Its task was cancelled or expired meanwhile.
                self.queue.pop(group);
                continue;
            };
            let prefetch = if !prefetch_ok {
                0
            } else {
                // Runs of one task come in a row: look its duration up once.
                match last_key {
                    Some((k, depth)) if std::ptr::eq(k, key) => depth,
                    _ => {
                        let depth = policy::prefetch_depth(self.durations.get(key).copied());
                        last_key = Some((key, depth));
                        depth
                    }
                }
            };
            let needs = (group != PLAIN).then(|| self.queue.needs(group));
            let home = self.tasks.get(tid).and_then(|t| t.home);
            match policy::pick_worker(self.workers.iter(), needs, prefetch, home) {
                Some(wid) => {
                    self.queue.pop(group);
                    self.assign(tid, wid);
                }
                None => {
                    prefetch_ok = false;
                    match head {
                        None => plain_blocked = true,
                        Some(h) => below = Some(h),
                    }
                    // Without a free thread nothing else fits: a resource
                    // task needs one, and prefetching stopped.
                    if !policy::any_free_thread(self.workers.values()) {
                        break;
                    }
                }
            }
        }
    }

    /// `Queued -> Assigned` on `wid`: takes its resources, queues the message.
    fn assign(&mut self, tid: u64, wid: u32) {
        let Some(task) = self.tasks.get_mut(tid) else {
            return;
        };
        let Some(w) = self.workers.get_mut(&wid) else {
            return;
        };
        let Some(attempt) = task.attempt.as_ref() else {
            return;
        };
        let out = AssignmentOut {
            id: tid,
            key: task.key,
            name: task.task_name.clone(),
            index: task.index,
            run_name: attempt.run_name(),
            priority: task.priority,
            // The worker runs its queue in this order too.
            seq: task.rank.1 .0,
            args: attempt.args(),
            hooks: attempt.task_hooks(),
        };
        task.assign(wid);
        if let Some(n) = task.needs.as_deref() {
            w.acquire(n);
        }
        w.tasks.insert(tid);
        w.outbox.push(out);
    }

    /// Sends each worker what this round gave it, in one frame.
    pub(super) fn flush(&mut self) {
        for w in self.workers.values_mut() {
            let Some(tx) = &w.writer else { continue };
            if !w.outbox.is_empty() {
                let _ = tx.send(ToWorker::Run(std::mem::take(&mut w.outbox)));
            }
            if !w.cancels.is_empty() {
                let _ = tx.send(ToWorker::Cancel(std::mem::take(&mut w.cancels)));
            }
        }
    }
}

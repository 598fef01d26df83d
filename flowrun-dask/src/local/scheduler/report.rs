//! What the scheduler reports: the cluster's status, the task stream, and
//! the output and logs of tasks running on workers.

use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap as HashMap;

use super::super::wire::{LogLine, OutputLine};
use super::state::{Task, TaskState, WState};
use super::{Attempt, Launcher, Scheduler};
use crate::cluster::{ClusterStatus, TaskStream, TaskStreamEntry, WaitingTask, WorkerStatus};

/// How many task stream entries a cluster keeps (the oldest go first).
const STREAM_CAPACITY: usize = 100_000;

/// A task stream entry as the scheduler keeps it: names are shared, the
/// run's name is formatted only when someone asks.
pub(super) struct Bar {
    pub task: Arc<str>,
    pub index: u64,
    pub worker: u32,
    pub thread: u32,
    pub start_us: u64,
    pub end_us: u64,
    pub outcome: &'static str,
}

impl Bar {
    fn entry(&self, workers: &HashMap<u32, Arc<str>>) -> TaskStreamEntry {
        TaskStreamEntry {
            run: format!("{}-{}", self.task, self.index),
            task: self.task.to_string(),
            worker: workers
                .get(&self.worker)
                .map(|w| w.to_string())
                .unwrap_or_default(),
            thread: self.thread,
            start_us: self.start_us,
            end_us: self.end_us,
            outcome: self.outcome,
        }
    }
}

impl<L: Launcher, A: Attempt> Scheduler<L, A> {
    pub(super) fn record(
        &mut self,
        task: &Task<A>,
        worker: u32,
        duration: Duration,
        outcome: &'static str,
    ) {
        let Some((thread, start_us)) = task.started else {
            return;
        };
        self.push_stream(Bar {
            task: task.task_name.clone(),
            index: task.index,
            worker,
            thread,
            start_us,
            end_us: start_us + duration.as_micros() as u64,
            outcome,
        });
    }

    pub(super) fn push_stream(&mut self, entry: Bar) {
        if self.stream.len() == STREAM_CAPACITY {
            self.stream.pop_front();
            self.stream_base += 1;
        }
        self.stream.push_back(entry);
    }

    pub(super) fn stream_since(&self, since: u64) -> TaskStream {
        let first = since.max(self.stream_base);
        let entries = self
            .stream
            .iter()
            .skip((first - self.stream_base) as usize)
            .map(|bar| bar.entry(&self.worker_names))
            .collect();
        TaskStream {
            entries,
            next: self.stream_base + self.stream.len() as u64,
        }
    }

    pub(super) fn waiting(&self) -> Vec<WaitingTask> {
        self.tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::NoWorker)
            .map(|(_, t)| WaitingTask {
                run: format!("{}-{}", t.task_name, t.index),
                reason: format!(
                    "it needs {}, and no worker of this cluster offers that (each offers {})",
                    t.needs.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                    self.cfg.resources
                ),
            })
            .collect()
    }

    pub(super) fn status(&self) -> ClusterStatus {
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|(id, w)| {
                let running: Vec<String> = w
                    .tasks
                    .iter()
                    .filter_map(|t| self.tasks.get(*t))
                    .filter(|t| t.state == (TaskState::Running { worker: *id }))
                    .map(|t| format!("{}-{}", t.task_name, t.index))
                    .collect();
                WorkerStatus {
                    name: w.name.to_string(),
                    pid: w.pid.or_else(|| self.launcher.pid(*id)),
                    state: match w.state {
                        WState::Starting => "starting",
                        WState::Running => "running",
                        WState::Gone | WState::Closing => "closing",
                    },
                    nthreads: w.nthreads,
                    resources: self.cfg.resources.clone(),
                    free_resources: w.free.clone(),
                    queued: w.tasks.len() - running.len(),
                    running,
                }
            })
            .collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterStatus {
            address: self.cfg.address.clone(),
            workers,
            queued: self
                .tasks
                .iter()
                .filter(|(_, t)| t.state == TaskState::Queued)
                .count(),
            waiting: self.waiting(),
            deaths: self.deaths,
            finished: self.finished,
            worker_count_history: self.history.clone(),
        }
    }
}

pub(super) fn tail(output: &str) -> String {
    let t = output.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!("; its output ended with:\n{t}")
    }
}

/// Re-emits a line a task printed in a worker, attributed to its run.
pub(super) fn emit_output(worker: &str, l: OutputLine) {
    let who = match l.runs.len() {
        1 => format!("Task run '{}'", l.runs[0]),
        0 => format!("Worker '{worker}'"),
        _ => format!("Worker '{worker}' (running {})", l.runs.join(", ")),
    };
    let line = l.line.as_str();
    if l.runs.is_empty() {
        tracing::debug!(target: "flowrun_dask::worker_output", { flowrun.run = who.as_str() }, "{line}");
    } else if l.stderr {
        if tracing::enabled!(target: "flowrun_dask::task_output", tracing::Level::WARN) {
            tracing::warn!(target: "flowrun_dask::task_output", { flowrun.run = who.as_str() }, "{line}");
        } else {
            eprintln!("{line}");
        }
    } else if tracing::enabled!(target: "flowrun_dask::task_output", tracing::Level::INFO) {
        tracing::info!(target: "flowrun_dask::task_output", { flowrun.run = who.as_str() }, "{line}");
    } else {
        println!("{line}");
    }
}

/// Re-emits a log event from a worker with its run's name.
pub(super) fn emit_log(l: LogLine) {
    let who = l
        .run
        .map(|r| format!("Task run '{r}'"))
        .unwrap_or_else(|| "flowrun_dask::worker".into());
    let m = l.message.as_str();
    let w = who.as_str();
    match l.level {
        0 => tracing::error!(target: "flowrun_dask::worker_log", { flowrun.run = w }, "{m}"),
        1 => tracing::warn!(target: "flowrun_dask::worker_log", { flowrun.run = w }, "{m}"),
        2 => tracing::info!(target: "flowrun_dask::worker_log", { flowrun.run = w }, "{m}"),
        3 => tracing::debug!(target: "flowrun_dask::worker_log", { flowrun.run = w }, "{m}"),
        _ => tracing::trace!(target: "flowrun_dask::worker_log", { flowrun.run = w }, "{m}"),
    }
}

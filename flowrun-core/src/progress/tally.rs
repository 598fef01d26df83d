//! Counting task runs per task name by state, from a flow run's events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::observe::{RunEvent, RunObserver};
use crate::plumbing::lock;
use crate::run::record::{RunIdMap, RunRef};
use crate::run::state::StateKind;

/// The progress of one task: how many of its task runs are in each state.
/// (A flow run's final counts over all tasks are [`crate::TaskRunCounts`].)
///
/// ```
/// let counts = flowrun_core::progress::TaskProgress::new("shout");
/// assert_eq!(counts.total(), 0);
/// assert!(counts.is_done());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskProgress {
    /// The task's name, such as `shout`.
    pub task: String,
    /// Submitted, not started (waiting for upstream runs or a free worker).
    pub pending: usize,
    /// Executing an attempt now (`Running` or `Retrying`).
    pub running: usize,
    /// Between a failed attempt and the next one.
    pub awaiting_retry: usize,
    /// Ended `Completed`.
    pub completed: usize,
    /// Ended `Failed` (including timed out and upstream failures).
    pub failed: usize,
    /// Ended `Crashed` (their worker or process was lost).
    pub crashed: usize,
    /// Ended `Cancelled`.
    pub cancelled: usize,
}

impl TaskProgress {
    /// No runs of `task` yet.
    pub fn new(task: impl Into<String>) -> TaskProgress {
        TaskProgress {
            task: task.into(),
            ..TaskProgress::default()
        }
    }

    /// The counts of every task in `tasks` added up, under an empty name.
    pub fn sum<'a>(tasks: impl IntoIterator<Item = &'a TaskProgress>) -> TaskProgress {
        let mut all = TaskProgress::new("");
        for t in tasks {
            all.pending += t.pending;
            all.running += t.running;
            all.awaiting_retry += t.awaiting_retry;
            all.completed += t.completed;
            all.failed += t.failed;
            all.crashed += t.crashed;
            all.cancelled += t.cancelled;
        }
        all
    }

    /// Every run seen.
    pub fn total(&self) -> usize {
        self.pending + self.running + self.awaiting_retry + self.finished()
    }

    /// Runs in a final state.
    pub fn finished(&self) -> usize {
        self.completed + self.failed + self.crashed + self.cancelled
    }

    /// Runs that ended without a result (failed, crashed or cancelled).
    pub fn failures(&self) -> usize {
        self.failed + self.crashed + self.cancelled
    }

    /// Every run seen is final.
    pub fn is_done(&self) -> bool {
        self.finished() == self.total()
    }

    fn slot(&mut self, bucket: Bucket) -> &mut usize {
        match bucket {
            Bucket::Pending => &mut self.pending,
            Bucket::Running => &mut self.running,
            Bucket::AwaitingRetry => &mut self.awaiting_retry,
            Bucket::Completed => &mut self.completed,
            Bucket::Failed => &mut self.failed,
            Bucket::Crashed => &mut self.crashed,
            Bucket::Cancelled => &mut self.cancelled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    Pending,
    Running,
    AwaitingRetry,
    Completed,
    Failed,
    Crashed,
    Cancelled,
}

impl Bucket {
    fn of(kind: StateKind) -> Bucket {
        match kind {
            StateKind::Pending => Bucket::Pending,
            StateKind::Running | StateKind::Retrying => Bucket::Running,
            StateKind::AwaitingRetry => Bucket::AwaitingRetry,
            StateKind::Completed => Bucket::Completed,
            StateKind::Failed => Bucket::Failed,
            StateKind::Crashed => Bucket::Crashed,
            StateKind::Cancelled => Bucket::Cancelled,
        }
    }

    fn is_final(self) -> bool {
        matches!(
            self,
            Bucket::Completed | Bucket::Failed | Bucket::Crashed | Bucket::Cancelled
        )
    }
}

/// A task run executing now, as a [`TaskRunTally`] saw it start.
#[derive(Debug, Clone)]
pub struct RunningRun {
    /// The run (its name, task name and location, such as a worker).
    pub run: RunRef,
    /// When its current attempt started.
    pub since: SystemTime,
}

/// Counts a flow run's task runs per task name and state, from the flow
/// run's events. Add it to a flow run with `FlowHandle::add_observer`, or
/// feed it events yourself; read it from any thread.
///
/// Runs it first sees in a later state (it was added mid-run) are counted
/// from that state on.
///
/// ```
/// use std::sync::Arc;
/// use flowrun_core::progress::TaskRunTally;
///
/// let tally = Arc::new(TaskRunTally::new());
/// // In a runner's `start`: `info.flow.add_observer(tally.clone());`
/// assert!(tally.counts().is_empty());
/// ```
#[derive(Debug, Default)]
pub struct TaskRunTally {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: Vec<TaskProgress>,
    index: HashMap<Arc<str>, usize>,
    /// The task of the last new run (most runs are of the task before):
    /// its name and place in `tasks`, found without hashing the name.
    last: Option<(Arc<str>, usize)>,
    live: RunIdMap<Live>,
}

#[derive(Debug)]
struct Live {
    task: usize,
    bucket: Bucket,
    since: SystemTime,
    run: RunRef,
}

impl Inner {
    /// The place of the task named `name` in `tasks`, added if new.
    fn task_of(&mut self, name: &str) -> usize {
        if let Some((last, i)) = &self.last {
            if **last == *name {
                return *i;
            }
        }
        let (name, i) = match self.index.get_key_value(name) {
            Some((known, &i)) => (known.clone(), i),
            None => {
                let name: Arc<str> = Arc::from(name);
                self.tasks.push(TaskProgress::new(&*name));
                self.index.insert(name.clone(), self.tasks.len() - 1);
                (name, self.tasks.len() - 1)
            }
        };
        self.last = Some((name, i));
        i
    }
}

impl TaskRunTally {
    /// An empty tally.
    pub fn new() -> TaskRunTally {
        TaskRunTally::default()
    }

    /// Counts one state change.
    pub fn record(&self, event: &RunEvent) {
        let bucket = Bucket::of(event.state.kind());
        let id = event.run.id();
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let task = match inner.live.get(&id) {
            Some(live) => live.task,
            None => inner.task_of(event.run.task_name()),
        };
        let counts = &mut inner.tasks[task];
        if bucket.is_final() {
            if let Some(old) = inner.live.remove(&id) {
                *counts.slot(old.bucket) -= 1;
            }
            *counts.slot(bucket) += 1;
            return;
        }
        match inner.live.get_mut(&id) {
            Some(live) => {
                *counts.slot(live.bucket) -= 1;
                live.bucket = bucket;
                live.since = event.state.timestamp();
            }
            None => {
                inner.live.insert(
                    id,
                    Live {
                        task,
                        bucket,
                        since: event.state.timestamp(),
                        run: event.run.clone(),
                    },
                );
            }
        }
        *counts.slot(bucket) += 1;
    }

    /// Counts per task name, in the order the tasks were first seen.
    pub fn counts(&self) -> Vec<TaskProgress> {
        lock(&self.inner).tasks.clone()
    }

    /// Counts over every task.
    pub fn totals(&self) -> TaskProgress {
        let inner = lock(&self.inner);
        TaskProgress::sum(&inner.tasks)
    }

    /// The runs executing now, oldest first.
    pub fn running(&self) -> Vec<RunningRun> {
        let inner = lock(&self.inner);
        let mut out: Vec<RunningRun> = inner
            .live
            .values()
            .filter(|l| l.bucket == Bucket::Running)
            .map(|l| RunningRun {
                run: l.run.clone(),
                since: l.since,
            })
            .collect();
        drop(inner);
        out.sort_by_key(|r| (r.since, r.run.id()));
        out
    }
}

impl RunObserver for TaskRunTally {
    fn run_changed(&self, event: &RunEvent) {
        self.record(event);
    }
}

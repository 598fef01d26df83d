//! What the dashboard shows, collected from the cluster and the flow run:
//! polled by a thread while someone watches, serialized once per poll.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowrun_core::plumbing::lock;
use flowrun_core::progress::{TaskProgress, TaskRunTally};
use flowrun_core::Resources;
use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::local::{ClusterStatus, TaskStreamEntry};

/// How many task stream bars the dashboard keeps and sends to a new page.
const KEPT_BARS: usize = 20_000;
/// How many bars a page gets when it connects (it draws the latest).
pub(super) const BACKLOG: u64 = 5_000;

/// What a dashboard watches.
pub(crate) struct Source {
    pub cluster: Arc<dyn Cluster>,
    pub tally: Arc<TaskRunTally>,
    pub flow_run_name: String,
    pub flow_name: String,
    pub description: String,
    pub started: SystemTime,
    /// The flow run's concurrency limits, for runs waiting for a slot.
    pub limits: Option<flowrun_core::concurrency::FlowLimits>,
    /// The flow run, for the subflows it called (none in unit tests).
    pub flow: Option<flowrun_core::FlowHandle>,
}

/// The dashboard's view of the cluster, refreshed by [`Model::poll`].
pub(crate) struct Model {
    pub source: Arc<Source>,
    /// Pages following the event stream; polls happen only while there are some.
    pub viewers: AtomicUsize,
    /// Held through a poll: the poller and pages asking for fresh data
    /// poll from different threads.
    polling: Mutex<()>,
    inner: Mutex<Inner>,
}

struct Inner {
    /// JSON of the bars, in the order they ended.
    bars: VecDeque<Arc<str>>,
    /// Task stream position of `bars[0]`.
    first: u64,
    /// The next task stream position to ask the cluster for.
    next: u64,
    /// JSON of everything but the bars.
    status: Arc<str>,
    polled: Option<Instant>,
    ended: bool,
}

/// One message for a page: the state and the bars after its position.
pub(crate) struct Message {
    pub json: String,
    pub next: u64,
    pub ended: bool,
}

impl Model {
    pub(crate) fn new(source: Arc<Source>) -> Model {
        Model {
            source,
            viewers: AtomicUsize::new(0),
            polling: Mutex::new(()),
            inner: Mutex::new(Inner {
                bars: VecDeque::new(),
                first: 0,
                next: 0,
                status: Arc::from("{}"),
                polled: None,
                ended: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Asks the cluster for its status and new bars. Off the scheduler's
    /// hot path: two messages to it per poll, and only while someone watches.
    pub(crate) fn poll(&self) {
        // Two polls at once would both add the bars after the same position.
        let _one = lock(&self.polling);
        let since = self.lock().next;
        let stream = self.source.cluster.task_stream(since);
        let status = self.source.cluster.status();
        let mut inner = self.lock();
        if let Some(stream) = stream {
            // The entries end at `stream.next`; keep only those not held yet.
            let start = stream.next.saturating_sub(stream.entries.len() as u64);
            let skip = inner.next.saturating_sub(start) as usize;
            for entry in stream.entries.iter().skip(skip) {
                inner.bars.push_back(Arc::from(bar_json(entry).to_string()));
            }
            while inner.bars.len() > KEPT_BARS {
                inner.bars.pop_front();
            }
            inner.next = inner.next.max(stream.next);
            inner.first = inner.next.saturating_sub(inner.bars.len() as u64);
        }
        let ended = inner.ended;
        let mut state = state_json(&self.source, status.as_ref(), ended, SystemTime::now());
        if let Value::Object(map) = &mut state {
            map.insert(
                "viewers".into(),
                json!(self.viewers.load(Ordering::Acquire)),
            );
        }
        inner.status = Arc::from(state.to_string());
        inner.polled = Some(Instant::now());
    }

    /// Polls unless a poll is younger than `fresh`.
    pub(crate) fn poll_unless_fresh(&self, fresh: Duration) {
        let stale = self.lock().polled.is_none_or(|t| t.elapsed() > fresh);
        if stale {
            self.poll();
        }
    }

    /// Marks the flow run ended and, for the pages still open, takes a
    /// last look (nobody watching: nothing to fetch).
    pub(crate) fn end(&self) {
        self.lock().ended = true;
        if self.viewers.load(Ordering::Acquire) > 0 {
            self.poll();
        }
    }

    /// Whether the flow run ended.
    pub(crate) fn ended(&self) -> bool {
        self.lock().ended
    }

    /// The state, and the bars after position `since` (at most the latest
    /// [`BACKLOG`]).
    pub(crate) fn message(&self, since: u64) -> Message {
        let inner = self.lock();
        let end = inner.first + inner.bars.len() as u64;
        let from = since
            .max(inner.first)
            .max(end.saturating_sub(BACKLOG))
            .min(end);
        let mut json = String::with_capacity(inner.status.len() + 64);
        json.push_str("{\"state\":");
        json.push_str(&inner.status);
        json.push_str(&format!(
            ",\"stream\":{{\"from\":{from},\"next\":{end},\"entries\":["
        ));
        for (i, bar) in inner
            .bars
            .iter()
            .skip((from - inner.first) as usize)
            .enumerate()
        {
            if i > 0 {
                json.push(',');
            }
            json.push_str(bar);
        }
        json.push_str("]}}");
        Message {
            json,
            next: end,
            ended: inner.ended,
        }
    }
}

pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) fn bar_json(e: &TaskStreamEntry) -> Value {
    json!({
        "run": e.run,
        "task": e.task,
        "worker": e.worker,
        "thread": e.thread,
        "start": e.start_us,
        "end": e.end_us,
        "outcome": e.outcome,
    })
}

fn resources_json(r: &Resources) -> Value {
    Value::Object(r.iter().map(|(k, v)| (k.to_owned(), json!(v))).collect())
}

pub(crate) fn progress_json(counts: &[TaskProgress]) -> Value {
    Value::Array(
        counts
            .iter()
            .map(|c| {
                json!({
                    "task": c.task,
                    "pending": c.pending,
                    "running": c.running,
                    "awaiting_retry": c.awaiting_retry,
                    "completed": c.completed,
                    "failed": c.failed,
                    "crashed": c.crashed,
                    "cancelled": c.cancelled,
                    "total": c.total(),
                })
            })
            .collect(),
    )
}

/// The child flow runs of the flow run: their tasks run on the same
/// cluster (their bars are in the task stream), their progress is theirs.
pub(crate) fn subflows_json(subflows: &[flowrun_core::SubflowRun]) -> Value {
    Value::Array(
        subflows
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "run": s.name,
                    "flow": s.flow_name,
                    "state": s.state.kind().as_str(),
                    "task_run": s.parent_task_run_name,
                    "completed": s.counts.completed,
                    "failed": s.counts.failed + s.counts.crashed + s.counts.cancelled,
                    "total": s.counts.total(),
                })
            })
            .collect(),
    )
}

/// Everything a page shows but the bars.
pub(crate) fn state_json(
    source: &Source,
    status: Option<&ClusterStatus>,
    ended: bool,
    now: SystemTime,
) -> Value {
    let running: Vec<Value> = source
        .tally
        .running()
        .into_iter()
        .map(|r| {
            json!({
                "run": r.run.name(),
                "task": r.run.task_name(),
                "worker": r.run.location().map(|l| l.to_string()),
                "start": micros(r.since),
            })
        })
        .collect();
    let mut state = json!({
        "flow": {
            "run": source.flow_run_name,
            "name": source.flow_name,
            "cluster": source.description,
            "started": micros(source.started),
            "now": micros(now),
            "ended": ended,
        },
        "progress": progress_json(&source.tally.counts()),
        "running": running,
        "subflows": subflows_json(
            &source.flow.as_ref().map(|f| f.subflows()).unwrap_or_default()
        ),
    });
    if let Some(s) = status {
        let workers: Vec<Value> = s
            .workers
            .iter()
            .map(|w| {
                json!({
                    "name": w.name,
                    "pid": w.pid,
                    "state": w.state,
                    "nthreads": w.nthreads,
                    "busy": w.running.len(),
                    "running": w.running,
                    "queued": w.queued,
                    "resources": resources_json(&w.resources),
                    "free_resources": resources_json(&w.free_resources),
                })
            })
            .collect();
        let waiting: Vec<Value> = s
            .waiting
            .iter()
            .map(|w| json!({"run": w.run, "reason": w.reason}))
            .collect();
        let counts: Vec<Value> = s
            .worker_count_history
            .iter()
            .map(|(t, n)| json!([micros(*t), n]))
            .collect();
        let extra = json!({
            "workers": workers,
            "waiting": waiting,
            "worker_counts": counts,
            "queued": s.queued,
            "deaths": s.deaths,
            "finished": s.finished,
        });
        if let (Value::Object(state), Value::Object(extra)) = (&mut state, extra) {
            state.extend(extra);
        }
    }
    add_slot_waiters(&mut state, source);
    state
}

/// Runs waiting for a concurrency slot wait in the flow's process, not on
/// the cluster: they join the cluster's waiting runs, with their reason.
fn add_slot_waiters(state: &mut Value, source: &Source) {
    let Some(limits) = &source.limits else { return };
    let waiting = limits.waiting();
    if waiting.is_empty() {
        return;
    }
    let Value::Object(map) = state else { return };
    let list = map
        .entry("waiting")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = list {
        for (run, why) in waiting {
            list.push(json!({
                "run": run,
                "reason": format!("{}: {why}", flowrun_core::concurrency::AWAITING_CONCURRENCY_SLOT),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::TaskStream;

    /// A cluster whose task stream grows by one bar per call, slowly, like
    /// a busy scheduler's.
    struct Growing {
        next: Mutex<u64>,
    }

    impl Cluster for Growing {
        fn describe(&self) -> String {
            "growing".into()
        }
        fn submit(&self, _call: flowrun_core::TaskCall) {}
        fn close(&self) {}
        fn task_stream(&self, since: u64) -> Option<TaskStream> {
            let next = {
                let mut n = self.next.lock().unwrap();
                *n += 1;
                *n
            };
            std::thread::sleep(Duration::from_millis(2));
            let entries = (since..next)
                .map(|i| TaskStreamEntry {
                    run: format!("t-{i}"),
                    task: "t".into(),
                    worker: "worker-0".into(),
                    thread: 0,
                    start_us: i,
                    end_us: i + 1,
                    outcome: "completed",
                })
                .collect();
            Some(TaskStream { entries, next })
        }
    }

    #[test]
    fn subflows_show_with_their_state_counts_and_calling_task_run() {
        use flowrun_core::{State, StateKind, SubflowRun, TaskRunCounts};
        let child = |name: &str, kind, task: Option<&str>| SubflowRun {
            id: format!("id-{name}"),
            name: name.into(),
            flow_name: "child".into(),
            parent_task_run: None,
            parent_task_run_name: task.map(str::to_owned),
            state: State::new(kind),
            counts: TaskRunCounts {
                completed: 2,
                failed: 1,
                ..TaskRunCounts::default()
            },
        };
        let json = subflows_json(&[
            child("brave-otter", StateKind::Completed, None),
            child("calm-heron", StateKind::Running, Some("load-2")),
        ]);
        assert_eq!(
            json,
            json!([
                {"id": "id-brave-otter", "run": "brave-otter", "flow": "child", "state": "Completed",
                 "task_run": null, "completed": 2, "failed": 1, "total": 3},
                {"id": "id-calm-heron", "run": "calm-heron", "flow": "child", "state": "Running",
                 "task_run": "load-2", "completed": 2, "failed": 1, "total": 3},
            ])
        );
    }

    #[test]
    fn concurrent_polls_keep_each_bar_once_and_never_panic() {
        let model = Arc::new(Model::new(Arc::new(Source {
            cluster: Arc::new(Growing {
                next: Mutex::new(0),
            }),
            tally: Arc::new(TaskRunTally::new()),
            flow_run_name: "r".into(),
            flow_name: "f".into(),
            description: String::new(),
            started: SystemTime::now(),
            limits: None,
            flow: None,
        })));
        let pollers: Vec<_> = (0..8)
            .map(|_| {
                let m = model.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        m.poll();
                        let _ = m.message(0);
                    }
                })
            })
            .collect();
        for p in pollers {
            p.join().expect("a poll panicked");
        }
        let inner = model.lock();
        let runs: Vec<String> = inner.bars.iter().map(|b| b.to_string()).collect();
        assert_eq!(inner.first + runs.len() as u64, inner.next);
        for (i, bar) in runs.iter().enumerate() {
            let run = format!("\"t-{}\"", inner.first + i as u64);
            assert!(bar.contains(&run), "bar {i} is {bar}, expected {run}");
        }
    }
}

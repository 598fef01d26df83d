//! The performance report: one self-contained HTML file with the task
//! stream and a summary of the flow run, written when it ends.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use flowrun_core::observe::{RunEvent, RunObserver};
use flowrun_core::plumbing::lock;
use flowrun_core::{RunId, StateKind};
use serde_json::{json, Value};

use super::model::{bar_json, micros, state_json, Source};
use crate::local::TaskStreamEntry;

/// Task stream bars from the flow run's events, for clusters that keep no
/// task stream (a real Dask cluster): a bar per attempt that started, on a
/// lane of the worker it ran on.
#[derive(Default)]
pub(crate) struct Recorder {
    inner: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    starts: HashMap<RunId, SystemTime>,
    bars: Vec<TaskStreamEntry>,
}

impl RunObserver for Recorder {
    fn run_changed(&self, event: &RunEvent) {
        let kind = event.state.kind();
        let outcome = match kind {
            StateKind::Running | StateKind::Retrying => {
                self.lock()
                    .starts
                    .insert(event.run.id(), event.state.timestamp());
                return;
            }
            StateKind::Completed => "completed",
            StateKind::Failed => "failed",
            StateKind::Crashed => "crashed",
            StateKind::Cancelled => "cancelled",
            _ => {
                // AwaitingRetry: the attempt ended failed.
                if kind != StateKind::AwaitingRetry {
                    return;
                }
                "failed"
            }
        };
        let mut inner = self.lock();
        let Some(start) = inner.starts.remove(&event.run.id()) else {
            return;
        };
        inner.bars.push(TaskStreamEntry {
            run: event.run.name(),
            task: event.run.task_name().to_owned(),
            worker: event
                .run
                .location()
                .map_or_else(|| "cluster".to_owned(), |l| l.to_string()),
            thread: 0,
            start_us: micros(start),
            end_us: micros(event.state.timestamp()),
            outcome,
        });
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        lock(&self.inner)
    }

    /// The bars, each on the first free lane of its worker.
    fn bars(&self) -> Vec<TaskStreamEntry> {
        let mut bars = self.lock().bars.clone();
        bars.sort_by_key(|b| b.start_us);
        let mut lanes: HashMap<String, Vec<u64>> = HashMap::new();
        for bar in &mut bars {
            let ends = lanes.entry(bar.worker.clone()).or_default();
            let lane = match ends.iter().position(|&end| end <= bar.start_us) {
                Some(i) => i,
                None => {
                    ends.push(0);
                    ends.len() - 1
                }
            };
            ends[lane] = bar.end_us;
            bar.thread = lane as u32;
        }
        bars
    }
}

/// Writes the report for the flow run `source` watches to `path`.
pub(crate) fn write(
    path: &Path,
    source: &Source,
    recorder: Option<&Recorder>,
) -> std::io::Result<()> {
    let now = SystemTime::now();
    let bars = match recorder {
        Some(r) => r.bars(),
        None => source
            .cluster
            .task_stream(0)
            .map(|s| s.entries)
            .unwrap_or_default(),
    };
    let status = source.cluster.status();
    let mut state = state_json(source, status.as_ref(), true, now);
    let nthreads = status
        .as_ref()
        .and_then(|s| s.workers.first())
        .map(|w| w.nthreads);
    let history: Vec<(u64, usize)> = status
        .as_ref()
        .map(|s| {
            s.worker_count_history
                .iter()
                .map(|(t, n)| (micros(*t), *n))
                .collect()
        })
        .unwrap_or_default();
    let summary = summary(
        &bars,
        micros(source.started),
        micros(now),
        &history,
        nthreads,
    );
    if let Value::Object(map) = &mut state {
        map.insert("summary".into(), summary);
        map.insert("report".into(), json!(true));
    }
    let entries: Vec<Value> = bars.iter().map(bar_json).collect();
    let data = json!({
        "state": state,
        "stream": {"from": 0, "next": entries.len(), "entries": entries},
    });
    let html = super::page::report(&data.to_string());
    // Written next to the target and renamed, so a reader never sees half
    // a report.
    let tmp = path.with_extension("html.partial");
    std::fs::write(&tmp, html)?;
    std::fs::rename(&tmp, path)
}

/// Runs, outcomes and durations per task name; throughput; how busy the
/// worker threads were.
fn summary(
    bars: &[TaskStreamEntry],
    started_us: u64,
    ended_us: u64,
    history: &[(u64, usize)],
    nthreads: Option<usize>,
) -> Value {
    let mut per_task: BTreeMap<&str, Vec<&TaskStreamEntry>> = BTreeMap::new();
    for b in bars {
        per_task.entry(&b.task).or_default().push(b);
    }
    let secs = |us: u64| us as f64 / 1e6;
    let tasks: Vec<Value> = per_task
        .into_iter()
        .map(|(task, runs)| {
            let mut durations: Vec<u64> = runs
                .iter()
                .map(|b| b.end_us.saturating_sub(b.start_us))
                .collect();
            durations.sort_unstable();
            let total: u64 = durations.iter().sum();
            let count = |what: &str| runs.iter().filter(|b| b.outcome == what).count();
            json!({
                "task": task,
                "runs": runs.len(),
                "completed": count("completed"),
                "failed": count("failed"),
                "crashed": count("crashed"),
                "min": secs(durations[0]),
                "median": secs(durations[durations.len() / 2]),
                "mean": secs(total / durations.len() as u64),
                "max": secs(durations[durations.len() - 1]),
                "total": secs(total),
            })
        })
        .collect();
    let duration = secs(ended_us.saturating_sub(started_us));
    let busy: u64 = bars
        .iter()
        .map(|b| b.end_us.saturating_sub(b.start_us))
        .sum();
    // Thread-seconds the cluster offered: workers over time x threads.
    let capacity = nthreads.map(|threads| {
        let mut total = 0.0;
        for (i, (t, n)) in history.iter().enumerate() {
            let until = history.get(i + 1).map_or(ended_us, |next| next.0);
            let from = (*t).max(started_us);
            if until > from {
                total += secs(until - from) * (*n * threads) as f64;
            }
        }
        total
    });
    let first = bars.iter().map(|b| b.start_us).min();
    let last = bars.iter().map(|b| b.end_us).max();
    let span = match (first, last) {
        (Some(a), Some(b)) if b > a => secs(b - a),
        _ => 0.0,
    };
    json!({
        "duration": duration,
        "bars": bars.len(),
        "throughput": if span > 0.0 { bars.len() as f64 / span } else { 0.0 },
        "busy": secs(busy),
        "capacity": capacity,
        "utilisation": capacity.filter(|c| *c > 0.0).map(|c| secs(busy) / c),
        "max_workers": history.iter().map(|(_, n)| *n).max(),
        "tasks": tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(task: &str, start: u64, end: u64, outcome: &'static str) -> TaskStreamEntry {
        TaskStreamEntry {
            run: format!("{task}-{start}"),
            task: task.into(),
            worker: "worker-0".into(),
            thread: 0,
            start_us: start,
            end_us: end,
            outcome,
        }
    }

    #[test]
    fn summary_has_durations_per_task_and_utilisation() {
        let bars = [
            bar("a", 0, 1_000_000, "completed"),
            bar("a", 1_000_000, 4_000_000, "failed"),
            bar("b", 0, 2_000_000, "completed"),
        ];
        let s = summary(&bars, 0, 4_000_000, &[(0, 1), (2_000_000, 2)], Some(1));
        let a = &s["tasks"][0];
        assert_eq!(a["task"], "a");
        assert_eq!(a["runs"], 2);
        assert_eq!(a["failed"], 1);
        assert_eq!(a["min"], 1.0);
        assert_eq!(a["max"], 3.0);
        assert_eq!(a["total"], 4.0);
        assert_eq!(s["busy"], 6.0);
        // 2 s x 1 worker + 2 s x 2 workers.
        assert_eq!(s["capacity"], 6.0);
        assert_eq!(s["utilisation"], 1.0);
        assert_eq!(s["throughput"], 0.75);
        assert_eq!(s["max_workers"], 2);
    }
}

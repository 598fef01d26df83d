//! Work a task submits from a worker: through the worker's connection to
//! the scheduler, which runs it in the flow run like any other task run and
//! sends back the outcome.
//!
//! Each task execution that submits work gets its own scope: when the task
//! returns, the executor waits for the runs it started (giving its slot
//! away meanwhile) and tells the flow which of their failures the task read.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;
use flowrun_core::plumbing::lock;
use flowrun_core::{ArgSlot, Execution, RunRef, Scope, SerializedJob, TaskCall, TaskRunner};
use serde_bytes::ByteBuf;

use super::store::Payload;
use super::wire::{Submission, WireError};
use super::worker::Outgoing;

/// A worker's way to the scheduler for submissions.
pub(crate) struct Link {
    out: Sender<Outgoing>,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, SerializedJob>>,
    name: String,
    /// The cluster's result store, where large results are read.
    store_dir: std::path::PathBuf,
}

impl Link {
    pub(crate) fn new(
        out: Sender<Outgoing>,
        name: String,
        store_dir: std::path::PathBuf,
    ) -> Arc<Link> {
        Arc::new(Link {
            out,
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            name,
            store_dir,
        })
    }

    /// Delivers outcomes the scheduler sent back.
    pub(crate) fn resolve(&self, batch: Vec<(u64, Result<Payload, WireError>)>) {
        for (id, result) in batch {
            let job = lock(&self.pending).remove(&id);
            if let Some(job) = job {
                job.finish(
                    result
                        .map_err(WireError::into_task_error)
                        .map(|p| p.into_lent(&self.store_dir)),
                );
            }
        }
    }

    /// The scheduler is gone: nothing submitted will come back.
    pub(crate) fn fail_all(&self, why: &str) {
        let jobs: Vec<SerializedJob> = lock(&self.pending).drain().map(|(_, j)| j).collect();
        for job in jobs {
            job.finish(Err(flowrun_core::TaskError::new(
                flowrun_core::TaskErrorKind::Crashed,
                why,
            )));
        }
    }
}

/// Sends the attempts of a task scope to the scheduler.
struct Forwarding {
    link: Arc<Link>,
    submitted: Mutex<Vec<(u64, RunRef)>>,
}

impl TaskRunner for Forwarding {
    fn name(&self) -> Cow<'static, str> {
        "the worker's cluster".into()
    }

    fn execution(&self) -> Execution {
        Execution::Serialized
    }

    fn handles_retries(&self) -> bool {
        // The flow's side retries; this side sees the final outcome.
        true
    }

    fn runs_task_hooks(&self) -> bool {
        // The worker that executes the forwarded run calls them.
        true
    }

    fn submit(&self, call: TaskCall) {
        let Some((run, annotations, job)) =
            call.into_serialized_parts("a worker forwards serialized calls only")
        else {
            return;
        };
        let id = self.link.next.fetch_add(1, Ordering::Relaxed);
        let args = job
            .args()
            .iter()
            .map(|a| match a {
                // A result read by reference is sent by value (as it
                // would be read).
                ArgSlot::Bytes(b) => {
                    flowrun_core::external::resolve(b).map(|b| ByteBuf::from(b.to_vec()))
                }
                ArgSlot::Upstream(_) => Ok(ByteBuf::new()),
            })
            .collect::<Result<Vec<_>, _>>();
        let args = match args {
            Ok(args) => args,
            Err(e) => {
                job.finish(Err(e));
                return;
            }
        };
        let submission = Submission {
            id,
            key: job.task_key().to_owned(),
            args,
            priority: annotations.priority,
            resources: annotations
                .resources
                .map(|r| r.iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        };
        lock(&self.submitted).push((id, run));
        lock(&self.link.pending).insert(id, job);
        if self.link.out.send(Outgoing::Submit(submission)).is_err() {
            self.link.fail_all("the worker lost its scheduler");
        }
    }
}

/// The submissions of one task execution.
pub(crate) struct TaskScope {
    pub(crate) scope: Arc<Scope>,
    runner: Arc<Forwarding>,
}

thread_local! {
    static LINK: RefCell<Option<Arc<Link>>> = const { RefCell::new(None) };
    static SCOPE: RefCell<Option<Arc<TaskScope>>> = const { RefCell::new(None) };
}

/// Marks this executor thread as belonging to the worker behind `link`.
pub(crate) fn bind_thread(link: Arc<Link>) {
    LINK.with(|l| *l.borrow_mut() = Some(link));
}

/// The scope of the task executing on this thread, created on first use.
pub(crate) fn task_scope() -> Option<Arc<TaskScope>> {
    if let Some(s) = SCOPE.with(|s| s.borrow().clone()) {
        return Some(s);
    }
    let link = LINK.with(|l| l.borrow().clone())?;
    let runner = Arc::new(Forwarding {
        link: link.clone(),
        submitted: Mutex::new(Vec::new()),
    });
    let name = flowrun_core::current_task_run_name().unwrap_or_else(|| link.name.clone());
    let scope = Scope::start(name, runner.clone()).ok()?;
    let ts = Arc::new(TaskScope {
        scope: Arc::new(scope),
        runner,
    });
    SCOPE.with(|s| *s.borrow_mut() = Some(ts.clone()));
    Some(ts)
}

/// Called by the executor after a task returns: waits for the runs the task
/// submitted and tells the flow which failures the task handled. Returns
/// the failures nothing handled, to fail the task with.
pub(crate) fn finish_task() -> Vec<flowrun_core::TaskRunFailure> {
    let Some(ts) = SCOPE.with(|s| s.borrow_mut().take()) else {
        return Vec::new();
    };
    let unhandled = ts.scope.wait();
    let submitted = std::mem::take(&mut *lock(&ts.runner.submitted));
    // Failures the task read are handled; the ones it ignored are carried by
    // the task's own failure (as a downstream carries its upstream's), so
    // the flow hears of each once.
    let handled: Vec<u64> = submitted
        .iter()
        .filter(|(_, run)| run.state().kind().is_failure())
        .map(|(id, _)| *id)
        .collect();
    if !handled.is_empty() {
        let _ = ts.runner.link.out.send(Outgoing::Handled(handled));
    }
    if !submitted.is_empty() {
        let ids = submitted.iter().map(|(id, _)| *id).collect();
        let _ = ts.runner.link.out.send(Outgoing::Released(ids));
    }
    unhandled
}

//! `SerializingTaskRunner`: runs every task the way a worker process does
//! (by registry key, arguments and result serialized) on local threads.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::exec::pool::Pool;
use crate::plumbing::lock;
use crate::runner::{Execution, FlowRunInfo, RunnerError, TaskCall, TaskRunner};
use crate::task::args::ArgSlot;
use crate::task::registry;
use crate::task::{AcceptsTask, SerializedTask};

/// Runs each task run through the task registry, by name, with its
/// arguments and result serialized, on a thread pool of this process.
///
/// It behaves like a runner with worker processes, without the processes:
/// use it in tests to check that every task of a flow can move between
/// processes (a task whose types cannot is a compile error in `#[flow]`,
/// or fails at submit with a message naming the type).
///
/// ```
/// use flowrun_core::SerializingTaskRunner;
/// let runner = SerializingTaskRunner::new(2);
/// # let _ = runner;
/// ```
pub struct SerializingTaskRunner {
    max_workers: usize,
    pool: Mutex<Option<Arc<Pool>>>,
}

impl SerializingTaskRunner {
    /// A runner of at most `max_workers` concurrent task runs.
    pub fn new(max_workers: usize) -> SerializingTaskRunner {
        SerializingTaskRunner {
            max_workers: max_workers.max(1),
            pool: Mutex::new(None),
        }
    }
}

crate::__debug_fields!(SerializingTaskRunner { max_workers });

impl Default for SerializingTaskRunner {
    fn default() -> Self {
        SerializingTaskRunner::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Clone for SerializingTaskRunner {
    fn clone(&self) -> Self {
        SerializingTaskRunner::new(self.max_workers)
    }
}

impl TaskRunner for SerializingTaskRunner {
    fn name(&self) -> Cow<'static, str> {
        "SerializingTaskRunner".into()
    }

    fn execution(&self) -> Execution {
        Execution::Serialized
    }

    fn start(&self, _flow: &FlowRunInfo) -> Result<(), RunnerError> {
        *lock(&self.pool) = Some(Pool::new("flowrun-serializing", self.max_workers));
        Ok(())
    }

    fn submit(&self, call: TaskCall) {
        let Some((run, _annotations, job)) =
            call.into_serialized_parts("SerializingTaskRunner only runs serialized calls")
        else {
            return;
        };
        let pool = lock(&self.pool).clone();
        let Some(pool) = pool else {
            job.refuse("SerializingTaskRunner was not started");
            return;
        };
        let work = crate::exec::pool::Job::once(move || {
            job.started(Some("local"));
            let args: Vec<&[u8]> = job
                .args()
                .iter()
                .map(|slot| match slot {
                    ArgSlot::Bytes(b) => &b[..],
                    ArgSlot::Upstream(_) => &[][..],
                })
                .collect();
            let result = match registry::registry().get(job.task_key()) {
                None => Err(crate::run::error::TaskError::new(
                    crate::run::error::TaskErrorKind::Runner,
                    format!("no task is registered as '{}'", job.task_key()),
                )),
                Some(task) => {
                    let _ctx = crate::exec::context::enter(crate::exec::context::Context {
                        flow: crate::exec::context::current_flow(),
                        task_run: Some(run.clone()),
                        label: None,
                        span: None,
                        annotations: Vec::new(),
                    });
                    task.run(&args).map(Bytes::from)
                }
            };
            job.finish(result);
        });
        if let Err(work) = pool.spawn(work) {
            work.run();
        }
    }

    fn shutdown(&self) {
        if let Some(pool) = lock(&self.pool).take() {
            pool.shutdown();
        }
    }
}

impl<T: SerializedTask> AcceptsTask<T> for SerializingTaskRunner {}

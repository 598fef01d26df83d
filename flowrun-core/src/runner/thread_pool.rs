//! `ThreadPoolTaskRunner`: the default runner, executing task runs on a pool
//! of threads in the flow's process.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use crate::exec::pool::Pool;
use crate::plumbing::lock;
use crate::runner::{FlowRunInfo, RunnerError, TaskCall, TaskRunner, Work};
use crate::task::{AcceptsTask, Task};

/// Runs task runs on threads of the flow's process, at most `max_workers`
/// at a time (by default `min(32, cores + 4)`, as Python's thread pools do).
///
/// A task that blocks on another run (`result()`, `wait()`) gives its
/// thread's slot to another task while it waits, so tasks that submit and
/// wait for other tasks cannot deadlock the pool.
///
/// ```
/// use flowrun_core::ThreadPoolTaskRunner;
/// let runner = ThreadPoolTaskRunner::new(4);
/// assert_eq!(runner.max_workers(), 4);
/// ```
pub struct ThreadPoolTaskRunner {
    max_workers: usize,
    pool: Mutex<Option<Arc<Pool>>>,
    /// Tag limits for the flow runs it serves.
    tag_limits: Vec<(String, u32)>,
}

impl ThreadPoolTaskRunner {
    /// A runner of at most `max_workers` concurrent task runs (at least 1).
    pub fn new(max_workers: usize) -> ThreadPoolTaskRunner {
        ThreadPoolTaskRunner {
            max_workers: max_workers.max(1),
            pool: Mutex::new(None),
            tag_limits: Vec::new(),
        }
    }

    /// Limits the task runs tagged `tag` of each flow run this runner
    /// serves to `slots` running at once (see [`crate::concurrency`]). A
    /// limit the flow sets for the same tag wins; a limit of 0 makes the
    /// flow run fail to start.
    #[must_use]
    pub fn with_tag_limit(mut self, tag: impl Into<String>, slots: u32) -> Self {
        self.tag_limits.push((tag.into(), slots));
        self
    }

    /// The concurrency limit.
    pub fn max_workers(&self) -> usize {
        self.max_workers
    }

    fn pool(&self) -> Arc<Pool> {
        lock(&self.pool)
            .get_or_insert_with(|| Pool::new("flowrun-task", self.max_workers))
            .clone()
    }

    /// Threads the runner's pool has now (for tests and diagnostics).
    pub fn threads(&self) -> usize {
        lock(&self.pool).as_ref().map_or(0, |p| p.threads())
    }
}

impl Default for ThreadPoolTaskRunner {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ThreadPoolTaskRunner::new((cores + 4).min(32))
    }
}

impl Clone for ThreadPoolTaskRunner {
    /// A runner with the same settings and its own pool.
    fn clone(&self) -> Self {
        ThreadPoolTaskRunner {
            tag_limits: self.tag_limits.clone(),
            ..ThreadPoolTaskRunner::new(self.max_workers)
        }
    }
}

crate::__debug_fields!(ThreadPoolTaskRunner { max_workers });

impl TaskRunner for ThreadPoolTaskRunner {
    fn name(&self) -> Cow<'static, str> {
        "ThreadPoolTaskRunner".into()
    }

    fn start(&self, flow: &FlowRunInfo) -> Result<(), RunnerError> {
        crate::concurrency::flow_limits(&flow.flow)
            .set_tag_limits(&self.tag_limits)
            .map_err(|e| RunnerError::new(e.to_string()))?;
        self.pool();
        Ok(())
    }

    fn submit(&self, call: TaskCall) {
        match call.into_work() {
            Work::Local(job) => {
                if let Err(returned) = self.pool().spawn(job.into_pool_job()) {
                    // The pool is shut down: run it here rather than lose it.
                    returned.run();
                }
            }
            Work::Serialized(job) => {
                job.refuse("ThreadPoolTaskRunner runs tasks in this process only")
            }
        }
    }

    fn shutdown(&self) {
        if let Some(pool) = lock(&self.pool).take() {
            pool.shutdown();
        }
    }
}

impl<T: Task> AcceptsTask<T> for ThreadPoolTaskRunner {}

//! Scopes: a flow-like context with its own task runner, for code that
//! submits tasks outside a flow run (a Dask client in a script, a worker
//! process forwarding work to its cluster), and the handle runners get on
//! the flow run they serve.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::exec::context;
use crate::flow::registry::FlowShared;
use crate::run::error::{TaskError, TaskRunFailure};
use crate::run::future::TaskFuture;
use crate::runner::{FlowRunInfo, RunnerError, TaskRunner};
use crate::task::args::ArgSlot;
use crate::task::options::TaskOptions;
use crate::task::CallConfig;

/// A handle on a flow run (or a [`Scope`]): runners use it to submit more
/// work into the run they serve.
#[derive(Clone)]
pub struct FlowHandle(pub(crate) Arc<FlowShared>);

impl FlowHandle {
    /// The flow run's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The flow run's id.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The home it records into and keeps its results under when one was
    /// chosen for it (see [`crate::home`]); `None`: the process's home.
    pub fn home(&self) -> Option<&std::path::Path> {
        self.0.home.as_deref()
    }

    /// Submits a run of the task registered as `key` with serialized
    /// arguments into this flow run, as if the flow had submitted it: it is
    /// tracked, logged, retried and counted like any other run. Its value is
    /// the serialized result.
    pub fn submit_encoded(
        &self,
        key: &str,
        args: Vec<ArgSlot>,
        options: TaskOptions,
    ) -> Result<TaskFuture<Bytes>, TaskError> {
        let config = CallConfig::NONE.with_options(options);
        crate::engine::encoded::submit(&self.0, key, args, &config)
    }

    /// The flow runs this run called (its subflows): the finished ones, as [`FlowRun::subflows`](crate::FlowRun::subflows)
    /// lists them at the end, then the running ones with state `Running`
    /// and the counts of their task runs that finished so far. What a live
    /// view of the run (the dashboard) shows of its children.
    pub fn subflows(&self) -> Vec<crate::SubflowRun> {
        self.0.links.all_children()
    }

    /// Watches every change of state of this run's task runs.
    pub fn add_observer(&self, observer: Arc<dyn crate::observe::RunObserver>) {
        self.0.add_observer(observer);
    }

    /// Runs `f` with task submissions going to this flow run.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let previous = context::with_current(|c| c.flow.replace(self.0.clone()));
        struct Restore(Option<Arc<FlowShared>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                context::with_current(|c| c.flow = previous);
            }
        }
        let _restore = Restore(previous);
        f()
    }
}

impl fmt::Debug for FlowHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowHandle")
            .field("name", &self.0.name)
            .field("id", &self.0.id)
            .finish()
    }
}

/// A flow-like context with its own task runner: tasks submitted inside
/// [`Scope::enter`] run on that runner and are tracked by the scope, which
/// can wait for them and report their failures.
///
/// ```
/// use std::sync::Arc;
/// use flowrun_core::{Scope, ThreadPoolTaskRunner};
///
/// let scope = Scope::start("script", Arc::new(ThreadPoolTaskRunner::new(2))).unwrap();
/// scope.enter(|| { /* task.submit(...) runs on the scope's runner */ });
/// let failures = scope.close();
/// assert!(failures.is_empty());
/// ```
pub struct Scope {
    handle: FlowHandle,
}

impl Scope {
    /// Starts `runner` for a new scope named `name`.
    pub fn start(
        name: impl Into<String>,
        runner: Arc<dyn TaskRunner>,
    ) -> Result<Scope, RunnerError> {
        crate::logging::init();
        let name = name.into();
        let shared = Arc::new(FlowShared::new(
            crate::names::random_id(),
            name.clone(),
            name,
            runner.clone(),
            false,
        ));
        let handle = FlowHandle(shared);
        runner.start(&FlowRunInfo {
            flow_name: handle.name().to_owned(),
            flow_run_name: handle.name().to_owned(),
            flow_run_id: handle.id().to_owned(),
            parent_flow_run_id: None,
            flow: handle.clone(),
            parameters: None,
            tags: Vec::new(),
            history: false,
        })?;
        Ok(Scope { handle })
    }

    /// The scope's handle.
    pub fn handle(&self) -> &FlowHandle {
        &self.handle
    }

    /// Runs `f` with task submissions going to this scope.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        self.handle.enter(f)
    }

    /// Waits until every run submitted in the scope is final, and returns
    /// the failures nothing handled since the last call.
    pub fn wait(&self) -> Vec<TaskRunFailure> {
        self.handle.0.wait_idle();
        self.handle
            .0
            .take_failures()
            .into_iter()
            .filter(|f| !f.observed)
            .collect()
    }

    /// Waits for every run, stops the runner, and returns the failures
    /// nothing handled.
    pub fn close(self) -> Vec<TaskRunFailure> {
        let failures = self.wait();
        self.handle.0.close();
        self.handle.0.runner.shutdown();
        failures
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("name", &self.handle.0.name)
            .finish()
    }
}

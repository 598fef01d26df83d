//! `get_dask_client()`: a client of the cluster behind the code that calls
//! it, to submit more work to that cluster and gather the results.
//!
//! - In a flow run that uses a `DaskTaskRunner`: the flow's cluster.
//! - In a task running on one of its workers: the same cluster, reached
//!   through the worker. While the task blocks on the client (gathering,
//!   waiting), its worker slot is free for other tasks, so even a
//!   one-thread worker cannot deadlock on work it submitted. The task
//!   finishes only after the runs it submitted are final.
//! - In a task on a real Dask cluster (`DaskTaskRunner::address`, or a
//!   Python cluster class): a client of that cluster's scheduler. The task
//!   secedes from its worker thread first, like Dask's `worker_client`.
//! - Outside any flow: a temporary cluster started by the client (see
//!   [`Client::start`]), closed when the client is dropped.
//!
//! ```no_run
//! use flowrun::{flow, task};
//! use flowrun_dask::{get_dask_client, DaskTaskRunner};
//!
//! #[task]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! #[task]
//! fn sum_of_squares(n: u64) -> u64 {
//!     let client = get_dask_client().expect("on a Dask cluster");
//!     let futures = client.map(&square, (0..n).map(|i| (i,)));
//!     client.gather(futures).expect("squares cannot fail").into_iter().sum()
//! }
//!
//! #[flow(task_runner = DaskTaskRunner::default())]
//! fn pipeline() -> u64 {
//!     sum_of_squares.submit(10).result().unwrap()
//! }
//! # fn main() { pipeline().unwrap(); }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};

use flowrun_core::plumbing::lock;
use flowrun_core::{FlowHandle, IntoInputs, RunRef, Scope, SerializedTask, TaskError, TaskFuture};

use crate::local::forward::{self, TaskScope};
use crate::runner::DaskTaskRunner;

/// Why no client could be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError(String);

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

enum Place {
    /// The flow run's own cluster, from the flow's process.
    Flow(FlowHandle),
    /// The cluster of the worker this task runs on.
    Worker(Arc<TaskScope>),
    /// A temporary cluster this client started and closes.
    Owned(Option<Scope>),
}

/// A client of a Dask-style cluster: submit registered tasks, map them, and
/// gather their results. See [`get_dask_client`].
pub struct Client {
    place: Place,
    submitted: Mutex<Vec<RunRef>>,
}

/// The client of the cluster behind the calling code (see the module docs).
pub fn get_dask_client() -> Result<Client, ClientError> {
    if let Some(scope) = forward::task_scope() {
        return Ok(Client::new(Place::Worker(scope)));
    }
    if let Some(task) = crate::distributed::dask_task() {
        // A task on a real Dask worker: a client of the worker's scheduler.
        // The task waits for what it submits, so its worker thread goes to
        // other tasks meanwhile, as with Dask's `worker_client`.
        let address = task.scheduler().ok_or_else(|| {
            ClientError(
                "this task runs in task mode without a Dask worker that names its scheduler".into(),
            )
        })?;
        task.secede();
        return Client::start(
            DaskTaskRunner::new()
                .address(address)
                .security(task.security().clone()),
        );
    }
    if let Some(flow) = flowrun_core::current_flow_handle() {
        if crate::cluster::current_cluster().is_none() {
            return Err(ClientError(format!(
                "flow run '{}' does not run its tasks on a DaskTaskRunner, so it has no Dask cluster to give a client of",
                flow.name()
            )));
        }
        return Ok(Client::new(Place::Flow(flow)));
    }
    Client::start(DaskTaskRunner::default())
}

/// The async form of [`get_dask_client`]: the same client, whose
/// [`gather`](AsyncClient::gather) is awaited instead of blocking.
pub fn get_async_dask_client() -> Result<AsyncClient, ClientError> {
    get_dask_client().map(|client| AsyncClient { client })
}

impl Client {
    fn new(place: Place) -> Client {
        Client {
            place,
            submitted: Mutex::new(Vec::new()),
        }
    }

    /// Starts a temporary cluster with `runner`'s settings, outside any flow
    /// (for scripts and tests). It closes when the client is dropped, after
    /// every run submitted through it is final.
    pub fn start(runner: DaskTaskRunner) -> Result<Client, ClientError> {
        flowrun_core::worker::divert_if_worker();
        let scope = Scope::start("dask-client", Arc::new(runner))
            .map_err(|e| ClientError(format!("could not start a cluster for the client: {e}")))?;
        Ok(Client::new(Place::Owned(Some(scope))))
    }

    fn handle(&self) -> &FlowHandle {
        match &self.place {
            Place::Flow(h) => h,
            Place::Worker(ts) => ts.scope.handle(),
            Place::Owned(scope) => scope.as_ref().expect("present until drop").handle(),
        }
    }

    /// Runs `f` with `.submit(...)`/`.map(...)` of tasks going to this
    /// client's cluster.
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        self.handle().enter(f)
    }

    /// Submits a run of `task` with `args` (a tuple: `(3,)`, `(future, "x")`)
    /// to the cluster.
    pub fn submit<T: SerializedTask>(
        &self,
        task: &T,
        args: impl IntoInputs<T::Args>,
    ) -> TaskFuture<T::Output> {
        let future = self.scope(|| flowrun_core::submit(task, args.into_inputs()));
        lock(&self.submitted).push(future.run_ref());
        future
    }

    /// Submits one run of `task` per element of `items` (each a tuple of
    /// arguments).
    pub fn map<T, I>(&self, task: &T, items: I) -> Vec<TaskFuture<T::Output>>
    where
        T: SerializedTask,
        I: IntoIterator,
        I::Item: IntoInputs<T::Args>,
    {
        items
            .into_iter()
            .map(|args| self.submit(task, args))
            .collect()
    }

    /// Waits for `futures` and returns their results in order, stopping at
    /// the first failure. Blocking here frees the caller's worker slot.
    pub fn gather<T: Send + 'static>(
        &self,
        futures: impl IntoIterator<Item = TaskFuture<T>>,
    ) -> Result<Vec<T>, TaskError> {
        flowrun_core::results(futures)
    }

    /// Workers, queues and waiting tasks of the cluster, when this process
    /// can see them (not from a worker).
    pub fn status(&self) -> Option<crate::ClusterStatus> {
        self.scope(|| crate::cluster::current_cluster().and_then(|c| c.status()))
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match &self.place {
            Place::Flow(_) => "flow",
            Place::Worker(_) => "worker",
            Place::Owned(_) => "temporary cluster",
        };
        f.debug_struct("Client")
            .field("place", &place)
            .field("run", &self.handle().name())
            .finish()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let submitted = std::mem::take(&mut *lock(&self.submitted));
        let unresolved: Vec<String> = submitted
            .iter()
            .filter(|r| !r.state().is_final())
            .map(|r| r.name())
            .collect();
        match &mut self.place {
            Place::Owned(scope) => {
                if let Some(scope) = scope.take() {
                    if !unresolved.is_empty() {
                        tracing::info!(
                            target: "flowrun_dask::client",
                            "The client waits for {} unresolved future(s) before closing its cluster",
                            unresolved.len()
                        );
                    }
                    for failure in scope.close() {
                        tracing::error!(
                            target: "flowrun_dask::client",
                            "Task run '{}' submitted through the client failed and nothing handled it: {}",
                            failure.task_run,
                            failure.error.message()
                        );
                    }
                }
            }
            Place::Flow(_) | Place::Worker(_) => {
                if !unresolved.is_empty() {
                    tracing::warn!(
                        target: "flowrun_dask::client",
                        "The client was dropped with {} unresolved future(s) ({}); they keep running and {} waits for them",
                        unresolved.len(),
                        unresolved.join(", "),
                        if matches!(self.place, Place::Flow(_)) { "the flow run" } else { "the task" }
                    );
                }
            }
        }
    }
}

/// A client whose results are awaited (see [`get_async_dask_client`]).
#[derive(Debug)]
pub struct AsyncClient {
    client: Client,
}

impl AsyncClient {
    /// Submits a run of `task` with `args` to the cluster.
    pub fn submit<T: SerializedTask>(
        &self,
        task: &T,
        args: impl IntoInputs<T::Args>,
    ) -> TaskFuture<T::Output> {
        self.client.submit(task, args)
    }

    /// Submits one run of `task` per element of `items`.
    pub fn map<T, I>(&self, task: &T, items: I) -> Vec<TaskFuture<T::Output>>
    where
        T: SerializedTask,
        I: IntoIterator,
        I::Item: IntoInputs<T::Args>,
    {
        self.client.map(task, items)
    }

    /// Awaits `futures` and returns their results in order, stopping at the
    /// first failure. Awaiting frees the caller's worker slot.
    pub async fn gather<T: Send + 'static>(
        &self,
        futures: impl IntoIterator<Item = TaskFuture<T>>,
    ) -> Result<Vec<T>, TaskError> {
        let mut out = Vec::new();
        for f in futures {
            out.push(f.await?);
        }
        Ok(out)
    }

    /// The blocking client behind this one.
    pub fn blocking(&self) -> &Client {
        &self.client
    }
}

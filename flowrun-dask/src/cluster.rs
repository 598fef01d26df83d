//! The `Cluster` trait a `DaskTaskRunner` runs tasks on, what every cluster
//! reports ([`ClusterStatus`], the [`TaskStream`]), how a worker program is
//! started again, the ways to name which cluster to start
//! (`cluster_class`), and a handle on the cluster of the current flow run.
//!
//! The local cluster (`local/`) and the bridge to a real Dask cluster
//! (`remote/`) share this module and nothing else.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use flowrun_core::plumbing::lock;
use flowrun_core::TaskCall;

mod command;
mod status;

pub(crate) use command::worker_command;
pub use status::{ClusterStatus, TaskStream, TaskStreamEntry, WaitingTask, WorkerStatus};

use crate::local::LocalCluster;
use crate::settings::{ClientKwargs, ClusterKwargs, SettingsError};

/// A cluster that executes serialized task attempts.
pub trait Cluster: Send + Sync + 'static {
    /// A short description for logs, such as `LocalCluster(2 workers x 1 thread)`.
    fn describe(&self) -> String;

    /// Hands over one attempt; report its outcome through the call's job.
    fn submit(&self, call: TaskCall);

    /// Stops the cluster and everything it started.
    fn close(&self);

    /// `run` was cancelled before it started: drop its attempt if the
    /// cluster holds it (queued, or sent to a worker that has not started
    /// it), so it never runs.
    fn cancel(&self, run: &flowrun_core::RunRef) {
        let _ = run;
    }

    /// Workers, queues and waiting tasks, when the cluster can tell.
    fn status(&self) -> Option<ClusterStatus> {
        None
    }

    /// Changes the number of workers, when the cluster can.
    fn scale(&self, n: usize) {
        let _ = n;
    }

    /// Tells the cluster which flow run (or client scope) it serves, so that
    /// tasks running on it can submit more work into it.
    fn bind_flow(&self, flow: flowrun_core::FlowHandle) {
        let _ = flow;
    }

    /// Task stream entries after position `since`, when the cluster keeps them.
    fn task_stream(&self, since: u64) -> Option<TaskStream> {
        let _ = since;
        None
    }
}

impl Cluster for LocalCluster {
    fn describe(&self) -> String {
        let (n, t) = self.shape();
        format!(
            "LocalCluster({n} worker{} x {t} thread{}, scheduler at {})",
            if n == 1 { "" } else { "s" },
            if t == 1 { "" } else { "s" },
            self.address()
        )
    }

    fn submit(&self, call: TaskCall) {
        LocalCluster::submit(self, call)
    }

    fn close(&self) {
        LocalCluster::close(self)
    }

    fn cancel(&self, run: &flowrun_core::RunRef) {
        LocalCluster::cancel(self, run)
    }

    fn status(&self) -> Option<ClusterStatus> {
        LocalCluster::status(self)
    }

    fn scale(&self, n: usize) {
        LocalCluster::scale(self, n)
    }

    fn bind_flow(&self, flow: flowrun_core::FlowHandle) {
        LocalCluster::bind_flow(self, flow)
    }

    fn task_stream(&self, since: u64) -> Option<TaskStream> {
        LocalCluster::task_stream(self, since)
    }
}

/// A Rust cluster type the runner can start from `cluster_kwargs`.
pub trait StartCluster: Cluster + Sized {
    /// Starts a cluster with these settings.
    fn start(kwargs: &ClusterKwargs, client: &ClientKwargs) -> Result<Self, SettingsError>;
}

impl StartCluster for LocalCluster {
    fn start(kwargs: &ClusterKwargs, client: &ClientKwargs) -> Result<Self, SettingsError> {
        LocalCluster::start(kwargs, client)
    }
}

type Builder = Arc<
    dyn Fn(&ClusterKwargs, &ClientKwargs) -> Result<Box<dyn Cluster>, SettingsError> + Send + Sync,
>;

/// Which cluster a `DaskTaskRunner` starts for each flow run.
///
/// ```
/// use flowrun_dask::{ClusterClass, LocalCluster};
/// let by_type = ClusterClass::of::<LocalCluster>();
/// let by_function = ClusterClass::function(|kwargs, client| {
///     Ok(Box::new(LocalCluster::start(kwargs, client)?) as Box<dyn flowrun_dask::Cluster>)
/// });
/// # let _ = (by_type, by_function);
/// ```
#[derive(Clone)]
pub struct ClusterClass {
    pub(crate) name: String,
    pub(crate) build: Builder,
    /// The import path of a Python cluster-manager class, for classes that
    /// run in Python (`"distributed.LocalCluster"`).
    pub(crate) python: Option<String>,
}

impl ClusterClass {
    /// The Rust cluster type `C`.
    pub fn of<C: StartCluster>() -> ClusterClass {
        ClusterClass {
            name: std::any::type_name::<C>()
                .rsplit("::")
                .next()
                .unwrap_or("cluster")
                .to_owned(),
            build: Arc::new(|kwargs, client| {
                Ok(Box::new(C::start(kwargs, client)?) as Box<dyn Cluster>)
            }),
            python: None,
        }
    }

    /// A function that builds a custom cluster from the runner's settings.
    pub fn function(
        build: impl Fn(&ClusterKwargs, &ClientKwargs) -> Result<Box<dyn Cluster>, SettingsError>
            + Send
            + Sync
            + 'static,
    ) -> ClusterClass {
        ClusterClass {
            name: "custom cluster".into(),
            build: Arc::new(build),
            python: None,
        }
    }

    /// A Python cluster-manager class by import path, such as
    /// `"distributed.LocalCluster"` or `"dask_jobqueue.SLURMCluster"`:
    /// flowrun starts it from Python with `cluster_kwargs` and runs the
    /// flow's tasks on its stock Dask workers.
    pub fn python(import_path: impl Into<String>) -> ClusterClass {
        let path = import_path.into();
        ClusterClass {
            name: path.clone(),
            build: Arc::new(|_, _| {
                Err(SettingsError::new(
                    "cluster_class",
                    "a Python cluster class is started by the runner, not built directly",
                ))
            }),
            python: Some(path),
        }
    }

    /// The Python import path, for Python cluster classes.
    pub fn python_path(&self) -> Option<&str> {
        self.python.as_deref()
    }

    /// The class's name, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl From<&str> for ClusterClass {
    /// A Python class path (see [`ClusterClass::python`]).
    fn from(path: &str) -> ClusterClass {
        ClusterClass::python(path)
    }
}

impl From<String> for ClusterClass {
    fn from(path: String) -> ClusterClass {
        ClusterClass::python(path)
    }
}

impl fmt::Debug for ClusterClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterClass({})", self.name)
    }
}

/// The cluster serving a flow run, while it runs.
#[derive(Clone)]
pub struct ClusterHandle {
    cluster: Arc<dyn Cluster>,
}

impl ClusterHandle {
    /// A description for logs.
    pub fn describe(&self) -> String {
        self.cluster.describe()
    }

    /// Workers, queued tasks, and task runs that wait with the reason.
    pub fn status(&self) -> Option<ClusterStatus> {
        self.cluster.status()
    }

    /// Changes the number of workers.
    pub fn scale(&self, n: usize) {
        self.cluster.scale(n)
    }

    /// Task stream entries after position `since` (see [`crate::TaskStream`]).
    pub fn task_stream(&self, since: u64) -> Option<TaskStream> {
        self.cluster.task_stream(since)
    }
}

impl fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterHandle({})", self.cluster.describe())
    }
}

fn clusters() -> &'static Mutex<HashMap<String, Arc<dyn Cluster>>> {
    static CLUSTERS: OnceLock<Mutex<HashMap<String, Arc<dyn Cluster>>>> = OnceLock::new();
    CLUSTERS.get_or_init(Default::default)
}

pub(crate) fn register(flow_run_id: &str, cluster: Arc<dyn Cluster>) {
    lock(clusters()).insert(flow_run_id.to_owned(), cluster);
}

pub(crate) fn deregister(flow_run_id: &str) {
    lock(clusters()).remove(flow_run_id);
}

/// The cluster of the flow run this code runs in (in the flow's process),
/// if the flow uses a `DaskTaskRunner`.
pub fn current_cluster() -> Option<ClusterHandle> {
    let id = flowrun_core::current_flow_run_id()?;
    let cluster = lock(clusters()).get(&id).cloned()?;
    Some(ClusterHandle { cluster })
}

//! `DaskTaskRunner`: runs a flow's tasks on a cluster of worker processes.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use flowrun_core::plumbing::lock;
use flowrun_core::{
    AcceptsTask, Execution, FlowRunInfo, RunnerError, SerializedTask, TaskCall, TaskRunner,
};

use crate::cluster::{self, Cluster, ClusterClass};
use crate::distributed::{self, DistributedSettings};
use crate::local::LocalCluster;
use crate::settings::{AdaptKwargs, ClientKwargs, ClusterKwargs, SettingsError};

/// Runs a flow's tasks with Dask's scheduling semantics: priorities,
/// abstract resources, worker processes x threads.
///
/// By default every flow run starts a temporary [`LocalCluster`] shaped
/// from the core count (as Dask chooses) and closes it when the flow run
/// ends, also when it fails or panics.
///
/// As prefect-dask closes its cluster when the flow raises, a flow run
/// that fails, panics or times out does not wait for the task runs still
/// running: they end `Cancelled`, their results are dropped, the cluster
/// closes and its worker processes stop with it, and the flow returns at
/// once. Dropping an async flow's future (a `tokio::time::timeout`, a
/// `select!`, an aborted task) does the same, and the flow run ends
/// `Cancelled`.
///
/// Tasks move to worker processes serialized, so their arguments and
/// results must implement serde's `Serialize` and `DeserializeOwned`:
/// `#[flow(task_runner = DaskTaskRunner::default())]` makes that a compile
/// error for tasks that do not.
///
/// ```no_run
/// use flowrun::{flow, task};
/// use flowrun_dask::{ClusterKwargs, DaskTaskRunner};
///
/// #[task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[flow(task_runner = DaskTaskRunner::new()
///     .cluster_kwargs(ClusterKwargs::new().n_workers(4).threads_per_worker(2)))]
/// fn squares() -> Vec<u64> {
///     flowrun::results(square.map(0..10).unwrap()).unwrap()
/// }
///
/// fn main() {
///     println!("{:?}", squares().unwrap());
/// }
/// ```
#[must_use]
pub struct DaskTaskRunner {
    address: Option<String>,
    cluster_class: Option<ClusterClass>,
    cluster_kwargs: ClusterKwargs,
    adapt_kwargs: Option<AdaptKwargs>,
    client_kwargs: ClientKwargs,
    distributed: DistributedSettings,
    dashboard: crate::dashboard::RunnerDashboard,
    cluster: Mutex<Option<(String, Arc<dyn Cluster>)>>,
    /// Tag limits for the flow runs it serves (`tag_limit`).
    tag_limits: Vec<(String, u32)>,
}

impl Default for DaskTaskRunner {
    fn default() -> Self {
        DaskTaskRunner::new()
    }
}

impl Clone for DaskTaskRunner {
    /// The same settings, without the cluster of a running flow.
    fn clone(&self) -> Self {
        DaskTaskRunner {
            address: self.address.clone(),
            cluster_class: self.cluster_class.clone(),
            cluster_kwargs: self.cluster_kwargs.clone(),
            adapt_kwargs: self.adapt_kwargs.clone(),
            client_kwargs: self.client_kwargs.clone(),
            distributed: self.distributed.clone(),
            dashboard: self.dashboard.clone(),
            cluster: Mutex::new(None),
            tag_limits: self.tag_limits.clone(),
        }
    }
}

impl std::fmt::Debug for DaskTaskRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaskTaskRunner")
            .field("address", &self.address)
            .field("cluster_class", &self.cluster_class)
            .field("cluster_kwargs", &self.cluster_kwargs)
            .field("adapt_kwargs", &self.adapt_kwargs)
            .field("client_kwargs", &self.client_kwargs)
            .field("task_program", &self.distributed.task_program)
            .field("python", &self.distributed.python)
            .field("isolate_tasks", &self.distributed.isolate_tasks)
            .field("security", &self.distributed.security)
            .field("performance_report_path", &self.dashboard.report_path())
            .finish()
    }
}

impl DaskTaskRunner {
    /// A runner that starts a temporary local cluster for each flow run.
    pub fn new() -> DaskTaskRunner {
        DaskTaskRunner {
            address: None,
            cluster_class: None,
            cluster_kwargs: ClusterKwargs::default(),
            adapt_kwargs: None,
            client_kwargs: ClientKwargs::default(),
            distributed: DistributedSettings::default(),
            dashboard: Default::default(),
            cluster: Mutex::new(None),
            tag_limits: Vec::new(),
        }
    }

    /// Limits the task runs tagged `tag` of each flow run this runner
    /// serves to `slots` running at once across every worker of the
    /// cluster (see `flowrun::concurrency`). A limit the flow sets for the
    /// same tag wins; a limit of 0 keeps the flow run from starting.
    pub fn tag_limit(mut self, tag: impl Into<String>, slots: u32) -> Self {
        self.tag_limits.push((tag.into(), slots));
        self
    }

    flowrun_core::__setters! {
        /// Runs tasks on the existing cluster whose scheduler is at `address`
        /// (`tcp://host:8786`) instead of starting one.
        pub fn address(address: impl Into<String>) => address = Some(address.into());

        /// Which cluster to start for each flow run (by default [`LocalCluster`]).
        pub fn cluster_class(class: impl Into<ClusterClass>) => cluster_class = Some(class.into());

        /// Settings of the cluster to start.
        pub fn cluster_kwargs(kwargs: ClusterKwargs) => cluster_kwargs = kwargs;

        /// Scale the cluster adaptively between a minimum and a maximum.
        pub fn adapt_kwargs(kwargs: AdaptKwargs) => adapt_kwargs = Some(kwargs);

        /// Settings of the connection to the cluster.
        pub fn client_kwargs(kwargs: ClientKwargs) => client_kwargs = kwargs;

        /// On a real Dask cluster: the path of this program on the workers,
        /// which start it in task mode for every task (by default the path of
        /// the running program, for workers that share this machine's files).
        /// Set it when the workers run a container image with the program at
        /// another path. It must be the same build as the flow: a task-mode
        /// program of another build refuses the task with an error naming both
        /// builds.
        pub fn task_program(path: impl Into<std::path::PathBuf>) => distributed.task_program = Some(path.into());

        /// On a real Dask cluster: run every task attempt in a process of its
        /// own instead of in the flow's long-lived task processes.
        ///
        /// By default each Dask worker keeps task processes of the flow's
        /// program for the whole flow run (started on its first task, stopped
        /// when the flow run ends, at most one per worker thread) and each task
        /// is a call into one of them, which costs about as much as a Dask
        /// task of Python code. With `isolate_tasks(true)` each attempt starts
        /// the program afresh: nothing a task leaves behind (globals, threads,
        /// memory) reaches the next task, at the cost of a process start per
        /// task. Either way a task whose process dies fails as `Crashed`, and
        /// its `retries` apply.
        pub fn isolate_tasks(isolate: bool) => distributed.isolate_tasks = isolate;

        /// TLS settings for a `tls://` address: the cluster's CA and this
        /// client's certificate and key, as Dask's
        /// `distributed.security.Security` takes them. A task that calls
        /// [`get_dask_client`](crate::get_dask_client) on such a cluster uses
        /// its worker's.
        ///
        /// ```
        /// use flowrun_dask::{protocol::Security, DaskTaskRunner};
        /// let runner = DaskTaskRunner::new().address("tls://scheduler:8786").security(
        ///     Security::new()
        ///         .tls_ca_file("ca.pem")
        ///         .tls_client_cert("client.pem")
        ///         .tls_client_key("client-key.pem"),
        /// );
        /// # let _ = runner;
        /// ```
        pub fn security(security: crate::protocol::Security) => distributed.security = security;

        /// The Python executable that starts a Python `cluster_class` (by
        /// default `$FLOWRUN_PYTHON`, else `python3`). It needs the class's
        /// package installed (`distributed` for `distributed.LocalCluster`).
        pub fn python(executable: impl Into<std::path::PathBuf>) => distributed.python = Some(executable.into());
    }

    /// At the end of each flow run, write a performance report to `path`:
    /// one HTML file (it opens without a network) with the task stream and
    /// a summary (task runs per task name, durations, throughput, workers
    /// over time). Like Dask's `performance_report`.
    ///
    /// ```
    /// use flowrun_dask::DaskTaskRunner;
    /// let runner = DaskTaskRunner::new().performance_report_path("dask-report.html");
    /// # let _ = runner;
    /// ```
    pub fn performance_report_path(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.dashboard.set_report_path(path.into());
        self
    }

    /// Checks the settings without starting anything.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.address.is_some() {
            let conflict = if self.cluster_class.is_some() {
                Some("cluster_class")
            } else if !self.cluster_kwargs.is_empty() {
                Some("cluster_kwargs")
            } else if self.adapt_kwargs.is_some() {
                Some("adapt_kwargs")
            } else {
                None
            };
            if let Some(other) = conflict {
                return Err(SettingsError::new(
                    format!("address + {other}"),
                    format!(
                        "`address` joins an existing cluster, so it cannot be combined with `{other}`, which configures a cluster to start"
                    ),
                ));
            }
        }
        if let Some(a) = &self.adapt_kwargs {
            a.validate()?;
        }
        self.client_kwargs.validate()?;
        if self.address.is_none() && self.cluster_class.is_none() {
            self.cluster_kwargs.validate_local()?;
        }
        Ok(())
    }

    /// Tasks run on stock Dask workers (an existing scheduler, or a Python
    /// cluster class).
    fn uses_real_dask(&self) -> bool {
        self.address.is_some()
            || self
                .cluster_class
                .as_ref()
                .is_some_and(|c| c.python.is_some())
    }

    fn start_cluster(&self) -> Result<Arc<dyn Cluster>, RunnerError> {
        self.validate()
            .map_err(|e| RunnerError::new(e.to_string()))?;
        if let Some(address) = &self.address {
            return distributed::connect(address, &self.client_kwargs, &self.distributed)
                .map_err(RunnerError::new);
        }
        if let Some(class) = self.cluster_class.as_ref().and_then(|c| c.python_path()) {
            return distributed::start_python(
                class,
                &self.cluster_kwargs,
                self.adapt_kwargs.as_ref(),
                &self.client_kwargs,
                &self.distributed,
            )
            .map_err(RunnerError::new);
        }
        let cluster: Arc<dyn Cluster> = match &self.cluster_class {
            None => Arc::new(
                LocalCluster::start_adaptive(
                    &self.cluster_kwargs,
                    &self.client_kwargs,
                    self.adapt_kwargs.as_ref(),
                )
                .map_err(|e| RunnerError::new(e.to_string()))?,
            ),
            Some(class) => Arc::from(
                (class.build)(&self.cluster_kwargs, &self.client_kwargs)
                    .map_err(|e| RunnerError::new(e.to_string()))?,
            ),
        };
        Ok(cluster)
    }
}

impl TaskRunner for DaskTaskRunner {
    fn name(&self) -> Cow<'static, str> {
        "DaskTaskRunner".into()
    }

    fn execution(&self) -> Execution {
        // A real Dask cluster moves dependency data between its workers
        // itself; the local cluster gets resolved arguments.
        if self.uses_real_dask() {
            Execution::SerializedWithDependencies
        } else {
            Execution::Serialized
        }
    }

    fn runs_task_hooks(&self) -> bool {
        // Local workers and task-mode processes call a task's hooks around
        // its attempt, as Prefect does where the task runs.
        true
    }

    fn start(&self, flow: &FlowRunInfo) -> Result<(), RunnerError> {
        // Slots live in this process: the engine takes them before an
        // attempt reaches the cluster, so they hold on every kind of cluster.
        flowrun_core::concurrency::flow_limits(&flow.flow)
            .set_tag_limits(&self.tag_limits)
            .map_err(|e| RunnerError::new(e.to_string()))?;
        let cluster = self.start_cluster()?;
        let run = format!("Flow run '{}'", flow.flow_run_name);
        if self.address.is_some() {
            // Prefect-dask's words: the cluster is not this flow run's own.
            tracing::info!(
                target: "flowrun_dask",
                { flowrun.run = run },
                "Connecting to an existing Dask cluster: {}",
                cluster.describe()
            );
        } else {
            tracing::info!(
                target: "flowrun_dask",
                { flowrun.run = run },
                "Created a temporary cluster for this flow run: {}",
                cluster.describe()
            );
        }
        cluster.bind_flow(flow.flow.clone());
        cluster::register(&flow.flow_run_id, cluster.clone());
        let dask = self.address.is_some()
            || self
                .cluster_class
                .as_ref()
                .is_some_and(|c| c.python_path().is_some());
        self.dashboard
            .start(flow, &cluster, &self.cluster_kwargs, dask);
        *lock(&self.cluster) = Some((flow.flow_run_id.clone(), cluster));
        Ok(())
    }

    fn submit(&self, call: TaskCall) {
        let cluster = lock(&self.cluster).as_ref().map(|(_, c)| c.clone());
        match cluster {
            Some(c) => c.submit(call),
            None => {
                if let flowrun_core::Work::Serialized(job) = call.into_work() {
                    job.refuse("DaskTaskRunner was not started");
                }
            }
        }
    }

    fn cancel(&self, run: &flowrun_core::RunRef) {
        let cluster = lock(&self.cluster).as_ref().map(|(_, c)| c.clone());
        if let Some(c) = cluster {
            c.cancel(run);
        }
    }

    /// Yes: as prefect-dask closes its cluster when the flow raises, a
    /// failing, panicking or timed-out flow run stops the task runs still
    /// running on the cluster (they end `Cancelled`) and returns at once,
    /// and its workers stop with the cluster.
    fn stops_running_on_failure(&self) -> bool {
        true
    }

    fn shutdown(&self) {
        let taken = lock(&self.cluster).take();
        if let Some((flow_run_id, cluster)) = taken {
            self.dashboard.stop();
            cluster.close();
            cluster::deregister(&flow_run_id);
            if self.address.is_some() {
                tracing::debug!(target: "flowrun_dask", "Disconnected from the Dask cluster {}", cluster.describe());
            } else {
                tracing::debug!(target: "flowrun_dask", "Closed the temporary cluster {}", cluster.describe());
            }
        }
    }
}

impl<T: SerializedTask> AcceptsTask<T> for DaskTaskRunner {}

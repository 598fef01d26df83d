//! Running a flow's tasks on a real Dask cluster: an existing scheduler
//! (`address`) or one started from a Python cluster-manager class
//! (`cluster_class = "distributed.LocalCluster"`).
//!
//! The flow's process is a Dask client (the `protocol` module). Each task
//! attempt becomes one Dask task that stock Python workers run with a small
//! Python shim shipped with the task (`shim.py`): it starts the flow's
//! own program in *task mode* (`task_mode`) as a subprocess, arguments in on
//! stdin, result out on stdout. Results stay on the workers: a dependent
//! task gets them from Dask, and the flow gathers one only when it reads it.
//! What a task prints comes back as events of a scheduler topic, attributed
//! to the task run.
//!
//! Keys are `<run name>-<flow run tag>-<attempt>`: a subflow's runs, whose
//! names restart, never take its parent's keys. A run cancelled before it
//! started is cancelled on the scheduler with the keys that depend on it.
//! Concurrency guards in task code take Dask semaphore leases (`slots`).
//!
//! One Dask key per attempt keeps Dask's per-task cost (the bulk of the time
//! of small tasks) as low as Dask's own clients have it: the alternative of
//! separate keys for a task's data and its output would triple the keys.

mod format;
mod output;
mod python;
mod reads;
mod session;
mod slots;
mod task_mode;

pub(crate) use task_mode::dask_task;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use flowrun_core::plumbing::lock;
use flowrun_core::{Resources, RunRef, TaskCall, TaskError, TaskErrorKind};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::Cluster;
use crate::cluster::{worker_command, ClusterStatus, WaitingTask, WorkerStatus};
use crate::protocol::{DaskClient, PythonShim};
use crate::settings::{AdaptKwargs, ClientKwargs, ClusterKwargs};
use python::PythonCluster;
use session::{Attempt, Command, Session, TaskTemplate};

/// Settings of a runner that only matter on a real Dask cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DistributedSettings {
    /// The flow's program as the workers see it (default: this program).
    pub task_program: Option<PathBuf>,
    /// The Python that starts a cluster class (default `$FLOWRUN_PYTHON`,
    /// else `python3`).
    pub python: Option<PathBuf>,
    /// One process per task attempt instead of long-lived task processes.
    pub isolate_tasks: bool,
    /// TLS settings for a `tls://` address.
    pub security: crate::protocol::Security,
}

/// How long a task runs before it reports that it started: reporting costs
/// the scheduler about as much as a small task, so short tasks show as
/// started when they finish.
const QUIET_START: Duration = Duration::from_millis(100);

/// How long asking for the cluster's status may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closing the session may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `fut` on flowrun's runtime and waits for it from this thread,
/// without entering a runtime here (the caller may be inside its own).
pub(crate) fn block_on<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
    timeout: Duration,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let handle = flowrun_core::runtime().spawn(async move {
        if let Ok(value) = tokio::time::timeout(timeout, fut).await {
            let _ = tx.send(value);
        }
    });
    let wait = || rx.recv_timeout(timeout + Duration::from_secs(1)).ok();
    let on_own_runtime = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.id() == flowrun_core::runtime().handle().id());
    let value = if on_own_runtime {
        // Keep the runtime's other tasks going while this thread waits.
        tokio::task::block_in_place(wait)
    } else {
        wait()
    };
    if value.is_none() {
        handle.abort();
    }
    value
}

/// The scheduler topic on which a session's tasks report: one per session,
/// so that a flow receives no other flow's events.
fn topic(session: &str) -> String {
    format!("{session}-events")
}

/// The Python shim of a session's tasks: unless `isolate`, they are calls
/// into the session's long-lived task processes.
fn python_shim(session: &str, isolate: bool) -> Arc<PythonShim> {
    let mut shim = PythonShim::clone(&base_shim());
    shim.params.insert("topic".to_owned(), topic(session));
    // The session's worker plugin compiles the module on every worker.
    shim.installed = true;
    if !isolate {
        shim.params.extend([
            ("session".to_owned(), session.to_owned()),
            ("serve_env".to_owned(), format::SERVE_ENV.to_owned()),
            ("shared_env".to_owned(), format::SHARED_ENV.to_owned()),
            ("failed_exit".to_owned(), format::FAILED_EXIT.to_string()),
        ]);
    }
    Arc::new(shim)
}

/// The Python shim's source and the parameters every session shares.
fn base_shim() -> Arc<PythonShim> {
    static SHIM: OnceLock<Arc<PythonShim>> = OnceLock::new();
    SHIM.get_or_init(|| {
        let source = include_str!("shim.py").to_owned();
        let hash = blake3::hash(source.as_bytes()).to_hex();
        Arc::new(PythonShim {
            module: format!("_flowrun_shim_{}", &hash[..16]),
            params: [
                ("env", format::TASK_ENV.to_owned()),
                ("scheduler_env", format::SCHEDULER_ENV.to_owned()),
                ("control_env", format::CONTROL_ENV.to_owned()),
                ("tls_env", format::TLS_ENV.join(",")),
                (
                    "magic",
                    format::RESULT_MAGIC
                        .iter()
                        .map(|&b| char::from(b))
                        .collect(),
                ),
                ("quiet", QUIET_START.as_secs_f64().to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            source,
            installed: false,
        })
    })
    .clone()
}

/// The flow's program and arguments as the workers run them.
fn task_argv(settings: &DistributedSettings) -> Result<Vec<Vec<u8>>, String> {
    use std::os::unix::ffi::OsStrExt;
    // The program is this one's absolute path unless the shim names the
    // path the workers see.
    let (program, args) = worker_command(settings.task_program.as_deref())?;
    Ok(std::iter::once(program.as_os_str().as_bytes().to_vec())
        .chain(args.iter().map(|a| a.as_bytes().to_vec()))
        .collect())
}

/// A real Dask cluster serving one flow run.
pub(crate) struct DaskCluster {
    description: String,
    address: String,
    client: Arc<DaskClient>,
    commands: mpsc::UnboundedSender<Command>,
    /// Eight random hex digits, for the keys of runs whose flow run id is
    /// not known.
    tag: OnceLock<String>,
    python: Option<PythonCluster>,
    closed: Mutex<bool>,
}

impl DaskCluster {
    fn connect(
        address: &str,
        client_kwargs: &ClientKwargs,
        settings: &DistributedSettings,
        python: Option<PythonCluster>,
    ) -> Result<DaskCluster, String> {
        let argv = task_argv(settings)?;
        let timeout = client_kwargs.timeout;
        let target = address.to_owned();
        let isolate = settings.isolate_tasks;
        let security = settings.security.clone();
        let connected = block_on(
            async move {
                let client = DaskClient::connect_with(&target, timeout, &security).await?;
                let session = client.client_id().to_owned();
                client.subscribe_topic(&topic(&session)).await?;
                let shim = python_shim(&session, isolate);
                // On every worker, also those that join later: the shim's
                // module, and the session's task processes for as long as
                // the plugin is there.
                client
                    .register_worker_plugin(&session, shim.plugin_pickle("Plugin"))
                    .await?;
                Ok::<_, crate::protocol::ProtocolError>((client, session, shim))
            },
            timeout + Duration::from_secs(5),
        );
        let (client, session, shim) = match connected {
            Some(Ok((client, session, shim))) => (Arc::new(client), session, shim),
            Some(Err(e)) => return Err(e.to_string()),
            None => {
                return Err(format!(
                "timed out after {timeout:?} while connecting to the Dask scheduler at {address}"
            ))
            }
        };
        let events = client
            .events()
            .ok_or("the Dask client's events were already taken")?;
        let (commands, inbox) = mpsc::unbounded_channel();
        let template = TaskTemplate {
            argv,
            shim,
            build: crate::build_id::current().to_owned(),
            plugin: session.clone(),
            topic: topic(&session),
        };
        flowrun_core::runtime().spawn(Session::run(
            client.clone(),
            template,
            events,
            commands.downgrade(),
            inbox,
        ));
        let version = client.scheduler_version().to_owned();
        let description = match &python {
            Some(p) => format!(
                "{} (scheduler at {address}, distributed {version})",
                p.class()
            ),
            None => format!("Dask cluster at {address} (distributed {version})"),
        };
        Ok(DaskCluster {
            description,
            address: address.to_owned(),
            client,
            commands,
            tag: OnceLock::new(),
            python,
            closed: Mutex::new(false),
        })
    }

    /// The short id of the flow run `run` belongs to, for its keys: task
    /// run names restart in each flow run, and subflows share their
    /// parent's cluster, so the name alone would give a subflow's `t-0` the
    /// parent's key.
    fn tag(&self, run: &RunRef) -> String {
        match flow_tag(run.flow_run_id()) {
            Some(tag) => tag,
            None => self
                .tag
                .get_or_init(|| format!("{:08x}", fastrand::u32(..)))
                .clone(),
        }
    }
}

/// Eight hex digits of a flow run id (a UUID), if it has them. Dask's
/// dashboard groups keys by their prefix up to the first word that is a
/// number or eight hex digits, so `double-0-1a2b3c4d-1` groups as `double`.
fn flow_tag(flow_run_id: &str) -> Option<String> {
    let tag: String = flow_run_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (tag.len() == 8).then_some(tag)
}

/// The Dask key of an attempt: `<run name>-<flow run tag>-<attempt>`.
fn attempt_key(run_name: &str, tag: &str, attempt: u32) -> String {
    format!("{run_name}-{tag}-{attempt}")
}

impl Cluster for DaskCluster {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn submit(&self, call: TaskCall) {
        let attempt = call.attempt();
        let retries = call.retries();
        let Some((run, annotations, job)) =
            call.into_serialized_parts("a real Dask cluster runs tasks in other processes only")
        else {
            return;
        };
        let key = attempt_key(&run.name(), &self.tag(&run), attempt);
        let command = Command::Submit(Box::new(Attempt {
            key,
            run,
            may_retry: attempt <= retries,
            annotations,
            job,
        }));
        if let Err(mpsc::error::SendError(Command::Submit(attempt))) = self.commands.send(command) {
            attempt.job.finish(Err(TaskError::new(
                TaskErrorKind::Cancelled,
                format!(
                    "the session with the Dask scheduler at {} ended",
                    self.address
                ),
            )));
        }
    }

    fn cancel(&self, run: &RunRef) {
        // The session takes the run's key off the scheduler, if it holds
        // one that has not finished.
        let _ = self.commands.send(Command::Cancel(run.id().get()));
    }

    fn close(&self) {
        {
            let mut closed = lock(&self.closed);
            if *closed {
                return;
            }
            *closed = true;
        }
        let (done, answer) = oneshot::channel();
        if self.commands.send(Command::Close(done)).is_ok() {
            let waited = block_on(answer, CLOSE_TIMEOUT);
            if waited.is_none() {
                tracing::warn!(
                    target: "flowrun_dask",
                    "the session with the Dask scheduler at {} did not close within {}s",
                    self.address,
                    CLOSE_TIMEOUT.as_secs()
                );
            }
        }
        let client = self.client.clone();
        // Normally already closed by the session; this covers a session
        // that ended early.
        let _ = block_on(async move { client.close().await }, CLOSE_TIMEOUT);
        if let Some(python) = &self.python {
            python.close();
        }
    }

    fn status(&self) -> Option<ClusterStatus> {
        let (answer, progress) = oneshot::channel();
        self.commands.send(Command::Status(answer)).ok()?;
        let client = self.client.clone();
        let (info, progress) = block_on(
            async move { (client.identity().await, progress.await) },
            STATUS_TIMEOUT,
        )?;
        let (info, progress) = (info.ok()?, progress.ok()?);
        let workers = info
            .workers
            .iter()
            .map(|w| {
                let resources = w
                    .resources
                    .iter()
                    .fold(Resources::new(), |r, (k, v)| r.with(k.as_str(), *v));
                WorkerStatus {
                    name: w.name.clone(),
                    pid: None,
                    state: match w.status.as_deref() {
                        Some("running") | None => "running",
                        Some("paused") => "paused",
                        Some("init") => "starting",
                        Some(_) => "closing",
                    },
                    nthreads: w.nthreads as usize,
                    free_resources: resources.clone(),
                    resources,
                    running: Vec::new(),
                    queued: 0,
                }
            })
            .collect();
        let (waiting, queued): (Vec<_>, Vec<_>) = progress
            .pending
            .into_iter()
            .partition(|(_, needs)| !info.can_satisfy(needs));
        Some(ClusterStatus {
            address: self.address.clone(),
            workers,
            queued: queued.len(),
            waiting: waiting
                .into_iter()
                .map(|(run, needs)| WaitingTask {
                    run,
                    reason: format!(
                        "it needs resources {needs:?}, which no worker of the Dask cluster offers"
                    ),
                })
                .collect(),
            finished: progress.finished,
            ..ClusterStatus::default()
        })
    }

    fn scale(&self, n: usize) {
        match &self.python {
            Some(python) => python.scale(n),
            None => tracing::warn!(
                target: "flowrun_dask",
                "the Dask cluster at {} was not started by this flow run, so it cannot be scaled",
                self.address
            ),
        }
    }
}

/// Connects to the running Dask scheduler at `address`.
pub(crate) fn connect(
    address: &str,
    client_kwargs: &ClientKwargs,
    settings: &DistributedSettings,
) -> Result<Arc<dyn Cluster>, String> {
    Ok(Arc::new(DaskCluster::connect(
        address,
        client_kwargs,
        settings,
        None,
    )?))
}

/// Starts the Python cluster-manager class `class` and connects to it.
pub(crate) fn start_python(
    class: &str,
    cluster_kwargs: &ClusterKwargs,
    adapt_kwargs: Option<&AdaptKwargs>,
    client_kwargs: &ClientKwargs,
    settings: &DistributedSettings,
) -> Result<Arc<dyn Cluster>, String> {
    let python = python::python_executable(settings.python.as_ref());
    let cluster = PythonCluster::start(
        class,
        cluster_kwargs,
        adapt_kwargs,
        &python,
        client_kwargs.startup_timeout,
    )?;
    tracing::debug!(
        target: "flowrun_dask",
        "{} started (helper pid {:?}), scheduler at {}",
        cluster.class(),
        cluster.pid(),
        cluster.address()
    );
    let address = cluster.address().to_owned();
    // On failure the cluster is dropped, which closes it.
    Ok(Arc::new(DaskCluster::connect(
        &address,
        client_kwargs,
        settings,
        Some(cluster),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_run_and_its_flow_run() {
        let tag = flow_tag("1A2B3C4D-0000-4000-8000-000000000000").unwrap();
        assert_eq!(tag, "1a2b3c4d");
        assert_eq!(attempt_key("double-0", &tag, 1), "double-0-1a2b3c4d-1");
        // Another flow run (a subflow) gives the same run name another key.
        let other = flow_tag("9f8e7d6c-0000-4000-8000-000000000000").unwrap();
        assert_ne!(
            attempt_key("double-0", &tag, 1),
            attempt_key("double-0", &other, 1)
        );
        // Without a flow run id the cluster's random tag is used.
        assert_eq!(flow_tag(""), None);
        assert_eq!(flow_tag("abc"), None);
    }
}

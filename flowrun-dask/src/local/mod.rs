//! `LocalCluster`: a scheduler in the flow's process and worker processes
//! (or threads) on this machine, connected over loopback TCP.

pub(crate) mod forward;
mod launch;
mod output;
mod scheduler;
mod slots;
mod store;
mod transport;
mod wire;
pub(crate) mod worker;

use std::collections::HashSet;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use flowrun_core::plumbing::lock;
use flowrun_core::{Resources, TaskCall};

pub(crate) use crate::cluster::{ClusterStatus, TaskStream, TaskStreamEntry};

use scheduler::{Call, Expected, Scheduler};

/// What the scheduler of a running cluster reacts to.
type Event = scheduler::Event<Call>;

use crate::settings::{AdaptKwargs, ClientKwargs, ClusterKwargs, SettingsError};

/// A temporary cluster on this machine: a scheduler inside the flow's
/// process and `n_workers` worker processes of `threads_per_worker` threads
/// each (or worker threads, with `processes(false)`).
///
/// Only the processes it starts can join: each proves it holds the
/// cluster's secret and is the same build. The scheduler listens on
/// 127.0.0.1 only.
pub struct LocalCluster {
    events: Sender<Event>,
    listener_fd: RawFd,
    closed: Arc<AtomicBool>,
    address: String,
    shape: (usize, usize),
    resources: Resources,
    scheduler: Mutex<Option<JoinHandle<()>>>,
    done: Receiver<()>,
    store: Arc<store::Store>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("address", &self.address)
            .field("n_workers", &self.shape.0)
            .field("threads_per_worker", &self.shape.1)
            .finish()
    }
}

impl LocalCluster {
    /// Starts the scheduler and launches the workers; returns at once (the
    /// workers connect in the background, submitted tasks wait for them).
    pub fn start(
        kwargs: &ClusterKwargs,
        client: &ClientKwargs,
    ) -> Result<LocalCluster, SettingsError> {
        LocalCluster::start_adaptive(kwargs, client, None)
    }

    /// Starts a cluster that scales between `adapt`'s minimum and maximum
    /// (see [`AdaptKwargs`]): it starts with `n_workers` when given, else
    /// with the minimum.
    pub fn start_adaptive(
        kwargs: &ClusterKwargs,
        client: &ClientKwargs,
        adapt: Option<&AdaptKwargs>,
    ) -> Result<LocalCluster, SettingsError> {
        if let Some(a) = adapt {
            a.validate()?;
        }
        kwargs.validate_local()?;
        client.validate()?;
        let (mut n_workers, nthreads) = kwargs.shape()?;
        if let (Some(a), None) = (adapt, kwargs.n_workers) {
            // An adaptive cluster starts at its minimum unless told otherwise.
            n_workers = a.minimum as usize;
        }
        let resources = kwargs.worker_resources()?;
        let memory_limit = kwargs.memory_limit_bytes(n_workers)?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| {
            SettingsError::new("cluster", format!("cannot listen on 127.0.0.1: {e}"))
        })?;
        let address = listener
            .local_addr()
            .map_err(|e| SettingsError::new("cluster", e.to_string()))?
            .to_string();
        // Fails closed: without the kernel's randomness there is no secret
        // worth the name, so no cluster.
        let secret = transport::handshake::new_secret().map_err(|e| {
            SettingsError::new("cluster", format!("cannot make the cluster's secret: {e}"))
        })?;
        let build = crate::build_id::current().to_owned();
        let store = store::Store::create().map_err(|e| {
            SettingsError::new(
                "cluster",
                format!(
                    "cannot create the cluster's result store (in /dev/shm or the temp dir): {e}"
                ),
            )
        })?;
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let expected: Expected = Arc::new(Mutex::new(HashSet::new()));
        let listener_fd = listener.as_raw_fd();
        let closed = Arc::new(AtomicBool::new(false));
        let gate = transport::handshake::Gate {
            secret,
            build: build.clone(),
            expected: expected.clone(),
        };
        transport::accept::spawn(listener, gate, events_tx.clone(), closed.clone())
            .map_err(|e| SettingsError::new("cluster", e.to_string()))?;

        let config = worker::WorkerConfig {
            address: address.clone(),
            secret: flowrun_core::plumbing::hex(&secret),
            worker: 0,
            name: String::new(),
            nthreads,
            build,
            store_id: store.id(),
            store_dir: store.dir().to_owned(),
            // Worker threads would keep values in the flow's own heap.
            keep_bytes: if kwargs.processes.unwrap_or(true) {
                store::keep_budget(memory_limit)
            } else {
                0
            },
        };
        let sched_cfg = scheduler::Config {
            address: address.clone(),
            n_workers,
            nthreads,
            resources: resources.clone(),
            allowed_failures: kwargs.allowed_failures.unwrap_or(3),
            no_workers_timeout: kwargs.no_workers_timeout,
            startup_timeout: client.startup_timeout,
            memory_limit,
            adapt: adapt.map(|a| scheduler::Adapt {
                minimum: a.minimum as usize,
                maximum: a.maximum.map(|m| m as usize),
                interval: a.interval,
                wait_count: a.wait_count,
                target_duration: a.target_duration,
            }),
        };
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let handle = if kwargs.processes.unwrap_or(true) {
            let (program, args) = crate::cluster::worker_command(kwargs.worker_program.as_deref())
                .map_err(|e| SettingsError::new("cluster", e))?;
            let launcher = launch::ProcessLauncher {
                program,
                args,
                config,
                events: events_tx.clone(),
                expected,
                pids: Default::default(),
            };
            spawn_scheduler(Scheduler::new(sched_cfg, launcher), events_rx, done_tx)
        } else {
            let launcher = launch::ThreadLauncher {
                config,
                events: events_tx.clone(),
                expected,
                sockets: Default::default(),
            };
            spawn_scheduler(Scheduler::new(sched_cfg, launcher), events_rx, done_tx)
        }
        .map_err(|e| SettingsError::new("cluster", e.to_string()))?;
        Ok(LocalCluster {
            events: events_tx,
            listener_fd,
            closed,
            address,
            shape: (n_workers, nthreads),
            resources,
            scheduler: Mutex::new(Some(handle)),
            done: done_rx,
            store,
        })
    }

    /// The scheduler's address (always on 127.0.0.1).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `(workers, threads per worker)`.
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }

    /// The resources each worker offers.
    pub fn worker_resources(&self) -> &Resources {
        &self.resources
    }

    /// Hands an attempt to the scheduler.
    pub fn submit(&self, call: TaskCall) {
        let Some((run, annotations, job)) =
            call.into_serialized_parts("DaskTaskRunner runs serialized calls only")
        else {
            return;
        };
        let event = Event::Submit {
            attempt: Call::new(run, job),
            priority: annotations.priority.unwrap_or(0),
            needs: annotations.resources,
        };
        if let Err(e) = self.events.send(event) {
            if let Event::Submit { attempt, .. } = e.into_inner() {
                scheduler::Attempt::finish(
                    attempt,
                    Err(flowrun_core::TaskError::new(
                        flowrun_core::TaskErrorKind::Runner,
                        "the cluster is closed",
                    )),
                );
            }
        }
    }

    /// Stops run `run`'s attempt if it has not started on a worker (the run
    /// was cancelled): it is dropped from the queue, or its worker is told
    /// to drop it.
    pub fn cancel(&self, run: &flowrun_core::RunRef) {
        let _ = self.events.send(Event::Cancel {
            run_id: run.id().get(),
        });
    }

    /// Workers, queued tasks, and tasks that wait with the reason they wait.
    pub fn status(&self) -> Option<ClusterStatus> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.events.send(Event::Status(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Task stream entries (one per task run executed, in the order they
    /// ended) after position `since`; pass the returned `next` next time.
    pub fn task_stream(&self, since: u64) -> Option<TaskStream> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.events.send(Event::Stream(since, tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Tells the scheduler which flow run it serves, so tasks running on
    /// workers can submit more work into it.
    pub fn bind_flow(&self, flow: flowrun_core::FlowHandle) {
        let _ = self.events.send(Event::BindFlow(flow));
    }

    /// Changes the number of workers.
    pub fn scale(&self, n: usize) {
        let _ = self.events.send(Event::Scale(n));
    }

    /// Stops every worker and the scheduler. Workers are told to leave;
    /// any still there after a grace period (one second: a stopped or hung
    /// process) are killed. Unfinished tasks fail as `Crashed`. Returns
    /// once every worker is gone; a second call returns at once.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wakes the acceptor out of accept(); it sees `closed` and stops.
        // SAFETY: shutting down a socket this cluster owns.
        unsafe {
            libc::shutdown(self.listener_fd, libc::SHUT_RDWR);
        }
        let _ = self.events.send(Event::Close);
        let limit = scheduler::CLOSE_GRACE + Duration::from_secs(5);
        if self.done.recv_timeout(limit).is_err() {
            tracing::warn!(target: "flowrun_dask::cluster", "The cluster did not close within {limit:?}");
            return;
        }
        if let Some(h) = lock(&self.scheduler).take() {
            let _ = h.join();
        }
        self.store.close();
    }
}

impl Drop for LocalCluster {
    /// Closes the cluster if nobody did: its workers never outlive it, and
    /// its stored results go with it (also when closing timed out).
    fn drop(&mut self) {
        self.close();
        self.store.close();
    }
}

fn spawn_scheduler<L: scheduler::Launcher>(
    s: Scheduler<L, Call>,
    events: Receiver<Event>,
    done: Sender<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flowrun-scheduler".into())
        .spawn(move || s.run(events, done))
}

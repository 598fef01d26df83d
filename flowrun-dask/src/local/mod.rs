//! `LocalCluster`: a scheduler in the flow's process and worker processes
//! (or threads) on this machine, connected over loopback TCP.

pub(crate) mod forward;
mod launch;
mod output;
mod scheduler;
mod wire;
pub(crate) mod worker;

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use flowrun_core::{Resources, TaskCall};

pub use scheduler::{ClusterStatus, TaskStream, TaskStreamEntry, WaitingTask, WorkerStatus};

use scheduler::{Event, Expected, Scheduler};
use wire::{ToScheduler, ToWorker, ToWorkerOut};

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
            n_workers = a.get_minimum();
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
        let mut secret = [0u8; 32];
        fill_random(&mut secret);
        let build = crate::build_id::current().to_owned();
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let expected: Expected = Arc::new(Mutex::new(HashSet::new()));

        let acceptor_events = events_tx.clone();
        let acceptor_expected = expected.clone();
        let acceptor_build = build.clone();
        let listener_fd = listener.as_raw_fd();
        let closed = Arc::new(AtomicBool::new(false));
        let acceptor_closed = closed.clone();
        std::thread::Builder::new()
            .name("flowrun-acceptor".into())
            .spawn(move || {
                accept_loop(
                    listener,
                    secret,
                    acceptor_build,
                    acceptor_expected,
                    acceptor_events,
                    acceptor_closed,
                )
            })
            .map_err(|e| SettingsError::new("cluster", e.to_string()))?;

        let config = worker::WorkerConfig {
            address: address.clone(),
            secret: worker::hex(&secret),
            worker: 0,
            name: String::new(),
            nthreads,
            build,
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
                minimum: a.get_minimum(),
                maximum: a.get_maximum(),
                interval: a.interval,
                wait_count: a.wait_count.max(1) as u32,
                target_duration: a.target_duration,
            }),
        };
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let handle = if kwargs.processes.unwrap_or(true) {
            let (program, args) =
                crate::distributed::worker_command(kwargs.worker_program.as_deref())
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
        if let Err(e) = self.events.send(Event::Submit(call)) {
            if let Event::Submit(call) = e.into_inner() {
                if let flowrun_core::Work::Remote(job) = call.into_work() {
                    job.refuse("the cluster is closed");
                }
            }
        }
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

    /// Stops every worker (waiting briefly for them to exit, then killing
    /// them) and the scheduler. Unfinished tasks fail as `Crashed`.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            // Wakes the acceptor out of accept(); it sees `closed` and stops.
            // SAFETY: shutting down a socket this cluster owns.
            unsafe {
                libc::shutdown(self.listener_fd, libc::SHUT_RDWR);
            }
        }
        let _ = self.events.send(Event::Close);
        // Workers told to stop exit within milliseconds; the scheduler kills
        // any that do not, when their connection or process ends.
        if self.done.recv_timeout(Duration::from_secs(10)).is_err() {
            tracing::warn!(target: "flowrun_dask::cluster", "The cluster did not close within 10 s");
        }
        if let Some(h) = self
            .scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
    }
}

fn spawn_scheduler<L: scheduler::Launcher>(
    s: Scheduler<L>,
    events: Receiver<Event>,
    done: Sender<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flowrun-scheduler".into())
        .spawn(move || s.run(events, done))
}

pub(crate) fn fill_random(buf: &mut [u8]) {
    // The kernel's CSPRNG: the secret must not be guessable.
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most len bytes into our buffer.
        let n = unsafe {
            libc::getrandom(
                buf[filled..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - filled,
                0,
            )
        };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // No getrandom: fall back to a hash of time and addresses (never
            // reached on Linux >= 3.17).
            let h = blake3::hash(format!("{:?}{:p}", std::time::SystemTime::now(), buf).as_bytes());
            for (i, b) in buf.iter_mut().enumerate() {
                *b = h.as_bytes()[i % 32];
            }
            return;
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    secret: [u8; 32],
    build: String,
    expected: Expected,
    events: Sender<Event>,
    closed: Arc<AtomicBool>,
) {
    for stream in listener.incoming() {
        if closed.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let (secret, build, expected, events) =
            (secret, build.clone(), expected.clone(), events.clone());
        let _ = std::thread::Builder::new()
            .name("flowrun-handshake".into())
            .spawn(move || handshake(stream, &secret, &build, &expected, &events));
    }
}

/// Challenges a new connection; only a worker we started, holding the
/// secret, of the same build, gets in.
fn handshake(
    mut stream: TcpStream,
    secret: &[u8; 32],
    build: &str,
    expected: &Expected,
    events: &Sender<Event>,
) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut nonce = [0u8; 32];
    fill_random(&mut nonce);
    let challenge = ToWorkerOut::Challenge {
        nonce,
        build: build.to_owned(),
        protocol: wire::PROTOCOL,
    };
    if wire::write_frame(&mut stream, &[challenge], &mut buf).is_err() {
        return;
    }
    let refuse =
        |stream: &mut TcpStream, buf: &mut Vec<u8>, worker: Option<u32>, reason: String| {
            let _ = wire::write_frame(
                stream,
                &[ToWorkerOut::Rejected {
                    reason: reason.clone(),
                }],
                buf,
            );
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let _ = events.send(Event::Refused {
                worker,
                reason: format!("{reason} (from {peer})"),
            });
        };
    let hello: Option<Vec<ToScheduler>> = wire::read_frame(&mut stream, &mut buf).ok().flatten();
    let Some(ToScheduler::Hello {
        worker,
        pid,
        build: worker_build,
        protocol,
        proof,
    }) = hello.and_then(|b| b.into_iter().next())
    else {
        refuse(
            &mut stream,
            &mut buf,
            None,
            "it did not introduce itself as a worker".into(),
        );
        return;
    };
    if !wire::proof_matches(&proof, &wire::proof(secret, &nonce, worker)) {
        refuse(
            &mut stream,
            &mut buf,
            None,
            "it does not hold the cluster's secret".into(),
        );
        return;
    }
    if !expected
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&worker)
    {
        refuse(
            &mut stream,
            &mut buf,
            None,
            format!("worker {worker} is not expected"),
        );
        return;
    }
    if protocol != wire::PROTOCOL {
        refuse(
            &mut stream,
            &mut buf,
            Some(worker),
            format!(
                "the worker speaks protocol {protocol}, the scheduler {}",
                wire::PROTOCOL
            ),
        );
        return;
    }
    if worker_build != build {
        refuse(
            &mut stream,
            &mut buf,
            Some(worker),
            format!(
                "the worker program is a different build than the flow (worker build {worker_build}, flow build {build})"
            ),
        );
        return;
    }
    if wire::write_frame(&mut stream, &[ToWorkerOut::Welcome], &mut buf).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(None);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let (tx, rx) = crossbeam_channel::unbounded::<ToWorkerOut>();
    std::thread::Builder::new()
        .name(format!("flowrun-worker-{worker}-writer"))
        .spawn(move || {
            let mut stream = write_half;
            let mut buf = Vec::new();
            while let Ok(first) = rx.recv() {
                let batch: Vec<ToWorkerOut> = std::iter::once(first).chain(rx.try_iter()).collect();
                let stop = batch.iter().any(|m| matches!(m, ToWorker::Shutdown));
                if wire::write_frame(&mut stream, &batch, &mut buf).is_err() || stop {
                    return;
                }
            }
        })
        .ok();
    if events
        .send(Event::Connected {
            worker,
            pid,
            writer: tx,
        })
        .is_err()
    {
        return;
    }
    loop {
        match wire::read_frame::<ToScheduler>(&mut stream, &mut buf) {
            Ok(Some(batch)) => {
                if events.send(Event::Messages { worker, batch }).is_err() {
                    return;
                }
            }
            Ok(None) | Err(_) => {
                let _ = events.send(Event::Disconnected { worker });
                return;
            }
        }
    }
}

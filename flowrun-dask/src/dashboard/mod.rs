//! The dashboard of a temporary local cluster, and the performance report.
//!
//! While a flow run uses a local cluster, the cluster serves a web page
//! (by default at `http://127.0.0.1:8787/status`, logged when the flow run
//! starts; see [`ClusterKwargs::dashboard_address`](crate::ClusterKwargs::dashboard_address))
//! that updates live: the task stream (a lane per worker thread, a bar per
//! task run coloured by task name, failures marked), progress per task
//! name, the workers with their busy threads and free resources, the
//! number of workers over time, and the task runs that wait with the
//! reason they wait. It polls the cluster only while a page is open.
//!
//! With [`DaskTaskRunner::performance_report_path`](crate::DaskTaskRunner::performance_report_path),
//! the end of the flow run writes one HTML file with the task stream and a
//! summary, which opens without a network.

mod model;
mod page;
mod report;
mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use flowrun_core::plumbing::lock;
use flowrun_core::progress::TaskRunTally;
use flowrun_core::FlowRunInfo;

use crate::cluster::Cluster;
use crate::settings::ClusterKwargs;
use model::{Model, Source};

/// The link to the dashboard of the flow run this code runs in (in the
/// flow's process), such as `http://127.0.0.1:8787/status`, while the
/// flow run's cluster serves one.
///
/// ```no_run
/// use flowrun::flow;
/// use flowrun_dask::DaskTaskRunner;
///
/// #[flow(task_runner = DaskTaskRunner::default())]
/// fn watched() {
///     if let Some(link) = flowrun_dask::dashboard_link() {
///         println!("open {link}");
///     }
/// }
/// # fn main() { watched().unwrap(); }
/// ```
pub fn dashboard_link() -> Option<String> {
    let id = flowrun_core::current_flow_run_id()?;
    lock(links()).get(&id).cloned()
}

fn links() -> &'static Mutex<HashMap<String, String>> {
    static LINKS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    LINKS.get_or_init(Default::default)
}

/// A `DaskTaskRunner`'s dashboard and report settings, and what runs for
/// its current flow run.
#[derive(Default)]
pub(crate) struct RunnerDashboard {
    report_path: Option<PathBuf>,
    running: Mutex<Option<Running>>,
}

impl Clone for RunnerDashboard {
    /// The same settings, without a flow run's dashboard.
    fn clone(&self) -> Self {
        RunnerDashboard {
            report_path: self.report_path.clone(),
            running: Mutex::new(None),
        }
    }
}

struct Running {
    flow_run_id: String,
    source: Arc<Source>,
    live: Option<Live>,
    recorder: Option<Arc<report::Recorder>>,
}

/// A served dashboard: its model, server and poller.
struct Live {
    model: Arc<Model>,
    server: server::Server,
    stop_poller: crossbeam_channel::Sender<()>,
    poller_done: crossbeam_channel::Receiver<()>,
}

impl RunnerDashboard {
    pub(crate) fn set_report_path(&mut self, path: PathBuf) {
        self.report_path = Some(path);
    }

    pub(crate) fn report_path(&self) -> Option<&Path> {
        self.report_path.as_deref()
    }

    /// Starts the dashboard of `cluster` for this flow run (when the
    /// cluster can tell its status and the settings want one). Never fails
    /// the flow run: a dashboard that cannot listen is a warning. A real
    /// Dask cluster (`dask`) serves Dask's own dashboard, so it gets no
    /// page here (a Python cluster class gets `dashboard_address` itself);
    /// its performance report is still written.
    pub(crate) fn start(
        &self,
        info: &FlowRunInfo,
        cluster: &Arc<dyn Cluster>,
        kwargs: &ClusterKwargs,
        dask: bool,
    ) {
        let address = match kwargs.dashboard_socket_address() {
            Ok(_) if dask => None,
            Ok(a) => a,
            Err(e) => {
                warn(info, format!("No dashboard: {e}"));
                None
            }
        };
        let report = self.report_path.is_some();
        if address.is_none() && !report {
            return;
        }
        // Clusters that cannot tell their status get no page; the report
        // still works.
        let status = cluster.status();
        if status.is_none() && !report {
            return;
        }
        let has_stream = cluster.task_stream(u64::MAX).is_some();
        let tally = Arc::new(TaskRunTally::new());
        info.flow.add_observer(tally.clone());
        let recorder = (report && !has_stream).then(|| {
            let r = Arc::new(report::Recorder::default());
            info.flow.add_observer(r.clone());
            r
        });
        let source = Arc::new(Source {
            cluster: cluster.clone(),
            tally,
            flow_run_name: info.flow_run_name.clone(),
            flow_name: info.flow_name.clone(),
            description: cluster.describe(),
            started: SystemTime::now(),
            limits: Some(flowrun_core::concurrency::flow_limits(&info.flow)),
            flow: Some(info.flow.clone()),
        });
        let live = match (address, status) {
            (Some(address), Some(_)) => serve(info, &source, address, kwargs),
            _ => None,
        };
        *lock(&self.running) = Some(Running {
            flow_run_id: info.flow_run_id.clone(),
            source,
            live,
            recorder,
        });
    }

    /// Before the cluster closes: gives pages their last update, stops the
    /// server and writes the performance report.
    pub(crate) fn stop(&self) {
        let Some(running) = lock(&self.running).take() else {
            return;
        };
        lock(links()).remove(&running.flow_run_id);
        if let Some(live) = running.live {
            live.model.end();
            drop(live.stop_poller);
            let _ = live.poller_done.recv_timeout(Duration::from_secs(2));
            live.server.stop();
        }
        if let Some(path) = &self.report_path {
            let label = format!("Flow run '{}'", running.source.flow_run_name);
            match report::write(path, &running.source, running.recorder.as_deref()) {
                Ok(()) => tracing::info!(
                    target: "flowrun_dask",
                    { flowrun.run = label.as_str() },
                    "Wrote the performance report to {}",
                    path.display()
                ),
                Err(e) => tracing::warn!(
                    target: "flowrun_dask",
                    { flowrun.run = label.as_str() },
                    "Could not write the performance report to {}: {e}",
                    path.display()
                ),
            }
        }
    }
}

fn warn(info: &FlowRunInfo, message: String) {
    tracing::warn!(
        target: "flowrun_dask",
        { flowrun.run = format!("Flow run '{}'", info.flow_run_name) },
        "{message}"
    );
}

fn serve(
    info: &FlowRunInfo,
    source: &Arc<Source>,
    address: SocketAddr,
    kwargs: &ClusterKwargs,
) -> Option<Live> {
    let label = format!("Flow run '{}'", info.flow_run_name);
    let (listener, fell_back) = match server::bind(address) {
        Ok(bound) => bound,
        Err(e) => {
            warn(
                info,
                format!("The dashboard cannot listen on {address} ({e}); the flow runs without it"),
            );
            return None;
        }
    };
    let local = listener.local_addr().ok()?;
    if fell_back {
        let message = format!(
            "Port {} is in use (perhaps by another cluster's dashboard); the dashboard uses port {} instead",
            address.port(),
            local.port()
        );
        if kwargs.dashboard_address_is_set() {
            warn(info, message);
        } else {
            tracing::info!(target: "flowrun_dask", { flowrun.run = label.as_str() }, "{message}");
        }
    }
    if !local.ip().is_loopback() {
        warn(
            info,
            format!("The dashboard listens on {local}, beyond this machine, without a login"),
        );
    }
    let model = Arc::new(Model::new(source.clone()));
    let (tick, polled) = tokio::sync::watch::channel(0u64);
    let (poke, poked) = crossbeam_channel::bounded(1);
    let hub = server::Hub {
        model: model.clone(),
        polled,
        poke,
    };
    let server = match server::serve(listener, hub) {
        Ok(s) => s,
        Err(e) => {
            warn(
                info,
                format!("The dashboard cannot serve on {local} ({e}); the flow runs without it"),
            );
            return None;
        }
    };
    let (stop_poller, stopped) = crossbeam_channel::bounded::<()>(0);
    let (done, poller_done) = crossbeam_channel::bounded(1);
    let poll_model = model.clone();
    let spawned = std::thread::Builder::new()
        .name("flowrun-dashboard".into())
        .spawn(move || {
            poll(&poll_model, &stopped, &poked, &tick);
            // The last version tells every page the flow run ended.
            tick.send_modify(|v| *v += 1);
            let _ = done.send(());
        });
    if spawned.is_err() {
        server.stop();
        return None;
    }
    let host = if local.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], local.port()))
    } else {
        local
    };
    let link = format!("http://{host}/status");
    tracing::info!(
        target: "flowrun_dask",
        { flowrun.run = label.as_str() },
        "The dashboard is at {link}"
    );
    lock(links()).insert(info.flow_run_id.clone(), link);
    Some(Live {
        model,
        server,
        stop_poller,
        poller_done,
    })
}

/// Polls the cluster every [`server::POLL_INTERVAL`] while pages are open
/// (at once when one connects) until told to stop.
fn poll(
    model: &Model,
    stop: &crossbeam_channel::Receiver<()>,
    poke: &crossbeam_channel::Receiver<()>,
    tick: &tokio::sync::watch::Sender<u64>,
) {
    loop {
        crossbeam_channel::select! {
            recv(stop) -> _ => return,
            recv(poke) -> poked => if poked.is_err() { return },
            default(server::POLL_INTERVAL) => {}
        }
        if model.viewers.load(std::sync::atomic::Ordering::Acquire) == 0 {
            continue;
        }
        model.poll();
        tick.send_modify(|v| *v += 1);
    }
}

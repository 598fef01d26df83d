//! A Python cluster-manager class (`cluster_class = "distributed.LocalCluster"`,
//! a cloud or batch-system cluster...) started for one flow run.
//!
//! A small Python program (`cluster_manager.py`) creates the cluster with
//! the runner's `cluster_kwargs`, applies `adapt_kwargs`, prints the
//! scheduler address and then keeps the cluster until told to close it, or
//! until its stdin ends because the flow's process is gone. It runs in its
//! own process group, so that closing also stops any worker process a local
//! cluster left behind.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowrun_core::plumbing::lock;
use serde_json::{json, Map, Value};

use crate::settings::{AdaptKwargs, ClusterKwargs};

const HELPER: &str = include_str!("cluster_manager.py");

/// How long closing the cluster may take before its processes are killed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The Python executable: the runner's setting, else `$FLOWRUN_PYTHON`,
/// else `python3`.
pub(crate) fn python_executable(setting: Option<&PathBuf>) -> PathBuf {
    setting.cloned().unwrap_or_else(|| {
        std::env::var_os("FLOWRUN_PYTHON")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("python3"))
    })
}

fn seconds(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The Python keyword arguments of the cluster class.
pub(crate) fn python_kwargs(kwargs: &ClusterKwargs) -> Result<Map<String, Value>, String> {
    if kwargs.worker_program.is_some() {
        return Err(
            "cluster_kwargs.worker_program: a Python cluster runs the task program given by \
             DaskTaskRunner::task_program, not a worker program"
                .into(),
        );
    }
    let mut out = Map::new();
    if let Some(n) = kwargs.n_workers {
        if n < 0 {
            return Err(format!(
                "cluster_kwargs.n_workers: must be at least 0, got {n}"
            ));
        }
        out.insert("n_workers".into(), json!(n));
    }
    if let Some(n) = kwargs.threads_per_worker {
        if n < 1 {
            return Err(format!(
                "cluster_kwargs.threads_per_worker: must be at least 1, got {n}"
            ));
        }
        out.insert("threads_per_worker".into(), json!(n));
    }
    if let Some(p) = kwargs.processes {
        out.insert("processes".into(), json!(p));
    }
    if kwargs.resources.is_some() || kwargs.resources_spec.is_some() {
        let resources = kwargs.worker_resources().map_err(|e| e.to_string())?;
        let map: Map<String, Value> = resources
            .iter()
            .map(|(name, amount)| (name.to_owned(), json!(amount)))
            .collect();
        out.insert("resources".into(), Value::Object(map));
    }
    if let Some(limit) = &kwargs.memory_limit {
        out.insert("memory_limit".into(), json!(limit));
    }
    if let Some(address) = &kwargs.dashboard_address {
        // The class's own dashboard; `no_dashboard()` is Dask's `None`.
        out.insert("dashboard_address".into(), json!(address));
    }
    for (key, value) in &kwargs.extra {
        out.insert(key.clone(), value.clone());
    }
    Ok(out)
}

/// Dask configuration for the scheduler the class starts (it applies when
/// the scheduler runs in the helper's process, as `LocalCluster`'s does).
fn dask_config(kwargs: &ClusterKwargs) -> Map<String, Value> {
    let mut config = Map::new();
    if let Some(n) = kwargs.allowed_failures {
        config.insert("distributed.scheduler.allowed-failures".into(), json!(n));
    }
    if let Some(t) = kwargs.no_workers_timeout {
        config.insert(
            "distributed.scheduler.no-workers-timeout".into(),
            json!(seconds(t)),
        );
    }
    config
}

fn adapt(adapt: &AdaptKwargs) -> Value {
    json!({
        "minimum": adapt.minimum,
        "maximum": adapt.maximum,
        "interval": seconds(adapt.interval),
        "wait_count": adapt.wait_count,
        "target_duration": seconds(adapt.target_duration),
    })
}

/// What the helper said first.
enum Hello {
    Address(String),
    Error(String),
    Ended,
}

/// A running cluster-manager helper.
pub(crate) struct PythonCluster {
    class: String,
    address: String,
    child: Mutex<Option<Child>>,
    stdin: Mutex<Option<ChildStdin>>,
}

flowrun_core::__debug_fields!(PythonCluster { class, address });

type Tail = Arc<Mutex<VecDeque<String>>>;

fn tail_text(tail: &Tail) -> String {
    let lines = lock(tail);
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            "; its output ended with:\n{}",
            lines.iter().cloned().collect::<Vec<_>>().join("\n")
        )
    }
}

impl PythonCluster {
    /// Starts the class and waits (up to `startup`) for its scheduler address.
    pub(crate) fn start(
        class: &str,
        kwargs: &ClusterKwargs,
        adapt_kwargs: Option<&AdaptKwargs>,
        python: &PathBuf,
        startup: Duration,
    ) -> Result<PythonCluster, String> {
        let spec = json!({
            "class": class,
            "kwargs": Value::Object(python_kwargs(kwargs)?),
            "adapt": adapt_kwargs.map(adapt),
            "config": Value::Object(dask_config(kwargs)),
        });
        let mut command = Command::new(python);
        command
            .arg("-c")
            .arg(HELPER)
            .arg(spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().map_err(|e| {
            format!(
                "cannot run the Python executable {} to start cluster_class {class:?}: {e}; \
                 set it with DaskTaskRunner::python(...) or $FLOWRUN_PYTHON",
                python.display()
            )
        })?;
        let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let tail = tail.clone();
            let class = class.to_owned();
            let _ = std::thread::Builder::new()
                .name("flowrun-cluster-log".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        tracing::debug!(target: "flowrun_dask::cluster", "{class}: {line}");
                        let mut t = lock(&tail);
                        if t.len() == 20 {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                });
        }
        let (hello_tx, hello_rx) = std::sync::mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            let class = class.to_owned();
            let _ = std::thread::Builder::new()
                .name("flowrun-cluster-manager".into())
                .spawn(move || {
                    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
                    let hello = match lines.next() {
                        None => Hello::Ended,
                        Some(line) => match serde_json::from_str::<Value>(&line) {
                            Ok(v) => match (v.get("address"), v.get("error")) {
                                (Some(Value::String(a)), _) => Hello::Address(a.clone()),
                                (_, Some(Value::String(e))) => Hello::Error(e.clone()),
                                _ => Hello::Error(format!("unexpected answer {line}")),
                            },
                            Err(_) => Hello::Error(format!("unexpected answer {line}")),
                        },
                    };
                    let _ = hello_tx.send(hello);
                    for line in lines {
                        tracing::warn!(target: "flowrun_dask::cluster", "{class}: {line}");
                    }
                });
        }
        let stdin = child.stdin.take();
        let mut cluster = PythonCluster {
            class: class.to_owned(),
            address: String::new(),
            child: Mutex::new(Some(child)),
            stdin: Mutex::new(stdin),
        };
        let hello = hello_rx.recv_timeout(startup);
        let error = match hello {
            Ok(Hello::Address(address)) => {
                cluster.address = address;
                return Ok(cluster);
            }
            Ok(Hello::Error(e)) => format!("cluster_class {class:?} could not start: {e}"),
            Ok(Hello::Ended) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                cluster.close();
                return Err(format!(
                    "cluster_class {class:?}: the Python helper ({}) exited before the cluster \
                     started{}",
                    python.display(),
                    tail_text(&tail)
                ));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => format!(
                "cluster_class {class:?} did not start within {}s (client_kwargs.startup_timeout){}",
                startup.as_secs_f64(),
                tail_text(&tail)
            ),
        };
        cluster.close();
        Err(error)
    }

    /// The scheduler address.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The class's import path.
    pub(crate) fn class(&self) -> &str {
        &self.class
    }

    /// The helper's process id (its process group too), while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        lock(&self.child).as_ref().map(Child::id)
    }

    fn send(&self, command: &Value) -> bool {
        let mut stdin = lock(&self.stdin);
        match stdin.as_mut() {
            Some(pipe) => pipe
                .write_all(format!("{command}\n").as_bytes())
                .and_then(|_| pipe.flush())
                .is_ok(),
            None => false,
        }
    }

    /// Asks the cluster for `n` workers.
    pub(crate) fn scale(&self, n: usize) {
        if !self.send(&json!({"op": "scale", "n": n})) {
            tracing::warn!(target: "flowrun_dask", "cannot scale {}: it is closed", self.class);
        }
    }

    /// Closes the cluster, then makes sure nothing it started is left.
    pub(crate) fn close(&self) {
        self.send(&json!({"op": "close"}));
        lock(&self.stdin).take();
        let Some(mut child) = lock(&self.child).take() else {
            return;
        };
        let pgid = child.id() as libc::pid_t;
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            tracing::warn!(
                target: "flowrun_dask",
                "{} did not close within {}s; killing its processes",
                self.class,
                CLOSE_TIMEOUT.as_secs()
            );
        }
        // SAFETY: kill(2) on the process group created for the helper.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = child.wait();
    }
}

impl Drop for PythonCluster {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_and_extra_kwargs_become_python_kwargs() {
        let kwargs = ClusterKwargs::new()
            .n_workers(2)
            .threads_per_worker(1)
            .processes(true)
            .resources_spec("GPU=1")
            .memory_limit("2GB")
            .no_dashboard()
            .allowed_failures(1);
        let out = python_kwargs(&kwargs).unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"n_workers": 2, "threads_per_worker": 1, "processes": true,
                   "resources": {"GPU": 1.0}, "memory_limit": "2GB", "dashboard_address": null})
        );
        assert_eq!(
            Value::Object(dask_config(&kwargs)),
            json!({"distributed.scheduler.allowed-failures": 1})
        );
        let dashboard = python_kwargs(&ClusterKwargs::new().dashboard_address(":0")).unwrap();
        assert_eq!(Value::Object(dashboard), json!({"dashboard_address": ":0"}));
        assert!(python_kwargs(&ClusterKwargs::new().threads_per_worker(0)).is_err());
        assert!(python_kwargs(&ClusterKwargs::new().worker_program("/bin/x")).is_err());
        assert_eq!(
            adapt(&AdaptKwargs::new().minimum(1).maximum(3)),
            json!({"minimum": 1, "maximum": 3, "interval": "1000ms", "wait_count": 3,
                   "target_duration": "5000ms"})
        );
    }

    #[test]
    fn the_python_executable_defaults_to_python3() {
        let set = PathBuf::from("/opt/py/bin/python");
        assert_eq!(python_executable(Some(&set)), set);
        if std::env::var_os("FLOWRUN_PYTHON").is_none() {
            assert_eq!(python_executable(None), PathBuf::from("python3"));
        }
    }
}

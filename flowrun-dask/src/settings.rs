//! The settings of a `DaskTaskRunner`, typed, with errors that name the
//! setting that is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use flowrun_core::Resources;

/// A setting that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    setting: String,
    message: String,
}

impl SettingsError {
    pub(crate) fn new(setting: impl Into<String>, message: impl Into<String>) -> SettingsError {
        SettingsError {
            setting: setting.into(),
            message: message.into(),
        }
    }

    /// The setting, such as `cluster_kwargs.n_workers`.
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

impl std::error::Error for SettingsError {}

/// How much memory a worker may use before the cluster restarts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    /// The machine's memory divided among the worker processes (Dask's `"auto"`).
    Auto,
    /// No limit.
    Unlimited,
    /// This many bytes per worker.
    Bytes(u64),
}

impl MemoryLimit {
    /// Parses Dask's forms: `"auto"`, `"0"`/`"none"` (no limit), a number of
    /// bytes, or a number with a unit (`"4GB"`, `"2GiB"`, `"512 MB"`).
    ///
    /// ```
    /// use flowrun_dask::MemoryLimit;
    /// assert_eq!(MemoryLimit::parse("2GiB"), Ok(MemoryLimit::Bytes(2 << 30)));
    /// assert_eq!(MemoryLimit::parse("1.5 GB"), Ok(MemoryLimit::Bytes(1_500_000_000)));
    /// assert!(MemoryLimit::parse("lots").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<MemoryLimit, String> {
        let t = text.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => return Ok(MemoryLimit::Auto),
            "0" | "none" | "" => return Ok(MemoryLimit::Unlimited),
            _ => {}
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number.parse().map_err(|_| {
            format!("not a size: {text:?} (use bytes, \"4GB\", \"2GiB\" or \"auto\")")
        })?;
        let factor: f64 = match unit.trim() {
            "" | "b" => 1.0,
            "kb" | "k" => 1e3,
            "mb" | "m" => 1e6,
            "gb" | "g" => 1e9,
            "tb" | "t" => 1e12,
            "kib" => 1024.0,
            "mib" => 1024f64.powi(2),
            "gib" => 1024f64.powi(3),
            "tib" => 1024f64.powi(4),
            other => return Err(format!("unknown size unit {other:?} in {text:?}")),
        };
        let bytes = number * factor;
        if !(bytes.is_finite() && bytes >= 0.0) {
            return Err(format!("not a size: {text:?}"));
        }
        Ok(match bytes as u64 {
            0 => MemoryLimit::Unlimited,
            n => MemoryLimit::Bytes(n),
        })
    }

    /// The limit per worker in bytes, for `n_workers` workers.
    pub fn per_worker(self, n_workers: usize) -> Option<u64> {
        match self {
            MemoryLimit::Unlimited => None,
            MemoryLimit::Bytes(b) => Some(b),
            MemoryLimit::Auto => {
                let total = system_memory()?;
                Some(total / n_workers.max(1) as u64)
            }
        }
    }
}

fn system_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Parses Dask's resource syntax, `"GPU=1,process=1"` (or space separated).
///
/// ```
/// let r = flowrun_dask::parse_resources("GPU=1, MEMORY=8e9").unwrap();
/// assert_eq!(r.get("GPU"), Some(1.0));
/// assert!(flowrun_dask::parse_resources("GPU").is_err());
/// ```
pub fn parse_resources(spec: &str) -> Result<Resources, String> {
    let mut out = Resources::new();
    for item in spec
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (name, amount) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not NAME=AMOUNT"))?;
        let amount: f64 = amount.trim().parse().map_err(|_| {
            format!(
                "the amount of {:?} is not a number: {amount:?}",
                name.trim()
            )
        })?;
        out.insert(name.trim(), amount);
    }
    out.validate()?;
    Ok(out)
}

/// The shape of a temporary local cluster, as `LocalCluster` takes it.
/// Unset fields take Dask's defaults.
///
/// ```
/// use flowrun_dask::ClusterKwargs;
/// let kwargs = ClusterKwargs::new().n_workers(4).threads_per_worker(2);
/// assert_eq!(kwargs.shape().unwrap(), (4, 2));
/// ```
#[must_use]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterKwargs {
    pub(crate) n_workers: Option<i64>,
    pub(crate) threads_per_worker: Option<i64>,
    pub(crate) processes: Option<bool>,
    pub(crate) resources: Option<Resources>,
    pub(crate) resources_spec: Option<String>,
    pub(crate) memory_limit: Option<String>,
    pub(crate) allowed_failures: Option<u32>,
    pub(crate) no_workers_timeout: Option<Duration>,
    pub(crate) worker_program: Option<std::path::PathBuf>,
    /// `None`: the default address; `Some(None)`: no dashboard.
    pub(crate) dashboard_address: Option<Option<String>>,
    pub(crate) extra: BTreeMap<String, serde_json::Value>,
}

impl ClusterKwargs {
    /// Dask's defaults.
    pub fn new() -> ClusterKwargs {
        ClusterKwargs::default()
    }

    flowrun_core::__setters! {
        /// Number of worker processes (or worker thread groups when `processes(false)`).
        pub fn n_workers(n: u32) => n_workers = Some(i64::from(n));

        /// Threads per worker.
        pub fn threads_per_worker(n: u32) => threads_per_worker = Some(i64::from(n));

        /// `false`: workers are threads in the flow's process instead of processes.
        pub fn processes(processes: bool) => processes = Some(processes);

        /// Abstract resources every worker offers, such as `{"GPU": 1}`.
        pub fn resources(resources: impl Into<Resources>) => resources = Some(resources.into());

        /// The same in Dask's text form, `"GPU=1,process=1"`.
        pub fn resources_spec(spec: impl Into<String>) => resources_spec = Some(spec.into());

        /// Memory per worker (`"4GB"`, `"auto"`, `"0"` for none); a worker above
        /// it is restarted, and its running tasks are rescheduled.
        pub fn memory_limit(limit: impl Into<String>) => memory_limit = Some(limit.into());

        /// How many workers may die while running a task before the task ends
        /// `Crashed` with `KilledWorker` (Dask's `allowed-failures`, default 3).
        pub fn allowed_failures(n: u32) => allowed_failures = Some(n);

        /// Fail tasks that no worker can run (their resources exist nowhere)
        /// after this long, instead of letting them wait (Dask's
        /// `no-workers-timeout`; by default they wait).
        pub fn no_workers_timeout(timeout: Duration) => no_workers_timeout = Some(timeout);

        /// The program worker processes run (by default this program). It must
        /// be the same build: another build is refused when it connects.
        pub fn worker_program(path: impl Into<std::path::PathBuf>) => worker_program = Some(path.into());

        /// Where the cluster's dashboard listens (by default `127.0.0.1:8787`):
        /// `"127.0.0.1:8787"`, `":8787"` or `"8787"` (on loopback), `":0"` for a
        /// free port. An address without a host, or `localhost`, is loopback:
        /// the dashboard listens beyond this machine only when you name such an
        /// address (`"0.0.0.0:8787"`), and it has no login. When the port is
        /// taken the dashboard takes a free one and says so.
        ///
        /// ```
        /// use flowrun_dask::ClusterKwargs;
        /// let kwargs = ClusterKwargs::new().dashboard_address(":0");
        /// assert_eq!(kwargs.dashboard_socket_address().unwrap().unwrap().to_string(), "127.0.0.1:0");
        /// ```
        pub fn dashboard_address(address: impl Into<String>) => dashboard_address = Some(Some(address.into()));
    }

    /// No dashboard for this cluster (Dask's `dashboard_address=None`).
    ///
    /// ```
    /// let kwargs = flowrun_dask::ClusterKwargs::new().no_dashboard();
    /// assert_eq!(kwargs.dashboard_socket_address().unwrap(), None);
    /// ```
    pub fn no_dashboard(mut self) -> Self {
        self.dashboard_address = Some(None);
        self
    }

    /// The address the dashboard binds, or `None` without a dashboard.
    pub fn dashboard_socket_address(&self) -> Result<Option<SocketAddr>, SettingsError> {
        match &self.dashboard_address {
            None => Ok(Some(SocketAddr::from((
                [127, 0, 0, 1],
                DEFAULT_DASHBOARD_PORT,
            )))),
            Some(None) => Ok(None),
            Some(Some(text)) => parse_dashboard_address(text)
                .map(Some)
                .map_err(|e| SettingsError::new("cluster_kwargs.dashboard_address", e)),
        }
    }

    /// Whether the dashboard address was set (a taken port is then worth
    /// a warning rather than a note).
    pub(crate) fn dashboard_address_is_set(&self) -> bool {
        self.dashboard_address.is_some()
    }

    /// Any other keyword argument, for Python cluster classes. `LocalCluster`
    /// refuses keys it does not know.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self == &ClusterKwargs::default()
    }

    /// `(workers, threads per worker)` after Dask's defaults, or the setting
    /// that is wrong.
    pub fn shape(&self) -> Result<(usize, usize), SettingsError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let processes = self.processes.unwrap_or(true);
        let positive = |v: i64, name: &str| {
            at_least(&format!("cluster_kwargs.{name}"), v, 1).map(|v| v as usize)
        };
        let n = self
            .n_workers
            .map(|v| positive(v, "n_workers"))
            .transpose()?;
        let t = self
            .threads_per_worker
            .map(|v| positive(v, "threads_per_worker"))
            .transpose()?;
        Ok(match (n, t) {
            (Some(n), Some(t)) => (n, t),
            (Some(n), None) => (n, (cores / n).max(1)),
            (None, Some(t)) => ((cores / t).max(1), t),
            (None, None) if processes => default_shape(cores),
            (None, None) => (1, cores),
        })
    }

    /// The resources every worker offers.
    pub fn worker_resources(&self) -> Result<Resources, SettingsError> {
        let mut r = self.resources.clone().unwrap_or_default();
        if let Some(spec) = &self.resources_spec {
            let parsed = parse_resources(spec)
                .map_err(|e| SettingsError::new("cluster_kwargs.resources", e))?;
            for (k, v) in parsed.iter() {
                r.insert(k, v);
            }
        }
        r.validate()
            .map_err(|e| SettingsError::new("cluster_kwargs.resources", e))?;
        Ok(r)
    }

    /// The memory limit per worker, in bytes.
    pub fn memory_limit_bytes(&self, n_workers: usize) -> Result<Option<u64>, SettingsError> {
        match &self.memory_limit {
            None => Ok(MemoryLimit::Auto.per_worker(n_workers)),
            Some(text) => MemoryLimit::parse(text)
                .map(|m| m.per_worker(n_workers))
                .map_err(|e| SettingsError::new("cluster_kwargs.memory_limit", e)),
        }
    }

    /// Checks every setting `LocalCluster` uses, and refuses others.
    pub fn validate_local(&self) -> Result<(), SettingsError> {
        self.shape()?;
        self.dashboard_socket_address()?;
        self.worker_resources()?;
        self.memory_limit_bytes(1)?;
        if let Some(key) = self.extra.keys().next() {
            return Err(SettingsError::new(
                format!("cluster_kwargs.{key}"),
                "LocalCluster does not take this setting; it takes n_workers, threads_per_worker, processes, resources, memory_limit",
            ));
        }
        if let Some(p) = &self.worker_program {
            if !p.is_file() {
                return Err(SettingsError::new(
                    "cluster_kwargs.worker_program",
                    format!("{} is not a file", p.display()),
                ));
            }
        }
        Ok(())
    }
}

/// Dask's dashboard port.
const DEFAULT_DASHBOARD_PORT: u16 = 8787;

/// `host:port`, `:port`, `port` or `localhost:port`; no host means loopback.
fn parse_dashboard_address(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    let loopback = |port: &str| -> Result<SocketAddr, String> {
        let port: u16 = if port.is_empty() {
            0
        } else {
            port.parse().map_err(|_| format!("not a port: {port:?}"))?
        };
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    };
    if let Some(port) = t.strip_prefix(':') {
        return loopback(port);
    }
    if t.is_empty() || t.bytes().all(|b| b.is_ascii_digit()) {
        return loopback(t);
    }
    if let Some(port) = t.strip_prefix("localhost:") {
        return loopback(port);
    }
    t.parse().map_err(|_| {
        format!(
            "not an address: {text:?} (use \"127.0.0.1:8787\", \":8787\", \":0\" for a free port, or no_dashboard())"
        )
    })
}

/// Dask's choice for `n` cores: up to 4, one single-threaded worker per
/// core; above, about `sqrt(n)` workers sharing the cores.
pub fn default_shape(cores: usize) -> (usize, usize) {
    let n = cores.max(1);
    if n <= 4 {
        return (n, 1);
    }
    let root = (n as f64).sqrt();
    let processes = (1..=n)
        .filter(|f| n.is_multiple_of(*f) && *f as f64 >= root)
        .min()
        .unwrap_or(n);
    (processes, n / processes)
}

/// Adaptive scaling: the cluster grows when work queues up and shrinks
/// when workers idle, between `minimum` and `maximum` workers.
///
/// ```
/// use flowrun_dask::AdaptKwargs;
/// let adapt = AdaptKwargs::new().minimum(1).maximum(4);
/// assert!(adapt.validate().is_ok());
/// assert!(AdaptKwargs::new().minimum(5).maximum(2).validate().is_err());
/// ```
#[must_use]
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptKwargs {
    pub(crate) minimum: u32,
    pub(crate) maximum: Option<u32>,
    pub(crate) interval: Duration,
    pub(crate) wait_count: u32,
    pub(crate) target_duration: Duration,
}

impl Default for AdaptKwargs {
    fn default() -> Self {
        AdaptKwargs {
            minimum: 0,
            maximum: None,
            interval: Duration::from_secs(1),
            wait_count: 3,
            target_duration: Duration::from_secs(5),
        }
    }
}

impl AdaptKwargs {
    /// Dask's defaults: no minimum, no maximum, a check every second, a
    /// worker removed after 3 idle checks, 5 s of work per worker.
    pub fn new() -> AdaptKwargs {
        AdaptKwargs::default()
    }

    flowrun_core::__setters! {
        /// Never fewer workers than this.
        pub fn minimum(n: u32) => minimum = n;

        /// Never more workers than this (`None`: no bound).
        pub fn maximum(n: impl Into<Option<u32>>) => maximum = n.into();

        /// How often the cluster checks whether to scale.
        pub fn interval(interval: Duration) => interval = interval;

        /// How many checks in a row a worker must be idle before it is removed.
        pub fn wait_count(n: u32) => wait_count = n;

        /// How long the queued work may take on the current workers before the
        /// cluster adds workers.
        pub fn target_duration(d: Duration) => target_duration = d;
    }

    /// Checks the bounds and durations.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some(max) = self.maximum {
            at_least("adapt_kwargs.maximum", max, 1)?;
            if max < self.minimum {
                return Err(SettingsError::new(
                    "adapt_kwargs",
                    format!("minimum ({}) is greater than maximum ({max})", self.minimum),
                ));
            }
        }
        at_least("adapt_kwargs.wait_count", self.wait_count, 1)?;
        longer_than_zero("adapt_kwargs.interval", self.interval)?;
        longer_than_zero("adapt_kwargs.target_duration", self.target_duration)
    }
}

/// Settings of the runner's connection to its cluster.
#[must_use]
#[derive(Debug, Clone, PartialEq)]
pub struct ClientKwargs {
    pub(crate) timeout: Duration,
    pub(crate) startup_timeout: Duration,
    pub(crate) name: Option<String>,
}

impl Default for ClientKwargs {
    fn default() -> Self {
        ClientKwargs {
            timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(60),
            name: None,
        }
    }
}

impl ClientKwargs {
    /// Defaults: 30 s to connect, 60 s for workers to start.
    pub fn new() -> ClientKwargs {
        ClientKwargs::default()
    }

    flowrun_core::__setters! {
        /// How long connecting to a cluster may take.
        pub fn timeout(timeout: Duration) => timeout = timeout;

        /// How long a worker may take to start and connect.
        pub fn startup_timeout(timeout: Duration) => startup_timeout = timeout;

        /// The client's name, shown in logs (and to a Dask scheduler).
        pub fn name(name: impl Into<String>) => name = Some(name.into());
    }

    /// Checks the timeouts.
    pub fn validate(&self) -> Result<(), SettingsError> {
        longer_than_zero("client_kwargs.timeout", self.timeout)?;
        longer_than_zero("client_kwargs.startup_timeout", self.startup_timeout)
    }
}

/// `value`, the number the setting `setting` holds, if it is at least `min`.
fn at_least(setting: &str, value: impl Into<i64>, min: i64) -> Result<i64, SettingsError> {
    let value = value.into();
    if value < min {
        return Err(SettingsError::new(
            setting,
            format!("must be at least {min}, got {value}"),
        ));
    }
    Ok(value)
}

/// Refuses a setting that is a zero duration.
fn longer_than_zero(setting: &str, duration: Duration) -> Result<(), SettingsError> {
    if duration.is_zero() {
        return Err(SettingsError::new(setting, "must be longer than zero"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_addresses_default_to_loopback() {
        let addr = |text: &str| parse_dashboard_address(text).map(|a| a.to_string());
        assert_eq!(addr(":8787").unwrap(), "127.0.0.1:8787");
        assert_eq!(addr("8787").unwrap(), "127.0.0.1:8787");
        assert_eq!(addr(":0").unwrap(), "127.0.0.1:0");
        assert_eq!(addr("localhost:9000").unwrap(), "127.0.0.1:9000");
        assert_eq!(addr("0.0.0.0:8787").unwrap(), "0.0.0.0:8787");
        assert_eq!(addr("[::1]:8787").unwrap(), "[::1]:8787");
        assert!(addr("dashboard.example:80").is_err());
        assert!(addr(":99999").is_err());
        let error = ClusterKwargs::new()
            .dashboard_address("nowhere")
            .validate_local()
            .unwrap_err();
        assert_eq!(error.setting(), "cluster_kwargs.dashboard_address");
        assert_eq!(
            ClusterKwargs::new().dashboard_socket_address().unwrap(),
            Some(SocketAddr::from(([127, 0, 0, 1], 8787)))
        );
    }
}

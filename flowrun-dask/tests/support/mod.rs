//! A real Dask cluster for integration tests: one scheduler and N workers from
//! a pinned PyPI install, on 127.0.0.1 with OS-assigned ports.
//!
//! * The Dask version comes from `FLOWRUN_DASK_VERSION` (default 2026.8.0);
//!   its venv is created by flowrun-dask's `scripts/dask-venv.sh` on first use, so a fresh
//!   machine needs only Python and access to PyPI. If Dask cannot be
//!   installed the test fails with the installer's output: never a skip.
//! * Every process runs in its own process group, in a private temporary
//!   directory, with `--port 0` and a scheduler file, so tests can run in
//!   parallel.
//! * Teardown is by PID (and the PID's process group, to catch subprocesses
//!   a worker was running): SIGTERM, a grace period, then SIGKILL, and every
//!   child is reaped. The children also get SIGKILL from the kernel if the
//!   test process dies first.
//! * `FLOWRUN_DASK_SHOW_LOGS=1` prints the Dask logs when a cluster stops.
//! * Uses the includer's `common` module (`flowrun-dask/tests/common`), which
//!   every includer has.
#![allow(dead_code)] // each test binary uses a different part of the helper

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The default Dask release the tests run against.
pub(crate) const DEFAULT_DASK_VERSION: &str = "2026.8.0";

/// How long a cluster may take to come up. Starting three Python processes
/// on two loaded cores has been seen to take 13 s; allow far more.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Grace period for SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The Dask version selected for this test run.
pub(crate) fn dask_version() -> String {
    std::env::var("FLOWRUN_DASK_VERSION")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DASK_VERSION.to_string())
}

/// The install script. This module is included by flowrun-dask's tests
/// (whose package ships the script) and by the workspace's tests and benches
/// (whose `scripts/dask-venv.sh` calls flowrun-dask's): both have it at
/// `scripts/dask-venv.sh` under their manifest directory.
fn venv_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join("dask-venv.sh")
}

/// Where the venvs live: `dask-venv` in the target directory, shared by every
/// package of a workspace (and by CI's setup step), unless
/// `FLOWRUN_DASK_VENV_DIR` says otherwise.
fn venv_dir() -> PathBuf {
    match std::env::var_os("FLOWRUN_DASK_VENV_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("CARGO_TARGET_TMPDIR is inside the target directory")
            .join("dask-venv"),
    }
}

/// The `bin` directory of a venv with `distributed==version`, installing it
/// if needed. Installs are cached per process and, through the script's lock
/// file, shared between processes.
pub(crate) fn venv_bin(version: &str) -> PathBuf {
    static CACHE: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(bin) = cache.get(version) {
        return bin.clone();
    }
    let script = venv_script();
    let output = Command::new("bash")
        .arg(&script)
        .arg(version)
        .env("FLOWRUN_DASK_VENV_DIR", venv_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    if !output.status.success() {
        panic!(
            "Dask {version} could not be installed, so the Dask integration tests cannot run.\n\
             {} exited with {}:\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let python = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let bin = python
        .parent()
        .unwrap_or_else(|| panic!("dask-venv.sh printed no python path: {python:?}"))
        .to_path_buf();
    assert!(
        bin.join("dask").exists(),
        "no dask executable in {}",
        bin.display()
    );
    cache.insert(version.to_string(), bin.clone());
    bin
}

/// How to start one worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSpec {
    /// Threads, i.e. tasks run at once.
    pub nthreads: u32,
    /// `--resources`, e.g. `"GPU=1"`.
    pub resources: Option<String>,
}

impl WorkerSpec {
    /// A worker with `nthreads` threads and no resources.
    pub(crate) fn threads(nthreads: u32) -> Self {
        WorkerSpec {
            nthreads,
            resources: None,
        }
    }

    /// Adds `--resources`.
    pub(crate) fn with_resources(mut self, resources: &str) -> Self {
        self.resources = Some(resources.to_string());
        self
    }
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// The worker's own address, for workers.
    address: Option<String>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

/// A running cluster; stopped on drop.
pub(crate) struct Cluster {
    /// The scheduler address, `tcp://127.0.0.1:<port>`.
    pub address: String,
    /// The `distributed` version it runs.
    pub version: String,
    scheduler: Proc,
    workers: Vec<Proc>,
    dir: tempfile::TempDir,
    /// The venv's `bin`, the scheduler file and the extra arguments, for
    /// workers started later.
    bin: PathBuf,
    scheduler_file: PathBuf,
    extra: Vec<String>,
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn spawn(bin: &Path, args: &[String], dir: &Path, name: &str) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = File::create(&log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    let mut command = Command::new(bin.join("dask"));
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own group, so that teardown can also reach the subprocesses a
        // worker was running when it was stopped.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            // If the test process dies without running Drop, the kernel
            // kills the Dask process instead of leaving it behind.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start dask {name}: {e}"));
    Proc {
        name: name.to_string(),
        child,
        log,
        address: None,
    }
}

/// Whether any process of this process group is still running.
pub(crate) fn group_alive(pgid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    unsafe { libc::kill(-(pgid as libc::pid_t), 0) == 0 }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a PID this helper started and has not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn signal_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the process group created for this PID.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

/// SIGTERM, wait up to the grace period, SIGKILL; reaps everything and
/// clears the process groups.
fn stop_all(procs: &mut [&mut Proc]) {
    for p in procs.iter_mut() {
        if !p.exited() {
            signal(p.pid(), libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && procs.iter_mut().any(|p| !p.exited()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in procs.iter_mut() {
        if !p.exited() {
            let _ = p.child.kill();
        }
        let _ = p.child.wait();
        // Subprocesses of tasks (e.g. a `sleep`) may outlive their worker.
        signal_group(p.pid(), libc::SIGKILL);
    }
}

impl Cluster {
    /// Starts a scheduler and the workers with the selected Dask version, and
    /// waits until every worker is registered.
    pub(crate) fn start(workers: &[WorkerSpec]) -> Cluster {
        Cluster::start_version(&dask_version(), workers)
    }

    /// Like [`Cluster::start`] with an explicit Dask version.
    pub(crate) fn start_version(version: &str, workers: &[WorkerSpec]) -> Cluster {
        Cluster::start_with(version, workers, &[])
    }

    /// Like [`Cluster::start_version`], with `extra` arguments for the
    /// scheduler and every worker (for example TLS settings).
    pub(crate) fn start_with(version: &str, workers: &[WorkerSpec], extra: &[String]) -> Cluster {
        let bin = venv_bin(version);
        let dir = tempfile::Builder::new()
            .prefix("flowrun-dask-test-")
            .tempdir()
            .expect("create temp dir");
        let scheduler_file = dir.path().join("scheduler.json");
        let scheduler = spawn(
            &bin,
            &[
                "scheduler".into(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                "0".into(),
                "--dashboard-address".into(),
                "127.0.0.1:0".into(),
                "--scheduler-file".into(),
                scheduler_file.display().to_string(),
            ]
            .into_iter()
            .chain(extra.iter().cloned())
            .collect::<Vec<String>>(),
            dir.path(),
            "scheduler",
        );
        let mut cluster = Cluster {
            address: String::new(),
            version: version.to_string(),
            scheduler,
            workers: Vec::new(),
            dir,
            bin,
            scheduler_file: scheduler_file.clone(),
            extra: extra.to_vec(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        cluster.address = cluster.wait_for("the scheduler file", deadline, |_| {
            let text = read(&scheduler_file);
            let json: serde_json::Value = serde_json::from_str(&text).ok()?;
            json.get("address")?.as_str().map(str::to_owned)
        });
        for spec in workers {
            cluster.spawn_worker(spec);
        }
        for i in 0..cluster.workers.len() {
            cluster.wait_worker(i, deadline);
        }
        cluster
    }

    /// Starts one more worker, named `w<n>`, and waits until it registered.
    pub(crate) fn add_worker(&mut self, spec: WorkerSpec) {
        self.spawn_worker(&spec);
        self.wait_worker(self.workers.len() - 1, Instant::now() + START_TIMEOUT);
    }

    fn spawn_worker(&mut self, spec: &WorkerSpec) {
        let name = format!("w{}", self.workers.len());
        let mut args: Vec<String> = vec![
            "worker".into(),
            "--scheduler-file".into(),
            self.scheduler_file.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--nthreads".into(),
            spec.nthreads.to_string(),
            // One process per worker: its PID is the worker, and the
            // parent of the subprocesses it runs.
            "--no-nanny".into(),
            "--dashboard-address".into(),
            "127.0.0.1:0".into(),
            "--name".into(),
            name.clone(),
            "--local-directory".into(),
            self.dir.path().join(&name).display().to_string(),
        ];
        if let Some(resources) = &spec.resources {
            args.push("--resources".into());
            args.push(resources.clone());
        }
        args.extend(self.extra.iter().cloned());
        let worker = spawn(&self.bin, &args, self.dir.path(), &name);
        self.workers.push(worker);
    }

    fn wait_worker(&mut self, i: usize, deadline: Instant) {
        let address = self.wait_for("worker registration", deadline, |c| {
            let log = read(&c.workers[i].log);
            if !log.contains("Registered to:") {
                return None;
            }
            let line = log.lines().find(|l| l.contains("Start worker at:"))?;
            line.split_whitespace().last().map(str::to_owned)
        });
        self.workers[i].address = Some(address);
    }

    /// Polls `probe` until it yields a value; fails with all logs if a
    /// process exits or the deadline passes.
    fn wait_for<T>(
        &mut self,
        what: &str,
        deadline: Instant,
        mut probe: impl FnMut(&Cluster) -> Option<T>,
    ) -> T {
        loop {
            if let Some(value) = probe(self) {
                return value;
            }
            let dead: Vec<String> = std::iter::once(&mut self.scheduler)
                .chain(self.workers.iter_mut())
                .filter_map(|p| p.exited().then(|| p.name.clone()))
                .collect();
            if !dead.is_empty() || Instant::now() > deadline {
                panic!(
                    "Dask cluster ({}) did not come up while waiting for {what} (exited: {dead:?}).\n{}",
                    self.version,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// All logs, for failure messages.
    pub(crate) fn logs(&self) -> String {
        std::iter::once(&self.scheduler)
            .chain(&self.workers)
            .map(|p| format!("----- {} log -----\n{}", p.name, read(&p.log)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The value of `result`, the outcome of work on this cluster; an error
    /// fails the test with the cluster's logs beside it.
    pub(crate) fn or_logs<T, E: std::fmt::Display>(&self, result: Result<T, E>) -> T {
        result.unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// The scheduler's log so far.
    pub(crate) fn scheduler_log(&self) -> String {
        read(&self.scheduler.log)
    }

    /// A private directory for the test's own files (markers, outputs).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The scheduler's PID.
    pub(crate) fn scheduler_pid(&self) -> u32 {
        self.scheduler.pid()
    }

    /// The worker PIDs, in the order of the specs.
    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(Proc::pid).collect()
    }

    /// The address of worker `i`.
    pub(crate) fn worker_address(&self, i: usize) -> &str {
        self.workers[i].address.as_deref().unwrap_or_default()
    }

    /// Every PID this cluster started.
    pub(crate) fn pids(&self) -> Vec<u32> {
        std::iter::once(self.scheduler_pid())
            .chain(self.worker_pids())
            .collect()
    }

    /// Kills worker `i` with SIGKILL (no chance to say goodbye) and reaps it.
    pub(crate) fn kill_worker(&mut self, i: usize) {
        let worker = &mut self.workers[i];
        let _ = worker.child.kill();
        let _ = worker.child.wait();
    }

    /// Stops everything: workers first, so they do not linger trying to
    /// reach a scheduler that is gone.
    pub(crate) fn stop(&mut self) {
        let mut workers: Vec<&mut Proc> = self.workers.iter_mut().collect();
        stop_all(&mut workers);
        stop_all(&mut [&mut self.scheduler]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        // For debugging a test: show what Dask said, since the temporary
        // directory with the logs is removed right after.
        if std::env::var_os("FLOWRUN_DASK_SHOW_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout`.
pub(crate) fn poll<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The venv's Python, with the Dask version selected for this run.
pub(crate) fn python() -> PathBuf {
    venv_bin(&dask_version()).join("python")
}

/// Evaluates `expr` (a Python expression over `s`, the scheduler) on the
/// scheduler at `address`, from a Python Dask client of its own; its repr.
pub(crate) fn on_scheduler(address: &str, expr: &str) -> String {
    with_client(
        address,
        &format!(
            "print(repr(c.run_on_scheduler(lambda dask_scheduler: (lambda s: {expr})(dask_scheduler))))"
        ),
    )
}

/// Runs the Python lines `body` with `c`, a Dask client of its own
/// connected to `address`; what they print, trimmed.
pub(crate) fn with_client(address: &str, body: &str) -> String {
    let script = format!(
        "from distributed import Client\n\
         c = Client({address:?}, timeout=60)\n\
         {body}\n\
         c.close()\n"
    );
    let out = crate::common::output_ok(
        Command::new(python()).args(["-c", &script]),
        &format!("the Python\n{script}\n"),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The longest a real-Dask test may take before it is declared hung.
pub(crate) const HANG: Duration = Duration::from_secs(300);

/// Starts a real-Dask test. In a task-mode process (the test binary started
/// again beside a Dask worker) it runs tasks and never returns. Otherwise it
/// serialises the tests of this binary (each starts Python processes on a
/// small machine, and some measure time or traffic), installs the console
/// capture and ends the process if `test` hangs for [`HANG`].
pub(crate) fn begin(
    test: &'static str,
) -> (std::sync::MutexGuard<'static, ()>, crate::common::HangGuard) {
    flowrun::worker::divert_if_worker();
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    crate::common::console_lines();
    (guard, crate::common::HangGuard::new(test, HANG))
}

/// A runner that joins `cluster`, with a connect timeout long enough for a
/// loaded machine.
pub(crate) fn runner(cluster: &Cluster) -> flowrun_dask::DaskTaskRunner {
    flowrun_dask::DaskTaskRunner::new()
        .address(&cluster.address)
        .client_kwargs(flowrun_dask::ClientKwargs::new().timeout(Duration::from_secs(60)))
}

/// Makes a CA and a certificate it signs (for 127.0.0.1, server and client
/// use) in `dir`, named `<name>-ca.pem`, `<name>.pem`, `<name>.key`.
pub(crate) fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let path = |file: &str| dir.join(format!("{name}{file}"));
    let openssl = |args: &[&str]| {
        crate::common::output_ok(
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir),
            "openssl",
        );
    };
    let s = |p: PathBuf| p.display().to_string();
    let (ca_key, ca, key, csr, cert, ext) = (
        s(path("-ca.key")),
        s(path("-ca.pem")),
        s(path(".key")),
        s(path(".csr")),
        s(path(".pem")),
        s(path(".ext")),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} test CA"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        &format!("/CN={name} node"),
    ]);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    (path("-ca.pem"), path(".pem"), path(".key"))
}

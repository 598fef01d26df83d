//! Starting workers: the flow's program again in worker mode, or threads of
//! the flow's process.
//!
//! A worker process runs the same program with the same arguments (see
//! `crate::cluster::worker_command`), so it reaches the same first flow
//! call, where flowrun diverts it into worker mode before the flow's own
//! work.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;
use flowrun_core::plumbing::lock;

use super::scheduler::{Expected, Launcher};
use super::worker::{self, WorkerConfig, WORKER_ENV};
use super::Event;

type Tail = Arc<Mutex<VecDeque<String>>>;

fn keep_tail(tail: &Tail, line: String) {
    let mut t = lock(tail);
    if t.len() == 20 {
        t.pop_front();
    }
    t.push_back(line);
}

/// Starts worker processes.
pub(crate) struct ProcessLauncher {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub config: WorkerConfig,
    pub events: Sender<Event>,
    pub expected: Expected,
    pub pids: HashMap<u32, u32>,
}

impl Launcher for ProcessLauncher {
    fn launch(&mut self, id: u32, name: &str) -> Result<u32, String> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env(WORKER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so stopping it also stops whatever it started.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        let pid = child.id();
        let mut config = self.config.clone();
        config.worker = id;
        config.name = name.to_owned();
        let line = serde_json::to_string(&config).map_err(|e| e.to_string())? + "\n";
        if let Some(mut stdin) = child.stdin.take() {
            // The secret travels on stdin: other users cannot read it from
            // the process list.
            let _ = stdin.write_all(line.as_bytes());
        }
        lock(&self.expected).insert(id);
        self.pids.insert(id, pid);
        let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut readers = Vec::new();
        for (stream, label) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                "stdout",
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                "stderr",
            ),
        ] {
            let Some(stream) = stream else { continue };
            let tail = tail.clone();
            let worker = name.to_owned();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    tracing::debug!(target: "flowrun_dask::worker_output", "{worker} {label}: {line}");
                    keep_tail(&tail, line);
                }
            }));
        }
        let events = self.events.clone();
        std::thread::Builder::new()
            .name(format!("flowrun-{name}-supervisor"))
            .spawn(move || {
                let status = match child.wait() {
                    Ok(s) => describe_status(s),
                    Err(e) => format!("unknown status: {e}"),
                };
                for r in readers {
                    let _ = r.join();
                }
                let output_tail = lock(&tail).iter().cloned().collect::<Vec<_>>().join("\n");
                let _ = events.send(Event::Exited {
                    worker: id,
                    status,
                    output_tail,
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(pid)
    }

    fn kill(&mut self, id: u32) {
        lock(&self.expected).remove(&id);
        if let Some(pid) = self.pids.remove(&id) {
            // SAFETY: signalling the process group we created for this worker.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }

    fn pid(&self, id: u32) -> Option<u32> {
        self.pids.get(&id).copied()
    }

    fn memory(&self, id: u32) -> Option<u64> {
        let pid = self.pids.get(&id)?;
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        Some(pages * page)
    }
}

fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}{}", signal_name(sig)),
        _ => "unknown status".into(),
    }
}

/// The name of the signals that usually end a worker, and what they mean.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL: killed, by a user or the kernel's out-of-memory killer)",
        libc::SIGSEGV => " (SIGSEGV: invalid memory access)",
        libc::SIGABRT => " (SIGABRT: the process aborted)",
        libc::SIGBUS => " (SIGBUS: bus error)",
        libc::SIGTERM => " (SIGTERM: asked to terminate)",
        libc::SIGINT => " (SIGINT: interrupted)",
        libc::SIGFPE => " (SIGFPE: arithmetic error)",
        libc::SIGILL => " (SIGILL: illegal instruction)",
        _ => "",
    }
}

/// Starts workers as threads of the flow's process (`processes(false)`).
pub(crate) struct ThreadLauncher {
    pub config: WorkerConfig,
    pub events: Sender<Event>,
    pub expected: Expected,
    pub sockets: Arc<Mutex<HashMap<u32, TcpStream>>>,
}

impl Launcher for ThreadLauncher {
    fn launch(&mut self, id: u32, name: &str) -> Result<u32, String> {
        let mut config = self.config.clone();
        config.worker = id;
        config.name = name.to_owned();
        lock(&self.expected).insert(id);
        let events = self.events.clone();
        let sockets = self.sockets.clone();
        std::thread::Builder::new()
            .name(format!("flowrun-{name}"))
            .spawn(move || {
                let register = |s: &TcpStream| {
                    if let Ok(c) = s.try_clone() {
                        lock(&sockets).insert(id, c);
                    }
                };
                let status = match worker::serve(config, false, Some(&register)) {
                    Ok(()) => "finished".to_owned(),
                    Err(e) => format!("failed: {e}"),
                };
                lock(&sockets).remove(&id);
                let _ = events.send(Event::Exited {
                    worker: id,
                    status,
                    output_tail: String::new(),
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(0)
    }

    fn kill(&mut self, id: u32) {
        lock(&self.expected).remove(&id);
        if let Some(s) = lock(&self.sockets).remove(&id) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn pid(&self, _id: u32) -> Option<u32> {
        None
    }

    fn memory(&self, _id: u32) -> Option<u64> {
        None
    }
}

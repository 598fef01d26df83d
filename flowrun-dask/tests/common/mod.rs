//! Helpers shared by the tests that start local clusters.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A fresh path under the system temp dir, unique to this test process and
/// `name`. Only computes the path: worker processes re-run the test up to
/// its first flow call, so a test must not create anything before that.
pub(crate) fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("flowrun-test-{}-{name}", std::process::id()))
}

/// Asserts that `text` holds each of `parts`, showing `text` where not.
pub(crate) fn assert_holds(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} is not in {text}");
    }
}

/// The body of a task that fails for one input: `Err(why)` for `bad`,
/// else `Ok(x)`.
pub(crate) fn ok_unless<T: PartialEq>(x: T, bad: T, why: &str) -> Result<T, String> {
    if x == bad {
        Err(why.to_owned())
    } else {
        Ok(x)
    }
}

/// A runner that starts, for each flow run, a local cluster of `workers`
/// worker processes of `threads` threads each.
pub(crate) fn local_cluster(workers: u32, threads: u32) -> flowrun_dask::DaskTaskRunner {
    flowrun_dask::DaskTaskRunner::new().cluster_kwargs(cluster_of(workers, threads))
}

/// The settings of a local cluster of `workers` worker processes of
/// `threads` threads each, for tests that set more.
pub(crate) fn cluster_of(workers: u32, threads: u32) -> flowrun_dask::ClusterKwargs {
    flowrun_dask::ClusterKwargs::new()
        .n_workers(workers)
        .threads_per_worker(threads)
}

/// Asks for the result of `slow`, a run still going, giving up after
/// 20 ms, then waits up to `within` for it: whether the first ask gave up,
/// and the value.
pub(crate) fn gives_up_then_gets<T: Clone + Send + 'static>(
    slow: &flowrun::TaskFuture<T>,
    within: Duration,
) -> (bool, T) {
    let gave_up = slow.result_timeout(Duration::from_millis(20)).is_none();
    let value = slow
        .result_timeout(within)
        .unwrap_or_else(|| panic!("the run finishes within {within:?}"))
        .unwrap();
    (gave_up, value)
}

/// Whether a process with this PID exists and is not a zombie.
pub(crate) fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Ends the test process if the test `test` does not finish within
/// `limit`, naming it, rather than letting the suite wait forever.
/// Dropping the guard (at the end of the test) disarms it.
#[derive(Debug)]
pub(crate) struct HangGuard(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

impl HangGuard {
    pub(crate) fn new(test: &'static str, limit: Duration) -> HangGuard {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{test} did not finish within {limit:?}; stopping the test process");
                std::process::exit(101);
            }
        });
        HangGuard(tx)
    }
}

/// Runs `command` to its end and returns its output; panics naming `what`
/// (and showing its stderr) if it cannot start or does not succeed.
pub(crate) fn output_ok(command: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The socket address of a dashboard link such as
/// `http://127.0.0.1:8787/status`.
pub(crate) fn socket_of(link: &str) -> std::net::SocketAddr {
    link.trim_start_matches("http://")
        .trim_end_matches("/status")
        .parse()
        .expect("a socket address in the link")
}

/// Sends a GET of `path` with `Host: host` and one more header over a raw
/// connection to `addr` (no client library: the tests see what the server
/// sends); reads from the connection time out after `read_timeout`.
pub(crate) fn send_get(
    addr: std::net::SocketAddr,
    path: &str,
    host: &str,
    header: &str,
    read_timeout: Duration,
) -> std::io::Result<std::net::TcpStream> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(read_timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{header}\r\n\r\n"
    )?;
    Ok(stream)
}

/// A GET over a raw connection: (status line, whole response).
pub(crate) fn http_get(addr: std::net::SocketAddr, path: &str, host: &str) -> (String, String) {
    use std::io::Read;
    let mut stream = send_get(
        addr,
        path,
        host,
        "Connection: close",
        Duration::from_secs(10),
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.lines().next().unwrap_or("").to_owned();
    (status, response)
}

/// The dashboard's event stream at `addr`, line by line; reads time out
/// after `read_timeout`.
pub(crate) fn event_stream(
    addr: std::net::SocketAddr,
    read_timeout: Duration,
) -> std::io::BufReader<std::net::TcpStream> {
    let stream = send_get(
        addr,
        "/api/events",
        "127.0.0.1",
        "Accept: text/event-stream",
        read_timeout,
    )
    .unwrap();
    std::io::BufReader::new(stream)
}

/// Waits until `cond` holds, up to `limit`.
pub(crate) fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Microseconds since the epoch (comparable across processes).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Appends a line to a file (atomic for short lines with O_APPEND).
pub(crate) fn append(path: &str, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// The names of the result files in `dir`, sorted (without the hidden
/// temporary file of a write still going); none if `dir` does not exist.
pub(crate) fn result_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| !n.starts_with('.'));
    names.sort();
    names
}

pub(crate) fn lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every console line flowrun writes in this test process, in order, as
/// its console layer formats them (installed on first use).
pub(crate) fn console_lines() -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    capture_console(false)
}

/// [`console_lines`], with the run history's log tap beside the console so
/// that the history records the lines too.
pub(crate) fn console_lines_and_history() -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    capture_console(true)
}

/// Installs the capture on first use; the first call decides `with_tap`
/// for the whole process.
fn capture_console(with_tap: bool) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    use tracing_subscriber::prelude::*;
    static LINES: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    LINES
        .get_or_init(|| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            let tap = if with_tap {
                flowrun::logging::TapLayer::registered()
            } else {
                None
            };
            tracing_subscriber::registry()
                .with(
                    flowrun::logging::ConsoleLayer::new(false)
                        .with_sink(move |l| sink.lock().unwrap().push(l.to_owned())),
                )
                .with(tap)
                .with(SpanNames)
                .init();
            lines
        })
        .clone()
}

/// The `run` field of every `task_run` span opened in this process, as a
/// program's own layer sees them (recorded once [`console_lines`] installed
/// the capture).
#[allow(dead_code)]
pub(crate) fn task_run_spans() -> Vec<String> {
    lock(span_names()).clone()
}

fn span_names() -> &'static std::sync::Mutex<Vec<String>> {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<Vec<String>>> = std::sync::OnceLock::new();
    NAMES.get_or_init(Default::default)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A program's own layer: keeps the run of each `task_run` span.
struct SpanNames;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanNames {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Run(Option<String>);
        impl tracing::field::Visit for Run {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "run" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        if attrs.metadata().name() == "task_run" {
            let mut run = Run(None);
            attrs.record(&mut run);
            lock(span_names()).extend(run.0);
        }
    }
}

/// Sleeps for `hold`, then appends when it ran (start and end, in
/// microseconds), as `what`, and in which process to `dir`'s span log.
pub(crate) fn record_span(dir: &str, what: &str, hold: Duration) {
    let start = now_us();
    std::thread::sleep(hold);
    let end = now_us();
    append(
        &format!("{dir}/spans.log"),
        &format!("{what} {start} {end} {}", std::process::id()),
    );
}

/// Of the spans of `what` in `dir`'s span log: the most that overlap at any
/// instant, how many there are, and how many processes ran them.
pub(crate) fn most_at_once(dir: &str, what: &str) -> (usize, usize, usize) {
    let mut points = Vec::new();
    let mut pids = std::collections::HashSet::new();
    let mut n = 0;
    for l in lines(&format!("{dir}/spans.log")) {
        let p: Vec<&str> = l.split(' ').collect();
        if p[0] != what {
            continue;
        }
        n += 1;
        points.push((p[1].parse::<u64>().unwrap(), 1i32));
        points.push((p[2].parse::<u64>().unwrap(), -1i32));
        pids.insert(p[3].to_owned());
    }
    // Ends sort before starts at the same instant.
    points.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in points {
        now += d;
        most = most.max(now);
    }
    (most as usize, n, pids.len())
}

/// Appends what a hook saw to `path` as `kind run state pid`, with the pid
/// of the process it ran in (one write per line, so hooks in several
/// processes do not interleave).
pub(crate) fn note_hook(
    path: impl AsRef<std::path::Path>,
    kind: &str,
    run: &flowrun::RunRef,
    state: &flowrun::State,
) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let line = format!(
        "{kind} {} {} {}\n",
        run.name(),
        state.kind(),
        std::process::id()
    );
    f.write_all(line.as_bytes()).unwrap();
}

/// The lines [`note_hook`] wrote to `path`: (`kind run state`, pid).
pub(crate) fn hook_notes(path: impl AsRef<std::path::Path>) -> Vec<(String, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (what, pid) = line.rsplit_once(' ').unwrap();
            (what.to_owned(), pid.parse().unwrap())
        })
        .collect()
}

/// The error kind and message of a run whose upstream run `upstream` failed
/// with `message`: it names the upstream and carries its message.
pub(crate) fn upstream_failed(upstream: &str, message: &str) -> (flowrun::TaskErrorKind, String) {
    (
        flowrun::TaskErrorKind::UpstreamFailed {
            upstream: upstream.into(),
        },
        format!("upstream task run '{upstream}' did not complete: {message}"),
    )
}

/// The kB of a line of /proc/self/status.
pub(crate) fn status_kb(field: &str) -> u64 {
    status_kb_of("self", field)
}

/// The kB of a line of `/proc/<process>/status` (`process`: a pid, or
/// `self`).
pub(crate) fn status_kb_of(process: impl std::fmt::Display, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What a test checks of each subflow a run called: its flow's name, its
/// final state, the task run that called it and how many task runs it
/// completed.
pub(crate) fn subflow_rows(
    subflows: &[flowrun::SubflowRun],
) -> Vec<(String, flowrun::StateKind, Option<String>, usize)> {
    subflows
        .iter()
        .map(|s| {
            (
                s.flow_name.clone(),
                s.state.kind(),
                s.parent_task_run_name.clone(),
                s.counts.completed,
            )
        })
        .collect()
}

/// Checks the run history in `home` after two flow runs at once whose
/// `tagged` runs (`tagged-<n>`) each logged `"<tag> logs <n>"` and printed
/// `"<tag> prints <n>"`, the tag being `alpha` in one flow run's
/// parameters and `beta` in the other's: each flow run holds exactly its
/// own runs' lines, each under the run that wrote it.
#[allow(dead_code)]
pub(crate) fn assert_each_flow_run_holds_its_own_tagged_lines(home: &std::path::Path, runs: usize) {
    use flowrun::history::{flush, LogQuery, RunsQuery, Store};
    flush(home);
    let store = Store::open(home).unwrap();
    let flow_runs = store.runs(&RunsQuery::default()).unwrap();
    assert_eq!(flow_runs.len(), 2);
    for run in &flow_runs {
        let params = run.parameters.as_deref().unwrap();
        let tag = if params.contains("alpha") {
            "alpha"
        } else {
            "beta"
        };
        let logs = store.logs(run, &LogQuery::default()).unwrap();
        let lines: Vec<(String, String)> = logs
            .iter()
            .filter(|l| l.text.contains(" logs ") || l.text.contains(" prints "))
            .map(|l| (l.task_run.clone().unwrap_or_default(), l.text.clone()))
            .collect();
        assert_eq!(lines.len(), 2 * runs, "{tag}: {lines:#?}");
        for (task_run, text) in &lines {
            let n = text.rsplit(' ').next().unwrap();
            assert!(text.starts_with(tag), "{tag} holds {text:?}");
            assert_eq!(task_run, &format!("tagged-{n}"), "{text:?}");
        }
    }
}

//! The local cluster's dashboard and the performance report, seen the way
//! a person sees them: in a real browser (headless Chromium, installed by
//! `scripts/chromium.sh` when missing), while the flow runs.
//!
//! Screenshots go to `target/test-artifacts/`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flowrun::{flow, task};
use flowrun_dask::{annotate, current_cluster, AdaptKwargs, ClusterKwargs, DaskTaskRunner};

// ---------------------------------------------------------------- helpers

/// Every console line of this test process.
fn logs() -> Arc<Mutex<Vec<String>>> {
    common::console_lines()
}

fn logged(needle: &str) -> Vec<String> {
    logs()
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Chromium's path; installs it when missing. A missing browser fails the
/// test: it is never skipped.
fn chromium() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // The workspace's script (this test is not part of the package).
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/chromium.sh");
        let out = common::output_ok(Command::new("bash").arg(&script), "scripts/chromium.sh");
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(Path::new(&path).exists(), "no chromium at {path:?}");
        PathBuf::from(path)
    })
    .clone()
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with `args` (`--dump-dom`,
/// `--screenshot=...`); returns its stdout.
fn chromium_run(url: &str, args: &[&str], offline: bool) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args);
    if offline {
        // Any request beyond the file itself would fail.
        cmd.args([
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",
        ]);
    }
    let out = common::output_ok(cmd.arg(url), &format!("chromium on {url}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dump_dom(url: &str, args: &[&str]) -> String {
    let mut all = vec!["--dump-dom"];
    all.extend_from_slice(args);
    chromium_run(url, &all, false)
}

fn screenshot(url: &str, file: &str, offline: bool) -> PathBuf {
    let path = artifacts().join(file);
    let shot = format!("--screenshot={}", path.display());
    chromium_run(url, &[&shot, "--window-size=1400,1000"], offline);
    assert!(path.exists(), "no screenshot at {}", path.display());
    path
}

/// The attributes of every `<tag ...>` in `html` (enough HTML parsing for
/// the elements the dashboard draws).
fn elements(html: &str, tag: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{tag} ");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at + open.len()..];
        let end = rest.find('>').unwrap_or(rest.len());
        let mut attrs = HashMap::new();
        let mut text = &rest[..end];
        while let Some(eq) = text.find("=\"") {
            let name = text[..eq]
                .trim()
                .rsplit(' ')
                .next()
                .unwrap_or("")
                .to_owned();
            let value_start = eq + 2;
            let close = text[value_start..]
                .find('"')
                .map_or(text.len(), |c| value_start + c);
            attrs.insert(name, text[value_start..close].replace("&quot;", "\""));
            text = &text[(close + 1).min(text.len())..];
        }
        out.push(attrs);
    }
    out
}

fn with_attr<'a>(
    elements: &'a [HashMap<String, String>],
    name: &str,
    value: &str,
) -> Option<&'a HashMap<String, String>> {
    elements
        .iter()
        .find(|e| e.get(name).map(String::as_str) == Some(value))
}

/// The number of pages following the events, from `/api/state`.
fn viewers(state: &str) -> usize {
    state
        .split("\"viewers\":")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    assert!(
        common::eventually(limit, &mut cond),
        "timed out waiting for {what}"
    );
}

// ------------------------------------------------------------------ tasks

#[task]
fn step(i: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(100));
    i
}

#[task]
fn broken(i: u32) -> Result<u32, String> {
    std::thread::sleep(Duration::from_millis(50));
    Err(format!("part {i} is broken"))
}

/// Holds its worker thread until the test has seen the page.
#[task]
fn hold(gate: String) -> bool {
    let end = Instant::now() + Duration::from_secs(120);
    while !Path::new(&gate).exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[task]
fn needs_gpu() -> u32 {
    1
}

// ------------------------------------------------------------------ tests

/// What the flow saw while it ran.
struct Watched {
    link: String,
    steps: Vec<String>,
    broken: Vec<String>,
    holds: Vec<String>,
    waiting: String,
    live_dom: String,
    live_png: PathBuf,
    /// A browser that stayed on the page until the flow run ended.
    follower: JoinHandle<String>,
}

#[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(
    common::cluster_of(2, 2).dashboard_address("127.0.0.1:0")))]
fn watched(gate: String) -> Watched {
    let link = flowrun_dask::dashboard_link().expect("the flow run's dashboard link");
    let steps: Vec<_> = (0..6).map(|i| step.submit(i)).collect();
    let failing: Vec<_> = (0..2).map(|i| broken.submit(i)).collect();
    let step_names = steps.iter().map(|f| f.run_ref().name()).collect();
    let broken_names = failing.iter().map(|f| f.run_ref().name()).collect();
    flowrun::results(steps).expect("steps complete");
    for f in &failing {
        assert!(f.result().is_err());
    }
    let holds: Vec<_> = (0..2).map(|_| hold.submit(gate.clone())).collect();
    let hold_names = holds.iter().map(|h| h.run_ref().name()).collect();
    wait_for("the holds to run", Duration::from_secs(30), || {
        holds.iter().all(|h| h.run_ref().state().is_running())
    });
    let gpu = annotate()
        .resources([("GPU", 1.0)])
        .run(|| needs_gpu.submit());
    let cluster = current_cluster().unwrap();
    wait_for("the GPU task to wait", Duration::from_secs(30), || {
        !cluster.status().unwrap().waiting.is_empty()
    });

    // A page loaded now shows the flow run as it is.
    let live_dom = dump_dom(&link, &[]);
    let live_png = screenshot(&link, "dashboard-live.png", false);

    // The pages above followed the events too; their connections count
    // until the server's keep-alives find them closed.
    let addr = common::socket_of(&link);
    wait_for(
        "the pages that were closed to stop counting as viewers",
        Duration::from_secs(30),
        || {
            let (_, body) = common::http_get(addr, "/api/state", "127.0.0.1");
            viewers(&body) == 0
        },
    );

    // A page that stays open follows the flow run to its end.
    let follow = link.clone();
    let follower = std::thread::spawn(move || dump_dom(&follow, &["--virtual-time-budget=60000"]));
    wait_for(
        "the browser to follow the events",
        Duration::from_secs(60),
        || {
            let (_, body) = common::http_get(addr, "/api/state", "127.0.0.1");
            viewers(&body) > 0
        },
    );

    let waiting = gpu.run_ref().name();
    std::fs::write(&gate, "go").unwrap();
    assert!(gpu.cancel(), "the waiting GPU task can be cancelled");
    flowrun::results(holds).expect("holds complete");
    Watched {
        link,
        steps: step_names,
        broken: broken_names,
        holds: hold_names,
        waiting,
        live_dom,
        live_png,
        follower,
    }
}

#[test]
fn the_dashboard_shows_a_running_flow_in_a_browser() {
    logs();
    let gate = common::scratch("dashboard-gate");
    let seen = watched(gate.display().to_string()).expect("flow runs");
    let _ = std::fs::remove_file(&gate);

    assert_eq!(
        logged(&format!("The dashboard is at {}", seen.link)).len(),
        1,
        "the link is logged when the flow starts"
    );

    // The page as loaded while the holds ran and the GPU task waited.
    let dom = &seen.live_dom;
    assert!(dom.contains("data-state=\"live\""), "live page");
    let bars = elements(dom, "rect");
    for run in seen.steps.iter() {
        let bar = with_attr(&bars, "data-run", run).unwrap_or_else(|| panic!("no bar for {run}"));
        assert_eq!(bar["data-outcome"], "completed", "{run}");
        assert_eq!(bar["data-task"], "step");
    }
    for run in &seen.broken {
        let bar = with_attr(&bars, "data-run", run).unwrap_or_else(|| panic!("no bar for {run}"));
        assert_eq!(bar["data-outcome"], "failed", "{run} is marked failed");
    }
    for run in &seen.holds {
        let bar = with_attr(&bars, "data-run", run).unwrap_or_else(|| panic!("no bar for {run}"));
        assert_eq!(bar["class"], "bar running", "{run} is drawn running");
    }
    // One colour per task name.
    let fill_of = |run: &str| with_attr(&bars, "data-run", run).unwrap()["fill"].clone();
    assert_eq!(fill_of(&seen.steps[0]), fill_of(&seen.steps[5]));
    assert_ne!(fill_of(&seen.steps[0]), fill_of(&seen.broken[0]));

    let progress = elements(dom, "div");
    let row = |task: &str| {
        with_attr(&progress, "data-task", task)
            .unwrap_or_else(|| panic!("no progress row for {task}"))
            .clone()
    };
    assert_eq!(row("step")["data-completed"], "6");
    assert_eq!(row("broken")["data-failed"], "2");
    assert_eq!(row("hold")["data-running"], "2");
    assert_eq!(row("needs_gpu")["data-pending"], "1");

    let rows = elements(dom, "tr");
    let busy: usize = ["worker-0", "worker-1"]
        .iter()
        .map(|w| {
            let row =
                with_attr(&rows, "data-worker", w).unwrap_or_else(|| panic!("no row for {w}"));
            assert_eq!(row["data-nthreads"], "2");
            row["data-busy"].parse::<usize>().unwrap()
        })
        .sum();
    assert_eq!(busy, 2, "the two holds keep two threads busy");

    let waiting = with_attr(&rows, "data-run", &seen.waiting).expect("the waiting task is listed");
    assert!(waiting.contains_key("data-run"));
    let reason_at = dom.find(&format!("data-run=\"{}\"", seen.waiting)).unwrap();
    let reason = &dom[reason_at..reason_at + 400.min(dom.len() - reason_at)];
    assert!(
        reason.contains("it needs {\"GPU\": 1}")
            || reason.contains("it needs {&quot;GPU&quot;: 1}"),
        "the reason is shown: {reason}"
    );
    let chart = elements(dom, "svg");
    let counts = with_attr(&chart, "id", "worker-count-chart").expect("a worker count chart");
    assert!(
        counts["data-counts"].ends_with('2'),
        "{:?}",
        counts["data-counts"]
    );
    assert!(seen.live_png.exists());

    // The page that stayed received updates until the flow run ended.
    let last = seen.follower.join().expect("the following browser");
    assert!(
        last.contains("data-state=\"ended\""),
        "the page saw the end"
    );
    let updates: usize = elements(&last, "body")[0]["data-updates"].parse().unwrap();
    assert!(
        updates >= 2,
        "the page was updated live ({updates} updates)"
    );
    let bars = elements(&last, "rect");
    for run in &seen.holds {
        let bar = with_attr(&bars, "data-run", run).unwrap();
        assert_eq!(
            bar["data-outcome"], "completed",
            "{run} ended while watched"
        );
    }

    // The server stopped with the cluster.
    assert!(
        TcpStream::connect_timeout(&common::socket_of(&seen.link), Duration::from_secs(1)).is_err()
    );
}

#[flow]
fn reported() -> u32 {
    let steps: Vec<_> = (0..6).map(|i| step.submit(i)).collect();
    let total = flowrun::results(steps).unwrap().iter().sum();
    // Nobody handles these failures: the flow run fails, the report is
    // written all the same.
    let _ = (0..2).map(|i| broken.submit(i)).collect::<Vec<_>>();
    total
}

#[test]
fn the_performance_report_is_one_file_that_opens_offline() {
    logs();
    let path = common::scratch("performance-report.html");
    let runner = DaskTaskRunner::new()
        .cluster_kwargs(ClusterKwargs::new().threads_per_worker(1).no_dashboard())
        .adapt_kwargs(AdaptKwargs::new().minimum(1).maximum(2))
        .performance_report_path(&path);
    let run = reported.with_runner(runner).call();
    assert!(run.is_err(), "the unhandled failures fail the flow run");
    let html = std::fs::read_to_string(&path).expect("the report was written");
    let wrote = logged(&format!(
        "Wrote the performance report to {}",
        path.display()
    ));
    assert_eq!(wrote.len(), 1);
    // "... | Flow run 'name' - Wrote ...": nothing served for that flow run.
    let flow_run = wrote[0]
        .split(" - ")
        .next()
        .unwrap()
        .rsplit(" | ")
        .next()
        .unwrap();
    assert_eq!(
        logged(flow_run)
            .iter()
            .filter(|l| l.contains("The dashboard is at"))
            .count(),
        0,
        "no_dashboard()"
    );
    for external in ["src=", "href=", "http:", "https:", "@import"] {
        assert!(!html.contains(external), "the report refers to {external}");
    }
    let url = format!("file://{}", path.display());
    let dom = chromium_run(&url, &["--dump-dom"], true);
    let png = screenshot(&url, "performance-report.png", true);
    let _ = std::fs::remove_file(&path);

    assert!(dom.contains("data-state=\"report\""));
    let bars = elements(&dom, "rect");
    for i in 0..6 {
        assert!(
            with_attr(&bars, "data-run", &format!("step-{i}")).is_some(),
            "step-{i}"
        );
    }
    assert_eq!(
        with_attr(&bars, "data-run", "broken-1").unwrap()["data-outcome"],
        "failed"
    );
    let rows = elements(&dom, "tr");
    let step_row = with_attr(&rows, "data-task", "step").expect("a summary row per task");
    assert_eq!(step_row["data-runs"], "6");
    assert_eq!(step_row["data-attempts"], "6");
    assert_eq!(
        with_attr(&rows, "data-task", "broken").unwrap()["data-runs"],
        "2"
    );
    assert!(dom.contains("task runs per second"), "throughput");
    assert!(dom.contains("worker threads busy"), "utilisation");
    let charts = elements(&dom, "svg");
    let counts = with_attr(&charts, "id", "worker-count-chart").expect("workers over time");
    assert!(counts["data-counts"].split(',').count() >= 2);
    assert!(png.exists());
}

#[task]
fn quick() -> u32 {
    1
}

#[flow]
fn one_quick_task() -> Option<String> {
    quick.submit().result().unwrap();
    flowrun_dask::dashboard_link()
}

/// An event stream a test reads by hand: the first event arrives at once.
struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    fn open(addr: SocketAddr) -> Events {
        Events {
            reader: common::event_stream(addr, Duration::from_secs(10)),
        }
    }

    /// The next `data:` line, or `None` at the end of the stream.
    fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(data) = line.strip_prefix("data:") {
                return Some(data.trim().to_owned());
            }
        }
    }
}

#[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(
    ClusterKwargs::new().n_workers(1).dashboard_address(":0")))]
fn followed() -> (String, Events, String) {
    let link = flowrun_dask::dashboard_link().unwrap();
    let mut events = Events::open(common::socket_of(&link));
    let first = events.next_data().expect("a first event");
    quick.submit().result().unwrap();
    (link, events, first)
}

#[test]
fn the_server_stops_with_the_cluster_even_with_a_page_open() {
    logs();
    let started = Instant::now();
    let (link, mut events, first) = followed().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an open page does not hold up the end of the flow run"
    );
    assert!(first.contains("\"ended\":false"), "{first}");
    let mut last = first;
    while let Some(data) = events.next_data() {
        last = data;
    }
    assert!(
        last.contains("\"ended\":true"),
        "the page is told the flow run ended"
    );
    assert!(link.starts_with("http://127.0.0.1:"), "{link}");
    assert!(TcpStream::connect_timeout(&common::socket_of(&link), Duration::from_secs(1)).is_err());
}

#[test]
fn dashboard_addresses_ports_and_failures() {
    logs();
    // Loopback by default.
    let link = one_quick_task
        .with_runner(DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(1)))
        .call()
        .unwrap()
        .expect("a dashboard by default");
    assert!(link.starts_with("http://127.0.0.1:"), "{link}");

    // Off.
    let none = one_quick_task
        .with_runner(
            DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(1).no_dashboard()),
        )
        .call()
        .unwrap();
    assert_eq!(none, None);

    // A taken port: another one, with a warning.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let link = one_quick_task
        .with_runner(
            DaskTaskRunner::new().cluster_kwargs(
                ClusterKwargs::new()
                    .n_workers(1)
                    .dashboard_address(format!("127.0.0.1:{port}")),
            ),
        )
        .call()
        .unwrap()
        .expect("a dashboard on another port");
    assert_ne!(common::socket_of(&link).port(), port);
    let warned = logged(&format!("Port {port} is in use"));
    assert_eq!(warned.len(), 1);
    assert!(warned[0].contains("WARNING"), "{}", warned[0]);
    drop(taken);

    // An address it cannot listen on: a warning, not a failed flow run.
    let none = one_quick_task
        .with_runner(
            DaskTaskRunner::new().cluster_kwargs(
                ClusterKwargs::new()
                    .n_workers(1)
                    .dashboard_address("192.0.2.1:8787"),
            ),
        )
        .call()
        .expect("the flow runs without its dashboard");
    assert_eq!(none, None);
    let warned = logged("The dashboard cannot listen on 192.0.2.1:8787");
    assert_eq!(warned.len(), 1);
    assert!(warned[0].contains("WARNING"));

    // A wrong address is a settings error naming the setting.
    let error = one_quick_task
        .with_runner(
            DaskTaskRunner::new()
                .cluster_kwargs(ClusterKwargs::new().dashboard_address("not an address")),
        )
        .call()
        .unwrap_err();
    assert!(
        error.message().contains("cluster_kwargs.dashboard_address"),
        "{error}"
    );
}

#[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(
    ClusterKwargs::new().n_workers(1).dashboard_address(":0")))]
fn host_checked() -> (String, String, String) {
    let addr = common::socket_of(&flowrun_dask::dashboard_link().unwrap());
    let (ok, _) = common::http_get(addr, "/status", &format!("localhost:{}", addr.port()));
    let (rebound, _) = common::http_get(addr, "/status", "attacker.example");
    let (state, body) = common::http_get(addr, "/api/state", "127.0.0.1");
    quick.submit().result().unwrap();
    (ok, rebound, format!("{state}\n{body}"))
}

#[test]
fn a_loopback_dashboard_answers_only_to_loopback_names() {
    logs();
    let (ok, rebound, state) = host_checked().unwrap();
    assert!(ok.contains(" 200 "), "{ok}");
    assert!(rebound.contains(" 403 "), "{rebound}");
    assert!(
        state.contains(" 200 ") && state.contains("\"workers\":["),
        "{state}"
    );
}

// --------------------------------------------------------------- subflows

#[flow]
fn held_child(gate: String) -> bool {
    hold.submit(gate).result().unwrap()
}

/// The page's state from `/api/state` (the body after the headers holds
/// the state and the task stream).
fn api_state(addr: SocketAddr) -> serde_json::Value {
    let (_, response) = common::http_get(addr, "/api/state", "127.0.0.1");
    let body = &response[response.find('{').expect("a JSON body")..];
    let message: serde_json::Value = serde_json::from_str(body).expect("the state is JSON");
    message["state"].clone()
}

/// The dashboard's entry of the `held-child` subflow, if it lists one.
fn held_child_entry(state: &serde_json::Value) -> Option<serde_json::Value> {
    state["subflows"]
        .as_array()?
        .iter()
        .find(|s| s["flow"] == "held-child")
        .cloned()
}

#[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(
    ClusterKwargs::new().n_workers(1).dashboard_address(":0")))]
fn with_a_subflow(gate: String) -> (serde_json::Value, serde_json::Value, String) {
    let addr = common::socket_of(&flowrun_dask::dashboard_link().unwrap());
    let opener = gate.clone();
    // Looks at the page's data while the child runs, then lets it end.
    let watcher = std::thread::spawn(move || {
        let mut seen = None;
        common::eventually(Duration::from_secs(60), || {
            seen = held_child_entry(&api_state(addr)).filter(|s| s["state"] == "Running");
            seen.is_some()
        });
        std::fs::write(&opener, "go").unwrap();
        seen.unwrap_or_default()
    });
    let child = held_child.return_state(gate);
    let running = watcher.join().unwrap();
    // The page's data is refreshed at most a few times a second.
    let mut ended = serde_json::Value::Null;
    common::eventually(Duration::from_secs(10), || {
        ended = held_child_entry(&api_state(addr)).unwrap_or_default();
        ended["state"] != "Running"
    });
    (running, ended, child.name().to_owned())
}

#[test]
fn the_dashboard_lists_subflow_runs_while_they_run_and_after() {
    logs();
    let gate = common::scratch("dashboard-subflow-gate");
    let (running, ended, child_name) =
        with_a_subflow(gate.display().to_string()).expect("the flow completes");
    let _ = std::fs::remove_file(&gate);
    assert_eq!(running["run"], child_name.as_str(), "{running}");
    assert_eq!(running["state"], "Running", "{running}");
    assert_eq!(running["task_run"], serde_json::Value::Null, "{running}");
    assert_eq!(ended["state"], "Completed", "{ended}");
    assert_eq!(ended["completed"], 1, "{ended}");
    assert_eq!(ended["total"], 1, "{ended}");
}

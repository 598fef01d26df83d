//! The `flowrun` command on a home that real flow runs recorded into: each
//! subcommand's text and `--json` output, its filters, and its errors.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use flowrun::{flow, get_run_logger, task};

#[task]
fn square(x: u64) -> u64 {
    get_run_logger().info(format!("squaring {x} in the greenhouse"));
    x * x
}

#[task]
fn fail_loudly(x: u64) -> Result<u64, String> {
    get_run_logger().error(format!("cannot cope with {x}"));
    Err(format!("{x} is a bad number"))
}

#[flow(tags = ["garden", "daily"])]
fn squares(n: u64) -> u64 {
    (0..n)
        .map(|i| square.submit(i))
        .map(|f| f.result().unwrap())
        .sum()
}

#[flow]
fn broken() -> u64 {
    let ok = square.submit(3);
    let bad = fail_loudly.submit(13);
    bad.wait();
    ok.result().unwrap()
}

#[flow]
fn nested() -> u64 {
    squares(2).unwrap() + 1
}

/// A home with three flow runs: `squares` (5 task runs), `broken` (one
/// failure) and `nested` (a subflow). Made once per test process, in the
/// target folder (the next run starts it afresh); tests only read it.
fn home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flowrun-cli-home");
        let _ = std::fs::remove_dir_all(&path);
        let _guard = flowrun::history::use_home(&path);
        squares(5).unwrap();
        assert!(broken().is_err());
        nested().unwrap();
        flowrun::history::flush(&path);
        path
    })
}

fn flowrun(home: &Path, args: &[&str]) -> Output {
    flowrun_in(home, args, 160)
}

/// `flowrun` on a terminal `columns` wide.
fn flowrun_in(home: &Path, args: &[&str], columns: usize) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowrun"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env("COLUMNS", columns.to_string())
        .output()
        .unwrap()
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = flowrun(home, args);
    assert!(
        out.status.success(),
        "flowrun {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(home: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok(home, &all)).unwrap()
}

fn run_id(flow: &str) -> String {
    let runs = json(home(), &["runs", "--flow", flow]);
    runs[0]["id"].as_str().unwrap().to_owned()
}

#[test]
fn runs_lists_flow_runs_newest_first_with_task_counts_fitting_the_terminal() {
    let out = ok(home(), &["runs"]);
    let lines: Vec<_> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    for header in ["NAME", "FLOW", "STATE", "START", "DURATION", "TASK RUNS"] {
        assert!(lines[0].contains(header), "{out}");
    }
    assert_eq!(lines.len(), 5, "a header and four flow runs: {out}");
    assert!(
        lines[1].contains("squares"),
        "newest first, the subflow: {out}"
    );
    assert!(lines[2].contains("nested"), "{out}");
    let failed = lines.iter().find(|l| l.contains("broken")).unwrap();
    assert!(failed.contains("Failed"), "{out}");
    assert!(failed.contains("2: 1 completed, 1 failed"), "{out}");
    let first = lines.iter().rfind(|l| l.contains("squares")).unwrap();
    assert!(first.contains("5: 5 completed"), "{out}");
    let narrow = String::from_utf8(flowrun_in(home(), &["runs"], 80).stdout).unwrap();
    assert_eq!(narrow.lines().count(), 5, "{narrow}");
    assert!(narrow.lines().all(|l| l.chars().count() <= 80), "{narrow}");
    // The short id in the first column finds the run.
    let short = lines[2].split_whitespace().next().unwrap();
    let shown = ok(home(), &["show", short]);
    assert!(shown.contains("(flow nested)"), "{shown}");
}

#[test]
fn runs_filters_by_flow_state_and_time() {
    let runs = json(home(), &["runs", "--flow", "squares"]);
    assert_eq!(
        runs.as_array().unwrap().len(),
        2,
        "the top-level run and the subflow"
    );
    let failed = json(home(), &["runs", "--state", "failed"]);
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["flow"], "broken");
    assert_eq!(failed[0]["tasks"]["failed"], 1);
    assert_eq!(
        json(home(), &["runs", "--since", "1h"])
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let future = json(home(), &["runs", "--since", "2999-01-01T00:00:00Z"]);
    assert!(future.as_array().unwrap().is_empty());
    let out = flowrun(home(), &["runs", "--since", "yesterdayish"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is neither an age"));
}

#[test]
fn show_prints_task_runs_failures_and_subflows() {
    let out = ok(home(), &["show", &run_id("broken")]);
    assert!(out.contains("Flow run  "), "{out}");
    assert!(out.contains("(flow broken)"), "{out}");
    assert!(out.contains("Task runs 2: 1 completed, 1 failed"), "{out}");
    assert!(out.contains("square-0"), "{out}");
    let failures = out.split("Failures").nth(1).expect("a failures section");
    assert!(
        failures.contains("fail_loudly-0 Failed after 1 attempt: 13 is a bad number"),
        "{out}"
    );

    let parent = run_id("nested");
    let out = ok(home(), &["show", &parent[..20]]);
    let subflows = out.split("Subflows").nth(1).expect("a subflows section");
    assert!(subflows.contains("squares"), "{out}");

    let runs = json(home(), &["runs", "--flow", "squares"]);
    assert!(
        runs[0]["parent_flow_run"].as_str().is_some(),
        "the newest is the subflow"
    );
    let top = runs[1]["id"].as_str().unwrap();
    let detail = json(home(), &["show", top, "--limit", "3"]);
    assert_eq!(detail["task_runs"].as_array().unwrap().len(), 3);
    assert_eq!(detail["run"]["tasks"]["total"], 5);
    let out = ok(home(), &["show", top, "--limit", "3"]);
    assert!(out.contains("(the first 3 of 5 task runs"), "{out}");
}

#[test]
fn show_prints_the_flow_run_s_parameters_and_tags() {
    let runs = json(home(), &["runs", "--flow", "squares"]);
    let top = runs[1]["id"].as_str().unwrap();
    let out = ok(home(), &["show", top]);
    assert!(out.contains("Parameters {\"n\":5}"), "{out}");
    assert!(out.contains("Tags      garden, daily"), "{out}");
    let detail = json(home(), &["show", top]);
    assert_eq!(detail["run"]["parameters"], serde_json::json!({"n": 5}));
    assert_eq!(
        detail["run"]["tags"],
        serde_json::json!(["garden", "daily"])
    );
    assert_eq!(runs[1]["parameters"]["n"], 5, "`runs --json` too");
    let none = json(home(), &["show", &run_id("broken")]);
    assert_eq!(none["run"]["parameters"], serde_json::json!({}));
    assert_eq!(none["run"]["tags"], serde_json::json!([]));
}

#[test]
fn show_names_an_unknown_run() {
    let out = flowrun(home(), &["show", "no-such-run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no flow run matches 'no-such-run'"), "{err}");
}

#[test]
fn logs_filters_by_task_text_and_level() {
    let id = run_id("broken");
    let out = ok(home(), &["logs", &id]);
    assert!(
        out.contains("| INFO    | Task run 'square-0' - squaring 3 in the greenhouse"),
        "{out}"
    );
    assert!(
        out.contains("| ERROR   | Task run 'fail_loudly-0' - cannot cope with 13"),
        "{out}"
    );

    let out = ok(home(), &["logs", &id, "--level", "error"]);
    assert!(out.contains("cannot cope"), "{out}");
    assert!(!out.contains("greenhouse"), "{out}");

    let out = ok(home(), &["logs", &id, "--task", "square-0"]);
    assert!(
        out.contains("greenhouse") && !out.contains("cannot cope"),
        "{out}"
    );
    let out = ok(
        home(),
        &["logs", &id, "--task", "fail_loudly", "--level", "error"],
    );
    assert!(
        out.contains("cannot cope") && !out.contains("greenhouse"),
        "by task name: {out}"
    );

    let found = json(home(), &["logs", &id, "--grep", "greenhouse"]);
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["task_run"], "square-0");
    assert_eq!(found[0]["level"], "INFO");
    let none = json(home(), &["logs", &id, "--grep", "\"quoted\" (odd) -text*"]);
    assert!(
        none.as_array().unwrap().is_empty(),
        "punctuation is searched, not parsed"
    );

    let out = flowrun(home(), &["logs", &id, "--level", "loud"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'loud' is not a level"));
}

/// What `flowrun` printed with its standard output on a terminal `columns`
/// wide (a pseudo-terminal), `COLUMNS` saying 300: the terminal wins.
#[cfg(target_os = "linux")]
fn on_terminal(home: &Path, args: &[&str], columns: u16) -> String {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors it opened into the two ints
    // and reads only `size`; a null name and null termios are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened for us and nothing else
    // owns them.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowrun"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env("COLUMNS", "300")
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The child holds the only terminal end left: reading ends (EIO) when
    // it exits.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut master = master;
    loop {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "flowrun {args:?} failed: {err}");
    // The terminal turns each newline into CR LF.
    String::from_utf8(out).unwrap().replace("\r\n", "\n")
}

#[cfg(target_os = "linux")]
#[test]
fn tables_fit_the_terminal_s_own_width_over_columns() {
    for args in [&["runs"][..], &["show", &run_id("broken")]] {
        let out = on_terminal(home(), args, 60);
        assert!(out.lines().count() > 2, "{out}");
        assert!(
            out.lines().all(|l| l.chars().count() <= 60),
            "{args:?} on 60 columns: {out}"
        );
        assert!(out.contains('…'), "wide cells are cut: {out}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn log_lines_wrap_on_a_terminal_and_are_never_cut_when_piped() {
    let id = run_id("broken");
    let full = "| INFO    | Task run 'square-0' - squaring 3 in the greenhouse";
    let out = on_terminal(home(), &["logs", &id], 50);
    assert!(
        out.lines().all(|l| l.chars().count() <= 50),
        "on 50 columns: {out}"
    );
    let first = out.lines().position(|l| l.contains("| INFO    |")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines[first].contains("greenhouse"), "it wraps: {out}");
    let next = lines[first + 1];
    assert!(
        next.starts_with(&" ".repeat(25)) && !next.trim().is_empty(),
        "the text goes on under where it began: {out}"
    );
    let joined = lines[first..]
        .iter()
        .take_while(|l| *l == &lines[first] || l.starts_with(' '))
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(joined.ends_with(full), "nothing is lost: {joined}");

    // Piped (a script reading it), a narrow COLUMNS cuts nothing.
    let piped = String::from_utf8(flowrun_in(home(), &["logs", &id], 50).stdout).unwrap();
    assert!(piped.lines().any(|l| l.ends_with(full)), "{piped}");
}

/// A copy of the shared home, for commands that change it.
fn copy_of_home() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = rusqlite::Connection::open(flowrun::history::database_path(home())).unwrap();
    db.execute(
        "VACUUM INTO ?1",
        [flowrun::history::database_path(dir.path())
            .to_str()
            .unwrap()],
    )
    .unwrap();
    dir
}

#[test]
fn runs_prune_deletes_old_runs_with_their_task_runs_and_logs() {
    let dir = copy_of_home();
    let db = rusqlite::Connection::open(flowrun::history::database_path(dir.path())).unwrap();
    let forty_days = 40 * 24 * 3600 * 1000_i64;
    db.execute(
        "UPDATE flow_runs SET start_ms = start_ms - ?1 WHERE flow = 'broken'",
        [forty_days],
    )
    .unwrap();
    let pruned = json(dir.path(), &["runs", "prune", "--older-than", "30d"]);
    assert_eq!(pruned["flow_runs"], 1);
    assert_eq!(pruned["task_runs"], 2);
    assert!(pruned["logs"].as_u64().unwrap() >= 2);
    let left: i64 = db
        .query_row("SELECT count(*) FROM task_runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 5 + 2, "squares and the subflow's squares are left");
    let stale: i64 = db
        .query_row(
            "SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'cope'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stale, 0, "the search index forgot the pruned lines");
    let out = ok(dir.path(), &["runs", "prune", "--older-than", "30d"]);
    assert!(out.contains("Pruned 0 flow runs"), "{out}");
}

#[test]
fn cache_clear_forgets_keys_and_deletes_stored_results() {
    let dir = copy_of_home();
    let db = rusqlite::Connection::open(flowrun::history::database_path(dir.path())).unwrap();
    db.execute(
        "UPDATE task_runs SET cache_key = 'k-' || seq WHERE task = 'square'",
        [],
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("storage")).unwrap();
    std::fs::write(dir.path().join("storage/k-1"), b"result").unwrap();
    let cleared = json(dir.path(), &["cache", "clear"]);
    assert_eq!(cleared["keys"], 5 + 1 + 2);
    assert_eq!(cleared["files"], 1);
    assert!(!dir.path().join("storage/k-1").exists());
    let keys: i64 = db
        .query_row("SELECT count(cache_key) FROM task_runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(keys, 0);
}

#[test]
fn cache_clear_deletes_results_persisted_with_the_history_off() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("storage/.stored-keys")).unwrap();
    std::fs::write(dir.path().join("storage/k-1"), b"result").unwrap();
    std::fs::write(dir.path().join("storage/.stored-keys/k-1"), b"k-1").unwrap();
    let cleared = json(dir.path(), &["cache", "clear"]);
    assert_eq!(cleared["keys"], 0);
    assert_eq!(
        cleared["files"], 1,
        "the record of k-1's key is not a result"
    );
    assert!(!dir.path().join("storage/k-1").exists());
    assert!(!dir.path().join("storage/.stored-keys").exists());
}

#[test]
fn a_home_without_history_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = flowrun(dir.path(), &["runs"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no flow has recorded into this home yet"),
        "{err}"
    );
}

fn chromium() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/chromium.sh");
    let out = Command::new("bash").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/chromium.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Stops the server when the test ends, pass or fail.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ui_serves_past_runs_to_a_browser() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowrun"))
        .arg("--home")
        .arg(home())
        .args(["ui", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _server = Server(child);
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();

    let list = dump_dom(&url);
    assert!(list.contains("id=\"runs\""), "{list}");
    for flow in ["squares", "broken", "nested"] {
        assert!(list.contains(&format!("<td>{flow}</td>")), "{list}");
    }
    let id = run_id("broken");
    let page = dump_dom(&format!("{url}runs/{id}"));
    assert!(
        page.contains("<rect class=\"bar\" data-run=\"square-0\""),
        "{page}"
    );
    assert!(
        page.contains("<rect class=\"bar\" data-run=\"fail_loudly-0\""),
        "{page}"
    );
    assert!(page.contains("id=\"per-task\""), "{page}");
    assert!(
        page.contains("<td>fail_loudly</td><td>1</td><td>0</td><td>1</td>"),
        "{page}"
    );
    assert!(page.contains("13 is a bad number"), "{page}");
    assert!(page.contains("cannot cope with 13"), "the logs: {page}");
    assert!(page.contains("id=\"states\""), "{page}");
    assert!(page.contains("(flow run)"), "the flow's own states: {page}");
    let searched = dump_dom(&format!("{url}runs/{id}?grep=greenhouse"));
    let logs = searched.split("id=\"logs\"").nth(1).unwrap();
    let logs = logs.split("</pre>").next().unwrap();
    assert!(
        logs.contains("greenhouse") && !logs.contains("cannot cope"),
        "{logs}"
    );
    let tagged = dump_dom(&format!("{url}runs/{}", run_id("squares")));
    let parameters = tagged
        .split("id=\"parameters\">")
        .nth(1)
        .expect("a parameters section");
    assert!(
        parameters.starts_with("{\"n\":2}") || parameters.starts_with("{&quot;n&quot;:2}"),
        "{tagged}"
    );
    assert!(
        tagged.contains("<span class=\"tag\">garden</span>"),
        "{tagged}"
    );
    let missing = dump_dom(&format!("{url}runs/no-such-run"));
    assert!(missing.contains("no flow run matches"), "{missing}");
}

#[task]
fn calls_a_flow(n: u64) -> u64 {
    squares(n).unwrap()
}

#[flow]
fn flow_in_a_task() -> u64 {
    calls_a_flow.submit(2).result().unwrap()
}

#[test]
fn show_names_the_task_run_that_called_a_subflow() {
    let home = tempfile::tempdir().unwrap();
    {
        let _guard = flowrun::history::use_home(home.path());
        flow_in_a_task().unwrap();
    }
    flowrun::history::flush(home.path());
    let parent = json(home.path(), &["runs", "--flow", "flow-in-a-task"]);
    let parent = parent[0]["id"].as_str().unwrap();
    let task = json(home.path(), &["show", parent])["task_runs"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let child = json(home.path(), &["runs", "--flow", "squares"]);
    let out = ok(home.path(), &["show", child[0]["id"].as_str().unwrap()]);
    assert!(out.contains(&format!("Subflow of {parent}")), "{out}");
    assert!(out.contains(&format!("Called by task run {task}")), "{out}");
}

#[test]
fn ui_refuses_json_instead_of_ignoring_it() {
    let out = flowrun(home(), &["ui", "--json", "--addr", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--json does not apply to `ui`"), "{err}");
}

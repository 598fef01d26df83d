//! The run history: what a flow run records, and how recording fails
//! without failing the flow (unwritable home, corrupt or newer database,
//! a flow process killed mid-commit, several processes sharing a home).
//!
//! Tests that need a process of their own run this test binary again with
//! `--ignored --exact child_flow` and the settings in the environment.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use flowrun::history::{temp_home, FlowRunRow, LogQuery, RunDetail, RunsQuery, Store};
use flowrun::{flow, get_run_logger, task};

mod common;

#[task]
fn double(x: u64) -> u64 {
    get_run_logger().info(format!("doubling {x} with care"));
    x * 2
}

#[task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[task]
fn explode(why: String) -> Result<u64, String> {
    get_run_logger().warn("about to explode");
    Err(why)
}

#[flow]
fn arithmetic(n: u64) -> u64 {
    let a = double.submit(n);
    let b = double.submit(n + 1);
    let sum = add.submit(a, b).result().unwrap();
    let failed = explode.submit("the fuse was short".to_owned());
    failed.wait();
    get_run_logger().info("all submitted");
    sum
}

#[flow]
fn many(n: u64) -> u64 {
    let futures: Vec<_> = (0..n).map(|i| add.submit(i, 1)).collect();
    futures.into_iter().map(|f| f.result().unwrap()).sum()
}

#[flow]
fn inner(x: u64) -> u64 {
    double(x)
}

#[flow]
fn outer(x: u64) -> u64 {
    inner(x).unwrap() + 1
}

#[task]
fn greet(x: u64) -> u64 {
    get_run_logger().info(format!("hello {x} from a worker process"));
    x
}

#[flow(task_runner = common::local_cluster(1, 1))]
fn on_cluster(n: u64) -> u64 {
    (0..n)
        .map(|i| greet.submit(i))
        .map(|f| f.result().unwrap())
        .sum()
}

/// A runner that cannot start.
#[derive(Default)]
struct Refusing;

impl flowrun::runner::TaskRunner for Refusing {
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "Refusing".into()
    }

    fn start(
        &self,
        _flow: &flowrun::runner::FlowRunInfo,
    ) -> Result<(), flowrun::runner::RunnerError> {
        Err(flowrun::runner::RunnerError::new("no room at the inn"))
    }

    fn submit(&self, call: flowrun::runner::TaskCall) {
        call.into_work();
    }
}

#[flow(task_runner = Refusing)]
fn never_starts() -> u64 {
    1
}

#[task]
fn runs_a_flow(x: u64) -> u64 {
    inner(x).unwrap()
}

#[flow]
fn flow_in_task(x: u64) -> u64 {
    runs_a_flow(x)
}

/// A parameter type that is not `Serialize`.
#[derive(Clone)]
struct Connection {
    _fd: i32,
}

#[flow(tags = ["etl", "nightly run"])]
fn with_parameters(n: u64, label: String, scale: Option<f64>, conn: Connection) -> u64 {
    let _ = (&label, scale, conn);
    double(n)
}

#[flow(history = false)]
fn unrecorded(n: u64) -> u64 {
    inner(n).unwrap() + add(n, 1)
}

#[flow]
fn plain(n: u64) -> u64 {
    double(n)
}

/// Runs until the file `release` exists.
#[task]
fn wait_for_file(release: String) -> u64 {
    while !Path::new(&release).exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    1
}

#[flow]
fn waits(release: String) -> u64 {
    wait_for_file(release)
}

/// The history of `home`, once this process's records there are committed.
fn store(home: &Path) -> Store {
    flowrun::history::flush(home);
    Store::open(home).expect("the history opens")
}

/// What the history holds of the newest flow run (`limit` rows of each
/// kind at most).
fn newest_detail(home: &Path, limit: usize) -> RunDetail {
    let store = store(home);
    let runs = store.runs(&RunsQuery::default()).unwrap();
    store.detail(&runs[0], limit).unwrap()
}

#[task(task_run_name = "shout-at-{x}")]
fn shout(x: u64) -> u64 {
    x
}

/// Task runs of 4,200 task names, more than the writer knows by number
/// (the later ones travel with their name), and a `task_run_name`.
#[flow]
fn named_many() -> u64 {
    let renamed: Vec<_> = (0..4_200u64)
        .map(|i| {
            add.with_options(flowrun::TaskOptions::new().name(format!("add{i}")))
                .submit(i, 0)
        })
        .collect();
    let shouted = shout.submit(7);
    renamed
        .into_iter()
        .map(|f| f.result().unwrap())
        .sum::<u64>()
        + shouted.result().unwrap()
}

/// Submits no-op task runs as fast as it can until `release` exists.
#[flow]
fn busy_until(release: String) -> u64 {
    let release = Path::new(&release);
    let mut rounds = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !release.exists() && std::time::Instant::now() < deadline {
        let futures: Vec<_> = (0..2_000).map(|i| add.submit(i, 1)).collect();
        futures.into_iter().for_each(|f| f.wait());
        rounds += 1;
    }
    rounds
}

#[test]
fn a_busy_flow_s_task_runs_are_visible_while_it_runs() {
    // The writer gathers on while a flow sends events fast, but a reader
    // still sees its finished task runs within about a second.
    let (home, release, flow) = until_released(|r| busy_until(r).unwrap());
    let completed = "SELECT count(*) FROM task_runs WHERE state = 'Completed'";
    await_count(
        home.path(),
        completed,
        |n| n >= 4_000,
        || !flow.is_finished(),
    );
    std::fs::write(&release, "").unwrap();
    assert!(flow.join().unwrap() >= 2, "the flow ran until released");
}

/// Runs `flow` on a thread of its own, recording into a new home, with
/// the path of a file that does not exist yet: the flow's release.
fn until_released<T: Send + 'static>(
    flow: impl FnOnce(String) -> T + Send + 'static,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::thread::JoinHandle<T>,
) {
    let home = tempfile::tempdir().unwrap();
    let release = home.path().join("release");
    let handle = {
        let (home, release) = (home.path().to_owned(), release.clone());
        std::thread::spawn(move || {
            let _guard = flowrun::history::use_home(&home);
            flow(release.to_string_lossy().into_owned())
        })
    };
    (home, release, handle)
}

/// Waits until the count `sql` reads in `home` is `done`, failing after
/// 30 s or once `running` says the flow that should write it has ended.
fn await_count(home: &Path, sql: &str, done: impl Fn(i64) -> bool, running: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done(try_count(home, sql).unwrap_or(0)) {
        assert!(
            std::time::Instant::now() < deadline && running(),
            "`{sql}` did not reach its count while the flow ran (30 s at most)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn task_runs_keep_their_names_past_the_writer_s_table_of_task_names() {
    let home = temp_home();
    named_many().unwrap();
    let detail = newest_detail(home.path(), 10_000);
    assert_eq!(detail.task_runs.len(), 4_201);
    for (i, t) in detail.task_runs[..4_200].iter().enumerate() {
        assert_eq!(t.task, format!("add{i}"));
        assert_eq!(t.name, format!("add{i}-0"));
        assert_eq!(t.state, "Completed");
    }
    let shouted = &detail.task_runs[4_200];
    assert_eq!(
        (shouted.task.as_str(), shouted.name.as_str()),
        ("shout", "shout-at-7")
    );
}

#[task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// The first task runs past the writer's first commit; the second ends
/// before it.
#[flow]
fn slow_then_fast() -> u64 {
    let slow = sleep_ms.submit(600);
    let fast = sleep_ms.submit(0);
    fast.result().unwrap() + slow.result().unwrap()
}

#[test]
fn task_runs_list_in_the_order_they_were_submitted_not_the_order_they_ended() {
    let home = temp_home();
    slow_then_fast().unwrap();
    let detail = newest_detail(home.path(), 10);
    let listed: Vec<_> = detail
        .task_runs
        .iter()
        .map(|t| (t.name.as_str(), t.state.as_str()))
        .collect();
    assert_eq!(
        listed,
        [("sleep_ms-0", "Completed"), ("sleep_ms-1", "Completed")]
    );
}

#[test]
fn a_flow_run_is_recorded_with_task_runs_upstreams_states_and_logs() {
    let home = temp_home();
    let result = arithmetic(3);
    assert!(result.is_err(), "the unhandled failure fails the flow");
    let store = store(home.path());
    let runs = store.runs(&RunsQuery::default()).unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.flow, "arithmetic");
    assert_eq!(run.state, "Failed");
    assert!(run.message.as_deref().unwrap().contains("explode"));
    assert!(run.end_ms.is_some());
    assert_eq!(run.tasks.total, 4);
    assert_eq!(run.tasks.completed, 3);
    assert_eq!(run.tasks.failed, 1);

    let detail = store.detail(run, 50).unwrap();
    assert_eq!(detail.task_runs.len(), 4);
    let names: Vec<_> = detail.task_runs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["double-0", "double-1", "add-0", "explode-0"]);
    let summed = &detail.task_runs[2];
    assert_eq!(
        summed.upstreams,
        [
            detail.task_runs[0].id.clone(),
            detail.task_runs[1].id.clone()
        ]
    );
    assert_eq!(summed.attempts, 1);
    assert!(summed.duration_ms().is_some());
    assert_eq!(detail.failures.len(), 1);
    assert!(detail.failures[0]
        .message
        .as_deref()
        .unwrap()
        .contains("the fuse was short"));
    // Ids sort by creation time (to the millisecond).
    let mut by_id = detail.task_runs.clone();
    by_id.sort_by(|a, b| a.id.cmp(&b.id));
    assert!(by_id.windows(2).all(|w| w[0].created_ms <= w[1].created_ms));

    let states = store.states(run, 100).unwrap();
    let of_add: Vec<_> = states
        .iter()
        .filter(|s| s.task_run.as_deref() == Some("add-0"))
        .map(|s| s.state.as_str())
        .collect();
    assert_eq!(of_add, ["Pending", "Running", "Completed"]);
    let own: Vec<_> = states
        .iter()
        .filter(|s| s.task_run.is_none())
        .map(|s| s.state.as_str())
        .collect();
    assert_eq!(own, ["Running", "Failed"], "the flow run's own states");

    let logs = store.logs(run, &LogQuery::default()).unwrap();
    let texts: Vec<_> = logs.iter().map(|l| l.text.as_str()).collect();
    assert!(texts.contains(&"doubling 3 with care"), "{texts:?}");
    assert!(texts.contains(&"all submitted"), "{texts:?}");
    let grep = LogQuery {
        grep: Some("care".into()),
        ..LogQuery::default()
    };
    let found = store.logs(run, &grep).unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found
        .iter()
        .all(|l| l.task_run.as_deref().unwrap().starts_with("double-")));
    let warnings = LogQuery {
        min_level: Some(tracing::Level::WARN),
        ..LogQuery::default()
    };
    let found = store.logs(run, &warnings).unwrap();
    assert!(found
        .iter()
        .any(|l| l.text == "about to explode" && l.level == "WARNING"));
    assert!(found.iter().all(|l| l.level != "INFO"));
    let one_task = LogQuery {
        task: Some("double-1".into()),
        ..LogQuery::default()
    };
    let found = store.logs(run, &one_task).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].text, "doubling 4 with care");
}

#[test]
fn the_local_cluster_s_task_runs_and_worker_logs_are_recorded_by_the_flow_process() {
    let home = temp_home();
    assert_eq!(on_cluster(3).unwrap(), 3);
    let store = store(home.path());
    let run = &store.runs(&RunsQuery::default()).unwrap()[0];
    assert_eq!(run.tasks.completed, 3);
    let detail = store.detail(run, 10).unwrap();
    assert!(
        detail.task_runs.iter().all(|t| t.worker.is_some()),
        "{:?}",
        detail.task_runs
    );
    let logs = store.logs(run, &LogQuery::default()).unwrap();
    for i in 0..3 {
        let text = format!("hello {i} from a worker process");
        let line = logs.iter().find(|l| l.text == text);
        assert_eq!(
            line.and_then(|l| l.task_run.as_deref()),
            Some(format!("greet-{i}").as_str()),
            "{logs:?}"
        );
    }
}

#[test]
fn a_flow_run_whose_runner_cannot_start_is_recorded_as_crashed() {
    let home = temp_home();
    assert!(never_starts().is_err());
    let store = store(home.path());
    let run = &store.runs(&RunsQuery::default()).unwrap()[0];
    // The infrastructure failed, not the flow: Crashed, as in Prefect.
    assert_eq!(run.state, "Crashed");
    assert!(
        run.message
            .as_deref()
            .unwrap()
            .contains("no room at the inn"),
        "{run:?}"
    );
    assert!(run.end_ms.is_some());
}

/// The only two flow runs recorded in `home`, of flow `parent` and of its
/// subflow `inner` (checked to name its parent), and the parent's detail.
fn parent_and_child(home: &Path, parent: &str) -> (FlowRunRow, RunDetail) {
    let store = store(home);
    let runs = store.runs(&RunsQuery::default()).unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let find = |flow: &str| runs.iter().find(|r| r.flow == flow).unwrap();
    let (parent, child) = (find(parent), find("inner"));
    assert_eq!(child.parent_flow_run.as_deref(), Some(parent.id.as_str()));
    (child.clone(), store.detail(parent, 10).unwrap())
}

#[test]
fn a_subflow_records_its_parent_flow_run() {
    let home = temp_home();
    assert_eq!(outer(5).unwrap(), 11);
    let (child, detail) = parent_and_child(home.path(), "outer");
    assert_eq!(detail.subflows.len(), 1);
    assert_eq!(detail.subflows[0].id, child.id);
}

#[test]
fn a_subflow_called_in_a_task_records_that_task_run() {
    let home = temp_home();
    assert_eq!(flow_in_task(4).unwrap(), 8);
    let (child, detail) = parent_and_child(home.path(), "flow-in-task");
    let task = &detail.task_runs[0];
    assert_eq!(task.name, "runs_a_flow-0");
    assert_eq!(child.parent_task_run.as_deref(), Some(task.id.as_str()));
}

#[test]
fn runs_are_found_by_id_prefix_and_name_and_filtered() {
    let home = temp_home();
    many(3).unwrap();
    inner(1).unwrap();
    let store = store(home.path());
    let all = store.runs(&RunsQuery::default()).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].flow, "inner", "newest first");
    let only = RunsQuery {
        flow: Some("many".into()),
        ..RunsQuery::default()
    };
    assert_eq!(store.runs(&only).unwrap().len(), 1);
    let failed = RunsQuery {
        state: Some("failed".into()),
        ..RunsQuery::default()
    };
    assert!(store.runs(&failed).unwrap().is_empty());
    let run = &all[1];
    assert_eq!(store.find_run(&run.id).unwrap().id, run.id);
    assert_eq!(store.find_run(&run.id[..20]).unwrap().id, run.id);
    assert_eq!(store.find_run(&run.name).unwrap().id, run.id);
    let err = store.find_run("no-such-run").unwrap_err().to_string();
    assert!(err.contains("no flow run matches 'no-such-run'"), "{err}");
}

#[test]
fn a_flow_run_records_its_parameters_and_tags() {
    let home = temp_home();
    let conn = Connection { _fd: 3 };
    assert_eq!(
        with_parameters(4, "a \"quoted\" label".into(), Some(0.5), conn.clone()).unwrap(),
        8
    );
    let retagged = with_parameters.with_options(flowrun::FlowOptions::new().tags(["adhoc"]));
    retagged.call(1, "b".into(), None, conn).unwrap();
    let store = store(home.path());
    let runs = store.runs(&RunsQuery::default()).unwrap();
    assert_eq!(runs.len(), 2);
    let (second, first) = (&runs[0], &runs[1]);
    let parameters: serde_json::Value =
        serde_json::from_str(first.parameters.as_deref().expect("parameters recorded")).unwrap();
    assert_eq!(
        parameters,
        serde_json::json!({
            "n": 4,
            "label": "a \"quoted\" label",
            "scale": 0.5,
            "conn": "<not serializable>",
        })
    );
    // In the order of the signature, as the user wrote them.
    assert!(first
        .parameters
        .as_deref()
        .unwrap()
        .starts_with("{\"n\":4,\"label\""));
    assert_eq!(first.tags, ["etl", "nightly run"]);
    let parameters: serde_json::Value =
        serde_json::from_str(second.parameters.as_deref().unwrap()).unwrap();
    assert_eq!(parameters["scale"], serde_json::Value::Null);
    assert_eq!(second.tags, ["adhoc"], "the call's tags replace the flow's");
    // A flow without tags records none; one without parameters an empty object.
    inner(2).unwrap();
    let store = self::store(home.path());
    let inner_run = &store.runs(&RunsQuery::default()).unwrap()[0];
    assert!(inner_run.tags.is_empty());
    assert_eq!(inner_run.parameters.as_deref(), Some("{\"x\":2}"));
}

#[test]
fn a_flow_with_history_false_records_nothing_nor_its_subflows() {
    let home = temp_home();
    assert_eq!(unrecorded(3).unwrap(), 6 + 4);
    // The option per call, both ways.
    plain
        .with_options(flowrun::FlowOptions::new().history(false))
        .call(1)
        .unwrap();
    unrecorded
        .with_options(flowrun::FlowOptions::new().history(true))
        .call(2)
        .unwrap();
    plain(5).unwrap();
    let store = store(home.path());
    let runs = store.runs(&RunsQuery::default()).unwrap();
    let flows: Vec<&str> = runs.iter().map(|r| r.flow.as_str()).collect();
    assert_eq!(flows, ["plain", "inner", "unrecorded"], "newest first");
    assert_eq!(count(home.path(), "SELECT count(*) FROM flow_runs"), 3);
    assert_eq!(
        count(home.path(), "SELECT count(*) FROM task_runs"),
        3,
        "the recorded runs' task runs only: inner's double, unrecorded's add, plain's double"
    );
}

#[test]
fn a_task_run_still_running_is_visible_before_it_ends_without_a_flush() {
    let (home, release, flow) = until_released(|r| waits(r).unwrap());
    // Rows are written at a run's final state, or once it has waited a
    // while: a reader sees the running task run while it runs.
    let running = "SELECT count(*) FROM task_runs WHERE state = 'Running'";
    await_count(home.path(), running, |n| n == 1, || true);
    std::fs::write(&release, "").unwrap();
    assert_eq!(flow.join().unwrap(), 1);
    flowrun::history::flush(home.path());
    assert_eq!(
        count(
            home.path(),
            "SELECT count(*) FROM task_runs WHERE state = 'Completed'"
        ),
        1,
        "the same row, updated"
    );
    assert_eq!(count(home.path(), "SELECT count(*) FROM task_runs"), 1);
}

#[test]
fn recording_can_be_turned_off_by_the_environment() {
    let home = tempfile::tempdir().unwrap();
    let out = child(home.path(), 5, &[("FLOWRUN_HISTORY", "off")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!flowrun::history::database_path(home.path()).exists());
}

/// Runs `n` tasks in a flow in a process of its own, recording into
/// `FLOWRUN_HOME`.
#[test]
#[ignore = "run as a child process by the other tests"]
fn child_flow() {
    let n: u64 = std::env::var("CHILD_TASKS").unwrap().parse().unwrap();
    let total = many(n).expect("the flow runs whatever happens to its history");
    assert_eq!(total, n * (n + 1) / 2);
    println!("FLOW OK");
}

/// Runs a flow on a local cluster under a temporary home, in a process of
/// its own (whose `TMPDIR` the caller chooses).
#[test]
#[ignore = "run as a child process by the other tests"]
fn child_on_cluster_with_temp_home() {
    let home = flowrun::history::temp_home();
    assert_eq!(on_cluster(3).unwrap(), 3);
    home.flush();
    println!("FLOW OK");
}

#[test]
fn a_temporary_home_used_with_a_local_cluster_leaves_no_folder() {
    // The cluster's workers run the test up to the flow call too, and
    // never return to drop what they made there.
    let tmp = tempfile::tempdir().unwrap();
    run_child(
        "child_on_cluster_with_temp_home",
        &[("TMPDIR", tmp.path().as_os_str())],
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("flowrun-home-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn child_command(home: &Path, n: u64, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "child_flow", "--nocapture"])
        .env("FLOWRUN_HOME", home)
        .env("CHILD_TASKS", n.to_string())
        .env_remove("FLOWRUN_HISTORY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the ignored test `name` in a process of its own, recording (with
/// `env` set), and asserts that it ran its flows.
fn run_child(name: &str, env: &[(&str, &std::ffi::OsStr)]) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", name, "--nocapture"])
        .env_remove("FLOWRUN_HISTORY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success() && text(&out).contains("FLOW OK"),
        "{}",
        text(&out)
    );
}

fn child(home: &Path, n: u64, env: &[(&str, &str)]) -> Output {
    child_command(home, n, env).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The child ran its flow and warned exactly once that history is off.
fn assert_ran_unrecorded(out: &Output, why: &str) {
    let all = text(out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("FLOW OK"), "{all}");
    assert_eq!(all.matches("Run history is off").count(), 1, "{all}");
    assert!(all.contains(why), "the warning says why: {all}");
}

#[test]
fn an_unwritable_home_warns_once_and_the_flow_runs() {
    // Tests run as root too, where permission bits do not stop writes: a
    // home below a regular file cannot be created by anyone.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let out = child(&file.join("home"), 20, &[]);
    assert_ran_unrecorded(&out, "cannot be used: Not a directory");
    // A console that shows warnings only shows this one too (the flow
    // asks whether INFO is on before it, which once hid it).
    let out = child(&file.join("home"), 20, &[("FLOWRUN_LOG", "warn")]);
    assert_ran_unrecorded(&out, "cannot be used: Not a directory");
}

#[test]
fn a_corrupt_database_warns_once_and_the_flow_runs() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        flowrun::history::database_path(home.path()),
        vec![0x5a; 64 * 1024],
    )
    .unwrap();
    let out = child(home.path(), 20, &[]);
    assert_ran_unrecorded(&out, "file is not a database");
}

#[test]
fn a_database_from_a_newer_flowrun_is_refused_naming_both_versions() {
    let home = tempfile::tempdir().unwrap();
    let out = child(home.path(), 3, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let db = rusqlite::Connection::open(flowrun::history::database_path(home.path())).unwrap();
    db.execute_batch(
        "PRAGMA user_version = 7; UPDATE meta SET value = '9.1.0' WHERE key = 'flowrun_version';",
    )
    .unwrap();
    drop(db);
    let out = child(home.path(), 3, &[]);
    assert_ran_unrecorded(
        &out,
        &format!(
            "has schema version 7 (written by flowrun 9.1.0), but this flowrun ({}) reads schema version {} at most",
            env!("CARGO_PKG_VERSION"),
            flowrun::history::SCHEMA_VERSION
        ),
    );
    let err = Store::open(home.path()).err().unwrap().to_string();
    assert!(err.contains("schema version 7"), "{err}");
}

fn count(home: &Path, sql: &str) -> i64 {
    try_count(home, sql).unwrap()
}

fn try_count(home: &Path, sql: &str) -> rusqlite::Result<i64> {
    let db = rusqlite::Connection::open(flowrun::history::database_path(home))?;
    db.busy_timeout(Duration::from_secs(10))?;
    db.query_row(sql, [], |r| r.get(0))
}

#[test]
fn a_flow_process_killed_while_it_commits_leaves_a_sound_database() {
    let home = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let mut proc = child_command(home.path(), 200_000, &[("FLOWRUN_LOG", "off")])
            .spawn()
            .unwrap();
        // Kill once task runs are being committed, a little later each round.
        let db = flowrun::history::database_path(home.path());
        let tasks = || try_count(home.path(), "SELECT count(*) FROM task_runs").unwrap_or(0);
        let before = tasks();
        assert!(
            common::eventually(Duration::from_secs(120), || db.exists()
                && tasks() > before + 1000 * (round + 1)),
            "the child committed task runs"
        );
        proc.kill().unwrap();
        let status = proc.wait().unwrap();
        assert!(!status.success(), "killed, not finished");
        let db = rusqlite::Connection::open(&db).unwrap();
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
    let out = child(home.path(), 500, &[]);
    assert!(out.status.success(), "a rerun works: {}", text(&out));
    let store = store(home.path());
    let last = &store.runs(&RunsQuery::default()).unwrap()[0];
    assert_eq!(last.state, "Completed");
    assert_eq!(last.tasks.completed, 500);
}

#[test]
fn a_flow_starts_while_another_process_holds_the_database_and_its_rows_follow() {
    // Another process's long commit (a starved writer on a loaded machine)
    // holds the write lock: a flow starting meanwhile runs at once, and
    // its rows are written once the lock is free, before the process exits.
    let home = tempfile::tempdir().unwrap();
    assert!(child(home.path(), 1, &[]).status.success());
    let db = rusqlite::Connection::open(flowrun::history::database_path(home.path())).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut proc = child_command(home.path(), 50, &[("FLOWRUN_LOG", "warn")])
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ran = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) if line.contains("FLOW OK") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    db.execute_batch("COMMIT").unwrap();
    let out = proc.wait_with_output().unwrap();
    assert!(ran, "the flow waited for the lock: {}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(home.path(), "SELECT count(*) FROM flow_runs"), 2);
    assert_eq!(count(home.path(), "SELECT count(*) FROM task_runs"), 51);
}

#[test]
fn four_processes_share_one_home_with_no_lost_rows_and_no_errors() {
    let home = tempfile::tempdir().unwrap();
    let procs: Vec<_> = (0..4)
        .map(|_| {
            child_command(home.path(), 10_000, &[("FLOWRUN_LOG", "warn")])
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs = String::new();
    for p in procs {
        let out = p.wait_with_output().unwrap();
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(!all.contains("Run history"), "no history warning: {all}");
        assert!(!all.contains("locked"), "{all}");
        assert!(!all.contains("panicked"), "{all}");
        outputs.push_str(&all);
    }
    assert_eq!(
        count(home.path(), "SELECT count(*) FROM flow_runs"),
        4,
        "{outputs}"
    );
    let db = rusqlite::Connection::open(flowrun::history::database_path(home.path())).unwrap();
    let flows: Vec<(String, i64, i64)> = db
        .prepare("SELECT state, tasks_total, tasks_completed FROM flow_runs")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        flows
            .iter()
            .all(|f| f == &("Completed".to_owned(), 10_000, 10_000)),
        "{flows:?}"
    );
    assert_eq!(count(home.path(), "SELECT count(*) FROM task_runs"), 40_000);
    assert_eq!(
        count(
            home.path(),
            "SELECT count(*) FROM task_runs WHERE state = 'Completed'"
        ),
        40_000
    );
    assert_eq!(
        count(
            home.path(),
            "SELECT sum(json_array_length(history)) FROM task_runs"
        ),
        120_000
    );
}

common::flaky_task!(FLAKY_CALLS, #[task(retries = 1, retry_delay = 0)] fn flaky_once succeeds at 2);

#[task]
fn pause(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[flow]
fn retried_then_spaced() -> u32 {
    let attempts = flaky_once.submit().result().unwrap();
    // Each run created a few milliseconds after the one before (ids sort
    // by their creation's millisecond).
    std::thread::sleep(Duration::from_millis(3));
    for _ in 0..3 {
        pause.submit(3).result().unwrap();
    }
    attempts
}

#[test]
fn a_retried_run_keeps_its_attempts_key_and_every_state_with_its_time_and_message() {
    let home = temp_home();
    assert_eq!(retried_then_spaced().unwrap(), 2);
    let store = store(home.path());
    let runs = store.runs(&RunsQuery::default()).unwrap();
    let detail = store.detail(&runs[0], 10).unwrap();
    let flaky = &detail.task_runs[0];
    assert_eq!(flaky.name, "flaky_once-0");
    assert_eq!(flaky.task_key, "history::flaky_once");
    assert_eq!(flaky.attempts, 2);
    assert_eq!(flaky.state, "Completed");

    let states: Vec<_> = store
        .states(&runs[0], 100)
        .unwrap()
        .into_iter()
        .filter(|s| s.task_run.as_deref() == Some("flaky_once-0"))
        .collect();
    let kinds: Vec<_> = states.iter().map(|s| s.state.as_str()).collect();
    // As observers see it: back to Pending between the attempts.
    assert_eq!(
        kinds,
        [
            "Pending",
            "Running",
            "AwaitingRetry",
            "Pending",
            "Retrying",
            "Completed"
        ]
    );
    assert!(states.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    assert_eq!(states[0].time_ms, flaky.created_ms);
    assert_eq!(Some(states[1].time_ms), flaky.start_ms);
    let why = states[2].message.as_deref().unwrap_or_default();
    assert!(why.contains("attempt 1 failed"), "{why}");

    // Ids sort by creation time: runs created milliseconds apart.
    let paused: Vec<_> = detail.task_runs[1..].iter().collect();
    assert_eq!(paused.len(), 3);
    assert!(paused.windows(2).all(|w| w[0].created_ms < w[1].created_ms));
    let mut by_id = detail.task_runs.clone();
    by_id.sort_by(|a, b| a.id.cmp(&b.id));
    let sorted: Vec<_> = by_id.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(sorted, ["flaky_once-0", "pause-0", "pause-1", "pause-2"]);
}

#[test]
fn without_flowrun_home_runs_are_recorded_under_the_user_s_home() {
    let user = tempfile::tempdir().unwrap();
    let out = child_command(user.path(), 3, &[])
        .env_remove("FLOWRUN_HOME")
        .env("HOME", user.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let home = user.path().join(".flowrun");
    assert!(flowrun::history::database_path(&home).exists());
    let runs = store(&home).runs(&RunsQuery::default()).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].tasks.completed, 3);
}

/// Runs `many` after turning recording off in code.
#[test]
#[ignore = "run as a child process by the other tests"]
fn child_flow_with_recording_turned_off() {
    flowrun::history::set_recording(false);
    assert_eq!(many(3).unwrap(), 6);
    flowrun::history::set_recording(true);
    assert_eq!(plain(2).unwrap(), 4);
    println!("FLOW OK");
}

#[test]
fn recording_can_be_turned_off_and_on_in_code_and_works_with_the_console_off() {
    let home = tempfile::tempdir().unwrap();
    run_child(
        "child_flow_with_recording_turned_off",
        &[
            ("FLOWRUN_HOME", home.path().as_os_str()),
            ("FLOWRUN_LOG", "off".as_ref()),
        ],
    );
    let store = store(home.path());
    let runs = store.runs(&RunsQuery::default()).unwrap();
    let flows: Vec<_> = runs.iter().map(|r| r.flow.as_str()).collect();
    assert_eq!(
        flows,
        ["plain"],
        "only the run after recording was turned on again"
    );
    // The log tap records task lines without the console.
    let logs = store.logs(&runs[0], &LogQuery::default()).unwrap();
    let texts: Vec<_> = logs.iter().map(|l| l.text.as_str()).collect();
    assert!(texts.contains(&"doubling 2 with care"), "{texts:?}");
}

/// Logs a line naming its flow's `tag`, in a worker process, while the
/// same-named run of the other flow may be running too.
#[task]
fn tagged(tag: String, n: u64) -> u64 {
    get_run_logger().info(format!("{tag} logs {n}"));
    println!("{tag} prints {n}");
    std::thread::sleep(Duration::from_millis(20));
    n
}

/// One thread per worker: what a task prints is its run's only while it
/// runs alone in its worker process (stdout is the process's).
#[flow(task_runner = common::local_cluster(1, 1))]
fn tagging(tag: String, n: u64) -> u64 {
    let futures: Vec<_> = (0..n).map(|i| tagged.submit(tag.clone(), i)).collect();
    futures.into_iter().map(|f| f.result().unwrap()).sum()
}

#[test]
fn two_flows_at_once_on_clusters_keep_each_task_run_s_lines_to_itself() {
    let home = temp_home();
    let flows: Vec<_> = ["alpha", "beta"]
        .into_iter()
        .map(|tag| {
            let path = home.path().to_owned();
            // Named as the test: the cluster's workers run this binary
            // again with the test their flow's thread is named after.
            std::thread::Builder::new()
                .name("two_flows_at_once_on_clusters_keep_each_task_run_s_lines_to_itself".into())
                .spawn(move || {
                    let _home = flowrun::history::use_home(path);
                    tagging(tag.to_owned(), 8).unwrap()
                })
                .unwrap()
        })
        .collect();
    for flow in flows {
        assert_eq!(flow.join().unwrap(), 28);
    }
    common::assert_each_flow_run_holds_its_own_tagged_lines(home.path(), 8);
}

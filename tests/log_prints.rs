//! `log_prints`: what a task or flow body prints is a log line of its run
//! (shown with the run's name, recorded in the run history) on the thread
//! runner as on a local cluster; `log_prints = false` and the global
//! setting turn it off.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flowrun::history::{temp_home, LogQuery, RunsQuery, Store};
use flowrun::{flow, task};

/// Every console line of this process, with the history's log tap beside
/// the console.
fn lines() -> Arc<Mutex<Vec<String>>> {
    common::console_lines_and_history()
}

fn console() -> Vec<String> {
    lines().lock().unwrap().clone()
}

/// The global setting is per process: tests that depend on it take turns.
/// Taking one also starts capturing the console.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    lines();
    turn
}

fn has(all: &[String], wanted: &str) -> bool {
    all.iter().any(|l| l.contains(wanted))
}

/// Asserts that a line of `all` holds `wanted` (`shown`), or that none does.
fn assert_shown(all: &[String], wanted: &str, shown: bool) {
    assert_eq!(
        has(all, wanted),
        shown,
        "{wanted:?} shown: {}, expected {shown}, in\n{}",
        !shown,
        all.join("")
    );
}

fn store(home: &Path) -> Store {
    flowrun::history::flush(home);
    Store::open(home).expect("the history opens")
}

#[task]
fn talker(n: u32) -> u32 {
    println!("talker says {n}");
    eprintln!("talker warns {n}");
    print!("two lines {n}\nsecond of {n}");
    // A path opts one print out.
    std::println!("plain stdout {n}");
    n
}

#[task(log_prints = false)]
fn quiet_talker(n: u32) -> u32 {
    println!("quiet talker says {n}");
    n
}

#[task(log_prints = true)]
fn insistent_talker(n: u32) -> u32 {
    println!("insistent talker says {n}");
    n
}

/// Prints `line` in the flow body and runs each talker on `n` (the
/// insistent one on `n + 1`, so that its line does not hold the others').
#[flow]
fn talking_flow(line: String, n: u32) -> u32 {
    println!("{line}");
    talker.submit(n).result().unwrap()
        + quiet_talker.submit(n).result().unwrap()
        + insistent_talker.submit(n + 1).result().unwrap()
}

#[test]
fn prints_in_tasks_and_flows_are_log_lines_of_their_runs_on_threads() {
    let _turn = turn();
    let home = temp_home();
    let run = talking_flow.return_state("the flow body says hi".into(), 1);
    assert_eq!(*run.result().unwrap(), 4);
    let all = console();
    for wanted in [
        "| INFO    | Task run 'talker-0' - talker says 1".to_owned(),
        "| WARNING | Task run 'talker-0' - talker warns 1".to_owned(),
        "| INFO    | Task run 'talker-0' - two lines 1".to_owned(),
        "| INFO    | Task run 'talker-0' - second of 1".to_owned(),
        format!(
            "| INFO    | Flow run '{}' - the flow body says hi",
            run.name()
        ),
    ] {
        assert_shown(&all, &wanted, true);
    }
    assert_shown(&all, "plain stdout", false);
    assert_shown(&all, "quiet talker says", false);

    // The history holds them as logs of the task run.
    let store = store(home.path());
    let recorded = &store.runs(&RunsQuery::default()).unwrap()[0];
    let logs = store.logs(recorded, &LogQuery::default()).unwrap();
    let line = logs
        .iter()
        .find(|l| l.text == "talker says 1")
        .unwrap_or_else(|| panic!("not recorded: {logs:?}"));
    assert_eq!(line.task_run.as_deref(), Some("talker-0"));
    assert_eq!(line.level, "INFO");
    assert!(logs
        .iter()
        .any(|l| l.text == "the flow body says hi" && l.task_run.is_none()));
}

#[test]
fn the_global_setting_turns_it_off_except_where_a_task_asks_for_it() {
    let _turn = turn();
    flowrun::prints::set_log_prints(false);
    let result = talking_flow("flow body with the setting off".into(), 7);
    flowrun::prints::set_log_prints(true);
    assert_eq!(result.unwrap(), 22);
    let all = console();
    assert_shown(&all, "talker says 7", false);
    assert_shown(&all, "flow body with the setting off", false);
    assert_shown(
        &all,
        "| INFO    | Task run 'insistent_talker-0' - insistent talker says 8",
        true,
    );
}

mod helpers {
    // Helpers a task calls log their prints when they import the macros.
    // (Named: a glob import would be ambiguous with the prelude's macros.)
    use flowrun::prints::println;

    pub(crate) fn helper(n: u32) {
        println!("helper of {n} speaking");
    }
}

#[task]
fn uses_helper(n: u32) -> u32 {
    helpers::helper(n);
    n
}

#[test]
fn helpers_that_import_the_macros_log_to_the_calling_run() {
    let _turn = turn();
    #[flow]
    fn helped() -> u32 {
        uses_helper.submit(5).result().unwrap()
    }
    assert_eq!(helped().unwrap(), 5);
    let all = console();
    assert_shown(
        &all,
        "| INFO    | Task run 'uses_helper-0' - helper of 5 speaking",
        true,
    );
}

#[task]
fn slow_talker(n: u32) -> u32 {
    println!("slow talker {n} starts");
    std::thread::sleep(Duration::from_millis(400));
    println!("slow talker {n} ends");
    n
}

#[test]
fn prints_of_tasks_sharing_a_worker_process_are_told_apart_on_a_local_cluster() {
    let _turn = turn();
    // Two tasks print at the same time in one worker process: its output
    // capture could only say the worker ran both; the rewritten prints
    // name their own run.
    #[flow(task_runner = common::local_cluster(1, 2))]
    fn overlapping() -> u32 {
        flowrun::results(slow_talker.map(0..2).unwrap())
            .unwrap()
            .iter()
            .sum()
    }
    assert_eq!(overlapping().unwrap(), 1);
    let all = console();
    for n in 0..2 {
        for when in ["starts", "ends"] {
            let wanted = format!("| INFO    | Task run 'slow_talker-{n}' - slow talker {n} {when}");
            assert_shown(&all, &wanted, true);
        }
    }
}

/// Runs `quiet_talker` on a local cluster with the console off.
#[test]
#[ignore = "run as a child process by the other tests"]
fn child_quiet_on_cluster() {
    #[flow(task_runner = common::local_cluster(1, 1))]
    fn quiet_flow() -> u32 {
        quiet_talker.submit(9).result().unwrap()
    }
    assert_eq!(quiet_flow().unwrap(), 9);
}

#[test]
fn with_the_console_off_a_cluster_task_s_own_prints_reach_stdout_as_on_threads() {
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_quiet_on_cluster",
            "--nocapture",
        ])
        .env("FLOWRUN_LOG", "off")
        .env("FLOWRUN_HOME", home.path())
        .env_remove("FLOWRUN_HISTORY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("quiet talker says 9"), "{stdout}");
}

//! `get_run_logger()` outside any run: its lines reach the console (with a
//! one-time note), even before any flow has set up logging.

use std::process::Command;

use flowrun::get_run_logger;

const CHILD: &str = "FLOWRUN_TEST_LOGGER_CHILD";

/// Run in a child process, so that nothing set up logging before it.
#[test]
fn child_logs_before_any_flow() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    get_run_logger().info("first line outside a run");
    get_run_logger().warn("second line outside a run");
}

#[test]
fn lines_logged_outside_a_run_reach_the_console_with_one_note() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_logs_before_any_flow", "--nocapture"])
        .env(CHILD, "1")
        .env_remove("FLOWRUN_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("flowrun - "))
        .collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].contains("WARNING") && lines[0].contains("outside a flow or task run"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("INFO") && lines[1].ends_with("first line outside a run"),
        "{stderr}"
    );
    assert!(
        lines[2].contains("WARNING") && lines[2].ends_with("second line outside a run"),
        "{stderr}"
    );
}

//! Logging: console lines in Prefect's format, with the run name attached
//! to everything a task or flow logs.

mod common;

use std::sync::{Arc, Mutex};

use flowrun::{flow, get_run_logger, task};

fn lines() -> Arc<Mutex<Vec<String>>> {
    common::console_lines()
}

fn captured_for(run_name: &str) -> Vec<String> {
    let all = lines().lock().unwrap().clone();
    all.into_iter().filter(|l| l.contains(run_name)).collect()
}

#[task]
fn say(word: String) -> usize {
    get_run_logger().info(format!("hello from the task: {word}"));
    tracing::warn!("plain tracing inside a task");
    let logger = get_run_logger();
    std::thread::spawn(move || logger.info("from a thread the task started"))
        .join()
        .unwrap();
    word.len()
}

#[task]
fn fail_loudly() -> Result<(), String> {
    Err("it broke".into())
}

#[test]
fn task_and_flow_lines_carry_their_run_names() {
    lines();
    #[flow]
    fn logged_flow() -> usize {
        get_run_logger().info("flow body speaking");
        say.submit("hi".to_owned()).result().unwrap()
    }
    let run = logged_flow.return_state();
    let flow_lines = captured_for(&format!("Flow run '{}'", run.name()));
    assert!(
        flow_lines.iter().any(|l| l.contains(&format!(
            "Beginning flow run '{}' for flow 'logged-flow'",
            run.name()
        ))),
        "{flow_lines:#?}"
    );
    assert!(
        flow_lines.iter().any(|l| l.contains("flow body speaking")),
        "{flow_lines:#?}"
    );
    assert!(
        flow_lines
            .iter()
            .any(|l| l.contains("| INFO    |") && l.ends_with("Finished in state Completed()\n")),
        "{flow_lines:#?}"
    );
    let all = lines().lock().unwrap().clone();
    let task_lines: Vec<_> = all
        .iter()
        .filter(|l| l.contains("Task run 'say-"))
        .collect();
    for expected in [
        "hello from the task: hi",
        "plain tracing inside a task",
        "from a thread the task started",
        "Finished in state Completed()",
    ] {
        assert!(
            task_lines.iter().any(|l| l.contains(expected)),
            "missing {expected:?} in {task_lines:#?}"
        );
    }
    let line = task_lines
        .iter()
        .find(|l| l.contains("hello from the task"))
        .unwrap();
    let parts: Vec<_> = line.splitn(3, " | ").collect();
    assert_eq!(parts.len(), 3, "{line}");
    assert_eq!(parts[0].len(), "12:34:56.789".len(), "{line}");
    assert_eq!(parts[1], "INFO   ");
}

#[test]
fn failures_are_logged_as_errors_with_the_failed_state() {
    lines();
    #[flow]
    fn failing_flow() {
        let _ = fail_loudly.submit().result();
    }
    failing_flow().unwrap();
    let all = lines().lock().unwrap().clone();
    assert!(
        all.iter()
            .any(|l| l.contains("| ERROR   | Task run 'fail_loudly-")
                && l.contains("Finished in state Failed('it broke')")),
        "{all:#?}"
    );
}

#[test]
fn a_program_s_own_layer_sees_a_span_per_task_run() {
    lines();
    #[flow]
    fn spanned() -> usize {
        say("spans".into())
    }
    assert_eq!(spanned().unwrap(), 5);
    let spans = common::task_run_spans();
    assert!(spans.iter().any(|s| s.starts_with("say-")), "{spans:?}");
}

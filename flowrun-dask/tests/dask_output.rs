//! What tasks print and log in worker processes reaches the flow's console
//! and logger, attributed to the task run.

mod common;

use std::sync::{Arc, Mutex};

use flowrun::{flow, get_run_logger, task};

fn lines() -> Arc<Mutex<Vec<String>>> {
    common::console_lines()
}

#[task]
fn chatty(n: u32) -> u32 {
    println!("stdout line from run {n}");
    eprintln!("stderr line from run {n}");
    print!("unterminated {n}");
    get_run_logger().info(format!("logger line from run {n}"));
    tracing::warn!("tracing line from run {n}");
    n
}

#[test]
fn prints_and_logs_are_attributed_to_the_task_run_that_made_them() {
    #[flow(task_runner = common::local_cluster(1, 1))]
    fn talks() -> Vec<u32> {
        flowrun::results(chatty.map(0..6).unwrap()).unwrap()
    }
    lines();
    assert_eq!(talks().unwrap(), (0..6).collect::<Vec<_>>());
    let all = lines().lock().unwrap().clone();
    for n in 0..6 {
        let run = format!("Task run 'chatty-{n}' - ");
        for (level, text) in [
            ("INFO   ", format!("stdout line from run {n}")),
            ("WARNING", format!("stderr line from run {n}")),
            ("INFO   ", format!("unterminated {n}")),
            ("INFO   ", format!("logger line from run {n}")),
            ("WARNING", format!("tracing line from run {n}")),
        ] {
            let wanted = format!("| {level} | {run}{text}");
            assert!(
                all.iter().any(|l| l.contains(&wanted)),
                "missing {wanted:?} in\n{}",
                all.join("")
            );
        }
    }
}

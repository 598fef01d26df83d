//! Terminal progress: a live block on a terminal that never garbles what
//! the program prints, plain output elsewhere, and off when asked.
//!
//! Each test runs the `child` test of this file again as a separate
//! program: in a pseudo-terminal (util-linux `script`) or with its output
//! piped, and reads what it printed. A small terminal model replays the
//! escape codes to check what a person would see.

use std::process::{Command, Stdio};
use std::time::Duration;

use std::sync::Arc;

use flowrun::progress::{set_progress, Progress, TaskProgress, TaskRunTally};
use flowrun::{flow, get_run_logger, task, ThreadPoolTaskRunner};
use flowrun_dask::{ClusterKwargs, DaskTaskRunner};

const MODE: &str = "FLOWRUN_PROGRESS_TEST_CHILD";

#[task]
fn tick(i: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(300));
    // Plain output (a path opts out of `log_prints`): what these tests check
    // is that the live block never garbles what a program prints itself.
    std::println!("output line {i}");
    if i % 4 == 1 {
        std::eprintln!("stderr line {i}");
    }
    i
}

#[task]
fn fails(i: u32) -> Result<u32, String> {
    Err(format!("part {i} failed"))
}

#[flow]
fn ticking() -> u32 {
    let failing: Vec<_> = (0..2).map(|i| fails.submit(i)).collect();
    let ticks = tick.map(0..12).expect("one mapped argument");
    get_run_logger().info("all submitted");
    for f in failing {
        assert!(f.result().is_err());
    }
    flowrun::results(ticks)
        .expect("ticks complete")
        .iter()
        .sum()
}

/// The flow whose output the tests read; they choose the runner and the
/// settings through the environment. On its own (without the variable) it
/// does nothing. Not `#[ignore]`d: Dask worker processes re-run it by name.
#[test]
fn child() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    if mode.contains("code-off") {
        set_progress(Progress::Off);
    }
    let total = if mode.contains("dask") {
        ticking
            .with_runner(
                DaskTaskRunner::new().cluster_kwargs(
                    ClusterKwargs::new()
                        .n_workers(2)
                        .threads_per_worker(1)
                        .no_dashboard(),
                ),
            )
            .call()
    } else {
        ticking.with_runner(ThreadPoolTaskRunner::new(2)).call()
    };
    assert_eq!(total.expect("the flow completes"), 66);
}

fn child_command() -> String {
    let exe = std::env::current_exe().unwrap();
    format!(
        "{} child --exact --nocapture --quiet --test-threads=1",
        exe.display()
    )
}

/// Runs the child in a 40 x 120 pseudo-terminal; returns what it wrote.
fn in_terminal(mode: &str, env: &[(&str, &str)]) -> String {
    let command = format!("stty rows 40 cols 120; exec {}", child_command());
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env(MODE, mode)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("FLOWRUN_PROGRESS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("util-linux `script` runs the child in a pseudo-terminal");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "the child failed:\n{text}");
    text
}

/// Runs the child with stdout and stderr piped (as CI does).
fn piped(mode: &str) -> String {
    let mut parts = child_command()
        .split(' ')
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let exe = parts.remove(0);
    let out = Command::new(exe)
        .args(parts)
        .env(MODE, mode)
        .env_remove("FLOWRUN_PROGRESS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child failed:\n{text}");
    text
}

/// What a terminal `cols` wide shows after `output`, scrolled-off lines
/// included: a model of the line wrapping, cursor movements and erasures
/// progress displays use.
fn screen(output: &str, cols: usize) -> Vec<String> {
    let mut lines: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = output.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => {
                row += 1;
                col = 0;
            }
            '\x1b' => {
                if chars.peek() != Some(&'[') {
                    chars.next();
                    continue;
                }
                chars.next();
                let mut params = String::new();
                let mut fin = ' ';
                for p in chars.by_ref() {
                    if p.is_ascii_alphabetic() || p == '@' || p == '~' {
                        fin = p;
                        break;
                    }
                    params.push(p);
                }
                let n: usize = params
                    .trim_start_matches('?')
                    .split(';')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                match fin {
                    'A' => row = row.saturating_sub(n.max(1)),
                    'B' => row += n.max(1),
                    'C' => col += n.max(1),
                    'D' => col = col.saturating_sub(n.max(1)),
                    'G' => col = n.max(1) - 1,
                    'K' => {
                        while lines.len() <= row {
                            lines.push(Vec::new());
                        }
                        let line = &mut lines[row];
                        match n {
                            0 => line.truncate(col),
                            1 => line.iter_mut().take(col + 1).for_each(|c| *c = ' '),
                            _ => line.clear(),
                        }
                    }
                    'J' if n == 0 => {
                        lines.truncate(row + 1);
                        if let Some(line) = lines.get_mut(row) {
                            line.truncate(col);
                        }
                    }
                    _ => {}
                }
            }
            c => {
                // Autowrap: a character past the last column starts a row.
                if col >= cols {
                    row += 1;
                    col = 0;
                }
                while lines.len() <= row {
                    lines.push(Vec::new());
                }
                let line = &mut lines[row];
                while line.len() < col {
                    line.push(' ');
                }
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    lines
        .into_iter()
        .map(|l| l.into_iter().collect::<String>().trim_end().to_owned())
        .collect()
}

const BLOCK: &str = "task runs finished";
const SUMMARY: &str = "Task runs: 14 (12 Completed, 2 Failed); fails: 2 Failed; tick: 12 Completed";
/// The part of the summary that fits a 120-column line.
const SUMMARY_START: &str = "Task runs: 14 (12 Completed, 2 Failed)";

fn count(lines: &[String], pred: impl Fn(&str) -> bool) -> usize {
    lines.iter().filter(|l| pred(l)).count()
}

#[test]
fn a_terminal_gets_a_live_block_that_never_garbles_output() {
    let raw = in_terminal("thread", &[]);
    assert!(raw.contains(BLOCK), "the live block was drawn:\n{raw}");
    assert!(raw.contains("tick"), "with a line per task name");
    assert!(raw.contains("\x1b["), "drawn with escape codes");

    let shown = screen(&raw, 120);
    let text = shown.join("\n");
    // Every line the program printed is whole, on a line of its own, once.
    for i in 0..12 {
        let line = format!("output line {i}");
        assert_eq!(count(&shown, |l| l == line), 1, "{line:?} in:\n{text}");
    }
    for i in [1, 5, 9] {
        let line = format!("stderr line {i}");
        assert_eq!(count(&shown, |l| l == line), 1, "{line:?} in:\n{text}");
    }
    for i in 0..12 {
        let end = format!("Task run 'tick-{i}' - Finished in state Completed()");
        assert_eq!(
            count(&shown, |l| l.ends_with(&end)),
            1,
            "{end:?} in:\n{text}"
        );
    }
    assert_eq!(count(&shown, |l| l.ends_with("all submitted")), 1, "{text}");
    // The block is gone at the end; the summary stays, before the last line.
    assert_eq!(
        count(&shown, |l| l.contains(BLOCK)),
        0,
        "block cleared:\n{text}"
    );
    let summary = shown.iter().position(|l| l.contains(SUMMARY_START));
    let last = shown
        .iter()
        .position(|l| l.contains("Finished in state Completed()") && l.contains("Flow run"));
    assert!(
        summary.is_some() && summary < last,
        "summary then last line:\n{text}"
    );
}

#[test]
fn the_live_block_works_for_the_dask_runner() {
    let raw = in_terminal("dask", &[]);
    assert!(raw.contains(BLOCK), "the live block was drawn:\n{raw}");
    let shown = screen(&raw, 120);
    let text = shown.join("\n");
    for i in 0..12 {
        let line = format!("Task run 'tick-{i}' - output line {i}");
        assert_eq!(
            count(&shown, |l| l.ends_with(&line)),
            1,
            "{line:?} in:\n{text}"
        );
    }
    assert_eq!(
        count(&shown, |l| l.contains(BLOCK)),
        0,
        "block cleared:\n{text}"
    );
    assert_eq!(count(&shown, |l| l.contains(SUMMARY_START)), 1, "{text}");
}

#[test]
fn piped_output_gets_plain_lines_and_one_summary() {
    let out = piped("thread");
    assert!(!out.contains('\x1b'), "no escape codes:\n{out}");
    assert!(!out.contains(BLOCK), "no live block:\n{out}");
    assert_eq!(out.matches("Task runs: ").count(), 1, "{out}");
    assert!(out.contains(SUMMARY), "{out}");
    for i in 0..12 {
        assert!(out.contains(&format!("output line {i}\n")), "{out}");
    }
}

#[test]
fn flowrun_progress_off_turns_it_off() {
    let raw = in_terminal("thread", &[("FLOWRUN_PROGRESS", "off")]);
    assert!(!raw.contains(BLOCK), "no live block:\n{raw}");
    assert!(!raw.contains("Task runs: "), "no summary:\n{raw}");
    assert!(raw.contains("output line 11"));

    let raw = in_terminal("thread", &[("FLOWRUN_PROGRESS", "summary")]);
    assert!(!raw.contains(BLOCK), "no live block:\n{raw}");
    assert!(raw.contains(SUMMARY), "the summary stays:\n{raw}");
}

#[test]
fn set_progress_off_in_code_turns_it_off() {
    let raw = in_terminal("thread code-off", &[]);
    assert!(!raw.contains(BLOCK), "no live block:\n{raw}");
    assert!(!raw.contains("Task runs: "), "no summary:\n{raw}");
}

#[task]
fn quick(i: u32) -> u32 {
    i
}

#[test]
fn a_tally_counts_task_runs_per_task_and_in_total() {
    #[flow]
    fn counted() -> (Vec<TaskProgress>, TaskProgress) {
        let tally = Arc::new(TaskRunTally::new());
        flowrun::runner::current_flow_handle()
            .expect("inside a flow run")
            .add_observer(tally.clone());
        let mut done: Vec<_> = (0..3).map(|i| quick.submit(i)).collect();
        let failed = fails.submit(9);
        // A run of the first task again, after another task's.
        done.push(quick.submit(7));
        flowrun::wait(&done);
        assert!(failed.result().is_err());
        // Observers hear of a final state as the run finishes; allow for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tally.totals().finished() < 5 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        (tally.counts(), tally.totals())
    }
    let (per_task, totals) = counted().unwrap();
    let names: Vec<&str> = per_task.iter().map(|t| t.task.as_str()).collect();
    assert_eq!(names, ["quick", "fails"]);
    assert_eq!(totals, TaskProgress::sum(&per_task));
    assert_eq!((totals.completed, totals.failed, totals.total()), (4, 1, 5));
    assert_eq!((per_task[0].completed, per_task[1].failed), (4, 1));
}

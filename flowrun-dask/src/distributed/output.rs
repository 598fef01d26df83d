//! What a task prints on a Dask worker, on its way to the flow's console.
//!
//! The task-mode process sends everything the task writes (stdout, stderr,
//! `tracing` events) to its own stderr as tagged lines: a record separator
//! byte, a tag (`o` stdout, `e` stderr, `0`-`4` a log event's level from
//! error to trace), then the text. The Python shim publishes that stderr
//! to the flow, which re-emits each line attributed to the task run, as the
//! local cluster does. Untagged lines (a program that crashed before task
//! mode took over its output) are shown as stderr.

use std::fmt::Write as _;

use flowrun_core::plumbing::level_from_code;
use flowrun_core::SerializedJob;

/// Starts a tagged line.
pub(crate) const TAG: u8 = 0x1e;

/// One line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    Stdout(String),
    Stderr(String),
    /// A `tracing` event: level 0 (error) to 4 (trace), and its message.
    Log(u8, String),
    /// A `tracing` event about a run of its own (`flowrun.run`, such as a
    /// run the task submitted through `get_dask_client`): level, the run's
    /// label, and the message.
    RunLog(u8, String, String),
    /// A flow run the task called started or ended: a
    /// [`flowrun_core::SubflowReport`] as JSON, for the flow to link to the
    /// task's run (never shown).
    Subflow(String),
}

/// Ends the run label of a [`Line::RunLog`].
const UNIT: u8 = 0x1f;

/// The tagged form of a line, with its newline.
pub(crate) fn encode(line: &Line) -> Vec<u8> {
    let (tag, text) = match line {
        Line::Stdout(t) => (b'o', t),
        Line::Stderr(t) => (b'e', t),
        Line::Log(level, t) => (b'0' + (*level).min(4), t),
        Line::Subflow(t) => (b's', t),
        Line::RunLog(level, run, t) => {
            let mut out = vec![TAG, b'r', b'0' + (*level).min(4)];
            out.extend(run.bytes().filter(|b| *b != UNIT && *b != b'\n'));
            out.push(UNIT);
            out.extend_from_slice(t.as_bytes());
            out.push(b'\n');
            return out;
        }
    };
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(TAG);
    out.push(tag);
    out.extend_from_slice(text.as_bytes());
    out.push(b'\n');
    out
}

/// Reads tagged (and untagged) lines.
pub(crate) fn parse(data: &[u8]) -> Vec<Line> {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|b| *b == b'\n')
        .map(|raw| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            match raw {
                [TAG, b'o', rest @ ..] => Line::Stdout(text(rest)),
                [TAG, b'e', rest @ ..] => Line::Stderr(text(rest)),
                [TAG, level @ b'0'..=b'4', rest @ ..] => Line::Log(level - b'0', text(rest)),
                [TAG, b's', rest @ ..] => Line::Subflow(text(rest)),
                [TAG, b'r', level @ b'0'..=b'4', rest @ ..] => {
                    match rest.iter().position(|b| *b == UNIT) {
                        Some(at) => {
                            Line::RunLog(level - b'0', text(&rest[..at]), text(&rest[at + 1..]))
                        }
                        None => Line::Log(level - b'0', text(rest)),
                    }
                }
                other => Line::Stderr(text(other)),
            }
        })
        .collect()
}

/// The lines as a reader wants them in an error: text, logs with their level.
pub(crate) fn readable(lines: &[Line]) -> String {
    let mut out = String::new();
    for line in lines {
        match line {
            Line::Stdout(t) | Line::Stderr(t) => out.push_str(t),
            Line::Log(level, t) => {
                let _ = write!(out, "{} {t}", level_from_code(*level));
            }
            Line::RunLog(level, run, t) => {
                let _ = write!(out, "{} {run} - {t}", level_from_code(*level));
            }
            Line::Subflow(_) => continue,
        }
        out.push('\n');
    }
    out
}

/// Re-emits a task's lines in the flow, attributed to `run` (as the local
/// cluster does: stdout at INFO, stderr at WARN, printed directly when
/// those levels are off). The run's own lines go out as `job`'s run while
/// it has one (see [`SerializedJob::in_run`]): its name alone could be a
/// same-named run's of another flow run. A line naming another run (one
/// the task ran in its process) names it only.
pub(crate) fn emit(run: &str, lines: &[Line], job: Option<&SerializedJob>) {
    let who = format!("Task run '{run}'");
    let w = who.as_str();
    for line in lines {
        match (line, job) {
            (Line::RunLog(level, run, m), _) => log(*level, run, m),
            (Line::Subflow(_), _) => {}
            (own, Some(job)) => job.in_run(|| emit_own(w, own)),
            (own, None) => emit_own(w, own),
        }
    }
}

/// One of the run's own lines, labelled `w`.
fn emit_own(w: &str, line: &Line) {
    match line {
        Line::Stdout(t) => {
            if tracing::enabled!(target: "flowrun_dask::task_output", tracing::Level::INFO) {
                tracing::info!(target: "flowrun_dask::task_output", { flowrun.run = w }, "{t}");
            } else {
                println!("{t}");
            }
        }
        Line::Stderr(t) => {
            if tracing::enabled!(target: "flowrun_dask::task_output", tracing::Level::WARN) {
                tracing::warn!(target: "flowrun_dask::task_output", { flowrun.run = w }, "{t}");
            } else {
                eprintln!("{t}");
            }
        }
        Line::Log(level, m) => log(*level, w, m),
        Line::RunLog(..) | Line::Subflow(_) => {}
    }
}

/// One log line of a task process, attributed to the run `w`.
fn log(level: u8, w: &str, m: &str) {
    flowrun_core::run_event!(target: "flowrun_dask::worker_log", level_from_code(level), w, "{m}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_lines_round_trip_and_untagged_lines_are_stderr() {
        let lines = vec![
            Line::Stdout("#3".into()),
            Line::Stderr("warning: x".into()),
            Line::Log(2, "hello from the task".into()),
            Line::RunLog(2, "Task run 'inner-0'".into(), "Finished".into()),
            Line::Subflow("{\"id\":\"c\"}".into()),
        ];
        let mut data: Vec<u8> = lines.iter().flat_map(encode).collect();
        data.extend_from_slice(b"thread 'main' panicked\n");
        let mut expected = lines.clone();
        expected.push(Line::Stderr("thread 'main' panicked".into()));
        assert_eq!(parse(&data), expected);
        assert_eq!(
            readable(&expected),
            "#3\nwarning: x\nINFO hello from the task\nINFO Task run 'inner-0' - Finished\n\
             thread 'main' panicked\n"
        );
        assert!(parse(b"").is_empty());
    }
}

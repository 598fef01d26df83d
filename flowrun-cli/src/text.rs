//! The text the commands print: tables cut to the terminal's width, times
//! in local time, durations short.

use std::fmt::Write as _;

use flowrun_history::{FlowRunRow, LogRow, RunDetail, TaskRunRow, TaskRunsByState};

/// The width of the terminal standard output is, when it is one (asked of
/// the terminal, so it follows a resized window).
pub(crate) fn terminal_width() -> Option<usize> {
    terminal_size::terminal_size_of(std::io::stdout())
        .map(|(w, _)| usize::from(w.0))
        .filter(|w| *w > 0)
}

/// The width tables are laid out in: the terminal's when standard output
/// is one, else `COLUMNS` (for scripts that want a given width), else 120.
pub(crate) fn width() -> usize {
    terminal_width()
        .or_else(|| {
            std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.parse().ok())
                .filter(|w| *w >= 40)
        })
        .unwrap_or(120)
}

/// A local time such as `2026-11-30 10:45`.
pub(crate) fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_else(|| "?".into())
}

/// A duration such as `350ms`, `12.3s`, `4m05s`, `2h03m`.
pub(crate) fn duration(ms: Option<i64>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    match ms {
        ..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// `10: 8 completed, 2 failed`, naming only the states that occur.
pub(crate) fn counts(c: &TaskRunsByState) -> String {
    let parts: Vec<String> = [
        (c.completed, "completed"),
        (c.failed, "failed"),
        (c.crashed, "crashed"),
        (c.cancelled, "cancelled"),
        (c.unfinished(), "unfinished"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        "0".into()
    } else {
        format!("{}: {}", c.total, parts.join(", "))
    }
}

/// The short form of an id: its last 12 digits, which are random (its
/// first ones are the start time, shared by runs started together).
/// `flowrun show` takes it, or any unique prefix of the id.
pub(crate) fn short_id(id: &str) -> &str {
    id.get(id.len().saturating_sub(12)..).unwrap_or(id)
}

fn state(state: &str, name: Option<&str>) -> String {
    match name {
        Some(n) if n != state => format!("{state}({n})"),
        _ => state.to_owned(),
    }
}

/// Cuts `s` to `max` characters, marking the cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Lays out rows under a header, each column as wide as its widest cell,
/// the last column cut so each line fits `width`.
fn table(header: &[&str], rows: &[Vec<String>], width: usize) -> String {
    let n = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    // Wide middle columns give way first, then the last one is cut.
    for w in widths.iter_mut().take(n - 1) {
        *w = (*w).min(32);
    }
    let used: usize = widths[..n - 1].iter().map(|w| w + 2).sum();
    let last = width.saturating_sub(used).max(10);
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == n {
                l.push_str(&cut(cell, last));
            } else {
                let c = cut(cell, widths[i]);
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(&cut(l.trim_end(), width));
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

/// Flow runs a line, in `flowrun runs` and in a run's subflows.
fn run_table(runs: &[FlowRunRow], width: usize) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                short_id(&r.id).to_owned(),
                r.name.clone(),
                r.flow.clone(),
                state(&r.state, r.state_name.as_deref()),
                time(r.start_ms),
                duration(r.duration_ms()),
                counts(&r.tasks),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "FLOW",
            "STATE",
            "START",
            "DURATION",
            "TASK RUNS",
        ],
        &rows,
        width,
    )
}

/// `flowrun runs`.
pub(crate) fn runs(runs: &[FlowRunRow], width: usize) -> String {
    if runs.is_empty() {
        return "No flow runs recorded (that match).\n".into();
    }
    run_table(runs, width)
}

fn task_rows(tasks: &[TaskRunRow]) -> Vec<Vec<String>> {
    tasks
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                state(&t.state, t.state_name.as_deref()),
                t.attempts.to_string(),
                duration(t.duration_ms()),
                t.worker.clone().unwrap_or_else(|| "-".into()),
                t.message.clone().unwrap_or_default().replace('\n', " "),
            ]
        })
        .collect()
}

/// `flowrun show RUN`.
pub(crate) fn show(d: &RunDetail, width: usize) -> String {
    let r = &d.run;
    let mut out = String::new();
    let _ = writeln!(out, "Flow run  {} (flow {})", r.name, r.flow);
    let _ = writeln!(out, "Id        {}", r.id);
    let _ = writeln!(
        out,
        "State     {}{}",
        state(&r.state, r.state_name.as_deref()),
        r.message
            .as_deref()
            .map(|m| format!(": {}", cut(&m.replace('\n', " "), width.saturating_sub(30))))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "Started   {}, ran {}{}",
        time(r.start_ms),
        duration(r.duration_ms()),
        r.pid.map(|p| format!(", process {p}")).unwrap_or_default()
    );
    if let Some(parent) = &r.parent_flow_run {
        let _ = writeln!(out, "Subflow of {parent}");
    }
    if let Some(task) = &r.parent_task_run {
        let _ = writeln!(out, "Called by task run {task}");
    }
    if let Some(parameters) = &r.parameters {
        let _ = writeln!(
            out,
            "Parameters {}",
            cut(parameters, width.saturating_sub(11))
        );
    }
    if !r.tags.is_empty() {
        let _ = writeln!(out, "Tags      {}", r.tags.join(", "));
    }
    let _ = writeln!(out, "Task runs {}", counts(&r.tasks));
    if !d.task_runs.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "TASK RUN", "STATE", "ATTEMPTS", "DURATION", "WORKER", "MESSAGE",
            ],
            &task_rows(&d.task_runs),
            width,
        ));
        if (d.task_runs.len() as u64) < r.tasks.total {
            let _ = writeln!(
                out,
                "(the first {} of {} task runs; --limit N shows more, --json all fields)",
                d.task_runs.len(),
                r.tasks.total
            );
        }
    }
    if !d.failures.is_empty() {
        let _ = writeln!(out, "\nFailures");
        for f in &d.failures {
            let _ = writeln!(
                out,
                "  {} {} after {} attempt{}: {}",
                f.name,
                state(&f.state, f.state_name.as_deref()),
                f.attempts,
                if f.attempts == 1 { "" } else { "s" },
                cut(
                    &f.message.clone().unwrap_or_default().replace('\n', " "),
                    width.saturating_sub(f.name.len() + 30)
                )
            );
        }
    }
    if !d.subflows.is_empty() {
        let _ = writeln!(out, "\nSubflows");
        out.push_str(&run_table(&d.subflows, width));
    }
    out
}

/// `flowrun logs RUN`, in the console's format. With a `width` (standard
/// output is a terminal), a line longer than that wraps, its text going on
/// under where it began; without one (piped, for scripts) no line is cut.
pub(crate) fn logs(lines: &[LogRow], width: Option<usize>) -> String {
    let mut out = String::new();
    for l in lines {
        let when = chrono::DateTime::from_timestamp_millis(l.time_ms)
            .map(|t| {
                t.with_timezone(&chrono::Local)
                    .format("%H:%M:%S%.3f")
                    .to_string()
            })
            .unwrap_or_default();
        let who = match &l.task_run {
            Some(t) => format!("Task run '{t}'"),
            None => "Flow run".to_owned(),
        };
        let line = format!("{when} | {:<7} | {who} - {}", l.level, l.text);
        match width {
            Some(width) => wrapped(&mut out, &line, width, when.chars().count() + 13),
            None => {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    if lines.is_empty() {
        out.push_str("No log lines (that match).\n");
    }
    out
}

/// Appends `line` wrapped to `width`, the lines after its first indented
/// by `indent` (where a log line's text begins) unless that leaves too
/// little room. A line of the text that is too long for what is left is
/// broken within a word.
fn wrapped(out: &mut String, line: &str, width: usize, indent: usize) {
    let indent = if width >= indent + 20 { indent } else { 0 };
    let pad = " ".repeat(indent);
    // Names such as `square-0` stay whole.
    let options = textwrap::Options::new(width.max(1))
        .subsequent_indent(&pad)
        .word_splitter(textwrap::WordSplitter::NoHyphenation);
    for piece in textwrap::wrap(line, options) {
        out.push_str(&piece);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(total: u64, completed: u64, failed: u64) -> TaskRunsByState {
        TaskRunsByState {
            total,
            completed,
            failed,
            ..TaskRunsByState::default()
        }
    }

    #[test]
    fn counts_name_the_states_that_occur_and_the_unfinished_rest() {
        assert_eq!(counts(&runs(0, 0, 0)), "0");
        assert_eq!(counts(&runs(10, 8, 2)), "10: 8 completed, 2 failed");
        assert_eq!(counts(&runs(12, 8, 0)), "12: 8 completed, 4 unfinished");
    }

    #[test]
    fn a_damaged_record_with_more_final_runs_than_runs_shows_no_unfinished() {
        assert_eq!(counts(&runs(3, 4, 1)), "3: 4 completed, 1 failed");
    }
}

//! The text of the live block and of the summary line.

use std::fmt::Write as _;
use std::time::Duration;

use super::tally::TaskProgress;

/// What the block may use of the terminal.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub rows: u16,
    pub cols: u16,
    pub color: bool,
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const GREEN: &str = "32";
const RED: &str = "31";
const YELLOW: &str = "33";
const DIM: &str = "2";
const CYAN: &str = "36";

fn paint(out: &mut String, color: bool, code: &str, text: &str) {
    if color {
        let _ = write!(out, "\x1b[{code}m{text}\x1b[0m");
    } else {
        out.push_str(text);
    }
}

/// The block of one flow run: a header, then a line per task name:
///
/// ```text
/// ⠹ Flow run 'upbeat-egret' 0:12 · 12/40 task runs finished · 1 failed
///   shout  ━━━━━━━━━━━━━━━━────────   9/20  2 running · 9 pending
///   fail   ━━━━━━━━━━━━━━━━━━━━━━━━    3/3   1 failed
/// ```
pub(super) fn block(
    label: &str,
    elapsed: Duration,
    tasks: &[TaskProgress],
    frame: usize,
    layout: Layout,
) -> String {
    let color = layout.color;
    let mut out = String::new();
    paint(&mut out, color, CYAN, SPINNER[frame % SPINNER.len()]);
    let secs = elapsed.as_secs();
    let _ = write!(out, " {label} {}:{:02}", secs / 60, secs % 60);
    let total: usize = tasks.iter().map(TaskProgress::total).sum();
    let finished: usize = tasks.iter().map(TaskProgress::finished).sum();
    let failures: usize = tasks.iter().map(TaskProgress::failures).sum();
    let _ = write!(out, " · {finished}/{total} task runs finished");
    if failures > 0 {
        out.push_str(" · ");
        paint(&mut out, color, RED, &format!("{failures} failed"));
    }
    // Keep the block within the screen, or redrawing would scroll it.
    let room = usize::from(layout.rows.saturating_sub(3)).clamp(1, 12);
    let shown = if tasks.len() > room {
        room - 1
    } else {
        tasks.len()
    };
    let name_width = tasks[..shown]
        .iter()
        .map(|t| t.task.chars().count())
        .max()
        .unwrap_or(0)
        .min(24);
    let cols = usize::from(layout.cols).max(40);
    let bar_width = cols.saturating_sub(name_width + 46).clamp(8, 30);
    let count_width = total.max(1).to_string().len();
    for t in &tasks[..shown] {
        out.push_str("\n  ");
        let name: String = t.task.chars().take(name_width).collect();
        let _ = write!(out, "{name:<name_width$}  ");
        bar(&mut out, t, bar_width, color);
        let _ = write!(
            out,
            "  {:>count_width$}/{:<count_width$}",
            t.finished(),
            t.total()
        );
        let mut first = true;
        let mut part = |out: &mut String, n: usize, what: &str, code: Option<&str>| {
            if n == 0 {
                return;
            }
            out.push_str(if first { "  " } else { " · " });
            first = false;
            match code {
                Some(code) => paint(out, color, code, &format!("{n} {what}")),
                None => {
                    let _ = write!(out, "{n} {what}");
                }
            }
        };
        part(&mut out, t.running, "running", Some(YELLOW));
        part(&mut out, t.pending, "pending", None);
        part(&mut out, t.awaiting_retry, "awaiting retry", Some(YELLOW));
        part(&mut out, t.failed, "failed", Some(RED));
        part(&mut out, t.crashed, "crashed", Some(RED));
        part(&mut out, t.cancelled, "cancelled", Some(RED));
    }
    if shown < tasks.len() {
        let rest = &tasks[shown..];
        let finished: usize = rest.iter().map(TaskProgress::finished).sum();
        let total: usize = rest.iter().map(TaskProgress::total).sum();
        let _ = write!(
            out,
            "\n  … {} more tasks: {finished}/{total} runs finished",
            rest.len()
        );
    }
    out
}

/// A bar of `width` cells: completed, failed, running, then pending runs.
fn bar(out: &mut String, t: &TaskProgress, width: usize, color: bool) {
    let total = t.total().max(1);
    let parts = [
        (t.completed, GREEN, '━'),
        (t.failures(), RED, '━'),
        (t.running + t.awaiting_retry, YELLOW, '━'),
        (t.pending, DIM, '─'),
    ];
    let mut seen = 0;
    let mut drawn = 0;
    for (n, code, glyph) in parts {
        seen += n;
        // Cumulative rounding: the cells always add up to `width`.
        let upto = (seen * width + total / 2) / total;
        let cells = upto.saturating_sub(drawn);
        drawn += cells;
        if cells > 0 {
            let text: String = std::iter::repeat_n(glyph, cells).collect();
            if color {
                paint(out, color, code, &text);
            } else {
                // Without colours, the glyph alone tells the parts apart.
                let plain = match code {
                    YELLOW => '─',
                    DIM => ' ',
                    _ => '━',
                };
                out.extend(std::iter::repeat_n(plain, cells));
            }
        }
    }
    if drawn < width {
        out.push_str(&" ".repeat(width - drawn));
    }
}

/// One plain line for the end of a flow run, or `None` without task runs:
/// `Task runs: 12 (11 Completed, 1 Failed); shout: 10 Completed; fail: 1 Completed, 1 Failed`.
pub(super) fn summary(tasks: &[TaskProgress]) -> Option<String> {
    let total: usize = tasks.iter().map(TaskProgress::total).sum();
    if total == 0 {
        return None;
    }
    let describe = |t: &TaskProgress| {
        [
            (t.completed, "Completed"),
            (t.failed, "Failed"),
            (t.crashed, "Crashed"),
            (t.cancelled, "Cancelled"),
            (t.running, "Running"),
            (t.awaiting_retry, "AwaitingRetry"),
            (t.pending, "Pending"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
    };
    let all = TaskProgress::sum(tasks);
    let mut line = format!("Task runs: {total} ({})", describe(&all));
    const SHOWN: usize = 8;
    for t in tasks.iter().take(SHOWN) {
        let _ = write!(line, "; {}: {}", t.task, describe(t));
    }
    if tasks.len() > SHOWN {
        let _ = write!(line, "; and {} more tasks", tasks.len() - SHOWN);
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(
        task: &str,
        completed: usize,
        failed: usize,
        running: usize,
        pending: usize,
    ) -> TaskProgress {
        TaskProgress {
            completed,
            failed,
            running,
            pending,
            ..TaskProgress::new(task)
        }
    }

    #[test]
    fn summary_counts_every_state_per_task() {
        let line = summary(&[counts("shout", 10, 0, 0, 0), counts("fail", 1, 1, 0, 0)]).unwrap();
        assert_eq!(
            line,
            "Task runs: 12 (11 Completed, 1 Failed); shout: 10 Completed; fail: 1 Completed, 1 Failed"
        );
        assert_eq!(summary(&[]), None);
    }

    #[test]
    fn block_has_a_line_per_task_and_fits_the_screen() {
        let layout = Layout {
            rows: 24,
            cols: 80,
            color: false,
        };
        let text = block(
            "Flow run 'x'",
            Duration::from_secs(75),
            &[counts("shout", 5, 0, 2, 3), counts("fail", 0, 1, 0, 0)],
            0,
            layout,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains("Flow run 'x' 1:15 · 6/11 task runs finished · 1 failed"),
            "{text}"
        );
        assert!(
            lines[1].contains("shout")
                && lines[1].contains("5/10")
                && lines[1].contains("2 running · 3 pending"),
            "{text}"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{text}");
        assert!(!text.contains('\x1b'));

        let many: Vec<TaskProgress> = (0..30)
            .map(|i| counts(&format!("t{i}"), 1, 0, 0, 0))
            .collect();
        let text = block("f", Duration::ZERO, &many, 0, Layout { rows: 10, ..layout });
        assert_eq!(text.lines().count(), 8, "{text}");
        assert!(
            text.ends_with("… 24 more tasks: 24/24 runs finished"),
            "{text}"
        );
    }
}

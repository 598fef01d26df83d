//! Progress of flow runs: a live display on the terminal while a flow runs,
//! and one summary line at its end.
//!
//! On a terminal, a flow run that lasts longer than a quarter of a second
//! shows a block under its output: the flow run's name and time, and a line
//! per task name with a bar and its task runs pending, running, completed
//! and failed. Log lines, what tasks print and panic messages are printed
//! above the block, never through it; the block is cleared when the flow
//! run ends. When stderr is not a terminal (CI logs, a file, a pipe), there
//! is no block and no escape code, only the summary line, logged at INFO
//! before the flow run's last line:
//!
//! ```text
//! 21:07:47.540 | INFO    | Flow run 'upbeat-egret' - Task runs: 11 (10 Completed, 1 Failed); shout: 10 Completed; fail: 1 Failed
//! ```
//!
//! Turn it off in code with [`set_progress`], or with the environment
//! variable `FLOWRUN_PROGRESS` (`off`, `summary` for the line only, `auto`);
//! the more restrictive of the two wins. It works the same for every task
//! runner.
//!
//! ```
//! use flowrun_core::progress::{set_progress, Progress};
//! set_progress(Progress::Summary); // no live display, keep the summary line
//! ```
//!
//! [`TaskRunTally`] is the counting behind it, for other displays (the Dask
//! dashboard uses it).

mod format;
mod live;
#[cfg(unix)]
mod redirect;
mod tally;

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub use tally::{RunningRun, TaskProgress, TaskRunTally};

use crate::observe::{ObserverRegistration, RunEvent, RunObserver};
use crate::plumbing::lock;
use crate::run::state::State;
use crate::runner::FlowRunInfo;

/// The environment variable that limits progress output: `off`,
/// `summary` or `auto` (the default).
pub const PROGRESS_ENV: &str = "FLOWRUN_PROGRESS";

/// How much progress output flow runs give.
///
/// ```
/// use flowrun_core::progress::Progress;
/// assert_eq!("off".parse::<Progress>(), Ok(Progress::Off));
/// assert!(Progress::Summary < Progress::Auto);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Progress {
    /// No progress output.
    Off,
    /// Only the summary line at the end of each flow run.
    Summary,
    /// A live display when stderr is a terminal, else the summary line.
    Auto,
}

impl FromStr for Progress {
    type Err = String;

    /// `off` (or `0`, `false`, `no`, `none`), `summary` (or `plain`),
    /// `auto` (or `on`, `1`, `true`, empty), in any case.
    fn from_str(text: &str) -> Result<Progress, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" | "0" | "false" | "no" | "none" => Ok(Progress::Off),
            "summary" | "plain" => Ok(Progress::Summary),
            "auto" | "on" | "1" | "true" | "yes" | "" => Ok(Progress::Auto),
            _ => Err(format!(
                "{text:?} is not a progress setting (use off, summary or auto)"
            )),
        }
    }
}

static SETTING: AtomicU8 = AtomicU8::new(Progress::Auto as u8);

/// Sets the progress output of the flow runs that start from now on (in
/// this process). `FLOWRUN_PROGRESS` can still restrict it further.
///
/// ```
/// flowrun_core::progress::set_progress(flowrun_core::progress::Progress::Off);
/// ```
pub fn set_progress(progress: Progress) {
    SETTING.store(progress as u8, Ordering::Relaxed);
}

/// The progress output flow runs give now: the more restrictive of
/// [`set_progress`] and `FLOWRUN_PROGRESS`.
///
/// ```
/// use flowrun_core::progress::{progress, set_progress, Progress};
/// set_progress(Progress::Off);
/// assert_eq!(progress(), Progress::Off);
/// ```
pub fn progress() -> Progress {
    let code = match SETTING.load(Ordering::Relaxed) {
        0 => Progress::Off,
        1 => Progress::Summary,
        _ => Progress::Auto,
    };
    code.min(from_env())
}

fn from_env() -> Progress {
    let Some(value) = std::env::var_os(PROGRESS_ENV) else {
        return Progress::Auto;
    };
    let value = value.to_string_lossy();
    value.parse().unwrap_or_else(|e| {
        static WARNED: OnceLock<()> = OnceLock::new();
        WARNED.get_or_init(|| eprintln!("flowrun: ignoring {PROGRESS_ENV}: {e}"));
        Progress::Auto
    })
}

/// The progress of one flow run: counts its task runs, draws its live
/// block on a terminal, and logs the summary line at its end.
struct FlowProgress {
    label: String,
    tally: Arc<TaskRunTally>,
    live: Mutex<Option<live::LiveDisplay>>,
    /// A live block draws the tally's counts of unfinished runs too.
    live_shown: bool,
    summary: bool,
}

impl RunObserver for FlowProgress {
    fn run_changed(&self, event: &RunEvent) {
        // The summary needs only how runs ended (every run is final when
        // the flow run ends): without a live block, a run costs one count
        // under the tally's lock, not three.
        if self.live_shown || event.state.kind().is_final() {
            self.tally.record(event);
        }
    }

    fn flow_finished(&self, _state: &State) {
        // Clear the block first: the summary and the flow's last line
        // belong in the scrollback, not under a block about to vanish.
        if let Some(mut live) = lock(&self.live).take() {
            live.finish();
        }
        if self.summary {
            if let Some(line) = format::summary(&self.tally.counts()) {
                crate::run_event!(tracing::Level::INFO, self.label.as_str(), "{line}");
            }
        }
    }
}

fn observer_for(info: &FlowRunInfo) -> Option<Arc<dyn RunObserver>> {
    if crate::exec::worker::is_worker() {
        return None;
    }
    let mode = progress();
    let live = mode == Progress::Auto && live::stderr_is_terminal();
    // The summary is a log line: skip the counting when nobody would see it.
    let summary = mode != Progress::Off && tracing::enabled!(tracing::Level::INFO);
    if !live && !summary {
        return None;
    }
    let label = format!("Flow run '{}'", info.flow_run_name);
    let tally = Arc::new(TaskRunTally::new());
    let live = if live {
        live::LiveDisplay::start(label.clone(), tally.clone())
    } else {
        None
    };
    Some(Arc::new(FlowProgress {
        label,
        tally,
        live_shown: live.is_some(),
        live: Mutex::new(live),
        summary,
    }))
}

inventory::submit! {
    ObserverRegistration { factory: observer_for }
}

//! Logging through `tracing`, with the run name attached, and the default
//! console output Prefect users know:
//!
//! ```text
//! 19:30:01.123 | INFO    | Flow run 'brave-otter' - Beginning flow run 'brave-otter' for flow 'count-to'
//! 19:30:01.631 | INFO    | Task run 'shout-3' - Finished in state Completed()
//! ```
//!
//! The console output is installed when the first flow run starts, unless
//! the program already installed a global `tracing` subscriber (then that
//! subscriber receives the same events and spans) or `FLOWRUN_LOG=off`.
//! `FLOWRUN_LOG` takes `tracing-subscriber` filter directives
//! (default `info`), for example `FLOWRUN_LOG=warn` or
//! `FLOWRUN_LOG=info,my_crate=debug`.
//!
//! A [`LogTap`] registered at link time (the run history does) receives
//! every INFO-or-higher line with the run it belongs to, whatever
//! `FLOWRUN_LOG` says; a program with its own subscriber adds [`TapLayer`]
//! to it for the same.

use std::fmt;
use std::io::{IsTerminal, Write as _};
use std::sync::OnceLock;

use tracing::subscriber::Interest;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Filter, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use crate::exec::context;
use crate::plumbing::EventFields;

/// The environment variable holding the console log filter.
pub const LOG_ENV: &str = "FLOWRUN_LOG";

/// Set to `0` or `false` to keep the `Finished in state Completed` line of
/// each task run out of the console (see [`set_log_completed_task_runs`]).
pub const COMPLETED_TASK_RUNS_ENV: &str = "FLOWRUN_LOG_COMPLETED_TASK_RUNS";

static COMPLETED_TASK_RUNS: EnvSwitch = EnvSwitch::new(COMPLETED_TASK_RUNS_ENV);

/// Whether each completed task run logs `Finished in state Completed` at
/// INFO (the default). Turned off, those lines go to DEBUG, which keeps a
/// map over thousands of elements from filling the console; task runs
/// that fail, crash or are cancelled are always logged. Overrides
/// [`COMPLETED_TASK_RUNS_ENV`].
///
/// ```
/// flowrun_core::logging::set_log_completed_task_runs(false);
/// ```
pub fn set_log_completed_task_runs(shown: bool) {
    COMPLETED_TASK_RUNS.set(shown);
}

/// Whether completed task runs log their final state at INFO.
pub(crate) fn log_completed_task_runs() -> bool {
    COMPLETED_TASK_RUNS.get()
}

/// A per-process setting that is on unless the program turns it off or,
/// before that, its environment variable says `0`, `false`, `off` or `no`
/// (read once, at the first question).
#[derive(Debug)]
pub(crate) struct EnvSwitch {
    /// 0: not read yet, 1: on, 2: off.
    state: std::sync::atomic::AtomicU8,
    env: &'static str,
}

impl EnvSwitch {
    /// A switch read from the environment variable `env`.
    pub(crate) const fn new(env: &'static str) -> EnvSwitch {
        EnvSwitch {
            state: std::sync::atomic::AtomicU8::new(0),
            env,
        }
    }

    /// Turns the switch on or off, whatever the environment says.
    pub(crate) fn set(&self, on: bool) {
        self.state
            .store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the switch is on.
    pub(crate) fn get(&self) -> bool {
        use std::sync::atomic::Ordering;
        match self.state.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let off = std::env::var(self.env).is_ok_and(|v| {
                    matches!(
                        v.trim().to_ascii_lowercase().as_str(),
                        "0" | "false" | "off" | "no"
                    )
                });
                let _ = self.state.compare_exchange(
                    0,
                    if off { 2 } else { 1 },
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                !off
            }
        }
    }
}

/// Installs flowrun's console output as the global `tracing` subscriber,
/// unless one is already installed or `FLOWRUN_LOG=off`. Flow runs call it;
/// calling it earlier makes task logs outside flows visible too.
pub fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if tracing::dispatcher::has_been_set() {
            return;
        }
        let tapped = inventory::iter::<LogTap>.into_iter().next().is_some();
        let directives = std::env::var(LOG_ENV).unwrap_or_else(|_| "info".to_owned());
        let console = if directives.trim().eq_ignore_ascii_case("off") {
            None
        } else {
            let filter = EnvFilter::try_new(&directives).unwrap_or_else(|e| {
                eprintln!("flowrun: ignoring {LOG_ENV}={directives:?}: {e}");
                EnvFilter::new("info")
            });
            let layer = ConsoleLayer::new(
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            );
            // Spans matter to this filter only through a span directive
            // (`[task_run]=debug`); the console itself never reads them.
            let spans = directives.contains('[');
            Some(layer.with_filter(Fresh { filter, spans }))
        };
        // Only the layers there are: an absent (`None`) layer counts as one
        // that wants every event and span, which made the per-task lines
        // and spans the filters turn away still be built.
        let registry = tracing_subscriber::registry();
        let _ = match (console, tapped) {
            (Some(console), true) => registry
                .with(console)
                .with(TapLayer::registered())
                .try_init(),
            (Some(console), false) => registry.with(console).try_init(),
            (None, true) => registry.with(TapLayer::registered()).try_init(),
            (None, false) => return,
        };
    });
}

/// One log line as a [`LogTap`] receives it.
#[derive(Debug)]
pub struct LogRecord<'a> {
    /// Its level.
    pub level: Level,
    /// The id of the flow run of the code that logged it, if known here.
    pub flow_run_id: Option<&'a str>,
    /// The task run that logged it, if it runs in this process.
    pub task_run: Option<&'a crate::RunRef>,
    /// The run label, such as `Task run 'shout-3'`, when the line names
    /// its run without the run context (a line a worker process sent).
    pub label: Option<&'a str>,
    /// The text, with any extra fields appended as `name=value`.
    pub message: &'a str,
}

/// Receives every log line of INFO or higher (register with
/// `inventory::submit!`). Called on the logging thread: keep it quick.
#[derive(Debug)]
pub struct LogTap {
    /// The receiver.
    pub tap: fn(&LogRecord<'_>),
}

inventory::collect!(LogTap);

/// Hands log lines to the registered [`LogTap`]s. [`init`] installs it
/// when a tap is registered; add [`TapLayer::registered`] to your own
/// subscriber otherwise.
#[derive(Debug)]
pub struct TapLayer {
    taps: Vec<fn(&LogRecord<'_>)>,
}

impl TapLayer {
    /// The layer with its filter, or `None` when no tap is registered.
    pub fn registered<S>() -> Option<impl Layer<S> + Send + Sync>
    where
        S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let taps: Vec<_> = inventory::iter::<LogTap>
            .into_iter()
            .map(|t| t.tap)
            .collect();
        // The per-task "Finished in state Completed()" lines repeat what the
        // state history holds; leaving them out keeps taps off the hot path.
        // A worker's raw task output (prints a task does not log) is not
        // a log line: as on the thread runner, it is shown (the console's
        // or plain stdout), not recorded.
        let filter = tracing_subscriber::filter::Targets::new()
            .with_default(Level::INFO)
            .with_target("flowrun_core::flow", Level::WARN)
            .with_target(
                "flowrun_dask::task_output",
                tracing::level_filters::LevelFilter::OFF,
            );
        let filter = Fresh {
            filter,
            spans: false,
        };
        (!taps.is_empty()).then(|| TapLayer { taps }.with_filter(filter))
    }
}

/// A per-layer filter whose verdict is asked afresh at every event.
///
/// `tracing-subscriber` hands each per-layer filter's verdict from
/// `enabled` to its layer through a thread-local. A callsite every filter
/// accepts is cached as always wanted, and its events skip `enabled`, so
/// the layer reads whatever verdict the last question on that thread left:
/// after `tracing::enabled!(Level::INFO)` with a console showing WARN and
/// up, the next warning never reached the console (tokio-rs/tracing#2519).
/// Capping the callsite's interest at "sometimes" has every event asked.
///
/// flowrun's own layers read a line's run from the thread's run context,
/// never from spans: unless `spans` (the filter has a span directive), the
/// filter turns spans away, so that the span each task run opens (for the
/// program's own subscribers) costs nothing when only these layers listen.
struct Fresh<F> {
    filter: F,
    spans: bool,
}

impl<S, F: Filter<S>> Filter<S> for Fresh<F> {
    fn enabled(&self, meta: &tracing::Metadata<'_>, cx: &LayerContext<'_, S>) -> bool {
        (self.spans || !meta.is_span()) && self.filter.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> Interest {
        if !self.spans && meta.is_span() {
            return Interest::never();
        }
        let interest = self.filter.callsite_enabled(meta);
        if interest.is_always() {
            Interest::sometimes()
        } else {
            interest
        }
    }

    fn event_enabled(&self, event: &Event<'_>, cx: &LayerContext<'_, S>) -> bool {
        self.filter.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.filter.max_level_hint()
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: LayerContext<'_, S>,
    ) {
        self.filter.on_new_span(attrs, id, cx)
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        cx: LayerContext<'_, S>,
    ) {
        self.filter.on_record(id, values, cx)
    }

    fn on_enter(&self, id: &tracing::span::Id, cx: LayerContext<'_, S>) {
        self.filter.on_enter(id, cx)
    }

    fn on_exit(&self, id: &tracing::span::Id, cx: LayerContext<'_, S>) {
        self.filter.on_exit(id, cx)
    }

    fn on_close(&self, id: tracing::span::Id, cx: LayerContext<'_, S>) {
        self.filter.on_close(id, cx)
    }
}

impl<S: Subscriber> Layer<S> for TapLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut fields = EventFields::of(event);
        fields.message.push_str(&fields.rest);
        let ctx = context::current();
        let label = fields.run.as_deref().or(ctx.label.as_deref());
        let record = LogRecord {
            level: *event.metadata().level(),
            flow_run_id: ctx.flow.as_ref().map(|f| f.id.as_str()),
            task_run: ctx.task_run.as_ref(),
            label,
            message: &fields.message,
        };
        for tap in &self.taps {
            tap(&record);
        }
    }
}

type Sink = Box<dyn Fn(&str) + Send + Sync>;

/// Writes one line per event, in Prefect's format, to stderr (or to a sink
/// of your choice, see [`ConsoleLayer::with_sink`]).
///
/// ```
/// use tracing_subscriber::prelude::*;
/// let layer = flowrun_core::logging::ConsoleLayer::new(false).with_sink(|line| print!("{line}"));
/// let _subscriber = tracing_subscriber::registry().with(layer);
/// ```
pub struct ConsoleLayer {
    color: bool,
    sink: Option<Sink>,
}

impl fmt::Debug for ConsoleLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleLayer")
            .field("color", &self.color)
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

impl ConsoleLayer {
    /// A console layer; `color` adds ANSI colours to the level.
    pub fn new(color: bool) -> ConsoleLayer {
        ConsoleLayer { color, sink: None }
    }

    /// Sends each formatted line (ending in a newline) to `sink` instead of stderr.
    pub fn with_sink(mut self, sink: impl Fn(&str) + Send + Sync + 'static) -> ConsoleLayer {
        self.sink = Some(Box::new(sink));
        self
    }
}

impl<S: Subscriber> Layer<S> for ConsoleLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let fields = EventFields::of(event);
        let who = fields.run.clone().unwrap_or_else(|| match run_label() {
            Some(label) => label,
            None => event.metadata().target().to_owned(),
        });
        let line = format_line(*event.metadata().level(), &who, &fields, self.color);
        match &self.sink {
            Some(sink) => sink(&line),
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }
}

fn format_line(level: Level, who: &str, fields: &EventFields, color: bool) -> String {
    let (name, code) = match level {
        Level::ERROR => ("ERROR", "31"),
        Level::WARN => ("WARNING", "33"),
        Level::INFO => ("INFO", "36"),
        Level::DEBUG => ("DEBUG", "34"),
        Level::TRACE => ("TRACE", "2"),
    };
    let time = chrono::Local::now().format("%H:%M:%S%.3f");
    let level = if color {
        format!("\x1b[{code}m{name:<7}\x1b[0m")
    } else {
        format!("{name:<7}")
    };
    format!(
        "{time} | {level} | {who} - {}{}\n",
        fields.message, fields.rest
    )
}

/// "Task run 'x'" or "Flow run 'y'" for the code running on this thread.
pub(crate) fn run_label() -> Option<String> {
    let ctx = context::current();
    if let Some(run) = &ctx.task_run {
        return Some(format!("Task run '{}'", run.name()));
    }
    if let Some(label) = &ctx.label {
        return Some(format!("Task run '{label}'"));
    }
    ctx.flow.map(|f| format!("Flow run '{}'", f.name))
}

/// A logger bound to the current task or flow run: every line it writes
/// carries the run's name, even from threads the run started.
///
/// ```
/// let logger = flowrun_core::get_run_logger();
/// logger.info("loaded 12 rows");
/// ```
#[derive(Clone, Debug)]
pub struct RunLogger {
    label: String,
    span: tracing::Span,
}

/// The logger of the run executing on this thread (a task run inside a task,
/// else the flow run).
///
/// Outside any run (in `main` before a flow, say) it is a plain logger
/// whose lines carry `flowrun` instead of a run name; the first such call
/// sets up the console output, as a flow run does, and notes once that
/// there is no run, where Prefect raises `MissingContextError`.
///
/// ```
/// flowrun_core::get_run_logger().info("before any flow: still printed");
/// ```
pub fn get_run_logger() -> RunLogger {
    let label = run_label().unwrap_or_else(|| {
        init();
        static NOTED: std::sync::Once = std::sync::Once::new();
        NOTED.call_once(|| {
            crate::run_event!(
                Level::WARN,
                "flowrun",
                "get_run_logger() was called outside a flow or task run: its lines are logged without a run name"
            );
        });
        "flowrun".to_owned()
    });
    RunLogger {
        label,
        span: context::current_span().unwrap_or_else(tracing::Span::current),
    }
}

impl RunLogger {
    /// The run label, such as `Task run 'shout-3'`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Logs `message` at `level`.
    pub fn log(&self, level: Level, message: impl fmt::Display) {
        let run = self.label.as_str();
        crate::run_event!(parent: &self.span, level, run, "{message}");
    }

    /// Logs at INFO.
    pub fn info(&self, message: impl fmt::Display) {
        self.log(Level::INFO, message)
    }

    /// Logs at WARN.
    pub fn warn(&self, message: impl fmt::Display) {
        self.log(Level::WARN, message)
    }

    /// Logs at ERROR.
    pub fn error(&self, message: impl fmt::Display) {
        self.log(Level::ERROR, message)
    }

    /// Logs at DEBUG.
    pub fn debug(&self, message: impl fmt::Display) {
        self.log(Level::DEBUG, message)
    }
}

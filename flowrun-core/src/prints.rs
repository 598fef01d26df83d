//! What a task or flow prints, logged as a line of its run (Prefect's
//! `log_prints`).
//!
//! Stable Rust cannot capture the standard output of one thread, so the
//! `#[task]` and `#[flow]` macros rewrite the `print!`, `println!`,
//! `eprint!` and `eprintln!` invocations written in the function's body
//! into [`print_to_run`]. Inside a run that call logs each printed line as
//! a log line of the run (INFO for stdout, WARNING for stderr): it shows
//! with the run's name on the console, reaches the log taps (the run
//! history) and, on a worker process, travels to the flow like any log
//! line. Outside a run, with the setting off, or when no log output would
//! show the line, it prints as the macro would have.
//!
//! What is not rewritten prints as usual: prints in functions the task
//! calls (unless their module imports this module's macros by name:
//! `use flowrun::prints::{print, println};`, as a glob import would be
//! ambiguous with the prelude's), prints spelled with a path
//! (`std::println!`), writes to `std::io::stdout()` and output of threads
//! the task starts. On the thread runner those reach the process's stdout
//! unattributed; on a local cluster's worker the worker's own output
//! capture still attributes them to the runs executing at the time.
//!
//! ```
//! use flowrun_core::prints::println;
//! // Outside a run this prints to stdout, as `std::println!` would.
//! println!("hello {}", 42);
//! ```

use std::fmt;

use tracing::Level;

/// Set to `0`, `false`, `off` or `no` to print instead of logging what
/// tasks and flows print (see [`set_log_prints`]).
pub const LOG_PRINTS_ENV: &str = "FLOWRUN_LOG_PRINTS";

static LOG_PRINTS: crate::logging::EnvSwitch = crate::logging::EnvSwitch::new(LOG_PRINTS_ENV);

/// Whether prints in task and flow bodies are logged as lines of their run
/// (the default) or printed as plain output. A task or flow written with
/// `log_prints = true` logs its prints either way; one written with
/// `log_prints = false` never does. Overrides [`LOG_PRINTS_ENV`]. The
/// setting is per process: worker processes of a local cluster read the
/// environment variable, which they inherit.
///
/// ```
/// flowrun_core::prints::set_log_prints(false);
/// assert!(!flowrun_core::prints::log_prints());
/// # flowrun_core::prints::set_log_prints(true);
/// ```
pub fn set_log_prints(on: bool) {
    LOG_PRINTS.set(on);
}

/// Whether prints in task and flow bodies are logged (see [`set_log_prints`]).
pub fn log_prints() -> bool {
    LOG_PRINTS.get()
}

/// Where a print goes when it is not logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrintStream {
    /// `print!`/`println!`: logged at INFO.
    Stdout,
    /// `eprint!`/`eprintln!`: logged at WARNING.
    Stderr,
}

/// Logs `args` as lines of the run executing on this thread, or prints it
/// (with a newline if `newline`) when there is no run, the setting is off
/// and `forced` is not set, or no log output is listening at that level.
/// What the print macros of `#[task]`/`#[flow]` bodies turn into.
pub fn print_to_run(forced: bool, stream: PrintStream, newline: bool, args: fmt::Arguments<'_>) {
    let level = match stream {
        PrintStream::Stdout => Level::INFO,
        PrintStream::Stderr => Level::WARN,
    };
    if forced || log_prints() {
        if let Some(label) = crate::logging::run_label() {
            if crate::run_event_enabled!(level) {
                let span =
                    crate::exec::context::current_span().unwrap_or_else(tracing::Span::current);
                let text = args.to_string();
                let text = text.strip_suffix('\n').unwrap_or(&text);
                // One log line per printed line, as a worker's output
                // capture forwards them.
                for line in text.split('\n') {
                    crate::run_event!(parent: &span, level, label.as_str(), "{line}");
                }
                return;
            }
        }
    }
    // The standard macros, so that a test harness's capture still applies.
    match (stream, newline) {
        (PrintStream::Stdout, false) => std::print!("{args}"),
        (PrintStream::Stdout, true) => std::println!("{args}"),
        (PrintStream::Stderr, false) => std::eprint!("{args}"),
        (PrintStream::Stderr, true) => std::eprintln!("{args}"),
    }
}

/// What the four print macros below expand to: `print_to_run` on `$stream`,
/// with a newline if `$newline`, of the format arguments after the `;`
/// (which only the newline forms may leave out, as with `std`).
#[macro_export]
#[doc(hidden)]
macro_rules! __run_print_to {
    ($stream:ident, true;) => {
        $crate::__run_print_to!($stream, true; "")
    };
    ($stream:ident, $newline:literal; $($arg:tt)+) => {
        $crate::prints::print_to_run(false, $crate::prints::PrintStream::$stream, $newline, ::core::format_args!($($arg)+))
    };
}

/// Like `std::print!`, but logged as a line of the current run (see the
/// [module docs](self)).
#[macro_export]
#[doc(hidden)]
macro_rules! __run_print {
    ($($arg:tt)*) => { $crate::__run_print_to!(Stdout, false; $($arg)*) };
}

/// Like `std::println!`, but logged as a line of the current run (see the
/// [module docs](self)).
#[macro_export]
#[doc(hidden)]
macro_rules! __run_println {
    ($($arg:tt)*) => { $crate::__run_print_to!(Stdout, true; $($arg)*) };
}

/// Like `std::eprint!`, but logged as a line of the current run (see the
/// [module docs](self)).
#[macro_export]
#[doc(hidden)]
macro_rules! __run_eprint {
    ($($arg:tt)*) => { $crate::__run_print_to!(Stderr, false; $($arg)*) };
}

/// Like `std::eprintln!`, but logged as a line of the current run (see the
/// [module docs](self)).
#[macro_export]
#[doc(hidden)]
macro_rules! __run_eprintln {
    ($($arg:tt)*) => { $crate::__run_print_to!(Stderr, true; $($arg)*) };
}

#[doc(inline)]
pub use crate::__run_eprint as eprint;
#[doc(inline)]
pub use crate::__run_eprintln as eprintln;
#[doc(inline)]
pub use crate::__run_print as print;
#[doc(inline)]
pub use crate::__run_println as println;

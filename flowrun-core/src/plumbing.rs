//! Process-boundary plumbing shared by flowrun's crates: poison-tolerant
//! locks, the run-name field of log events and its reader, the wire code of
//! log levels, and hex. Runners in other crates (flowrun-dask) use the
//! same helpers from here (the `flowrun::runner` module of the facade
//! re-exports them), so there is one copy of each.

use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::Level;

/// The field of a log event that names the run it belongs to, such as
/// `Task run 'shout-3'`.
pub const RUN_FIELD: &str = "flowrun.run";

/// Locks `mutex`, also when a thread panicked while holding it: flowrun's
/// locks guard data that stays consistent between statements, and a panic
/// in one task must not poison the whole flow run.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`Condvar::wait`], tolerating poison as [`lock`] does.
pub fn wait<'a, T>(cond: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cond.wait(guard).unwrap_or_else(|p| p.into_inner())
}

/// [`Condvar::wait_timeout`], tolerating poison as [`lock`] does. Returns
/// the guard and whether the wait timed out.
pub fn wait_timeout<'a, T>(
    cond: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> (MutexGuard<'a, T>, bool) {
    let (guard, result) = cond
        .wait_timeout(guard, timeout)
        .unwrap_or_else(|p| p.into_inner());
    (guard, result.timed_out())
}

/// Emits an event at `level` with `message`, attributed to the run
/// labelled `run` (see [`RUN_FIELD`]), in the current span.
pub fn log_as_run(level: Level, run: &str, message: &dyn fmt::Display) {
    log_as_run_in(&tracing::Span::current(), level, run, message);
}

/// [`log_as_run`] in span `parent`.
pub fn log_as_run_in(parent: &tracing::Span, level: Level, run: &str, message: &dyn fmt::Display) {
    match level {
        Level::ERROR => tracing::error!(parent: parent, flowrun.run = run, "{message}"),
        Level::WARN => tracing::warn!(parent: parent, flowrun.run = run, "{message}"),
        Level::INFO => tracing::info!(parent: parent, flowrun.run = run, "{message}"),
        Level::DEBUG => tracing::debug!(parent: parent, flowrun.run = run, "{message}"),
        Level::TRACE => tracing::trace!(parent: parent, flowrun.run = run, "{message}"),
    }
}

/// A log level as one byte on the wire: 0 (error) to 4 (trace).
pub fn level_code(level: Level) -> u8 {
    match level {
        Level::ERROR => 0,
        Level::WARN => 1,
        Level::INFO => 2,
        Level::DEBUG => 3,
        Level::TRACE => 4,
    }
}

/// The level of a [`level_code`]; codes past 4 read as trace.
pub fn level_from_code(code: u8) -> Level {
    match code {
        0 => Level::ERROR,
        1 => Level::WARN,
        2 => Level::INFO,
        3 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The fields of a log event that flowrun reads: its message, the run it
/// names ([`RUN_FIELD`]), and any other fields as ` key=value` text (the
/// `log.*` fields of events bridged from the `log` crate are left out).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventFields {
    /// The event's message.
    pub message: String,
    /// The run the event names, if it names one.
    pub run: Option<String>,
    /// Other fields, each as ` key=value`.
    pub rest: String,
}

impl EventFields {
    /// The fields of `event`.
    pub fn of(event: &tracing::Event<'_>) -> EventFields {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        fields
    }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            RUN_FIELD => self.run = Some(value.to_owned()),
            name => {
                use fmt::Write;
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use fmt::Write;
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            RUN_FIELD => self.run = Some(format!("{value:?}")),
            name if name.starts_with("log.") => {}
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_codes_round_trip() {
        for level in [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ] {
            assert_eq!(level_from_code(level_code(level)), level);
        }
        assert_eq!(level_from_code(200), Level::TRACE);
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn a_poisoned_lock_still_locks() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}

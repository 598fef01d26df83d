//! Process-boundary plumbing shared by flowrun's crates: poison-tolerant
//! locks, the run-name field of log events (written by [`run_event!`](crate::run_event)
//! and read by [`EventFields`]), the wire code of log levels, and hex. Runners in other crates (flowrun-dask) use the
//! same helpers from here (the `flowrun::runner` module of the facade
//! re-exports them), so there is one copy of each.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// `impl Debug` for a type showing only the fields named (the others hold
/// locks, closures or handles); `..` after them marks the output
/// non-exhaustive.
#[doc(hidden)]
#[macro_export]
macro_rules! __debug_fields {
    ($ty:ty { $($field:ident),* }) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($ty))$(.field(stringify!($field), &self.$field))*.finish()
            }
        }
    };
    ($ty:ty { $($field:ident),*, .. }) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($ty))$(.field(stringify!($field), &self.$field))*.finish_non_exhaustive()
            }
        }
    };
}

/// Grows a pool by one thread unless `threads` already counts `limit()`:
/// claims the next number in `threads` and starts a thread named
/// `name(number)` running `work(number)`. A thread the OS refuses is
/// given back, leaving the work to the threads that exist. Returns whether
/// a thread started.
pub fn spawn_below_limit<W>(
    threads: &AtomicUsize,
    limit: impl Fn() -> usize,
    name: impl FnOnce(usize) -> String,
    work: W,
) -> bool
where
    W: FnOnce(usize) + Send + 'static,
{
    loop {
        let n = threads.load(Ordering::SeqCst);
        if n >= limit() {
            return false;
        }
        if threads
            .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let spawned = std::thread::Builder::new()
                .name(name(n))
                .spawn(move || work(n));
            if spawned.is_err() {
                threads.fetch_sub(1, Ordering::SeqCst);
            }
            return spawned.is_ok();
        }
    }
}

/// Emits a `tracing` event at a level chosen at run time, attributed to a
/// run (its [`RUN_FIELD`]): `run_event!(level, "Task run 'a-0'", "{message}")`.
/// Optional first arguments `target: ...` or `parent: ...` are passed on to
/// `tracing`. A macro, so the event's target is the caller's module.
#[macro_export]
macro_rules! run_event {
    (target: $target:expr, $level:expr, $run:expr, $($arg:tt)+) => {
        $crate::run_event!(@emit (target: $target,) $level, $run, $($arg)+)
    };
    (parent: $parent:expr, $level:expr, $run:expr, $($arg:tt)+) => {
        $crate::run_event!(@emit (parent: $parent,) $level, $run, $($arg)+)
    };
    (@emit ($($opts:tt)*) $level:expr, $run:expr, $($arg:tt)+) => {{
        use $crate::__private::tracing;
        // A match keeps the temporaries of `$run` alive for the event.
        match $run {
            run => match $level {
                tracing::Level::ERROR => tracing::error!($($opts)* { flowrun.run = run }, $($arg)+),
                tracing::Level::WARN => tracing::warn!($($opts)* { flowrun.run = run }, $($arg)+),
                tracing::Level::INFO => tracing::info!($($opts)* { flowrun.run = run }, $($arg)+),
                tracing::Level::DEBUG => tracing::debug!($($opts)* { flowrun.run = run }, $($arg)+),
                tracing::Level::TRACE => tracing::trace!($($opts)* { flowrun.run = run }, $($arg)+),
            },
        }
    }};
    ($level:expr, $run:expr, $($arg:tt)+) => {
        $crate::run_event!(@emit () $level, $run, $($arg)+)
    };
}

/// Whether an event at a level chosen at run time would be recorded here,
/// so a caller can skip building its message.
#[macro_export]
macro_rules! run_event_enabled {
    ($level:expr) => {{
        use $crate::__private::tracing;
        match $level {
            tracing::Level::ERROR => tracing::enabled!(tracing::Level::ERROR),
            tracing::Level::WARN => tracing::enabled!(tracing::Level::WARN),
            tracing::Level::INFO => tracing::enabled!(tracing::Level::INFO),
            tracing::Level::DEBUG => tracing::enabled!(tracing::Level::DEBUG),
            tracing::Level::TRACE => tracing::enabled!(tracing::Level::TRACE),
        }
    }};
}

/// Builder setters, one a line: `pub fn name(arg: Type) => field = value;`
/// becomes `pub fn name(mut self, arg: Type) -> Self` that stores `value`
/// in `self.field` (a path such as `results.persist` also works) and
/// returns `self`. Attributes and docs before a line go on its setter. For
/// the options types of flowrun's crates, so that each setter is written
/// once as what it stores.
#[doc(hidden)]
#[macro_export]
macro_rules! __setters {
    ($($(#[$meta:meta])* $vis:vis fn $name:ident($arg:ident: $ty:ty) => $($field:ident).+ = $value:expr;)*) => {$(
        $(#[$meta])*
        $vis fn $name(mut self, $arg: $ty) -> Self {
            self.$($field).+ = $value;
            self
        }
    )*};
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

    /// Records each event's level, target and fields.
    struct Capture(std::sync::Arc<Mutex<Vec<(Level, String, EventFields)>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let meta = event.metadata();
            lock(&self.0).push((
                *meta.level(),
                meta.target().to_owned(),
                EventFields::of(event),
            ));
        }
    }

    #[test]
    fn run_event_names_the_run_at_the_level_chosen_at_run_time() {
        use tracing_subscriber::prelude::*;
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for level in [Level::WARN, Level::DEBUG] {
                crate::run_event!(level, "Task run 'a-0'", "attempt {} of {}", 1, 2);
            }
            crate::run_event!(target: "elsewhere", Level::ERROR, String::from("Flow run 'b'"), "x");
            tracing::info!(other = 3, "no run");
        });
        let seen = lock(&seen);
        let fields = |i: usize| &seen[i].2;
        assert_eq!(
            (seen[0].0, seen[1].0, seen[2].0),
            (Level::WARN, Level::DEBUG, Level::ERROR)
        );
        assert_eq!(seen[0].1, module_path!());
        assert_eq!(seen[2].1, "elsewhere");
        assert_eq!(fields(0).run.as_deref(), Some("Task run 'a-0'"));
        assert_eq!(fields(0).message, "attempt 1 of 2");
        assert_eq!(fields(2).run.as_deref(), Some("Flow run 'b'"));
        assert_eq!(
            (fields(3).run.as_deref(), fields(3).rest.as_str()),
            (None, " other=3")
        );
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

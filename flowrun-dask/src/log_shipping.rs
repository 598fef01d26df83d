//! Log shipping: a process that runs tasks for a flow in another process
//! (a local cluster's worker, a task run in task mode on a real Dask
//! worker) sends its `tracing` events to the flow's process, filtered by
//! `FLOWRUN_LOG` as on the console. One subscriber does the filtering and
//! reads each event; each side supplies how a read event travels.
//!
//! (Work a worker submits to the flow is "forwarded", `local/forward.rs`;
//! logs are "shipped", here.)

use flowrun_core::plumbing::{level_code, EventFields};
use tracing::level_filters::LevelFilter;

/// Sends one event on: its level as a [`level_code`] and its fields.
pub(crate) trait Ship: Send + Sync + 'static {
    /// Sends the event with `level` and `fields`.
    fn ship(&self, level: u8, fields: EventFields);
}

impl<F: Fn(u8, EventFields) + Send + Sync + 'static> Ship for F {
    fn ship(&self, level: u8, fields: EventFields) {
        self(level, fields)
    }
}

/// A subscriber (for a plain level) or a layer (under an `EnvFilter`) that
/// hands every event it sees to its [`Ship`].
struct LogShipper<S> {
    ship: S,
    /// The most verbose level passed on; `TRACE` under an `EnvFilter`,
    /// which filters the whole subscriber.
    level: LevelFilter,
}

impl<S: Ship> LogShipper<S> {
    fn on(&self, event: &tracing::Event<'_>) {
        self.ship.ship(
            level_code(*event.metadata().level()),
            EventFields::of(event),
        );
    }
}

/// The subscriber that ships this process's events through `ship`, or
/// `None` when `FLOWRUN_LOG` turns logs off. A bad `FLOWRUN_LOG` ships
/// `info` and above, as the console does.
pub(crate) fn log_shipping(ship: impl Ship) -> Option<tracing::Dispatch> {
    use tracing_subscriber::prelude::*;
    let directives =
        std::env::var(flowrun_core::logging::LOG_ENV).unwrap_or_else(|_| "info".into());
    // A plain level needs no span registry: a small subscriber will do,
    // and a task process starts faster without one.
    if let Ok(level) = directives.trim().parse::<LevelFilter>() {
        return (level != LevelFilter::OFF)
            .then(|| tracing::Dispatch::new(LogShipper { ship, level }));
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The filter filters the whole subscriber, not one layer: a per-layer
    // filter's verdict can go stale (see flowrun_core::logging).
    Some(tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(filter)
            .with(LogShipper {
                ship,
                level: LevelFilter::TRACE,
            }),
    ))
}

impl<S: Ship> tracing::Subscriber for LogShipper<S> {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        self.level >= *metadata.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.level)
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        self.on(event);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

impl<S: Ship, C: tracing::Subscriber> tracing_subscriber::Layer<C> for LogShipper<S> {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, C>,
    ) {
        self.on(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Shipped = Arc<Mutex<Vec<(u8, EventFields)>>>;

    fn shipper(level: LevelFilter) -> (tracing::Dispatch, Shipped) {
        let shipped = Shipped::default();
        let to = shipped.clone();
        let ship = move |level, fields| to.lock().unwrap().push((level, fields));
        (tracing::Dispatch::new(LogShipper { ship, level }), shipped)
    }

    #[test]
    fn events_ship_with_their_level_code_message_run_and_other_fields() {
        let (dispatch, shipped) = shipper(LevelFilter::INFO);
        tracing::dispatcher::with_default(&dispatch, || {
            flowrun_core::run_event!(tracing::Level::WARN, "Task run 'a-0'", "careful");
            tracing::info!(rows = 3, "loaded");
            tracing::debug!("not shipped at info");
        });
        let shipped = shipped.lock().unwrap();
        assert_eq!(shipped.len(), 2, "{shipped:?}");
        assert_eq!(shipped[0].0, level_code(tracing::Level::WARN));
        assert_eq!(shipped[0].1.message, "careful");
        assert_eq!(shipped[0].1.run.as_deref(), Some("Task run 'a-0'"));
        assert_eq!(shipped[1].0, level_code(tracing::Level::INFO));
        assert_eq!(shipped[1].1.message, "loaded");
        assert_eq!(shipped[1].1.rest, " rows=3");
        assert_eq!(shipped[1].1.run, None);
    }
}

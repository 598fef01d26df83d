//! Watching a flow run: every change of a task run's state, as it happens,
//! for progress displays and dashboards.
//!
//! ```
//! use std::sync::Arc;
//! use flowrun_core::observe::{RunEvent, RunObserver};
//!
//! struct Printer;
//! impl RunObserver for Printer {
//!     fn run_changed(&self, event: &RunEvent) {
//!         println!("{} is {}", event.run.name(), event.state);
//!     }
//! }
//! // In a runner's `start`: `flow.flow.add_observer(Arc::new(Printer));`
//! # let _ = Arc::new(Printer);
//! ```

use std::sync::Arc;

use crate::run::record::RunRef;
use crate::run::state::State;
use crate::runner::FlowRunInfo;

/// A task run entered a new state.
#[derive(Debug, Clone)]
pub struct RunEvent {
    /// The task run.
    pub run: RunRef,
    /// Its new state.
    pub state: State,
    /// Its attempts so far as of this state (0 before the first started),
    /// as [`RunRef::attempts`] says, read with the state.
    pub attempts: u32,
    /// Where it runs or ran as of this state, once the runner said (as
    /// [`RunRef::location`] says), read with the state.
    pub location: Option<Arc<str>>,
}

/// Watches the task runs of a flow run. Called on the thread that changed
/// the state: keep it quick and never block.
pub trait RunObserver: Send + Sync + 'static {
    /// A task run was created or changed state.
    fn run_changed(&self, event: &RunEvent);

    /// The flow run ended in `state`.
    fn flow_finished(&self, state: &State) {
        let _ = state;
    }

    /// A task run was submitted and waits for `upstreams` (its inputs'
    /// runs and its `wait_for` runs) before it starts.
    fn run_submitted(&self, run: &RunRef, upstreams: &[RunRef]) {
        let _ = (run, upstreams);
    }
}

/// Builds an observer for each flow run (for example a progress display).
pub type ObserverFactory = fn(&FlowRunInfo) -> Option<Arc<dyn RunObserver>>;

/// Observers every flow run gets, registered at link time.
#[derive(Debug)]
pub struct ObserverRegistration {
    /// Builds the observer for a flow run, or `None` to skip it.
    pub factory: ObserverFactory,
}

inventory::collect!(ObserverRegistration);

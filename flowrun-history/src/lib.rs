//! The run history of flowrun: every flow run, task run, state change and
//! log line, kept in an SQLite database under `FLOWRUN_HOME` (default
//! `~/.flowrun`), as Prefect keeps them in its database.
//!
//! Recording is on by default: linking this crate (the `flowrun` facade
//! does, with its default `history` feature) registers an observer that
//! every flow run gets. `FLOWRUN_HISTORY=off` or [`set_recording`] turns it
//! off. A home that cannot be used (unwritable, a corrupt file, a database
//! from a newer flowrun) costs one warning saying why, and flows run on
//! unrecorded.
//!
//! ```
//! use flowrun_history::{temp_home, Store};
//!
//! let home = temp_home(); // flows started on this thread record here
//! // ... run flows, then read what they recorded:
//! home.flush();
//! let store = Store::create(home.path()).unwrap();
//! for run in store.runs(&Default::default()).unwrap() {
//!     println!("{} {} {}", run.name, run.flow, run.state);
//! }
//! ```
//!
//! The flow's threads only push events into their flow run's buffer (no
//! allocation per state change); one writer thread per process and home
//! takes them every 100 ms and commits them in batches, and while flows
//! send events fast it commits when they pause or end (see `writer.rs`). Worker
//! processes never open the database: their events reach the flow process,
//! which records them.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod query;
mod recorder;
mod schema;
mod writer;

pub use query::{
    Cleared, FlowRunRow, LogQuery, LogRow, Pruned, RunDetail, RunsQuery, StateRow, Store,
    TaskRunRow, TaskRunsByState, TaskSummary,
};
pub use schema::{database_path, DATABASE_FILE, SCHEMA_VERSION};

/// The environment variable naming the home (default `~/.flowrun`).
pub const HOME_ENV: &str = "FLOWRUN_HOME";

/// The environment variable that turns recording off (`off`, `0`, `false`).
pub const HISTORY_ENV: &str = "FLOWRUN_HISTORY";

/// Why a home cannot hold the run history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The home folder cannot be created or written.
    #[error("the home {path} cannot be used: {source}")]
    Home {
        /// The home.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// SQLite refused the database (corrupt, not a database, unwritable).
    #[error("the database {path} cannot be used: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The database was written by a newer flowrun.
    #[error(
        "the database {path} has schema version {found}{}, but this flowrun ({}) reads schema version {supported} at most; use a newer flowrun or another FLOWRUN_HOME",
        written_by.as_ref().map(|v| format!(" (written by flowrun {v})")).unwrap_or_default(),
        env!("CARGO_PKG_VERSION")
    )]
    Newer {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
        /// The flowrun version that last migrated it, if recorded.
        written_by: Option<String>,
    },
    /// The database is usable by SQLite but not as a run history.
    #[error("the database {path} cannot be used: {why}")]
    Unsupported {
        /// The database file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A run named on the command line is not in the history.
    #[error("no flow run matches '{0}' (give an id, an id prefix or a flow-run name)")]
    UnknownRun(String),
    /// A name matches several flow runs.
    #[error("'{0}' matches {1} flow runs; give more of the id")]
    Ambiguous(String, usize),
}

/// The home `FLOWRUN_HOME` names, else `~/.flowrun`; `None` when neither
/// that nor `HOME` is set.
pub fn default_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os(HOME_ENV).filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".flowrun"))
}

fn env_says_off() -> bool {
    std::env::var(HISTORY_ENV).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "false" | "no"
        )
    })
}

/// Turns recording on or off for flow runs that start from now on, in this
/// process (`FLOWRUN_HISTORY=off` wins over `true`).
pub fn set_recording(on: bool) {
    recorder::set_disabled(!on);
}

/// Whether a flow run starting now would be recorded.
pub fn recording() -> bool {
    recorder::enabled()
}

/// Waits until everything recorded into `home` by this process so far is
/// committed. Records are committed in the background while flows run, and
/// flushed when the process exits normally; call this to read them sooner.
pub fn flush(home: &Path) {
    recorder::flush(home);
}

/// Flow runs started on this thread (and their subflows) record into a
/// given home, and keep the results of tasks that name no
/// `result_storage` under its `storage/`, until the guard is dropped.
#[derive(Debug)]
#[must_use = "the home applies only while the guard lives; `let _home = use_home(dir);`"]
pub struct HomeGuard {
    previous: Option<PathBuf>,
}

/// Makes flow runs started on this thread record into `home` and keep
/// their results under `home/storage` (for tests and tools; programs set
/// `FLOWRUN_HOME`).
pub fn use_home(home: impl Into<PathBuf>) -> HomeGuard {
    HomeGuard {
        previous: flowrun_core::home::set_thread_home(Some(home.into())),
    }
}

impl Drop for HomeGuard {
    fn drop(&mut self) {
        flowrun_core::home::set_thread_home(self.previous.take());
    }
}

/// A temporary home for tests: flow runs started on the thread that made it
/// (and their subflows) record into it, and keep the results of tasks that
/// name no `result_storage` under its `storage/`, until it is dropped,
/// which deletes it.
#[derive(Debug)]
#[must_use = "dropping the temporary home deletes it at once; `let home = temp_home();`"]
pub struct TempHome {
    // Dropped first: the thread stops using the folder before it goes.
    _guard: HomeGuard,
    path: PathBuf,
    /// `None` in a cluster's worker process (see [`temp_home`]).
    _dir: Option<tempfile::TempDir>,
}

/// A fresh temporary home for flow runs started on this thread.
///
/// In a local cluster's worker process, which runs the program's code up
/// to the flow call too but never records and never returns to drop it,
/// no folder is made (there would be one left behind per worker).
///
/// # Panics
/// When no temporary folder can be created.
pub fn temp_home() -> TempHome {
    if flowrun_core::worker::is_worker() {
        let path = std::env::temp_dir().join(format!("flowrun-home-worker-{}", std::process::id()));
        return TempHome {
            _guard: use_home(&path),
            path,
            _dir: None,
        };
    }
    let dir = tempfile::Builder::new()
        .prefix("flowrun-home-")
        .tempdir()
        .expect("cannot create a temporary folder for a flowrun home");
    TempHome {
        _guard: use_home(dir.path()),
        path: dir.path().to_owned(),
        _dir: Some(dir),
    }
}

impl TempHome {
    /// The home folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until this process's records in this home are committed.
    pub fn flush(&self) {
        flush(self.path());
    }
}

/// Warns once per home and process that history is off there, and why.
pub(crate) fn warn_off(home: &Path, why: &str) {
    static WARNED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut warned = flowrun_core::plumbing::lock(&WARNED);
    if warned.iter().any(|h| h == home) {
        return;
    }
    warned.push(home.to_owned());
    tracing::warn!(
        target: "flowrun_history",
        "Run history is off for this process: {why}. Flows run unrecorded; set {HOME_ENV} to another folder or {HISTORY_ENV}=off to silence this"
    );
}

//! flowrun: Prefect-style flows and tasks for Rust, with a Dask-style
//! distributed task runner.
//!
//! Annotate functions with [`task`] and [`flow`]; calling the flow runs it,
//! and tasks called, submitted or mapped inside it become tracked task runs
//! with states, retries, timeouts and logs.
//!
//! ```
//! use flowrun::{flow, task};
//!
//! #[task]
//! fn double(x: u64) -> u64 {
//!     x * 2
//! }
//!
//! #[task]
//! fn total(values: Vec<u64>) -> u64 {
//!     values.iter().sum()
//! }
//!
//! #[flow]
//! fn pipeline(n: u64) -> u64 {
//!     let doubled = double.map(0..n).expect("one mapped argument");
//!     let values = flowrun::results(doubled).expect("doubling cannot fail");
//!     total(values)
//! }
//!
//! assert_eq!(pipeline(4).unwrap(), 12);
//! ```
#![deny(missing_docs)]

pub use flowrun_core::*;
pub use flowrun_macros::{flow, task};

/// The Dask-style task runner (`DaskTaskRunner`), its local cluster and
/// its client of real Dask clusters.
#[cfg(feature = "dask")]
pub use flowrun_dask as dask;

/// The run history (`FLOWRUN_HOME`): flow runs, task runs, states and logs
/// recorded by default; `FLOWRUN_HISTORY=off` turns it off.
#[cfg(feature = "history")]
pub use flowrun_history as history;

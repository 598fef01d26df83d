//! Execution support under the engine: the elastic thread [`pool`] runners
//! execute attempts on, the [`timer`] thread for retry delays and timeouts,
//! the tokio [`runtime`] async bodies run on, the per-thread run
//! [`context`], and [`worker`] mode for processes started as workers.

pub(crate) mod context;
pub(crate) mod pool;
pub(crate) mod runtime;
pub(crate) mod timer;
pub mod worker;

//! The run model: a run's shared [`record`] (identity, state, result slot,
//! waiters), its [`state`]s, its [`hooks`], the [`future`]s that hand out its result, and
//! the [`error`]s it can end with.

pub(crate) mod allow;
pub(crate) mod error;
pub(crate) mod future;
pub(crate) mod hooks;
pub(crate) mod record;
pub(crate) mod state;
pub(crate) mod task_hooks;

//! The `#[task]` and `#[flow]` attribute macros of flowrun.
//!
//! Use them through the `flowrun` crate (`use flowrun::{flow, task};`): the
//! generated code refers to `::flowrun::__private`, so no other dependency
//! is needed. A crate that re-exports flowrun under another path can say so
//! with `#[task(crate = path)]`.

#![deny(missing_docs)]

mod flow;
mod options;
mod signature;
mod task;

use proc_macro::TokenStream;

/// Turns a function into a flowrun task.
///
/// Options: `name = "..."`, `description = "..."`, `retries = n`,
/// `retry_delay = seconds | [seconds, ...] | exponential(base, max = m)`,
/// `retry_jitter_factor = f`, `timeout = seconds`, `tags = ["..."]`.
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    task::task(args.into(), item.into()).into()
}

/// Turns a function into a flowrun flow.
///
/// Options: `name = "..."`, `description = "..."`,
/// `task_runner = <expr>` (a bare type path means its `Default`),
/// `retries = n`, `retry_delay = ...`, `timeout = seconds`.
#[proc_macro_attribute]
pub fn flow(args: TokenStream, item: TokenStream) -> TokenStream {
    flow::flow(args.into(), item.into()).into()
}

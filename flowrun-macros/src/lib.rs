//! The `#[task]` and `#[flow]` attribute macros of flowrun.
//!
//! Use them through the `flowrun` crate (`use flowrun::{flow, task};`),
//! whose documentation of `flowrun::task` and `flowrun::flow` shows every
//! call form with examples that compile. The generated code refers to
//! `::flowrun::__private`, so no other dependency is needed; a crate that
//! re-exports flowrun under another path says so with
//! `#[task(crate = path)]`.
//!
//! Each macro runs the same four steps (`entry.rs`): the options are parsed
//! into typed values (`options.rs`, `task/attr.rs`, `flow/attr.rs`), the
//! values and the function's signature are checked (`check.rs`,
//! `signature.rs`), and only then is code quoted (`expand.rs`,
//! `task/expand.rs`, `flow/expand.rs`). Every error goes to one collector
//! (`ctxt.rs`); a bad option falls back to its default so the item still
//! exists for IDEs and for the code that uses it.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod attr;
mod check;
mod ctxt;
mod entry;
mod expand;
mod flow;
mod names;
mod options;
mod prints;
mod signature;
mod task;

use proc_macro::TokenStream;

/// Turns a function into a flowrun task (see `flowrun::task` for examples).
///
/// Options: `name = "..."`, `description = "..."`, `retries = n`,
/// `retry_delay = seconds | [seconds, ...] | exponential(base, max = m)`,
/// `retry_jitter_factor = f`, `timeout = seconds`, `tags = ["..."]`,
/// `log_prints = bool`, `crate = path`.
///
/// The body's `print!`, `println!`, `eprint!` and `eprintln!` invocations
/// become `flowrun::prints::print_to_run` calls, which log the text as
/// lines of the current run (`log_prints = false` leaves them as written).
/// Invocations written with a path (`std::println!`) and prints in the
/// functions the body calls are not rewritten.
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::run(&task::TASK, args.into(), item.into()).into()
}

/// Turns a function into a flowrun flow (see `flowrun::flow` for examples).
///
/// Options: `name = "..."`, `description = "..."`,
/// `task_runner = <expr>` (a bare type path means its `Default`),
/// `retries = n`, `retry_delay = ...`, `timeout = seconds`, `crate = path`,
/// `log_prints = bool` (prints in the body are rewritten as in `#[task]`),
/// `concurrency_limits = [("tag", slots), ...]` (tag limits for the flow's
/// task runs, see `flowrun::concurrency`).
/// `tags = ["..."]` (kept in the run history with the flow's parameters),
/// `history = false` (the run history does not record this flow's runs, nor
/// their subflows that do not say otherwise; `FlowOptions::history` sets it
/// per call).
#[proc_macro_attribute]
pub fn flow(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::run(&flow::FLOW, args.into(), item.into()).into()
}

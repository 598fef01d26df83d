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

/// Turns a function into a flowrun task. Its options, call forms and
/// examples are documented on `flowrun::task`, the re-export users name.
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::run(&task::TASK, args.into(), item.into()).into()
}

/// Turns a function into a flowrun flow. Its options, call forms and
/// examples are documented on `flowrun::flow`, the re-export users name.
#[proc_macro_attribute]
pub fn flow(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::run(&flow::FLOW, args.into(), item.into()).into()
}

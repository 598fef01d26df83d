//! The options of `#[flow(...)]`, as typed values.

use proc_macro2::TokenStream;
use syn::{Expr, ExprPath};

use crate::attr::Common;
use crate::ctxt::Ctxt;
use crate::options;

pub(crate) const VALID: &[&str] = &[
    "name",
    "description",
    "task_runner",
    "retries",
    "retry_delay",
    "timeout",
    "on_completion",
    "on_failure",
    "on_crashed",
    "on_cancellation",
    "on_running",
    "flow_run_name",
    "crate",
    "persist_result",
    "result_storage",
    "result_storage_key",
];

/// `task_runner = ...`.
pub(crate) enum Runner {
    /// A bare type path (`DaskTaskRunner`) means its `Default`, as Python
    /// passes the class.
    Default(ExprPath),
    /// Any other expression, evaluated for each flow run.
    Expr(Expr),
}

#[derive(Default)]
pub(crate) struct FlowAttr {
    pub(crate) common: Common,
    pub(crate) task_runner: Option<Runner>,
    pub(crate) results: crate::task::results::ResultAttr,
}

pub(crate) fn parse(args: TokenStream, cx: &Ctxt) -> FlowAttr {
    let mut attr = FlowAttr::default();
    for (name, value) in options::accept(args, VALID, "flow", cx) {
        match name.as_str() {
            "task_runner" => attr.task_runner = runner(value, cx),
            _ if attr.results.read(&name, &value, cx) => {}
            _ => {
                let shared = attr.common.read(&name, &value, cx);
                debug_assert!(shared, "`accept` passes only the names in VALID");
            }
        }
    }
    attr
}

pub(crate) fn check(attr: &mut FlowAttr, cx: &Ctxt) {
    crate::check::common(&mut attr.common, cx);
}

fn runner(value: Expr, cx: &Ctxt) -> Option<Runner> {
    match value {
        Expr::Path(p) if p.qself.is_none() && looks_like_type(&p) => Some(Runner::Default(p)),
        Expr::Lit(_) => {
            cx.spanned(
                value,
                "`task_runner` must be a runner, such as `task_runner = DaskTaskRunner::default()` or `task_runner = ThreadPoolTaskRunner`",
            );
            None
        }
        other => Some(Runner::Expr(other)),
    }
}

/// `Upper`-camel-case last segment: a type, not a constant or a variable.
fn looks_like_type(p: &ExprPath) -> bool {
    let last = p
        .path
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .unwrap_or_default();
    last.chars().next().is_some_and(char::is_uppercase) && last.chars().any(char::is_lowercase)
}

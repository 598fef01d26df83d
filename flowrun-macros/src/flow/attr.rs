//! The options of `#[flow(...)]`, as typed values.

use proc_macro2::TokenStream;
use syn::{Expr, ExprPath, LitBool};

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
    "concurrency_limits",
    "log_prints",
    "crate",
    "tags",
    "history",
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
    /// `concurrency_limits = [("db", 3)]`: tag limits for the flow's runs.
    pub(crate) concurrency_limits: Vec<(syn::LitStr, syn::LitInt)>,
    /// `history = false`: its runs are not recorded.
    pub(crate) history: Option<LitBool>,
}

pub(crate) fn parse(args: TokenStream, cx: &Ctxt) -> FlowAttr {
    let mut attr = FlowAttr::default();
    attr.common
        .read_all(args, VALID, "flow", cx, |_, name, value| {
            match name {
                "task_runner" => attr.task_runner = runner(value, cx),
                "concurrency_limits" => attr.concurrency_limits = concurrency_limits(&value, cx),
                "history" => attr.history = options::boolean(&value, "history", cx),
                _ => return Some(value),
            }
            None
        });
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

/// `concurrency_limits = [("db", 3), ...]`: tag and slots, as literals so
/// that a limit of 0 (which would block every run of the tag) is refused
/// here.
fn concurrency_limits(value: &Expr, cx: &Ctxt) -> Vec<(syn::LitStr, syn::LitInt)> {
    const USAGE: &str =
        "`concurrency_limits` must be a list of (tag, slots) pairs of literals, such as \
         `concurrency_limits = [(\"db\", 3)]`";
    let Expr::Array(list) = value else {
        cx.at(syn::spanned::Spanned::span(value), USAGE);
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in &list.elems {
        let pair = match item {
            Expr::Tuple(t) if t.elems.len() == 2 => {
                let lit = |e: &Expr| match e {
                    Expr::Lit(l) => Some(l.lit.clone()),
                    _ => None,
                };
                match (lit(&t.elems[0]), lit(&t.elems[1])) {
                    (Some(syn::Lit::Str(tag)), Some(syn::Lit::Int(n))) => Some((tag, n)),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((tag, n)) = pair else {
            cx.at(syn::spanned::Spanned::span(item), USAGE);
            continue;
        };
        match n.base10_parse::<u32>() {
            Ok(0) => cx.at(
                n.span(),
                format!(
                    "the concurrency limit of tag '{}' is 0, which would block every run tagged \
                     '{}' forever; allow at least 1 slot or remove it",
                    tag.value(),
                    tag.value()
                ),
            ),
            Ok(_) => out.push((tag, n)),
            Err(e) => cx.at(n.span(), format!("a concurrency limit must be a u32: {e}")),
        }
    }
    out
}

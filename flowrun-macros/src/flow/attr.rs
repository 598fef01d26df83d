//! The options of `#[flow(...)]`.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::{Expr, LitStr};

use crate::options::{self, Errors, Items};

pub const VALID: &[&str] = &[
    "name",
    "description",
    "task_runner",
    "retries",
    "retry_delay",
    "timeout",
    "crate",
];

#[derive(Default)]
pub struct FlowAttr {
    pub krate: TokenStream,
    pub name: Option<LitStr>,
    pub description: Option<LitStr>,
    /// The expression that builds the runner for each flow run.
    pub task_runner: Option<TokenStream>,
    pub retries: Option<TokenStream>,
    pub retry_delay: Option<TokenStream>,
    pub timeout: Option<TokenStream>,
}

pub fn parse(args: TokenStream, errors: &Errors) -> FlowAttr {
    let items: Items = match syn::parse2(args) {
        Ok(items) => items,
        Err(e) => {
            errors.push(e);
            return FlowAttr::default();
        }
    };
    let accepted = options::accept(items, VALID, "flow", errors);
    let krate_expr = accepted.iter().find(|(n, _)| n == "crate").map(|(_, e)| e);
    let krate = options::krate(krate_expr, errors);
    let mut attr = FlowAttr {
        krate: krate.clone(),
        ..FlowAttr::default()
    };
    for (name, value) in &accepted {
        match name.to_string().as_str() {
            "name" => attr.name = options::string(value, "name", errors),
            "description" => attr.description = options::string(value, "description", errors),
            "task_runner" => attr.task_runner = Some(runner_expr(value, errors)),
            "retries" => attr.retries = Some(options::count(value, "retries", errors)),
            "retry_delay" => attr.retry_delay = Some(options::retry_delay(value, &krate, errors)),
            "timeout" => attr.timeout = Some(options::seconds(value, "timeout", false, errors)),
            _ => {}
        }
    }
    attr
}

/// `task_runner = Type` means `Type::default()` (as Python passes the
/// class); any other expression is evaluated for each flow run.
fn runner_expr(value: &Expr, errors: &Errors) -> TokenStream {
    match value {
        Expr::Path(p) if p.qself.is_none() => {
            let last = p
                .path
                .segments
                .last()
                .map(|s| s.ident.to_string())
                .unwrap_or_default();
            let looks_like_type = last.chars().next().is_some_and(char::is_uppercase)
                && last.chars().any(char::is_lowercase);
            if looks_like_type {
                quote!(<#p as ::core::default::Default>::default())
            } else {
                p.to_token_stream()
            }
        }
        Expr::Lit(_) => {
            errors.spanned(
                value,
                "`task_runner` must be a runner, such as `task_runner = DaskTaskRunner::default()` or `task_runner = ThreadPoolTaskRunner`",
            );
            quote!(())
        }
        other => other.to_token_stream(),
    }
}

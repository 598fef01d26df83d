//! The options of `#[task(...)]`, as typed values.

use proc_macro2::TokenStream;

use crate::attr::Common;
use crate::ctxt::Ctxt;
use crate::options::{self, Number};

pub(crate) const VALID: &[&str] = &[
    "name",
    "description",
    "retries",
    "retry_delay",
    "retry_jitter_factor",
    "timeout",
    "tags",
    "on_completion",
    "on_failure",
    "on_running",
    "retry_condition_fn",
    "task_run_name",
    "log_prints",
    "crate",
    "persist_result",
    "cache_policy",
    "cache_key_fn",
    "cache_expiration",
    "refresh_cache",
    "result_storage",
    "result_storage_key",
];

#[derive(Default)]
pub(crate) struct TaskAttr {
    pub(crate) common: Common,
    pub(crate) retry_jitter_factor: Option<Number<f64>>,
}

pub(crate) fn parse(args: TokenStream, cx: &Ctxt) -> TaskAttr {
    let mut attr = TaskAttr::default();
    attr.common
        .read_all(args, VALID, "task", cx, |common, name, value| {
            match name {
                "retry_jitter_factor" => attr.retry_jitter_factor = Some(options::seconds(&value)),
                "retry_condition_fn" => common.hooks.push((
                    syn::Ident::new("retry_condition_fn", proc_macro2::Span::call_site()),
                    vec![value],
                )),
                _ => return Some(value),
            }
            None
        });
    attr
}

pub(crate) fn check(attr: &mut TaskAttr, cx: &Ctxt) {
    crate::check::common(&mut attr.common, cx);
    crate::check::factor(&mut attr.retry_jitter_factor, "retry_jitter_factor", cx);
}

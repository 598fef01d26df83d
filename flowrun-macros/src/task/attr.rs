//! The options of `#[task(...)]`.

use proc_macro2::TokenStream;
use syn::LitStr;

use crate::options::{self, Errors, Items};

pub const VALID: &[&str] = &[
    "name",
    "description",
    "retries",
    "retry_delay",
    "retry_jitter_factor",
    "timeout",
    "tags",
    "crate",
];

#[derive(Default)]
pub struct TaskAttr {
    pub krate: TokenStream,
    pub name: Option<LitStr>,
    pub description: Option<LitStr>,
    pub retries: Option<TokenStream>,
    pub retry_delay: Option<TokenStream>,
    pub retry_jitter_factor: Option<TokenStream>,
    pub timeout: Option<TokenStream>,
    pub tags: Vec<LitStr>,
}

pub fn parse(args: TokenStream, errors: &Errors) -> TaskAttr {
    let items: Items = match syn::parse2(args) {
        Ok(items) => items,
        Err(e) => {
            errors.push(e);
            return TaskAttr::default();
        }
    };
    let accepted = options::accept(items, VALID, "task", errors);
    let krate_expr = accepted.iter().find(|(n, _)| n == "crate").map(|(_, e)| e);
    let krate = options::krate(krate_expr, errors);
    let mut attr = TaskAttr {
        krate: krate.clone(),
        ..TaskAttr::default()
    };
    for (name, value) in &accepted {
        match name.to_string().as_str() {
            "name" => attr.name = options::string(value, "name", errors),
            "description" => attr.description = options::string(value, "description", errors),
            "retries" => attr.retries = Some(options::count(value, "retries", errors)),
            "retry_delay" => attr.retry_delay = Some(options::retry_delay(value, &krate, errors)),
            "retry_jitter_factor" => {
                attr.retry_jitter_factor =
                    Some(options::factor(value, "retry_jitter_factor", errors))
            }
            "timeout" => attr.timeout = Some(options::seconds(value, "timeout", false, errors)),
            "tags" => attr.tags = options::tags(value, errors),
            _ => {}
        }
    }
    attr
}

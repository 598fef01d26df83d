//! The result and cache options of `#[task(...)]`: `persist_result`,
//! `cache_policy`, `cache_key_fn`, `cache_expiration`, `refresh_cache`,
//! `result_storage`, `result_storage_key`, checked where they can be at
//! compile time, and the hash of the task's source (`TASK_SOURCE`).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{BinOp, Expr, ItemFn, LitStr};

use flowrun_template::KeyPiece;

use crate::ctxt::Ctxt;
use crate::options::{self, Seconds};
use crate::signature::Signature;

/// Prefect's policy names, as `cache_policy = INPUTS + TASK_SOURCE` takes them.
const POLICIES: &[&str] = &[
    "INPUTS",
    "TASK_SOURCE",
    "FLOW_PARAMETERS",
    "RUN_ID",
    "NONE",
    "DEFAULT",
];

#[derive(Default)]
pub(crate) struct ResultAttr {
    persist: Option<Expr>,
    policy: Option<Policy>,
    key_fn: Option<Expr>,
    expiration: Option<Seconds>,
    refresh: Option<Expr>,
    storage: Option<Expr>,
    key: Option<LitStr>,
}

impl ResultAttr {
    /// Reads option `name`; false if it is not a result option.
    pub(crate) fn read(&mut self, name: &str, value: &Expr, cx: &Ctxt) -> bool {
        match name {
            "persist_result" => self.persist = Some(value.clone()),
            "refresh_cache" => self.refresh = Some(value.clone()),
            "cache_policy" => self.policy = policy(value, cx),
            "cache_key_fn" => self.key_fn = Some(value.clone()),
            "cache_expiration" => self.expiration = Some(options::seconds(value)),
            "result_storage" => self.storage = Some(value.clone()),
            "result_storage_key" => {
                self.key = options::string(value, name, cx).filter(|s| template_ok(s, cx))
            }
            _ => return false,
        }
        true
    }

    /// The `result_storage_key` template as written, if any.
    pub(crate) fn key(&self) -> Option<&LitStr> {
        self.key.as_ref()
    }

    /// The parameters `{parameters[NAME]}` placeholders of the
    /// `result_storage_key` name.
    pub(crate) fn key_parameters(&self) -> Vec<String> {
        let Some(key) = &self.key else {
            return Vec::new();
        };
        flowrun_template::key_pieces(&key.value())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| match p {
                KeyPiece::Parameter(name) => Some(name.into()),
                _ => None,
            })
            .collect()
    }

    /// Checks each `{parameters[NAME]}` of the `result_storage_key`
    /// against the function's parameters (a flow's key has none: Prefect
    /// names task runs' results by their parameters only).
    pub(crate) fn check_parameters(&self, sig: &Signature, macro_name: &str, cx: &Ctxt) {
        let Some(key) = &self.key else { return };
        let params: Vec<String> = sig.args.iter().map(|a| a.plain_name()).collect();
        for name in self.key_parameters() {
            if macro_name != "task" {
                cx.spanned(
                    key,
                    format!(
                        "`result_storage_key`: {{parameters[{name}]}} names a task's argument; a flow's result file cannot use it"
                    ),
                );
            } else if !params.contains(&name) {
                let valid = if params.is_empty() {
                    "the function has no parameters".to_owned()
                } else {
                    let list: Vec<String> = params.iter().map(|p| format!("`{p}`")).collect();
                    format!("the parameters are: {}", list.join(", "))
                };
                cx.spanned(
                    key,
                    format!(
                        "`result_storage_key` uses {{parameters[{name}]}}, but `{name}` is not a parameter; {valid}"
                    ),
                );
            }
        }
    }

    /// The builder calls for these options of a task.
    pub(crate) fn builder(&self, fr: &TokenStream) -> TokenStream {
        self.builder_of(fr, quote!(#fr::TaskOptions))
    }

    /// The builder calls for these options, set on `options` (a
    /// `TaskOptions` or, for a flow, `FlowOptions`, which has no cache
    /// options: `#[flow]` accepts none).
    pub(crate) fn builder_of(&self, fr: &TokenStream, options: TokenStream) -> TokenStream {
        let mut options = quote!(#options::new());
        let mut any = false;
        let mut add = |call: TokenStream| {
            options.extend(call);
            any = true;
        };
        if let Some(p) = &self.persist {
            add(quote_spanned!(p.span()=> .persist_result(#p)));
        }
        if let Some(p) = &self.policy {
            let p = p.tokens(fr);
            add(quote!(.cache_policy(#p)));
        }
        if let Some(f) = &self.key_fn {
            add(quote_spanned!(f.span()=> .cache_key_fn(#f)));
        }
        if let Some(r) = &self.refresh {
            add(quote_spanned!(r.span()=> .refresh_cache(#r)));
        }
        if let Some(s) = &self.storage {
            add(quote_spanned!(s.span()=> .result_storage(#s)));
        }
        if let Some(k) = &self.key {
            add(quote!(.result_storage_key(#k)));
        }
        let mut out = if any {
            quote!(.results(#options))
        } else {
            TokenStream::new()
        };
        if let Some(e) = &self.expiration {
            let e = crate::expand::seconds(e);
            out.extend(quote!(.cache_expiration(#e)));
        }
        out
    }
}

/// A `cache_policy` value: Prefect's names combined with `+`, or any other
/// expression of type `CachePolicy`.
enum Policy {
    Named(syn::Ident),
    Add(Box<Policy>, Box<Policy>),
    Other(Expr),
}

impl Policy {
    fn tokens(&self, fr: &TokenStream) -> TokenStream {
        match self {
            Policy::Named(i) => quote_spanned!(i.span()=> #fr::CachePolicy::#i),
            Policy::Add(l, r) => {
                let (l, r) = (l.tokens(fr), r.tokens(fr));
                quote!(#l + #r)
            }
            Policy::Other(e) => e.to_token_stream(),
        }
    }
}

/// `INPUTS + TASK_SOURCE`: an unknown bare name is a compile error.
fn policy(expr: &Expr, cx: &Ctxt) -> Option<Policy> {
    match expr {
        Expr::Binary(b) if matches!(b.op, BinOp::Add(_)) => Some(Policy::Add(
            Box::new(policy(&b.left, cx)?),
            Box::new(policy(&b.right, cx)?),
        )),
        Expr::Paren(p) => policy(&p.expr, cx),
        Expr::Group(g) => policy(&g.expr, cx),
        Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
            let ident = p.path.get_ident()?;
            let name = ident.to_string();
            if POLICIES.contains(&name.as_str()) {
                Some(Policy::Named(ident.clone()))
            } else {
                cx.spanned(
                    ident,
                    format!(
                        "unknown cache policy `{name}`; expected {} (combined with `+`), or a `CachePolicy` value",
                        POLICIES.join(", ")
                    ),
                );
                None
            }
        }
        other => Some(Policy::Other(other.clone())),
    }
}

/// Checks a `result_storage_key` template's placeholders (with the
/// grammar flowrun-core renders it by).
fn template_ok(lit: &LitStr, cx: &Ctxt) -> bool {
    match flowrun_template::key_pieces(&lit.value()) {
        Ok(_) => true,
        Err(e) => {
            cx.spanned(lit, format!("`result_storage_key`: {e}"));
            false
        }
    }
}

/// The hash of the task's signature and body tokens, in hex: the
/// `TASK_SOURCE` part of its cache keys, fixed at compile time.
pub(crate) fn source_hash(function: &ItemFn) -> String {
    let sig = &function.sig;
    let block = &function.block;
    let tokens = quote!(#sig #block).to_string();
    blake3::hash(tokens.as_bytes()).to_hex().to_string()
}

//! `task_run_name` and `flow_run_name`: a template such as
//! `"shout-{number}"`, whose placeholders are checked against the
//! function's parameter names, or a function that returns the name.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{Expr, ExprLit, Lit, LitStr};

use crate::ctxt::Ctxt;
use crate::signature::Signature;

/// A run-name option as written.
pub(crate) enum RunName {
    /// A string literal with `{parameter}` placeholders.
    Template(LitStr),
    /// Any other expression: a function called with no arguments.
    Function(Expr),
}

/// Reads `task_run_name = ...` / `flow_run_name = ...`.
pub(crate) fn parse(value: Expr) -> RunName {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => RunName::Template(s),
        other => RunName::Function(other),
    }
}

/// The parameter names of a run-name template, in order (a placeholder
/// may add a format spec: `{n:>3}`), or why it is malformed.
fn parameters_of(template: &str) -> Result<Vec<String>, String> {
    Ok(flowrun_template::placeholders(template)?
        .into_iter()
        .map(|p| p.split(':').next().unwrap_or("").trim().to_owned())
        .collect())
}

/// Checks every placeholder of a template against the parameters.
pub(crate) fn check(name: &RunName, option: &str, sig: &Signature, cx: &Ctxt) {
    let RunName::Template(template) = name else {
        return;
    };
    let params: Vec<String> = sig.args.iter().map(|a| a.name.to_string()).collect();
    let valid = if params.is_empty() {
        "the function has no parameters".to_owned()
    } else {
        let list: Vec<String> = params.iter().map(|p| format!("`{p}`")).collect();
        format!("the parameters are: {}", list.join(", "))
    };
    match parameters_of(&template.value()) {
        Err(e) => cx.spanned(template, format!("`{option}`: {e}")),
        Ok(found) => {
            for p in found {
                if p.is_empty() || p.chars().all(|c| c.is_ascii_digit()) {
                    cx.spanned(
                        template,
                        format!("`{option}` names parameters, such as `{{name}}`; {valid}"),
                    );
                } else if !params.contains(&p) {
                    cx.spanned(
                        template,
                        format!("`{option}` uses `{{{p}}}`, which is not a parameter; {valid}"),
                    );
                }
            }
        }
    }
}

/// The parameters a template names, or `None` when `check` rejects it.
fn used(template: &LitStr, sig: &Signature) -> Option<Vec<String>> {
    let params: Vec<String> = sig.args.iter().map(|a| a.name.to_string()).collect();
    parameters_of(&template.value())
        .ok()
        .filter(|used| used.iter().all(|p| params.contains(p)))
}

/// The `Display` check of the parameters a template names (the error
/// points at the parameter's type, with a note at the template), and the
/// `where` predicates with which the generated impls assume it: a
/// parameter that is not `Display` then gives this one error, not one per
/// `format!` of the template. Nothing for a function or a rejected template.
pub(crate) fn display_checks(name: &RunName, sig: &Signature) -> (TokenStream, Vec<TokenStream>) {
    let RunName::Template(template) = name else {
        return (TokenStream::new(), Vec::new());
    };
    let Some(used) = used(template, sig) else {
        return (TokenStream::new(), Vec::new());
    };
    let tys: Vec<_> = sig
        .args
        .iter()
        .filter(|a| used.contains(&a.name.to_string()))
        .map(|a| &a.ty)
        .collect();
    let check = quote_spanned! {template.span()=>
        #[allow(dead_code)]
        fn __flowrun_run_name_parameters_are_display() {
            fn __flowrun_display<T: ::core::fmt::Display + ?::core::marker::Sized>() {}
            #(__flowrun_display::<#tys>();)*
        }
    };
    let bounds = tys
        .iter()
        .map(|ty| quote!(for<'__flowrun> #ty: ::core::fmt::Display))
        .collect();
    (check, bounds)
}

/// `Some(name)`: a `format!` of the template with each placeholder's
/// parameter as `value(index)`, or the function's result.
pub(crate) fn expand(
    name: &RunName,
    sig: &Signature,
    value: impl Fn(syn::Index) -> TokenStream,
) -> TokenStream {
    match name {
        RunName::Function(f) => {
            quote_spanned!(syn::spanned::Spanned::span(f)=> ::core::option::Option::Some(::std::string::ToString::to_string(&(#f)())))
        }
        RunName::Template(template) => {
            // A template `check` rejected expands to no name, so that its
            // error is the only one.
            let Some(used) = used(template, sig) else {
                return quote!(::core::option::Option::None);
            };
            let named = sig
                .args
                .iter()
                .enumerate()
                .filter(|(_, a)| used.contains(&a.name.to_string()))
                .map(|(i, a)| {
                    let ident = &a.name;
                    let v = value(syn::Index::from(i));
                    quote_spanned!(template.span()=> #ident = #v)
                });
            quote!(::core::option::Option::Some(
                ::std::format!(#template, #(#named),*)
            ))
        }
    }
}

//! The one driver of both macros: parse → model → check → expand.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use crate::attr::Common;
use crate::ctxt::Ctxt;
use crate::signature::{self, Signature};

/// What differs between `#[task]` and `#[flow]`: each module describes
/// its macro with one of these.
pub(crate) struct Kind<A> {
    /// `task` or `flow`, as the user writes it.
    pub(crate) name: &'static str,
    /// The option that holds a run-name template: `task_run_name` or
    /// `flow_run_name`.
    pub(crate) run_name_option: &'static str,
    /// Reads the options; shape errors go to `cx`, the bad option is left
    /// at its default.
    pub(crate) parse: fn(TokenStream, &Ctxt) -> A,
    /// Range checks; each bad value is reported and reset to its default.
    pub(crate) check: fn(&mut A, &Ctxt),
    /// The options both macros have.
    pub(crate) common: fn(&A) -> &Common,
    /// The generated code.
    pub(crate) expand: fn(&A, &Signature, &ItemFn) -> TokenStream,
}

/// The [`Kind`] of the macro `#[$name]` whose module has the same layout as
/// `flow` and `task`: `attr::parse` and `attr::check` read its options into
/// an attribute with a `common` field, `expand::expand` writes its code, and
/// its run-name option is `<name>_run_name`. Only the name differs.
macro_rules! kind {
    ($name:literal) => {
        $crate::entry::Kind {
            name: $name,
            run_name_option: concat!($name, "_run_name"),
            parse: attr::parse,
            check: attr::check,
            common: |attr| &attr.common,
            expand: expand::expand,
        }
    };
}
pub(crate) use kind;

pub(crate) fn run<A>(kind: &Kind<A>, args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let e = syn::Error::new_spanned(
                &item,
                format!(
                    "#[{0}] applies to a function: `#[{0}] fn name(...) {{ ... }}`",
                    kind.name
                ),
            )
            .to_compile_error();
            return quote!(#item #e);
        }
    };
    let cx = Ctxt::new();
    let mut attr = (kind.parse)(args, &cx);
    (kind.check)(&mut attr, &cx);
    let before = cx.error_count();
    signature::check(&function, kind.name, &cx);
    // Bad options fall back to their defaults, so the item still exists for
    // IDEs and for the code that uses it; a bad signature cannot be
    // expanded, so the function is left as written.
    let expanded = if cx.error_count() == before {
        let sig = signature::model(&function);
        // Run-name templates name parameters.
        if let Some(name) = &(kind.common)(&attr).run_name {
            crate::names::check(name, kind.run_name_option, &sig, &cx);
        }
        // `{parameters[name]}` in a result_storage_key names parameters.
        (kind.common)(&attr)
            .results
            .check_parameters(&sig, kind.name, &cx);
        (kind.expand)(&attr, &sig, &function)
    } else {
        quote!(#function)
    };
    match cx.check() {
        Ok(()) => expanded,
        Err(e) => {
            let e = e.to_compile_error();
            quote!(#expanded #e)
        }
    }
}

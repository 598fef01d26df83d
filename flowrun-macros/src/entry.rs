//! The one driver of both macros: parse → model → check → expand.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

use crate::ctxt::Ctxt;
use crate::signature::{self, Signature};

/// What differs between `#[task]` and `#[flow]`.
pub(crate) trait Kind {
    /// `task` or `flow`, as the user writes it.
    const NAME: &'static str;
    /// The typed options.
    type Attr;
    /// Reads the options; shape errors go to `cx`, the bad option is left
    /// at its default.
    fn parse(args: TokenStream, cx: &Ctxt) -> Self::Attr;
    /// Range checks; each bad value is reported and reset to its default.
    fn check(attr: &mut Self::Attr, cx: &Ctxt);
    /// Checks of options against the function's signature (run-name
    /// templates name parameters).
    fn check_signature(attr: &Self::Attr, sig: &Signature, cx: &Ctxt);
    /// The generated code.
    fn expand(attr: &Self::Attr, sig: &Signature, function: &ItemFn) -> TokenStream;
}

pub(crate) fn run<K: Kind>(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let e = syn::Error::new_spanned(
                &item,
                format!(
                    "#[{0}] applies to a function: `#[{0}] fn name(...) {{ ... }}`",
                    K::NAME
                ),
            )
            .to_compile_error();
            return quote!(#item #e);
        }
    };
    let cx = Ctxt::new();
    let mut attr = K::parse(args, &cx);
    K::check(&mut attr, &cx);
    let before = cx.error_count();
    signature::check(&function, K::NAME, &cx);
    // Bad options fall back to their defaults, so the item still exists for
    // IDEs and for the code that uses it; a bad signature cannot be
    // expanded, so the function is left as written.
    let expanded = if cx.error_count() == before {
        let sig = signature::model(&function);
        K::check_signature(&attr, &sig, &cx);
        K::expand(&attr, &sig, &function)
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

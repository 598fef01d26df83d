//! `#[flow]`: options in `attr`, runner checks in `gates`, code in `expand`.

mod attr;
mod expand;
mod gates;

use proc_macro2::TokenStream;
use quote::quote;

use crate::options::Errors;

pub fn flow(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let e = syn::Error::new_spanned(
                &item,
                "#[flow] applies to a function: `#[flow] fn name(...) { ... }`",
            )
            .to_compile_error();
            return quote!(#item #e);
        }
    };
    let errors = Errors::default();
    let attr = attr::parse(args, &errors);
    let sig = crate::signature::analyze(&function, "flow", &errors);
    match errors.finish() {
        Some(e) => {
            let e = e.to_compile_error();
            quote!(#function #e)
        }
        None => expand::expand(&attr, &sig, &function),
    }
}

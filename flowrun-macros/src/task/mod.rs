//! `#[task]`: options in `attr`, code in `expand`.

mod attr;
mod expand;

use proc_macro2::TokenStream;
use quote::quote;

use crate::options::Errors;

pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let e = syn::Error::new_spanned(
                &item,
                "#[task] applies to a function: `#[task] fn name(...) { ... }`",
            )
            .to_compile_error();
            return quote!(#item #e);
        }
    };
    let errors = Errors::default();
    let attr = attr::parse(args, &errors);
    let sig = crate::signature::analyze(&function, "task", &errors);
    match errors.finish() {
        Some(e) => {
            let e = e.to_compile_error();
            quote!(#function #e)
        }
        None => expand::expand(&attr, &sig, &function),
    }
}

//! `#[task]`: options in `attr`, code in `expand`.

mod attr;
mod expand;
pub(crate) mod results;

use proc_macro2::TokenStream;
use syn::ItemFn;

use crate::ctxt::Ctxt;
use crate::entry::Kind;
use crate::signature::Signature;

pub(crate) struct Task;

impl Kind for Task {
    const NAME: &'static str = "task";
    type Attr = attr::TaskAttr;

    fn parse(args: TokenStream, cx: &Ctxt) -> Self::Attr {
        attr::parse(args, cx)
    }

    fn check(attr: &mut Self::Attr, cx: &Ctxt) {
        attr::check(attr, cx)
    }

    fn check_signature(attr: &Self::Attr, sig: &Signature, cx: &Ctxt) {
        if let Some(name) = &attr.common.run_name {
            crate::names::check(name, "task_run_name", sig, cx);
        }
    }

    fn expand(attr: &Self::Attr, sig: &Signature, function: &ItemFn) -> TokenStream {
        expand::expand(attr, sig, function)
    }
}

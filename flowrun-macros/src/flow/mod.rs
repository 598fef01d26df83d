//! `#[flow]`: options in `attr`, runner checks in `gates`, code in `expand`.

mod attr;
mod expand;
mod gates;

use proc_macro2::TokenStream;
use syn::ItemFn;

use crate::ctxt::Ctxt;
use crate::entry::Kind;
use crate::signature::Signature;

pub(crate) struct Flow;

impl Kind for Flow {
    const NAME: &'static str = "flow";
    type Attr = attr::FlowAttr;

    fn parse(args: TokenStream, cx: &Ctxt) -> Self::Attr {
        attr::parse(args, cx)
    }

    fn check(attr: &mut Self::Attr, cx: &Ctxt) {
        attr::check(attr, cx)
    }

    fn check_signature(attr: &Self::Attr, sig: &Signature, cx: &Ctxt) {
        if let Some(name) = &attr.common.run_name {
            crate::names::check(name, "flow_run_name", sig, cx);
        }
    }

    fn expand(attr: &Self::Attr, sig: &Signature, function: &ItemFn) -> TokenStream {
        expand::expand(attr, sig, function)
    }
}

//! Compile-time checks that the flow's runner can run each task the flow
//! submits: every `.submit(...)`/`.map(...)` whose receiver chain starts at
//! a path gets a check against the runner's type. Receivers that are not
//! tasks (an iterator's `map`) pass the check unchanged.

use proc_macro2::{Ident, Span, TokenStream};
use quote::quote_spanned;
use syn::spanned::Spanned;
use syn::visit_mut::{self, VisitMut};
use syn::{Expr, ExprMethodCall};

pub(crate) fn witness_ident() -> Ident {
    Ident::new("__flowrun_runner", Span::mixed_site())
}

pub(crate) struct Gates {
    pub(crate) fr: TokenStream,
}

fn root_path(expr: &Expr) -> Option<&Expr> {
    match expr {
        Expr::Path(_) => Some(expr),
        Expr::MethodCall(m)
            if matches!(m.method.to_string().as_str(), "with_options" | "wait_for") =>
        {
            root_path(&m.receiver)
        }
        Expr::Paren(p) => root_path(&p.expr),
        _ => None,
    }
}

impl VisitMut for Gates {
    fn visit_expr_mut(&mut self, expr: &mut Expr) {
        visit_mut::visit_expr_mut(self, expr);
        let Expr::MethodCall(ExprMethodCall {
            method, receiver, ..
        }) = &*expr
        else {
            return;
        };
        if !matches!(method.to_string().as_str(), "submit" | "map") {
            return;
        }
        let Some(root) = root_path(receiver) else {
            return;
        };
        let fr = &self.fr;
        let w = witness_ident();
        let span = root.span();
        let call = expr.clone();
        *expr = syn::parse2(quote_spanned! {span=>
            {
                #[allow(unused_imports)]
                use #fr::{GateOther as _, GateTask as _};
                #fr::check((&#fr::Gate(&#w, &#root)).__flowrun_gate());
                #call
            }
        })
        .expect("a block expression");
    }

    // Items nested in the body cannot see the flow's runner.
    fn visit_item_mut(&mut self, _item: &mut syn::Item) {}
}

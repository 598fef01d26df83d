//! Checking and reading the signature of a `#[task]` or `#[flow]` function.

use quote::format_ident;
use syn::visit::Visit;
use syn::{Attribute, FnArg, Ident, ItemFn, Pat, ReturnType, Type, Visibility};

use crate::ctxt::Ctxt;

/// One argument: the name generated code uses, its original pattern, its type.
pub(crate) struct Arg {
    pub(crate) name: Ident,
    pub(crate) pat: Pat,
    pub(crate) ty: Type,
}

impl Arg {
    /// The name as the user reads it (`r#type` is `type`).
    pub(crate) fn plain_name(&self) -> String {
        self.name.to_string().trim_start_matches("r#").to_owned()
    }
}

/// What the expansion needs from the function.
pub(crate) struct Signature {
    pub(crate) vis: Visibility,
    pub(crate) ident: Ident,
    pub(crate) is_async: bool,
    pub(crate) args: Vec<Arg>,
    /// The declared return type (`()` when omitted).
    pub(crate) raw: Type,
    /// Where the return type is written (the function name when omitted).
    pub(crate) raw_span: proc_macro2::Span,
    /// The return type is a `Result<..>`: `Err` fails the run.
    pub(crate) returns_result: bool,
    pub(crate) docs: Vec<Attribute>,
    pub(crate) cfgs: Vec<Attribute>,
    pub(crate) other_attrs: Vec<Attribute>,
    pub(crate) doc_text: Option<String>,
}

impl Signature {
    /// The function's name as the user reads it (`r#type` is `type`).
    pub(crate) fn fn_name(&self) -> String {
        self.ident.to_string().trim_start_matches("r#").to_owned()
    }

    /// The parameters as written, `pattern: Type`.
    pub(crate) fn params(&self) -> impl Iterator<Item = proc_macro2::TokenStream> + '_ {
        self.args.iter().map(|a| {
            let (pat, ty) = (&a.pat, &a.ty);
            quote::quote!(#pat: #ty)
        })
    }
}

/// Finds borrowed and `impl Trait` types, which cannot cross threads or be named.
struct BadTypes<'a> {
    cx: &'a Ctxt,
    role: &'a str,
}

impl<'ast> Visit<'ast> for BadTypes<'_> {
    fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
        self.cx.spanned(
            r,
            format!(
                "{} must be owned, not borrowed: runs can outlive the caller and move to other threads (use `String` for `&str`, `Vec<T>` for `&[T]`, or share with `Arc<T>`)",
                self.role
            ),
        );
    }

    fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
        self.cx.spanned(
            t,
            format!("{} cannot be `impl Trait`: name a concrete type", self.role),
        );
    }

    fn visit_type_bare_fn(&mut self, f: &'ast syn::TypeBareFn) {
        if f.lifetimes.is_some() {
            self.cx.spanned(
                f,
                format!("{} cannot borrow: use a plain `fn` type", self.role),
            );
        }
    }
}

/// Every rule the function breaks, each at its token.
pub(crate) fn check(item: &ItemFn, what: &str, cx: &Ctxt) {
    let sig = &item.sig;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let why = if what == "task" {
            "each task is registered with concrete argument and result types so other processes can run it"
        } else {
            "a flow runs with concrete argument and result types"
        };
        cx.spanned(&sig.generics, format!("a {what} cannot be generic: {why}"));
    }
    if let Some(c) = &sig.constness {
        cx.spanned(c, format!("a {what} cannot be a `const fn`"));
    }
    if let Some(u) = &sig.unsafety {
        cx.spanned(
            u,
            format!("a {what} cannot be an `unsafe fn`: wrap the unsafe code in a safe function"),
        );
    }
    if let Some(abi) = &sig.abi {
        cx.spanned(abi, format!("a {what} cannot have an `extern` ABI"));
    }
    if let Some(v) = &sig.variadic {
        cx.spanned(v, format!("a {what} cannot be variadic"));
    }
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => cx.spanned(
                r,
                format!("a {what} must be a free function, not a method: it cannot take `self`"),
            ),
            FnArg::Typed(pt) => {
                BadTypes {
                    cx,
                    role: &format!("{what} arguments"),
                }
                .visit_type(&pt.ty);
                if let Pat::Ident(pi) = &*pt.pat {
                    if pi.ident == sig.ident {
                        cx.spanned(
                            &pi.ident,
                            format!(
                                "a parameter cannot be named like its {what}: `#[{what}]` turns `{}` into a value, so rename the parameter",
                                pi.ident
                            ),
                        );
                    }
                }
            }
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        BadTypes {
            cx,
            role: &format!("{what} results"),
        }
        .visit_type(ty);
    }
}

/// What the expansion needs from a function that passed [`check`].
pub(crate) fn model(item: &ItemFn) -> Signature {
    let sig = &item.sig;
    let mut args = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(pt) = input else { continue };
        let name = match &*pt.pat {
            Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                let s = pi.ident.to_string();
                if s == "_" || s.starts_with("__flowrun") {
                    format_ident!("arg{}", i)
                } else {
                    Ident::new(s.trim_start_matches("r#"), pi.ident.span())
                }
            }
            _ => format_ident!("arg{}", i),
        };
        args.push(Arg {
            name,
            pat: (*pt.pat).clone(),
            ty: (*pt.ty).clone(),
        });
    }
    dedupe_names(&mut args);

    let raw_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => syn::spanned::Spanned::span(&**ty),
    };
    let (raw, returns_result) = match &sig.output {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => ((**ty).clone(), is_result(ty)),
    };

    let mut docs = Vec::new();
    let mut cfgs = Vec::new();
    let mut other_attrs = Vec::new();
    let mut doc_lines = Vec::new();
    for attr in &item.attrs {
        if attr.path().is_ident("doc") {
            if let syn::Meta::NameValue(nv) = &attr.meta {
                if let syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) = &nv.value
                {
                    doc_lines.push(s.value().trim().to_owned());
                }
            }
            docs.push(attr.clone());
        } else if attr.path().is_ident("cfg") {
            cfgs.push(attr.clone());
        } else {
            other_attrs.push(attr.clone());
        }
    }
    let doc_text = {
        let text = doc_lines.join("\n").trim().to_owned();
        (!text.is_empty()).then_some(text)
    };

    Signature {
        vis: item.vis.clone(),
        ident: sig.ident.clone(),
        is_async: sig.asyncness.is_some(),
        args,
        raw,
        raw_span,
        returns_result,
        docs,
        cfgs,
        other_attrs,
        doc_text,
    }
}

fn dedupe_names(args: &mut [Arg]) {
    for i in 0..args.len() {
        if args[..i].iter().any(|a| a.name == args[i].name) {
            args[i].name = format_ident!("arg{}", i);
        }
    }
}

/// `Result<..>`, `io::Result<..>`, `anyhow::Result<..>`...: the last path
/// segment is named `Result`.
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Result"),
        Type::Group(g) => is_result(&g.elem),
        Type::Paren(p) => is_result(&p.elem),
        _ => false,
    }
}

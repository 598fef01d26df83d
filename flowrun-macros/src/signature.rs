//! Reading and checking the signature of a `#[task]` or `#[flow]` function.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, ToTokens};
use syn::visit::Visit;
use syn::{Attribute, FnArg, Ident, ItemFn, Pat, ReturnType, Type, Visibility};

use crate::options::Errors;

/// One argument: the name generated code uses, its original pattern, its type.
pub struct Arg {
    pub name: Ident,
    pub pat: Pat,
    pub ty: Type,
}

/// What the expansion needs from the function.
pub struct Signature {
    pub vis: Visibility,
    pub ident: Ident,
    pub is_async: bool,
    pub args: Vec<Arg>,
    /// The declared return type (`()` when omitted).
    pub raw: TokenStream,
    /// Where the return type is written (the function name when omitted).
    pub raw_span: proc_macro2::Span,
    /// The return type is a `Result<..>`: `Err` fails the run.
    pub returns_result: bool,
    pub docs: Vec<Attribute>,
    pub cfgs: Vec<Attribute>,
    pub other_attrs: Vec<Attribute>,
    pub doc_text: Option<String>,
}

/// Finds borrowed and `impl Trait` types, which cannot cross threads or be named.
struct BadTypes<'a> {
    errors: &'a Errors,
    role: &'a str,
}

impl<'ast> Visit<'ast> for BadTypes<'_> {
    fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
        self.errors.spanned(
            r,
            format!(
                "{} must be owned, not borrowed: runs can outlive the caller and move to other threads (use `String` for `&str`, `Vec<T>` for `&[T]`, or share with `Arc<T>`)",
                self.role
            ),
        );
    }

    fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
        self.errors.spanned(
            t,
            format!("{} cannot be `impl Trait`: name a concrete type", self.role),
        );
    }

    fn visit_type_bare_fn(&mut self, f: &'ast syn::TypeBareFn) {
        if f.lifetimes.is_some() {
            self.errors.spanned(
                f,
                format!("{} cannot borrow: use a plain `fn` type", self.role),
            );
        }
    }
}

pub fn analyze(item: &ItemFn, what: &str, errors: &Errors) -> Signature {
    let sig = &item.sig;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let why = if what == "task" {
            "each task is registered with concrete argument and result types so other processes can run it"
        } else {
            "a flow runs with concrete argument and result types"
        };
        errors.spanned(&sig.generics, format!("a {what} cannot be generic: {why}"));
    }
    if let Some(c) = &sig.constness {
        errors.spanned(c, format!("a {what} cannot be a `const fn`"));
    }
    if let Some(u) = &sig.unsafety {
        errors.spanned(
            u,
            format!("a {what} cannot be an `unsafe fn`: wrap the unsafe code in a safe function"),
        );
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi, format!("a {what} cannot have an `extern` ABI"));
    }
    if let Some(v) = &sig.variadic {
        errors.spanned(v, format!("a {what} cannot be variadic"));
    }

    let mut args = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        match input {
            FnArg::Receiver(r) => errors.spanned(
                r,
                format!("a {what} must be a free function, not a method: it cannot take `self`"),
            ),
            FnArg::Typed(pt) => {
                BadTypes {
                    errors,
                    role: &format!("{what} arguments"),
                }
                .visit_type(&pt.ty);
                let name = match &*pt.pat {
                    Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                        let s = pi.ident.to_string();
                        if pi.ident == sig.ident {
                            errors.spanned(
                                &pi.ident,
                                format!(
                                    "a parameter cannot be named like its {what}: `#[{what}]` turns `{s}` into a value, so rename the parameter"
                                ),
                            );
                        }
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
        }
    }
    dedupe_names(&mut args);

    let raw_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => syn::spanned::Spanned::span(&**ty),
    };
    let (raw, returns_result) = match &sig.output {
        ReturnType::Default => (quote!(()), false),
        ReturnType::Type(_, ty) => {
            BadTypes {
                errors,
                role: &format!("{what} results"),
            }
            .visit_type(ty);
            (ty.to_token_stream(), is_result(ty))
        }
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

/// The items that let the task or flow value be called like its function
/// (`shout(3)`): a plain function that runs it now with `body` (returning
/// `ret`), `Deref` of the value to that function, and `Debug` as
/// `Kind(display name)`.
pub fn direct_call_items(
    sig: &Signature,
    ret: &TokenStream,
    body: &TokenStream,
    kind: &str,
    display: &str,
) -> TokenStream {
    let ident = &sig.ident;
    let names: Vec<_> = sig.args.iter().map(|a| &a.name).collect();
    let tys: Vec<_> = sig.args.iter().map(|a| &a.ty).collect();
    let debug = format!("{kind}({display})");
    quote! {
        fn __flowrun_direct(#(#names: #tys),*) -> #ret {
            #body
        }

        impl ::core::ops::Deref for #ident {
            type Target = fn(#(#tys),*) -> #ret;
            fn deref(&self) -> &Self::Target {
                &(__flowrun_direct as fn(#(#tys),*) -> #ret)
            }
        }

        impl ::core::fmt::Debug for #ident {
            fn fmt(&self, __flowrun_f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                __flowrun_f.write_str(#debug)
            }
        }
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

//! Quoting what both macros share: the typed option values, and the
//! skeleton of the generated item that each fills with its own parts.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;

use crate::attr::Common;
use crate::options::{Count, Number, RetryDelay, Seconds};

/// The `TaskMeta`/`FlowMeta` builder calls for the shared options but
/// hooks and results (`description` falls back to the doc comment).
pub(crate) fn common_builder(
    common: &Common,
    doc_text: Option<&String>,
    fr: &TokenStream,
) -> TokenStream {
    let mut calls = TokenStream::new();
    if !common.tags.is_empty() {
        let tags = &common.tags;
        calls.extend(quote!(.tags(&[#(#tags),*])));
    }
    if let Some(d) = common
        .description
        .as_ref()
        .map(|d| d.value())
        .or_else(|| doc_text.cloned())
    {
        calls.extend(quote!(.description(#d)));
    }
    if let Some(r) = &common.retries {
        let r = count(r);
        calls.extend(quote!(.retries(#r)));
    }
    if let Some(d) = &common.retry_delay {
        let d = retry_delay(d, fr);
        calls.extend(quote!(.retry_delay(#d)));
    }
    if let Some(t) = &common.timeout {
        let t = seconds(t);
        calls.extend(quote!(.timeout(#t)));
    }
    calls
}

/// `.hooks(Options::new().on_completion(f)...)` for the hook options (and
/// `retry_condition_fn`), or nothing; `options` is `TaskOptions` or
/// `FlowOptions`. Each function keeps its span, so a function of the wrong
/// shape is an error at the user's token.
pub(crate) fn hooks(hooks: &[(syn::Ident, Vec<syn::Expr>)], options: TokenStream) -> TokenStream {
    if hooks.is_empty() {
        return TokenStream::new();
    }
    let mut chain = quote!(#options::new());
    for (kind, functions) in hooks {
        for f in functions {
            let method = syn::Ident::new(&kind.to_string(), f.span());
            chain.extend(quote_spanned!(f.span()=> .#method(#f)));
        }
    }
    quote!(.hooks(#chain))
}

/// A checked count literal as `u32`; an expression as written.
pub(crate) fn count(value: &Count) -> TokenStream {
    match value {
        Number::Literal(n, expr) => {
            let n = u32::try_from(*n).unwrap_or_default();
            quote_spanned!(expr.span()=> #n)
        }
        Number::Expr(e) => e.to_token_stream(),
    }
}

/// Seconds as an `f64` literal; an expression as written.
pub(crate) fn seconds(value: &Seconds) -> TokenStream {
    match value {
        Number::Literal(secs, expr) => quote_spanned!(expr.span()=> #secs),
        Number::Expr(e) => e.to_token_stream(),
    }
}

/// A factor as an `f64` literal; an expression converted to `f64`.
pub(crate) fn factor(value: &Number<f64>) -> TokenStream {
    match value {
        Number::Literal(f, expr) => quote_spanned!(expr.span()=> #f),
        Number::Expr(e) => quote_spanned!(e.span()=> (#e) as f64),
    }
}

fn retry_delay(delay: &RetryDelay, fr: &TokenStream) -> TokenStream {
    match delay {
        RetryDelay::Fixed(s) => seconds(s),
        RetryDelay::List(list, span) => {
            let items = list.iter().map(|s| {
                let s = seconds(s);
                quote!(((#s) as f64))
            });
            quote_spanned!(*span=> [#(#items),*])
        }
        RetryDelay::Exponential { base, max } => {
            let base_tokens = seconds(base);
            let max = match max {
                Some(m) => {
                    let m = seconds(m);
                    quote!(::core::option::Option::Some((#m) as f64))
                }
                None => quote!(::core::option::Option::None),
            };
            let span = match base {
                Number::Literal(_, e) | Number::Expr(e) => e.span(),
            };
            quote_spanned!(span=> #fr::exponential(#base_tokens, #max))
        }
    }
}

/// The `Send + 'static` checks of the argument and result types, axum
/// `#[debug_handler]` style: one call per type, spanned at the user's type,
/// and the `where` clause that the generated impls carry. The clause is
/// written `for<'__flowrun>` so that rustc takes it as an assumption
/// instead of rejecting it as false at once: a type that is not `Send` then
/// gives its error at the user's type, not one per generated use. The
/// clause also holds the `assumed` predicates of the caller.
pub(crate) fn send_checks(
    sig: &crate::signature::Signature,
    fr: &TokenStream,
    assumed: &[TokenStream],
) -> (TokenStream, TokenStream) {
    let raw = &sig.raw;
    let spanned = sig
        .args
        .iter()
        .map(|a| (a.ty.to_token_stream(), a.ty.span()))
        .chain(std::iter::once((raw.to_token_stream(), sig.raw_span)));
    let mut checks = Vec::new();
    let mut bounds = Vec::new();
    for (ty, span) in spanned {
        checks.push(quote_spanned!(span=> #fr::assert_send_static::<#ty>();));
        bounds.push(quote!(for<'__flowrun> #ty: #fr::SendStatic));
    }
    let checks = quote! {
        #[allow(dead_code)]
        fn __flowrun_checks() {
            #(#checks)*
        }
    };
    bounds.extend(assumed.iter().cloned());
    (checks, quote!(where #(#bounds),*))
}

/// The items that let the task or flow value be called like its function
/// (`shout(3)`): a plain function that runs it now with `body` (returning
/// `ret`), `Deref` of the value to that function, and `Debug` as
/// `Kind(display name)`. `bounds` is the `where` clause of the generated
/// impls.
pub(crate) fn direct_call_items(
    sig: &crate::signature::Signature,
    bounds: &TokenStream,
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
        fn __flowrun_direct(#(#names: #tys),*) -> #ret #bounds {
            #body
        }

        impl ::core::ops::Deref for #ident #bounds {
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

/// The item's doc comment, or `default()` as its doc when it has none.
pub(crate) fn doc(
    sig: &crate::signature::Signature,
    default: impl FnOnce() -> String,
) -> TokenStream {
    if sig.docs.is_empty() {
        let text = default();
        quote!(#[doc = #text])
    } else {
        let docs = &sig.docs;
        quote!(#(#docs)*)
    }
}

/// The handle `#[task]` and `#[flow]` both generate: a struct named like
/// the function holding the handle's `config` overrides, and a constant
/// of the same name with none (`__flowrun_config: config::NONE`).
pub(crate) fn handle(
    sig: &crate::signature::Signature,
    doc: &TokenStream,
    config: &TokenStream,
) -> TokenStream {
    let (vis, ident, cfgs) = (&sig.vis, &sig.ident, &sig.cfgs);
    quote! {
        #(#cfgs)*
        #doc
        #[allow(non_camel_case_types)]
        #[derive(Clone)]
        #vis struct #ident {
            #[doc(hidden)]
            pub __flowrun_config: #config,
        }

        #(#cfgs)*
        #doc
        #[allow(non_upper_case_globals)]
        #vis const #ident: #ident = #ident { __flowrun_config: #config::NONE };
    }
}

/// What the function's run yields: its return type, or the `Ok` type of a
/// `Result` it returns.
pub(crate) fn output(sig: &crate::signature::Signature, fr: &TokenStream) -> TokenStream {
    let raw = &sig.raw;
    if sig.returns_result {
        quote!(<#raw as #fr::TaskResult>::Ok)
    } else {
        quote!(#raw)
    }
}

/// The `Task`/`Flow` impl items both share: the argument, return and
/// output types, `meta` (a `meta_ty` built once by `builder`), `invoke`
/// (calling `__flowrun_body`, boxed when async) and `outcome`.
pub(crate) fn run_items(
    sig: &crate::signature::Signature,
    fr: &TokenStream,
    meta_ty: &TokenStream,
    builder: &TokenStream,
    outcome: &TokenStream,
) -> TokenStream {
    let names: Vec<_> = sig.args.iter().map(|a| &a.name).collect();
    let tys = sig.args.iter().map(|a| &a.ty);
    let raw = &sig.raw;
    let output = output(sig, fr);
    let invoke = if sig.is_async {
        quote!(#fr::Invocation::Future(::std::boxed::Box::pin(__flowrun_body(#(#names),*))))
    } else {
        quote!(#fr::Invocation::Ready(__flowrun_body(#(#names),*)))
    };
    quote! {
        type Args = (#(#tys,)*);
        type Raw = #raw;
        type Output = #output;

        fn meta() -> &'static #meta_ty {
            static META: #fr::OnceLock<#meta_ty> = #fr::OnceLock::new();
            META.get_or_init(|| #builder)
        }

        #[allow(clippy::unused_unit)]
        fn invoke(__flowrun_args: Self::Args) -> #fr::Invocation<Self::Raw> {
            let (#(#names,)*) = __flowrun_args;
            #invoke
        }

        fn outcome(__flowrun_raw: Self::Raw) -> ::core::result::Result<Self::Output, #fr::TaskError> {
            #outcome
        }
    }
}

/// The handle's `with_options` method; `kind` is `task` or `flow`,
/// `options` its options type.
pub(crate) fn with_options(ident: &syn::Ident, kind: &str, options: &TokenStream) -> TokenStream {
    let doc = format!(
        " The same {kind} with `options` overriding its own for the calls\n made through the returned handle."
    );
    quote! {
        #[doc = #doc]
        pub fn with_options(self, __flowrun_options: #options) -> Self {
            #ident { __flowrun_config: self.__flowrun_config.with_options(__flowrun_options) }
        }
    }
}

/// Which of the two macros an expansion is for.
#[derive(Clone, Copy)]
pub(crate) enum Macro {
    /// `#[task]`.
    Task,
    /// `#[flow]`.
    Flow,
}

/// What one `#[task]` or `#[flow]` expansion has of its own; [`item`]
/// writes everything else.
pub(crate) struct Parts {
    /// The handle's doc comment.
    pub(crate) doc: TokenStream,
    /// The name the runs get, shown in `Debug` too.
    pub(crate) display: String,
    /// The block of `__flowrun_body`, the function as the user wrote it.
    pub(crate) body: TokenStream,
    /// The expression that builds the `meta` value.
    pub(crate) builder: TokenStream,
    /// The body of `outcome`.
    pub(crate) outcome: TokenStream,
    /// What calling the value like its function returns.
    pub(crate) direct_ret: TokenStream,
    /// The body of that call.
    pub(crate) direct_body: TokenStream,
    /// Further items beside the impls (constants, checks, registrations).
    pub(crate) items: TokenStream,
    /// Further items of the trait impl.
    pub(crate) impl_items: TokenStream,
    /// Further `where` predicates of the generated impls, each checked
    /// once elsewhere (in `items`), as the `Send + 'static` ones are.
    pub(crate) assumed: Vec<TokenStream>,
    /// The handle's methods before `with_options`.
    pub(crate) methods: TokenStream,
    /// The handle's methods after `with_options`.
    pub(crate) more_methods: TokenStream,
}

/// The whole expansion of `#[task]` or `#[flow]`: the [`handle`] and, in
/// an anonymous `const`, the [`send_checks`], the user's function as
/// `__flowrun_body`, the [`direct_call_items`], the trait impl with its
/// [`run_items`] and `config`, and the handle's methods with
/// [`with_options`].
pub(crate) fn item(
    sig: &crate::signature::Signature,
    fr: &TokenStream,
    which: Macro,
    parts: Parts,
) -> TokenStream {
    // How the docs say the kind, the trait the handle implements (and its
    // `Debug` output starts with), the overrides the handle holds, the
    // metadata type and the type `with_options` takes.
    let (word, trait_str, config, meta, options) = match which {
        Macro::Task => ("task", "Task", "CallConfig", "TaskMeta", "TaskOptions"),
        Macro::Flow => ("flow", "Flow", "FlowConfig", "FlowMeta", "FlowOptions"),
    };
    let name = |s: &str| syn::Ident::new(s, proc_macro2::Span::call_site());
    let (trait_name, config) = (name(trait_str), name(config));
    let (meta, options) = (name(meta), name(options));
    let (ident, cfgs, other_attrs) = (&sig.ident, &sig.cfgs, &sig.other_attrs);
    let (params, raw) = (sig.params(), &sig.raw);
    let asyncness = sig.is_async.then(|| quote!(async));

    let (send_checks, bounds) = send_checks(sig, fr, &parts.assumed);
    let direct_items = direct_call_items(
        sig,
        &bounds,
        &parts.direct_ret,
        &parts.direct_body,
        trait_str,
        &parts.display,
    );
    let handle = handle(sig, &parts.doc, &quote!(#fr::#config));
    let run_items = run_items(sig, fr, &quote!(#fr::#meta), &parts.builder, &parts.outcome);
    let with_options = with_options(ident, word, &quote!(#fr::#options));
    let Parts {
        body,
        items,
        impl_items,
        methods,
        more_methods,
        ..
    } = parts;
    quote! {
        #handle

        #(#cfgs)*
        const _: () = {
            #send_checks

            #(#other_attrs)*
            #[allow(clippy::too_many_arguments)]
            #asyncness fn __flowrun_body(#(#params),*) -> #raw #body

            #direct_items

            #items

            impl #fr::#trait_name for #ident #bounds {
                #run_items

                fn config(&self) -> &#fr::#config {
                    &self.__flowrun_config
                }

                #impl_items
            }

            impl #ident #bounds {
                #methods

                #with_options

                #more_methods
            }
        };
    }
}

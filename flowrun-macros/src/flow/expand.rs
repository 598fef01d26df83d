//! The code `#[flow]` generates: a value named like the function that runs
//! the flow when called, with `call`, `return_state`, `with_options` and
//! `with_runner` methods, and the `Flow` implementation.

use proc_macro2::TokenStream;
use quote::quote;
use syn::visit_mut::VisitMut;
use syn::ItemFn;

use super::attr::{FlowAttr, Runner};
use super::gates::{witness_ident, Gates};
use crate::signature::Signature;

pub(crate) fn expand(attr: &FlowAttr, sig: &Signature, function: &ItemFn) -> TokenStream {
    let fr = attr.common.private_path();
    let ident = &sig.ident;
    // Prefect names a flow after its function with dashes.
    let display = attr.common.display_name(|| sig.fn_name().replace('_', "-"));
    let names: Vec<_> = sig.args.iter().map(|a| &a.name).collect();
    let tys: Vec<_> = sig.args.iter().map(|a| &a.ty).collect();
    let output = crate::expand::output(sig, &fr);

    let mut block = (*function.block).clone();
    let runner_expr = attr.task_runner.as_ref().map(|r| match r {
        Runner::Default(p) => quote!(<#p as ::core::default::Default>::default()),
        Runner::Expr(e) => quote!(#e),
    });
    let witness = match &runner_expr {
        Some(runner) => {
            Gates { fr: fr.clone() }.visit_block_mut(&mut block);
            let w = witness_ident();
            quote!(let #w = #fr::witness(|| #runner);)
        }
        None => quote!(),
    };
    let stmts = &block.stmts;
    let stmts = crate::prints::body(&attr.common, quote!(#(#stmts)*), &fr);

    let doc = crate::expand::doc(sig, || {
        format!(" The flowrun flow `{display}`: call it to run it.")
    });

    let run_name = attr.common.run_name.as_ref().map(|n| {
        let from_args = crate::names::expand(n, sig, |i| quote!(&__flowrun_args.#i));
        quote! {
            #[allow(unused_variables)]
            fn run_name(
                __flowrun_args: &Self::Args,
            ) -> ::core::option::Option<::std::string::String> {
                #from_args
            }
        }
    });
    let mut builder = quote!(#fr::FlowMeta::builder(#display));
    builder.extend(crate::expand::common_builder(
        &attr.common,
        sig.doc_text.as_ref(),
        &fr,
    ));
    builder.extend(crate::expand::hooks(
        &attr.common.hooks,
        quote!(#fr::FlowOptions),
    ));
    if !attr.concurrency_limits.is_empty() {
        let (tags, slots): (Vec<_>, Vec<_>) = attr.concurrency_limits.iter().cloned().unzip();
        builder.extend(quote!(.concurrency_limits(&[#((#tags, #slots)),*])));
    }
    if let Some(history) = &attr.history {
        builder.extend(quote!(.history(#history)));
    }
    builder.extend(
        attr.common
            .results
            .builder_of(&fr, quote!(#fr::FlowOptions)),
    );
    builder.extend(quote!(.build()));
    let param_names = sig.args.iter().map(|a| a.plain_name());
    let param_json = sig.args.iter().enumerate().map(|(i, a)| {
        let (ty, i) = (&a.ty, syn::Index::from(i));
        quote!((&#fr::Probe::<#ty>::new()).json(&__flowrun_args.#i))
    });

    let outcome = if sig.returns_result {
        quote!(#fr::flow_outcome(__flowrun_raw))
    } else {
        quote!(::core::result::Result::Ok(__flowrun_raw))
    };
    let runner = match &runner_expr {
        Some(r) => quote!(#fr::boxed_runner(#r)),
        None => quote!(#fr::default_runner()),
    };

    let result_ty = quote!(::core::result::Result<#output, #fr::FlowError>);
    let (direct_ret, direct_body, methods) = if sig.is_async {
        (
            quote!(#fr::BoxFuture<#result_ty>),
            quote! {
                ::std::boxed::Box::pin(async move {
                    #fr::run_flow_async::<#ident>(#fr::FlowConfig::NONE, (#(#names,)*)).await.into_result()
                })
            },
            quote! {
                /// Runs the flow and resolves to its result, or to why it failed.
                pub fn call(&self, #(#names: #tys),*) -> #fr::BoxFuture<#result_ty> {
                    let __flowrun_cfg = self.__flowrun_config.clone();
                    ::std::boxed::Box::pin(async move {
                        #fr::run_flow_async::<Self>(__flowrun_cfg, (#(#names,)*)).await.into_result()
                    })
                }

                /// Runs the flow and resolves to the whole flow run: its final
                /// state, result and task run failures.
                pub fn return_state(&self, #(#names: #tys),*) -> #fr::BoxFuture<#fr::FlowRun<#output>> {
                    let __flowrun_cfg = self.__flowrun_config.clone();
                    ::std::boxed::Box::pin(#fr::run_flow_async::<Self>(__flowrun_cfg, (#(#names,)*)))
                }
            },
        )
    } else {
        (
            result_ty.clone(),
            quote!(#fr::run_flow::<#ident>(&#fr::FlowConfig::NONE, (#(#names,)*)).into_result()),
            quote! {
                /// Runs the flow and returns its result, or why it failed.
                pub fn call(&self, #(#names: #tys),*) -> #result_ty {
                    #fr::run_flow::<Self>(&self.__flowrun_config, (#(#names,)*)).into_result()
                }

                /// Runs the flow and returns the whole flow run: its final state,
                /// result and task run failures.
                pub fn return_state(&self, #(#names: #tys),*) -> #fr::FlowRun<#output> {
                    #fr::run_flow::<Self>(&self.__flowrun_config, (#(#names,)*))
                }
            },
        )
    };

    let parts = crate::expand::Parts {
        doc,
        display,
        body: quote!({
            #witness
            #stmts
        }),
        builder,
        outcome,
        direct_ret,
        direct_body,
        items: quote!(),
        impl_items: quote! {
            fn default_runner() -> ::std::boxed::Box<dyn #fr::TaskRunner> {
                #runner
            }

            fn args_clone() -> ::core::option::Option<fn(&Self::Args) -> Self::Args> {
                #[allow(unused_imports)]
                use #fr::{CloneNo as _, CloneYes as _};
                (&#fr::Probe::<(#(#tys,)*)>::new()).cloner()
            }

            #[allow(unused_variables)]
            fn parameters(
                __flowrun_args: &Self::Args,
            ) -> ::std::vec::Vec<(&'static str, ::core::option::Option<::std::string::String>)> {
                #[allow(unused_imports)]
                use #fr::{JsonNo as _, JsonYes as _};
                ::std::vec![#((#param_names, #param_json)),*]
            }

            fn output_encoder() -> ::core::option::Option<#fr::Encoder<Self::Output>> {
                #[allow(unused_imports)]
                use #fr::{CodecNo as _, CodecYes as _};
                (&#fr::Probe::<Self::Output>::new()).codec().map(|__flowrun_codec| __flowrun_codec.0)
            }

            fn parameters_key(__flowrun_args: &Self::Args) -> ::core::result::Result<::std::string::String, ::std::string::String> {
                #[allow(unused_imports)]
                use #fr::{CodecNo as _, CodecYes as _};
                #fr::parameters_key((&#fr::Probe::<(#(#tys,)*)>::new()).codec().map(|__flowrun_codec| (__flowrun_codec.0)(__flowrun_args)))
            }

            #run_name
        },
        methods,
        assumed: Vec::new(),
        more_methods: quote! {
            /// The same flow, running its tasks on a copy of `runner` for each
            /// flow run instead of its own task runner.
            pub fn with_runner<R: #fr::TaskRunner + ::core::clone::Clone>(self, __flowrun_runner: R) -> Self {
                #ident { __flowrun_config: self.__flowrun_config.with_runner(__flowrun_runner) }
            }
        },
    };
    crate::expand::item(sig, &fr, crate::expand::Macro::Flow, parts)
}

//! The code `#[task]` generates: a value named like the function that can
//! be called directly (through `Deref` to a function pointer) and has
//! `submit`, `map`, `call`, `with_options` and `wait_for` methods, the
//! `Task` implementation, and the registry entry.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::ItemFn;

use super::attr::TaskAttr;
use crate::signature::Signature;

pub(crate) fn expand(attr: &TaskAttr, sig: &Signature, function: &ItemFn) -> TokenStream {
    let fr = attr.common.private_path();
    let krate = &attr.common.krate;
    let ident = &sig.ident;
    let fn_name = sig.fn_name();
    let display = attr.common.display_name(|| fn_name.clone());
    let names: Vec<_> = sig.args.iter().map(|a| &a.name).collect();
    let tys: Vec<_> = sig.args.iter().map(|a| &a.ty).collect();
    let raw = &sig.raw;
    let output = crate::expand::output(sig, &fr);
    let body = crate::prints::body(&attr.common, &function.block, &fr);
    let (run_name_checks, assumed) = attr
        .common
        .run_name
        .as_ref()
        .map(|n| crate::names::display_checks(n, sig))
        .unwrap_or_default();
    let run_name = attr.common.run_name.as_ref().map(|n| {
        let from_inputs =
            crate::names::expand(n, sig, |i| quote!(#fr::InputDisplay(&__flowrun_inputs.#i)));
        let from_args = crate::names::expand(n, sig, |i| quote!(&__flowrun_args.#i));
        quote! {
            #[allow(unused_variables)]
            fn run_name(
                __flowrun_inputs: &<Self::Args as #fr::ArgsTuple>::Inputs,
            ) -> ::core::option::Option<::std::string::String> {
                #from_inputs
            }

            #[allow(unused_variables)]
            fn direct_run_name(
                __flowrun_args: &Self::Args,
            ) -> ::core::option::Option<::std::string::String> {
                #from_args
            }
        }
    });

    let doc = crate::expand::doc(sig, || {
        format!(" The flowrun task `{display}`: call it, `.submit(...)` it or `.map(...)` it.")
    });

    let mut builder = quote!(#fr::TaskMeta::builder(
        ::core::concat!(::core::module_path!(), "::", #fn_name),
        #display
    ));
    builder.extend(crate::expand::common_builder(
        &attr.common,
        sig.doc_text.as_ref(),
        &fr,
    ));
    if let Some(j) = &attr.retry_jitter_factor {
        let j = crate::expand::factor(j);
        builder.extend(quote!(.retry_jitter_factor(#j)));
    }
    builder.extend(crate::expand::hooks(
        &attr.common.hooks,
        quote!(#fr::TaskOptions),
    ));
    builder.extend(attr.common.results.builder(&fr));
    let source_hash = super::results::source_hash(function);
    builder.extend(quote!(.source_hash(__FLOWRUN_SOURCE_HASH)));
    let is_async = sig.is_async;
    builder.extend(quote!(.is_async(#is_async).build()));

    let (outcome, failure) = if sig.returns_result {
        (
            quote!(#fr::TaskResult::into_outcome(__flowrun_raw)),
            quote!(#fr::TaskResult::failure_message(__flowrun_raw)),
        )
    } else {
        (
            quote!(::core::result::Result::Ok(__flowrun_raw)),
            quote! {{ let _ = __flowrun_raw; ::core::option::Option::None }},
        )
    };
    // A direct call's value inside its return value, and back (cache hits).
    let (output_ref, from_output) = if sig.returns_result {
        (
            quote!(::core::result::Result::ok(::core::result::Result::as_ref(
                __flowrun_raw
            ))),
            quote!(::core::result::Result::Ok(__flowrun_value)),
        )
    } else {
        (
            quote!(::core::option::Option::Some(__flowrun_raw)),
            quote!(__flowrun_value),
        )
    };

    // `{parameters[name]}` in a result_storage_key: each argument's text,
    // by name (`None` for a type without `Display`, reported at run time
    // when a template given then names it).
    let key_arms: Vec<_> = sig
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let name = a.plain_name();
            let ty = &a.ty;
            let idx = syn::Index::from(i);
            (
                quote! {
                    #name => ::core::option::Option::Some(#fr::key_text_of_input(
                        &__flowrun_inputs.#idx,
                        |__flowrun_v: &#ty| (&#fr::Probe::<#ty>::new()).display_text(__flowrun_v),
                    )),
                },
                quote! {
                    #name => ::core::option::Option::Some(#fr::key_text_of_value::<#ty>(
                        (&#fr::Probe::<#ty>::new()).display_text(&__flowrun_args.#idx),
                    )),
                },
            )
        })
        .collect();
    let (input_arms, arg_arms): (Vec<_>, Vec<_>) = key_arms.into_iter().unzip();
    // The same lookup by name over a run's inputs and over a direct call's
    // arguments.
    let by_name = |method: TokenStream, args: TokenStream, arms: Vec<TokenStream>| {
        quote! {
            #[allow(unused_variables)]
            fn #method(
                #args,
                __flowrun_name: &str,
            ) -> ::core::option::Option<::core::result::Result<::std::string::String, ::std::string::String>> {
                #[allow(unused_imports)]
                use #fr::{DisplayNo as _, DisplayYes as _};
                match __flowrun_name {
                    #(#arms)*
                    _ => ::core::option::Option::None,
                }
            }
        }
    };
    let key_parameter = by_name(
        quote!(key_parameter),
        quote!(__flowrun_inputs: &<Self::Args as #fr::ArgsTuple>::Inputs),
        input_arms,
    );
    let direct_key_parameter = by_name(
        quote!(direct_key_parameter),
        quote!(__flowrun_args: &Self::Args),
        arg_arms,
    );
    // The parameters the attribute's template names must be `Display`
    // (the error points at the template).
    let key_display_checks = attr.common.results.key().map(|key| {
        let used = attr.common.results.key_parameters();
        let tys = sig
            .args
            .iter()
            .filter(|a| used.iter().any(|u| *u == a.plain_name()))
            .map(|a| &a.ty);
        quote_spanned! {key.span()=>
            #[allow(dead_code)]
            fn __flowrun_key_parameters_are_display() {
                fn __flowrun_display<T: ::core::fmt::Display + ?::core::marker::Sized>() {}
                #(__flowrun_display::<#tys>();)*
            }
        }
    });

    let direct_ret = if sig.is_async {
        quote!(#fr::BoxFuture<#raw>)
    } else {
        quote!(#raw)
    };
    let direct_body = if sig.is_async {
        quote!(::std::boxed::Box::pin(#fr::call_async::<#ident>(#fr::CallConfig::NONE, (#(#names,)*))))
    } else {
        quote!(#fr::call::<#ident>(&#fr::CallConfig::NONE, (#(#names,)*)))
    };
    let call_method = if sig.is_async {
        quote! {
            /// Runs the task now, as a tracked task run, and resolves to what it returns.
            pub fn call(&self, #(#names: #tys),*) -> #fr::BoxFuture<#raw> {
                ::std::boxed::Box::pin(#fr::call_async::<Self>(self.__flowrun_config.clone(), (#(#names,)*)))
            }
        }
    } else {
        quote! {
            /// Runs the task now, as a tracked task run, and returns what it returns,
            /// applying the options of this handle.
            pub fn call(&self, #(#names: #tys),*) -> #raw {
                #fr::call::<Self>(&self.__flowrun_config, (#(#names,)*))
            }
        }
    };

    let map_method = if sig.args.is_empty() {
        quote!()
    } else {
        let name_strs: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        quote! {
            /// Submits one run per element of the mapped arguments (iterables of
            /// values or futures); arguments wrapped in `unmapped(...)` are the
            /// same for every run. Mapped arguments of different lengths are an error.
            pub fn map(
                &self,
                #(#names: impl #fr::MapArg<#tys>),*
            ) -> ::core::result::Result<::std::vec::Vec<#fr::TaskFuture<#output>>, #fr::MapError> {
                #(let mut #names = #fr::MapArg::into_source(#names);)*
                let __flowrun_count = #fr::map_len(
                    <Self as #fr::Task>::meta().name(),
                    &[#((#name_strs, #names.mapped_len())),*],
                )?;
                let mut __flowrun_futures = ::std::vec::Vec::with_capacity(__flowrun_count);
                for _ in 0..__flowrun_count {
                    __flowrun_futures.push(self.submit(#(#names.next_input()),*));
                }
                ::core::result::Result::Ok(__flowrun_futures)
            }
        }
    };

    let serde_probes = tys.iter().map(|ty| {
        quote_spanned! {ty.span()=>
            (::core::any::type_name::<#ty>(), (&#fr::Probe::<#ty>::new()).serde_ok())
        }
    });

    let parts = crate::expand::Parts {
        doc,
        display,
        body,
        builder,
        outcome,
        direct_ret,
        direct_body,
        items: quote! {
            /// The hash of this task's source (the `TASK_SOURCE` cache policy).
            const __FLOWRUN_SOURCE_HASH: &str = #source_hash;

            #key_display_checks

            #run_name_checks

            // The entry is taken through a probe, so that a handle that
            // is not a `Task` gives no second error here: that happens only
            // when a `where` predicate the impls assume fails (an argument
            // or the result is not `Send + 'static`, a run-name parameter
            // is not `Display`), and its own check has already said so at
            // the type. The crate does not compile, so the fallback never runs.
            trait __FlowrunEntry {
                fn entry(&self) -> #krate::registry::RegistryEntry;
            }
            impl<T: #fr::Task> __FlowrunEntry for #fr::Probe<T> {
                fn entry(&self) -> #krate::registry::RegistryEntry {
                    T::registry_entry()
                }
            }
            trait __FlowrunNoEntry {
                fn entry(&self) -> #krate::registry::RegistryEntry;
            }
            impl<T> __FlowrunNoEntry for &#fr::Probe<T> {
                fn entry(&self) -> #krate::registry::RegistryEntry {
                    ::core::unreachable!("a task whose impls' `where` clause fails does not compile")
                }
            }

            #fr::inventory::submit! {
                #fr::TaskRegistration {
                    key: ::core::concat!(::core::module_path!(), "::", #fn_name),
                    entry: || (&#fr::Probe::<#ident>::new()).entry(),
                }
            }
        },
        impl_items: quote! {
            fn failure_message(__flowrun_raw: &Self::Raw) -> ::core::option::Option<::std::string::String> {
                #failure
            }

            fn output_ref(__flowrun_raw: &Self::Raw) -> ::core::option::Option<&Self::Output> {
                #output_ref
            }

            fn raw_from_output(__flowrun_value: Self::Output) -> Self::Raw {
                #from_output
            }

            #key_parameter

            #direct_key_parameter

            fn support() -> &'static #fr::TaskSupport<Self> {
                // Type-erased so that the static does not name
                // `TaskSupport<Self>`, whose bounds a static cannot
                // assume: a non-`Send` argument then fails only at
                // `__flowrun_checks`.
                static SUPPORT: #fr::OnceLock<&'static (dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync)> = #fr::OnceLock::new();
                let __flowrun_support = *SUPPORT.get_or_init(|| ::std::boxed::Box::leak(::std::boxed::Box::new({
                    #[allow(unused_imports)]
                    use #fr::{CloneNo as _, CloneYes as _, CodecNo as _, CodecYes as _, SerializedNo as _, SerializedYes as _};
                    #fr::TaskSupport::new(
                        (&#fr::Probe::<(#(#tys,)*)>::new()).cloner(),
                        (&#fr::Probe::<#output>::new()).cloner(),
                        (&#fr::Probe::<#output>::new()).codec(),
                        (&#fr::Probe::<#ident>::new()).serialized(),
                        &[
                            #(#serde_probes,)*
                            (::core::any::type_name::<#output>(), (&#fr::Probe::<#output>::new()).serde_ok()),
                        ],
                    )
                })));
                match __flowrun_support.downcast_ref::<#fr::TaskSupport<Self>>() {
                    ::core::option::Option::Some(__flowrun_support) => __flowrun_support,
                    ::core::option::Option::None => ::core::unreachable!("only this function fills its own static"),
                }
            }

            #run_name
        },
        methods: quote! {
            /// Submits a run of the task and returns its future at once.
            /// Each argument may be a value or the `TaskFuture` of an upstream
            /// run, which makes this run wait for it and receive its value.
            pub fn submit(&self, #(#names: impl #fr::IntoInput<#tys>),*) -> #fr::TaskFuture<#output> {
                #fr::submit(self, (#(#fr::IntoInput::into_input(#names),)*))
            }

            #map_method

            #call_method
        },
        assumed,
        more_methods: quote! {
            /// The same task, whose runs also wait for `runs` (without taking
            /// their values) before they start.
            pub fn wait_for(self, __flowrun_runs: impl #fr::IntoRunRefs) -> Self {
                #ident { __flowrun_config: self.__flowrun_config.wait_for(#fr::IntoRunRefs::into_run_refs(__flowrun_runs)) }
            }

            /// The key this task is registered under, for running it by name.
            pub fn registry_key(&self) -> &'static str {
                <Self as #fr::Task>::meta().key()
            }
        },
    };
    crate::expand::item(sig, &fr, crate::expand::Macro::Task, parts)
}

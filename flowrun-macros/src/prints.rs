//! `log_prints`: the `print!`, `println!`, `eprint!` and `eprintln!`
//! invocations of a task's or flow's body become calls that log the text
//! as a line of the current run (`flowrun_core::prints::print_to_run`).
//!
//! The rewrite walks tokens, not the syntax tree, so invocations inside
//! other macros' arguments (`assert!`, `tokio::select!`) are found too. An
//! invocation written with a path (`std::println!`) is left as written:
//! that is the way to print one line without logging it. Functions the
//! body calls are not touched (a macro sees only its own item).

use proc_macro2::{Delimiter, Group, Spacing, TokenStream, TokenTree};
use quote::{quote_spanned, ToTokens};

/// `log_prints = true | false`.
pub(crate) fn parse(value: &syn::Expr, cx: &crate::ctxt::Ctxt) -> Option<bool> {
    match value {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Bool(b),
            ..
        }) => Some(b.value),
        other => {
            cx.spanned(other, "`log_prints` takes `true` or `false`");
            None
        }
    }
}

/// The body as written with `log_prints = false`, else rewritten.
pub(crate) fn body(
    common: &crate::attr::Common,
    body: impl ToTokens,
    fr: &TokenStream,
) -> TokenStream {
    let body = body.into_token_stream();
    match common.log_prints {
        Some(false) => body,
        forced => rewrite(body, fr, forced == Some(true)),
    }
}

/// The body with its print invocations rewritten; `forced` (written
/// `log_prints = true`) logs whatever the global setting says.
pub(crate) fn rewrite(body: TokenStream, fr: &TokenStream, forced: bool) -> TokenStream {
    let tokens: Vec<TokenTree> = body.into_iter().collect();
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if let Some(call) = print_call(&tokens, i, fr, forced) {
            out.extend(call);
            i += 3;
            continue;
        }
        match &tokens[i] {
            TokenTree::Group(g) => {
                let mut group = Group::new(g.delimiter(), rewrite(g.stream(), fr, forced));
                group.set_span(g.span());
                out.push(TokenTree::Group(group));
            }
            other => out.push(other.clone()),
        }
        i += 1;
    }
    out.into_iter().collect()
}

/// The replacement of `name ! (args)` starting at `i`, if it is a print.
fn print_call(
    tokens: &[TokenTree],
    i: usize,
    fr: &TokenStream,
    forced: bool,
) -> Option<TokenStream> {
    let TokenTree::Ident(name) = &tokens[i] else {
        return None;
    };
    let (stream, newline) = match name.to_string().as_str() {
        "print" => (quote_spanned!(name.span()=> Stdout), false),
        "println" => (quote_spanned!(name.span()=> Stdout), true),
        "eprint" => (quote_spanned!(name.span()=> Stderr), false),
        "eprintln" => (quote_spanned!(name.span()=> Stderr), true),
        _ => return None,
    };
    match tokens.get(i + 1) {
        Some(TokenTree::Punct(p)) if p.as_char() == '!' => {}
        _ => return None,
    }
    let TokenTree::Group(args) = tokens.get(i + 2)? else {
        return None;
    };
    // `std::println!(...)`, `self::print!(...)`: a path names another
    // macro, or asks for a plain print.
    if i >= 1 {
        if let TokenTree::Punct(p) = &tokens[i - 1] {
            if p.as_char() == ':' && p.spacing() == Spacing::Alone {
                return None;
            }
        }
    }
    if args.delimiter() == Delimiter::None {
        return None;
    }
    let inner = args.stream();
    let inner = if inner.is_empty() {
        quote_spanned!(args.span()=> "")
    } else {
        rewrite(inner, fr, forced)
    };
    let span = name.span();
    Some(quote_spanned! {span=>
        {
            #fr::print_to_run(#forced, #fr::PrintStream::#stream, #newline, ::core::format_args!(#inner));
        }
    })
}

#[cfg(test)]
mod tests {
    use quote::quote;

    fn rewritten(body: proc_macro2::TokenStream) -> String {
        super::rewrite(body, &quote!(fr), false).to_string()
    }

    #[test]
    fn prints_become_run_prints_and_paths_stay() {
        let out = rewritten(quote! {
            println!("a {}", x);
            std::println!("plain");
            if y { eprint!{"b"} }
            assert!(z, "{}", { print!("c"); 1 });
            let _ = format!("{}", 1);
        });
        assert_eq!(out.matches("print_to_run").count(), 3, "{out}");
        assert!(out.contains("std :: println ! (\"plain\")"), "{out}");
        assert!(out.contains("format ! (\"{}\" , 1)"), "{out}");
        assert!(out.contains("PrintStream :: Stderr , false"), "{out}");
    }

    #[test]
    fn an_empty_println_prints_an_empty_line() {
        let out = rewritten(quote!(println!()));
        assert!(out.contains("format_args ! (\"\")"), "{out}");
    }
}

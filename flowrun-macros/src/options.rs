//! Parsing `name = value` option lists, with every error collected and
//! spanned on the offending token.

use std::cell::RefCell;

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Token, UnOp};

/// Collects errors so that one expansion reports all of them.
#[derive(Default)]
pub struct Errors(RefCell<Option<syn::Error>>);

impl Errors {
    pub fn push(&self, error: syn::Error) {
        let mut slot = self.0.borrow_mut();
        match slot.as_mut() {
            Some(e) => e.combine(error),
            None => *slot = Some(error),
        }
    }

    pub fn at(&self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    pub fn spanned(&self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub fn finish(self) -> Option<syn::Error> {
        self.0.into_inner()
    }
}

/// One `name = value` (or a bare `name`, which is an error).
pub struct Item {
    pub name: Ident,
    pub value: Option<Expr>,
}

impl Parse for Item {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name = if input.peek(Token![crate]) {
            let kw: Token![crate] = input.parse()?;
            Ident::new("crate", kw.span)
        } else {
            input.call(Ident::parse_any_ident)?
        };
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(Item { name, value })
    }
}

trait ParseAnyIdent {
    fn parse_any_ident(input: ParseStream) -> syn::Result<Ident>;
}

impl ParseAnyIdent for Ident {
    fn parse_any_ident(input: ParseStream) -> syn::Result<Ident> {
        use syn::ext::IdentExt;
        Ident::parse_any(input)
    }
}

/// The whole attribute argument list.
pub struct Items(pub Vec<Item>);

impl Parse for Items {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let list = Punctuated::<Item, Token![,]>::parse_terminated(input)?;
        Ok(Items(list.into_iter().collect()))
    }
}

/// Checks names against `valid` (unknown, duplicated, missing values) and
/// returns the accepted `(name, value)` pairs.
pub fn accept(items: Items, valid: &[&str], what: &str, errors: &Errors) -> Vec<(Ident, Expr)> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for item in items.0 {
        let name = item.name.to_string();
        if !valid.contains(&name.as_str()) {
            let list = valid
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let hint = match closest(&name, valid) {
                Some(s) => format!(" (did you mean `{s}`?)"),
                None => String::new(),
            };
            errors.at(
                item.name.span(),
                format!("unknown {what} option `{name}`{hint}; expected one of: {list}"),
            );
            continue;
        }
        if seen.contains(&name) {
            errors.at(
                item.name.span(),
                format!("duplicate {what} option `{name}`"),
            );
            continue;
        }
        seen.push(name.clone());
        match item.value {
            Some(v) => out.push((item.name, v)),
            None => errors.at(
                item.name.span(),
                format!("{what} option `{name}` needs a value: `{name} = ...`"),
            ),
        }
    }
    out
}

fn closest<'a>(name: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (levenshtein(name, v), *v))
        .filter(|(d, v)| *d <= 2.max(v.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A number literal, possibly negated.
enum Number {
    Int(i128),
    Float(f64),
}

fn number(expr: &Expr) -> Option<Number> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<i128>().ok().map(Number::Int),
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse::<f64>().ok().map(Number::Float),
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => match number(&u.expr)? {
            Number::Int(i) => Some(Number::Int(-i)),
            Number::Float(f) => Some(Number::Float(-f)),
        },
        Expr::Paren(p) => number(&p.expr),
        Expr::Group(g) => number(&g.expr),
        _ => None,
    }
}

/// A string literal option (`name = "..."`).
pub fn string(expr: &Expr, option: &str, errors: &Errors) -> Option<LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => {
            if s.value().trim().is_empty() {
                errors.spanned(s, format!("`{option}` must not be empty"));
                None
            } else {
                Some(s.clone())
            }
        }
        _ => {
            errors.spanned(
                expr,
                format!("`{option}` must be a string literal, such as `{option} = \"...\"`"),
            );
            None
        }
    }
}

/// A whole number >= 0; other expressions are checked at run time.
pub fn count(expr: &Expr, option: &str, errors: &Errors) -> TokenStream {
    match number(expr) {
        Some(Number::Int(i)) if i >= 0 && i <= u32::MAX as i128 => {
            let n = i as u32;
            quote_spanned!(expr.span()=> #n)
        }
        Some(_) => {
            errors.spanned(expr, format!("`{option}` must be a whole number >= 0"));
            quote!(0u32)
        }
        None => expr.to_token_stream(),
    }
}

/// Seconds as a number literal (> 0 unless `allow_zero`), or any
/// expression converted at run time (`Duration`, a constant...).
pub fn seconds(expr: &Expr, option: &str, allow_zero: bool, errors: &Errors) -> TokenStream {
    match number(expr) {
        Some(n) => {
            let secs = match n {
                Number::Int(i) => i as f64,
                Number::Float(f) => f,
            };
            let ok = secs.is_finite() && if allow_zero { secs >= 0.0 } else { secs > 0.0 };
            if !ok {
                let bound = if allow_zero { ">= 0" } else { "> 0" };
                errors.spanned(
                    expr,
                    format!("`{option}` must be a number of seconds {bound}"),
                );
            }
            let secs = if ok { secs } else { 0.0 };
            quote_spanned!(expr.span()=> #secs)
        }
        None => expr.to_token_stream(),
    }
}

/// A factor >= 0.
pub fn factor(expr: &Expr, option: &str, errors: &Errors) -> TokenStream {
    match number(expr) {
        Some(n) => {
            let f = match n {
                Number::Int(i) => i as f64,
                Number::Float(f) => f,
            };
            if !(f.is_finite() && f >= 0.0) {
                errors.spanned(expr, format!("`{option}` must be a number >= 0"));
            }
            quote_spanned!(expr.span()=> #f)
        }
        None => quote_spanned!(expr.span()=> (#expr) as f64),
    }
}

/// `retry_delay`: seconds, a list of seconds, `exponential(base)`,
/// `exponential(base, max = m)`, or an expression.
pub fn retry_delay(expr: &Expr, krate: &TokenStream, errors: &Errors) -> TokenStream {
    match expr {
        Expr::Array(array) => {
            if array.elems.is_empty() {
                errors.spanned(expr, "`retry_delay` needs at least one delay");
            }
            let items: Vec<TokenStream> = array
                .elems
                .iter()
                .map(|e| {
                    let s = seconds(e, "retry_delay", true, errors);
                    quote!(((#s) as f64))
                })
                .collect();
            quote_spanned!(expr.span()=> [#(#items),*])
        }
        Expr::Call(call) if matches!(&*call.func, Expr::Path(p) if p.path.is_ident("exponential")) =>
        {
            let mut base = None;
            let mut max = None;
            for (i, arg) in call.args.iter().enumerate() {
                match arg {
                    Expr::Assign(a) => {
                        let key = a.left.to_token_stream().to_string();
                        let value = seconds(&a.right, "retry_delay", key == "base", errors);
                        match key.as_str() {
                            "base" if base.is_none() => base = Some(value),
                            "max" if max.is_none() => max = Some(value),
                            _ => errors.spanned(
                                &a.left,
                                "`exponential` takes `base` (seconds) and an optional `max` (seconds)",
                            ),
                        }
                    }
                    other if i == 0 && base.is_none() => {
                        base = Some(seconds(other, "retry_delay", true, errors))
                    }
                    other if i == 1 && max.is_none() => {
                        max = Some(seconds(other, "retry_delay", true, errors))
                    }
                    other => errors.spanned(other, "`exponential` takes at most `base` and `max`"),
                }
            }
            let Some(base) = base else {
                errors.spanned(
                    call,
                    "`exponential` needs a base delay in seconds: `exponential(1)`",
                );
                return quote!(0.0);
            };
            let max = match max {
                Some(m) => quote!(::core::option::Option::Some((#m) as f64)),
                None => quote!(::core::option::Option::None),
            };
            quote_spanned!(expr.span()=> #krate::__private::exponential(#base, #max))
        }
        _ => seconds(expr, "retry_delay", true, errors),
    }
}

/// `tags = ["a", "b"]`.
pub fn tags(expr: &Expr, errors: &Errors) -> Vec<LitStr> {
    let Expr::Array(array) = expr else {
        errors.spanned(
            expr,
            "`tags` must be a list of string literals, such as `tags = [\"etl\"]`",
        );
        return Vec::new();
    };
    array
        .elems
        .iter()
        .filter_map(|e| match e {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => Some(s.clone()),
            other => {
                errors.spanned(other, "each tag must be a string literal");
                None
            }
        })
        .collect()
}

/// `crate = path` (for re-exports of flowrun under another name).
pub fn krate(expr: Option<&Expr>, errors: &Errors) -> TokenStream {
    match expr {
        None => quote!(::flowrun),
        Some(Expr::Path(p)) => p.to_token_stream(),
        Some(Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        })) => match s.parse::<syn::Path>() {
            Ok(p) => p.to_token_stream(),
            Err(_) => {
                errors.spanned(s, "`crate` must be a path, such as `crate = ::flowrun`");
                quote!(::flowrun)
            }
        },
        Some(other) => {
            errors.spanned(other, "`crate` must be a path, such as `crate = ::flowrun`");
            quote!(::flowrun)
        }
    }
}

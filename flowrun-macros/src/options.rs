//! Parsing `name = value` option lists into typed values. Each value keeps
//! its span, so that `check` and `expand` can point at the user's token.
//! Nothing here produces code.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Token, UnOp};

use crate::ctxt::Ctxt;

/// One `name = value` (or a bare `name`, which is an error).
pub(crate) struct Item {
    pub(crate) name: Ident,
    pub(crate) value: Option<Expr>,
}

impl Parse for Item {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name = if input.peek(Token![crate]) {
            let kw: Token![crate] = input.parse()?;
            Ident::new("crate", kw.span)
        } else {
            Ident::parse_any(input)?
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

struct Items(Vec<Item>);

impl Parse for Items {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let list = Punctuated::<Item, Token![,]>::parse_terminated(input)?;
        Ok(Items(list.into_iter().collect()))
    }
}

/// Parses the attribute's arguments and checks their names against `valid`
/// (unknown, duplicated, missing values); returns the accepted pairs.
pub(crate) fn accept(
    args: proc_macro2::TokenStream,
    valid: &[&str],
    what: &str,
    cx: &Ctxt,
) -> Vec<(String, Expr)> {
    let items = match syn::parse2::<Items>(args) {
        Ok(items) => items.0,
        Err(e) => {
            cx.push(e);
            return Vec::new();
        }
    };
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for item in items {
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
            cx.at(
                item.name.span(),
                format!("unknown {what} option `{name}`{hint}; expected one of: {list}"),
            );
            continue;
        }
        if seen.contains(&name) {
            cx.at(
                item.name.span(),
                format!("duplicate {what} option `{name}`"),
            );
            continue;
        }
        seen.push(name.clone());
        match item.value {
            Some(v) => out.push((name, v)),
            None => cx.at(
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

/// A number option: a literal read at compile time, or any other
/// expression, converted at run time.
#[derive(Clone)]
pub(crate) enum Number<T> {
    /// The value and the literal as written (for spans).
    Literal(T, Expr),
    Expr(Expr),
}

/// A whole number such as `retries`.
pub(crate) type Count = Number<i128>;
/// Seconds (`timeout`, each retry delay) or a `Duration` expression.
pub(crate) type Seconds = Number<f64>;

enum Literal {
    Int(i128),
    Float(f64),
}

fn literal(expr: &Expr) -> Option<Literal> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<i128>().ok().map(Literal::Int),
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse::<f64>().ok().map(Literal::Float),
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => match literal(&u.expr)? {
            Literal::Int(i) => Some(Literal::Int(-i)),
            Literal::Float(f) => Some(Literal::Float(-f)),
        },
        Expr::Paren(p) => literal(&p.expr),
        Expr::Group(g) => literal(&g.expr),
        _ => None,
    }
}

/// `retries = n`.
pub(crate) fn count(expr: &Expr, option: &str, cx: &Ctxt) -> Option<Count> {
    match literal(expr) {
        Some(Literal::Int(i)) => Some(Number::Literal(i, expr.clone())),
        Some(Literal::Float(_)) => {
            cx.spanned(expr, format!("`{option}` must be a whole number >= 0"));
            None
        }
        None => Some(Number::Expr(expr.clone())),
    }
}

/// A number of seconds, or an expression.
pub(crate) fn seconds(expr: &Expr) -> Seconds {
    match literal(expr) {
        Some(Literal::Int(i)) => Number::Literal(i as f64, expr.clone()),
        Some(Literal::Float(f)) => Number::Literal(f, expr.clone()),
        None => Number::Expr(expr.clone()),
    }
}

/// `retry_delay = ...`.
pub(crate) enum RetryDelay {
    /// One delay for every retry.
    Fixed(Seconds),
    /// `[a, b, c]`: one delay per retry, the last repeated.
    List(Vec<Seconds>, Span),
    /// `exponential(base, max = m)`: doubling from `base`, capped at `max`.
    Exponential { base: Seconds, max: Option<Seconds> },
}

/// Reads `retry_delay`; shape errors go to `cx` and give `None`.
pub(crate) fn retry_delay(expr: &Expr, cx: &Ctxt) -> Option<RetryDelay> {
    match expr {
        Expr::Array(array) => Some(RetryDelay::List(
            array.elems.iter().map(seconds).collect(),
            expr.span(),
        )),
        Expr::Call(call) if matches!(&*call.func, Expr::Path(p) if p.path.is_ident("exponential")) =>
        {
            let mut base = None;
            let mut max = None;
            let mut ok = true;
            for (i, arg) in call.args.iter().enumerate() {
                match arg {
                    Expr::Assign(a) => {
                        let key = match &*a.left {
                            Expr::Path(p) => p.path.get_ident().map(|i| i.to_string()),
                            _ => None,
                        };
                        match key.as_deref() {
                            Some("base") if base.is_none() => base = Some(seconds(&a.right)),
                            Some("max") if max.is_none() => max = Some(seconds(&a.right)),
                            _ => {
                                ok = false;
                                cx.spanned(
                                    &a.left,
                                    "`exponential` takes `base` (seconds) and an optional `max` (seconds)",
                                )
                            }
                        }
                    }
                    other if i == 0 && base.is_none() => base = Some(seconds(other)),
                    other if i == 1 && max.is_none() => max = Some(seconds(other)),
                    other => {
                        ok = false;
                        cx.spanned(other, "`exponential` takes at most `base` and `max`")
                    }
                }
            }
            let Some(base) = base else {
                cx.spanned(
                    call,
                    "`exponential` needs a base delay in seconds: `exponential(1)`",
                );
                return None;
            };
            ok.then_some(RetryDelay::Exponential { base, max })
        }
        _ => Some(RetryDelay::Fixed(seconds(expr))),
    }
}

/// The literal of `expr` that `pick` accepts, or `None` after reporting
/// `wanted` (what the option must be) on `expr`.
fn literal_of<T>(
    expr: &Expr,
    cx: &Ctxt,
    pick: impl FnOnce(&Lit) -> Option<T>,
    wanted: impl FnOnce() -> String,
) -> Option<T> {
    let found = match expr {
        Expr::Lit(ExprLit { lit, .. }) => pick(lit),
        _ => None,
    };
    if found.is_none() {
        cx.spanned(expr, wanted());
    }
    found
}

fn str_lit(lit: &Lit) -> Option<LitStr> {
    match lit {
        Lit::Str(s) => Some(s.clone()),
        _ => None,
    }
}

/// A string literal option (`name = "..."`).
pub(crate) fn string(expr: &Expr, option: &str, cx: &Ctxt) -> Option<LitStr> {
    literal_of(expr, cx, str_lit, || {
        format!("`{option}` must be a string literal, such as `{option} = \"...\"`")
    })
}

/// `tags = ["a", "b"]`.
pub(crate) fn tags(expr: &Expr, cx: &Ctxt) -> Vec<LitStr> {
    let Expr::Array(array) = expr else {
        cx.spanned(
            expr,
            "`tags` must be a list of string literals, such as `tags = [\"etl\"]`",
        );
        return Vec::new();
    };
    array
        .elems
        .iter()
        .filter_map(|e| {
            literal_of(e, cx, str_lit, || {
                "each tag must be a string literal".into()
            })
        })
        .collect()
}

/// A hook option: `[f, g]`, or a single function.
pub(crate) fn functions(expr: &Expr) -> Vec<Expr> {
    match expr {
        Expr::Array(array) => array.elems.iter().cloned().collect(),
        other => vec![other.clone()],
    }
}

/// `crate = path` (for re-exports of flowrun under another name).
pub(crate) fn krate(expr: &Expr, cx: &Ctxt) -> Option<syn::Path> {
    let path = match expr {
        Expr::Path(p) if p.qself.is_none() => Some(p.path.clone()),
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => s.parse::<syn::Path>().ok(),
        _ => None,
    };
    if path.is_none() {
        cx.spanned(expr, "`crate` must be a path, such as `crate = ::flowrun`");
    }
    path
}

/// A `true`/`false` literal option (`history = false`).
pub(crate) fn boolean(expr: &Expr, option: &str, cx: &Ctxt) -> Option<syn::LitBool> {
    let pick = |lit: &Lit| match lit {
        Lit::Bool(b) => Some(b.clone()),
        _ => None,
    };
    literal_of(expr, cx, pick, || {
        format!("`{option}` must be `true` or `false`, such as `{option} = false`")
    })
}

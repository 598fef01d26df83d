//! Checks of the typed options: each value out of range is reported at its
//! token and dropped, so the expansion falls back to the default for it.

use syn::LitStr;

use crate::attr::Common;
use crate::ctxt::Ctxt;
use crate::options::{Number, RetryDelay, Seconds};

/// The checks of the options both macros share.
pub(crate) fn common(attr: &mut Common, cx: &Ctxt) {
    non_empty(&mut attr.name, "name", cx);
    non_empty(&mut attr.description, "description", cx);
    if let Some(Number::Literal(n, expr)) = &attr.retries {
        if u32::try_from(*n).is_err() {
            cx.spanned(expr, "`retries` must be a whole number >= 0");
            attr.retries = None;
        }
    }
    if let Some(t) = &attr.timeout {
        if !seconds_ok(t, "timeout", false, cx) {
            attr.timeout = None;
        }
    }
    if let Some(delay) = &attr.retry_delay {
        if !retry_delay_ok(delay, cx) {
            attr.retry_delay = None;
        }
    }
}

/// `retry_jitter_factor`: a factor >= 0.
pub(crate) fn factor(value: &mut Option<Number<f64>>, option: &str, cx: &Ctxt) {
    if let Some(Number::Literal(f, expr)) = value {
        if !(f.is_finite() && *f >= 0.0) {
            cx.spanned(expr, format!("`{option}` must be a number >= 0"));
            *value = None;
        }
    }
}

fn non_empty(value: &mut Option<LitStr>, option: &str, cx: &Ctxt) {
    if value.as_ref().is_some_and(|s| s.value().trim().is_empty()) {
        cx.spanned(value.take(), format!("`{option}` must not be empty"));
    }
}

fn seconds_ok(value: &Seconds, option: &str, allow_zero: bool, cx: &Ctxt) -> bool {
    let Number::Literal(secs, expr) = value else {
        return true;
    };
    let secs = *secs;
    let ok = secs.is_finite() && if allow_zero { secs >= 0.0 } else { secs > 0.0 };
    if !ok {
        let bound = if allow_zero { ">= 0" } else { "> 0" };
        cx.spanned(
            expr,
            format!("`{option}` must be a number of seconds {bound}"),
        );
    }
    ok
}

fn retry_delay_ok(delay: &RetryDelay, cx: &Ctxt) -> bool {
    // Every element is checked (no short circuit), so that all bad ones
    // are reported.
    let all = |values: &mut dyn Iterator<Item = &Seconds>| {
        values
            .filter(|s| !seconds_ok(s, "retry_delay", true, cx))
            .count()
            == 0
    };
    match delay {
        RetryDelay::Fixed(s) => all(&mut std::iter::once(s)),
        RetryDelay::List(list, span) => {
            if list.is_empty() {
                cx.at(*span, "`retry_delay` needs at least one delay");
                return false;
            }
            all(&mut list.iter())
        }
        RetryDelay::Exponential { base, max } => {
            all(&mut std::iter::once(base).chain(max.as_ref()))
        }
    }
}

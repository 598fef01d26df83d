//! The values task and flow options accept: seconds as any number or a
//! `Duration`, counts as any integer, retry delays as seconds, lists or
//! `exponential(...)`, each checked with a message naming what is wrong.

use std::time::Duration;

use crate::task::options::RetryDelay;

/// Numbers accepted as a duration in seconds by `timeout = ...`.
pub trait IntoSeconds {
    /// The duration, or why the value is not one.
    fn into_duration(self) -> Result<Duration, String>;
}

impl IntoSeconds for f64 {
    fn into_duration(self) -> Result<Duration, String> {
        if !(self.is_finite() && self >= 0.0) {
            return Err(format!(
                "must be a finite number of seconds >= 0, got {self}"
            ));
        }
        Ok(Duration::from_secs_f64(self))
    }
}

impl IntoSeconds for f32 {
    fn into_duration(self) -> Result<Duration, String> {
        f64::from(self).into_duration()
    }
}

impl IntoSeconds for Duration {
    fn into_duration(self) -> Result<Duration, String> {
        Ok(self)
    }
}

/// Numbers accepted by `retries = ...`.
pub trait IntoCount {
    /// The count, or why the value is not one.
    fn into_count(self) -> Result<u32, String>;
}

/// Every integer type is a count and a whole number of seconds; a
/// negative one is neither.
macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl IntoSeconds for $t {
            #[allow(unused_comparisons)]
            fn into_duration(self) -> Result<Duration, String> {
                if self < 0 {
                    return Err(format!("must be positive, got {self}"));
                }
                Ok(Duration::from_secs(self as u64))
            }
        }

        impl IntoCount for $t {
            fn into_count(self) -> Result<u32, String> {
                u32::try_from(self).map_err(|_| format!("must be a whole number >= 0, got {self}"))
            }
        }
    )*};
}
from_int!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

/// Values accepted by `retry_delay = ...`.
pub trait IntoRetryDelay {
    /// The delay, or why the value is not one.
    fn into_retry_delay(self) -> Result<RetryDelay, String>;
}

impl<T: IntoSeconds> IntoRetryDelay for T {
    fn into_retry_delay(self) -> Result<RetryDelay, String> {
        self.into_duration().map(RetryDelay::Fixed)
    }
}

impl IntoRetryDelay for RetryDelay {
    fn into_retry_delay(self) -> Result<RetryDelay, String> {
        Ok(self)
    }
}

impl<T: IntoSeconds, const N: usize> IntoRetryDelay for [T; N] {
    fn into_retry_delay(self) -> Result<RetryDelay, String> {
        Vec::from(self).into_retry_delay()
    }
}

impl<T: IntoSeconds> IntoRetryDelay for Vec<T> {
    fn into_retry_delay(self) -> Result<RetryDelay, String> {
        let list = self
            .into_iter()
            .map(IntoSeconds::into_duration)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RetryDelay::Sequence(list))
    }
}

/// `retry_delay = exponential(base)` / `exponential(base, max)`: delays that
/// double from `base` seconds, capped at `max` seconds.
pub fn exponential(base: impl IntoSeconds, max: Option<f64>) -> Result<RetryDelay, String> {
    let base = base.into_duration()?;
    let max = match max {
        Some(m) => Some(m.into_duration()?),
        None => None,
    };
    Ok(RetryDelay::Exponential {
        base,
        factor: 2.0,
        max,
    })
}

impl IntoRetryDelay for Result<RetryDelay, String> {
    fn into_retry_delay(self) -> Result<RetryDelay, String> {
        self
    }
}

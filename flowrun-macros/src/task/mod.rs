//! `#[task]`: options in `attr`, code in `expand`.

mod attr;
mod expand;
pub(crate) mod results;

use crate::entry::{kind, Kind};

/// `#[task]`.
pub(crate) const TASK: Kind<attr::TaskAttr> = kind!("task");

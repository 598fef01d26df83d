//! `#[flow]`: options in `attr`, runner checks in `gates`, code in `expand`.

mod attr;
mod expand;
mod gates;

use crate::entry::{kind, Kind};

/// `#[flow]`.
pub(crate) const FLOW: Kind<attr::FlowAttr> = kind!("flow");

//! `#[flow]`: options in `attr`, runner checks in `gates`, code in `expand`.

mod attr;
mod expand;
mod gates;

use crate::entry::Kind;

/// `#[flow]`.
pub(crate) const FLOW: Kind<attr::FlowAttr> = Kind {
    name: "flow",
    run_name_option: "flow_run_name",
    parse: attr::parse,
    check: attr::check,
    common: |attr| &attr.common,
    expand: expand::expand,
};

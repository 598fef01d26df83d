//! `#[task]`: options in `attr`, code in `expand`.

mod attr;
mod expand;
pub(crate) mod results;

use crate::entry::Kind;

/// `#[task]`.
pub(crate) const TASK: Kind<attr::TaskAttr> = Kind {
    name: "task",
    run_name_option: "task_run_name",
    parse: attr::parse,
    check: attr::check,
    common: |attr| &attr.common,
    expand: expand::expand,
};

//! Run names from `task_run_name` templates: how a call's argument shows
//! in its run's name.

use std::fmt;

use crate::task::input::Input;

/// Shows an argument of a call in a `task_run_name` template: a value as
/// its `Display`; a future (the name is given when the call is made, before
/// the upstream run is final) as the upstream run's name.
pub struct InputDisplay<'a, A: Send + 'static>(pub &'a Input<A>);

impl<A: fmt::Display + Send + 'static> fmt::Display for InputDisplay<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Input::Value(v) => v.fmt(f),
            other => {
                let mut ups = Vec::new();
                other.upstreams(&mut ups);
                let names: Vec<String> = ups.iter().map(|up| up.name()).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

impl<A: Send + 'static> fmt::Debug for InputDisplay<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

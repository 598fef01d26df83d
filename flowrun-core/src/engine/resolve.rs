//! The options of one run: a task's defaults, the annotation scopes around
//! the call and its per-call overrides, combined once when the run starts.

use std::borrow::Cow;
use std::time::Duration;

use std::sync::Arc;

use crate::run::hooks::{RetryCondition, TaskHooks};
use crate::run::record::RunRef;
use crate::task::annotations::{self, Annotations};
use crate::task::options::RetryPolicy;
use crate::task::{CallConfig, TaskMeta};

/// Options of one run after task defaults, annotation scopes and per-call
/// overrides are combined.
pub(super) struct Resolved {
    pub(super) name: Cow<'static, str>,
    pub(super) policy: Cow<'static, RetryPolicy>,
    pub(super) timeout: Option<Duration>,
    pub(super) annotations: Annotations,
    pub(super) wait_for: Vec<RunRef>,
    pub(super) error: Option<String>,
    /// `None` when the run has no hooks (most runs).
    pub(super) hooks: Option<Arc<TaskHooks>>,
    /// Some hooks were given per call (closures of this process).
    pub(super) hooks_from_call: bool,
    pub(super) retry_condition: Option<RetryCondition>,
}

pub(super) fn resolve(meta: &'static TaskMeta, config: &CallConfig) -> Resolved {
    let mut r = Resolved {
        name: Cow::Borrowed(meta.name),
        policy: Cow::Borrowed(&meta.policy),
        timeout: meta.timeout,
        annotations: annotations::current_if_any().unwrap_or_default(),
        wait_for: Vec::new(),
        error: meta
            .config_error
            .as_ref()
            .map(|e| format!("task '{}' has an invalid option: {e}", meta.name)),
        hooks: None,
        hooks_from_call: false,
        retry_condition: meta.retry_condition.clone(),
    };
    let mut hooks = std::borrow::Cow::Borrowed(&meta.hooks);
    if let Some(o) = config.get() {
        let opts = &o.options;
        if let Some(name) = &opts.shared.name {
            r.name = name.clone();
        }
        if opts.shared.retries.is_some()
            || opts.shared.retry_delay.is_some()
            || opts.retry_jitter_factor.is_some()
        {
            let p = r.policy.to_mut();
            if let Some(n) = opts.shared.retries {
                p.retries = n;
            }
            if let Some(d) = &opts.shared.retry_delay {
                p.delay = d.clone();
            }
            if let Some(j) = opts.retry_jitter_factor {
                p.jitter_factor = Some(j);
            }
            if let Err(e) = p.validate() {
                r.error.get_or_insert(format!("with_options: {e}"));
            }
        }
        if let Some(t) = opts.shared.timeout {
            r.timeout = t;
        }
        if o.explicit.priority {
            r.annotations.priority = opts.priority;
        }
        if o.explicit.resources {
            if let Some(res) = &opts.resources {
                if let Err(e) = res.validate() {
                    r.error.get_or_insert(format!("with_options: {e}"));
                }
            }
            r.annotations.resources = opts.resources.clone();
        }
        if let Some(e) = &opts.shared.results_error {
            r.error.get_or_insert(format!("with_options: {e}"));
        }
        r.wait_for = o.wait_for.clone();
        if let Some(c) = &opts.retry_condition {
            r.retry_condition = Some(c.clone());
        }
        if !opts.hooks.is_empty() {
            r.hooks_from_call = true;
            hooks = std::borrow::Cow::Owned(hooks.overridden_by(&opts.hooks));
        }
    }
    if !hooks.is_empty() {
        r.hooks = Some(Arc::new(hooks.into_owned()));
    }
    if let Some(res) = &r.annotations.resources {
        if let Err(e) = res.validate() {
            r.error.get_or_insert(format!("annotate: {e}"));
        }
    }
    r
}

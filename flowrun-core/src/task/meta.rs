//! The static description of a task ([`TaskMeta`]) and its builder, which
//! `#[task(...)]` options become; flows share the option setters.

use std::borrow::Cow;
use std::time::Duration;

use crate::task::convert::{IntoCount, IntoRetryDelay, IntoSeconds};
use crate::task::options::RetryPolicy;

/// The static description of a task, from its `#[task(...)]` options.
#[derive(Debug)]
pub struct TaskMeta {
    pub(crate) key: &'static str,
    pub(crate) name: &'static str,
    /// The name, shared by every run that does not override it.
    pub(crate) shared_name: std::sync::Arc<str>,
    pub(crate) description: Option<&'static str>,
    pub(crate) tags: Vec<Cow<'static, str>>,
    pub(crate) policy: RetryPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) is_async: bool,
    pub(crate) config_error: Option<String>,
    pub(crate) hooks: crate::run::hooks::TaskHooks,
    pub(crate) retry_condition: Option<crate::run::hooks::RetryCondition>,
    /// `persist_result`, `cache_policy` and the other result options.
    pub(crate) results: crate::cache::ResultOptions,
    /// The hash of the task's source tokens, from `#[task]`.
    pub(crate) source_hash: Option<&'static str>,
}

impl TaskMeta {
    /// Starts the description of the task registered under `key`, shown as `name`.
    pub fn builder(key: &'static str, name: &'static str) -> TaskMetaBuilder {
        TaskMetaBuilder {
            meta: TaskMeta {
                key,
                name,
                shared_name: std::sync::Arc::from(name),
                description: None,
                tags: Vec::new(),
                policy: RetryPolicy::default(),
                timeout: None,
                is_async: false,
                config_error: None,
                hooks: Default::default(),
                retry_condition: None,
                results: Default::default(),
                source_hash: None,
            },
        }
    }

    /// The registry key: `module::path::function`.
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The task name shown in run names and logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The description, from `description = "..."` or the doc comment.
    pub fn description(&self) -> Option<&'static str> {
        self.description
    }

    /// The tags.
    pub fn tags(&self) -> &[Cow<'static, str>] {
        &self.tags
    }

    /// Retries, retry delays and jitter.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The timeout of each attempt.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The task is an `async fn`.
    pub fn is_async(&self) -> bool {
        self.is_async
    }

    /// The hash of the task's source, computed by `#[task]` at compile
    /// time (the `TASK_SOURCE` cache policy); `None` for tasks not made
    /// by the macro.
    pub fn source_hash(&self) -> Option<&'static str> {
        self.source_hash
    }
}

/// Builds a [`TaskMeta`]; values that are invalid at run time are recorded
/// and make every run of the task fail with a message naming the option.
#[derive(Debug)]
#[must_use]
pub struct TaskMetaBuilder {
    meta: TaskMeta,
}

impl TaskMetaBuilder {
    /// `description = "..."`.
    pub fn description(mut self, description: &'static str) -> Self {
        self.meta.description = Some(description);
        self
    }

    /// `tags = [...]`.
    pub fn tags(mut self, tags: &[&'static str]) -> Self {
        self.meta.tags = tags.iter().map(|t| Cow::Borrowed(*t)).collect();
        self
    }

    /// `retry_jitter_factor = f`.
    pub fn retry_jitter_factor(mut self, factor: f64) -> Self {
        self.meta.policy.jitter_factor = Some(factor);
        self
    }

    /// The task is an `async fn`.
    pub fn is_async(mut self, is_async: bool) -> Self {
        self.meta.is_async = is_async;
        self
    }

    /// The hash of the task's source tokens (`#[task]` computes it).
    pub fn source_hash(mut self, hash: &'static str) -> Self {
        self.meta.source_hash = Some(hash);
        self
    }

    /// `persist_result`, `cache_policy`, `cache_key_fn`,
    /// `cache_expiration`, `refresh_cache`, `result_storage`,
    /// `result_storage_key`: the result options set on `options`. An
    /// invalid `result_storage_key` fails every run of the task.
    pub fn results(mut self, options: crate::task::options::TaskOptions) -> Self {
        if let Some(e) = options.shared.results_error {
            self.error(e);
        }
        self.meta.results = options.shared.results;
        self
    }

    /// `cache_expiration = seconds` (or a `Duration`): how long a cached
    /// result stays valid.
    pub fn cache_expiration(mut self, expiration: impl IntoSeconds) -> Self {
        match expiration.into_duration() {
            Ok(d) => self.meta.results.expiration = Some(d),
            Err(e) => self.error(format!("cache_expiration: {e}")),
        }
        self
    }

    /// `on_completion = [...]`, `on_failure`, `on_running`,
    /// `retry_condition_fn = f`: the hooks and the retry condition set on
    /// `options`.
    pub fn hooks(mut self, options: crate::task::options::TaskOptions) -> Self {
        self.meta.hooks = options.hooks;
        self.meta.retry_condition = options.retry_condition;
        self
    }
}

/// The options tasks and flows share, for their meta builders: a value
/// that is invalid at run time is recorded as the first configuration
/// error, which every run then fails with.
macro_rules! shared_meta_options {
    ($($builder:ty => $meta:ty),*) => {$(
        impl $builder {
            fn error(&mut self, message: String) {
                self.meta.config_error.get_or_insert(message);
            }

            /// `retries = n`.
            pub fn retries(mut self, retries: impl IntoCount) -> Self {
                match retries.into_count() {
                    Ok(n) => self.meta.policy.retries = n,
                    Err(e) => self.error(format!("retries: {e}")),
                }
                self
            }

            /// `retry_delay = ...` (seconds, a list of seconds,
            /// `exponential(...)`, or a `Duration`).
            pub fn retry_delay(mut self, delay: impl IntoRetryDelay) -> Self {
                match delay.into_retry_delay() {
                    Ok(d) => self.meta.policy.delay = d,
                    Err(e) => self.error(format!("retry_delay: {e}")),
                }
                self
            }

            /// `timeout = seconds` (or a `Duration`).
            pub fn timeout(mut self, timeout: impl IntoSeconds) -> Self {
                match timeout.into_duration() {
                    Ok(d) => self.meta.timeout = Some(d),
                    Err(e) => self.error(format!("timeout: {e}")),
                }
                self
            }

            /// The finished description.
            pub fn build(mut self) -> $meta {
                if let Err(e) = self.meta.policy.validate() {
                    self.error(e);
                }
                self.meta
            }
        }
    )*};
}
shared_meta_options!(
    TaskMetaBuilder => TaskMeta,
    crate::flow::meta::FlowMetaBuilder => crate::flow::meta::FlowMeta
);

//! What `#[flow]` generates code against: the [`Flow`] trait, the static
//! [`FlowMeta`] of each flow, and the per-call [`FlowConfig`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::run::error::TaskError;
use crate::runner::TaskRunner;
use crate::task::config::LazyBox;
use crate::task::options::{FlowOptions, RetryPolicy};
use crate::task::{Cloner, Invocation};

/// The static description of a flow, from its `#[flow(...)]` options.
#[derive(Debug)]
pub struct FlowMeta {
    pub(crate) name: String,
    pub(crate) description: Option<&'static str>,
    pub(crate) policy: RetryPolicy,
    pub(crate) timeout: Option<Duration>,
    pub(crate) config_error: Option<String>,
    pub(crate) hooks: crate::run::hooks::FlowHooks,
    /// Tag limits for the flow's runs, from `concurrency_limits = [...]`.
    pub(crate) concurrency_limits: Vec<(&'static str, u32)>,
    pub(crate) tags: Vec<Cow<'static, str>>,
    /// `history = ...`: `None` records as the parent flow run does.
    pub(crate) history: Option<bool>,
    /// `persist_result`, `result_storage`, `result_storage_key`.
    pub(crate) results: crate::cache::ResultOptions,
}

impl FlowMeta {
    /// Starts the description of the flow shown as `name`.
    pub fn builder(name: impl Into<String>) -> FlowMetaBuilder {
        FlowMetaBuilder {
            meta: FlowMeta {
                name: name.into(),
                description: None,
                policy: RetryPolicy::default(),
                timeout: None,
                config_error: None,
                hooks: Default::default(),
                concurrency_limits: Vec::new(),
                tags: Vec::new(),
                history: None,
                results: Default::default(),
            },
        }
    }

    /// The flow's name, such as `count-to`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The description.
    pub fn description(&self) -> Option<&'static str> {
        self.description
    }

    /// The tags of its runs.
    pub fn tags(&self) -> &[Cow<'static, str>] {
        &self.tags
    }
}

/// Builds a [`FlowMeta`].
#[derive(Debug)]
#[must_use]
pub struct FlowMetaBuilder {
    pub(crate) meta: FlowMeta,
}

impl FlowMetaBuilder {
    /// `description = "..."`.
    pub fn description(mut self, description: &'static str) -> Self {
        self.meta.description = Some(description);
        self
    }

    /// `persist_result`, `result_storage`, `result_storage_key`: the
    /// result options set on `options`.
    pub fn results(mut self, options: FlowOptions) -> Self {
        if let Some(e) = options.shared.results_error {
            self.meta.config_error.get_or_insert(e);
        }
        self.meta.results = options.shared.results;
        self
    }

    /// `on_completion = [...]`, `on_failure`, `on_crashed`,
    /// `on_cancellation`, `on_running`: the flow's hooks.
    pub fn hooks(mut self, options: FlowOptions) -> Self {
        self.meta.hooks = options.hooks;
        self
    }

    /// `concurrency_limits = [("db", 3)]`: at most 3 runs tagged `db` of
    /// each run of this flow (and its subflows) running at once. A limit of
    /// 0 makes the flow invalid: it would block those runs forever.
    pub fn concurrency_limits(mut self, limits: &[(&'static str, u32)]) -> Self {
        for &(tag, slots) in limits {
            if slots == 0 && self.meta.config_error.is_none() {
                self.meta.config_error = Some(format!(
                    "concurrency_limits: the limit of tag '{tag}' is 0, which would block every \
                     run tagged '{tag}' forever; allow at least 1 slot or remove it"
                ));
            }
        }
        self.meta.concurrency_limits = limits.to_vec();
        self
    }

    /// `tags = [...]`.
    pub fn tags(mut self, tags: &[&'static str]) -> Self {
        self.meta.tags = tags.iter().map(|t| Cow::Borrowed(*t)).collect();
        self
    }

    /// `history = false`: the run history does not record its runs.
    pub fn history(mut self, record: bool) -> Self {
        self.meta.history = Some(record);
        self
    }
}

/// A flow: the type `#[flow]` generates for a function.
pub trait Flow: Sized + Send + Sync + 'static {
    /// The tuple of argument types.
    type Args: Send + 'static;
    /// The function's declared return type.
    type Raw: Send + 'static;
    /// The value of a completed flow run.
    type Output: Send + 'static;

    /// The flow's static description.
    fn meta() -> &'static FlowMeta;

    /// Calls the function.
    fn invoke(args: Self::Args) -> Invocation<Self::Raw>;

    /// Splits a return value into the flow run's value or its failure.
    fn outcome(raw: Self::Raw) -> Result<Self::Output, TaskError>;

    /// The runner from `task_runner = ...`, or the default thread pool.
    fn default_runner() -> Box<dyn TaskRunner>;

    /// Clones the arguments for flow retries, when they are `Clone`.
    fn args_clone() -> Option<Cloner<Self::Args>>;

    /// The per-call overrides carried by this handle.
    fn config(&self) -> &FlowConfig;

    /// The name of a run with these arguments, from `flow_run_name`;
    /// `None` for a random `adjective-animal`.
    fn run_name(args: &Self::Args) -> Option<String> {
        let _ = args;
        None
    }

    /// The arguments by parameter name, each as JSON text, or `None` for
    /// one whose type is not `Serialize` (for the run history).
    fn parameters(args: &Self::Args) -> Vec<(&'static str, Option<String>)> {
        let _ = args;
        Vec::new()
    }

    /// A hash of the run's parameters, for the `FLOW_PARAMETERS` cache
    /// policy of its tasks, or why there is none. `#[flow]` hashes the
    /// serialized arguments when they implement serde's `Serialize`.
    fn parameters_key(args: &Self::Args) -> Result<String, String> {
        let _ = args;
        Err("cannot be serialized".to_owned())
    }

    /// Serializes the flow's value for `persist_result`; `None` when its
    /// type cannot be serialized.
    fn output_encoder() -> Option<crate::task::Encoder<Self::Output>> {
        None
    }
}

/// Per-handle overrides of a flow: options and the task runner.
#[derive(Clone, Default)]
#[must_use]
pub struct FlowConfig {
    pub(crate) inner: LazyBox<FlowOverrides>,
}

type RunnerFactory = Arc<dyn Fn() -> Box<dyn TaskRunner> + Send + Sync>;

#[derive(Clone, Default)]
pub(crate) struct FlowOverrides {
    pub(crate) options: FlowOptions,
    pub(crate) runner: Option<RunnerFactory>,
}

impl FlowConfig {
    /// No overrides.
    pub const NONE: FlowConfig = FlowConfig {
        inner: LazyBox::NONE,
    };

    /// Adds `options` on top of earlier overrides.
    pub fn with_options(mut self, options: FlowOptions) -> FlowConfig {
        let o = self.inner.make_mut();
        o.options = std::mem::take(&mut o.options).overridden_by(options);
        self
    }

    /// Runs the flow's tasks on a copy of `runner` for each flow run.
    pub fn with_runner<R: TaskRunner + Clone>(mut self, runner: R) -> FlowConfig {
        self.inner.make_mut().runner = Some(Arc::new(move || Box::new(runner.clone())));
        self
    }
}

impl std::fmt::Debug for FlowConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = self.inner.get();
        f.debug_struct("FlowConfig")
            .field("options", &o.map(|o| &o.options))
            .field("runner", &o.is_some_and(|o| o.runner.is_some()))
            .finish()
    }
}

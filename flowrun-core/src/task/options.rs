//! Options of tasks and flows: retries, retry delays, timeouts, tags,
//! priority and resources, as set by the macros and overridden per call.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::run::error::TaskError;
use crate::run::hooks::{FlowHooks, Hook, HookResult, RetryCondition, TaskHooks};
use crate::run::record::RunRef;
use crate::run::state::State;
use crate::runner::FlowRunInfo;

/// Adds the methods that add a hook of each kind named, in an `impl` of
/// options whose hooks take `$run` (a `RunRef` or a `FlowRunInfo`) and the
/// state; each method's docs come first, as on a method.
macro_rules! hook_adders {
    ($run:ty: $($(#[$doc:meta])* $kind:ident,)*) => {$(
        $(#[$doc])*
        pub fn $kind<O: HookResult>(
            mut self,
            hook: impl Fn(&$run, &State) -> O + Send + Sync + 'static,
        ) -> Self {
            self.hooks.$kind.push(Hook::new(hook));
            self
        }
    )*};
}

/// How long to wait before each retry.
///
/// ```
/// use std::time::Duration;
/// use flowrun_core::RetryDelay;
/// let backoff = RetryDelay::exponential(Duration::from_secs(1));
/// assert_eq!(backoff.delay_before(1), Duration::from_secs(1));
/// assert_eq!(backoff.delay_before(3), Duration::from_secs(4));
/// let listed = RetryDelay::sequence([1.0, 5.0]);
/// assert_eq!(listed.delay_before(4), Duration::from_secs(5)); // the last one repeats
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum RetryDelay {
    /// The same delay before every retry.
    Fixed(Duration),
    /// One delay per retry; the last one repeats when there are more retries.
    Sequence(Vec<Duration>),
    /// `base`, then `base * factor`, `base * factor^2`, ..., capped at `max`.
    Exponential {
        /// The first delay.
        base: Duration,
        /// The growth factor (at least 1).
        factor: f64,
        /// The largest delay.
        max: Option<Duration>,
    },
}

impl RetryDelay {
    /// No delay.
    pub const NONE: RetryDelay = RetryDelay::Fixed(Duration::ZERO);

    /// The same delay of `seconds` before every retry.
    pub fn seconds(seconds: f64) -> RetryDelay {
        RetryDelay::Fixed(secs(seconds))
    }

    /// One delay per retry, in seconds.
    pub fn sequence(seconds: impl IntoIterator<Item = f64>) -> RetryDelay {
        RetryDelay::Sequence(seconds.into_iter().map(secs).collect())
    }

    /// Delays that double from `base`: `base`, `2 base`, `4 base`, ...
    pub fn exponential(base: Duration) -> RetryDelay {
        RetryDelay::Exponential {
            base,
            factor: 2.0,
            max: None,
        }
    }

    /// The delay before retry number `retry` (1 for the first retry).
    pub fn delay_before(&self, retry: u32) -> Duration {
        let index = retry.saturating_sub(1);
        match self {
            RetryDelay::Fixed(d) => *d,
            RetryDelay::Sequence(list) => list
                .get(index as usize)
                .or(list.last())
                .copied()
                .unwrap_or_default(),
            RetryDelay::Exponential { base, factor, max } => {
                let grown = base.as_secs_f64() * factor.max(1.0).powi(index.min(1000) as i32);
                let d = Duration::try_from_secs_f64(grown).unwrap_or(Duration::MAX);
                match max {
                    Some(m) => d.min(*m),
                    None => d,
                }
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if let RetryDelay::Exponential { factor, .. } = self {
            if !(factor.is_finite() && *factor >= 1.0) {
                return Err(format!(
                    "retry_delay: the exponential factor must be a finite number >= 1, got {factor}"
                ));
            }
        }
        Ok(())
    }
}

impl Default for RetryDelay {
    fn default() -> Self {
        RetryDelay::NONE
    }
}

fn secs(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
}

/// Everything that decides whether and when a failed attempt is retried.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryPolicy {
    /// How many times a failed run is retried (0: never).
    pub retries: u32,
    /// The delay before each retry.
    pub delay: RetryDelay,
    /// Spreads retries out: each delay is drawn uniformly from
    /// `[delay, delay * (1 + jitter_factor)]`.
    pub jitter_factor: Option<f64>,
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based), jitter included.
    pub fn delay_before(&self, retry: u32) -> Duration {
        let base = self.delay.delay_before(retry);
        match self.jitter_factor {
            Some(j) if j > 0.0 && !base.is_zero() => {
                let spread = 1.0 + fastrand::f64() * j;
                Duration::try_from_secs_f64(base.as_secs_f64() * spread).unwrap_or(base)
            }
            _ => base,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.delay.validate()?;
        if let Some(j) = self.jitter_factor {
            if !(j.is_finite() && j >= 0.0) {
                return Err(format!(
                    "retry_jitter_factor must be a finite number >= 0, got {j}"
                ));
            }
        }
        Ok(())
    }
}

/// Abstract resources a task needs while it runs, or a worker offers, such
/// as `{"GPU": 1}`. Amounts are not checked against the real machine: they
/// are counters the scheduler keeps.
///
/// ```
/// use flowrun_core::Resources;
/// let needs = Resources::new().with("GPU", 1.0);
/// let offers = Resources::from([("GPU", 2.0), ("MEMORY", 8e9)]);
/// assert!(offers.covers(&needs));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources(BTreeMap<String, f64>);

impl Resources {
    /// No resources.
    pub fn new() -> Resources {
        Resources::default()
    }

    /// The same set with `amount` of `name`.
    pub fn with(mut self, name: impl Into<String>, amount: f64) -> Resources {
        self.0.insert(name.into(), amount);
        self
    }

    /// Adds or replaces `amount` of `name`.
    pub fn insert(&mut self, name: impl Into<String>, amount: f64) {
        self.0.insert(name.into(), amount);
    }

    /// The amount of `name`, if present.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// There are no resources in the set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The resources, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Every amount in `needs` is available here.
    pub fn covers(&self, needs: &Resources) -> bool {
        needs
            .iter()
            .all(|(name, amount)| self.get(name).is_some_and(|have| have + 1e-9 >= amount))
    }

    /// Checks that every amount is a finite number >= 0.
    pub fn validate(&self) -> Result<(), String> {
        for (name, amount) in self.iter() {
            if name.is_empty() {
                return Err("a resource name must not be empty".into());
            }
            if !(amount.is_finite() && amount >= 0.0) {
                return Err(format!(
                    "resource '{name}' must be a finite amount >= 0, got {amount}"
                ));
            }
        }
        Ok(())
    }
}

impl<K: Into<String>, const N: usize> From<[(K, f64); N]> for Resources {
    fn from(items: [(K, f64); N]) -> Self {
        Resources(items.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl<K: Into<String>> FromIterator<(K, f64)> for Resources {
    fn from_iter<I: IntoIterator<Item = (K, f64)>>(iter: I) -> Self {
        Resources(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "\"{k}\": {v}")?;
        }
        f.write_str("}")
    }
}

/// Options for one call of a task, given with `.with_options(...)`.
/// Only the options set here override the task's own options and any
/// enclosing annotation scope.
///
/// ```
/// use std::time::Duration;
/// use flowrun_core::TaskOptions;
/// let options = TaskOptions::new()
///     .name("shout-loudly")
///     .retries(2)
///     .timeout(Duration::from_secs(5))
///     .priority(10);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct TaskOptions {
    pub(crate) shared: SharedOptions,
    pub(crate) retry_jitter_factor: Option<f64>,
    pub(crate) priority: Option<i64>,
    pub(crate) resources: Option<Resources>,
    pub(crate) retry_condition: Option<RetryCondition>,
    pub(crate) hooks: TaskHooks,
}

/// The overrides task runs and flow runs share.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedOptions {
    pub(crate) name: Option<Cow<'static, str>>,
    pub(crate) retries: Option<u32>,
    pub(crate) retry_delay: Option<RetryDelay>,
    pub(crate) timeout: Option<Option<Duration>>,
    pub(crate) tags: Option<Vec<Cow<'static, str>>>,
    pub(crate) results: crate::cache::ResultOptions,
    /// Why `result_storage_key` was refused, reported when a run starts.
    pub(crate) results_error: Option<String>,
}

impl TaskOptions {
    /// These options, with those `over` sets replacing them.
    pub(crate) fn overridden_by(self, over: TaskOptions) -> TaskOptions {
        TaskOptions {
            shared: self.shared.overridden_by(over.shared),
            retry_jitter_factor: over.retry_jitter_factor.or(self.retry_jitter_factor),
            priority: over.priority.or(self.priority),
            resources: over.resources.or(self.resources),
            retry_condition: over.retry_condition.or(self.retry_condition),
            hooks: self.hooks.overridden_by(&over.hooks),
        }
    }
}

impl FlowOptions {
    /// These options, with those `over` sets replacing them.
    pub(crate) fn overridden_by(self, over: FlowOptions) -> FlowOptions {
        FlowOptions {
            shared: self.shared.overridden_by(over.shared),
            run_name: over.run_name.or(self.run_name),
            hooks: self.hooks.overridden_by(&over.hooks),
            history: over.history.or(self.history),
        }
    }
}

impl SharedOptions {
    /// These options, with those `over` sets replacing them.
    pub(crate) fn overridden_by(self, over: SharedOptions) -> SharedOptions {
        SharedOptions {
            name: over.name.or(self.name),
            retries: over.retries.or(self.retries),
            retry_delay: over.retry_delay.or(self.retry_delay),
            timeout: over.timeout.or(self.timeout),
            tags: over.tags.or(self.tags),
            results: self.results.overridden_by(&over.results),
            results_error: over.results_error.or(self.results_error),
        }
    }
}

impl TaskOptions {
    /// No overrides.
    pub fn new() -> TaskOptions {
        TaskOptions::default()
    }

    /// Random spread of retry delays (see [`RetryPolicy::jitter_factor`]).
    pub fn retry_jitter_factor(mut self, factor: f64) -> Self {
        self.retry_jitter_factor = Some(factor);
        self
    }

    /// Removes the task's timeout for these runs.
    pub fn no_timeout(mut self) -> Self {
        self.shared.timeout = Some(None);
        self
    }

    crate::__setters! {
        /// Scheduling priority: higher runs first on runners that order work.
        pub fn priority(priority: i64) => priority = Some(priority);

        /// Abstract resources each run holds while it runs (see [`Resources`]).
        pub fn resources(resources: impl Into<Resources>) => resources = Some(resources.into());
    }

    /// Decides, from the run and the error of a failed attempt, whether the
    /// attempt is retried while retries remain (Prefect's
    /// `retry_condition_fn`). A condition that panics declines the retry.
    ///
    /// ```
    /// use flowrun_core::{TaskErrorKind, TaskOptions};
    /// // Retry what the task returned as an error, never a timeout.
    /// let options = TaskOptions::new()
    ///     .retries(3)
    ///     .retry_condition_fn(|_run, error| *error.kind() != TaskErrorKind::TimedOut);
    /// # let _ = options;
    /// ```
    pub fn retry_condition_fn(
        mut self,
        condition: impl Fn(&RunRef, &TaskError) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retry_condition = Some(RetryCondition::new(condition));
        self
    }

    crate::__setters! {
        /// Writes the result to result storage (`true`), or neither persists
        /// nor caches it (`false`). See [`crate::cache`].
        pub fn persist_result(persist: bool) => shared.results.persist = Some(persist);

        /// What the cache key is made of: `CachePolicy::INPUTS +
        /// CachePolicy::TASK_SOURCE`, ... ([`CachePolicy::NONE`](crate::cache::CachePolicy::NONE)
        /// turns caching off). Caching implies persistence.
        ///
        /// ```
        /// use flowrun_core::cache::CachePolicy;
        /// use flowrun_core::TaskOptions;
        /// let options = TaskOptions::new().cache_policy(CachePolicy::INPUTS + CachePolicy::TASK_SOURCE);
        /// # let _ = options;
        /// ```
        pub fn cache_policy(policy: crate::cache::CachePolicy) => shared.results.policy = Some(policy);
    }

    /// Computes the cache key from the run's context and arguments
    /// instead of a policy; `None` means the run is not cached.
    ///
    /// ```
    /// use flowrun_core::TaskOptions;
    /// let options = TaskOptions::new().cache_key_fn(|ctx| ctx.input::<String>(0));
    /// # let _ = options;
    /// ```
    pub fn cache_key_fn(
        mut self,
        f: impl Fn(&crate::cache::CacheKeyContext<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.shared.results.key_fn = Some(crate::cache::CacheKeyFn::new(f));
        self
    }

    crate::__setters! {
        /// How long a cached result stays valid.
        pub fn cache_expiration(expiration: Duration) => shared.results.expiration = Some(expiration);

        /// Executes even when a cached result exists, and replaces it.
        pub fn refresh_cache(refresh: bool) => shared.results.refresh = Some(refresh);
    }

    hook_adders! {
        RunRef:
        /// Adds a hook called with the run and its state when the run
        /// completes. It returns `()` or a `Result`; one that panics or returns
        /// `Err` is logged and changes nothing. Hooks given per call replace
        /// the task's own hooks of the same kind.
        ///
        /// ```
        /// use flowrun_core::{RunRef, State, TaskOptions};
        ///
        /// fn announce(run: &RunRef, state: &State) {
        ///     println!("{} ended {state}", run.name());
        /// }
        ///
        /// let options = TaskOptions::new()
        ///     .on_completion(announce)
        ///     .on_failure(|run: &RunRef, _state: &State| -> Result<(), String> {
        ///         Err(format!("paging nobody about {}", run.name()))
        ///     });
        /// # let _ = options;
        /// ```
        on_completion,
        /// Adds a hook called when the run ends in any state but Completed
        /// (Failed, Crashed, Cancelled), after its last retry. See
        /// [`on_completion`](TaskOptions::on_completion).
        on_failure,
        /// Adds a hook called when an attempt of the run starts running, on
        /// the thread runner in the thread that runs it, on the local cluster
        /// in the flow process when the worker reports the start.
        on_running,
    }
}

/// Options for one call of a flow, given with `.with_options(...)`.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct FlowOptions {
    pub(crate) shared: SharedOptions,
    pub(crate) run_name: Option<String>,
    pub(crate) hooks: FlowHooks,
    pub(crate) history: Option<bool>,
}

impl FlowOptions {
    /// No overrides.
    pub fn new() -> FlowOptions {
        FlowOptions::default()
    }

    crate::__setters! {
        /// Writes the flow run's value to result storage when it completes
        /// (its type must implement serde's `Serialize`); see
        /// [`crate::cache`]. The file is named `{flow.name}-{flow_run.id}`
        /// unless [`result_storage_key`](FlowOptions::result_storage_key)
        /// names it.
        ///
        /// ```
        /// use flowrun_core::FlowOptions;
        /// let options = FlowOptions::new()
        ///     .persist_result(true)
        ///     .result_storage(std::env::temp_dir().join("flow-results"))
        ///     .result_storage_key("{flow.name}-latest");
        /// # let _ = options;
        /// ```
        pub fn persist_result(persist: bool) => shared.results.persist = Some(persist);

        /// The name of this flow run (by default a random `adjective-animal`).
        pub fn run_name(name: impl Into<String>) => run_name = Some(name.into());

        /// Whether the run history records these flow runs (and their
        /// subflows that do not say otherwise); overrides the flow's
        /// `history` option. `FLOWRUN_HISTORY=off` turns recording off for
        /// every flow whatever this says.
        pub fn history(record: bool) => history = Some(record);
    }

    hook_adders! {
        FlowRunInfo:
        /// Adds a hook called with the flow run and its final state when it
        /// completes. It returns `()` or a `Result`; one that panics or returns
        /// `Err` is logged and changes nothing. Hooks given per call replace
        /// the flow's own hooks of the same kind.
        ///
        /// ```
        /// use flowrun_core::{FlowOptions, FlowRunInfo, State};
        /// let options = FlowOptions::new()
        ///     .on_completion(|run: &FlowRunInfo, state: &State| {
        ///         println!("{} ended {state}", run.flow_run_name);
        ///     })
        ///     .on_failure(|run: &FlowRunInfo, _: &State| -> Result<(), String> {
        ///         Err(format!("could not page anyone about {}", run.flow_run_name))
        ///     });
        /// # let _ = options;
        /// ```
        on_completion,
        /// Adds a hook called when the flow run ends Failed.
        on_failure,
        /// Adds a hook called when the flow run ends Crashed: its task runner
        /// could not start.
        on_crashed,
        /// Adds a hook called when the flow run ends Cancelled: the future of
        /// an async flow was dropped before it finished.
        on_cancellation,
        /// Adds a hook called when the flow run starts running (once, before
        /// its first attempt).
        on_running,
    }
}

/// The overrides task runs and flow runs share.
macro_rules! shared_options {
    ($($options:ty),*) => {$(
        impl $options {
            crate::__setters! {
                /// The name shown in logs (task runs are named `<name>-<n>`).
                pub fn name(name: impl Into<Cow<'static, str>>) => shared.name = Some(name.into());

                /// How many times a failed run is retried.
                pub fn retries(retries: u32) => shared.retries = Some(retries);

                /// The delay before each retry.
                pub fn retry_delay(delay: RetryDelay) => shared.retry_delay = Some(delay);

                /// A run (each attempt of a task run) fails as timed out after
                /// `timeout`.
                pub fn timeout(timeout: Duration) => shared.timeout = Some(Some(timeout));
            }

            /// Tags of these runs, replacing the task's or the flow's own
            /// `tags` (a flow run's tags are kept in the run history).
            pub fn tags<I, S>(mut self, tags: I) -> Self
            where
                I: IntoIterator<Item = S>,
                S: Into<Cow<'static, str>>,
            {
                self.shared.tags = Some(tags.into_iter().map(Into::into).collect());
                self
            }

            /// The folder results are written to (by default
            /// `$FLOWRUN_HOME/storage`).
            pub fn result_storage(mut self, dir: impl AsRef<std::path::Path>) -> Self {
                self.shared.results.storage = Some(crate::cache::ResultStorage::new(dir));
                self
            }

            /// The name of the result file, from a template such as
            /// `"{flow.name}-{task_run.name}"` (see
            /// [`KeyTemplate`](crate::cache::KeyTemplate); for a flow run,
            /// `{task_run.name}` and `{task.name}` stand for the flow run's
            /// and the flow's names). An invalid template fails the runs
            /// with a message naming it.
            pub fn result_storage_key(mut self, template: &str) -> Self {
                match crate::cache::KeyTemplate::parse(template) {
                    Ok(t) => self.shared.results.template = Some(t),
                    Err(e) => {
                        self.shared.results_error.get_or_insert(e);
                    }
                }
                self
            }
        }
    )*};
}
shared_options!(TaskOptions, FlowOptions);

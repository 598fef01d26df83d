//! Persisted results and caching, as Prefect 3 users know them (Prefect's
//! `results` and `cache_policies` modules).
//!
//! A task with `persist_result = true` writes its result, in its codec, to
//! [`ResultStorage`] (a folder: `$FLOWRUN_HOME/storage/` unless
//! `result_storage` names another), in a file named by its cache key or by
//! its `result_storage_key` template. A task with a [`CachePolicy`] (or a
//! `cache_key_fn`) first looks its key up there: a whole, unexpired result
//! completes the run at once in a `Completed` state named `Cached`, and the
//! task does not execute. Caching implies persistence; `persist_result =
//! false` turns both off. Direct calls (`f(x)`) are cached and persisted as
//! submitted runs are. A task that does not set `persist_result` follows
//! its flow run's (and uses its flow's `result_storage` when it names
//! none), as in Prefect 3.
//!
//! A key that cannot be computed (an argument that cannot be serialized,
//! a flow whose parameters cannot be) means no caching for that call, with
//! one warning. A result file that is missing, expired or corrupt under a
//! cached key means the task executes again (with a warning when the file
//! is corrupt, or was deleted after a result was stored under the key) and
//! the file is rewritten. A run whose key hashes an upstream run's cached
//! result hashes that run's key and the version of its result (chosen when
//! the result is computed, stored with it): an upstream that executes
//! again under the same key changes the keys downstream of it.
//!
//! Files are written to a temporary name and renamed into place, so a
//! process killed while writing never leaves a file that reads as a hit;
//! reading takes no lock, so any number of processes may share a folder.
//! A flow rerun with a policy that spans runs (no `RUN_ID`) therefore
//! resumes: every task that completed before executes no more.
//!
//! ```
//! use flowrun_core::cache::CachePolicy;
//! use flowrun_core::TaskOptions;
//! use std::time::Duration;
//! let options = TaskOptions::new()
//!     .cache_policy(CachePolicy::INPUTS + CachePolicy::TASK_SOURCE)
//!     .cache_expiration(Duration::from_secs(3600))
//!     .result_storage(std::env::temp_dir().join("my-results"));
//! # let _ = options;
//! ```

mod key;
mod policy;
pub(crate) mod serialized;
mod storage;

#[doc(hidden)]
pub use key::{key_text_of_input, key_text_of_value};
pub use key::{CacheKeyContext, CacheKeyFn, KeyTemplate, TEMPLATE_PLACEHOLDERS};
pub use policy::CachePolicy;
pub(crate) use storage::Version;
pub use storage::{Lookup, ResultInfo, ResultStorage, StorageError};

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::flow::registry::FlowShared;
use crate::run::error::{TaskError, TaskErrorKind};
use crate::task::args::ArgSlot;
use crate::task::TaskMeta;
use key::{KeyHasher, ParameterText, TemplateValues};

/// The environment variable that turns result persistence on for every
/// task that does not say otherwise (`true`/`1`/`on`), as Prefect's
/// `PREFECT_RESULTS_PERSIST_BY_DEFAULT` does.
pub const PERSIST_RESULTS_ENV: &str = "FLOWRUN_PERSIST_RESULTS";

// 0: unset (read the environment), 1: off, 2: on.
static PERSIST_DEFAULT: AtomicU8 = AtomicU8::new(0);
static DEFAULT_STORAGE: Mutex<Option<ResultStorage>> = Mutex::new(None);

/// Sets whether tasks that do not set `persist_result` persist their
/// results (and cache them with [`CachePolicy::DEFAULT`]), in this process.
/// Overrides `FLOWRUN_PERSIST_RESULTS`.
///
/// ```
/// flowrun_core::cache::set_persist_results(false);
/// assert!(!flowrun_core::cache::persist_results());
/// ```
pub fn set_persist_results(on: bool) {
    PERSIST_DEFAULT.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether tasks persist their results when they do not say
/// (see [`set_persist_results`]; off by default, as in Prefect).
pub fn persist_results() -> bool {
    match PERSIST_DEFAULT.load(Ordering::Relaxed) {
        0 => {
            static ENV: OnceLock<bool> = OnceLock::new();
            *ENV.get_or_init(|| {
                std::env::var(PERSIST_RESULTS_ENV).is_ok_and(|v| {
                    matches!(
                        v.trim().to_ascii_lowercase().as_str(),
                        "1" | "true" | "on" | "yes"
                    )
                })
            })
        }
        v => v == 2,
    }
}

/// Sets the storage of tasks that do not set `result_storage`, in this
/// process, over every home (by default `storage/` under the flow run's
/// home, see [`crate::home`]).
pub fn set_default_storage(storage: ResultStorage) {
    *crate::plumbing::lock(&DEFAULT_STORAGE) = Some(storage);
}

/// The storage of tasks that do not set `result_storage`, for a flow run
/// starting on this thread: [`set_default_storage`]'s if it chose one, else
/// `storage/` under the home of this thread or of the flow run it works
/// for ([`crate::home`]), else `$FLOWRUN_HOME/storage`
/// (`~/.flowrun/storage` without `FLOWRUN_HOME`).
pub fn default_storage() -> ResultStorage {
    if let Some(s) = set_storage() {
        return s;
    }
    if let Some(home) = crate::home::thread_home() {
        return ResultStorage::new(home.join("storage"));
    }
    if let Some(flow) = crate::exec::context::current_flow() {
        if let Some(home) = &flow.home {
            return home_storage(&flow, home);
        }
    }
    process_storage()
}

fn set_storage() -> Option<ResultStorage> {
    crate::plumbing::lock(&DEFAULT_STORAGE).clone()
}

/// `storage/` under the home the process names: `$FLOWRUN_HOME`, else
/// `~/.flowrun`.
fn process_storage() -> ResultStorage {
    static FROM_ENV: OnceLock<ResultStorage> = OnceLock::new();
    FROM_ENV
        .get_or_init(|| {
            let home = std::env::var_os("FLOWRUN_HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .filter(|h| !h.is_empty())
                        .map(|h| PathBuf::from(h).join(".flowrun"))
                })
                .unwrap_or_else(|| std::env::temp_dir().join("flowrun"));
            ResultStorage::new(home.join("storage"))
        })
        .clone()
}

fn home_storage(flow: &FlowShared, home: &std::path::Path) -> ResultStorage {
    flow.home_storage
        .get_or_init(|| ResultStorage::new(home.join("storage")))
        .clone()
}

/// The storage of the task runs of `flow` that name no `result_storage`
/// and inherit none: [`set_default_storage`]'s, else `storage/` under the
/// flow run's home, else the default of the thread asking (the flow of
/// task runs outside any flow has no home of its own).
fn default_storage_of(flow: &FlowShared) -> ResultStorage {
    if let Some(s) = set_storage() {
        return s;
    }
    match &flow.home {
        Some(home) => home_storage(flow, home),
        None => default_storage(),
    }
}

/// The result and cache options of a task or of one call.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResultOptions {
    pub(crate) persist: Option<bool>,
    pub(crate) policy: Option<CachePolicy>,
    pub(crate) key_fn: Option<CacheKeyFn>,
    pub(crate) expiration: Option<Duration>,
    pub(crate) refresh: Option<bool>,
    pub(crate) storage: Option<ResultStorage>,
    pub(crate) template: Option<KeyTemplate>,
}

impl ResultOptions {
    /// These options, with those `over` sets replacing them.
    pub(crate) fn overridden_by(&self, over: &ResultOptions) -> ResultOptions {
        ResultOptions {
            persist: over.persist.or(self.persist),
            policy: over.policy.or(self.policy),
            key_fn: over.key_fn.clone().or_else(|| self.key_fn.clone()),
            expiration: over.expiration.or(self.expiration),
            refresh: over.refresh.or(self.refresh),
            storage: over.storage.clone().or_else(|| self.storage.clone()),
            template: over.template.clone().or_else(|| self.template.clone()),
        }
    }

    /// An item's options for one call: its own, with those the call sets
    /// (`with_options`) replacing them.
    fn for_call<'a>(&'a self, call: Option<&ResultOptions>) -> Cow<'a, ResultOptions> {
        match call {
            Some(c) if !c.is_empty() => Cow::Owned(self.overridden_by(c)),
            _ => Cow::Borrowed(self),
        }
    }

    fn is_empty(&self) -> bool {
        self.persist.is_none()
            && self.policy.is_none()
            && self.key_fn.is_none()
            && self.expiration.is_none()
            && self.refresh.is_none()
            && self.storage.is_none()
            && self.template.is_none()
    }
}

/// What the task runs of a flow run inherit from it, as in Prefect: a task
/// that does not set `persist_result` (and asks for no caching) persists
/// when its flow run does, and does not when its flow run says
/// `persist_result = false`; a task that names no `result_storage` uses
/// its flow run's. A subflow that sets neither inherits its parent's.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inherited {
    persist: Option<bool>,
    storage: Option<ResultStorage>,
}

/// What a flow run's task runs inherit from its options (`flow`, with the
/// call's `call` over them) and its parent flow run's.
pub(crate) fn inherited(
    flow: &ResultOptions,
    call: Option<&ResultOptions>,
    parent: Option<&FlowShared>,
) -> Inherited {
    let from_parent = parent.and_then(|p| p.results.get());
    let persist = call
        .and_then(|c| c.persist)
        .or(flow.persist)
        .or_else(|| from_parent.and_then(|p| p.persist));
    let storage = call
        .and_then(|c| c.storage.clone())
        .or_else(|| flow.storage.clone())
        .or_else(|| from_parent.and_then(|p| p.storage.clone()));
    Inherited { persist, storage }
}

/// What a run does with its result: where it is stored, and how it is
/// looked up first.
#[derive(Debug)]
pub(crate) struct Plan {
    storage: ResultStorage,
    /// NONE: persisted, never looked up.
    policy: CachePolicy,
    key_fn: Option<CacheKeyFn>,
    expiration: Option<Duration>,
    refresh: bool,
    template: Option<KeyTemplate>,
}

impl Plan {
    /// The cache key hashes the run's arguments.
    pub(crate) fn hashes_inputs(&self) -> bool {
        self.key_fn.is_some() || self.policy.contains(CachePolicy::INPUTS)
    }
}

/// The plan of a run of the task `meta` with the call's options, in the
/// flow run `flow`, or `None` when the result is not persisted.
/// `has_codec`: the result can be serialized (a default, from the flow run
/// or the environment, skips the tasks whose result cannot be).
pub(crate) fn plan(
    meta: &TaskMeta,
    call: Option<&ResultOptions>,
    flow: &FlowShared,
    has_codec: bool,
) -> Option<Box<Plan>> {
    let o = meta.results.for_call(call);
    let o = &*o;
    if o.persist == Some(false) {
        return None;
    }
    let asked = o.persist == Some(true)
        || o.policy.is_some_and(|p| !p.is_none())
        || o.key_fn.is_some()
        || o.template.is_some();
    let inherited = flow.results.get();
    if !asked {
        // Not set on the task: its flow run's setting, else the process's.
        let default = inherited
            .and_then(|i| i.persist)
            .unwrap_or_else(persist_results);
        if !(default && has_codec) {
            return None;
        }
    }
    let storage = match (&o.storage, inherited.and_then(|i| i.storage.as_ref())) {
        (Some(s), _) | (None, Some(s)) => s.clone(),
        (None, None) => default_storage_of(flow),
    };
    Some(Box::new(Plan {
        storage,
        policy: o.policy.unwrap_or(CachePolicy::DEFAULT),
        key_fn: o.key_fn.clone(),
        expiration: o.expiration,
        refresh: o.refresh.unwrap_or(false),
        template: o.template.clone(),
    }))
}

/// Where a run's result goes, once its key is known.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) storage: ResultStorage,
    pub(crate) cache_key: Option<String>,
    pub(crate) file: String,
    /// The version the result is written with (see [`CacheId`]).
    pub(crate) version: Version,
    pub(crate) expiration: Option<Duration>,
}

/// What a run whose key hashes this run's result hashes: its cache key and
/// the version of its result (the stored one's on a hit, a new one when it
/// executes), so that a result computed again under the same key gives
/// its downstream runs new keys.
#[derive(Debug)]
pub(crate) struct CacheId {
    pub(crate) key: Box<str>,
    pub(crate) version: Version,
}

/// What [`prepare`] decided for a run.
pub(crate) struct Prepared {
    /// The run's cache key, when it is cached.
    pub(crate) cache_key: Option<String>,
    /// A stored result to complete the run with, without executing it,
    /// and its version.
    pub(crate) hit: Option<(Bytes, Version)>,
    /// Where the result is written after an execution.
    pub(crate) target: Target,
}

impl Prepared {
    /// The run's [`CacheId`] when it is cached: completed from the cache
    /// (`hit`), with the stored result's version, else with the version
    /// its result is written with.
    pub(crate) fn cache_id(&self, hit: bool) -> Option<CacheId> {
        let key = self.cache_key.as_deref()?;
        let version = match &self.hit {
            Some((_, v)) if hit => *v,
            _ => self.target.version,
        };
        Some(CacheId {
            key: key.into(),
            version,
        })
    }
}

/// Computes the run's cache key and storage file and looks the result up.
/// `inputs` gives the run's arguments, serialized, when the key needs
/// them; `parameter` their text, when the file name does. Fails only for
/// a `result_storage_key` that gives no usable file name.
pub(crate) fn prepare(
    plan: &Plan,
    meta: &TaskMeta,
    run_name: &str,
    flow: &FlowShared,
    parameter: ParameterText<'_>,
    inputs: impl FnOnce() -> Result<Vec<ArgSlot>, TaskError>,
) -> Result<Prepared, TaskError> {
    let label = || format!("Task run '{run_name}'");
    let needs_inputs = plan.hashes_inputs();
    let slots = if needs_inputs { Some(inputs()) } else { None };
    let cache_key = match cache_key(plan, meta, flow, slots.as_ref()) {
        Ok(k) => k,
        Err(why) => {
            crate::run_event!(
                tracing::Level::WARN,
                label(),
                "Not cached: its cache key cannot be computed: {why}"
            );
            None
        }
    };
    let file = match &plan.template {
        Some(t) => t
            .render(&TemplateValues {
                task_run_name: run_name,
                task_name: meta.name,
                flow_run_id: &flow.id,
                flow_run_name: &flow.name,
                flow_name: &flow.flow_name,
                cache_key: cache_key.as_deref(),
                parameter: Some(parameter),
            })
            .map_err(|e| TaskError::new(TaskErrorKind::Runner, e))?,
        None => match &cache_key {
            Some(k) => k.clone(),
            // Persisted only: a file per run.
            None => {
                let mut h = KeyHasher::new(meta.key);
                h.part(b"flow_run", flow.id.as_bytes());
                h.part(b"task_run", run_name.as_bytes());
                h.finish()
            }
        },
    };
    let mut hit = None;
    if let Some(key) = cache_key.as_deref().filter(|_| !plan.refresh) {
        match plan.storage.read_keyed(&file, Some(key)) {
            (Lookup::Hit(bytes), version) => hit = Some((bytes, version)),
            // Told from a key never stored by the record a write leaves.
            (Lookup::Missing, _) if plan.storage.was_stored(&file, key) => crate::run_event!(
                tracing::Level::WARN,
                label(),
                "Its cached result was deleted, so it runs again: {} (cache key {key}) no longer exists",
                plan.storage.file(&file).display()
            ),
            (Lookup::Missing | Lookup::Expired | Lookup::OtherKey, _) => {}
            (Lookup::Unreadable(why), _) => crate::run_event!(
                tracing::Level::WARN,
                label(),
                "Its cached result cannot be used, so it runs again: {why}"
            ),
        }
    }
    Ok(Prepared {
        cache_key: cache_key.clone(),
        hit,
        target: Target {
            storage: plan.storage.clone(),
            cache_key,
            file,
            version: storage::fresh_version(),
            expiration: plan.expiration,
        },
    })
}

/// Decodes a cache hit as the task's output. A result that does not
/// decode is never a hit: `None`, with a warning, and the run executes
/// again and rewrites it.
pub(crate) fn decode_hit<T>(
    prepared: &Prepared,
    bytes: &[u8],
    fns: &crate::run::record::ValueFns<T>,
    run_name: &str,
) -> Option<T> {
    let decoded = match fns.decode {
        Some(decode) => decode(bytes).map_err(|e| {
            format!(
                "{} does not hold a `{}`: {e}",
                prepared
                    .target
                    .storage
                    .file(&prepared.target.file)
                    .display(),
                fns.type_name
            )
        }),
        None => Err(format!("`{}` cannot be deserialized", fns.type_name)),
    };
    match decoded {
        Ok(value) => Some(value),
        Err(why) => {
            crate::run_event!(
                tracing::Level::WARN,
                format!("Task run '{run_name}'"),
                "Its cached result cannot be used, so it runs again: {why}"
            );
            None
        }
    }
}

/// The run's cache key: `Ok(None)` when the run is not cached (policy
/// `NONE`, or a `cache_key_fn` that returned `None`), `Err` when it cannot
/// be computed.
fn cache_key(
    plan: &Plan,
    meta: &TaskMeta,
    flow: &FlowShared,
    slots: Option<&Result<Vec<ArgSlot>, TaskError>>,
) -> Result<Option<String>, String> {
    let slots = match slots {
        Some(Ok(s)) => Some(s.as_slice()),
        Some(Err(e)) if plan.key_fn.is_none() => {
            return Err(format!("an argument cannot be serialized: {}", e.message()))
        }
        _ => None,
    };
    if let Some(f) = &plan.key_fn {
        let ctx = CacheKeyContext {
            task_key: meta.key,
            task_name: meta.name,
            flow_run_id: &flow.id,
            flow_name: &flow.flow_name,
            inputs: slots,
        };
        let computed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (f.0)(&ctx)))
            .map_err(|p| format!("cache_key_fn panicked: {}", crate::panic_message(&*p)))?;
        return Ok(computed.map(|k| {
            let mut h = KeyHasher::new(meta.key);
            h.part(b"fn", k.as_bytes());
            h.finish()
        }));
    }
    if plan.policy.is_none() {
        return Ok(None);
    }
    let mut h = KeyHasher::new(meta.key);
    h.part(b"policy", &[plan.policy.bits()]);
    if plan.policy.contains(CachePolicy::TASK_SOURCE) {
        h.part(b"source", meta.source_hash.unwrap_or(meta.key).as_bytes());
    }
    if plan.policy.contains(CachePolicy::RUN_ID) {
        h.part(b"run_id", flow.id.as_bytes());
    }
    if plan.policy.contains(CachePolicy::FLOW_PARAMETERS) {
        match flow.parameters_key() {
            Some(Ok(k)) => h.part(b"parameters", k.as_bytes()),
            Some(Err(why)) => return Err(format!("the flow's parameters {why}")),
            None => return Err(
                "the run is not inside a flow run, so FLOW_PARAMETERS has no parameters to hash"
                    .into(),
            ),
        }
    }
    if plan.policy.contains(CachePolicy::INPUTS) {
        for (i, slot) in slots.unwrap_or_default().iter().enumerate() {
            match slot {
                ArgSlot::Bytes(b) => h.part(b"arg", b),
                // Its key and the version of the result it has: the same
                // key computed again may give another value.
                ArgSlot::Upstream(up) => match up.0.cache_id() {
                    Some(id) => {
                        h.part(b"upstream", id.key.as_bytes());
                        h.part(b"version", &id.version);
                    }
                    None => {
                        let b = up.encoded_result().map_err(|e| {
                            format!(
                                "argument {} (the result of '{}') cannot be serialized: {}",
                                i + 1,
                                up.name(),
                                e.message()
                            )
                        })?;
                        h.part(b"arg", &b);
                    }
                },
            }
        }
    }
    Ok(Some(h.finish()))
}

/// Writes a completed flow run's value when its options (`persist_result`,
/// or the process default) say so. Failures are warnings.
pub(crate) fn persist_flow<T>(
    meta: &crate::flow::meta::FlowMeta,
    call: Option<&ResultOptions>,
    flow: &FlowShared,
    value: &T,
    encoder: Option<crate::task::Encoder<T>>,
) {
    let o = meta.results.for_call(call);
    let o = &*o;
    // A subflow that does not say follows its parent flow run.
    let inherited = flow.results.get();
    let asked = o.persist == Some(true) || (o.persist.is_none() && o.template.is_some());
    let default = o.persist.is_none()
        && inherited
            .and_then(|i| i.persist)
            .unwrap_or_else(persist_results)
        && encoder.is_some();
    if !(asked || default) {
        return;
    }
    let label = format!("Flow run '{}'", flow.name);
    let Some(encode) = encoder else {
        crate::run_event!(
            tracing::Level::WARN,
            label.as_str(),
            "Its result was not persisted: `{}` does not implement serde's Serialize and DeserializeOwned",
            std::any::type_name::<T>()
        );
        return;
    };
    let values = TemplateValues {
        task_run_name: &flow.name,
        task_name: &flow.flow_name,
        flow_run_id: &flow.id,
        flow_run_name: &flow.name,
        flow_name: &flow.flow_name,
        cache_key: None,
        parameter: None,
    };
    let file = match &o.template {
        Some(t) => t.render(&values),
        None => Ok(format!("{}-{}", flow.flow_name, flow.id)),
    };
    let outcome = file.and_then(|file| {
        let bytes = encode(value).map_err(|e| format!("it could not be serialized: {e}"))?;
        let storage = o
            .storage
            .clone()
            .or_else(|| inherited.and_then(|i| i.storage.clone()))
            .unwrap_or_else(|| default_storage_of(flow));
        storage
            .write(&file, &bytes, None)
            .map_err(|e| e.to_string())
    });
    if let Err(why) = outcome {
        crate::run_event!(
            tracing::Level::WARN,
            label.as_str(),
            "Its result was not persisted: {why}"
        );
    }
}

/// The hash of a flow run's serialized parameters (what `#[flow]`
/// generates calls to): `None` when their types cannot be serialized.
#[doc(hidden)]
pub fn parameters_key(encoded: Option<Result<Vec<u8>, String>>) -> Result<String, String> {
    match encoded {
        Some(Ok(bytes)) => Ok(blake3::hash(&bytes).to_hex().to_string()),
        Some(Err(e)) => Err(format!("cannot be serialized: {e}")),
        None => Err(
            "cannot be serialized: their types do not implement serde's Serialize and DeserializeOwned"
                .to_owned(),
        ),
    }
}

/// Writes an executed run's result to its target. A failure is a warning:
/// the run keeps its value, which is not cached.
pub(crate) fn persist(target: &Target, run_name: &str, payload: &[u8]) {
    if let Err(e) = target.storage.write_keyed(
        &target.file,
        target.cache_key.as_deref(),
        target.version,
        payload,
        target.expiration,
    ) {
        crate::run_event!(
            tracing::Level::WARN,
            format!("Task run '{run_name}'"),
            "Its result was not persisted, so it will not be cached: {e}"
        );
    }
}

/// Writes an executed run's value to its target, encoded with the task's
/// codec. A failure is a warning: the run keeps its value.
pub(crate) fn persist_value<T>(
    target: &Target,
    run_name: &str,
    value: &T,
    fns: &crate::run::record::ValueFns<T>,
) {
    match fns.encode {
        Some(encode) => match encode(value) {
            Ok(bytes) => persist(target, run_name, &bytes),
            Err(e) => crate::run_event!(
                tracing::Level::WARN,
                format!("Task run '{run_name}'"),
                "Its result was not persisted: it could not be serialized: {e}"
            ),
        },
        None => no_codec(run_name, fns.type_name),
    }
}

/// Warns that a run's result cannot be persisted because its type has no
/// codec.
pub(crate) fn no_codec(run_name: &str, type_name: &str) {
    crate::run_event!(
        tracing::Level::WARN,
        format!("Task run '{run_name}'"),
        "Its result was not persisted: `{type_name}` does not implement serde's Serialize and DeserializeOwned"
    );
}

//! Cache keys (a BLAKE3 hash of what the policy names) and the
//! `result_storage_key` templates that name result files.

use std::fmt;
use std::sync::Arc;

use flowrun_template::{KeyPiece, KeyVar};

use crate::task::args::ArgSlot;

/// The placeholders a `result_storage_key` template may use
/// (`parameters[NAME]` with the name of one of the task's parameters).
pub const TEMPLATE_PLACEHOLDERS: &[&str] = flowrun_template::KEY_PLACEHOLDERS;

/// A `result_storage_key` template such as `"{flow.name}-{task_run.name}"`:
/// the name of the file a run's result is stored in. Placeholders:
/// `{task_run.name}`, `{task.name}` (or Prefect's `{task_run.task_name}`),
/// `{flow_run.id}`, `{flow_run.name}`, `{flow.name}` (or
/// `{flow_run.flow_name}`), `{cache_key}`, and, as in Prefect,
/// `{parameters[NAME]}`: the `Display` text of the task's argument `NAME`
/// (passed as a value, not as an upstream run's future). `{{` and `}}`
/// are literal braces. In `#[task(result_storage_key = "...")]` every
/// placeholder, and every `parameters[NAME]` against the task's
/// parameters, is checked at compile time; a template given at run time
/// (`TaskOptions::result_storage_key`) naming no parameter of the task
/// fails its runs with that reason.
///
/// ```
/// use flowrun_core::cache::KeyTemplate;
/// assert!(KeyTemplate::parse("{flow.name}-{task_run.name}").is_ok());
/// assert!(KeyTemplate::parse("report-{parameters[day]}").is_ok());
/// let err = KeyTemplate::parse("{task_run.nme}").unwrap_err();
/// assert!(err.contains("task_run.nme"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    source: Arc<str>,
    pieces: Arc<[KeyPiece]>,
}

/// The text of a run's argument by name, for `{parameters[name]}` (see
/// [`crate::Task::key_parameter`]).
pub(crate) type ParameterText<'a> = &'a dyn Fn(&str) -> Option<Result<String, String>>;

/// What a template's placeholders stand for, for one run.
pub(crate) struct TemplateValues<'a> {
    pub(crate) task_run_name: &'a str,
    pub(crate) task_name: &'a str,
    pub(crate) flow_run_id: &'a str,
    pub(crate) flow_run_name: &'a str,
    pub(crate) flow_name: &'a str,
    pub(crate) cache_key: Option<&'a str>,
    /// The text of the run's argument by name (see
    /// [`crate::Task::key_parameter`]); `None` when the run has none (a
    /// flow run's result).
    pub(crate) parameter: Option<ParameterText<'a>>,
}

impl KeyTemplate {
    /// Parses `template`; an unknown placeholder or an unbalanced brace is
    /// an error naming it.
    pub fn parse(template: &str) -> Result<KeyTemplate, String> {
        let pieces = flowrun_template::key_pieces(template)
            .map_err(|why| format!("result_storage_key \"{template}\": {why}"))?;
        Ok(KeyTemplate {
            source: Arc::from(template),
            pieces: pieces.into(),
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The file name for one run; an error when it is not a plain file
    /// name (empty, `.`/`..`, or containing a path separator).
    pub(crate) fn render(&self, v: &TemplateValues<'_>) -> Result<String, String> {
        let mut out = String::new();
        for piece in self.pieces.iter() {
            match piece {
                KeyPiece::Text(t) => out.push_str(t),
                KeyPiece::Parameter(name) => match v.parameter.and_then(|f| f(name)) {
                    Some(Ok(text)) => out.push_str(&text),
                    Some(Err(why)) => {
                        return Err(format!(
                            "result_storage_key \"{}\" uses {{parameters[{name}]}}, but {why}",
                            self.source
                        ))
                    }
                    None => {
                        return Err(format!(
                            "result_storage_key \"{}\" uses {{parameters[{name}]}}, but `{name}` is not a parameter of this run's task",
                            self.source
                        ))
                    }
                },
                KeyPiece::Var(var) => out.push_str(match var {
                    KeyVar::TaskRunName => v.task_run_name,
                    KeyVar::TaskName => v.task_name,
                    KeyVar::FlowRunId => v.flow_run_id,
                    KeyVar::FlowRunName => v.flow_run_name,
                    KeyVar::FlowName => v.flow_name,
                    KeyVar::CacheKey => v.cache_key.ok_or_else(|| {
                        format!(
                            "result_storage_key \"{}\" uses {{cache_key}}, but this run has no cache key",
                            self.source
                        )
                    })?,
                }),
            }
        }
        check_file_name(&out).map_err(|why| {
            format!(
                "result_storage_key \"{}\" gave \"{out}\", which {why}",
                self.source
            )
        })?;
        Ok(out)
    }
}

fn check_file_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name == "." || name == ".." || name.starts_with(".tmp-") || name == super::storage::RECORDS {
        return Err("is reserved");
    }
    if name.contains(['/', '\\', '\0']) {
        return Err("is not a plain file name (it contains a path separator)");
    }
    Ok(())
}

impl fmt::Debug for KeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyTemplate").field(&self.source).finish()
    }
}

/// What a `cache_key_fn` sees of a run: its task, its flow run and its
/// arguments.
///
/// ```
/// use flowrun_core::cache::CacheKeyContext;
/// // Cache by the first argument, case-insensitively.
/// fn key(ctx: &CacheKeyContext<'_>) -> Option<String> {
///     ctx.input::<String>(0).map(|s| s.to_lowercase())
/// }
/// # let _ = key;
/// ```
pub struct CacheKeyContext<'a> {
    pub(crate) task_key: &'static str,
    pub(crate) task_name: &'a str,
    pub(crate) flow_run_id: &'a str,
    pub(crate) flow_name: &'a str,
    pub(crate) inputs: Option<&'a [ArgSlot]>,
}

impl CacheKeyContext<'_> {
    /// The task's registry key.
    pub fn task_key(&self) -> &'static str {
        self.task_key
    }

    /// The task's name.
    pub fn task_name(&self) -> &str {
        self.task_name
    }

    /// The flow run's id.
    pub fn flow_run_id(&self) -> &str {
        self.flow_run_id
    }

    /// The flow's name.
    pub fn flow_name(&self) -> &str {
        self.flow_name
    }

    /// How many arguments the run has, when they can be serialized.
    pub fn input_count(&self) -> Option<usize> {
        self.inputs.map(<[ArgSlot]>::len)
    }

    /// Argument `index` in its serialized form (an upstream run's result,
    /// serialized), or `None` when it cannot be serialized.
    pub fn input_bytes(&self, index: usize) -> Option<bytes::Bytes> {
        match self.inputs?.get(index)? {
            ArgSlot::Bytes(b) => Some(b.clone()),
            ArgSlot::Upstream(up) => up.encoded_result().ok(),
        }
    }

    /// Argument `index`, decoded as a `T`; `None` when it cannot be
    /// serialized or is not a `T`.
    pub fn input<T: serde::de::DeserializeOwned>(&self, index: usize) -> Option<T> {
        crate::task::args::decode_value(&self.input_bytes(index)?).ok()
    }
}

impl fmt::Debug for CacheKeyContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheKeyContext")
            .field("task_key", &self.task_key)
            .field("flow_run_id", &self.flow_run_id)
            .finish_non_exhaustive()
    }
}

/// A `cache_key_fn`: computes a run's cache key from its context and
/// arguments; `None` means the run is not cached.
#[derive(Clone)]
pub struct CacheKeyFn(pub(crate) Arc<KeyFn>);

type KeyFn = dyn Fn(&CacheKeyContext<'_>) -> Option<String> + Send + Sync;

impl CacheKeyFn {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&CacheKeyContext<'_>) -> Option<String> + Send + Sync + 'static) -> Self {
        CacheKeyFn(Arc::new(f))
    }
}

impl fmt::Debug for CacheKeyFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheKeyFn")
    }
}

/// Builds a cache key: a BLAKE3 hash of length-prefixed parts, in hex.
pub(crate) struct KeyHasher(blake3::Hasher);

impl KeyHasher {
    pub(crate) fn new(task_key: &str) -> KeyHasher {
        let mut h = blake3::Hasher::new();
        h.update(b"flowrun-cache-key-v1");
        let mut k = KeyHasher(h);
        k.part(b"task", task_key.as_bytes());
        k
    }

    pub(crate) fn part(&mut self, tag: &[u8], bytes: &[u8]) {
        self.0.update(&(tag.len() as u64).to_le_bytes());
        self.0.update(tag);
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> String {
        self.0.finalize().to_hex().to_string()
    }
}

/// The text of one argument of a submitted call for a
/// `{parameters[name]}` placeholder (what `#[task]` generates calls to):
/// its `Display` text (`display` gives it, or `None` when its type has
/// none) when it is a value.
#[doc(hidden)]
pub fn key_text_of_input<A: Send + 'static>(
    input: &crate::Input<A>,
    display: impl FnOnce(&A) -> Option<String>,
) -> Result<String, String> {
    match input {
        crate::Input::Value(v) => key_text_of_value::<A>(display(v)),
        other => {
            let mut ups = Vec::new();
            other.upstreams(&mut ups);
            let names: Vec<String> = ups.iter().map(|up| format!("'{}'", up.name())).collect();
            Err(format!(
                "that argument is the result of task run {}, not a value the file can be named after",
                names.join(", ")
            ))
        }
    }
}

/// [`key_text_of_input`] of a value: `text` is its `Display` text, `None`
/// when its type has none.
#[doc(hidden)]
pub fn key_text_of_value<A>(text: Option<String>) -> Result<String, String> {
    text.ok_or_else(|| {
        format!(
            "its type `{}` does not implement Display",
            std::any::type_name::<A>()
        )
    })
}

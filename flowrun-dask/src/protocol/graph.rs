//! Turning subprocess task specs into `update-graph` messages.
//!
//! Each task becomes the legacy Dask task tuple
//! `(dask.utils.apply, subprocess.check_output, [[argv...]], kwargs)`, i.e.
//! `check_output(argv, input=<stdin>, stderr=PIPE[, env=...])`, which a stock
//! Python worker runs with nothing but the standard library and `dask`.
//! A task with a [`PythonShim`] becomes `(builtins.eval, CALL, globals)`
//! instead: a short expression that compiles the shim's module once per
//! worker process and calls its `run` with the task's fields.
//!
//! Rules that come from how the scheduler converts legacy tasks:
//! * argv and env are sent as bytes: a *str* argument equal to a key of the
//!   same graph would silently be replaced by that key's result;
//! * dependencies are always `TaskRef(key)`, the only form that also reaches
//!   keys of earlier `update-graph` messages;
//! * a nested task (the `bytes.join` that concatenates stdin parts) only runs
//!   when it sits in a positional argument, so kwargs that need one are built
//!   by `(dict, [[name, value], ...])` instead of a literal dict;
//! * resources and retries are annotations, which apply to a whole message,
//!   so tasks are grouped by annotation set, one message per group;
//! * a `TaskRef` is only found as a *direct* value of a positional dict (not
//!   inside a list in it), so the shim form passes each stdin part under
//!   its own name.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use rmpv::Value;

use super::error::ProtocolError;
use super::msg::{self, Attachment, OutMessage};
use super::pickle::{dumps, PyObject as P};

/// One piece of a task's standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinPart {
    /// Bytes known when the task is submitted.
    Literal(Vec<u8>),
    /// The output (stdout bytes) of another task, which becomes a dependency.
    /// It may be a key of an earlier `submit` that has not been released.
    Dep(String),
}

/// Python code that runs a [`SubprocessTask`] on the worker in place of
/// `subprocess.check_output`, for callers that need more than the child's
/// stdout (its stderr on success, events, their own errors).
///
/// `source` is a module that defines
/// `run(key, argv, stdin, env, params)`: `key` is the task's key (str),
/// `argv` a list of bytes, `stdin` the list of stdin parts as bytes with
/// dependencies replaced by their values, `env` the task's environment (a
/// dict of bytes) or `None`, and `params` the dict of [`Self::params`].
/// What `run` returns is the task's result; what it raises is the task's
/// failure. Results are gathered as bytes, so `run` should return bytes.
///
/// The source travels with every task but is compiled once per worker
/// process and kept in `sys.modules` under [`Self::module`], so a module
/// name must never be reused for different source (put a hash of the
/// source in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonShim {
    /// The name the compiled module is cached under on the workers.
    pub module: String,
    /// The module's source.
    pub source: String,
    /// String parameters handed to `run`.
    pub params: BTreeMap<String, String>,
    /// The workers have the module already: a worker plugin made with
    /// [`plugin_pickle`](Self::plugin_pickle) is registered, and the
    /// scheduler gives it to every worker before any task. Tasks then leave
    /// the source out, which keeps it out of the scheduler's memory and of
    /// every task message to a worker.
    pub installed: bool,
}

impl PythonShim {
    /// The globals `c` (the module's source, with the adapter) and `l`
    /// (the loader that compiles it), for a worker that lacks the module.
    fn source_globals(&self) -> [(P, P); 2] {
        [
            (P::str("c"), P::Str(format!("{}{ADAPTER}", self.source))),
            (P::str("l"), P::str(LOAD)),
        ]
    }

    /// The global `p`: the parameters handed to the module.
    fn params_global(&self) -> (P, P) {
        let params = self.params.iter().map(|(k, v)| (P::str(k), P::str(v)));
        (P::str("p"), P::Dict(params.collect()))
    }

    /// The pickle of a Dask `WorkerPlugin`: an instance of the class `class`
    /// of the shim's module, made as `class(params)` on each worker. The
    /// worker unpickles it (the scheduler only passes the bytes on), so the
    /// module is compiled there the same way tasks compile it.
    pub fn plugin_pickle(&self, class: &str) -> Vec<u8> {
        let mut globals = vec![(P::str("m"), P::str(&self.module))];
        globals.extend(self.source_globals());
        globals.extend([(P::str("x"), P::str(class)), self.params_global()]);
        dumps(&P::call(
            global("builtins", "eval"),
            vec![P::str(PLUGIN), P::Dict(globals)],
        ))
    }
}

/// A command for a Dask worker to run with `subprocess.check_output`, or
/// with a [`PythonShim`].
#[derive(Debug, Clone, PartialEq)]
pub struct SubprocessTask {
    /// The Dask key. It must be unique for the lifetime of the cluster's
    /// memory of it: reusing a key with a different command confuses the
    /// scheduler. The caller namespaces keys (for example by run id).
    pub key: String,
    /// Program and arguments, as bytes (see the module docs for why).
    pub argv: Vec<Vec<u8>>,
    /// Standard input: the concatenation of the parts, in order.
    pub stdin: Vec<StdinPart>,
    /// Higher runs earlier (Dask's user priority).
    pub priority: i64,
    /// Abstract resources a worker must offer, e.g. `{"GPU": 1.0}`.
    pub resources: BTreeMap<String, f64>,
    /// How many times Dask reruns the task after a failure.
    pub retries: u32,
    /// The child's complete environment; `None` inherits the worker's.
    pub env: Option<BTreeMap<String, String>>,
    /// Runs the command through this Python code instead of
    /// `check_output`; shared, because it is usually the same for many tasks.
    pub shim: Option<Arc<PythonShim>>,
}

impl SubprocessTask {
    /// A task with empty stdin, priority 0, no resources, no retries and the
    /// worker's environment.
    pub fn new<A: Into<Vec<u8>>>(
        key: impl Into<String>,
        argv: impl IntoIterator<Item = A>,
    ) -> Self {
        SubprocessTask {
            key: key.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            stdin: Vec::new(),
            priority: 0,
            resources: BTreeMap::new(),
            retries: 0,
            env: None,
            shim: None,
        }
    }

    /// The keys this task reads stdin from.
    pub fn dependencies(&self) -> impl Iterator<Item = &str> {
        self.stdin.iter().filter_map(|part| match part {
            StdinPart::Dep(key) => Some(key.as_str()),
            StdinPart::Literal(_) => None,
        })
    }
}

/// Strings that appear as values in the kwargs list form; a key equal to one
/// of them would be substituted by the scheduler's key-name inference.
const RESERVED_KEYS: [&str; 3] = ["input", "stderr", "env"];

/// `subprocess.PIPE`: capture stderr so that a failure carries it.
const PIPE: i64 = -1;

fn global(module: &str, name: &str) -> P {
    P::global(module, name)
}

fn task_ref(key: &str) -> P {
    P::call(global("dask._task_spec", "TaskRef"), vec![P::str(key)])
}

/// The stdin argument, and whether it is a nested task (needs the list form).
fn stdin_value(stdin: &[StdinPart]) -> (P, bool) {
    // Adjacent literals are merged so that the common cases (no stdin, one
    // literal, one dependency) need no nested task.
    let mut parts: Vec<P> = Vec::new();
    for part in stdin {
        match part {
            StdinPart::Literal(bytes) if bytes.is_empty() => {}
            StdinPart::Literal(bytes) => match parts.last_mut() {
                Some(P::Bytes(previous)) => previous.extend_from_slice(bytes),
                _ => parts.push(P::Bytes(bytes.clone())),
            },
            StdinPart::Dep(key) => parts.push(task_ref(key)),
        }
    }
    match parts.len() {
        0 => (P::Bytes(Vec::new()), false),
        1 => (parts.pop().unwrap_or(P::None), false),
        _ => (
            P::Tuple(vec![
                global("builtins", "bytes.join"),
                P::Bytes(Vec::new()),
                P::List(parts),
            ]),
            true,
        ),
    }
}

/// The Python expression a [`PythonShim`] task evaluates, with the task's
/// fields as its globals. Python compiles it for every task, so it is kept
/// short: it finds the shim's module in `sys.modules` and calls it;
/// only the first task of a worker process evaluates [`LOAD`] as well.
const CALL: &str = "(__import__('sys').modules.get(m) or eval(l))._flowrun_call(globals())";

/// Compiles the shim's module and registers it (`m`, `c` are globals).
const LOAD: &str = "(lambda sys, mod: (exec(compile(c, m, 'exec'), mod.__dict__), \
sys.modules.setdefault(m, mod))[1])(__import__('sys'), __import__('types').ModuleType(m))";

/// [`CALL`] for a shim whose module a worker plugin installed.
const CALL_INSTALLED: &str = "__import__('sys').modules[m]._flowrun_call(globals())";

/// Makes a shim's worker plugin (`x` names its class, `p` holds params).
const PLUGIN: &str = "getattr(__import__('sys').modules.get(m) or eval(l), x)(p)";

/// Appended to the shim's source: unpacks the task's fields for `run`.
const ADAPTER: &str = "\n\ndef _flowrun_call(g):\n    \
return run(g['k'], g['a'], [g['s%d' % i] for i in range(g['n'])], g['e'], g['p'])\n";

fn env_value(env: &BTreeMap<String, String>) -> P {
    P::Dict(
        env.iter()
            .map(|(k, v)| {
                (
                    P::Bytes(k.as_bytes().to_vec()),
                    P::Bytes(v.as_bytes().to_vec()),
                )
            })
            .collect(),
    )
}

/// `(builtins.eval, CALL, {...})`: a positional dict, so the scheduler
/// turns each `TaskRef` value of it into a dependency.
fn shim_task_value(task: &SubprocessTask, shim: &PythonShim) -> P {
    let mut globals = vec![(P::str("m"), P::str(&shim.module))];
    if !shim.installed {
        globals.extend(shim.source_globals());
    }
    globals.extend([
        (P::str("k"), P::str(&task.key)),
        (
            P::str("a"),
            P::List(task.argv.iter().cloned().map(P::Bytes).collect()),
        ),
        (P::str("n"), P::Int(task.stdin.len() as i64)),
        (
            P::str("e"),
            task.env.as_ref().map(env_value).unwrap_or(P::None),
        ),
        shim.params_global(),
    ]);
    for (i, part) in task.stdin.iter().enumerate() {
        let value = match part {
            StdinPart::Literal(bytes) => P::Bytes(bytes.clone()),
            StdinPart::Dep(key) => task_ref(key),
        };
        globals.push((P::Str(format!("s{i}")), value));
    }
    let call = if shim.installed { CALL_INSTALLED } else { CALL };
    P::Tuple(vec![
        global("builtins", "eval"),
        P::str(call),
        P::Dict(globals),
    ])
}

/// The legacy task tuple for one subprocess task.
fn task_value(task: &SubprocessTask) -> P {
    if let Some(shim) = &task.shim {
        return shim_task_value(task, shim);
    }
    let argv = P::List(task.argv.iter().cloned().map(P::Bytes).collect());
    let (input, nested) = stdin_value(&task.stdin);
    let mut kwargs = vec![("input", input), ("stderr", P::Int(PIPE))];
    if let Some(env) = &task.env {
        kwargs.push(("env", env_value(env)));
    }
    let kwargs = if nested {
        let pairs = kwargs
            .into_iter()
            .map(|(name, value)| P::List(vec![P::str(name), value]))
            .collect();
        P::Tuple(vec![global("builtins", "dict"), P::List(pairs)])
    } else {
        P::Dict(kwargs.into_iter().map(|(k, v)| (P::str(k), v)).collect())
    };
    P::Tuple(vec![
        global("dask.utils", "apply"),
        global("subprocess", "check_output"),
        P::List(vec![argv]),
        kwargs,
    ])
}

fn invalid(key: &str, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::InvalidTask {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn validate(task: &SubprocessTask) -> Result<(), ProtocolError> {
    if task.key.is_empty() {
        return Err(invalid(&task.key, "the key is empty"));
    }
    if RESERVED_KEYS.contains(&task.key.as_str()) {
        return Err(invalid(
            &task.key,
            "this key would be confused with a keyword argument name",
        ));
    }
    if task.argv.is_empty() {
        return Err(invalid(&task.key, "argv is empty"));
    }
    for (name, amount) in &task.resources {
        if name.is_empty() || !amount.is_finite() || *amount < 0.0 {
            return Err(invalid(
                &task.key,
                format!(
                    "resource {name:?} = {amount} must be a named, finite, non-negative amount"
                ),
            ));
        }
    }
    if task.dependencies().any(|dep| dep == task.key) {
        return Err(invalid(&task.key, "the task reads its own output"));
    }
    Ok(())
}

/// The annotation set of a task, comparable so tasks can be grouped by it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Annotations {
    resources: Vec<(String, u64)>,
    retries: u32,
}

impl Annotations {
    fn of(task: &SubprocessTask) -> Self {
        Annotations {
            resources: task
                .resources
                .iter()
                // +0.0 and -0.0 mean the same amount; keep them in one group.
                .map(|(name, amount)| (name.clone(), (amount + 0.0).to_bits()))
                .collect(),
            retries: task.retries,
        }
    }

    /// The pickled `annotations` dict, or `None` when there is nothing to say.
    fn pickle(&self) -> Option<Vec<u8>> {
        let mut entries = Vec::new();
        if !self.resources.is_empty() {
            let resources = self
                .resources
                .iter()
                .map(|(name, bits)| (P::str(name), P::Float(f64::from_bits(*bits))))
                .collect();
            entries.push((P::str("resources"), P::Dict(resources)));
        }
        if self.retries > 0 {
            entries.push((P::str("retries"), P::Int(self.retries.into())));
        }
        (!entries.is_empty()).then(|| dumps(&P::Dict(entries)))
    }
}

/// Orders the groups so that every message comes after the messages holding
/// its dependencies: a `TaskRef` to a key the scheduler has not seen yet
/// cancels the task with "lost dependencies".
///
/// A task's stage is the longest chain of *annotation changes* among its
/// dependencies inside this submission; tasks of one stage and annotation set
/// share a message. Dependencies with the same annotations may share the
/// message, because one graph may reference its own keys.
fn stages(tasks: &[SubprocessTask]) -> Result<Vec<usize>, ProtocolError> {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.key.as_str(), i))
        .collect();
    let annotations: Vec<Annotations> = tasks.iter().map(Annotations::of).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    let mut pending = vec![0usize; tasks.len()];
    for (i, task) in tasks.iter().enumerate() {
        for dep in task.dependencies() {
            if let Some(&d) = index.get(dep) {
                dependents[d].push(i);
                pending[i] += 1;
            }
        }
    }
    let mut stage = vec![0usize; tasks.len()];
    let mut ready: VecDeque<usize> = (0..tasks.len()).filter(|&i| pending[i] == 0).collect();
    let mut done = 0;
    while let Some(d) = ready.pop_front() {
        done += 1;
        for &i in &dependents[d] {
            let step = usize::from(annotations[i] != annotations[d]);
            stage[i] = stage[i].max(stage[d] + step);
            pending[i] -= 1;
            if pending[i] == 0 {
                ready.push_back(i);
            }
        }
    }
    if done < tasks.len() {
        let stuck = (0..tasks.len()).find(|&i| pending[i] > 0).unwrap_or(0);
        return Err(invalid(&tasks[stuck].key, "its dependencies form a cycle"));
    }
    Ok(stage)
}

/// Builds the `update-graph` messages for one submission, in the order they
/// must be sent. `token` must be unique per call: it names the graphs.
/// `sequence` is how many tasks the client submitted before these: ties of
/// user priority run in submission order across submissions too.
pub(crate) fn update_graph_messages(
    tasks: &[SubprocessTask],
    token: &str,
    sequence: i64,
) -> Result<Vec<OutMessage>, ProtocolError> {
    let mut seen = HashMap::new();
    for task in tasks {
        validate(task)?;
        if seen.insert(task.key.as_str(), ()).is_some() {
            return Err(invalid(
                &task.key,
                "the key appears twice in one submission",
            ));
        }
    }
    let stage = stages(tasks)?;
    let mut groups: BTreeMap<(usize, Annotations), Vec<usize>> = BTreeMap::new();
    for (i, task) in tasks.iter().enumerate() {
        groups
            .entry((stage[i], Annotations::of(task)))
            .or_default()
            .push(i);
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(n, ((_, annotations), members))| {
            Ok(group_message(
                tasks,
                &members,
                &annotations,
                &format!("{token}-{n}"),
                sequence,
            ))
        })
        .collect()
}

fn group_message(
    tasks: &[SubprocessTask],
    members: &[usize],
    annotations: &Annotations,
    token: &str,
    sequence: i64,
) -> OutMessage {
    let dsk = P::Dict(
        members
            .iter()
            .map(|&i| (P::str(&tasks[i].key), task_value(&tasks[i])))
            .collect(),
    );
    // LLGExpr.__new__(LLGExpr, dsk, _determ_token=token): the token gives the
    // expression its name, so the scheduler does not tokenize the graph.
    let expr = P::New {
        cls: Box::new(global("dask._expr", "LLGExpr")),
        args: vec![dsk],
        kwargs: vec![(P::str("_determ_token"), P::str(token))],
    };
    let mut message = OutMessage::new(Value::Nil);
    let expr_ser = message.attach(Attachment::Serialized {
        header: vec![
            ("serializer".into(), "pickle".into()),
            ("writeable".into(), Value::Array(Vec::new())),
        ],
        frames: vec![dumps(&expr)],
    });
    let keys = || members.iter().map(|&i| tasks[i].key.as_str());
    let per_key = |f: &dyn Fn(usize) -> i64| {
        Value::Map(
            members
                .iter()
                .map(|&i| (Value::from(tasks[i].key.as_str()), Value::from(f(i))))
                .collect(),
        )
    };
    let mut fields = vec![
        ("op", Value::from("update-graph")),
        ("expr_ser", expr_ser),
        // The scheduler culls the graph to what is reachable from `keys`, and
        // holds these keys for this client until they are released.
        ("keys", msg::str_set(keys())),
        // Must be null or pickled: a msgpack list arrives as a tuple, which
        // the scheduler later tries to extend.
        ("span_metadata", Value::Nil),
        // Ties between equal user priorities run in submission order; every
        // key needs an entry or it gets no priority at all.
        ("internal_priority", per_key(&|i| sequence + i as i64)),
        ("submitting_task", Value::Nil),
        ("user_priority", per_key(&|i| tasks[i].priority)),
        // Messages sent within this window share one priority generation, so
        // a later submission does not rank below an earlier one.
        ("fifo_timeout", Value::from("60s")),
        ("actors", Value::Boolean(false)),
    ];
    if let Some(pickle) = annotations.pickle() {
        fields.push(("annotations", message.attach(Attachment::Pickled(pickle))));
    }
    message.body = msg::map(fields);
    message
}

#[cfg(test)]
mod tests {
    use super::super::msg::{encode, get, get_str, Incoming};
    use super::super::pickle::{entry, loads, PyObject};
    use super::*;

    fn decode_all(messages: Vec<OutMessage>) -> Vec<(Value, PyObject, Option<PyObject>)> {
        let frames = encode(messages, true).unwrap();
        let mut incoming = Incoming::decode(frames.clone()).unwrap();
        let ops = incoming.body.as_array().unwrap().clone();
        ops.into_iter()
            .map(|op| {
                let expr = incoming
                    .take_serialized(get(&op, "expr_ser").unwrap())
                    .unwrap();
                assert_eq!(get_str(&expr.header, "serializer"), Some("pickle"));
                let graph = loads(&expr.frames[0]).unwrap();
                let annotations = get(&op, "annotations").map(|a| {
                    let i = get(a, "__Pickled__").unwrap().as_u64().unwrap() as usize;
                    let sub = rmpv::decode::read_value(&mut frames[i].as_slice()).unwrap();
                    loads(get(&sub, "pickled-obj").unwrap().as_slice().unwrap()).unwrap()
                });
                (op, graph, annotations)
            })
            .collect()
    }

    fn dsk(graph: &PyObject) -> &PyObject {
        let PyObject::New { args, .. } = graph else {
            panic!("{graph:?}")
        };
        &args[0]
    }

    #[test]
    fn a_plain_task_is_check_output_with_bytes_argv() {
        let mut task = SubprocessTask::new("ns-a", ["/bin/echo", "hi"]);
        task.stdin = vec![
            StdinPart::Literal(b"in".to_vec()),
            StdinPart::Literal(b"put".to_vec()),
        ];
        task.priority = 5;
        let decoded = decode_all(update_graph_messages(&[task], "tok", 0).unwrap());
        assert_eq!(decoded.len(), 1);
        let (op, graph, annotations) = &decoded[0];
        assert_eq!(get_str(op, "op"), Some("update-graph"));
        assert_eq!(get_str(op, "fifo_timeout"), Some("60s"));
        assert_eq!(get(op, "keys"), Some(&msg::str_set(["ns-a"])));
        assert_eq!(
            get(op, "user_priority"),
            Some(&msg::map(vec![("ns-a", 5.into())]))
        );
        assert!(annotations.is_none());
        assert_eq!(
            dsk(graph).get("ns-a").unwrap().repr(),
            "(dask.utils.apply, subprocess.check_output, [[b'/bin/echo', b'hi']], \
             {'input': b'input', 'stderr': -1})"
        );
    }

    #[test]
    fn joined_stdin_uses_a_nested_bytes_join() {
        let mut task = SubprocessTask::new("ns-b", ["/bin/cat"]);
        task.stdin = vec![
            StdinPart::Dep("ns-a".into()),
            StdinPart::Literal(b"|".to_vec()),
            StdinPart::Dep("ns-c".into()),
        ];
        task.env = Some(BTreeMap::from([("K".to_string(), "V".to_string())]));
        let decoded = decode_all(update_graph_messages(&[task], "tok", 0).unwrap());
        assert_eq!(
            dsk(&decoded[0].1).get("ns-b").unwrap().repr(),
            "(dask.utils.apply, subprocess.check_output, [[b'/bin/cat']], \
             (builtins.dict, [['input', (builtins.bytes.join, b'', \
             [dask._task_spec.TaskRef('ns-a'), b'|', dask._task_spec.TaskRef('ns-c')])], \
             ['stderr', -1], ['env', {b'K': b'V'}]]))"
        );
    }

    #[test]
    fn a_single_dependency_is_a_taskref_in_a_plain_dict() {
        let mut task = SubprocessTask::new("ns-b", ["/bin/cat"]);
        task.stdin = vec![StdinPart::Dep("ns-a".into())];
        let decoded = decode_all(update_graph_messages(&[task], "tok", 0).unwrap());
        assert_eq!(
            dsk(&decoded[0].1).get("ns-b").unwrap().repr(),
            "(dask.utils.apply, subprocess.check_output, [[b'/bin/cat']], \
             {'input': dask._task_spec.TaskRef('ns-a'), 'stderr': -1})"
        );
    }

    #[test]
    fn a_shim_task_is_an_eval_of_the_loader_with_named_parts() {
        let mut task = SubprocessTask::new("ns-r", ["/bin/prog", "--x"]);
        task.stdin = vec![
            StdinPart::Literal(b"head".to_vec()),
            StdinPart::Dep("ns-a".into()),
        ];
        task.priority = 4;
        task.shim = Some(Arc::new(PythonShim {
            module: "mod_1".into(),
            source: "def run(*a): pass".into(),
            params: BTreeMap::from([("topic".to_string(), "t".to_string())]),
            installed: false,
        }));
        let decoded = decode_all(update_graph_messages(&[task], "tok", 7).unwrap());
        let (op, graph, _) = &decoded[0];
        assert_eq!(
            get(op, "internal_priority"),
            Some(&msg::map(vec![("ns-r", 7.into())]))
        );
        let repr = dsk(graph).get("ns-r").unwrap().repr();
        let expected_globals = "'k': 'ns-r', 'a': [b'/bin/prog', b'--x'], 'n': 2, \
             'e': None, 'p': {'topic': 't'}, 's0': b'head', 's1': dask._task_spec.TaskRef('ns-a')}";
        assert!(repr.starts_with("(builtins.eval, "), "{repr}");
        assert!(
            repr.contains("._flowrun_call(globals())', {'m': 'mod_1', 'c': 'def run(*a): pass"),
            "{repr}"
        );
        assert!(repr.ends_with(&format!("{expected_globals})")), "{repr}");
    }

    #[test]
    fn groups_by_annotations_in_dependency_order() {
        let plain = |key: &str| SubprocessTask::new(key, ["/bin/true"]);
        let gpu = |key: &str| {
            let mut t = plain(key);
            t.resources.insert("GPU".into(), 1.0);
            t.retries = 2;
            t
        };
        let with_dep = |mut t: SubprocessTask, dep: &str| {
            t.stdin.push(StdinPart::Dep(dep.into()));
            t
        };
        // plain a -> gpu b -> plain c, plus independent gpu d and plain e
        let tasks = vec![
            with_dep(plain("c"), "b"),
            with_dep(gpu("b"), "a"),
            plain("a"),
            gpu("d"),
            plain("e"),
        ];
        let decoded = decode_all(update_graph_messages(&tasks, "tok", 0).unwrap());
        let keys: Vec<Vec<String>> = decoded
            .iter()
            .map(|(op, _, _)| {
                let mut keys = msg::key_list(get(op, "keys").unwrap()).unwrap();
                keys.sort();
                keys
            })
            .collect();
        assert_eq!(keys, vec![vec!["a", "e"], vec!["d"], vec!["b"], vec!["c"]]);
        assert!(decoded[0].2.is_none());
        assert_eq!(
            decoded[1].2.as_ref().unwrap().repr(),
            "{'resources': {'GPU': 1.0}, 'retries': 2}"
        );
        // Every graph has its own token, hence its own expression name.
        let tokens: std::collections::HashSet<String> = decoded
            .iter()
            .map(|(_, graph, _)| {
                let PyObject::New { kwargs, .. } = graph else {
                    panic!()
                };
                entry(kwargs, "_determ_token").unwrap().repr()
            })
            .collect();
        assert_eq!(tokens.len(), 4);
    }

    #[test]
    fn rejects_invalid_submissions() {
        let t = |key: &str| SubprocessTask::new(key, ["/bin/true"]);
        let cases: Vec<Vec<SubprocessTask>> = vec![
            vec![t("")],
            vec![t("input")],
            vec![SubprocessTask::new("k", Vec::<Vec<u8>>::new())],
            vec![t("k"), t("k")],
            vec![{
                let mut x = t("k");
                x.resources.insert("GPU".into(), f64::NAN);
                x
            }],
            vec![{
                let mut x = t("k");
                x.stdin.push(StdinPart::Dep("k".into()));
                x
            }],
            vec![
                {
                    let mut x = t("x");
                    x.stdin.push(StdinPart::Dep("y".into()));
                    x
                },
                {
                    let mut y = t("y");
                    y.stdin.push(StdinPart::Dep("x".into()));
                    y
                },
            ],
        ];
        for tasks in cases {
            assert!(
                matches!(
                    update_graph_messages(&tasks, "t", 0),
                    Err(ProtocolError::InvalidTask { .. })
                ),
                "{tasks:?}"
            );
        }
    }
}

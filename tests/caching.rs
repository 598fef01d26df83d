//! Caching: `cache_policy` (Prefect's `INPUTS`, `TASK_SOURCE`,
//! `FLOW_PARAMETERS`, `RUN_ID`, `NONE`, combined with `+`),
//! `cache_key_fn`, `cache_expiration`, `refresh_cache`; a hit is a
//! `Completed` state named `Cached` that executes nothing. And what goes
//! wrong: keys that cannot be computed, result files deleted or corrupt,
//! storage that cannot be written. On the thread runner and the local
//! cluster.
//!
//! Executions are counted by the tasks themselves (counters, or files for
//! worker processes), never from the engine's own report.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use flowrun::cache::{CacheKeyContext, CachePolicy, Lookup, ResultStorage};
use flowrun::{flow, task, TaskFuture, TaskOptions};

fn dir() -> tempfile::TempDir {
    common::console_lines();
    tempfile::Builder::new()
        .prefix("flowrun-cache-test-")
        .tempdir()
        .unwrap()
}

fn at(dir: &Path) -> TaskOptions {
    TaskOptions::new().result_storage(dir)
}

/// The result files in `dir` (not the temporary files of a write).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    out.retain(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'));
    out.sort();
    out
}

/// A run's value and the name of the state it ended in (`Cached` on a hit).
fn outcome<T: Clone + Send + 'static>(f: TaskFuture<T>) -> (T, String) {
    (f.result().unwrap(), f.state().name().to_owned())
}

/// The name of the state a run ends in.
fn final_state<T: Send + 'static>(f: TaskFuture<T>) -> String {
    f.wait();
    f.state().name().to_owned()
}

/// The value persisted under `key` in `dir`.
fn persisted<T: serde::de::DeserializeOwned>(dir: &Path, key: &str) -> T {
    let Lookup::Hit(bytes) = ResultStorage::new(dir).read(key) else {
        panic!("no result file {key} in {:?}", files(dir))
    };
    flowrun::runner::decode_value(&bytes).unwrap()
}

fn warnings_with(text: &str, run: &str) -> usize {
    let lines = common::console_lines();
    let lines = lines.lock().unwrap();
    lines
        .iter()
        .filter(|l| l.contains(text) && l.contains(run))
        .count()
}

/// Declares the static counter `$count` and a task `$name(x: u64) -> u64`
/// with the given attributes that counts its executions there and returns
/// `x`: the tests below differ only in the task's options.
macro_rules! counting_task {
    ($count:ident, $(#[$attr:meta])* fn $name:ident) => {
        static $count: AtomicUsize = AtomicUsize::new(0);

        $(#[$attr])*
        fn $name(x: u64) -> u64 {
            $count.fetch_add(1, SeqCst);
            x
        }
    };
}

// ---------------------------------------------------------------- policies

static SQUARES: AtomicUsize = AtomicUsize::new(0);

#[task(cache_policy = INPUTS + TASK_SOURCE)]
fn square(x: u64) -> u64 {
    SQUARES.fetch_add(1, SeqCst);
    x * x
}

/// Each value and the name of the state its run ended in.
#[flow]
fn squares(dir: PathBuf, xs: Vec<u64>) -> Vec<(u64, String)> {
    let task = square.with_options(at(&dir));
    xs.into_iter().map(|x| outcome(task.submit(x))).collect()
}

#[test]
fn inputs_plus_task_source_reuses_results_across_flow_runs_without_executing() {
    let d = dir();
    let first = squares(d.path().into(), vec![2, 3]).unwrap();
    assert_eq!(
        first,
        [(4, "Completed".to_owned()), (9, "Completed".to_owned())]
    );
    assert_eq!(SQUARES.load(SeqCst), 2);
    assert_eq!(files(d.path()).len(), 2, "one result file per key");

    let second = squares(d.path().into(), vec![2, 3, 4]).unwrap();
    assert_eq!(
        second,
        [
            (4, "Cached".to_owned()),
            (9, "Cached".to_owned()),
            (16, "Completed".to_owned())
        ]
    );
    assert_eq!(SQUARES.load(SeqCst), 3, "only the new input executed");
}

static DEFAULTS: AtomicUsize = AtomicUsize::new(0);

/// `persist_result = true` alone caches with Prefect's default policy:
/// inputs + task source + run id.
#[task(persist_result = true)]
fn defaulted(x: u64) -> u64 {
    DEFAULTS.fetch_add(1, SeqCst);
    x + 1
}

#[flow]
fn twice_in_one_run(dir: PathBuf) -> Vec<String> {
    let task = defaulted.with_options(at(&dir));
    let a = task.submit(1);
    a.wait();
    let b = task.submit(1);
    let c = task.submit(2);
    let values = (
        a.result().unwrap(),
        b.result().unwrap(),
        c.result().unwrap(),
    );
    assert_eq!(values, (2, 2, 3));
    vec![a.state().name().into(), b.state().name().into()]
}

#[test]
fn the_default_policy_caches_within_a_flow_run_only() {
    let d = dir();
    assert_eq!(
        twice_in_one_run(d.path().into()).unwrap(),
        ["Completed", "Cached"]
    );
    assert_eq!(DEFAULTS.load(SeqCst), 2, "inputs 1 and 2");
    // A new flow run has a new run id: nothing is reused.
    assert_eq!(
        twice_in_one_run(d.path().into()).unwrap(),
        ["Completed", "Cached"]
    );
    assert_eq!(DEFAULTS.load(SeqCst), 4);
}

counting_task!(
    RUN_IDS,
    /// `RUN_ID` alone: one result per flow run, whatever the inputs.
    #[task(cache_policy = RUN_ID)]
    fn per_run
);

#[flow]
fn per_run_flow(dir: PathBuf) -> (u64, u64) {
    let task = per_run.with_options(at(&dir));
    let a = task.submit(1).result().unwrap();
    let b = task.submit(2).result().unwrap();
    (a, b)
}

#[test]
fn run_id_alone_ignores_inputs_and_spans_no_runs() {
    let d = dir();
    assert_eq!(per_run_flow(d.path().into()).unwrap(), (1, 1));
    assert_eq!(RUN_IDS.load(SeqCst), 1);
    assert_eq!(per_run_flow(d.path().into()).unwrap(), (1, 1));
    assert_eq!(RUN_IDS.load(SeqCst), 2);
}

static PARAMS: AtomicUsize = AtomicUsize::new(0);

#[task(cache_policy = FLOW_PARAMETERS + TASK_SOURCE)]
fn by_parameters(x: u64) -> u64 {
    PARAMS.fetch_add(1, SeqCst);
    x * 10
}

#[flow]
fn parameterised(dir: PathBuf, _p: u32, x: u64) -> (u64, String) {
    outcome(by_parameters.with_options(at(&dir)).submit(x))
}

#[test]
fn flow_parameters_policy_keys_on_the_flow_runs_parameters() {
    let d = dir();
    let path = || d.path().to_path_buf();
    assert_eq!(parameterised(path(), 1, 5).unwrap().1, "Completed");
    assert_eq!(PARAMS.load(SeqCst), 1);
    assert_eq!(
        parameterised(path(), 1, 5).unwrap(),
        (50, "Cached".to_owned())
    );
    assert_eq!(PARAMS.load(SeqCst), 1, "same parameters: a hit");
    assert_eq!(parameterised(path(), 2, 5).unwrap().1, "Completed");
    assert_eq!(PARAMS.load(SeqCst), 2, "another p: a miss");
    assert_eq!(parameterised(path(), 1, 6).unwrap().1, "Completed");
    assert_eq!(PARAMS.load(SeqCst), 3, "another x is another parameter too");
}

counting_task!(
    POLICY_VALUES,
    #[task]
    fn policy_per_call
);

#[flow]
fn with_policy(dir: PathBuf, policy: String, x: u64) -> String {
    let policy = match policy.as_str() {
        "inputs" => CachePolicy::INPUTS,
        "none" => CachePolicy::NONE,
        _ => CachePolicy::INPUTS + CachePolicy::RUN_ID,
    };
    final_state(
        policy_per_call
            .with_options(at(&dir).cache_policy(policy))
            .submit(x),
    )
}

#[test]
fn policies_given_per_call_combine_with_plus() {
    let d = dir();
    let p = || d.path().to_path_buf();
    assert_eq!(with_policy(p(), "inputs".into(), 1).unwrap(), "Completed");
    assert_eq!(with_policy(p(), "inputs".into(), 1).unwrap(), "Cached");
    assert_eq!(POLICY_VALUES.load(SeqCst), 1);
    // INPUTS + RUN_ID: another key, and a new one in every flow run.
    assert_eq!(
        with_policy(p(), "inputs+run".into(), 1).unwrap(),
        "Completed"
    );
    assert_eq!(
        with_policy(p(), "inputs+run".into(), 1).unwrap(),
        "Completed"
    );
    assert_eq!(POLICY_VALUES.load(SeqCst), 3);
    // NONE: not cached, not persisted.
    let before = files(d.path()).len();
    assert_eq!(with_policy(p(), "none".into(), 1).unwrap(), "Completed");
    assert_eq!(POLICY_VALUES.load(SeqCst), 4);
    assert_eq!(files(d.path()).len(), before);
}

mod source_v1 {
    #[flowrun::task(name = "same")]
    pub fn same(x: u64) -> u64 {
        x + 1
    }
}
mod source_v2 {
    #[flowrun::task(name = "same")]
    pub fn same(x: u64) -> u64 {
        x + 2
    }
}
mod source_v3 {
    #[flowrun::task(name = "same")]
    pub fn same(x: u64) -> u64 {
        x + 1
    }
}

#[test]
fn the_task_source_hash_is_fixed_at_compile_time_and_follows_the_code() {
    use flowrun::Task;
    let v1 = source_v1::same::meta().source_hash().unwrap();
    let v2 = source_v2::same::meta().source_hash().unwrap();
    let v3 = source_v3::same::meta().source_hash().unwrap();
    assert_eq!(v1.len(), 64);
    assert_ne!(v1, v2, "an edited body is another source");
    assert_eq!(v1, v3, "the same tokens are the same source");
}

// ------------------------------------------- key functions, expiry, refresh

static GREETINGS: AtomicUsize = AtomicUsize::new(0);

fn case_insensitive(ctx: &CacheKeyContext<'_>) -> Option<String> {
    let name: String = ctx.input(0)?;
    (!name.starts_with("nocache")).then(|| name.to_lowercase())
}

#[task(cache_key_fn = case_insensitive)]
fn greet(name: String) -> String {
    GREETINGS.fetch_add(1, SeqCst);
    format!("hello {name}")
}

#[flow]
fn greetings(dir: PathBuf, names: Vec<String>) -> Vec<(String, String)> {
    let task = greet.with_options(at(&dir));
    names.into_iter().map(|n| outcome(task.submit(n))).collect()
}

#[test]
fn cache_key_fn_decides_the_key_and_none_means_not_cached() {
    let d = dir();
    let out = greetings(
        d.path().into(),
        vec![
            "Ada".into(),
            "ADA".into(),
            "nocache".into(),
            "nocache".into(),
        ],
    )
    .unwrap();
    let states: Vec<&str> = out.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(states, ["Completed", "Cached", "Completed", "Completed"]);
    // A hit returns the stored value, computed for the first spelling.
    assert_eq!(out[1].0, "hello Ada");
    assert_eq!(GREETINGS.load(SeqCst), 3);
}

counting_task!(
    EXPIRING,
    #[task(cache_policy = INPUTS, cache_expiration = 0.4)]
    fn expiring
);

#[flow]
fn expiring_flow(dir: PathBuf) -> String {
    final_state(expiring.with_options(at(&dir)).submit(7))
}

#[test]
fn a_cached_result_expires_after_cache_expiration() {
    let d = dir();
    assert_eq!(expiring_flow(d.path().into()).unwrap(), "Completed");
    assert_eq!(expiring_flow(d.path().into()).unwrap(), "Cached");
    assert_eq!(EXPIRING.load(SeqCst), 1);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(expiring_flow(d.path().into()).unwrap(), "Completed");
    assert_eq!(EXPIRING.load(SeqCst), 2, "expired: executed again");
    assert_eq!(expiring_flow(d.path().into()).unwrap(), "Cached");
}

static REFRESHED: AtomicUsize = AtomicUsize::new(0);

#[task(cache_policy = INPUTS)]
fn counted(_x: u64) -> usize {
    REFRESHED.fetch_add(1, SeqCst) + 1
}

#[flow]
fn refreshing(dir: PathBuf, refresh: bool) -> (usize, String) {
    outcome(
        counted
            .with_options(at(&dir).refresh_cache(refresh))
            .submit(1),
    )
}

#[test]
fn refresh_cache_executes_and_replaces_the_cached_result() {
    let d = dir();
    let p = || d.path().to_path_buf();
    assert_eq!(refreshing(p(), false).unwrap(), (1, "Completed".into()));
    assert_eq!(refreshing(p(), false).unwrap(), (1, "Cached".into()));
    assert_eq!(refreshing(p(), true).unwrap(), (2, "Completed".into()));
    // The refreshed value replaced the old one.
    assert_eq!(refreshing(p(), false).unwrap(), (2, "Cached".into()));
    assert_eq!(REFRESHED.load(SeqCst), 2);
}

// ----------------------------------------------------------- failure paths

/// Serializes only when asked to: a key that cannot be computed.
#[derive(Clone, serde::Deserialize)]
struct Stubborn(bool);

impl serde::Serialize for Stubborn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 {
            s.serialize_bool(true)
        } else {
            Err(serde::ser::Error::custom(
                "this value refuses to be serialized",
            ))
        }
    }
}

static STUBBORN: AtomicUsize = AtomicUsize::new(0);

#[task(cache_policy = INPUTS, task_run_name = "stubborn-{tag}")]
fn stubborn(tag: String, value: Stubborn) -> bool {
    let _ = tag;
    STUBBORN.fetch_add(1, SeqCst);
    value.0
}

#[flow]
fn stubborn_flow(dir: PathBuf, tag: String, ok: bool) -> (bool, String) {
    outcome(stubborn.with_options(at(&dir)).submit(tag, Stubborn(ok)))
}

#[test]
fn a_key_that_cannot_be_computed_means_no_caching_and_one_warning() {
    let d = dir();
    let tag = format!("uncomputable-{}", std::process::id());
    for round in 1..=2 {
        assert_eq!(
            stubborn_flow(d.path().into(), tag.clone(), false).unwrap(),
            (false, "Completed".into()),
            "never a hit"
        );
        assert_eq!(STUBBORN.load(SeqCst), round);
    }
    assert_eq!(
        warnings_with("cache key cannot be computed", &format!("stubborn-{tag}")),
        2,
        "one warning per call"
    );
    // Still persisted, each call in a file of its own run, never under a
    // key another call could hit.
    assert_eq!(files(d.path()).len(), 2);
    // The same task with an input that serializes is cached.
    let ok_tag = format!("computable-{}", std::process::id());
    stubborn_flow(d.path().into(), ok_tag.clone(), true).unwrap();
    assert_eq!(
        stubborn_flow(d.path().into(), ok_tag, true).unwrap(),
        (true, "Cached".into())
    );
}

/// No serde at all: the key cannot be computed either.
#[derive(Clone)]
struct Opaque(u32);

static OPAQUE: AtomicUsize = AtomicUsize::new(0);

#[task(cache_policy = INPUTS + TASK_SOURCE)]
fn opaque(x: Opaque) -> u32 {
    OPAQUE.fetch_add(1, SeqCst);
    x.0
}

#[flow]
fn opaque_flow(dir: PathBuf) -> String {
    let f = opaque.with_options(at(&dir)).submit(Opaque(3));
    assert_eq!(f.result().unwrap(), 3);
    f.state().name().to_owned()
}

#[test]
fn arguments_without_serde_are_never_cached() {
    let d = dir();
    assert_eq!(opaque_flow(d.path().into()).unwrap(), "Completed");
    assert_eq!(opaque_flow(d.path().into()).unwrap(), "Completed");
    assert_eq!(OPAQUE.load(SeqCst), 2);
}

/// Executions of `fragile` by argument (each test uses its own).
static FRAGILE: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

fn fragile_runs(x: u64) -> usize {
    FRAGILE.lock().unwrap().iter().filter(|v| **v == x).count()
}

#[task(cache_policy = INPUTS + TASK_SOURCE, task_run_name = "fragile-{x}")]
fn fragile(x: u64) -> u64 {
    FRAGILE.lock().unwrap().push(x);
    x * 3
}

/// The value, the state's name and the run's cache key.
#[flow]
fn fragile_flow(dir: PathBuf, x: u64) -> (u64, String, String) {
    let f = fragile.with_options(at(&dir)).submit(x);
    (
        f.result().unwrap(),
        f.state().name().to_owned(),
        f.run_ref().cache_key().unwrap().to_owned(),
    )
}

#[test]
fn a_deleted_result_file_is_recomputed_and_rewritten_with_one_warning() {
    let d = dir();
    let (_, state, key) = fragile_flow(d.path().into(), 1).unwrap();
    assert_eq!(state, "Completed");
    assert_eq!(
        warnings_with("was deleted", "fragile-1"),
        0,
        "a key never stored is a silent miss"
    );
    let file = d.path().join(&key);
    assert!(file.exists(), "the file is named by the cache key");
    std::fs::remove_file(&file).unwrap();
    let (value, state, again) = fragile_flow(d.path().into(), 1).unwrap();
    assert_eq!((value, state.as_str()), (3, "Completed"));
    assert_eq!(again, key);
    assert_eq!(fragile_runs(1), 2, "the result was computed again");
    assert!(file.exists(), "and written again");
    // One warning, naming the run, the missing file and the key.
    let deleted = format!("was deleted, so it runs again: {}", file.display());
    assert_eq!(warnings_with(&deleted, "fragile-1"), 1);
    assert_eq!(warnings_with(&format!("cache key {key}"), "fragile-1"), 1);
    assert_eq!(fragile_flow(d.path().into(), 1).unwrap().1, "Cached");

    // Removed through the storage (as `flowrun cache clear` removes all):
    // forgotten, so a plain miss.
    assert!(ResultStorage::new(d.path()).remove(&key).unwrap());
    assert_eq!(fragile_flow(d.path().into(), 1).unwrap().1, "Completed");
    assert_eq!(fragile_runs(1), 3);
    assert_eq!(
        warnings_with("was deleted", "fragile-1"),
        1,
        "no new warning"
    );
}

#[test]
fn a_corrupt_or_truncated_result_file_is_never_a_hit() {
    let d = dir();
    let (_, _, key) = fragile_flow(d.path().into(), 2).unwrap();
    let file = d.path().join(&key);
    let whole = std::fs::read(&file).unwrap();
    let before = fragile_runs(2);
    // A changed bit in the value (which still decodes: 6 becomes 7, a
    // wrong hit without the checksum), then a file cut short.
    let mut flipped = whole.clone();
    *flipped.last_mut().unwrap() ^= 0x01;
    for (i, broken) in [flipped, whole[..whole.len() / 2].to_vec()]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&file, broken).unwrap();
        let (value, state, _) = fragile_flow(d.path().into(), 2).unwrap();
        assert_eq!((value, state.as_str()), (6, "Completed"));
        assert_eq!(fragile_runs(2), before + i + 1);
        assert!(matches!(
            ResultStorage::new(d.path()).read(&key),
            Lookup::Hit(_)
        ));
    }
    assert!(warnings_with("cached result cannot be used", "fragile-2") >= 2);
}

#[test]
fn storage_that_cannot_be_written_leaves_the_run_completed_with_a_warning() {
    let d = dir();
    // A folder under a regular file cannot be created.
    let blocker = d.path().join("a-file");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let unwritable = blocker.join("storage");
    for round in 1..=2 {
        let (value, state, _) = fragile_flow(unwritable.clone(), 5).unwrap();
        assert_eq!((value, state.as_str()), (15, "Completed"));
        assert_eq!(fragile_runs(5), round);
    }
    assert!(warnings_with("was not persisted", "fragile-5") >= 2);
}

// ------------------------------------------------------------ persistence

#[task(
    persist_result = true,
    cache_policy = NONE,
    result_storage_key = "{flow.name}-{task_run.name}"
)]
fn kept(words: Vec<String>) -> Vec<String> {
    words.into_iter().rev().collect()
}

#[flow]
fn keeping(dir: PathBuf) -> String {
    final_state(
        kept.with_options(at(&dir))
            .submit(vec!["a".to_owned(), "b".to_owned()]),
    )
}

#[test]
fn persist_result_writes_the_result_in_its_codec_under_the_key_template() {
    let d = dir();
    assert_eq!(keeping(d.path().into()).unwrap(), "Completed");
    assert_eq!(keeping(d.path().into()).unwrap(), "Completed", "not cached");
    let value: Vec<String> = persisted(d.path(), "keeping-kept-0");
    assert_eq!(value, ["b", "a"]);
}

counting_task!(
    NOT_PERSISTED,
    #[task(cache_policy = INPUTS)]
    fn maybe_persisted
);

#[flow]
fn not_persisting(dir: PathBuf) -> String {
    final_state(
        maybe_persisted
            .with_options(at(&dir).persist_result(false))
            .submit(1),
    )
}

#[test]
fn persist_result_false_turns_caching_off() {
    let d = dir();
    assert_eq!(not_persisting(d.path().into()).unwrap(), "Completed");
    assert_eq!(not_persisting(d.path().into()).unwrap(), "Completed");
    assert_eq!(NOT_PERSISTED.load(SeqCst), 2);
    assert!(files(d.path()).is_empty());
}

/// Why a run whose result key comes from `template` failed.
#[flow]
fn template_error(dir: PathBuf, template: String) -> String {
    let f = maybe_persisted
        .with_options(at(&dir).result_storage_key(&template))
        .submit(1);
    f.result().unwrap_err().message().to_owned()
}

#[test]
fn an_invalid_key_template_fails_the_run_naming_it() {
    let d = dir();
    let message = template_error(d.path().into(), "{task_run.nmae}".into()).unwrap();
    assert!(
        message.contains("unknown placeholder {task_run.nmae}"),
        "{message}"
    );
}

/// The folder of the records of stored keys is not a result's name.
#[test]
fn a_key_template_cannot_name_the_records_folder() {
    let d = dir();
    let message = template_error(d.path().into(), ".stored-keys".into()).unwrap();
    assert!(
        message.contains("gave \".stored-keys\", which is reserved"),
        "{message}"
    );
}

static UPSTREAM: AtomicUsize = AtomicUsize::new(0);
static DOWNSTREAM: AtomicUsize = AtomicUsize::new(0);

#[task(cache_policy = INPUTS + TASK_SOURCE)]
fn source_value(x: u64) -> u64 {
    UPSTREAM.fetch_add(1, SeqCst);
    x + 100
}

#[task]
fn uncached_value(x: u64) -> u64 {
    x + 1
}

#[task(cache_policy = INPUTS + TASK_SOURCE)]
fn combine(a: u64, b: u64) -> u64 {
    DOWNSTREAM.fetch_add(1, SeqCst);
    a * b
}

#[flow]
fn chained(dir: PathBuf, x: u64) -> (u64, String) {
    let a = source_value.with_options(at(&dir)).submit(x);
    let b = uncached_value.submit(x);
    let c = combine.with_options(at(&dir)).submit(a, b);
    (c.result().unwrap(), c.state().name().to_owned())
}

#[test]
fn downstream_keys_follow_upstream_keys_and_values() {
    let d = dir();
    let p = || d.path().to_path_buf();
    assert_eq!(chained(p(), 1).unwrap(), (202, "Completed".into()));
    assert_eq!(chained(p(), 1).unwrap(), (202, "Cached".into()));
    assert_eq!((UPSTREAM.load(SeqCst), DOWNSTREAM.load(SeqCst)), (1, 1));
    // Another upstream value (through the uncached task too): a miss.
    assert_eq!(chained(p(), 2).unwrap(), (306, "Completed".into()));
    assert_eq!(DOWNSTREAM.load(SeqCst), 2);
}

static TICKS: AtomicU64 = AtomicU64::new(0);
static TICKED: AtomicUsize = AtomicUsize::new(0);

/// Not deterministic: a new value at each execution.
#[task(cache_policy = INPUTS + TASK_SOURCE)]
fn tick() -> u64 {
    TICKS.fetch_add(1, SeqCst) + 1
}

#[task(cache_policy = INPUTS)]
fn after_tick(t: u64) -> u64 {
    TICKED.fetch_add(1, SeqCst);
    t * 10
}

/// The upstream's value and state, then the downstream's.
#[flow]
fn ticking(dir: PathBuf, refresh: bool) -> ((u64, String), (u64, String)) {
    let up = tick.with_options(at(&dir).refresh_cache(refresh)).submit();
    let down = after_tick.with_options(at(&dir)).submit(&up);
    (outcome(up), outcome(down))
}

#[test]
fn an_upstream_computed_again_under_its_key_gives_its_downstream_a_new_key() {
    let d = dir();
    let p = || d.path().to_path_buf();
    let done = |v: u64, s: &str| (v, s.to_owned());
    assert_eq!(
        ticking(p(), false).unwrap(),
        (done(1, "Completed"), done(10, "Completed"))
    );
    assert_eq!(
        ticking(p(), false).unwrap(),
        (done(1, "Cached"), done(10, "Cached"))
    );
    // The upstream executes again under the same key and gives another
    // value: the downstream must not hit the result made from the old one.
    assert_eq!(
        ticking(p(), true).unwrap(),
        (done(2, "Completed"), done(20, "Completed"))
    );
    assert_eq!(TICKED.load(SeqCst), 2);
    // The new pair is what is cached now (as after a resume).
    assert_eq!(
        ticking(p(), false).unwrap(),
        (done(2, "Cached"), done(20, "Cached"))
    );
    // The same when the upstream's file is gone: it executes again.
    let upstream_file = files(d.path())
        .into_iter()
        .find(|f| persisted::<u64>(d.path(), f.file_name().unwrap().to_str().unwrap()) == 2)
        .expect("the upstream's result file");
    std::fs::remove_file(upstream_file).unwrap();
    assert_eq!(
        ticking(p(), false).unwrap(),
        (done(3, "Completed"), done(30, "Completed"))
    );
    assert_eq!((TICKS.load(SeqCst), TICKED.load(SeqCst)), (3, 3));
}

// ------------------------------------------------- parameters in key names

static REPORTS: AtomicUsize = AtomicUsize::new(0);

#[task(
    cache_policy = INPUTS + TASK_SOURCE,
    result_storage_key = "report-{parameters[day]}-{parameters[n]}-{task_run.task_name}"
)]
fn report(day: String, n: u64) -> u64 {
    REPORTS.fetch_add(1, SeqCst);
    day.len() as u64 * n
}

/// A submitted run and a direct call; the state of the submitted one.
#[flow]
fn reports(dir: PathBuf) -> (u64, u64, String) {
    let task = report.with_options(at(&dir));
    let f = task.submit("monday".to_owned(), 2);
    let direct = task.call("tue".to_owned(), 3);
    (f.result().unwrap(), direct, f.state().name().to_owned())
}

#[test]
fn result_storage_key_names_files_after_the_runs_parameters() {
    let d = dir();
    assert_eq!(
        reports(d.path().into()).unwrap(),
        (12, 9, "Completed".to_owned())
    );
    let names: Vec<String> = files(d.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["report-monday-2-report", "report-tue-3-report"]);
    assert_eq!(persisted::<u64>(d.path(), "report-monday-2-report"), 12);
    // The files are where the next flow run's lookups find them.
    assert_eq!(
        reports(d.path().into()).unwrap(),
        (12, 9, "Cached".to_owned())
    );
    assert_eq!(REPORTS.load(SeqCst), 2);
}

#[task]
fn day_name() -> String {
    "wed".to_owned()
}

#[flow]
fn report_of_upstream(dir: PathBuf) -> String {
    let day = day_name.submit();
    let f = report.with_options(at(&dir)).submit(&day, 1);
    f.wait();
    f.state().message().unwrap_or_default().to_owned()
}

#[flow]
fn report_misnamed(dir: PathBuf) -> String {
    let f = square
        .with_options(at(&dir).result_storage_key("sq-{parameters[y]}"))
        .submit(3);
    f.wait();
    f.state().message().unwrap_or_default().to_owned()
}

#[test]
fn a_parameter_a_key_cannot_name_fails_the_run_saying_why() {
    let d = dir();
    let message = report_of_upstream(d.path().into()).unwrap();
    assert!(
        message.contains("{parameters[day]}")
            && message.contains("the result of task run 'day_name-0'"),
        "{message}"
    );
    // A template given at run time names no parameter of the task.
    let message = report_misnamed(d.path().into()).unwrap();
    assert!(message.contains("`y` is not a parameter"), "{message}");
    assert!(files(d.path()).is_empty());
}

// ------------------------------------------------------------ direct calls

/// The storage of the tasks below, named in their attributes so that a
/// plain direct call `cube(x)` uses it: a folder of this test process in
/// cargo's directory for test data. Not a `TempDir`: a static is never
/// dropped, and every local-cluster worker (this program started again)
/// builds these tasks too, so each would leave a folder in /tmp.
fn direct_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("caching-direct-{}", std::process::id()));
        // Left by an earlier process that had this id: its results
        // would be hits here.
        let _ = std::fs::remove_dir_all(&dir);
        dir
    })
    .clone()
}

/// `name state-name` of each completed run of the tasks below.
static DIRECT_STATES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn note_state(run: &flowrun::RunRef, state: &flowrun::State) {
    DIRECT_STATES
        .lock()
        .unwrap()
        .push(format!("{} {}", run.name(), state.name()));
}

fn states_of(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = DIRECT_STATES
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.starts_with(prefix))
        .map(|s| s.split(' ').nth(1).unwrap().to_owned())
        .collect();
    v.sort();
    v
}

static CUBES: AtomicUsize = AtomicUsize::new(0);

#[task(
    cache_policy = INPUTS + TASK_SOURCE,
    result_storage = direct_dir(),
    on_completion = [note_state]
)]
fn cube(x: u64) -> u64 {
    CUBES.fetch_add(1, SeqCst);
    x * x * x
}

#[flow]
fn cubes(xs: Vec<u64>) -> Vec<u64> {
    let mut out = Vec::new();
    for x in xs {
        out.push(cube(x));
    }
    out
}

#[test]
fn direct_calls_are_cached_and_a_hit_executes_nothing() {
    assert_eq!(cubes(vec![2, 3]).unwrap(), [8, 27]);
    assert_eq!(CUBES.load(SeqCst), 2);
    assert_eq!(states_of("cube-"), ["Completed", "Completed"]);

    assert_eq!(cubes(vec![2, 3, 4]).unwrap(), [8, 27, 64]);
    assert_eq!(CUBES.load(SeqCst), 3, "only the new input executed");
    assert_eq!(
        states_of("cube-"),
        ["Cached", "Cached", "Completed", "Completed", "Completed"]
    );
}

static HALVES: AtomicUsize = AtomicUsize::new(0);

/// A fallible task: a hit returns `Ok(value)`; an `Err` is never stored.
#[task(cache_policy = INPUTS + TASK_SOURCE, on_completion = [note_state])]
fn halve(x: u64) -> Result<u64, String> {
    HALVES.fetch_add(1, SeqCst);
    if x % 2 == 1 {
        Err(format!("{x} is odd"))
    } else {
        Ok(x / 2)
    }
}

/// A submitted run, then direct calls with the same arguments.
#[flow]
fn halves(dir: PathBuf) -> (u64, Result<u64, String>, Result<u64, String>) {
    let task = halve.with_options(at(&dir));
    let submitted = task.submit(10).result().unwrap();
    (submitted, task.call(10), task.call(7))
}

#[test]
fn a_direct_call_shares_the_key_of_a_submitted_run_and_returns_ok_on_a_hit() {
    let d = dir();
    let (submitted, direct, odd) = halves(d.path().into()).unwrap();
    assert_eq!(submitted, 5);
    assert_eq!(direct, Ok(5));
    assert_eq!(odd, Err("7 is odd".to_owned()));
    assert_eq!(HALVES.load(SeqCst), 2, "the direct call of 10 was a hit");
    assert_eq!(states_of("halve-"), ["Cached", "Completed"]);
    assert_eq!(files(d.path()).len(), 1, "a failure is not persisted");
}

#[flow]
fn keeping_direct(dir: PathBuf) -> String {
    let value = kept
        .with_options(at(&dir).result_storage_key("direct-{flow_run.name}"))
        .call(vec!["a".into(), "b".into()]);
    assert_eq!(value, ["b", "a"]);
    format!("direct-{}", flowrun::current_flow_run_name().unwrap())
}

#[test]
fn a_direct_call_with_persist_result_writes_its_result() {
    let d = dir();
    let file = keeping_direct(d.path().into()).unwrap();
    let value: Vec<String> = persisted(d.path(), &file);
    assert_eq!(value, ["b", "a"]);
    let storage = ResultStorage::new(d.path());
    assert_eq!(storage.info(&file).unwrap().writer_pid, std::process::id());
}

static OPAQUE_DIRECT: AtomicUsize = AtomicUsize::new(0);

#[task(cache_policy = INPUTS + TASK_SOURCE, task_run_name = "opaque-direct-{tag}")]
fn opaque_direct(tag: String, x: Opaque) -> u32 {
    let _ = tag;
    OPAQUE_DIRECT.fetch_add(1, SeqCst);
    x.0
}

#[flow]
fn opaque_direct_flow(dir: PathBuf, tag: String) -> u32 {
    opaque_direct.with_options(at(&dir)).call(tag, Opaque(4))
}

#[test]
fn a_direct_call_whose_key_cannot_be_computed_executes_with_one_warning() {
    let d = dir();
    let tag = format!("t{}", std::process::id());
    assert_eq!(opaque_direct_flow(d.path().into(), tag.clone()).unwrap(), 4);
    assert_eq!(opaque_direct_flow(d.path().into(), tag.clone()).unwrap(), 4);
    assert_eq!(OPAQUE_DIRECT.load(SeqCst), 2);
    assert_eq!(
        files(d.path()).len(),
        2,
        "persisted once per run, under no key"
    );
    let run = format!("opaque-direct-{tag}");
    assert_eq!(
        warnings_with("its cache key cannot be computed", &run),
        2,
        "one warning per call"
    );
}

static FETCHES: AtomicUsize = AtomicUsize::new(0);

#[task(cache_policy = INPUTS + TASK_SOURCE, result_storage = direct_dir())]
async fn fetch_cached(id: u64) -> String {
    FETCHES.fetch_add(1, SeqCst);
    format!("item-{id}")
}

#[flow]
async fn fetching(ids: Vec<u64>) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(fetch_cached(id).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn async_direct_calls_are_cached_too() {
    assert_eq!(fetching(vec![1]).await.unwrap(), ["item-1"]);
    assert_eq!(fetching(vec![1, 2]).await.unwrap(), ["item-1", "item-2"]);
    assert_eq!(FETCHES.load(SeqCst), 2);
}

// ------------------------------------------------------------- run history

counting_task!(
    RECORDED,
    #[task(cache_policy = INPUTS)]
    fn recorded
);

#[flow]
fn recorded_flow(dir: PathBuf) -> u64 {
    recorded.with_options(at(&dir)).submit(9).result().unwrap()
}

#[test]
fn a_cache_hit_is_recorded_in_the_run_history_with_its_key() {
    use flowrun::history::{RunsQuery, Store};
    let d = dir();
    let home = flowrun::history::temp_home();
    recorded_flow(d.path().into()).unwrap();
    recorded_flow(d.path().into()).unwrap();
    assert_eq!(RECORDED.load(SeqCst), 1);
    home.flush();
    let store = Store::open(home.path()).unwrap();
    let runs = store.runs(&RunsQuery::default()).unwrap();
    assert_eq!(runs.len(), 2);
    let mut seen = Vec::new();
    for run in &runs {
        let tasks = store.task_runs(run, 0, 10).unwrap();
        assert_eq!(tasks.len(), 1);
        let t = &tasks[0];
        assert_eq!(t.state, "Completed");
        seen.push((t.state_name.clone(), t.cache_key.clone().unwrap()));
    }
    seen.sort();
    assert_eq!(seen[0].0, None, "the first run executed");
    assert_eq!(seen[1].0.as_deref(), Some("Cached"));
    assert_eq!(seen[0].1, seen[1].1, "both runs recorded the same key");
}

// ---------------------------------------------------- a temporary home

/// Names no `result_storage`: its result goes under the flow run's home.
#[task(
    persist_result = true,
    cache_policy = NONE,
    result_storage_key = "homed-{flow_run.id}-{task_run.name}"
)]
fn homed(x: u64) -> u64 {
    x + 1
}

/// The files `homed` wrote for a run of it.
fn homed_file<T: Send + 'static>(f: &TaskFuture<T>) -> String {
    f.wait();
    format!(
        "homed-{}-{}",
        flowrun::current_flow_run_id().unwrap(),
        f.name()
    )
}

#[flow]
fn homed_subflow(x: u64) -> String {
    homed_file(&homed.submit(x))
}

/// Calls a subflow on a thread of the pool, which has no home of its own.
#[task]
fn calls_homed_subflow(x: u64) -> String {
    homed_subflow(x).unwrap()
}

#[flow]
fn homed_flow() -> Vec<String> {
    let own = homed_file(&homed.submit(1));
    let sub = calls_homed_subflow.submit(2).result().unwrap();
    vec![own, sub]
}

#[test]
fn a_temporary_home_holds_the_results_of_tasks_that_name_no_storage() {
    common::console_lines();
    // What this process uses without a temporary home: FLOWRUN_HOME's (or
    // ~/.flowrun's) storage.
    let process_storage = flowrun::cache::default_storage();
    let home = flowrun::history::temp_home();
    let storage = home.path().join("storage");
    assert_eq!(flowrun::cache::default_storage().path(), storage);
    let written = homed_flow().unwrap();
    assert_eq!(written.len(), 2);
    let values: Vec<u64> = written.iter().map(|f| persisted(&storage, f)).collect();
    assert_eq!(values, [2, 3], "the flow's and its subflow's results");
    for file in &written {
        assert!(
            !process_storage.path().join(file).exists(),
            "{file} was also written to {}",
            process_storage.path().display()
        );
    }
    drop(home);
    // Its home gone, this thread's flows store under the process's home again.
    assert_eq!(
        flowrun::cache::default_storage().path(),
        process_storage.path()
    );
}

// ------------------------------------------------------------ local cluster

mod cluster {
    use super::*;

    /// Counts executions in a file: the tasks run in worker processes.
    #[task(cache_policy = INPUTS + TASK_SOURCE)]
    fn logged_square(log: String, x: u64) -> u64 {
        common::append(&log, &x.to_string());
        x * x
    }

    /// Its result is its process id, persisted under a name of its own.
    #[task(persist_result = true, cache_policy = NONE, result_storage_key = "pid-{task_run.name}")]
    fn my_pid() -> u32 {
        std::process::id()
    }

    #[flow(task_runner = common::local_cluster(1, 1))]
    fn pid_on_cluster(dir: PathBuf) -> String {
        let f = my_pid.with_options(at(&dir)).submit();
        f.wait();
        f.name()
    }

    #[flow(task_runner = common::local_cluster(1, 1))]
    fn homed_on_cluster() -> (String, u32) {
        let f = my_pid.submit();
        f.wait();
        (f.name(), f.result().unwrap())
    }

    #[test]
    fn a_worker_writes_results_under_the_flow_s_temporary_home() {
        common::console_lines();
        let process_storage = flowrun::cache::default_storage();
        let home = flowrun::history::temp_home();
        let storage = ResultStorage::new(home.path().join("storage"));
        let (name, worker) = homed_on_cluster().unwrap();
        let file = format!("pid-{name}");
        assert_ne!(worker, std::process::id(), "the task ran in a worker");
        assert_eq!(persisted::<u32>(storage.path(), &file), worker);
        assert_eq!(storage.info(&file).unwrap().writer_pid, worker);
        assert!(
            !process_storage.path().join(&file).exists(),
            "{file} was also written to {}",
            process_storage.path().display()
        );
    }

    #[test]
    fn a_worker_writes_the_results_it_makes() {
        let dir = common::scratch("cache-cluster-writer");
        let name = pid_on_cluster(dir.clone()).unwrap();
        let file = format!("pid-{name}");
        let worker: u32 = persisted(&dir, &file);
        let storage = ResultStorage::new(&dir);
        assert_ne!(worker, std::process::id(), "the task ran in a worker");
        assert_eq!(
            storage.info(&file).unwrap().writer_pid,
            worker,
            "the worker wrote it, not the flow process"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[task(cache_policy = INPUTS + TASK_SOURCE)]
    fn logged_sum(log: String, values: Vec<u64>) -> u64 {
        common::append(&log, "sum");
        values.iter().sum()
    }

    #[flow(task_runner = common::local_cluster(2, 1))]
    fn on_cluster(dir: PathBuf, log: String, n: u64) -> (u64, Vec<String>) {
        let opts = || at(&dir);
        let runs: Vec<_> = (0..n)
            .map(|x| logged_square.with_options(opts()).submit(log.clone(), x))
            .collect();
        let values: Vec<u64> = runs.iter().map(|f| f.result().unwrap()).collect();
        let total = logged_sum.with_options(opts()).submit(log.clone(), values);
        let mut names: Vec<String> = runs.iter().map(|f| f.state().name().to_owned()).collect();
        let sum = total.result().unwrap();
        names.push(total.state().name().to_owned());
        (sum, names)
    }

    #[test]
    fn cached_tasks_on_the_local_cluster_execute_once() {
        let dir = common::scratch("cache-cluster-results");
        let log = common::scratch("cache-cluster-log");
        let log_s = log.to_str().unwrap().to_owned();
        let (sum, names) = on_cluster(dir.clone(), log_s.clone(), 4).unwrap();
        assert_eq!(sum, 14);
        assert!(names.iter().all(|n| n == "Completed"), "{names:?}");
        assert_eq!(common::lines(&log_s).len(), 5);
        assert_eq!(files(&dir).len(), 5, "every result persisted");

        let (sum, names) = on_cluster(dir.clone(), log_s.clone(), 5).unwrap();
        assert_eq!(sum, 30);
        assert_eq!(
            names,
            [
                "Cached",
                "Cached",
                "Cached",
                "Cached",
                "Completed",
                "Completed"
            ]
        );
        let lines = common::lines(&log_s);
        assert_eq!(lines[5..], ["4".to_owned(), "sum".to_owned()]);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&log);
    }
}

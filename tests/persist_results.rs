//! Persisted results: `persist_result` on flows, the process default
//! (`FLOWRUN_PERSIST_RESULTS`, stored under `$FLOWRUN_HOME/storage`), and
//! `flowrun cache clear` (the history store's `clear_cache`) forgetting
//! what was stored there.
//!
//! The default is a process setting, so its tests run in a child process:
//! this test binary again, with `--exact child_process`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use flowrun::cache::{Lookup, ResultStorage};
use flowrun::{flow, task, FlowOptions};

/// The state names of task futures (of any output types), in order.
macro_rules! state_names {
    ($($future:expr),*) => {
        vec![$($future.state().name().to_owned()),*]
    };
}

#[flow(
    persist_result = true,
    result_storage_key = "{flow.name}-{flow_run.name}"
)]
fn summed(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

#[test]
fn a_flow_with_persist_result_writes_its_value() {
    common::console_lines();
    let dir = tempfile::tempdir().unwrap();
    let run = summed
        .with_options(
            FlowOptions::new()
                .result_storage(dir.path())
                .run_name("first"),
        )
        .return_state(vec![1, 2, 3]);
    assert!(run.state().is_completed());
    let Lookup::Hit(bytes) = ResultStorage::new(dir.path()).read("summed-first") else {
        panic!("no result file summed-first")
    };
    assert_eq!(flowrun::runner::decode_value::<u64>(&bytes).unwrap(), 6);
}

/// Not serializable: persisting it can only warn.
#[derive(Debug, PartialEq)]
struct Opaque(u8);

#[flow(persist_result = true)]
fn opaque_flow() -> Opaque {
    Opaque(1)
}

#[test]
fn a_flow_value_that_cannot_be_serialized_is_not_persisted_with_a_warning() {
    let lines = common::console_lines();
    let dir = tempfile::tempdir().unwrap();
    let run = opaque_flow
        .with_options(FlowOptions::new().result_storage(dir.path()))
        .return_state();
    assert!(run.state().is_completed());
    let name = run.name().to_owned();
    assert_eq!(run.into_result().unwrap(), Opaque(1));
    let warned = lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains(&name) && l.contains("was not persisted"));
    assert!(warned, "a warning names the flow run");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

// ------------------------------------------------ what tasks inherit

static INHERITING: AtomicUsize = AtomicUsize::new(0);

#[task]
fn inheriting(x: u64) -> u64 {
    INHERITING.fetch_add(1, SeqCst);
    x * 3
}

#[task(persist_result = false)]
fn opting_out(x: u64) -> u64 {
    x * 5
}

#[flow]
fn sub_of_persisting() -> u64 {
    inheriting.submit(7).result().unwrap()
}

/// Runs the tasks above; the states of the two submitted runs of
/// `inheriting(2)`.
#[flow(persist_result = true)]
fn persisting_flow() -> Vec<String> {
    let a = inheriting.submit(2);
    a.wait();
    let b = inheriting.submit(2);
    b.wait();
    assert_eq!(inheriting(5), 15);
    assert_eq!(opting_out.submit(2).result().unwrap(), 10);
    assert_eq!(sub_of_persisting().unwrap(), 21);
    state_names![a, b]
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .starts_with('.')
        })
        .count()
}

#[test]
fn tasks_inherit_persist_result_and_result_storage_from_their_flow() {
    common::console_lines();
    let dir = tempfile::tempdir().unwrap();
    let before = INHERITING.load(SeqCst);
    let states = persisting_flow
        .with_options(FlowOptions::new().result_storage(dir.path()))
        .return_state()
        .into_result()
        .unwrap();
    // Persisting implies Prefect's default policy, which caches within the
    // flow run.
    assert_eq!(states, ["Completed", "Cached"]);
    assert_eq!(INHERITING.load(SeqCst) - before, 3, "2, 5 and 7");
    assert_eq!(
        files_in(dir.path()),
        5,
        "inheriting(2), the direct inheriting(5), the subflow's inheriting(7) \
         and value, and the flow's value; not opting_out's"
    );

    // `persist_result = false` for the flow run: its tasks do not persist.
    let off = tempfile::tempdir().unwrap();
    let before = INHERITING.load(SeqCst);
    let states = persisting_flow
        .with_options(
            FlowOptions::new()
                .persist_result(false)
                .result_storage(off.path()),
        )
        .return_state()
        .into_result()
        .unwrap();
    assert_eq!(states, ["Completed", "Completed"]);
    assert_eq!(INHERITING.load(SeqCst) - before, 4);
    assert_eq!(files_in(off.path()), 0);
}

// ------------------------------------------- the process default, in a child

static PLAIN: AtomicUsize = AtomicUsize::new(0);

#[task]
fn plain(x: u64) -> u64 {
    PLAIN.fetch_add(1, SeqCst);
    x + 1
}

static KEYED: AtomicUsize = AtomicUsize::new(0);

#[task(cache_policy = INPUTS)]
fn keyed(x: u64) -> u64 {
    KEYED.fetch_add(1, SeqCst);
    x * 2
}

/// Not serializable: the default skips it.
#[derive(Debug)]
struct Handle(#[allow(dead_code)] u8);

#[task]
fn unserializable() -> Handle {
    Handle(1)
}

#[flow]
fn defaults() -> Vec<String> {
    let a = plain.submit(1);
    a.wait();
    let b = plain.submit(1);
    let k = keyed.submit(4);
    let u = unserializable.submit();
    u.wait();
    b.wait();
    k.wait();
    state_names![a, b, k, u]
}

/// The process default is on, but this flow says no for its tasks.
#[flow(persist_result = false)]
fn not_persisting() -> Vec<String> {
    let a = plain.submit(10);
    a.wait();
    let b = plain.submit(10);
    let k = keyed.submit(40);
    b.wait();
    k.wait();
    state_names![a, b, k]
}

/// The flow process of the tests below (a no-op without its environment).
#[test]
fn child_process() {
    common::console_lines();
    let Some(which) = std::env::var_os("FLOWRUN_PERSIST_TEST_CHILD") else {
        return;
    };
    let states = if which == "flow-off" {
        not_persisting().unwrap()
    } else {
        defaults().unwrap()
    };
    println!(
        "STATES {} EXECUTED {} {}",
        states.join(","),
        PLAIN.load(SeqCst),
        KEYED.load(SeqCst)
    );
}

/// Runs the child with the default on, in `home`; returns its STATES line.
fn run_child(home: &Path) -> String {
    run_child_with(home, "1")
}

fn run_child_with(home: &Path, which: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process", "--nocapture", "-q"])
        .env("FLOWRUN_PERSIST_TEST_CHILD", which)
        .env("FLOWRUN_PERSIST_RESULTS", "true")
        .env("FLOWRUN_HOME", home)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find(|l| l.starts_with("STATES "))
        .unwrap_or_else(|| panic!("no STATES line in {stdout}"))
        .to_owned()
}

/// The result files in the home's storage (not the records of their keys,
/// in a dot folder).
fn stored(home: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(home.join("storage"))
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    out.retain(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'));
    out
}

#[test]
fn the_process_default_persists_under_flowrun_home_and_cache_clear_forgets_it() {
    common::console_lines();
    let home = tempfile::tempdir().unwrap();
    // Every task persists and caches with Prefect's default policy (within
    // the flow run); `keyed`'s own policy spans runs; a result that cannot
    // be serialized is skipped.
    assert_eq!(
        run_child(home.path()),
        "STATES Completed,Cached,Completed,Completed EXECUTED 1 1"
    );
    assert_eq!(
        stored(home.path()).len(),
        3,
        "plain's and keyed's results, and the flow's own value"
    );
    assert_eq!(
        run_child(home.path()),
        "STATES Completed,Cached,Cached,Completed EXECUTED 1 0"
    );

    // What `flowrun cache clear` does.
    let results = stored(home.path()).len();
    let mut store = flowrun::history::Store::open(home.path()).unwrap();
    let cleared = store.clear_cache().unwrap();
    assert!(results >= 3);
    assert_eq!(
        cleared.files, results,
        "results are counted, not key records"
    );
    assert!(stored(home.path()).is_empty());
    assert_eq!(
        run_child(home.path()),
        "STATES Completed,Cached,Completed,Completed EXECUTED 1 1",
        "after clearing, keyed executes again"
    );
}

#[test]
fn a_flow_with_persist_result_false_turns_the_process_default_off_for_its_tasks() {
    common::console_lines();
    let home = tempfile::tempdir().unwrap();
    // `plain` follows the flow and neither persists nor caches; `keyed`
    // asks for caching itself, which implies persisting.
    assert_eq!(
        run_child_with(home.path(), "flow-off"),
        "STATES Completed,Completed,Completed EXECUTED 2 1"
    );
    assert_eq!(stored(home.path()).len(), 1, "keyed's result only");
}

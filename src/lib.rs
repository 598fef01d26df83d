//! flowrun: Prefect-style flows and tasks for Rust, with a Dask-style
//! distributed task runner.
//!
//! Annotate functions with [`task`] and [`flow`]; calling the flow runs it,
//! and tasks called, submitted or mapped inside it become tracked task runs
//! with states, retries, timeouts and logs.
//!
//! ```
//! use flowrun::{flow, task};
//!
//! #[task]
//! fn double(x: u64) -> u64 {
//!     x * 2
//! }
//!
//! #[task]
//! fn total(values: Vec<u64>) -> u64 {
//!     values.iter().sum()
//! }
//!
//! #[flow]
//! fn pipeline(n: u64) -> u64 {
//!     let doubled = double.map(0..n).expect("one mapped argument");
//!     let values = flowrun::results(doubled).expect("doubling cannot fail");
//!     total(values)
//! }
//!
//! assert_eq!(pipeline(4).unwrap(), 12);
//! ```
//!
//! # Where things are
//!
//! - The crate root: what flows and tasks use: the [`task`] and [`flow`]
//!   macros, [`TaskFuture`] and the functions over futures ([`wait`],
//!   [`as_completed`], [`results`]), states, errors, options, the runners
//!   to choose from, the run logger and the current run's names.
//! - `dask`: the Dask-style task runner, its local cluster and its
//!   client of real Dask clusters (default feature `dask`).
//! - [`runner`]: for authors of task runners: the [`runner::TaskRunner`]
//!   trait, the calls it receives, serialized arguments, scopes, and the
//!   plumbing runners share.
//! - [`annotations`], [`progress`], [`registry`], [`logging`], [`worker`]:
//!   annotation scopes, the progress display, the task registry, the
//!   console log output, and worker mode.
//! - [`cache`]: persisted results and caching (`persist_result`,
//!   `cache_policy`, result storage).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

/// Turns a function into a task: calling, submitting or mapping it inside
/// a flow makes a tracked task run with a state, retries, a timeout and logs.
///
/// Arguments and the result must be owned and `Send + 'static` (a run may
/// move to another thread or, on the Dask runner, to another process; then
/// they must also be serde's `Serialize` and `DeserializeOwned`, which the
/// enclosing `#[flow]` checks at compile time).
///
/// # Options
///
/// `#[task(name = "...", description = "...", retries = n, retry_delay = ...,
/// retry_jitter_factor = f, timeout = seconds, tags = ["..."],
/// retry_condition_fn = f, task_run_name = "...{param}..." (or a function),
/// on_completion = [f, ...], on_failure = [...], on_running = [...],
/// log_prints = bool, crate = path)]`, and for persisted results and
/// caching (see below): `persist_result = bool, cache_policy = INPUTS +
/// TASK_SOURCE, cache_key_fn = f, cache_expiration = seconds, refresh_cache
/// = bool, result_storage = path, result_storage_key =
/// "...{task_run.name}..."`.
/// `print!`, `println!`, `eprint!` and `eprintln!` written in the body log
/// as lines of the task run (see [`prints`]); `log_prints = false` keeps
/// them plain, `log_prints = true` logs them even when
/// [`prints::set_log_prints`] turned that off. Prints in functions the body
/// calls are not rewritten.
/// `retry_delay` is seconds, a list of seconds (one per retry, the last
/// repeated) or `exponential(base, max = m)`. Numbers may also be
/// expressions (a constant, a `Duration`). An option the macro cannot use
/// is a compile error at its token; the task is still generated with that
/// option's default, so the code around it keeps compiling.
///
/// # Persisted results and caching
///
/// As in Prefect 3. `persist_result = true` writes the run's result (in its
/// serde codec) to result storage: a folder, `$FLOWRUN_HOME/storage` unless
/// `result_storage` names another. `cache_policy` names what the cache key
/// is made of: `INPUTS`, `TASK_SOURCE` (a hash of the function's tokens,
/// computed by the macro), `FLOW_PARAMETERS`, `RUN_ID`, `NONE`, combined
/// with `+` and checked at compile time; `persist_result = true` alone uses
/// Prefect's default, `INPUTS + TASK_SOURCE + RUN_ID`. `cache_key_fn =
/// f` computes the key instead (`fn(&CacheKeyContext) -> Option<String>`,
/// `None`: not cached). A submitted run whose key has a stored, unexpired
/// (`cache_expiration`) result completes at once in a `Completed` state
/// named `Cached`, without executing; `refresh_cache = true` executes and
/// replaces it. `result_storage_key` names the file from a template of
/// `{task_run.name}`, `{task.name}`, `{flow_run.id}`, `{flow_run.name}`,
/// `{flow.name}`, `{cache_key}` (checked at compile time). An argument that
/// cannot be serialized means no caching for that call, with a warning; a
/// missing or corrupt result file means the task executes again. Every
/// option also exists on [`TaskOptions`] for `.with_options`; see
/// [`cache`] for the whole story. A direct call (`f(x)`, `.call`) always
/// executes.
///
/// ```
/// use flowrun::{flow, task, TaskOptions};
///
/// #[task(cache_policy = INPUTS + TASK_SOURCE, cache_expiration = 3600)]
/// fn slow_square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[flow]
/// fn squares(storage: std::path::PathBuf) -> Vec<String> {
///     let task = slow_square.with_options(TaskOptions::new().result_storage(&storage));
///     let first = task.submit(3);
///     first.wait();
///     let again = task.submit(3);
///     assert_eq!(again.result().unwrap(), 9);
///     vec![first.state().name().to_owned(), again.state().name().to_owned()]
/// }
///
/// let storage = std::env::temp_dir().join(format!("flowrun-doc-cache-{}", std::process::id()));
/// assert_eq!(squares(storage.clone()).unwrap(), ["Completed", "Cached"]);
/// // The key spans flow runs: the next run reuses the result too.
/// assert_eq!(squares(storage.clone()).unwrap(), ["Cached", "Cached"]);
/// # std::fs::remove_dir_all(&storage).unwrap();
/// ```
///
/// # Call forms
///
/// The attribute turns `name` into a value of its own type (so it cannot be
/// a parameter name of the same function):
///
/// ```
/// use flowrun::{flow, task, unmapped, TaskOptions};
///
/// #[task]
/// fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// #[task]
/// fn add(a: u64, b: u64) -> u64 {
///     a + b
/// }
///
/// #[flow]
/// fn forms() -> u64 {
///     // Call it: runs now, on this thread, as a tracked run; returns its value.
///     let four = double(2);
///     // `.call` is the same, and applies the handle's options.
///     let six = double.call(3);
///     // `.submit` hands the run to the flow's runner and returns a future;
///     // a future passed as an argument is a dependency whose value the run gets.
///     let eight = double.submit(4);
///     let twelve = add.submit(&eight, four);
///     // `.map`: one run per element; `unmapped` passes the same value to each.
///     let shifted = add.map(vec![1, 2, 3], unmapped(10)).expect("one mapped length");
///     // `.with_options` overrides the attribute's options for this handle.
///     let patient = double.with_options(TaskOptions::new().retries(2).name("double-retried"));
///     let ten = patient.submit(5);
///     // `.wait_for` waits for runs without taking their values.
///     let after = add.wait_for(&ten).submit(six, 0);
///     let mapped: u64 = flowrun::results(shifted).expect("no run fails").iter().sum();
///     twelve.result().unwrap() + after.result().unwrap() + ten.result().unwrap() + mapped
/// }
///
/// assert_eq!(forms().unwrap(), 12 + 6 + 10 + 36);
/// ```
///
/// # Futures inside collections
///
/// A task that takes a `Vec<T>` also takes a `Vec<TaskFuture<T>>` (or
/// `&[TaskFuture<T>]`, `Vec<&TaskFuture<T>>`, an array of futures); one
/// that takes `[T; N]`, `Option<T>`, a tuple, or a `HashMap`/`BTreeMap`
/// with `T` values takes the same shape with futures in place of the
/// values. Every future in it is a dependency, as in Prefect: the run waits
/// for all of them, fails as `UpstreamFailed` if one fails, and gets the
/// values. On a local cluster the worker that runs the task reads the
/// upstream results itself (large ones from the result store), so a fan-in
/// never passes its data through the flow. `.map` takes collections of
/// futures and the future of a list (it waits for the list, as Prefect
/// does, then makes one run per element).
///
/// ```
/// use std::collections::BTreeMap;
///
/// use flowrun::{flow, task, TaskFuture};
///
/// #[task]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[task]
/// fn total(values: Vec<u64>) -> u64 {
///     values.iter().sum()
/// }
///
/// #[task]
/// fn describe(named: BTreeMap<String, u64>, extra: Option<u64>) -> String {
///     format!("{named:?} {extra:?}")
/// }
///
/// #[task]
/// fn upto(n: u64) -> Vec<u64> {
///     (1..=n).collect()
/// }
///
/// #[flow]
/// fn fan_in() -> (u64, String, u64) {
///     let squares: Vec<TaskFuture<u64>> = (1..=3).map(|x| square.submit(x)).collect();
///     let sum = total.submit(&squares);
///     let named: BTreeMap<String, TaskFuture<u64>> =
///         [("two".to_owned(), square.submit(2))].into();
///     let text = describe.submit(named, Some(square.submit(3)));
///     // Maps over the list `upto` returns.
///     let mapped = total.submit(square.map(upto.submit(3)).expect("one mapped argument"));
///     (sum.result().unwrap(), text.result().unwrap(), mapped.result().unwrap())
/// }
///
/// assert_eq!(fan_in().unwrap(), (14, r#"{"two": 4} Some(9)"#.to_owned(), 14));
/// ```
///
/// An empty collection or `None` passed as such an argument needs its type
/// (`Vec::<u64>::new()`, `None::<u64>`), since it could be either form.
///
/// # `Result` semantics
///
/// A task returning `Result<T, E>` (with `E: Display`) fails its run when it
/// returns `Err`, as a panic does; retries apply. Its futures hold `T`; a
/// direct call returns the `Result` itself.
///
/// ```
/// use flowrun::{flow, task};
///
/// #[task(retries = 2, retry_delay = 0)]
/// fn parse(text: String) -> Result<u32, std::num::ParseIntError> {
///     text.parse()
/// }
///
/// #[flow]
/// fn sum() -> u32 {
///     let good = parse.submit("41".to_owned());
///     let bad = parse.submit("x".to_owned());
///     assert!(bad.result().is_err());
///     assert!(parse("y".to_owned()).is_err());
///     good.result().unwrap() + 1
/// }
///
/// // A failed task run that the flow did not turn into its own failure
/// // is reported but does not fail the flow.
/// assert_eq!(sum().unwrap(), 42);
/// ```
///
/// # Hooks, run names, retry conditions and `allow_failure`
///
/// `on_completion`, `on_failure` and `on_running` take lists of functions
/// called with the run and its state (a failing hook is logged and changes
/// nothing); `task_run_name` is a template of the parameters, checked at
/// compile time, or a function; `retry_condition_fn` decides whether a
/// failed attempt is retried; [`allow_failure`] passes an upstream's
/// failure on as a value.
///
/// ```
/// use flowrun::{allow_failure, flow, task, RunRef, State, TaskError};
///
/// fn announce(run: &RunRef, state: &State) {
///     println!("{} ended {}", run.name(), state.kind());
/// }
///
/// fn not_bad_input(_run: &RunRef, error: &TaskError) -> bool {
///     !error.message().contains("bad")
/// }
///
/// #[task(
///     task_run_name = "fetch-{ok}",
///     retries = 2,
///     retry_condition_fn = not_bad_input,
///     on_failure = [announce],
/// )]
/// fn fetch(ok: bool) -> Result<u32, String> {
///     if ok { Ok(7) } else { Err("bad input".into()) }
/// }
///
/// #[task]
/// fn report(fetched: Result<u32, TaskError>) -> String {
///     match fetched {
///         Ok(v) => format!("got {v}"),
///         Err(e) => format!("no data: {}", e.message()),
///     }
/// }
///
/// #[flow]
/// fn pipeline() -> (String, String, String) {
///     let good = fetch.submit(true);
///     let name = good.name();
///     let good = report.submit(allow_failure(good));
///     let bad = report.submit(allow_failure(fetch.submit(false)));
///     (name, good.result().unwrap(), bad.result().unwrap())
/// }
///
/// let (name, good, bad) = pipeline().unwrap();
/// assert_eq!(name, "fetch-true");
/// assert_eq!(good, "got 7");
/// assert_eq!(bad, "no data: bad input");
/// ```
///
/// # `async` tasks
///
/// An `async fn` task is awaited by its runner; called directly or with
/// `.call` it returns a future, and its `TaskFuture` can be `.await`ed.
///
/// ```
/// use flowrun::{flow, task};
///
/// #[task]
/// async fn fetch(id: u32) -> String {
///     format!("item-{id}")
/// }
///
/// #[flow]
/// async fn gather() -> Vec<String> {
///     let first = fetch(1).await;
///     let second = fetch.submit(2).await.unwrap();
///     vec![first, second]
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(gather().await.unwrap(), ["item-1", "item-2"]);
/// # }
/// ```
pub use flowrun_macros::task;

/// Turns a function into a flow: calling it runs it as a flow run, with the
/// tasks it calls, submits and maps as its tracked task runs.
///
/// # Options
///
/// `#[flow(name = "...", description = "...", task_runner = <runner>,
/// retries = n, retry_delay = ..., timeout = seconds,
/// flow_run_name = "...{param}..." (or a function), on_completion = [f, ...],
/// on_failure, on_crashed, on_cancellation, on_running, log_prints = bool,
/// concurrency_limits = [("tag", slots), ...], crate = path, tags = ["..."],
/// history = false, persist_result = bool, result_storage = path,
/// result_storage_key = "...")]`: `concurrency_limits` caps how many of the
/// flow's task runs with each tag run at once (see [`concurrency`]);
/// `persist_result` writes the flow run's value to result storage when it
/// completes (see [`cache`]). The flow's parameters are hashed for the `FLOW_PARAMETERS`
/// cache policy of its tasks.
/// Prints written in the flow's body are log lines of the flow run, as in
/// a task (see [`prints`]).
/// Flow hooks receive the [`FlowRunInfo`] and the state.
/// The run history records each flow run with its parameters (as JSON; a
/// parameter whose type is not `Serialize` as `"<not serializable>"`) and
/// its `tags`; `history = false` turns recording off for the flow's runs
/// and the subflows that do not say otherwise (per call:
/// `FlowOptions::new().history(false)`; for the whole process:
/// `FLOWRUN_HISTORY=off` or `flowrun::history::set_recording(false)`).
/// `task_runner` is an expression evaluated for each flow run, or a bare type
/// path meaning its `Default` (`task_runner = ThreadPoolTaskRunner`); the
/// default runner is a thread pool. With a runner that moves tasks between
/// processes (`SerializingTaskRunner`, the Dask runner), submitting a task
/// whose arguments or result are not serde types is a compile error at
/// the submit. The flow's name defaults to the function's, with `-` for `_`.
///
/// # Call forms and `Result` semantics
///
/// Calling the flow returns `Result<T, FlowError>`: `Ok` with the body's
/// value, or why the flow failed (a panic, a timeout, the body's `Err` when
/// it returns a `Result`, whose `Ok` type is then `T`). `return_state` returns
/// the whole flow run instead.
///
/// ```
/// use flowrun::{flow, task, FlowOptions, SerializingTaskRunner};
///
/// #[task]
/// fn square(x: i64) -> i64 {
///     x * x
/// }
///
/// #[flow(retries = 1, retry_delay = 0, task_runner = SerializingTaskRunner)]
/// fn checked(x: i64) -> Result<i64, String> {
///     let y = square.submit(x).result().map_err(|e| e.to_string())?;
///     if y > 100 { Err(format!("{y} is too big")) } else { Ok(y) }
/// }
///
/// // Call it.
/// assert_eq!(checked(3).unwrap(), 9);
/// assert!(checked(11).unwrap_err().to_string().contains("too big"));
/// // `.call` is the same and applies the handle's options.
/// let renamed = checked.with_options(FlowOptions::new().name("checked-again"));
/// assert_eq!(renamed.call(4).unwrap(), 16);
/// // `return_state`: the final state, the result and the task run failures.
/// let run = checked.return_state(2);
/// assert!(run.state().is_completed());
/// assert_eq!(run.result().ok(), Some(&4));
/// // `with_runner`: this handle runs its tasks on another runner.
/// let threaded = checked.with_runner(flowrun::ThreadPoolTaskRunner::default());
/// assert_eq!(threaded(5).unwrap(), 25);
/// ```
///
/// # Subflows
///
/// A flow called inside a flow run (in its body or in a task) is a child
/// flow run linked to its parent: it runs on the parent's task runner (the
/// same thread pool or local cluster) unless it names its own with
/// `task_runner = ...` or `.with_runner`, its [`FlowRun`] knows its parent
/// ([`FlowRun::parent_flow_run_id`]), and the parent's `FlowRun` lists it
/// ([`FlowRun::subflows`], [`SubflowRun`]) with its state and task run
/// counts. As in Prefect, the parent's [`FlowRun::task_run_counts`] are its
/// own task runs; [`FlowRun::task_run_counts_with_subflows`] adds the
/// children's. A failed child returns `Err` to its caller, which handles it
/// or passes it on (with `?` the parent fails with the child's message).
/// Observers see the parent at the start of a child run
/// (`FlowRunInfo::parent_flow_run_id`).
///
/// ```
/// use flowrun::{flow, task};
///
/// #[task]
/// fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// #[flow]
/// fn child(x: u64) -> u64 {
///     double(x) + double(x + 1)
/// }
///
/// #[flow]
/// fn parent() -> Result<u64, flowrun::FlowError> {
///     Ok(child(1)? + child(2)?)
/// }
///
/// let run = parent.return_state();
/// assert_eq!(*run.result().unwrap(), 6 + 10);
/// assert_eq!(run.subflows().len(), 2);
/// assert_eq!(run.subflows()[0].counts.completed, 2);
/// assert_eq!(run.task_run_counts_with_subflows().completed, 4);
/// ```
///
/// # `async` flows
///
/// An `async fn` flow returns a future to await on the caller's runtime
/// (it never starts a runtime inside it).
///
/// ```
/// use flowrun::{flow, task};
///
/// #[task]
/// fn one() -> u8 {
///     1
/// }
///
/// #[flow]
/// async fn pipeline() -> u8 {
///     one.submit().await.unwrap() + one()
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(pipeline().await.unwrap(), 2);
/// assert!(pipeline.return_state().await.state().is_completed());
/// # }
/// ```
pub use flowrun_macros::flow;

pub use flowrun_core::cache::CachePolicy;
/// Concurrency limits: tag limits on task runs, named limits held around
/// code ([`concurrency::concurrency`]) and rate limits.
pub use flowrun_core::concurrency;
/// Prints logged as lines of the current run (Prefect's `log_prints`): the
/// setting, and `print!`-like macros to import where a task's helpers print.
pub use flowrun_core::prints;
pub use flowrun_core::{
    allow_failure, as_completed, as_completed_timeout, current_flow_run_id, current_flow_run_name,
    current_task_run, current_task_run_name, get_run_logger, results, unmapped, wait, wait_timeout,
    AllowFailure, AsCompleted, DoneAndNotDone, FlowError, FlowErrorKind, FlowOptions, FlowRun,
    FlowRunInfo, HookResult, MapError, Resources, ResultFuture, RetryDelay, RetryPolicy, RunId,
    RunLogger, RunRef, SerializingTaskRunner, State, StateKind, SubflowRun, Task, TaskError,
    TaskErrorKind, TaskFuture, TaskOptions, TaskRunCounts, TaskRunFailure, ThreadPoolTaskRunner,
    Unmapped,
};
pub use flowrun_core::{annotations, cache, logging, progress, registry, worker};

/// The Dask-style task runner (`DaskTaskRunner`), its local cluster and
/// its client of real Dask clusters.
#[cfg(feature = "dask")]
pub use flowrun_dask as dask;

/// The run history (`FLOWRUN_HOME`): flow runs, task runs, states and logs
/// recorded by default; `FLOWRUN_HISTORY=off` turns it off.
#[cfg(feature = "history")]
pub use flowrun_history as history;

pub mod runner {
    //! For authors of task runners (such as `flowrun::dask`): the
    //! [`TaskRunner`] trait, the [`TaskCall`]s it executes, serialized
    //! arguments and results, scopes that submit work outside a flow run,
    //! run observers, flowrun's own tokio [`runtime`], and the [`plumbing`]
    //! runners share.

    pub use flowrun_core::plumbing;
    pub use flowrun_core::{
        current_flow_handle, decode_value, encode_value, panic_message, runtime, set_blocking_hook,
        AcceptsTask, ArgSlot, ArgsTuple, BlockingHook, Execution, FlowHandle, FlowRunInfo,
        IntoInputs, LocalJob, RunnerError, Scope, SerializedArgs, SerializedJob, SerializedTask,
        TaskCall, TaskMeta, TaskRunner, Work,
    };
    pub use flowrun_core::{names, observe};
}

/// What the code `#[task]` and `#[flow]` generate refers to. Not an API.
#[doc(hidden)]
pub use flowrun_core::__private;

/// The README's Rust code blocks, compiled (and, unless `no_run`, run) as
/// doc tests so that what a new user copies works with only `flowrun` as a
/// dependency. (They use the Dask runner, so they need the `dask` feature.)
#[cfg(all(doctest, feature = "dask"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

//! Prefect's everyday task API in one flow: run names from the call's
//! parameters, hooks on final states, a retry condition, `allow_failure`,
//! waiting with a timeout, and prints logged as lines of their run
//! (`log_prints`). Runs on the local cluster; swap the runner
//! for `ThreadPoolTaskRunner` and it behaves the same.

use std::time::Duration;

use flowrun::dask::{ClusterKwargs, DaskTaskRunner};
use flowrun::{
    allow_failure, flow, task, wait_timeout, FlowRunInfo, RunRef, State, TaskError, TaskErrorKind,
};

/// Called with the run and its final state where the task ran: here, in
/// the worker process, whose output the flow shows with the run's name.
fn announce(run: &RunRef, state: &State) {
    println!(
        "hook: {} ended {} in process {}",
        run.name(),
        state.kind(),
        std::process::id()
    );
}

/// Retries what looks transient, never a bad request.
fn worth_retrying(_run: &RunRef, error: &TaskError) -> bool {
    !error.message().contains("bad request")
}

#[task(
    task_run_name = "fetch-{city}",
    retries = 2,
    retry_delay = 0,
    retry_condition_fn = worth_retrying,
    on_completion = [announce],
    on_failure = [announce],
)]
fn fetch(city: String) -> Result<u32, String> {
    match city.as_str() {
        "atlantis" => Err("bad request: no such city".into()),
        other => Ok(other.len() as u32 * 3),
    }
}

/// Runs in any case: a failed fetch arrives as an `Err`.
#[task(task_run_name = "summarize-{city}")]
fn summarize(city: String, temperature: Result<u32, TaskError>) -> String {
    // Logged as `Task run 'summarize-paris' - summarizing paris`.
    println!("summarizing {city}");
    match temperature {
        Ok(t) => format!("{city}: {t} degrees"),
        Err(e) if *e.kind() == TaskErrorKind::Error => format!("{city}: unknown ({})", e.message()),
        Err(e) => format!("{city}: {e}"),
    }
}

/// `log_prints = false`: its prints are not rewritten (a local cluster's
/// worker still attributes the output it captures to the run).
#[task(log_prints = false)]
fn slow_report() -> String {
    println!("a plain print, not a log line");
    std::thread::sleep(Duration::from_secs(3));
    "late".to_owned()
}

fn flow_done(run: &FlowRunInfo, state: &State) {
    println!("flow hook: {} ended {}", run.flow_run_name, state.kind());
}

#[flow(
    task_runner = DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(2)),
    flow_run_name = "weather-{day}",
    on_completion = [flow_done],
    on_failure = [flow_done],
)]
fn weather(day: u32) -> Vec<String> {
    let _ = day;
    let summaries: Vec<_> = ["paris", "atlantis", "lima"]
        .into_iter()
        .map(|city| summarize.submit(city, allow_failure(fetch.submit(city))))
        .collect();
    let late = slow_report.submit();
    let sets = wait_timeout(&[late], Duration::from_millis(500));
    println!(
        "after 0.5s: {} report(s) done, {} still running",
        sets.done.len(),
        sets.not_done.len()
    );
    summaries.into_iter().map(|s| s.result().unwrap()).collect()
}

fn main() {
    for line in weather(1).expect("flow failed") {
        println!("{line}");
    }
}

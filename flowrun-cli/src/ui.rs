//! `flowrun ui`: past runs in a browser, with the live dashboard's look
//! (its stylesheet, served as is).
//!
//! Pages are rendered here, not by script, so they are plain HTML that any
//! browser (or `curl`) shows: the list of runs, and per run its task stream,
//! per-task table, task runs, logs and state history. Every list is bounded,
//! so a run with a million task runs still renders at once.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use flowrun_history::{FlowRunRow, HistoryError, LogQuery, RunsQuery, Store, TaskRunRow};

use crate::text;

/// The live dashboard's stylesheet, so past runs look like live ones.
const CSS: &str = include_str!("../assets/dashboard.css");

/// Extra rules for what only past runs have (run list, logs, states).
const EXTRA_CSS: &str = "
table.list { width: 100%; border-collapse: collapse; font-size: 13px; }
table.list th { text-align: left; color: var(--muted); font-weight: 500; border-bottom: 1px solid var(--line); padding: 4px 8px 4px 0; }
table.list td { border-bottom: 1px solid var(--line); padding: 4px 8px 4px 0; vertical-align: top; }
td.Completed { color: var(--ok); } td.Failed, td.Crashed { color: var(--fail); } td.Running { color: var(--run); }
pre.logs { font-size: 12px; white-space: pre-wrap; margin: 0; max-height: 480px; overflow: auto; }
header a { color: #9ecbff; }
form.filter { margin-bottom: 8px; }
";

/// Task runs drawn in the task stream at most.
const STREAM_LIMIT: usize = 2_000;

type Shared = Arc<Mutex<Store>>;

/// Serves the history of `home` on `addr` until the process is stopped.
pub(crate) fn serve(home: PathBuf, addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(Mutex::new(Store::open(&home)?));
    let app = Router::new()
        .route("/", get(list))
        .route("/runs/{id}", get(run_page))
        .route("/dashboard.css", get(css))
        .with_state(store);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!(
            "flowrun ui: past runs of {} at http://{}/",
            home.display(),
            listener.local_addr()?
        );
        axum::serve(listener, app).await
    })?;
    Ok(())
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        format!("{CSS}\n{EXTRA_CSS}"),
    )
        .into_response()
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, header: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title>\
         <link rel=\"stylesheet\" href=\"/dashboard.css\"></head><body>\
         <header>{header}</header><main>{body}</main></body></html>",
        esc(title)
    ))
}

fn failure(e: HistoryError) -> Response {
    let status = match e {
        HistoryError::UnknownRun(_) | HistoryError::Ambiguous(..) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let html = page(
        "flowrun",
        "<div class=\"title\"><span class=\"brand\">flowrun</span><h1>Run history</h1></div>",
        &format!(
            "<section class=\"card wide\"><p id=\"error\">{}</p><a href=\"/\">All runs</a></section>",
            esc(&e.to_string())
        ),
    );
    (status, html).into_response()
}

fn runs_table(runs: &[FlowRunRow]) -> String {
    let mut t = String::from(
        "<table class=\"list\" id=\"runs\"><tr><th>Name</th><th>Flow</th><th>State</th>\
         <th>Start</th><th>Duration</th><th>Task runs</th></tr>",
    );
    for r in runs {
        let _ = write!(
            t,
            "<tr data-run=\"{id}\"><td><a href=\"/runs/{id}\">{}</a></td><td>{}</td>\
             <td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.name),
            esc(&r.flow),
            esc(&r.state),
            esc(&r.state),
            text::time(r.start_ms),
            text::duration(r.duration_ms()),
            esc(&text::counts(&r.tasks)),
            id = esc(&r.id),
        );
    }
    t.push_str("</table>");
    t
}

async fn list(State(store): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let query = RunsQuery {
        flow: q.get("flow").filter(|f| !f.is_empty()).cloned(),
        state: q.get("state").filter(|s| !s.is_empty()).cloned(),
        since_ms: None,
        limit: 200,
    };
    let runs = match store.lock().unwrap_or_else(|p| p.into_inner()).runs(&query) {
        Ok(r) => r,
        Err(e) => return failure(e),
    };
    let header = format!(
        "<div class=\"title\"><span class=\"brand\">flowrun</span><h1>Run history</h1>\
         <span class=\"badge ended\">{} runs</span></div>",
        runs.len()
    );
    let body = format!(
        "<section class=\"card wide\"><h2>Flow runs <small>newest first</small></h2>\
         <form class=\"filter\">Flow <input name=\"flow\" value=\"{}\"> State \
         <input name=\"state\" value=\"{}\"> <button>Filter</button></form>{}</section>",
        esc(query.flow.as_deref().unwrap_or("")),
        esc(query.state.as_deref().unwrap_or("")),
        runs_table(&runs)
    );
    page("flowrun: run history", &header, &body).into_response()
}

/// One bar per task run, packed into lanes: a lane takes a run that starts
/// after its previous run ended.
fn task_stream(tasks: &[TaskRunRow], run: &FlowRunRow) -> String {
    let spans: Vec<(&TaskRunRow, i64, i64)> = tasks
        .iter()
        .filter_map(|t| {
            let start = t.start_ms?;
            Some((t, start, t.end_ms.unwrap_or(start)))
        })
        .collect();
    if spans.is_empty() {
        return "<p class=\"empty\">No task run started.</p>".into();
    }
    let t0 = run
        .start_ms
        .min(spans.iter().map(|s| s.1).min().unwrap_or(0));
    let t1 = spans.iter().map(|s| s.2).max().unwrap_or(t0).max(t0 + 1);
    let mut lanes: Vec<i64> = Vec::new();
    let mut bars = String::new();
    let (width, lane_h) = (1000.0, 14.0);
    for (t, start, end) in &spans {
        let lane = match lanes.iter().position(|e| e <= start) {
            Some(i) => i,
            None => {
                lanes.push(*start);
                lanes.len() - 1
            }
        };
        lanes[lane] = *end;
        let x = (start - t0) as f64 / (t1 - t0) as f64 * width;
        let w = ((end - start) as f64 / (t1 - t0) as f64 * width).max(1.5);
        let fill = match t.state.as_str() {
            "Completed" => "#2e9e5b",
            "Failed" | "Crashed" => "#d62728",
            "Cancelled" => "#9ca3af",
            _ => "#f0a30a",
        };
        let _ = write!(
            bars,
            "<rect class=\"bar\" data-run=\"{}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{fill}\">\
             <title>{} {} {}</title></rect>",
            esc(&t.name),
            lane as f64 * lane_h,
            lane_h - 2.0,
            esc(&t.name),
            esc(&t.state),
            text::duration(t.duration_ms())
        );
    }
    format!(
        "<svg id=\"stream\" viewBox=\"0 0 {width} {}\" preserveAspectRatio=\"none\" \
         style=\"height:{}px\">{bars}</svg>",
        lanes.len() as f64 * lane_h,
        (lanes.len() as f64 * lane_h).max(20.0)
    )
}

async fn run_page(
    State(store): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let store = store.lock().unwrap_or_else(|p| p.into_inner());
    let run = match store.find_run(&id) {
        Ok(r) => r,
        Err(e) => return failure(e),
    };
    let logs_query = LogQuery {
        grep: q.get("grep").filter(|g| !g.trim().is_empty()).cloned(),
        task: q.get("task").filter(|t| !t.is_empty()).cloned(),
        ..LogQuery::default()
    };
    let parts = (|| -> Result<_, HistoryError> {
        Ok((
            store.detail(&run, 200)?,
            store.task_runs(&run, 0, STREAM_LIMIT)?,
            store.task_summary(&run)?,
            store.logs(&run, &logs_query)?,
            store.states(&run, 500)?,
        ))
    })();
    let (detail, stream, summary, logs, states) = match parts {
        Ok(p) => p,
        Err(e) => return failure(e),
    };
    let header = format!(
        "<div class=\"title\"><span class=\"brand\"><a href=\"/\">flowrun</a></span>\
         <h1 id=\"flow-title\">{} <small>{}</small></h1><span id=\"badge\" class=\"badge ended\">{}</span></div>\
         <div id=\"flow-meta\" class=\"meta\">{} · started {} · ran {}{}</div>\
         <div id=\"totals\" class=\"totals\">{}</div>",
        esc(&run.name),
        esc(&run.flow),
        esc(&run.state),
        esc(&run.id),
        text::time(run.start_ms),
        text::duration(run.duration_ms()),
        run.message
            .as_deref()
            .map(|m| format!(" · {}", esc(m)))
            .unwrap_or_default(),
        esc(&text::counts(&run.tasks)),
    );
    let mut body = String::new();
    if run.parameters.is_some() || !run.tags.is_empty() {
        let _ = write!(
            body,
            "<section class=\"card wide\"><h2>Parameters</h2>\
             <pre id=\"parameters\">{}</pre><div id=\"tags\" class=\"meta\">{}</div></section>",
            esc(run.parameters.as_deref().unwrap_or("{}")),
            run.tags
                .iter()
                .map(|t| format!("<span class=\"tag\">{}</span>", esc(t)))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let _ = write!(
        body,
        "<section class=\"card wide\"><h2>Task stream <small>one bar per task run{}</small></h2>\
         <div id=\"task-stream\" class=\"chart\">{}</div></section>",
        if (stream.len() as u64) < run.tasks.total {
            format!(", the first {} of {}", stream.len(), run.tasks.total)
        } else {
            String::new()
        },
        task_stream(&stream, &run)
    );
    let mut per_task = String::from(
        "<table class=\"list\" id=\"per-task\"><tr><th>Task</th><th>Runs</th><th>Completed</th>\
         <th>Failed</th><th>Crashed</th><th>Mean duration</th></tr>",
    );
    for s in &summary {
        let _ = write!(
            per_task,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.task),
            s.counts.total,
            s.counts.completed,
            s.counts.failed,
            s.counts.crashed,
            text::duration(s.mean_ms.map(|m| m.round() as i64))
        );
    }
    per_task.push_str("</table>");
    let _ = write!(
        body,
        "<section class=\"card\"><h2>Per task</h2>{per_task}</section>"
    );
    let mut tasks = String::from(
        "<table class=\"list\" id=\"task-runs\"><tr><th>Task run</th><th>State</th><th>Attempts</th>\
         <th>Duration</th><th>Worker</th><th>Message</th></tr>",
    );
    for t in &detail.task_runs {
        let _ = write!(
            tasks,
            "<tr data-run=\"{}\"><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.name),
            esc(&t.name),
            esc(&t.state),
            esc(&t.state),
            t.attempts,
            text::duration(t.duration_ms()),
            esc(t.worker.as_deref().unwrap_or("-")),
            esc(t.message.as_deref().unwrap_or(""))
        );
    }
    tasks.push_str("</table>");
    let _ = write!(
        body,
        "<section class=\"card\"><h2>Task runs <small>{} of {}</small></h2>{tasks}</section>",
        detail.task_runs.len(),
        run.tasks.total
    );
    if !detail.subflows.is_empty() {
        let _ = write!(
            body,
            "<section class=\"card wide\"><h2>Subflows</h2>{}</section>",
            runs_table(&detail.subflows)
        );
    }
    let _ = write!(
        body,
        "<section class=\"card wide\"><h2>Logs <small>the last {}</small></h2>\
         <form class=\"filter\">Search <input name=\"grep\" value=\"{}\"> Task \
         <input name=\"task\" value=\"{}\"> <button>Filter</button></form><pre class=\"logs\" id=\"logs\">{}</pre></section>",
        logs.len(),
        esc(logs_query.grep.as_deref().unwrap_or("")),
        esc(logs_query.task.as_deref().unwrap_or("")),
        esc(&text::logs(&logs, None))
    );
    let mut history = String::from(
        "<table class=\"list\" id=\"states\"><tr><th>Time</th><th>Run</th><th>State</th><th>Message</th></tr>",
    );
    for s in &states {
        let _ = write!(
            history,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            text::time(s.time_ms),
            esc(s.task_run.as_deref().unwrap_or("(flow run)")),
            esc(&s.state),
            esc(&s.state),
            esc(s.message.as_deref().unwrap_or(""))
        );
    }
    history.push_str("</table>");
    let _ = write!(
        body,
        "<section class=\"card wide\"><h2>State history <small>the first {}</small></h2>{history}</section>",
        states.len()
    );
    page(&format!("flowrun: {}", run.name), &header, &body).into_response()
}

#[cfg(test)]
mod tests {
    /// Past runs look as the live dashboard does: one stylesheet, copied
    /// here so that each crate packages on its own.
    #[test]
    fn the_stylesheet_is_the_live_dashboard_s() {
        let live = include_str!("../../flowrun-dask/src/dashboard/assets/dashboard.css");
        assert!(
            super::CSS == live,
            "copy flowrun-dask's dashboard.css to flowrun-cli/assets"
        );
    }
}

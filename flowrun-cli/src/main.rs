//! `flowrun`: the run history of flowrun flows, from a terminal or a browser.
//!
//! ```text
//! flowrun runs [--flow F] [--state S] [--since 1h]   recent flow runs
//! flowrun show RUN                                   one flow run
//! flowrun logs RUN [--task T] [--grep TEXT] [--level L]
//! flowrun ui                                         past runs in a browser
//! flowrun runs prune --older-than 30d
//! flowrun cache clear
//! ```
//!
//! Every command takes `--home DIR` (default `FLOWRUN_HOME`, else
//! `~/.flowrun`) and `--json` (one JSON document on stdout, for scripts).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use flowrun_history::{HistoryError, LogQuery, RunsQuery, Store};

mod text;
mod ui;

#[derive(Parser)]
#[command(name = "flowrun", version, about = "The run history of flowrun flows")]
struct Cli {
    /// The flowrun home (default: FLOWRUN_HOME, else ~/.flowrun).
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Recent flow runs, newest first (or `runs prune`).
    Runs(RunsArgs),
    /// One flow run: its task runs, failures and subflows.
    Show {
        /// A flow-run id, id prefix or name.
        run: String,
        /// Task runs and failures shown at most.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The log lines of a flow run.
    Logs {
        /// A flow-run id, id prefix or name.
        run: String,
        /// Only lines of this task run (`shout-3`) or task (`shout`).
        #[arg(long)]
        task: Option<String>,
        /// Only lines holding every word of TEXT.
        #[arg(long, value_name = "TEXT")]
        grep: Option<String>,
        /// Only lines at this level or more severe (error, warning, info, debug).
        #[arg(long, value_parser = parse_level)]
        level: Option<tracing::Level>,
        /// The last N matching lines.
        #[arg(long, default_value_t = 200)]
        limit: usize,
    },
    /// Serves past runs in a browser.
    Ui {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:4300")]
        addr: std::net::SocketAddr,
    },
    /// The task cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct RunsArgs {
    #[command(subcommand)]
    command: Option<RunsCommand>,
    /// Only runs of this flow.
    #[arg(long)]
    flow: Option<String>,
    /// Only runs in this state (completed, failed, running, ...).
    #[arg(long)]
    state: Option<String>,
    /// Only runs started within this long (`2h`, `3days`) or since this
    /// time (`2026-11-30T08:00:00Z`).
    #[arg(long, value_parser = parse_since)]
    since: Option<i64>,
    /// At most N runs.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Deletes finished flow runs (with their task runs, states and logs)
    /// that started longer ago than the given age.
    Prune {
        /// An age such as `30d`, `12h`, `2weeks`.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Forgets every cache key and deletes the persisted results.
    Clear,
}

fn parse_level(s: &str) -> Result<tracing::Level, String> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Ok(tracing::Level::ERROR),
        "warn" | "warning" => Ok(tracing::Level::WARN),
        "info" => Ok(tracing::Level::INFO),
        "debug" => Ok(tracing::Level::DEBUG),
        "trace" => Ok(tracing::Level::TRACE),
        _ => Err(format!(
            "'{s}' is not a level; use error, warning, info, debug or trace"
        )),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(age) = humantime::parse_duration(s) {
        return Ok(now_ms() - age.as_millis() as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
        .map_err(|_| {
            format!("'{s}' is neither an age (2h, 3days) nor a time (2026-11-30T08:00:00Z)")
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowrun: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `value` as JSON.
fn json<T: serde::Serialize>(value: &T) -> Result<(), Box<dyn std::error::Error>> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let home = match cli.home.or_else(flowrun_history::default_home) {
        Some(h) => h,
        None => return Err("no home: pass --home DIR or set FLOWRUN_HOME".into()),
    };
    let open = || -> Result<Store, HistoryError> { Store::open(&home) };
    match cli.command {
        Command::Runs(RunsArgs {
            command: Some(RunsCommand::Prune { older_than }),
            ..
        }) => {
            let mut store = open()?;
            let pruned = store.prune(now_ms() - older_than.as_millis() as i64)?;
            if cli.json {
                json(&pruned)?;
            } else {
                println!(
                    "Pruned {} flow runs, {} task runs and {} log lines older than {}",
                    pruned.flow_runs,
                    pruned.task_runs,
                    pruned.logs,
                    humantime::format_duration(older_than)
                );
            }
        }
        Command::Runs(args) => {
            let store = open()?;
            let runs = store.runs(&RunsQuery {
                flow: args.flow,
                state: args.state,
                since_ms: args.since,
                limit: args.limit,
            })?;
            if cli.json {
                json(&runs)?;
            } else {
                print!("{}", text::runs(&runs, text::width()));
            }
        }
        Command::Show { run, limit } => {
            let store = open()?;
            let run = store.find_run(&run)?;
            let detail = store.detail(&run, limit)?;
            if cli.json {
                json(&detail)?;
            } else {
                print!("{}", text::show(&detail, text::width()));
            }
        }
        Command::Logs {
            run,
            task,
            grep,
            level,
            limit,
        } => {
            let store = open()?;
            let run = store.find_run(&run)?;
            let lines = store.logs(
                &run,
                &LogQuery {
                    task,
                    grep,
                    min_level: level,
                    limit,
                },
            )?;
            if cli.json {
                json(&lines)?;
            } else {
                print!("{}", text::logs(&lines, text::terminal_width()));
            }
        }
        Command::Ui { addr } => {
            if cli.json {
                return Err(
                    "--json does not apply to `ui`, which serves pages to a browser".into(),
                );
            }
            open()?;
            ui::serve(home, addr)?;
        }
        Command::Cache {
            command: CacheCommand::Clear,
        } => {
            // Results persisted with the history off are cleared too.
            let cleared = if flowrun_history::database_path(&home).exists() {
                open()?.clear_cache()?
            } else {
                clear_storage_only(&home)?
            };
            if cli.json {
                json(&cleared)?;
            } else {
                println!(
                    "Cleared {} cache keys and {} stored results",
                    cleared.keys, cleared.files
                );
            }
        }
    }
    Ok(())
}

/// `cache clear` in a home without a history database: deletes the result
/// files under `storage/`.
fn clear_storage_only(
    home: &std::path::Path,
) -> Result<flowrun_history::Cleared, Box<dyn std::error::Error>> {
    let storage = home.join("storage");
    let mut files = 0;
    if storage.exists() {
        for entry in std::fs::read_dir(&storage)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
            // Dot entries (records of stored keys) are not results.
            if !path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                files += 1;
            }
        }
    }
    Ok(flowrun_history::Cleared { keys: 0, files })
}

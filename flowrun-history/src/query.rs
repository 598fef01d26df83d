//! Reading the history: what the `flowrun` command and its browser UI show,
//! and the two ways of forgetting (pruning old runs, clearing the cache).
//!
//! Every query is bounded by an index and a limit, so answers stay fast on
//! a home with millions of task runs: counts per flow run are kept on the
//! flow-run row by the writer, not counted at read time.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::HistoryError;

/// The recorded task runs of a flow run (or of one task in it), by final
/// state. Unlike `flowrun::TaskRunCounts`, which counts only final runs of a
/// finished flow, `total` also counts runs that have not finished (yet),
/// as a record read mid-run or left by a crash holds them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TaskRunsByState {
    /// Every task run, finished or not.
    pub total: u64,
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Crashed.
    pub crashed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl TaskRunsByState {
    /// The task runs not in a final state: `total` less the four final
    /// counts (0 if a damaged record makes them exceed it).
    pub fn unfinished(&self) -> u64 {
        self.total
            .saturating_sub(self.completed)
            .saturating_sub(self.failed)
            .saturating_sub(self.crashed)
            .saturating_sub(self.cancelled)
    }
}

/// One flow run.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRunRow {
    #[serde(skip)]
    seq: i64,
    /// Its id (a UUIDv7: ids sort by start time).
    pub id: String,
    /// The run's name, such as `brave-otter`.
    pub name: String,
    /// The flow's name.
    pub flow: String,
    /// Its state kind, such as `Completed`.
    pub state: String,
    /// A refining state name, such as `TimedOut`.
    pub state_name: Option<String>,
    /// The state's message (why it failed).
    pub message: Option<String>,
    /// Start, in milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// End, once it ended.
    pub end_ms: Option<i64>,
    /// The flow's parameters as a JSON object (`{"name": value}`), a
    /// parameter whose type is not `Serialize` as `"<not serializable>"`;
    /// `None` when they were not recorded. (`--json` prints it as the
    /// object itself.)
    #[serde(serialize_with = "as_json")]
    pub parameters: Option<String>,
    /// The id of the flow run this one is a subflow of.
    pub parent_flow_run: Option<String>,
    /// The id of the task run that started this subflow.
    pub parent_task_run: Option<String>,
    /// Its tags (`#[flow(tags = [...])]`, `FlowOptions::tags`).
    pub tags: Vec<String>,
    /// The process that ran it.
    pub pid: Option<i64>,
    /// Its task runs by state.
    pub tasks: TaskRunsByState,
}

impl FlowRunRow {
    /// Its duration in milliseconds, once it ended.
    pub fn duration_ms(&self) -> Option<i64> {
        self.end_ms.map(|e| e - self.start_ms)
    }
}

/// One task run.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRunRow {
    /// Its id (a UUIDv7).
    pub id: String,
    /// The run's name, such as `shout-3`.
    pub name: String,
    /// The task's name.
    pub task: String,
    /// The task's registry key.
    pub task_key: String,
    /// Its state kind.
    pub state: String,
    /// A refining state name.
    pub state_name: Option<String>,
    /// The state's message.
    pub message: Option<String>,
    /// Attempts made.
    pub attempts: i64,
    /// Where it ran (a worker address), when the runner said.
    pub worker: Option<String>,
    /// Ids of the task runs it waited for.
    pub upstreams: Vec<String>,
    /// Its cache key, when it had one.
    pub cache_key: Option<String>,
    /// Creation, in milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Start of its first attempt.
    pub start_ms: Option<i64>,
    /// End, once final.
    pub end_ms: Option<i64>,
}

impl TaskRunRow {
    /// Its duration in milliseconds, from its first start to its end.
    pub fn duration_ms(&self) -> Option<i64> {
        Some(self.end_ms? - self.start_ms?)
    }
}

/// One state change.
#[derive(Debug, Clone, Serialize)]
pub struct StateRow {
    /// The task run's name, or `None` for the flow run's own states.
    pub task_run: Option<String>,
    /// The state kind entered.
    pub state: String,
    /// A refining state name.
    pub state_name: Option<String>,
    /// Its message.
    pub message: Option<String>,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// One log line.
#[derive(Debug, Clone, Serialize)]
pub struct LogRow {
    /// The task run that wrote it, or `None` for the flow run.
    pub task_run: Option<String>,
    /// `ERROR`, `WARNING`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The text.
    pub text: String,
}

/// The task runs of one task in a flow run.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    /// The task's name.
    pub task: String,
    /// Its runs by state.
    pub counts: TaskRunsByState,
    /// Mean duration of its finished runs, in milliseconds.
    pub mean_ms: Option<f64>,
}

/// One flow run in full, bounded for a terminal.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The flow run.
    pub run: FlowRunRow,
    /// Its first task runs in submission order (at most the limit asked).
    pub task_runs: Vec<TaskRunRow>,
    /// Its failed and crashed task runs (at most the limit asked).
    pub failures: Vec<TaskRunRow>,
    /// Its subflow runs.
    pub subflows: Vec<FlowRunRow>,
}

/// Which flow runs [`Store::runs`] lists, newest first.
#[derive(Debug, Clone)]
pub struct RunsQuery {
    /// Only runs of this flow.
    pub flow: Option<String>,
    /// Only runs in this state kind (any case).
    pub state: Option<String>,
    /// Only runs started at or after this time (ms since the Unix epoch).
    pub since_ms: Option<i64>,
    /// At most this many.
    pub limit: usize,
}

impl Default for RunsQuery {
    fn default() -> Self {
        RunsQuery {
            flow: None,
            state: None,
            since_ms: None,
            limit: 20,
        }
    }
}

/// Which log lines of a flow run [`Store::logs`] returns: the last `limit`
/// that match, oldest first.
#[derive(Debug, Clone)]
pub struct LogQuery {
    /// Only lines of this task run (by run name) or task (by task name).
    pub task: Option<String>,
    /// Only lines holding every word of this text (full-text search).
    pub grep: Option<String>,
    /// Only lines at this level or more severe.
    pub min_level: Option<tracing::Level>,
    /// At most this many.
    pub limit: usize,
}

impl Default for LogQuery {
    fn default() -> Self {
        LogQuery {
            task: None,
            grep: None,
            min_level: None,
            limit: 200,
        }
    }
}

/// What [`Store::prune`] removed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Pruned {
    /// Flow runs.
    pub flow_runs: usize,
    /// Task runs.
    pub task_runs: usize,
    /// Log lines.
    pub logs: usize,
}

/// What [`Store::clear_cache`] removed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Cleared {
    /// Cache keys forgotten.
    pub keys: usize,
    /// Result files deleted from `storage/`.
    pub files: usize,
}

/// A home's history, open for reading (and pruning).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    home: PathBuf,
}

const FLOW_COLUMNS: &str = "seq, id, name, flow, state, state_name, message, start_ms, end_ms,
    parameters, parent_flow_run, parent_task_run, tags, pid, tasks_total, tasks_completed,
    tasks_failed, tasks_crashed, tasks_cancelled";

const TASK_COLUMNS: &str = "id, name, task, task_key, state, state_name, message, attempts,
    worker, upstreams, cache_key, created_ms, start_ms, end_ms";

/// Stored JSON text as the JSON value it holds, not as a string.
fn as_json<S: serde::Serializer>(text: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    let value = text
        .as_deref()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
    serde::Serialize::serialize(&value, s)
}

fn flow_row(r: &Row<'_>) -> rusqlite::Result<FlowRunRow> {
    let tags: Option<String> = r.get(12)?;
    Ok(FlowRunRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        flow: r.get(3)?,
        state: r.get(4)?,
        state_name: r.get(5)?,
        message: r.get(6)?,
        start_ms: r.get(7)?,
        end_ms: r.get(8)?,
        parameters: r.get(9)?,
        parent_flow_run: r.get(10)?,
        parent_task_run: r.get(11)?,
        tags: tags
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        pid: r.get(13)?,
        tasks: TaskRunsByState {
            total: r.get(14)?,
            completed: r.get(15)?,
            failed: r.get(16)?,
            crashed: r.get(17)?,
            cancelled: r.get(18)?,
        },
    })
}

fn task_row(r: &Row<'_>) -> rusqlite::Result<TaskRunRow> {
    let upstreams: Option<String> = r.get(9)?;
    Ok(TaskRunRow {
        id: r.get(0)?,
        name: r.get(1)?,
        task: r.get(2)?,
        task_key: r.get(3)?,
        state: r.get(4)?,
        state_name: r.get(5)?,
        message: r.get(6)?,
        attempts: r.get(7)?,
        worker: r.get(8)?,
        upstreams: upstreams
            .map(|u| u.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        cache_key: r.get(10)?,
        created_ms: r.get(11)?,
        start_ms: r.get(12)?,
        end_ms: r.get(13)?,
    })
}

/// The stored level number as the name the console prints.
fn level_name(n: i64) -> &'static str {
    match n {
        40.. => "ERROR",
        30..=39 => "WARNING",
        20..=29 => "INFO",
        10..=19 => "DEBUG",
        _ => "TRACE",
    }
}

/// `text` as an FTS5 query that matches lines holding every word of it,
/// whatever punctuation it contains.
fn fts_query(text: &str) -> String {
    text.split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Store {
    /// Opens the history of `home`, creating it when missing (for tools
    /// that fill a home, such as benchmarks).
    pub fn create(home: &Path) -> Result<Store, HistoryError> {
        Ok(Store {
            conn: crate::schema::open(home)?,
            home: home.to_owned(),
        })
    }

    /// Opens the history of `home` (migrating an older schema; refusing a
    /// newer one).
    pub fn open(home: &Path) -> Result<Store, HistoryError> {
        if !crate::database_path(home).exists() {
            return Err(HistoryError::Unsupported {
                path: crate::database_path(home),
                why: "it does not exist: no flow has recorded into this home yet".into(),
            });
        }
        Ok(Store {
            conn: crate::schema::open(home)?,
            home: home.to_owned(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Database {
            path: crate::database_path(&self.home),
            source,
        }
    }

    /// Every row `sql` yields with `params`, each made by `row`.
    fn all<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, HistoryError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        stmt.query_map(params, row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))
    }

    /// The one flow run `sql` yields, if any.
    fn one_flow(&self, sql: &str, text: &str) -> Result<Option<FlowRunRow>, HistoryError> {
        self.conn
            .query_row(sql, [text], flow_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The flow run `sql` (`LIMIT 2`) finds: none, one, or too many for `text`.
    fn unique_flow(&self, sql: &str, text: &str) -> Result<Option<FlowRunRow>, HistoryError> {
        let mut rows = self.all(sql, [text.to_ascii_lowercase()], flow_row)?;
        match rows.len() {
            0 => Ok(None),
            1 => Ok(rows.pop()),
            n => Err(HistoryError::Ambiguous(text.to_owned(), n)),
        }
    }

    /// Flow runs, newest first.
    pub fn runs(&self, q: &RunsQuery) -> Result<Vec<FlowRunRow>, HistoryError> {
        let sql = format!(
            "SELECT {FLOW_COLUMNS} FROM flow_runs
             WHERE (?1 IS NULL OR flow = ?1)
               AND (?2 IS NULL OR state = ?2 COLLATE NOCASE)
               AND (?3 IS NULL OR start_ms >= ?3)
             ORDER BY start_ms DESC, seq DESC LIMIT ?4"
        );
        self.all(
            &sql,
            params![q.flow, q.state, q.since_ms, q.limit as i64],
            flow_row,
        )
    }

    /// The flow run `text` names: an id, a unique id prefix or suffix (of
    /// at least 8 digits), or a flow-run name (the newest run of that name).
    pub fn find_run(&self, text: &str) -> Result<FlowRunRow, HistoryError> {
        let by_id = format!("SELECT {FLOW_COLUMNS} FROM flow_runs WHERE id = ?1");
        if let Some(row) = self.one_flow(&by_id, text)? {
            return Ok(row);
        }
        // Ids are lowercase hex with dashes, so a prefix range scan on the
        // unique index finds them without LIKE's case rules.
        let prefix = format!(
            "SELECT {FLOW_COLUMNS} FROM flow_runs WHERE id >= ?1 AND id < ?1 || '~' LIMIT 2"
        );
        if let Some(row) = self.unique_flow(&prefix, text)? {
            return Ok(row);
        }
        // The short id the command prints is the id's random tail; flow
        // runs are few enough beside task runs to scan for it.
        if text.len() >= 8 && text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            let suffix =
                format!("SELECT {FLOW_COLUMNS} FROM flow_runs WHERE id LIKE '%' || ?1 LIMIT 2");
            if let Some(row) = self.unique_flow(&suffix, text)? {
                return Ok(row);
            }
        }
        let by_name = format!(
            "SELECT {FLOW_COLUMNS} FROM flow_runs WHERE name = ?1 ORDER BY start_ms DESC LIMIT 1"
        );
        self.one_flow(&by_name, text)?
            .ok_or_else(|| HistoryError::UnknownRun(text.to_owned()))
    }

    /// One flow run with its first `limit` task runs, its first `limit`
    /// failures and its subflows.
    pub fn detail(&self, run: &FlowRunRow, limit: usize) -> Result<RunDetail, HistoryError> {
        let tasks = format!(
            "SELECT {TASK_COLUMNS} FROM task_runs WHERE flow_run = ?1 ORDER BY seq LIMIT ?2"
        );
        let failures = format!(
            "SELECT {TASK_COLUMNS} FROM task_runs WHERE flow_run = ?1 AND state IN ('Failed', 'Crashed')
             ORDER BY seq LIMIT ?2"
        );
        let subflows = format!(
            "SELECT {FLOW_COLUMNS} FROM flow_runs WHERE parent_flow_run = ?1 ORDER BY seq LIMIT ?2"
        );
        Ok(RunDetail {
            run: run.clone(),
            task_runs: self.all(&tasks, params![run.seq, limit as i64], task_row)?,
            failures: self.all(&failures, params![run.seq, limit as i64], task_row)?,
            subflows: self.all(&subflows, params![run.id, limit as i64], flow_row)?,
        })
    }

    /// Task runs of `run` in submission order, from `offset`, at most `limit`.
    pub fn task_runs(
        &self,
        run: &FlowRunRow,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<TaskRunRow>, HistoryError> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM task_runs WHERE flow_run = ?1 ORDER BY seq LIMIT ?2 OFFSET ?3"
        );
        self.all(
            &sql,
            params![run.seq, limit as i64, offset as i64],
            task_row,
        )
    }

    /// Per task: how its runs in `run` ended and how long they took.
    pub fn task_summary(&self, run: &FlowRunRow) -> Result<Vec<TaskSummary>, HistoryError> {
        self.all(
            "SELECT task, count(*), sum(state = 'Completed'), sum(state = 'Failed'),
             sum(state = 'Crashed'), sum(state = 'Cancelled'), avg(end_ms - start_ms)
             FROM task_runs WHERE flow_run = ?1 GROUP BY task ORDER BY min(seq)",
            [run.seq],
            |r| {
                Ok(TaskSummary {
                    task: r.get(0)?,
                    counts: TaskRunsByState {
                        total: r.get(1)?,
                        completed: r.get(2)?,
                        failed: r.get(3)?,
                        crashed: r.get(4)?,
                        cancelled: r.get(5)?,
                    },
                    mean_ms: r.get(6)?,
                })
            },
        )
    }

    /// The state changes of `run` and of its first `limit` task runs, in
    /// time order, at most `limit`.
    pub fn states(&self, run: &FlowRunRow, limit: usize) -> Result<Vec<StateRow>, HistoryError> {
        type Change = (i64, String, Option<String>, Option<String>);
        let parse = |who: Option<String>, json: &str| -> Vec<StateRow> {
            serde_json::from_str::<Vec<Change>>(json)
                .unwrap_or_default()
                .into_iter()
                .map(|(time_ms, state, state_name, message)| StateRow {
                    task_run: who.clone(),
                    state,
                    state_name,
                    message,
                    time_ms,
                })
                .collect()
        };
        let flow: String = self
            .conn
            .query_row(
                "SELECT history FROM flow_runs WHERE seq = ?1",
                [run.seq],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let mut rows = parse(None, &flow);
        let tasks = self.all(
            "SELECT name, history FROM task_runs WHERE flow_run = ?1 ORDER BY seq LIMIT ?2",
            params![run.seq, limit as i64],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )?;
        for (name, history) in tasks {
            rows.extend(parse(Some(name), &history));
        }
        rows.sort_by_key(|s| s.time_ms);
        rows.truncate(limit);
        Ok(rows)
    }

    /// The last `q.limit` log lines of `run` that match `q`, oldest first.
    pub fn logs(&self, run: &FlowRunRow, q: &LogQuery) -> Result<Vec<LogRow>, HistoryError> {
        let min_level = q
            .min_level
            .map(|l| i64::from(crate::recorder::level_number(l)));
        // ?1 run, ?2 task, ?3 level, ?4 limit; with a search also ?5 the
        // query and ?6..?7 the run's range of row ids.
        let filters = "l.flow_run = ?1
            AND (?2 IS NULL OR l.task_run IN
                 (SELECT seq FROM task_runs WHERE flow_run = ?1 AND (name = ?2 OR task = ?2)))
            AND (?3 IS NULL OR l.level >= ?3)";
        let row = |r: &Row<'_>| {
            Ok(LogRow {
                task_run: r.get(0)?,
                level: level_name(r.get(1)?).to_owned(),
                time_ms: r.get(2)?,
                text: r.get(3)?,
            })
        };
        let base = params![run.seq, q.task, min_level, q.limit as i64];
        let mut rows = match &q.grep {
            Some(grep) => {
                let (first, last): (Option<i64>, Option<i64>) = self
                    .conn
                    .query_row(
                        "SELECT min(seq), max(seq) FROM logs WHERE flow_run = ?1",
                        [run.seq],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .map_err(|e| self.err(e))?;
                let (Some(first), Some(last)) = (first, last) else {
                    return Ok(Vec::new());
                };
                // The full-text index drives (CROSS JOIN keeps it the outer
                // loop): it yields matches by row id, newest first, within
                // the run's range of row ids, so the limit ends the search.
                let sql = format!(
                    "SELECT t.name, l.level, l.time_ms, l.text FROM logs_fts f
                     CROSS JOIN logs l ON l.seq = f.rowid LEFT JOIN task_runs t ON t.seq = l.task_run
                     WHERE logs_fts MATCH ?5 AND f.rowid BETWEEN ?6 AND ?7 AND {filters}
                     ORDER BY f.rowid DESC LIMIT ?4"
                );
                let query = fts_query(grep);
                let mut all: Vec<&dyn rusqlite::ToSql> = base.to_vec();
                all.extend([&query as &dyn rusqlite::ToSql, &first, &last]);
                self.all(&sql, &*all, row)?
            }
            None => {
                let sql = if q.task.is_some() {
                    // From the run's matching task runs to their lines, by
                    // index, rather than through every line of the run.
                    "SELECT t.name, l.level, l.time_ms, l.text FROM task_runs t
                     CROSS JOIN logs l ON l.task_run = t.seq
                     WHERE t.flow_run = ?1 AND (t.name = ?2 OR t.task = ?2)
                       AND (?3 IS NULL OR l.level >= ?3)
                     ORDER BY l.seq DESC LIMIT ?4"
                        .to_owned()
                } else {
                    format!(
                        "SELECT t.name, l.level, l.time_ms, l.text FROM logs l
                         LEFT JOIN task_runs t ON t.seq = l.task_run
                         WHERE {filters} ORDER BY l.seq DESC LIMIT ?4"
                    )
                };
                self.all(&sql, base, row)?
            }
        };
        rows.reverse();
        Ok(rows)
    }

    /// Deletes flow runs that started before `before_ms` (ms since the Unix
    /// epoch), with their task runs, states and logs; one flow run per
    /// transaction, so flows writing the same home wait briefly at most.
    pub fn prune(&mut self, before_ms: i64) -> Result<Pruned, HistoryError> {
        let old: Vec<i64> = self.all(
            "SELECT seq FROM flow_runs WHERE start_ms < ?1 AND end_ms IS NOT NULL",
            [before_ms],
            |r| r.get(0),
        )?;
        let mut pruned = Pruned::default();
        for seq in old {
            let counts = crate::writer::with_retries(|| {
                let tx = self
                    .conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let logs = tx.execute("DELETE FROM logs WHERE flow_run = ?1", [seq])?;
                let tasks = tx.execute("DELETE FROM task_runs WHERE flow_run = ?1", [seq])?;
                tx.execute("DELETE FROM flow_runs WHERE seq = ?1", [seq])?;
                tx.commit()?;
                Ok((tasks, logs))
            })
            .map_err(|e| self.err(e))?;
            pruned.flow_runs += 1;
            pruned.task_runs += counts.0;
            pruned.logs += counts.1;
        }
        Ok(pruned)
    }

    /// Forgets every cache key and deletes the result files in `storage/`,
    /// so every cached task runs again.
    pub fn clear_cache(&mut self) -> Result<Cleared, HistoryError> {
        let keys = crate::writer::with_retries(|| {
            self.conn.execute(
                "UPDATE task_runs SET cache_key = NULL WHERE cache_key IS NOT NULL",
                [],
            )
        })
        .map_err(|e| self.err(e))?;
        let storage = self.home.join("storage");
        let io = |source| HistoryError::Home {
            path: storage.clone(),
            source,
        };
        let mut files = 0;
        if storage.exists() {
            for entry in std::fs::read_dir(&storage).map_err(io)? {
                let path = entry.map_err(io)?.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(io)?;
                } else {
                    std::fs::remove_file(&path).map_err(io)?;
                }
                // Dot entries (the records of stored keys, temporary
                // files) go too, but are not results.
                if !entry_is_dot(&path) {
                    files += 1;
                }
            }
        }
        Ok(Cleared { keys, files })
    }
}

fn entry_is_dot(path: &std::path::Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

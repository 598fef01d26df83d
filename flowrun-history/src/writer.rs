//! The one writer of a process: a thread that owns the database connection
//! and commits the events flows send it in batches.
//!
//! Flows only push events into a channel (a clone of the run handle and of
//! its state); names, ids and SQL are made here, off the flows' threads.
//! A batch is everything that queued while the previous one committed, so
//! batches grow with the load and a commit's fixed cost is shared by all of
//! its events. Each batch is one short `BEGIN IMMEDIATE` transaction:
//! it takes the write lock first, so two processes never deadlock upgrading
//! a read lock, and waits `BUSY_TIMEOUT` for it, then retries, so a shared
//! home never reports "database is locked". Row ids SQLite assigns inside a
//! transaction are kept only once it committed, so a retried batch writes
//! the same rows again, not duplicates.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use flowrun_core::{RunId, RunRef, State, StateKind};
use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};
use uuid::Uuid;

use crate::HistoryError;

/// How many events one batch takes at most, so a commit stays short and
/// other processes get the lock in turn.
const MAX_BATCH: usize = 50_000;

/// How often a busy database is retried before the batch is given up.
const BUSY_RETRIES: u32 = 120;

/// A new flow run.
pub(crate) struct FlowStart {
    pub token: u64,
    pub core_id: String,
    pub name: String,
    pub flow: String,
    pub parent_flow: Option<String>,
    pub parent_task: Option<RunId>,
    pub time: SystemTime,
}

/// A log line.
pub(crate) struct LogLine {
    pub flow_core_id: Option<String>,
    pub task: Option<RunId>,
    pub label: Option<String>,
    pub level: u8,
    pub time: SystemTime,
    pub text: String,
}

/// What flows send the writer.
pub(crate) enum Event {
    FlowStarted(Box<FlowStart>),
    Task {
        flow: u64,
        run: RunRef,
        state: State,
    },
    Upstreams {
        run: RunId,
        upstreams: Vec<RunId>,
    },
    FlowFinished {
        flow: u64,
        state: State,
    },
    Log(Box<LogLine>),
    Flush(Sender<()>),
}

/// The writer of one home: a handle on its thread.
pub(crate) struct Writer {
    pub tx: Sender<Event>,
    pub home: PathBuf,
    /// Batches committed so far: waiters tell a slow writer from a stuck one.
    pub commits: Arc<AtomicU64>,
}

impl Writer {
    /// Opens the database of `home` here (so a failure is known at once)
    /// and starts the thread that writes it.
    pub fn start(home: &Path) -> Result<Writer, HistoryError> {
        let conn = crate::schema::open(home)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let path = crate::schema::database_path(home);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        std::thread::Builder::new()
            .name("flowrun-history".into())
            .spawn(move || {
                lower_priority();
                Thread::new(conn, path, counter).run(rx)
            })
            .map_err(|source| HistoryError::Home {
                path: home.to_owned(),
                source,
            })?;
        Ok(Writer {
            tx,
            home: home.to_owned(),
            commits,
        })
    }
}

/// Makes this thread yield the CPU to the flows it records: on a machine
/// without a spare core the records wait, not the tasks.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority with a thread id
    // changes only that thread's nice value (Linux's per-thread priority).
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// Retries `f` while SQLite reports the database busy or locked.
pub(crate) fn with_retries<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if is_busy(&e) && attempt < BUSY_RETRIES => {
                attempt += 1;
                // Spread out, so processes that collided do not collide again.
                let pause = 5 + fastrand::u64(0..20) + u64::from(attempt.min(10)) * 5;
                std::thread::sleep(Duration::from_millis(pause));
            }
            other => return other,
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

pub(crate) fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct FlowRow {
    seq: Option<i64>,
    id: Uuid,
    core_id: String,
    name: String,
    start: Box<FlowStart>,
    state: &'static str,
    state_name: Option<String>,
    message: Option<Arc<str>>,
    end_ms: Option<i64>,
    history: Vec<Change>,
    total: i64,
    /// Completed, Failed, Crashed, Cancelled.
    counts: [i64; 4],
}

/// One state change, as the `history` column lists it.
struct Change {
    time_ms: i64,
    state: &'static str,
    name: Option<String>,
    message: Option<Arc<str>>,
}

impl Change {
    fn of(state: &State) -> Change {
        let kind = state.kind().as_str();
        Change {
            time_ms: millis(state.timestamp()),
            state: kind,
            name: (state.name() != kind).then(|| state.name().to_owned()),
            message: state.message().map(Arc::from),
        }
    }
}

/// Adds `change` in time order (events of two threads can arrive swapped).
fn record(history: &mut Vec<Change>, change: Change) {
    history.push(change);
    let n = history.len();
    if n > 1 && history[n - 2].time_ms > history[n - 1].time_ms {
        history.sort_by_key(|c| c.time_ms);
    }
}

/// The `history` column: `[[time_ms, state, name, message], ...]`.
fn history_json(changes: &[Change]) -> String {
    let rows: Vec<_> = changes
        .iter()
        .map(|c| (c.time_ms, c.state, c.name.as_deref(), c.message.as_deref()))
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into())
}

/// A task run not yet final (or final but not yet committed).
struct TaskRow {
    flow: u64,
    run: RunRef,
    id: Uuid,
    seq: Option<i64>,
    state: StateKind,
    state_time: SystemTime,
    state_name: Option<String>,
    message: Option<Arc<str>>,
    created_ms: i64,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    upstreams: Option<String>,
    history: Vec<Change>,
}

/// What is left of a task run once it is final and committed: what later
/// rows (downstream runs, subflows, late log lines) refer to it by.
struct Done {
    flow: u64,
    seq: i64,
    id: Uuid,
}

struct LogRow {
    flow: u64,
    task: Option<RunId>,
    level: u8,
    time_ms: i64,
    text: String,
}

#[derive(Default)]
struct Batch {
    /// Flow runs to insert or update, parents (started first) first.
    flows: BTreeSet<u64>,
    tasks: Vec<RunId>,
    logs: Vec<LogRow>,
    done: Vec<Sender<()>>,
    finished: Vec<u64>,
}

struct Thread {
    conn: Connection,
    path: PathBuf,
    flows: HashMap<u64, FlowRow>,
    by_core_id: HashMap<String, u64>,
    tasks: HashMap<RunId, TaskRow>,
    done: HashMap<RunId, Done>,
    failed: bool,
    commits: Arc<AtomicU64>,
}

impl Thread {
    fn new(conn: Connection, path: PathBuf, commits: Arc<AtomicU64>) -> Thread {
        Thread {
            conn,
            path,
            flows: HashMap::new(),
            by_core_id: HashMap::new(),
            tasks: HashMap::new(),
            done: HashMap::new(),
            failed: false,
            commits,
        }
    }

    fn run(mut self, rx: Receiver<Event>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Batch::default();
            self.apply(first, &mut batch);
            let mut n = 1;
            while n < MAX_BATCH {
                match rx.try_recv() {
                    Ok(e) => self.apply(e, &mut batch),
                    Err(_) => break,
                }
                n += 1;
            }
            self.commit(batch);
        }
    }

    fn apply(&mut self, event: Event, batch: &mut Batch) {
        match event {
            Event::FlowStarted(start) => {
                let token = start.token;
                let time_ms = millis(start.time);
                let running = Change {
                    time_ms,
                    state: StateKind::Running.as_str(),
                    name: None,
                    message: None,
                };
                self.by_core_id.insert(start.core_id.clone(), token);
                self.flows.insert(
                    token,
                    FlowRow {
                        seq: None,
                        id: new_id(start.time),
                        core_id: start.core_id.clone(),
                        name: start.name.clone(),
                        start,
                        state: StateKind::Running.as_str(),
                        state_name: None,
                        message: None,
                        end_ms: None,
                        history: vec![running],
                        total: 0,
                        counts: [0; 4],
                    },
                );
                batch.flows.insert(token);
            }
            Event::Task { flow, run, state } => self.task_event(flow, run, state, batch),
            Event::Upstreams { run, upstreams } => {
                let ids: Vec<String> = upstreams
                    .iter()
                    .filter_map(|u| self.uuid_of(*u))
                    .map(|u| u.to_string())
                    .collect();
                if let Some(t) = self.tasks.get_mut(&run) {
                    t.upstreams = Some(ids.join(" "));
                    batch.tasks.push(run);
                }
            }
            Event::FlowFinished { flow, state } => {
                if let Some(f) = self.flows.get_mut(&flow) {
                    f.state = state.kind().as_str();
                    f.state_name =
                        (state.name() != state.kind().as_str()).then(|| state.name().to_owned());
                    f.message = state.message().map(Arc::from);
                    f.end_ms = Some(millis(state.timestamp()));
                    record(&mut f.history, Change::of(&state));
                    batch.flows.insert(flow);
                    batch.finished.push(flow);
                }
            }
            Event::Log(line) => {
                if let Some((flow, task)) = self.resolve_log(&line) {
                    batch.logs.push(LogRow {
                        flow,
                        task,
                        level: line.level,
                        time_ms: millis(line.time),
                        text: line.text,
                    });
                }
            }
            Event::Flush(done) => batch.done.push(done),
        }
    }

    fn task_event(&mut self, flow: u64, run: RunRef, state: State, batch: &mut Batch) {
        let id = run.id();
        let time_ms = millis(state.timestamp());
        let kind = state.kind();
        let task = match self.tasks.get_mut(&id) {
            Some(t) => t,
            None => {
                if self.done.contains_key(&id) || !self.flows.contains_key(&flow) {
                    return;
                }
                if let Some(f) = self.flows.get_mut(&flow) {
                    f.total += 1;
                    batch.flows.insert(flow);
                }
                self.tasks.entry(id).or_insert(TaskRow {
                    flow,
                    run,
                    id: new_id(state.timestamp()),
                    seq: None,
                    state: StateKind::Pending,
                    state_time: UNIX_EPOCH,
                    state_name: None,
                    message: None,
                    created_ms: time_ms,
                    start_ms: None,
                    end_ms: None,
                    upstreams: None,
                    history: Vec::with_capacity(3),
                })
            }
        };
        // Observers are called after the run's lock is released, so two
        // threads' events for one run can arrive swapped: the newest state
        // wins, and a final state is never left.
        let newer = !task.state.is_final() && state.timestamp() >= task.state_time;
        if newer {
            task.state = kind;
            task.state_time = state.timestamp();
            task.state_name = (state.name() != kind.as_str()).then(|| state.name().to_owned());
            task.message = state.message().map(Arc::from);
            if kind.is_final() {
                task.end_ms = Some(time_ms);
            }
        }
        if matches!(kind, StateKind::Running) {
            task.start_ms = Some(task.start_ms.map_or(time_ms, |s| s.min(time_ms)));
        }
        record(&mut task.history, Change::of(&state));
        batch.tasks.push(id);
        if kind.is_final() && newer {
            let slot = match kind {
                StateKind::Completed => Some(0),
                StateKind::Failed => Some(1),
                StateKind::Crashed => Some(2),
                StateKind::Cancelled => Some(3),
                _ => None,
            };
            if let (Some(slot), Some(f)) = (slot, self.flows.get_mut(&flow)) {
                f.counts[slot] += 1;
                batch.flows.insert(flow);
            }
        }
    }

    fn uuid_of(&self, run: RunId) -> Option<Uuid> {
        uuid_of(&self.tasks, &self.done, run)
    }

    /// The flow run and task run a log line belongs to.
    fn resolve_log(&self, line: &LogLine) -> Option<(u64, Option<RunId>)> {
        if let Some(flow) = line
            .flow_core_id
            .as_deref()
            .and_then(|c| self.by_core_id.get(c))
        {
            let task = line.task.filter(|t| self.uuid_of(*t).is_some());
            return Some((*flow, task));
        }
        if let Some(task) = line.task {
            if let Some(t) = self.tasks.get(&task) {
                return Some((t.flow, Some(task)));
            }
            if let Some(d) = self.done.get(&task) {
                return Some((d.flow, Some(task)));
            }
        }
        let label = line.label.as_deref()?;
        if let Some(name) = quoted(label, "Task run '") {
            // Lines a worker process sent name their run only; runs that
            // still live are the ones that can be printing.
            if let Some((id, t)) = self.tasks.iter().find(|(_, t)| t.run.name() == name) {
                return Some((t.flow, Some(*id)));
            }
        }
        if let Some(name) = quoted(label, "Flow run '") {
            if let Some((token, _)) = self.flows.iter().find(|(_, f)| f.name == name) {
                return Some((*token, None));
            }
        }
        None
    }

    fn commit(&mut self, mut batch: Batch) {
        if self.failed {
            batch.done.clear();
            return;
        }
        match with_retries(|| self.write(&batch)) {
            Ok((flow_seqs, task_seqs)) => {
                for (token, seq) in flow_seqs {
                    if let Some(f) = self.flows.get_mut(&token) {
                        f.seq = Some(seq);
                    }
                }
                for (id, seq) in task_seqs {
                    if let Some(t) = self.tasks.get_mut(&id) {
                        t.seq = Some(seq);
                    }
                }
                self.retire(&batch);
                self.commits.fetch_add(1, Ordering::Release);
            }
            Err(e) => {
                self.failed = true;
                crate::warn_off(
                    &self.path,
                    &format!("writing it failed ({e}); this process records no more runs there"),
                );
            }
        }
        for d in batch.done {
            let _ = d.send(());
        }
    }

    /// Forgets what no later event can change.
    fn retire(&mut self, batch: &Batch) {
        for id in &batch.tasks {
            let finished = self
                .tasks
                .get(id)
                .is_some_and(|t| t.state.is_final() && t.seq.is_some());
            if finished {
                if let Some(t) = self.tasks.remove(id) {
                    self.done.insert(
                        *id,
                        Done {
                            flow: t.flow,
                            seq: t.seq.unwrap_or_default(),
                            id: t.id,
                        },
                    );
                }
            }
        }
        for token in &batch.finished {
            if let Some(f) = self.flows.remove(token) {
                self.by_core_id.remove(&f.core_id);
            }
            self.done.retain(|_, d| d.flow != *token);
            self.tasks.retain(|_, t| t.flow != *token);
        }
    }

    /// Writes one batch in one transaction; returns the row ids it assigned.
    #[allow(clippy::type_complexity)]
    fn write(&mut self, batch: &Batch) -> rusqlite::Result<(Vec<(u64, i64)>, Vec<(RunId, i64)>)> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut flow_seqs: HashMap<u64, i64> = HashMap::new();
        let mut task_seqs: HashMap<RunId, i64> = HashMap::new();
        {
            let mut insert_flow = tx.prepare_cached(
                "INSERT INTO flow_runs (id, core_id, name, flow, state, start_ms, parent_flow_run,
                 parent_task_run, pid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for token in &batch.flows {
                let Some(f) = self.flows.get(token) else {
                    continue;
                };
                if f.seq.is_some() {
                    continue;
                }
                let parent_flow = f
                    .start
                    .parent_flow
                    .as_deref()
                    .and_then(|c| self.by_core_id.get(c))
                    .and_then(|t| self.flows.get(t))
                    .map(|p| p.id.to_string());
                let parent_task = f
                    .start
                    .parent_task
                    .and_then(|r| uuid_of(&self.tasks, &self.done, r))
                    .map(|u| u.to_string());
                insert_flow.execute(params![
                    f.id.to_string(),
                    f.core_id,
                    f.name,
                    f.start.flow,
                    StateKind::Running.as_str(),
                    millis(f.start.time),
                    parent_flow,
                    parent_task,
                    std::process::id(),
                ])?;
                flow_seqs.insert(*token, tx.last_insert_rowid());
            }
            let flow_seq = |token: u64| -> Option<i64> {
                self.flows
                    .get(&token)
                    .and_then(|f| f.seq)
                    .or_else(|| flow_seqs.get(&token).copied())
            };
            let mut insert_task = tx.prepare_cached(
                "INSERT INTO task_runs (id, flow_run, name, task, task_key, state, state_name,
                 message, attempts, worker, upstreams, created_ms, start_ms, end_ms, history,
                 cache_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?;
            let mut update_task = tx.prepare_cached(
                "UPDATE task_runs SET state = ?2, state_name = ?3, message = ?4, attempts = ?5,
                 worker = ?6, upstreams = ?7, start_ms = ?8, end_ms = ?9, history = ?10,
                 cache_key = ?11
                 WHERE seq = ?1",
            )?;
            let mut seen = HashSet::with_capacity(batch.tasks.len());
            for id in &batch.tasks {
                if !seen.insert(*id) {
                    continue;
                }
                let Some(t) = self.tasks.get(id) else {
                    continue;
                };
                let worker = t.run.location();
                let attempts = t.run.attempts();
                match t.seq {
                    Some(seq) => {
                        update_task.execute(params![
                            seq,
                            t.state.as_str(),
                            t.state_name,
                            t.message.as_deref(),
                            attempts,
                            worker.as_deref(),
                            t.upstreams,
                            t.start_ms,
                            t.end_ms,
                            history_json(&t.history),
                            t.run.cache_key(),
                        ])?;
                    }
                    None => {
                        let Some(flow) = flow_seq(t.flow) else {
                            continue;
                        };
                        let mut id_text = [0u8; 36];
                        insert_task.execute(params![
                            &*t.id.hyphenated().encode_lower(&mut id_text),
                            flow,
                            t.run.name(),
                            t.run.task_name(),
                            t.run.task_key(),
                            t.state.as_str(),
                            t.state_name,
                            t.message.as_deref(),
                            attempts,
                            worker.as_deref(),
                            t.upstreams,
                            t.created_ms,
                            t.start_ms,
                            t.end_ms,
                            history_json(&t.history),
                            t.run.cache_key(),
                        ])?;
                        task_seqs.insert(*id, tx.last_insert_rowid());
                    }
                }
            }
            let task_seq = |id: RunId| -> Option<i64> {
                self.tasks
                    .get(&id)
                    .and_then(|t| t.seq)
                    .or_else(|| self.done.get(&id).map(|d| d.seq))
                    .or_else(|| task_seqs.get(&id).copied())
            };
            let mut insert_log = tx.prepare_cached(
                "INSERT INTO logs (flow_run, task_run, level, time_ms, text)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for l in &batch.logs {
                let Some(flow) = flow_seq(l.flow) else {
                    continue;
                };
                insert_log.execute(params![
                    flow,
                    l.task.and_then(task_seq),
                    l.level,
                    l.time_ms,
                    l.text
                ])?;
            }
            let mut update_flow = tx.prepare_cached(
                "UPDATE flow_runs SET state = ?2, state_name = ?3, message = ?4, end_ms = ?5,
                 tasks_total = ?6, tasks_completed = ?7, tasks_failed = ?8, tasks_crashed = ?9,
                 tasks_cancelled = ?10, history = ?11 WHERE seq = ?1",
            )?;
            for token in &batch.flows {
                let (Some(f), Some(seq)) = (self.flows.get(token), flow_seq(*token)) else {
                    continue;
                };
                update_flow.execute(params![
                    seq,
                    f.state,
                    f.state_name,
                    f.message.as_deref(),
                    f.end_ms,
                    f.total,
                    f.counts[0],
                    f.counts[1],
                    f.counts[2],
                    f.counts[3],
                    history_json(&f.history),
                ])?;
            }
        }
        tx.commit()?;
        Ok((
            flow_seqs.into_iter().collect(),
            task_seqs.into_iter().collect(),
        ))
    }
}

fn uuid_of(
    tasks: &HashMap<RunId, TaskRow>,
    done: &HashMap<RunId, Done>,
    run: RunId,
) -> Option<Uuid> {
    tasks
        .get(&run)
        .map(|t| t.id)
        .or_else(|| done.get(&run).map(|d| d.id))
}

/// The text between `prefix` and the closing quote of `label`.
fn quoted<'a>(label: &'a str, prefix: &str) -> Option<&'a str> {
    label.strip_prefix(prefix)?.strip_suffix('\'')
}

/// A UUIDv7 of `time`: its first 48 bits are the time in milliseconds, so
/// ids sort by creation time; the rest is random, so a few of its digits
/// tell runs apart.
fn new_id(time: SystemTime) -> Uuid {
    // fastrand, not the system's generator: ids need to differ, not to be
    // secret, and a system call per task run shows in the recording cost.
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    uuid::Builder::from_unix_timestamp_millis(millis(time) as u64, &random).into_uuid()
}

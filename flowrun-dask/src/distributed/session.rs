//! One flow run's session with a Dask scheduler: turns attempts into Dask
//! tasks, and Dask's reports into outcomes of the attempts.
//!
//! The session is one actor on flowrun's runtime that owns every attempt's
//! state, so events and submissions never race:
//! * an attempt becomes one Dask key whose value is the task's result frame;
//!   an upstream run of this session becomes a dependency on its key, so its
//!   data moves between workers inside Dask and is only gathered by the flow
//!   if the flow reads it (`finish_deferred`);
//! * the Python shim publishes "started" events (for tasks that run a
//!   while) and "output" events (for tasks that printed) on the session's
//!   own topic, which give the run its Running state, its worker and its
//!   lines; the topic is removed from the scheduler when the session ends;
//! * Dask reports a failure for the failed key and, with the same
//!   exception, for every key that depends on it. A failure is the key's own
//!   when all its upstreams completed; otherwise it waits until an upstream
//!   failed and becomes `UpstreamFailed` naming that upstream;
//! * a key is released on the scheduler once it is final, every key that
//!   depends on it is final, and no future can read it any more (the read
//!   function of a completed key holds a [`KeyHold`], which tells the
//!   session when the run's last reference is gone). Nothing of a flow run
//!   stays on a shared scheduler: the rest goes when the session closes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flowrun_core::plumbing::lock;
use flowrun_core::{Annotations, ArgSlot, RunRef, SerializedJob, TaskError, TaskErrorKind};
use tokio::sync::{mpsc, oneshot};

use super::format::{self, TaskHeader, INPUT_VERSION};
use super::output;
use super::reads::Reads;
use crate::protocol::{
    ClientEvent, DaskClient, EventReceiver, EventValue, ProtocolError, PythonShim, StdinPart,
    SubprocessTask, TaskException, TopicEvent,
};

/// How long handing a batch of tasks to the scheduler may take.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long asking the scheduler about its workers may take.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(10);

/// An attempt handed to the session.
pub(crate) struct Attempt {
    pub key: String,
    pub run: RunRef,
    /// flowrun's engine retries the run if this attempt fails (its retries
    /// are not used up): Dask runs each attempt once, under a key of its
    /// own, so that the delay, the retry condition and the hooks of a
    /// retry apply as on every runner.
    pub may_retry: bool,
    pub annotations: Annotations,
    pub job: SerializedJob,
}

pub(crate) enum Command {
    Submit(Box<Attempt>),
    /// Fail what is still running, close the client, then answer.
    Close(oneshot::Sender<()>),
    /// Report the attempts of the session.
    Status(oneshot::Sender<Progress>),
    /// No future can read the key's result any more.
    Unheld(String),
    /// The run (by id) was cancelled before it started: take its key off
    /// the scheduler, with the keys that depend on it.
    Cancel(u64),
}

/// Held by the read function of a completed key; when the run's last
/// reference is dropped, so is this, and the session may release the key.
struct KeyHold {
    key: String,
    commands: mpsc::WeakUnboundedSender<Command>,
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands.send(Command::Unheld(std::mem::take(&mut self.key)));
        }
    }
}

/// Where the session's attempts are.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Submitted attempts not known to have started: run name, resources.
    pub pending: Vec<(String, BTreeMap<String, f64>)>,
    /// Attempts that completed or failed.
    pub finished: u64,
}

/// What every task of the session shares.
pub(crate) struct TaskTemplate {
    /// The task program and its arguments, as the workers run it.
    pub argv: Vec<Vec<u8>>,
    /// The Python shim.
    pub shim: Arc<PythonShim>,
    /// The flow's build id.
    pub build: String,
    /// The worker plugin that installs the shim and keeps the session's
    /// task processes, removed when the session closes.
    pub plugin: String,
    /// The scheduler topic the session's tasks report on.
    pub topic: String,
}

#[derive(Debug)]
enum Status {
    Submitted,
    Completed,
    Failed(TaskError),
}

struct Entry {
    /// The run's id (`RunId::get`).
    run_id: u64,
    run_name: String,
    job: Option<SerializedJob>,
    upstreams: Vec<String>,
    dependents: Vec<String>,
    status: Status,
    started: bool,
    /// Dask reported a failure that may be an upstream's (see module docs).
    blame: Option<TaskException>,
    /// Everything the attempt printed, for its error.
    output: String,
    /// The abstract resources it needs.
    resources: BTreeMap<String, f64>,
    /// A future may still read its result.
    held: bool,
    /// Its run is retried if this attempt fails (see [`Attempt::may_retry`]).
    may_retry: bool,
}

pub(crate) struct Session {
    client: Arc<DaskClient>,
    /// Reads results, in batches.
    reads: Arc<Reads>,
    template: TaskTemplate,
    /// To resubmit an attempt later; weak, so that the session ends when
    /// its cluster is gone.
    commands: mpsc::WeakUnboundedSender<Command>,
    entries: HashMap<String, Entry>,
    by_run: HashMap<u64, String>,
    /// Set once the scheduler connection is gone.
    lost: Option<String>,
    /// Resource sets already checked against the workers.
    checked: Vec<BTreeMap<String, f64>>,
    /// Keys to release with the next message.
    releasable: Vec<String>,
}

impl Session {
    /// Runs the session until it is told to close.
    pub(crate) async fn run(
        client: Arc<DaskClient>,
        template: TaskTemplate,
        mut events: EventReceiver,
        commands: mpsc::WeakUnboundedSender<Command>,
        mut inbox: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut session = Session {
            reads: Reads::new(client.clone()),
            client,
            template,
            commands,
            entries: HashMap::new(),
            by_run: HashMap::new(),
            lost: None,
            checked: Vec::new(),
            releasable: Vec::new(),
        };
        let mut events_open = true;
        loop {
            tokio::select! {
                command = inbox.recv() => {
                    let Some(first) = command else { break };
                    let mut batch = vec![first];
                    while let Ok(more) = inbox.try_recv() {
                        batch.push(more);
                    }
                    if let Some(done) = session.commands(batch).await {
                        session.close().await;
                        refuse_queued(&mut inbox);
                        let _ = done.send(());
                        return;
                    }
                }
                event = events.recv(), if events_open => match event {
                    Some(event) => {
                        // What else arrived is handled with it.
                        let mut batch = vec![event];
                        while let Some(event) = events.try_recv() {
                            batch.push(event);
                        }
                        session.events(batch).await;
                    }
                    None => events_open = false,
                },
            }
        }
        session.close().await;
        refuse_queued(&mut inbox);
    }

    /// Submits a batch of attempts in one go; returns the closer's answer
    /// channel when a close was asked for.
    async fn commands(&mut self, batch: Vec<Command>) -> Option<oneshot::Sender<()>> {
        let mut tasks = Vec::new();
        let mut close = None;
        let mut cancels = Vec::new();
        for command in batch {
            match command {
                Command::Submit(attempt) => {
                    if close.is_some() {
                        attempt.job.finish(Err(TaskError::new(
                            TaskErrorKind::Cancelled,
                            "the flow run ended",
                        )));
                    } else if let Some(task) = self.prepare(*attempt) {
                        tasks.push(task);
                    }
                }
                Command::Close(done) => close = Some(done),
                Command::Status(answer) => {
                    let _ = answer.send(self.progress());
                }
                Command::Unheld(key) => {
                    if let Some(entry) = self.entries.get_mut(&key) {
                        entry.held = false;
                    }
                    self.consider_release(&key);
                }
                Command::Cancel(run_id) => cancels.push(run_id),
            }
        }
        if !tasks.is_empty() {
            self.warn_unplaceable(&tasks).await;
            tracing::debug!(target: "flowrun_dask::distributed", "submitting {} tasks", tasks.len());
            let keys: Vec<String> = tasks.iter().map(|t| t.key.clone()).collect();
            let failure =
                match tokio::time::timeout(SUBMIT_TIMEOUT, self.client.submit(tasks)).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("no progress for {}s", SUBMIT_TIMEOUT.as_secs())),
                };
            if let Some(e) = failure {
                let why = format!(
                    "could not submit it to the Dask scheduler at {}: {e}",
                    self.client.address()
                );
                for key in keys {
                    self.fail(&key, TaskError::new(TaskErrorKind::Crashed, why.clone()));
                }
            }
        }
        // After the submission: a run submitted and cancelled in one batch
        // is cancelled on the scheduler, which then knows its key.
        self.cancel(cancels).await;
        self.release_pending().await;
        close
    }

    /// Cancels the keys of runs cancelled before they started (their runs
    /// are final already) on the scheduler, which cancels the keys that
    /// depend on them too and reports them all as cancelled: a dependent
    /// then fails as its upstream's (see `event`). A key that completed or
    /// failed meanwhile stays as it is; a key Dask already runs is dropped
    /// there and its result discarded, as Dask cannot stop a running task.
    async fn cancel(&mut self, runs: Vec<u64>) {
        let mut keys = Vec::new();
        for run_id in runs {
            let Some(key) = self.by_run.get(&run_id).cloned() else {
                continue;
            };
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if !matches!(entry.status, Status::Submitted) {
                continue;
            }
            let error = TaskError::new(TaskErrorKind::Cancelled, "cancelled before it started");
            entry.status = Status::Failed(error.clone());
            if let Some(job) = entry.job.take() {
                job.finish(Err(error));
            }
            keys.push(key);
        }
        if keys.is_empty() || self.lost.is_some() {
            return;
        }
        // Before any release of these keys: the scheduler cancels only
        // keys this client still wants.
        if let Err(e) = self.client.cancel(&keys).await {
            tracing::debug!(target: "flowrun_dask", "cancelling {} keys: {e}", keys.len());
        }
        // Dask reports the dependents cancelled too; they fail here at once
        // rather than on that word.
        let mut todo: Vec<String> = keys.clone();
        while let Some(key) = todo.pop() {
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            for dependent in entry.dependents.clone() {
                if let Some(error) = self.failed_upstream(&dependent) {
                    if self
                        .entries
                        .get(&dependent)
                        .is_some_and(|e| matches!(e.status, Status::Submitted))
                    {
                        self.fail(&dependent, error);
                        todo.push(dependent);
                    }
                }
            }
        }
        for key in &keys {
            self.settled(key);
        }
    }

    /// Releases the keys found releasable, in one message.
    async fn release_pending(&mut self) {
        if self.releasable.is_empty() || self.lost.is_some() {
            return;
        }
        let keys = std::mem::take(&mut self.releasable);
        if let Err(e) = self.client.release(&keys).await {
            tracing::debug!(target: "flowrun_dask", "releasing {} keys: {e}", keys.len());
        }
    }

    /// `key` became final: it, or upstreams it kept, may be released.
    fn settled(&mut self, key: &str) {
        if let Some(entry) = self.entries.get(key) {
            let upstreams = entry.upstreams.clone();
            self.consider_release(key);
            for up in upstreams {
                self.consider_release(&up);
            }
        }
    }

    /// Queues `key` and the upstreams it kept for release if nothing needs
    /// them any more; forgets them here too.
    fn consider_release(&mut self, key: &str) {
        let mut todo = vec![key.to_owned()];
        while let Some(key) = todo.pop() {
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            let final_ = |e: &Entry| !matches!(e.status, Status::Submitted);
            let needed = entry.held
                || !final_(entry)
                || entry
                    .dependents
                    .iter()
                    .any(|d| self.entries.get(d).is_some_and(|e| !final_(e)));
            if needed {
                continue;
            }
            let Some(entry) = self.entries.remove(&key) else {
                continue;
            };
            self.reads.forget(&key);
            if self.by_run.get(&entry.run_id) == Some(&key) {
                self.by_run.remove(&entry.run_id);
            }
            self.releasable.push(key);
            // An upstream may have waited for this dependent to be final.
            todo.extend(entry.upstreams);
        }
    }

    /// A task whose resources no worker offers waits until such a worker
    /// joins (an adaptive or growing cluster may add one), as Dask does; say
    /// so once per resource set, so a wait is never silent.
    async fn warn_unplaceable(&mut self, tasks: &[SubprocessTask]) {
        let needs: Vec<&BTreeMap<String, f64>> = tasks
            .iter()
            .map(|t| &t.resources)
            .filter(|r| !r.is_empty() && !self.checked.contains(*r))
            .collect();
        if needs.is_empty() {
            return;
        }
        let info = match tokio::time::timeout(IDENTITY_TIMEOUT, self.client.identity()).await {
            Ok(Ok(info)) => info,
            _ => return,
        };
        for need in needs {
            if self.checked.contains(need) {
                continue;
            }
            self.checked.push(need.clone());
            if !info.can_satisfy(need) {
                tracing::warn!(
                    target: "flowrun_dask",
                    "tasks need resources {need:?}, which no worker of the Dask cluster at {} \
                     offers now; they wait until such a worker joins",
                    self.client.address()
                );
            }
        }
    }

    fn progress(&self) -> Progress {
        let mut progress = Progress::default();
        for entry in self.entries.values() {
            match entry.status {
                Status::Submitted if !entry.started => progress
                    .pending
                    .push((entry.run_name.clone(), entry.resources.clone())),
                Status::Submitted => {}
                Status::Completed | Status::Failed(_) => progress.finished += 1,
            }
        }
        progress
    }

    /// Registers an attempt and builds its Dask task, or finishes it at once
    /// (an upstream already failed, the connection is gone).
    fn prepare(&mut self, attempt: Attempt) -> Option<SubprocessTask> {
        let Attempt {
            key,
            run,
            may_retry,
            annotations,
            job,
        } = attempt;
        if let Some(lost) = &self.lost {
            job.finish(Err(TaskError::new(TaskErrorKind::Crashed, lost.clone())));
            return None;
        }
        // Cancelled while it waited for an upstream of another runner.
        if run.state().is_final() {
            let error = run.error().unwrap_or_else(|| {
                TaskError::new(TaskErrorKind::Cancelled, "cancelled before it started")
            });
            job.finish(Err(error));
            return None;
        }
        let header = TaskHeader {
            version: INPUT_VERSION,
            build: self.template.build.clone(),
            task_key: job.task_key().to_owned(),
            run_name: run.name(),
            hooks: job.task_hooks(),
            limits: super::slots::limits_for(run.flow_run_id()),
        };
        let mut stdin = vec![StdinPart::Literal(
            postcard::to_allocvec(&header).unwrap_or_default(),
        )];
        let mut upstreams = Vec::new();
        let args = job.shared_args();
        for slot in args.iter() {
            match slot {
                ArgSlot::Bytes(bytes) => {
                    stdin.push(StdinPart::Literal(format::result_frame(bytes)))
                }
                ArgSlot::Upstream(up) => {
                    let known = self
                        .by_run
                        .get(&up.id().get())
                        .and_then(|k| Some((k, self.entries.get(k)?)));
                    // This run waits for the outcome of an upstream this
                    // session never saw (another runner's), and of one
                    // whose attempt may fail and be retried under another
                    // key (a dependent of the attempt's key would fail
                    // with it).
                    if !up.state().is_final() && known.is_none_or(|(_, e)| e.may_retry) {
                        self.after_final(
                            up.clone(),
                            Attempt {
                                key,
                                run,
                                may_retry,
                                annotations,
                                job,
                            },
                        );
                        return None;
                    }
                    match known {
                        Some((up_key, upstream)) => {
                            if let Status::Failed(e) = &upstream.status {
                                let error = TaskError::upstream_failed(&upstream.run_name, e);
                                job.finish(Err(error));
                                return None;
                            }
                            upstreams.push(up_key.clone());
                            stdin.push(StdinPart::Dep(up_key.clone()));
                        }
                        // Final, and another runner's: its value goes
                        // along as bytes.
                        None => match up.encoded_result() {
                            Ok(bytes) => {
                                stdin.push(StdinPart::Literal(format::result_frame(&bytes)))
                            }
                            Err(e) => {
                                job.finish(Err(TaskError::upstream_failed(&up.name(), &e)));
                                return None;
                            }
                        },
                    }
                }
            }
        }
        for up in &upstreams {
            if let Some(entry) = self.entries.get_mut(up) {
                entry.dependents.push(key.clone());
            }
        }
        let resources: BTreeMap<String, f64> = annotations
            .resources
            .as_ref()
            .map(|r| r.iter().map(|(k, v)| (k.to_owned(), v)).collect())
            .unwrap_or_default();
        self.by_run.insert(run.id().get(), key.clone());
        self.entries.insert(
            key.clone(),
            Entry {
                run_id: run.id().get(),
                run_name: run.name(),
                job: Some(job),
                upstreams,
                dependents: Vec::new(),
                status: Status::Submitted,
                started: false,
                blame: None,
                output: String::new(),
                resources: resources.clone(),
                held: false,
                may_retry,
            },
        );
        let mut task = SubprocessTask::new(key, self.template.argv.iter().cloned());
        task.stdin = stdin;
        task.priority = annotations.priority.unwrap_or(0);
        task.resources = resources;
        task.shim = Some(self.template.shim.clone());
        Some(task)
    }

    /// Resubmits `attempt` once `upstream` is final, from a helper thread
    /// (the wait may be long, and the session must keep going).
    fn after_final(&self, upstream: RunRef, attempt: Attempt) {
        let commands = self.commands.clone();
        let slot = Arc::new(std::sync::Mutex::new(Some(attempt)));
        let waiting = slot.clone();
        let ended = || TaskError::new(TaskErrorKind::Cancelled, "the flow run ended");
        let spawned = std::thread::Builder::new()
            .name("flowrun-dask-upstream".into())
            .spawn(move || {
                upstream.wait();
                let Some(attempt) = lock(&waiting).take() else {
                    return;
                };
                let command = Command::Submit(Box::new(attempt));
                let unsent = match commands.upgrade() {
                    Some(commands) => commands.send(command).err().map(|e| e.0),
                    None => Some(command),
                };
                if let Some(Command::Submit(attempt)) = unsent {
                    attempt.job.finish(Err(ended()));
                }
            });
        if let Err(e) = spawned {
            if let Some(attempt) = lock(&slot).take() {
                attempt.job.finish(Err(TaskError::new(
                    TaskErrorKind::Runner,
                    format!("cannot wait for its upstream run: {e}"),
                )));
            }
        }
    }

    /// Handles a batch of events in order. Tasks that completed without
    /// saying where they ran (short, quiet ones report nothing, to spare
    /// the scheduler) learn their worker first, in one question for the
    /// batch, so every run has its location.
    async fn events(&mut self, batch: Vec<ClientEvent>) {
        let unplaced: Vec<String> = batch
            .iter()
            .filter_map(|event| match event {
                ClientEvent::KeyInMemory { key } => self
                    .entries
                    .get(key)
                    .filter(|e| !e.started && matches!(e.status, Status::Submitted))
                    .map(|_| key.clone()),
                _ => None,
            })
            .collect();
        let mut places = HashMap::new();
        if !unplaced.is_empty() && self.lost.is_none() {
            if let Ok(Ok(found)) =
                tokio::time::timeout(IDENTITY_TIMEOUT, self.client.who_has(&unplaced)).await
            {
                places = found;
            }
        }
        for event in batch {
            if let ClientEvent::KeyInMemory { key } = &event {
                let worker = places.get(key).and_then(|w| w.first());
                if let (Some(worker), Some(entry)) = (worker, self.entries.get_mut(key)) {
                    if let Some(job) = &entry.job {
                        entry.started = true;
                        job.started(Some(worker));
                    }
                }
            }
            self.event(event);
        }
        self.release_pending().await;
    }

    fn event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Topic(event) if event.topic == self.template.topic => {
                self.topic_event(event)
            }
            ClientEvent::KeyInMemory { key } => self.completed(&key),
            ClientEvent::TaskErred { key, error } => self.erred(&key, error),
            ClientEvent::CancelledKeys { keys, reason } => {
                for key in keys {
                    // A dependent of a cancelled run fails as its
                    // upstream's, as on every runner.
                    let error = self.failed_upstream(&key).unwrap_or_else(|| {
                        TaskError::new(
                            TaskErrorKind::Cancelled,
                            format!("the Dask scheduler cancelled it: {reason}"),
                        )
                    });
                    self.fail(&key, error);
                }
            }
            ClientEvent::Restarted => self.lose("the Dask cluster was restarted".into()),
            ClientEvent::Closed { reason } => self.lose(format!(
                "lost the connection to the Dask scheduler at {}: {reason}",
                self.client.address()
            )),
            // A lost result is recomputed by Dask (this client holds it);
            // a read waits for it.
            _ => {}
        }
    }

    fn topic_event(&mut self, event: TopicEvent) {
        let message = event.message;
        let Some(entry) = message
            .get("k")
            .and_then(EventValue::as_str)
            .and_then(|k| self.entries.get_mut(k))
        else {
            return;
        };
        let worker = message.get("worker").and_then(EventValue::as_str);
        if !entry.started {
            if let Some(job) = &entry.job {
                entry.started = true;
                job.started(worker);
            }
        }
        if let Some(text) = message.get("o").and_then(EventValue::as_bytes) {
            let lines = output::parse(text);
            if let Some(job) = &entry.job {
                for line in &lines {
                    if let output::Line::Subflow(json) = line {
                        match serde_json::from_str(json) {
                            Ok(report) => job.report_subflow(report),
                            Err(e) => tracing::debug!(
                                target: "flowrun_dask::cluster",
                                "Ignored an unreadable subflow report of '{}': {e}",
                                entry.run_name
                            ),
                        }
                    }
                }
            }
            output::emit(&entry.run_name, &lines, entry.job.as_ref());
            entry.output.push_str(&output::readable(&lines));
        }
    }

    fn completed(&mut self, key: &str) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if !matches!(entry.status, Status::Submitted) {
            return;
        }
        entry.status = Status::Completed;
        if let Some(job) = entry.job.take() {
            if !entry.started {
                job.started(None);
            }
            self.reads.completed(key);
            entry.held = true;
            let reads = self.reads.clone();
            let hold = KeyHold {
                key: key.to_owned(),
                commands: self.commands.clone(),
            };
            job.finish_deferred(move || reads.read(&hold.key));
        }
        self.settle_dependents(key);
        self.settled(key);
    }

    fn erred(&mut self, key: &str, error: TaskException) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        if !matches!(entry.status, Status::Submitted) {
            return;
        }
        let own = entry.upstreams.iter().all(|u| {
            self.entries
                .get(u)
                .is_some_and(|e| matches!(e.status, Status::Completed))
        });
        if own {
            let failure = own_failure(entry, &error);
            self.fail(key, failure);
        } else {
            if let Some(entry) = self.entries.get_mut(key) {
                entry.blame = Some(error);
            }
            self.settle_blamed(key);
        }
    }

    /// Resolves a failure Dask reported for `key` while some upstream was
    /// not complete: it is that upstream's failure once known.
    fn settle_blamed(&mut self, key: &str) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        if !matches!(entry.status, Status::Submitted) {
            return;
        }
        let Some(blame) = &entry.blame else {
            return;
        };
        let error = match self.failed_upstream(key) {
            Some(error) => error,
            None if entry.upstreams.iter().all(|u| {
                self.entries
                    .get(u)
                    .is_some_and(|e| matches!(e.status, Status::Completed))
            }) =>
            {
                own_failure(entry, blame)
            }
            // Still waiting for an upstream's outcome.
            None => return,
        };
        self.fail(key, error);
    }

    /// The failure of `key` as its first failed upstream's, if one failed.
    fn failed_upstream(&self, key: &str) -> Option<TaskError> {
        self.entries.get(key)?.upstreams.iter().find_map(|u| {
            let up = self.entries.get(u)?;
            match &up.status {
                Status::Failed(e) => Some(TaskError::upstream_failed(&up.run_name, e)),
                _ => None,
            }
        })
    }

    fn settle_dependents(&mut self, key: &str) {
        let dependents = self
            .entries
            .get(key)
            .map(|e| e.dependents.clone())
            .unwrap_or_default();
        for dependent in dependents {
            self.settle_blamed(&dependent);
        }
    }

    /// Finishes a submitted key with `error`; dependents waiting on its
    /// outcome follow.
    fn fail(&mut self, key: &str, error: TaskError) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if !matches!(entry.status, Status::Submitted) {
            return;
        }
        entry.status = Status::Failed(error.clone());
        if let Some(job) = entry.job.take() {
            job.finish(Err(error));
        }
        self.settle_dependents(key);
        self.settled(key);
    }

    /// The connection is gone: nothing submitted will report anymore.
    fn lose(&mut self, why: String) {
        self.lost = Some(why.clone());
        self.fail_submitted(TaskError::new(TaskErrorKind::Crashed, why));
    }

    /// Ends every attempt still waiting for the scheduler with `error`.
    fn fail_submitted(&mut self, error: TaskError) {
        let pending: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.status, Status::Submitted))
            .map(|(k, _)| k.clone())
            .collect();
        for key in pending {
            self.fail(&key, error.clone());
        }
    }

    async fn close(&mut self) {
        self.fail_submitted(TaskError::new(
            TaskErrorKind::Cancelled,
            "the flow run ended",
        ));
        if let Err(e) = tokio::time::timeout(
            IDENTITY_TIMEOUT,
            self.client.remove_topic(&self.template.topic),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ProtocolError::Closed {
                reason: "no answer".into(),
            })
        }) {
            tracing::debug!(target: "flowrun_dask", "removing the flow's event topic from the scheduler: {e}");
        }
        if !self.template.plugin.is_empty() {
            let plugin = std::mem::take(&mut self.template.plugin);
            // Ends the session's task processes on every worker.
            match tokio::time::timeout(
                IDENTITY_TIMEOUT,
                self.client.unregister_worker_plugin(&plugin),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(target: "flowrun_dask", "stopping the flow's task processes on the Dask workers: {e}")
                }
                Err(_) => {
                    tracing::warn!(target: "flowrun_dask", "stopping the flow's task processes on the Dask workers took longer than {}s", IDENTITY_TIMEOUT.as_secs())
                }
            }
        }
        if let Err(e) = self.client.close().await {
            tracing::debug!(target: "flowrun_dask", "closing the Dask client: {e}");
        }
    }
}

/// Ends what is still queued for a session that has closed: attempts
/// submitted while it closed are cancelled, never left unresolved.
fn refuse_queued(inbox: &mut mpsc::UnboundedReceiver<Command>) {
    inbox.close();
    while let Ok(command) = inbox.try_recv() {
        match command {
            Command::Submit(attempt) => attempt.job.finish(Err(TaskError::new(
                TaskErrorKind::Cancelled,
                "the flow run's session with the Dask scheduler closed before it was submitted",
            ))),
            Command::Close(done) => {
                let _ = done.send(());
            }
            Command::Status(_) | Command::Unheld(_) | Command::Cancel(_) => {}
        }
    }
}

/// The attempt's own failure, from what Dask reported.
fn own_failure(entry: &Entry, error: &TaskException) -> TaskError {
    let printed = if entry.output.is_empty() {
        output::readable(&output::parse(&error.stderr))
    } else {
        entry.output.clone()
    };
    let failure = match error.class.as_str() {
        "subprocess.CalledProcessError" => match format::parse_error(&error.stdout) {
            Some(failure) => failure.into_task_error(),
            None => process_died(error.returncode, &printed),
        },
        "distributed.scheduler.KilledWorker" => TaskError::new(
            TaskErrorKind::KilledWorker,
            format!(
                "the Dask workers running it kept dying, so Dask gave up on it (KilledWorker: {})",
                error.message
            ),
        ),
        // The shim could not start the task program.
        "builtins.RuntimeError" => TaskError::new(TaskErrorKind::Runner, error.message.clone()),
        other => TaskError::new(
            TaskErrorKind::Runner,
            format!("Dask could not run it: {other}: {}", error.message),
        ),
    };
    failure.with_printed(printed)
}

/// A task-mode process that ended without reporting.
fn process_died(returncode: Option<i64>, printed: &str) -> TaskError {
    let last = printed
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!("; its last output line: {l}"))
        .unwrap_or_default();
    match returncode {
        Some(0) => TaskError::new(
            TaskErrorKind::Runner,
            format!(
                "the task program exited without a flowrun result, so it did not run in task \
                 mode: is it a flowrun program that reaches this flow?{last}"
            ),
        ),
        Some(code) if code < 0 => TaskError::new(
            TaskErrorKind::Crashed,
            format!(
                "the task process was killed by signal {}{}{last}",
                -code,
                if code == -9 { " (SIGKILL)" } else { "" }
            ),
        ),
        Some(code) => TaskError::new(
            TaskErrorKind::Crashed,
            format!("the task process exited with status {code} without a result{last}"),
        ),
        None => TaskError::new(
            TaskErrorKind::Crashed,
            format!("the task process failed without a result{last}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(output: &str) -> Entry {
        Entry {
            run_id: 1,
            run_name: "t-1".into(),
            job: None,
            upstreams: Vec::new(),
            dependents: Vec::new(),
            status: Status::Submitted,
            started: false,
            blame: None,
            output: output.into(),
            resources: BTreeMap::new(),
            held: false,
            may_retry: false,
        }
    }

    fn called_process_error(code: i64, stdout: Vec<u8>, stderr: &[u8]) -> TaskException {
        TaskException {
            class: "subprocess.CalledProcessError".into(),
            message: String::new(),
            returncode: Some(code),
            stdout,
            stderr: stderr.to_vec(),
        }
    }

    #[test]
    fn a_reported_failure_keeps_its_kind_message_and_output() {
        let failure = format::Failure {
            kind: format::FailureKind::Error,
            message: "disk full".into(),
        };
        let mut stdout = b"running 1 test\n".to_vec();
        stdout.extend(format::error_frame(&failure));
        let error = own_failure(
            &entry(""),
            &called_process_error(
                3,
                stdout,
                &output::encode(&output::Line::Stdout("hi".into())),
            ),
        );
        assert_eq!(error.kind(), &TaskErrorKind::Error);
        assert_eq!(error.message(), "disk full");
        assert_eq!(error.printed(), Some("hi\n"));
    }

    #[test]
    fn processes_that_died_are_crashes() {
        let killed = own_failure(&entry("working\n"), &called_process_error(-9, vec![], b""));
        assert_eq!(killed.kind(), &TaskErrorKind::Crashed);
        assert!(killed.message().contains("signal 9 (SIGKILL)"), "{killed}");
        assert!(killed.message().contains("working"), "{killed}");
        let not_task_mode = own_failure(&entry(""), &called_process_error(0, vec![], b""));
        assert_eq!(not_task_mode.kind(), &TaskErrorKind::Runner);
        let killed_worker = own_failure(
            &entry(""),
            &TaskException {
                class: "distributed.scheduler.KilledWorker".into(),
                message: "('k', 'tcp://w:1', 3)".into(),
                returncode: None,
                stdout: vec![],
                stderr: vec![],
            },
        );
        assert_eq!(killed_worker.kind(), &TaskErrorKind::KilledWorker);
    }
}

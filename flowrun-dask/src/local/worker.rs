//! A worker of a local cluster: the flow's program started again in worker
//! mode (or threads of the flow's process). It proves it belongs to the
//! cluster, then runs the tasks the scheduler assigns, by registry key.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use flowrun_core::plumbing::{lock, wait, EventFields};
use serde::{Deserialize, Serialize};

use super::output::Capture;
use super::store::{Payload, WorkerStore};
use super::transport::frame::{self, Oversized, FRAME_LIMIT};
use super::wire::{Assignment, Completion, LogLine, OutputLine, ToScheduler, ToWorker, WireError};

/// The environment variable that starts this program as a worker.
pub(crate) const WORKER_ENV: &str = "FLOWRUN_DASK_WORKER";

flowrun_core::__private::inventory::submit! {
    flowrun_core::worker::WorkerMode { env: WORKER_ENV, run: process_main }
}

/// What a worker needs to join its cluster (sent on stdin, never in argv).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerConfig {
    pub address: String,
    pub secret: String,
    pub worker: u32,
    pub name: String,
    pub nthreads: usize,
    pub build: String,
    /// The cluster's result store.
    pub store_id: u64,
    pub store_dir: std::path::PathBuf,
    /// How many bytes of stored results the worker keeps as values.
    pub keep_bytes: u64,
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The entry point of a worker process.
fn process_main() -> ! {
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    let config: WorkerConfig = match read.map_err(|e| e.to_string()).and_then(|_| {
        serde_json::from_str(&line).map_err(|e| format!("bad worker configuration on stdin: {e}"))
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flowrun worker: {e}");
            std::process::exit(3)
        }
    };
    match serve(config, true, None) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("flowrun worker: {e}");
            std::process::exit(3)
        }
    }
}

/// What executors and the output reader send to the scheduler.
pub(crate) enum Outgoing {
    Started(super::wire::Start),
    Done(Completion),
    Output(OutputLine),
    Log(LogLine),
    Secede(u64),
    Rejoin(u64),
    Submit(super::wire::Submission),
    Handled(Vec<u64>),
    Slots(super::slots::SlotAsk),
    Released(Vec<u64>),
    Subflow(u64, Box<flowrun_core::SubflowReport>),
}

/// Tasks by priority then submission order, and whether the queue closed.
type Heap = (BinaryHeap<(i64, Reverse<u64>, QueuedTask)>, bool);

struct Queue {
    heap: Mutex<Heap>,
    cond: Condvar,
}

struct QueuedTask(Assignment);
impl PartialEq for QueuedTask {
    fn eq(&self, o: &Self) -> bool {
        self.0.id == o.0.id
    }
}
impl Eq for QueuedTask {}
impl PartialOrd for QueuedTask {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for QueuedTask {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.0.id.cmp(&self.0.id)
    }
}

impl Queue {
    fn push(&self, tasks: Vec<Assignment>) {
        let mut g = lock(&self.heap);
        let n = tasks.len();
        for t in tasks {
            g.0.push((t.priority, Reverse(t.seq), QueuedTask(t)));
        }
        drop(g);
        if n == 1 {
            self.cond.notify_one();
        } else {
            self.cond.notify_all();
        }
    }

    fn pop(&self) -> Option<Assignment> {
        let mut g = lock(&self.heap);
        loop {
            if let Some((_, _, t)) = g.0.pop() {
                return Some(t.0);
            }
            if g.1 {
                return None;
            }
            g = wait(&self.cond, g);
        }
    }

    /// Takes out the tasks of `ids` that have not started; returns their ids.
    fn cancel(&self, ids: &[u64]) -> Vec<u64> {
        let mut g = lock(&self.heap);
        let mut dropped = Vec::new();
        g.0.retain(|(_, _, t)| {
            let hit = ids.contains(&t.0.id);
            if hit {
                dropped.push(t.0.id);
            }
            !hit
        });
        dropped
    }

    fn close(&self) {
        lock(&self.heap).1 = true;
        self.cond.notify_all();
    }
}

struct Executors {
    queue: Queue,
    out: Sender<Outgoing>,
    capture: Option<Capture>,
    /// Ships task logs to the flow; each executor thread uses it as its
    /// default, so a subscriber the program installed before its flow call
    /// does not swallow them.
    logs: Option<tracing::Dispatch>,
    link: Arc<super::forward::Link>,
    store: WorkerStore,
    nthreads: usize,
    threads: AtomicUsize,
    seceded: AtomicUsize,
}

thread_local! {
    static CURRENT: RefCell<Option<(Arc<Executors>, u64)>> = const { RefCell::new(None) };
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Sends the start or end of a flow run that the task executing on this
/// thread called to the flow, which links it to the task's run.
fn report_subflow(report: flowrun_core::SubflowReport) {
    CURRENT.with(|c| {
        if let Some((ex, id)) = &*c.borrow() {
            let _ = ex.out.send(Outgoing::Subflow(*id, Box::new(report)));
        }
    });
}

/// Frees the slot of the task that blocks on another run, and takes it back.
fn blocking_hook(entering: bool) {
    CURRENT.with(|c| {
        if let Some((ex, id)) = &*c.borrow() {
            if entering {
                ex.seceded.fetch_add(1, Ordering::SeqCst);
                let _ = ex.out.send(Outgoing::Secede(*id));
                ex.spawn_if_needed();
            } else {
                ex.seceded.fetch_sub(1, Ordering::SeqCst);
                let _ = ex.out.send(Outgoing::Rejoin(*id));
            }
        }
    });
}

impl Executors {
    fn spawn_if_needed(self: &Arc<Self>) {
        let ex = self.clone();
        flowrun_core::plumbing::spawn_below_limit(
            &self.threads,
            || self.nthreads + self.seceded.load(Ordering::SeqCst),
            |n| format!("flowrun-executor-{n}"),
            move |n| ex.execute(n as u32),
        );
    }

    fn execute(self: Arc<Self>, thread: u32) {
        flowrun_core::set_blocking_hook(Some(blocking_hook));
        super::forward::bind_thread(self.link.clone());
        flowrun_core::report_subflows_to(Some(Arc::new(report_subflow)));
        let _logs = self.logs.as_ref().map(tracing::dispatcher::set_default);
        loop {
            // Shrink back after a seceded task rejoined.
            let n = self.threads.load(Ordering::SeqCst);
            if n > self.nthreads + self.seceded.load(Ordering::SeqCst)
                && self
                    .threads
                    .compare_exchange(n, n - 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                return;
            }
            let Some(task) = self.queue.pop() else {
                return;
            };
            let _ = self.out.send(Outgoing::Started(super::wire::Start {
                id: task.id,
                thread,
                at_us: now_us(),
            }));
            CURRENT.with(|c| *c.borrow_mut() = Some((self.clone(), task.id)));
            let run = task.run_name();
            let token = self.capture.as_ref().map(|c| c.task_started(&run));
            let started = Instant::now();
            let mut result = run_assignment(&task, &run, &self.store);
            // Work the task submitted to the cluster finishes before it does.
            let unhandled = super::forward::finish_task();
            if result.is_ok() && !unhandled.is_empty() {
                result = Err(WireError {
                    panic: false,
                    message: format!(
                        "{} task run(s) it submitted failed and it did not handle them: {}",
                        unhandled.len(),
                        unhandled
                            .iter()
                            .map(|f| format!("'{}' {}", f.task_run, f.state))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    kind: None,
                });
            }
            let duration_us = started.elapsed().as_micros() as u64;
            if let (Some(c), Some(t)) = (&self.capture, token) {
                c.task_finished(t);
            }
            CURRENT.with(|c| *c.borrow_mut() = None);
            let _ = self.out.send(Outgoing::Done(Completion {
                id: task.id,
                result,
                duration_us,
            }));
        }
    }
}

pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn run_assignment(task: &Assignment, run: &str, store: &WorkerStore) -> Result<Payload, WireError> {
    let Some(entry) = flowrun_core::registry::registry().get(&task.key) else {
        return Err(WireError {
            kind: None,
            panic: false,
            message: format!(
                "no task is registered as '{}' in the worker program (is it the same program as the flow?)",
                task.key
            ),
        });
    };
    let runner_error = |message: String| WireError {
        kind: Some(super::wire::WireKind::Runner),
        panic: false,
        message,
    };
    let mut held = task
        .args
        .iter()
        .map(|a| store.get(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(runner_error)?;
    let args = held.iter_mut().map(|a| a.value()).collect();
    IN_TASK.with(|t| t.set(true));
    PANIC_AT.with(|p| p.borrow_mut().take());
    let result = entry.run_held_attempt(args, run, task.hooks);
    IN_TASK.with(|t| t.set(false));
    // Unmapped before the result is written: the worker holds one value less.
    drop(held);
    let result = result.map_err(|e| {
        let panic = *e.kind() == flowrun_core::TaskErrorKind::Panic;
        let mut message = e.message().to_owned();
        if panic {
            if let Some(at) = PANIC_AT.with(|p| p.borrow_mut().take()) {
                message = format!("{message} (panicked at {at})");
            }
        }
        WireError {
            panic,
            message,
            kind: None,
        }
    })?;
    store.put(result).map_err(runner_error)
}

/// Panics inside tasks are reported to the flow as the task's failure, with
/// their location; printing them here too would only add noise.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_TASK.with(|t| t.get()) {
            let at = info.location().map(|l| l.to_string());
            PANIC_AT.with(|p| *p.borrow_mut() = at);
        } else {
            default(info);
        }
    }));
}

/// Sends what executors report, batched: one frame for everything queued
/// (several when it is larger than the frame limit).
fn write_loop(mut stream: TcpStream, rx: Receiver<Outgoing>, link: &super::forward::Link) {
    if send(&mut stream, &rx, link).is_err() {
        // The read loop then ends too: a worker that cannot report is lost
        // to the scheduler at once, not deaf.
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}

fn send(
    stream: &mut TcpStream,
    rx: &Receiver<Outgoing>,
    link: &super::forward::Link,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut started = Vec::new();
        let mut done = Vec::new();
        let mut output = Vec::new();
        let mut logs = Vec::new();
        let mut submits = Vec::new();
        let mut other = Vec::new();
        for m in std::iter::once(first).chain(rx.try_iter().take(8192)) {
            match m {
                Outgoing::Started(s) => started.push(s),
                Outgoing::Done(c) => done.push(c),
                Outgoing::Output(l) => output.push(l),
                Outgoing::Log(l) => logs.push(l),
                Outgoing::Secede(id) => other.push(ToScheduler::Secede(id)),
                Outgoing::Rejoin(id) => other.push(ToScheduler::Rejoin(id)),
                Outgoing::Submit(s) => submits.push(s),
                Outgoing::Handled(ids) => other.push(ToScheduler::Handled(ids)),
                Outgoing::Slots(a) => other.push(ToScheduler::Slots(a)),
                Outgoing::Released(ids) => other.push(ToScheduler::Released(ids)),
                Outgoing::Subflow(id, r) => other.push(ToScheduler::Subflow(id, r)),
            }
        }
        let mut batch = Vec::with_capacity(5);
        if !started.is_empty() {
            batch.push(ToScheduler::Started(started));
        }
        if !output.is_empty() {
            batch.push(ToScheduler::Output(output));
        }
        if !logs.is_empty() {
            batch.push(ToScheduler::Log(logs));
        }
        if !submits.is_empty() {
            batch.push(ToScheduler::Submit(submits));
        }
        batch.extend(other);
        if !done.is_empty() {
            batch.push(ToScheduler::Done(done));
        }
        for r in frame::write_batch(stream, batch, &mut buf, FRAME_LIMIT)? {
            if let Some(m) = answer_oversized(r, link) {
                frame::write_frame(stream, &[m], &mut buf, FRAME_LIMIT)?;
            }
        }
    }
    Ok(())
}

/// What stands for a message too large for a frame: the run's failure
/// naming the size and the limit, a refused submission, a shortened line.
fn answer_oversized(r: Oversized<ToScheduler>, link: &super::forward::Link) -> Option<ToScheduler> {
    let error = |what: &str| WireError {
        panic: false,
        message: frame::too_large(what, r.size, FRAME_LIMIT),
        kind: None,
    };
    match r.message {
        ToScheduler::Done(done) => Some(ToScheduler::Done(
            done.into_iter()
                .map(|c| Completion {
                    result: Err(error("the task's result")),
                    ..c
                })
                .collect(),
        )),
        ToScheduler::Submit(subs) => {
            let message = error("the submitted task's input");
            link.resolve(
                subs.into_iter()
                    .map(|s| (s.id, Err(message.clone())))
                    .collect(),
            );
            None
        }
        ToScheduler::Output(mut lines) => {
            for l in &mut lines {
                shorten(&mut l.line, r.size);
            }
            Some(ToScheduler::Output(lines))
        }
        ToScheduler::Log(mut lines) => {
            for l in &mut lines {
                shorten(&mut l.message, r.size);
            }
            Some(ToScheduler::Log(lines))
        }
        _ => None,
    }
}

/// Keeps the start of a line too large to send, and says so.
fn shorten(line: &mut String, size: usize) {
    let mut end = (FRAME_LIMIT / 2).min(line.len());
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.truncate(end);
    line.push_str(&format!(
        " [cut: {size} bytes is more than the frame limit]"
    ));
}

/// Joins the cluster at `config.address` and runs tasks until told to stop
/// or the scheduler goes away. `process` is false for worker threads of
/// the flow's own process, which neither capture output nor ship logs.
pub(crate) fn serve(
    config: WorkerConfig,
    process: bool,
    on_connect: Option<&dyn Fn(&TcpStream)>,
) -> Result<(), String> {
    let secret = unhex(&config.secret).ok_or("bad secret in the worker configuration")?;
    let addr: SocketAddr = config
        .address
        .parse()
        .map_err(|e| format!("bad scheduler address {:?}: {e}", config.address))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("cannot reach the scheduler at {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    if let Some(f) = on_connect {
        f(&stream);
    }
    super::transport::handshake::join(&stream, &secret, config.worker, crate::build_id::current())?;

    let (out_tx, out_rx) = crossbeam_channel::unbounded::<Outgoing>();
    let link = super::forward::Link::new(
        out_tx.clone(),
        config.name.clone(),
        config.store_dir.clone(),
    );
    let writer = stream.try_clone().map_err(|e| e.to_string())?;
    let writer_link = link.clone();
    std::thread::Builder::new()
        .name("flowrun-worker-writer".into())
        .spawn(move || write_loop(writer, out_rx, &writer_link))
        .map_err(|e| e.to_string())?;
    if process {
        super::slots::install(out_tx.clone());
    }
    let logs = if process {
        ship_logs(out_tx.clone())
    } else {
        None
    };
    let capture = if process {
        install_panic_hook();
        match Capture::install(out_tx.clone()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("flowrun worker: output is not captured: {e}");
                None
            }
        }
    } else {
        None
    };
    let ex = Arc::new(Executors {
        link: link.clone(),
        store: WorkerStore::new(
            config.store_id,
            config.store_dir.clone(),
            config.worker,
            config.keep_bytes,
        ),
        queue: Queue {
            heap: Mutex::new((BinaryHeap::new(), false)),
            cond: Condvar::new(),
        },
        out: out_tx,
        capture,
        logs,
        nthreads: config.nthreads.max(1),
        threads: AtomicUsize::new(0),
        seceded: AtomicUsize::new(0),
    });
    for _ in 0..ex.nthreads {
        ex.spawn_if_needed();
    }
    let mut buf = Vec::new();
    let outcome = loop {
        match frame::read_frame::<ToWorker>(&mut stream, &mut buf, FRAME_LIMIT) {
            Ok(Some(batch)) => {
                let mut stop = false;
                for m in batch {
                    match m {
                        ToWorker::Run(tasks) => ex.queue.push(tasks),
                        ToWorker::Resolved(batch) => link.resolve(batch),
                        ToWorker::Slots(a) => super::slots::answer(a),
                        ToWorker::Shutdown => stop = true,
                        ToWorker::Cancel(ids) => {
                            for id in ex.queue.cancel(&ids) {
                                let _ = ex.out.send(Outgoing::Done(Completion {
                                    id,
                                    result: Err(WireError {
                                        panic: false,
                                        message: "cancelled before it started".into(),
                                        kind: Some(super::wire::WireKind::Cancelled),
                                    }),
                                    duration_us: 0,
                                }));
                            }
                        }
                    }
                }
                if stop {
                    break Ok(());
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("lost the scheduler: {e}")),
        }
    };
    ex.queue.close();
    link.fail_all("the worker lost its scheduler");
    super::slots::scheduler_gone();
    let _ = std::io::stdout().flush();
    outcome
}

/// Ships `tracing` events to the flow as log lines with their run's name
/// (see [`crate::log_shipping`]).
fn ship_logs(out: Sender<Outgoing>) -> Option<tracing::Dispatch> {
    crate::log_shipping::log_shipping(move |level, fields: EventFields| {
        // A RunLogger already wrote "Task run '...'"; keep the bare name.
        let run = fields
            .run
            .map(|r| {
                r.trim_start_matches("Task run '")
                    .trim_end_matches('\'')
                    .to_owned()
            })
            .or_else(flowrun_core::current_task_run_name);
        let _ = out.send(Outgoing::Log(LogLine {
            run,
            level,
            message: fields.message + &fields.rest,
        }));
    })
}

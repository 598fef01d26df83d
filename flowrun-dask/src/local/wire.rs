//! What the scheduler and its workers say to each other: batches of these
//! messages, one batch per frame (see `transport::frame`). Batching is what
//! keeps per-task overhead low.
//!
//! A connection starts with the handshake (`transport::handshake`, which
//! has its own messages); only an admitted worker's connection carries
//! these.

use serde::{Deserialize, Serialize};

/// Version of this message set; both sides must agree.
pub(super) const PROTOCOL: u32 = 1;

/// One task for a worker to run, as the worker reads it.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Assignment {
    pub id: u64,
    pub key: String,
    /// The task's name; the run's name is `<name>-<index>`.
    pub name: String,
    pub index: u64,
    /// The run's name when `task_run_name` gave it one.
    pub run_name: Option<String>,
    pub priority: i64,
    pub seq: u64,
    /// Each argument, inline or in the cluster's result store.
    pub args: Vec<super::store::Payload>,
    /// Set when the worker calls the task's hooks around the attempt.
    pub hooks: Option<flowrun_core::TaskHookCall>,
}

impl Assignment {
    /// The run's name, such as `shout-3` (formatted here, not by the
    /// scheduler, whose thread is the cluster's busiest).
    pub(super) fn run_name(&self) -> String {
        match &self.run_name {
            Some(name) => name.clone(),
            None => format!("{}-{}", self.name, self.index),
        }
    }
}

/// One task for a worker to run, as the scheduler sends it: the same fields
/// as [`Assignment`], sharing the argument bytes instead of copying them.
#[derive(Debug, Serialize)]
pub(super) struct AssignmentOut {
    pub id: u64,
    pub key: &'static str,
    pub name: std::sync::Arc<str>,
    pub index: u64,
    pub run_name: Option<std::sync::Arc<str>>,
    pub priority: i64,
    pub seq: u64,
    #[serde(serialize_with = "shared_args")]
    pub args: std::sync::Arc<[flowrun_core::ArgSlot]>,
    pub hooks: Option<flowrun_core::TaskHookCall>,
}

fn shared_args<S: serde::Serializer>(
    args: &std::sync::Arc<[flowrun_core::ArgSlot]>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    /// One argument, encoded as a [`super::store::Payload`].
    struct Arg<'a>(&'a bytes::Bytes);
    impl Serialize for Arg<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::store::Payload::serialize_bytes(self.0, s)
        }
    }
    let empty = bytes::Bytes::new();
    let mut seq = s.serialize_seq(Some(args.len()))?;
    for a in args.iter() {
        let bytes = match a {
            flowrun_core::ArgSlot::Bytes(b) => b,
            // Upstream values are resolved before a call reaches the cluster.
            flowrun_core::ArgSlot::Upstream(_) => &empty,
        };
        seq.serialize_element(&Arg(bytes))?;
    }
    seq.end()
}

/// Why a task failed, as it crosses the connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub panic: bool,
    pub message: String,
    /// Set for failures other than the task's own error or panic.
    pub kind: Option<WireKind>,
}

/// The kinds of failure besides a task's own error or panic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum WireKind {
    TimedOut,
    UpstreamFailed(String),
    Crashed,
    KilledWorker,
    Cancelled,
    Runner,
    ResultUnavailable,
}

impl WireError {
    pub(crate) fn from_task_error(e: &flowrun_core::TaskError) -> WireError {
        use flowrun_core::TaskErrorKind as K;
        let kind = match e.kind() {
            K::Error | K::Panic => None,
            K::TimedOut => Some(WireKind::TimedOut),
            K::UpstreamFailed { upstream } => Some(WireKind::UpstreamFailed(upstream.clone())),
            K::Crashed => Some(WireKind::Crashed),
            K::KilledWorker => Some(WireKind::KilledWorker),
            K::Cancelled => Some(WireKind::Cancelled),
            K::ResultUnavailable => Some(WireKind::ResultUnavailable),
            _ => Some(WireKind::Runner),
        };
        WireError {
            panic: *e.kind() == K::Panic,
            message: e.message().to_owned(),
            kind,
        }
    }

    pub(crate) fn into_task_error(self) -> flowrun_core::TaskError {
        use flowrun_core::TaskErrorKind as K;
        let kind = match self.kind {
            None if self.panic => K::Panic,
            None => K::Error,
            Some(WireKind::TimedOut) => K::TimedOut,
            Some(WireKind::UpstreamFailed(upstream)) => K::UpstreamFailed { upstream },
            Some(WireKind::Crashed) => K::Crashed,
            Some(WireKind::KilledWorker) => K::KilledWorker,
            Some(WireKind::Cancelled) => K::Cancelled,
            Some(WireKind::Runner) => K::Runner,
            Some(WireKind::ResultUnavailable) => K::ResultUnavailable,
        };
        flowrun_core::TaskError::new(kind, self.message)
    }
}

/// A task a task running on a worker submits to the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Submission {
    /// The worker's id for it.
    pub id: u64,
    pub key: String,
    pub args: Vec<serde_bytes::ByteBuf>,
    pub priority: Option<i64>,
    pub resources: Option<Vec<(String, f64)>>,
}

/// A task a worker started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Start {
    pub id: u64,
    /// Which of the worker's executor threads runs it.
    pub thread: u32,
    /// Microseconds since the epoch (workers share the flow's clock).
    pub at_us: u64,
}

/// A finished task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Completion {
    pub id: u64,
    /// The encoded result, inline or in the cluster's result store.
    pub result: Result<super::store::Payload, WireError>,
    pub duration_us: u64,
}

/// A line a task printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutputLine {
    /// The runs executing when it was printed.
    pub runs: Vec<String>,
    pub stderr: bool,
    pub line: String,
}

/// A log event a task emitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LogLine {
    pub run: Option<String>,
    /// 0 error, 1 warn, 2 info, 3 debug, 4 trace.
    pub level: u8,
    pub message: String,
}

/// What the flow's side sends to a worker.
pub(super) type ToWorkerOut = ToWorker<AssignmentOut>;

/// Scheduler to worker. `A` is [`AssignmentOut`] on the sending side and
/// [`Assignment`] on the receiving side; both encode the same.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ToWorker<A = Assignment> {
    Run(Vec<A>),
    /// Outcomes of submissions this worker made: a large result by
    /// reference to the cluster's result store, as any other.
    Resolved(Vec<(u64, Result<super::store::Payload, WireError>)>),
    Shutdown,
    /// Drop these tasks if they have not started; each dropped one is
    /// answered with a `Cancelled` completion.
    Cancel(Vec<u64>),
    /// The answer to a request for concurrency slots (see `slots`).
    Slots(super::slots::SlotAnswer),
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ToScheduler {
    Started(Vec<Start>),
    Done(Vec<Completion>),
    Output(Vec<OutputLine>),
    Log(Vec<LogLine>),
    /// A task blocks waiting for other runs: its slot is free meanwhile.
    Secede(u64),
    /// The task stopped waiting and takes a slot again.
    Rejoin(u64),
    /// Tasks a task submitted to the cluster.
    Submit(Vec<Submission>),
    /// Submissions whose failures the submitting task read (handled).
    Handled(Vec<u64>),
    /// Task code takes or gives back concurrency slots (see `slots`).
    Slots(super::slots::SlotAsk),
    /// Submissions of a task that finished: their results, which the
    /// worker read by reference, may be freed.
    Released(Vec<u64>),
    /// A flow run that task `0` called on the worker started or ended; the
    /// flow links it to the task's run.
    Subflow(u64, Box<flowrun_core::SubflowReport>),
}

//! What the scheduler and its workers say to each other, and how: each
//! frame is a little-endian `u32` length then a postcard-encoded batch of
//! messages. Batching is what keeps per-task overhead low.
//!
//! A connection starts with the scheduler's [`ToWorker::Challenge`]. The
//! worker proves it holds the cluster's secret with a keyed hash of the
//! challenge; anything else closes the connection.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Version of this message set; both sides must agree.
pub const PROTOCOL: u32 = 1;

/// Refuse frames larger than this (a corrupt length must not allocate GBs).
pub const MAX_FRAME: usize = 1 << 30;

/// One task for a worker to run, as the worker reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct Assignment {
    pub id: u64,
    pub key: String,
    /// The task's name; the run's name is `<name>-<index>`.
    pub name: String,
    pub index: u64,
    pub priority: i64,
    pub seq: u64,
    /// Each argument, inline or in the cluster's result store.
    pub args: Vec<super::store::Payload>,
}

impl Assignment {
    /// The run's name, such as `shout-3` (formatted here, not by the
    /// scheduler, whose thread is the cluster's busiest).
    pub fn run_name(&self) -> String {
        format!("{}-{}", self.name, self.index)
    }
}

/// One task for a worker to run, as the scheduler sends it: the same fields
/// as [`Assignment`], sharing the argument bytes instead of copying them.
#[derive(Debug, Serialize)]
pub struct AssignmentOut {
    pub id: u64,
    pub key: &'static str,
    pub name: std::sync::Arc<str>,
    pub index: u64,
    pub priority: i64,
    pub seq: u64,
    #[serde(serialize_with = "shared_args")]
    pub args: std::sync::Arc<[flowrun_core::ArgSlot]>,
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
pub struct WireError {
    pub panic: bool,
    pub message: String,
    /// Set for failures other than the task's own error or panic.
    pub kind: Option<WireKind>,
}

/// The kinds of failure besides a task's own error or panic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireKind {
    TimedOut,
    UpstreamFailed(String),
    Crashed,
    KilledWorker,
    Cancelled,
    Runner,
    ResultUnavailable,
}

impl WireError {
    pub fn from_task_error(e: &flowrun_core::TaskError) -> WireError {
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

    pub fn into_task_error(self) -> flowrun_core::TaskError {
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
pub struct Submission {
    /// The worker's id for it.
    pub id: u64,
    pub key: String,
    pub args: Vec<serde_bytes::ByteBuf>,
    pub priority: Option<i64>,
    pub resources: Option<Vec<(String, f64)>>,
}

/// A task a worker started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Start {
    pub id: u64,
    /// Which of the worker's executor threads runs it.
    pub thread: u32,
    /// Microseconds since the epoch (workers share the flow's clock).
    pub at_us: u64,
}

/// A finished task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion {
    pub id: u64,
    /// The encoded result, inline or in the cluster's result store.
    pub result: Result<super::store::Payload, WireError>,
    pub duration_us: u64,
}

/// A line a task printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputLine {
    /// The runs executing when it was printed.
    pub runs: Vec<String>,
    pub stderr: bool,
    pub line: String,
}

/// A log event a task emitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub run: Option<String>,
    /// 0 error, 1 warn, 2 info, 3 debug, 4 trace.
    pub level: u8,
    pub message: String,
}

/// What the flow's side sends to a worker.
pub type ToWorkerOut = ToWorker<AssignmentOut>;

/// Scheduler to worker. `A` is [`AssignmentOut`] on the sending side and
/// [`Assignment`] on the receiving side; both encode the same.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker<A = Assignment> {
    Challenge {
        nonce: [u8; 32],
        build: String,
        protocol: u32,
    },
    Welcome,
    Rejected {
        reason: String,
    },
    Run(Vec<A>),
    /// Outcomes of submissions this worker made.
    Resolved(Vec<(u64, Result<serde_bytes::ByteBuf, WireError>)>),
    Shutdown,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ToScheduler {
    Hello {
        worker: u32,
        pid: u32,
        build: String,
        protocol: u32,
        proof: [u8; 32],
    },
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
}

/// The keyed hash a worker answers a challenge with.
pub fn proof(secret: &[u8; 32], nonce: &[u8; 32], worker: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"flowrun-worker-v1");
    h.update(nonce);
    h.update(&worker.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Compares proofs without leaking where they differ through timing.
pub fn proof_matches(a: &[u8; 32], b: &[u8; 32]) -> bool {
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

/// Writes one frame holding `batch`.
pub fn write_frame<T: Serialize>(
    w: &mut impl Write,
    batch: &[T],
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    let encoded = postcard::to_extend(batch, std::mem::take(buf))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    *buf = encoded;
    let len = u32::try_from(buf.len() - 4)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    w.write_all(buf)
}

/// Reads one frame. `Ok(None)` at a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Vec<T>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is larger than the limit"),
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf)?;
    postcard::from_bytes(buf).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("undecodable frame: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_batches() {
        let batch = vec![
            ToScheduler::Started(vec![Start {
                id: 1,
                thread: 0,
                at_us: 5,
            }]),
            ToScheduler::Done(vec![Completion {
                id: 1,
                result: Ok(super::super::store::Payload::Inline(
                    serde_bytes::ByteBuf::from(vec![7u8; 100]),
                )),
                duration_us: 5,
            }]),
        ];
        let mut wire = Vec::new();
        let mut buf = Vec::new();
        write_frame(&mut wire, &batch, &mut buf).unwrap();
        write_frame(&mut wire, &batch, &mut buf).unwrap();
        let mut r = &wire[..];
        for _ in 0..2 {
            let got: Vec<ToScheduler> = read_frame(&mut r, &mut buf).unwrap().unwrap();
            assert_eq!(got.len(), 2);
        }
        assert!(read_frame::<ToScheduler>(&mut r, &mut buf)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_huge_length_is_refused_without_allocating() {
        let wire = u32::MAX.to_le_bytes();
        let mut buf = Vec::new();
        assert!(read_frame::<ToWorker>(&mut &wire[..], &mut buf).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut wire = 5u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[0xff; 5]);
        let mut buf = Vec::new();
        assert!(read_frame::<ToWorker>(&mut &wire[..], &mut buf).is_err());
    }

    #[test]
    fn proofs_depend_on_secret_nonce_and_worker() {
        let s = [1u8; 32];
        let n = [2u8; 32];
        let p = proof(&s, &n, 0);
        assert!(proof_matches(&p, &proof(&s, &n, 0)));
        assert!(!proof_matches(&p, &proof(&[3u8; 32], &n, 0)));
        assert!(!proof_matches(&p, &proof(&s, &[4u8; 32], 0)));
        assert!(!proof_matches(&p, &proof(&s, &n, 1)));
    }
}

//! What crosses between the flow, the Python shim on a Dask worker and
//! the task-mode process: the task's input, its result, its failure.
//!
//! * Input (the child's stdin): the shim writes every stdin part as a
//!   little-endian u64 length and the bytes, because parts that are
//!   dependencies only get their length on the worker. Part 0 is a
//!   [`TaskHeader`]; the others are the arguments, each a result frame
//!   (literal arguments are framed like results, so that both kinds look
//!   alike and each is checked).
//! * Result (the child's stdout, and so the Dask key's value):
//!   [`RESULT_MAGIC`] then the postcard bytes of the task's value. Anything
//!   a program printed to stdout before it reached task mode comes before
//!   the magic and is cut off by the shim.
//! * Failure: [`ERROR_MAGIC`] then a postcard [`Failure`] on stdout, and
//!   exit status [`FAILED_EXIT`].

use flowrun_core::{TaskError, TaskErrorKind};
use serde::{Deserialize, Serialize};

/// The environment variable that starts a program in task mode.
pub(crate) const TASK_ENV: &str = "FLOWRUN_DASK_TASK";

/// Set (with [`TASK_ENV`]) for a long-lived task process, which runs one
/// task per request until its input ends (see `task_mode::serve`).
pub(crate) const SERVE_ENV: &str = "FLOWRUN_DASK_SERVE";

/// Kinds of the messages a long-lived task process answers with: each is
/// the kind byte, a little-endian u64 length and the payload.
pub(crate) mod reply {
    /// The task waits for tasks it submitted: its worker thread may go.
    pub(crate) const SECEDE: u8 = b's';
    /// The task's tagged output lines.
    pub(crate) const OUTPUT: u8 = b'o';
    /// The result frame; ends the call.
    pub(crate) const RESULT: u8 = b'r';
    /// The failure frame; ends the call.
    pub(crate) const FAILURE: u8 = b'f';
    /// The path of a file holding the result frame (a large result); ends
    /// the call. The shim deletes the file.
    pub(crate) const RESULT_FILE: u8 = b'R';
    /// The result frame is in the spare file the request offered (see
    /// [`SPARE_FILE`](super::SPARE_FILE)); the payload names this write,
    /// as a [`RESULT_FILE`]'s file name does. Ends the call.
    pub(crate) const RESULT_IN_SPARE: u8 = b'U';
    /// (Empty.) The task has a large result and its request offered no
    /// spare file: the shim answers on the request pipe with a u64
    /// length and the path of a result file freed while the task ran
    /// (empty: none), which the result may go over as over an offered one.
    pub(crate) const ASK_SPARE: u8 = b'A';
}

/// The request length that offers, before the request itself, a freed
/// result file to write a large result over (a u64 length and its path,
/// `/proc/<worker>/fd/<n>`): overwriting pages costs less than faulting
/// in fresh ones. The task process may leave it unused.
pub(crate) const SPARE_FILE: u64 = u64::MAX - 1;

/// The request length that says the parts of a large request follow one
/// by one: a u64 count, then for each a [`part`] kind byte, a u64 length
/// and the payload.
pub(crate) const INPUT_IN_FILE: u64 = u64::MAX;

/// Kinds of the parts of a large request (see [`INPUT_IN_FILE`]). Large
/// values do not go through the pipe, which moves them in small pieces (a
/// process switch each, seconds per 100 MiB on a busy machine), but as
/// files in shared memory that the task process maps.
pub(crate) mod part {
    /// The payload is the part.
    pub(crate) const INLINE: u8 = b'i';
    /// The payload is the path of a file holding the part, written for
    /// this request; the task process deletes it.
    pub(crate) const FILE: u8 = b'f';
    /// The payload is the path of a result the worker holds in shared
    /// memory (`/proc/<worker>/fd/<n>`); it stays.
    pub(crate) const HELD: u8 = b'p';
    /// As [`HELD`], the payload being the name of the write that made the
    /// result (see `reply`), a NUL and the path: the task process that
    /// made it may still have the value, and take it without a read.
    pub(crate) const HELD_NAMED: u8 = b'n';
    /// The most parts a request has (a task's arguments and its header).
    pub(crate) const MOST: u64 = 1 << 20;
}

/// Results at least this large go through a file (see `reply`).
pub(crate) const LARGE: usize = 1 << 20;

/// The directory for large results of a long-lived task process.
pub(crate) const SHARED_ENV: &str = "FLOWRUN_DASK_SHARED_DIR";

/// Where the Python shim tells a task-mode process its scheduler's address.
pub(crate) const SCHEDULER_ENV: &str = "FLOWRUN_DASK_SCHEDULER";

/// Where the Python shim tells a task-mode process its worker's TLS
/// files (CA, certificate, key), for a `tls://` scheduler.
pub(crate) const TLS_ENV: [&str; 3] = [
    "FLOWRUN_DASK_TLS_CA",
    "FLOWRUN_DASK_TLS_CERT",
    "FLOWRUN_DASK_TLS_KEY",
];

/// The fd of the pipe on which a task-mode process asks its worker to
/// secede (see `task_mode::DaskTask::secede`).
pub(crate) const CONTROL_ENV: &str = "FLOWRUN_DASK_CONTROL_FD";

/// Starts every result a task-mode process writes.
pub(crate) const RESULT_MAGIC: &[u8] = b"\x7fflowrun-result-1\x00";

/// Starts the failure a task-mode process writes.
pub(crate) const ERROR_MAGIC: &[u8] = b"\x7fflowrun-error-1\x00";

/// The exit status of a task-mode process whose task failed.
pub(crate) const FAILED_EXIT: i32 = 3;

/// Bumped when the input layout changes.
pub(crate) const INPUT_VERSION: u32 = 3;

/// Part 0 of a task-mode process's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskHeader {
    pub version: u32,
    /// The flow's build id: the task-mode program must be the same build.
    pub build: String,
    /// The task's registry key.
    pub task_key: String,
    /// The task run's name, for log attribution.
    pub run_name: String,
    /// Set when the task-mode process calls the task's hooks (version 2).
    pub hooks: Option<flowrun_core::TaskHookCall>,
    /// The named concurrency limits of the task's flow run (version 3).
    pub limits: Vec<super::slots::LimitSpec>,
}

/// How a task failed in task mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FailureKind {
    Error,
    Panic,
    TimedOut,
    Runner,
}

/// A task's failure, as task mode reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub(crate) fn runner(message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Runner,
            message: message.into(),
        }
    }

    pub(crate) fn from_task_error(error: &TaskError) -> Failure {
        let kind = match error.kind() {
            TaskErrorKind::Panic => FailureKind::Panic,
            TaskErrorKind::TimedOut => FailureKind::TimedOut,
            TaskErrorKind::Runner => FailureKind::Runner,
            _ => FailureKind::Error,
        };
        Failure {
            kind,
            message: error.message().to_owned(),
        }
    }

    pub(crate) fn into_task_error(self) -> TaskError {
        let kind = match self.kind {
            FailureKind::Error => TaskErrorKind::Error,
            FailureKind::Panic => TaskErrorKind::Panic,
            FailureKind::TimedOut => TaskErrorKind::TimedOut,
            FailureKind::Runner => TaskErrorKind::Runner,
        };
        TaskError::new(kind, self.message)
    }
}

/// `RESULT_MAGIC + bytes`: a result, or a literal argument.
pub(crate) fn result_frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RESULT_MAGIC.len() + bytes.len());
    out.extend_from_slice(RESULT_MAGIC);
    out.extend_from_slice(bytes);
    out
}

/// The value inside a result frame.
pub(crate) fn strip_result(frame: &[u8]) -> Result<&[u8], String> {
    frame.strip_prefix(RESULT_MAGIC).ok_or_else(|| {
        format!(
            "expected a flowrun result, got {} bytes starting {:?}",
            frame.len(),
            String::from_utf8_lossy(&frame[..frame.len().min(40)])
        )
    })
}

/// `ERROR_MAGIC + postcard(failure)`.
pub(crate) fn error_frame(failure: &Failure) -> Vec<u8> {
    let mut out = ERROR_MAGIC.to_vec();
    // A struct of an enum and a String always serializes.
    out.extend(postcard::to_allocvec(failure).unwrap_or_default());
    out
}

/// The failure a task-mode process wrote to stdout, if it wrote one
/// (possibly after text the program printed before task mode).
pub(crate) fn parse_error(stdout: &[u8]) -> Option<Failure> {
    let at = find(stdout, ERROR_MAGIC)?;
    postcard::from_bytes(&stdout[at + ERROR_MAGIC.len()..]).ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits the shim's length-prefixed stdin into its parts.
pub(crate) fn split_input(data: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut parts = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<8>()
            .ok_or("the input ends inside a length prefix")?;
        let len = usize::try_from(u64::from_le_bytes(*len))
            .map_err(|_| "a part is longer than memory")?;
        if tail.len() < len {
            return Err(format!(
                "a part of {len} bytes is cut off after {} bytes",
                tail.len()
            ));
        }
        let (part, tail) = tail.split_at(len);
        parts.push(part);
        rest = tail;
    }
    Ok(parts)
}

/// The input the shim writes for these parts (its Python does the same).
#[cfg(test)]
pub(crate) fn join_input(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_parts_round_trip() {
        let parts: [&[u8]; 3] = [b"header", b"", b"\x00\xff"];
        let data = join_input(&parts);
        assert_eq!(split_input(&data).unwrap(), parts.to_vec());
        assert!(split_input(&data[..data.len() - 1]).is_err());
        assert!(split_input(&data[..3]).is_err());
        assert_eq!(split_input(b"").unwrap(), Vec::<&[u8]>::new());
    }

    #[test]
    fn results_and_failures_are_recognised_after_junk() {
        let frame = result_frame(b"value");
        assert_eq!(strip_result(&frame).unwrap(), b"value");
        assert!(strip_result(b"running 1 test\n").is_err());

        let failure = Failure {
            kind: FailureKind::Panic,
            message: "boom".into(),
        };
        let mut stdout = b"\nrunning 1 test\n".to_vec();
        stdout.extend(error_frame(&failure));
        assert_eq!(parse_error(&stdout), Some(failure.clone()));
        assert_eq!(parse_error(b"no frame here"), None);
        let error = failure.into_task_error();
        assert_eq!(error.kind(), &TaskErrorKind::Panic);
        assert_eq!(error.message(), "boom");
    }

    #[test]
    fn task_error_kinds_survive_the_trip() {
        for kind in [
            TaskErrorKind::Error,
            TaskErrorKind::Panic,
            TaskErrorKind::TimedOut,
            TaskErrorKind::Runner,
        ] {
            let error = TaskError::new(kind.clone(), "m");
            let back = Failure::from_task_error(&error).into_task_error();
            assert_eq!(back.kind(), &kind);
        }
    }
}

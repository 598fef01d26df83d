//! The handshake that opens every connection to the scheduler: the
//! scheduler sends a challenge; the worker answers with a keyed hash of it
//! (proof that it holds the cluster's secret), its id, PID and build; the
//! scheduler welcomes it or says why not.
//!
//! Until then the peer is a stranger: it may send one frame of at most
//! [`HELLO_LIMIT`] bytes, and the whole exchange must end within
//! [`HANDSHAKE_DEADLINE`].

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use flowrun_core::plumbing::lock;
use serde::{Deserialize, Serialize};

use super::frame::{self, HELLO_LIMIT, REPLY_LIMIT};
use crate::local::wire;

/// How long a new connection has to authenticate, all reads and writes
/// together.
pub(crate) const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// The keyed hash a worker answers a challenge with.
pub(crate) fn proof(secret: &[u8; 32], nonce: &[u8; 32], worker: u32) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(b"flowrun-worker-v1");
    h.update(nonce);
    h.update(&worker.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Compares proofs without leaking where they differ through timing.
pub(crate) fn proof_matches(a: &[u8; 32], b: &[u8; 32]) -> bool {
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

/// Fills `buf` from the kernel's CSPRNG. There is no fallback: a secret
/// or nonce that could be guessed would let any local process join.
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    fill_with(buf, |b| {
        // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
        unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) }
    })
}

fn fill_with(buf: &mut [u8], mut source: impl FnMut(&mut [u8]) -> isize) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = source(&mut buf[filled..]);
        if n > 0 {
            filled += n as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        if n < 0 && e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        let cause = if n < 0 {
            e.to_string()
        } else {
            "no bytes".to_owned()
        };
        return Err(io::Error::other(format!(
            "the kernel's random number generator (getrandom) failed: {cause}"
        )));
    }
    Ok(())
}

/// A new cluster secret.
pub(crate) fn new_secret() -> io::Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    random_bytes(&mut secret)?;
    Ok(secret)
}

/// Reads and writes that fail once the handshake's deadline passed.
pub(crate) struct Deadline<'a> {
    stream: &'a TcpStream,
    until: Instant,
}

impl<'a> Deadline<'a> {
    /// `stream`, until `until`.
    pub(crate) fn new(stream: &'a TcpStream, until: Instant) -> Deadline<'a> {
        Deadline { stream, until }
    }

    fn left(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(passed());
        }
        Ok(left)
    }
}

fn passed() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the handshake's deadline passed")
}

/// A socket timeout is the deadline passing.
fn timed_out<T>(r: io::Result<T>) -> io::Result<T> {
    r.map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => passed(),
        _ => e,
    })
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        timed_out((&mut &*self.stream).read(buf))
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        timed_out((&mut &*self.stream).write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The one message a stranger may send, and the only one the scheduler
/// decodes before authentication (the messages of `wire` come after it).
/// An enum of one variant: it encodes as variant 0 and the fields, as
/// workers of protocol 1 have always sent it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Hello {
    /// Who the worker is, and its proof that it holds the secret.
    Hello {
        worker: u32,
        pid: u32,
        build: String,
        protocol: u32,
        proof: [u8; 32],
    },
}

/// What the scheduler says during the handshake, and all a worker reads
/// until it is admitted. Its own type, apart from `wire::ToWorker`, so that
/// a worker of another build still reads the challenge and can say which
/// build it met.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Challenge {
        nonce: [u8; 32],
        build: String,
        protocol: u32,
    },
    Welcome,
    Rejected {
        reason: String,
    },
}

/// Who the scheduler admits, and what it checks them against.
pub(crate) struct Gate {
    pub secret: [u8; 32],
    pub build: String,
    /// Workers launched and not yet connected.
    pub expected: crate::local::scheduler::Expected,
}

/// A worker that authenticated.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub worker: u32,
    pub pid: u32,
}

/// Why a connection was refused; `worker` when it proved who it is.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub worker: Option<u32>,
    pub reason: String,
}

impl Refusal {
    fn new(worker: Option<u32>, reason: impl Into<String>) -> Refusal {
        Refusal {
            worker,
            reason: reason.into(),
        }
    }
}

/// Runs the scheduler's side of the handshake on `stream` within
/// `deadline`. On a refusal the peer is told why when it can still hear it.
pub(crate) fn admit(
    stream: &TcpStream,
    gate: &Gate,
    deadline: Instant,
) -> Result<Admitted, Refusal> {
    let mut io = Deadline::new(stream, deadline);
    let mut buf = Vec::new();
    let mut nonce = [0u8; 32];
    random_bytes(&mut nonce).map_err(|e| Refusal::new(None, e.to_string()))?;
    let challenge = Reply::Challenge {
        nonce,
        build: gate.build.clone(),
        protocol: wire::PROTOCOL,
    };
    frame::write_frame(&mut io, &[challenge], &mut buf, REPLY_LIMIT)
        .map_err(|e| Refusal::new(None, format!("it did not take the challenge: {e}")))?;
    let outcome = check(&mut io, gate, &nonce, &mut buf);
    match &outcome {
        Ok(_) => frame::write_frame(&mut io, &[Reply::Welcome], &mut buf, REPLY_LIMIT)
            .map_err(|e| Refusal::new(None, format!("it left during the handshake: {e}")))?,
        Err(refusal) => {
            let mut reason = refusal.reason.clone();
            // Within what a worker reads during the handshake.
            if reason.len() > REPLY_LIMIT / 2 {
                let mut end = REPLY_LIMIT / 2;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            let _ = frame::write_frame(
                &mut io,
                &[Reply::Rejected { reason }],
                &mut buf,
                REPLY_LIMIT,
            );
        }
    }
    outcome
}

fn check(
    io: &mut Deadline<'_>,
    gate: &Gate,
    nonce: &[u8; 32],
    buf: &mut Vec<u8>,
) -> Result<Admitted, Refusal> {
    let hello = frame::read_one::<Hello>(io, buf, HELLO_LIMIT);
    let Ok(Some(Hello::Hello {
        worker,
        pid,
        build,
        protocol,
        proof: given,
    })) = hello
    else {
        let why = match hello {
            Err(e) => format!(": {e}"),
            _ => String::new(),
        };
        return Err(Refusal::new(
            None,
            format!("it did not introduce itself as a worker{why}"),
        ));
    };
    if !proof_matches(&given, &proof(&gate.secret, nonce, worker)) {
        return Err(Refusal::new(None, "it does not hold the cluster's secret"));
    }
    if !lock(&gate.expected).remove(&worker) {
        return Err(Refusal::new(
            None,
            format!("worker {worker} is not expected"),
        ));
    }
    if protocol != wire::PROTOCOL {
        return Err(Refusal::new(
            Some(worker),
            format!(
                "the worker speaks protocol {protocol}, the scheduler {}",
                wire::PROTOCOL
            ),
        ));
    }
    if build != gate.build {
        return Err(Refusal::new(
            Some(worker),
            format!(
                "the worker program is a different build than the flow (worker build {build}, flow build {})",
                gate.build
            ),
        ));
    }
    Ok(Admitted { worker, pid })
}

/// Runs a worker's side of the handshake: answers the challenge and waits
/// for the welcome, within [`HANDSHAKE_DEADLINE`] (doubled: the scheduler
/// may be busy).
pub(crate) fn join(
    stream: &TcpStream,
    secret: &[u8; 32],
    worker: u32,
    own_build: &str,
) -> Result<(), String> {
    let mut io = Deadline::new(stream, Instant::now() + 2 * HANDSHAKE_DEADLINE);
    let mut buf = Vec::new();
    let first = frame::read_one::<Reply>(&mut io, &mut buf, REPLY_LIMIT)
        .map_err(|e| format!("no challenge from the scheduler: {e}"))?
        .ok_or("the scheduler closed the connection")?;
    let Reply::Challenge {
        nonce,
        build,
        protocol,
    } = first
    else {
        return Err("the scheduler did not start with a challenge".into());
    };
    if protocol != wire::PROTOCOL {
        return Err(format!(
            "the scheduler speaks protocol {protocol}, this worker {}",
            wire::PROTOCOL
        ));
    }
    let hello = Hello::Hello {
        worker,
        pid: std::process::id(),
        build: own_build.to_owned(),
        protocol: wire::PROTOCOL,
        proof: proof(secret, &nonce, worker),
    };
    frame::write_frame(&mut io, &[hello], &mut buf, HELLO_LIMIT).map_err(|e| e.to_string())?;
    let answer = frame::read_one::<Reply>(&mut io, &mut buf, REPLY_LIMIT)
        .map_err(|e| format!("no answer from the scheduler: {e}"))?
        .ok_or("the scheduler closed the connection")?;
    match answer {
        Reply::Welcome => {}
        Reply::Rejected { reason } => {
            return Err(format!("the scheduler refused this worker: {reason}"))
        }
        Reply::Challenge { .. } => return Err("unexpected answer from the scheduler".into()),
    }
    if build != own_build {
        return Err(format!(
            "this worker is build {own_build}, the flow is build {build}"
        ));
    }
    // Authenticated: the connection now waits as long as the work does.
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    stream.set_write_timeout(None).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_failing_random_source_is_an_error_not_a_weaker_secret() {
        let mut secret = [0u8; 32];
        let e = fill_with(&mut secret, |_| -1).unwrap_err();
        assert!(e.to_string().contains("getrandom"), "{e}");
        let e = fill_with(&mut secret, |_| 0).unwrap_err();
        assert!(e.to_string().contains("getrandom"), "{e}");
        assert_eq!(secret, [0u8; 32]);
    }

    #[test]
    fn short_reads_from_the_random_source_are_completed() {
        let mut secret = [0u8; 32];
        let mut next = 1u8;
        fill_with(&mut secret, |b| {
            b[0] = next;
            next += 1;
            1
        })
        .unwrap();
        assert_eq!(secret[31], 32);
        assert!(new_secret().unwrap() != new_secret().unwrap());
    }

    #[test]
    fn the_handshake_keeps_protocol_1_s_encoding_and_refuses_other_messages() {
        // A batch of one message: its length (1), the variant, the fields.
        let hello = Hello::Hello {
            worker: 3,
            pid: 42,
            build: "gnu-abc".into(),
            protocol: wire::PROTOCOL,
            proof: [9; 32],
        };
        let body = postcard::to_allocvec(&[hello][..]).unwrap();
        assert!(body.len() < HELLO_LIMIT);
        assert_eq!(body[..5], [1, 0, 3, 42, 7]);
        let Hello::Hello {
            worker, pid, build, ..
        } = frame::decode_one::<Hello>(&body).unwrap();
        assert_eq!((worker, pid, build.as_str()), (3, 42, "gnu-abc"));
        for (msg, variant) in [
            (
                Reply::Challenge {
                    nonce: [1; 32],
                    build: "b".into(),
                    protocol: 1,
                },
                0,
            ),
            (Reply::Welcome, 1),
            (
                Reply::Rejected {
                    reason: "no".into(),
                },
                2,
            ),
        ] {
            let body = postcard::to_allocvec(&[msg][..]).unwrap();
            assert_eq!(body[..2], [1, variant]);
            frame::decode_one::<Reply>(&body).unwrap();
        }
        // Any message of an admitted worker is refused before authentication.
        let body = postcard::to_allocvec(&[wire::ToScheduler::Handled(vec![1])][..]).unwrap();
        assert!(frame::decode_one::<Hello>(&body).is_err());
    }
}

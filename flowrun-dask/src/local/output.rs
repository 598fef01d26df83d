//! What tasks print in a worker process, forwarded to the flow with the
//! run that printed it.
//!
//! The worker points its stdout and stderr at pipes it reads itself. A line
//! is attributed to the runs executing when it is read; at the end of a task
//! that may have printed, the executor writes a barrier marker and waits
//! until the reader passed it, so a task's last lines are never attributed
//! to the task that runs next.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use flowrun_core::plumbing::{lock, wait_timeout};

use super::wire::OutputLine;
use super::worker::Outgoing;

const MARKER: &str = "\u{1e}\u{1e}flowrun-barrier ";

struct Stream {
    fd: RawFd,
    read_fd: RawFd,
    stderr: bool,
    bytes_seen: AtomicU64,
    busy: AtomicBool,
    next_marker: AtomicU64,
    acked: Mutex<u64>,
    acked_cond: Condvar,
}

/// Captured stdout and stderr of this process.
pub(crate) struct Capture {
    streams: [Arc<Stream>; 2],
    active: Arc<Mutex<Vec<String>>>,
}

/// What `task_started` saw, for `task_finished`.
pub(crate) struct Token {
    run: String,
    seen: [u64; 2],
}

impl Capture {
    /// Redirects fds 1 and 2 into pipes read by forwarding threads.
    pub(crate) fn install(out: Sender<Outgoing>) -> std::io::Result<Capture> {
        let active = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut streams = Vec::new();
        for (fd, stderr) in [(1, false), (2, true)] {
            let mut fds = [0; 2];
            // SAFETY: plain libc calls on fds this function owns.
            unsafe {
                if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::dup2(fds[1], fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fds[1]);
            }
            let stream = Arc::new(Stream {
                fd,
                read_fd: fds[0],
                stderr,
                bytes_seen: AtomicU64::new(0),
                busy: AtomicBool::new(false),
                next_marker: AtomicU64::new(0),
                acked: Mutex::new(0),
                acked_cond: Condvar::new(),
            });
            let reader = stream.clone();
            let out = out.clone();
            let active = active.clone();
            std::thread::Builder::new()
                .name(format!("flowrun-output-{fd}"))
                .spawn(move || read_loop(reader, out, active))?;
            streams.push(stream);
        }
        let [a, b]: [Arc<Stream>; 2] = streams
            .try_into()
            .map_err(|_| std::io::Error::other("two streams"))?;
        Ok(Capture {
            streams: [a, b],
            active,
        })
    }

    pub(crate) fn task_started(&self, run: &str) -> Token {
        lock(&self.active).push(run.to_owned());
        Token {
            run: run.to_owned(),
            seen: [
                self.streams[0].bytes_seen.load(Ordering::SeqCst),
                self.streams[1].bytes_seen.load(Ordering::SeqCst),
            ],
        }
    }

    pub(crate) fn task_finished(&self, token: Token) {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // Both pipes in one system call (a task's end used to take two).
        let unread = unread([self.streams[0].read_fd, self.streams[1].read_fd]);
        for (i, s) in self.streams.iter().enumerate() {
            // The order matters: the reader marks itself busy before it
            // reads and counts what it read before it is idle again. Empty
            // pipe, then idle reader, then an unchanged count means nothing
            // the task wrote is unread or still being handled; checked the
            // other way round, a read between the checks went unseen and a
            // task's last unterminated output went to the next task.
            let quiet = !unread[i]
                && !s.busy.load(Ordering::SeqCst)
                && s.bytes_seen.load(Ordering::SeqCst) == token.seen[i];
            if !quiet {
                barrier(s);
            }
        }
        let mut active = lock(&self.active);
        if let Some(pos) = active.iter().position(|r| *r == token.run) {
            active.swap_remove(pos);
        }
    }
}

/// Whether each pipe holds bytes not read yet (when in doubt, yes).
fn unread(fds: [RawFd; 2]) -> [bool; 2] {
    let mut polled = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `polled` holds two initialised pollfds; a zero timeout
    // returns at once.
    let n = unsafe { libc::poll(polled.as_mut_ptr(), 2, 0) };
    if n < 0 {
        return [true; 2];
    }
    polled.map(|p| p.revents != 0)
}

/// Writes a marker into the stream and waits until the reader passed it.
fn barrier(s: &Stream) {
    let seq = s.next_marker.fetch_add(1, Ordering::SeqCst) + 1;
    let text = format!("\n{MARKER}{seq}\n");
    let mut written = 0;
    while written < text.len() {
        // SAFETY: writing a buffer we own to an open fd.
        let n = unsafe {
            libc::write(
                s.fd,
                text.as_ptr().add(written) as *const libc::c_void,
                text.len() - written,
            )
        };
        if n <= 0 {
            return;
        }
        written += n as usize;
    }
    let mut acked = lock(&s.acked);
    while *acked < seq {
        let (guard, timed_out) = wait_timeout(&s.acked_cond, acked, Duration::from_secs(2));
        acked = guard;
        if timed_out {
            return;
        }
    }
}

fn read_loop(s: Arc<Stream>, out: Sender<Outgoing>, active: Arc<Mutex<Vec<String>>>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let mut pfd = libc::pollfd {
            fd: s.read_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one fd we own.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        s.busy.store(true, Ordering::SeqCst);
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::read(s.read_fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n <= 0 {
            s.busy.store(false, Ordering::SeqCst);
            return;
        }
        partial.extend_from_slice(&buf[..n as usize]);
        while let Some(pos) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if let Some(seq) = text.strip_prefix(MARKER) {
                if let Ok(seq) = seq.trim().parse::<u64>() {
                    let mut acked = lock(&s.acked);
                    *acked = (*acked).max(seq);
                    s.acked_cond.notify_all();
                }
                continue;
            }
            if text.is_empty() && partial.starts_with(MARKER.as_bytes()) {
                // The newline a barrier adds before its marker.
                continue;
            }
            let runs = lock(&active).clone();
            let _ = out.send(Outgoing::Output(OutputLine {
                runs,
                stderr: s.stderr,
                line: text,
            }));
        }
        s.bytes_seen.fetch_add(n as u64, Ordering::SeqCst);
        s.busy.store(false, Ordering::SeqCst);
    }
}

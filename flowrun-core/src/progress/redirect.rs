//! Routing the program's stderr (and stdout, when it shares the terminal)
//! through a pipe while a live display is shown, so every line the program
//! writes is printed above the display instead of through it.
//!
//! One pipe takes both streams: the terminal would interleave them in the
//! order they are written, and so does a single pipe.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

/// Prints a block of complete lines (without the last newline).
pub(super) type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// A private copy of the terminal stderr points at, for drawing on it while
/// fd 2 goes to the pipe.
pub(super) struct Terminal {
    fd: OwnedFd,
}

impl Terminal {
    pub(super) fn of_stderr() -> std::io::Result<Terminal> {
        Ok(Terminal { fd: dup(2)? })
    }

    /// A `console` terminal drawing on this copy.
    pub(super) fn term(&self) -> std::io::Result<console::Term> {
        let write = File::from(self.fd.try_clone()?);
        let read = File::from(self.fd.try_clone()?);
        Ok(console::Term::read_write_pair(read, write))
    }
}

/// fds 2 (and maybe 1) pointed at a pipe read by a forwarding thread.
pub(super) struct Redirect {
    saved: Vec<(RawFd, OwnedFd)>,
    write_end: OwnedFd,
    done: crossbeam_channel::Receiver<()>,
}

impl Redirect {
    pub(super) fn start(terminal: &Terminal, sink: Sink) -> std::io::Result<Redirect> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new fds into the array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 just created these fds; nothing else owns them.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut targets = vec![2];
        // Stdout elsewhere (a file, another terminal) cannot garble the
        // display: leave it alone.
        if same_terminal(1, terminal.fd.as_raw_fd()) {
            targets.push(1);
        }
        let (done_tx, done) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("flowrun-progress-output".into())
            .spawn(move || {
                forward(File::from(read_end), &*sink);
                let _ = done_tx.send(());
            })?;
        let _ = std::io::stdout().flush();
        let mut saved = Vec::new();
        for target in targets {
            let copy = dup(target)?;
            // SAFETY: points an fd of this process at the pipe; the copy
            // taken above restores it.
            if unsafe { libc::dup2(write_end.as_raw_fd(), target) } < 0 {
                let error = std::io::Error::last_os_error();
                restore(&mut saved);
                return Err(error);
            }
            saved.push((target, copy));
        }
        Ok(Redirect {
            saved,
            write_end,
            done,
        })
    }

    /// Points the fds back at the terminal and waits (briefly) until the
    /// forwarding thread printed what was written before.
    pub(super) fn stop(mut self) {
        let _ = std::io::stdout().flush();
        restore(&mut self.saved);
        drop(self.write_end);
        // A child process that inherited the pipe may keep it open: its
        // later lines are still forwarded, by the detached thread.
        let _ = self.done.recv_timeout(Duration::from_secs(1));
    }
}

fn restore(saved: &mut Vec<(RawFd, OwnedFd)>) {
    for (target, copy) in saved.drain(..) {
        // SAFETY: points the fd back at what it was before `start`.
        unsafe {
            libc::dup2(copy.as_raw_fd(), target);
        }
    }
}

fn dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd (or -1) that we then own.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `copy` is a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Whether `fd` is a terminal and the same one as `terminal`.
fn same_terminal(fd: RawFd, terminal: RawFd) -> bool {
    let device = |fd: RawFd| {
        // SAFETY: isatty and fstat only read the fd's metadata into `st`.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut st: libc::stat = std::mem::zeroed();
            (libc::fstat(fd, &mut st) == 0).then_some(st.st_rdev)
        }
    };
    matches!((device(fd), device(terminal)), (Some(a), Some(b)) if a == b)
}

/// Prints what arrives on the pipe, complete lines at a time (a burst of
/// lines as one block, so the display is redrawn once for it).
fn forward(mut pipe: File, sink: &(dyn Fn(&str) + Send + Sync)) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
            let rest = pending.split_off(end + 1);
            pending.truncate(end);
            sink(&String::from_utf8_lossy(&pending));
            pending = rest;
        }
    }
    if !pending.is_empty() {
        sink(&String::from_utf8_lossy(&pending));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn forwards_complete_lines_in_blocks_and_the_rest_at_the_end() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe succeeded, so both descriptors are open and owned here.
        let (r, mut w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        w.write_all(b"one\ntwo\nthr").unwrap();
        drop(w);
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let s = seen.clone();
        forward(r, &move |text: &str| {
            s.lock().unwrap().push(text.to_owned())
        });
        assert_eq!(*seen.lock().unwrap(), ["one\ntwo", "thr"]);
    }
}

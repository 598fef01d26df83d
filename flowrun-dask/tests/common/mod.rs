//! Helpers shared by the tests that start local clusters.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A fresh path under the system temp dir, unique to this test process and
/// `name`. Only computes the path: worker processes re-run the test up to
/// its first flow call, so a test must not create anything before that.
pub(crate) fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("flowrun-test-{}-{name}", std::process::id()))
}

/// Whether a process with this PID exists and is not a zombie.
pub(crate) fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `cond` holds, up to `limit`.
pub(crate) fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Microseconds since the epoch (comparable across processes).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Appends a line to a file (atomic for short lines with O_APPEND).
pub(crate) fn append(path: &str, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

pub(crate) fn lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every console line flowrun writes in this test process, in order, as
/// its console layer formats them (installed on first use).
pub(crate) fn console_lines() -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    use tracing_subscriber::prelude::*;
    static LINES: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    LINES
        .get_or_init(|| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            tracing_subscriber::registry()
                .with(
                    flowrun::logging::ConsoleLayer::new(false)
                        .with_sink(move |l| sink.lock().unwrap().push(l.to_owned())),
                )
                .init();
            lines
        })
        .clone()
}

/// The kB of a line of /proc/self/status.
pub(crate) fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

//! How to start this program again so that it reaches its first flow call,
//! where flowrun diverts it into worker or task mode: local worker
//! processes and task-mode processes on Dask workers both start it this way.
//!
//! It runs with the same arguments. Inside a `cargo test` binary the program
//! is the test harness: it runs only the current test (`--exact <name>`,
//! ignored or not),
//! whose flow call diverts it the same way. The current test is the calling
//! thread's name when that names a test; from a thread the test started
//! (named or not, a tokio worker, `spawn_blocking`), it is the test whose
//! harness thread is running, found through the kernel's thread names.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// How to start this program again: program path and arguments.
pub(crate) fn worker_command(program: Option<&Path>) -> Result<(PathBuf, Vec<OsString>), String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
    let program = program
        .map(Path::to_path_buf)
        .unwrap_or_else(|| exe.clone());
    // A libtest harness lives in target/<profile>/deps and runs each test on
    // a thread named after it.
    let in_deps = exe
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "deps");
    let tests = if in_deps {
        current_tests(&program)
    } else {
        Vec::new()
    };
    let args = if tests.is_empty() {
        std::env::args_os().skip(1).collect()
    } else {
        tests
            .into_iter()
            .map(OsString::from)
            .chain(
                // `--include-ignored`: an `#[ignore]` test, run with
                // `-- --ignored`, is run by its workers too.
                [
                    "--exact",
                    "--include-ignored",
                    "--nocapture",
                    "--test-threads=1",
                    "-q",
                ]
                .into_iter()
                .map(OsString::from),
            )
            .collect()
    };
    Ok((program, args))
}

/// The test (or tests) of this harness the calling thread works for: its
/// own name when that is a test; else, for a thread a test started (a named
/// thread, a tokio worker, `spawn_blocking`), the tests whose threads are
/// running now, found by the names the kernel keeps for threads.
fn current_tests(program: &Path) -> Vec<String> {
    let thread = std::thread::current();
    let own = thread.name();
    // libtest runs no test on the main thread: this is a program with its
    // own `main` (`harness = false`), which gets its own arguments.
    if own == Some("main") {
        return Vec::new();
    }
    let Some(tests) = harness_tests(program) else {
        return Vec::new();
    };
    if let Some(own) = own {
        if tests.iter().any(|t| t == own) {
            return vec![own.to_owned()];
        }
    }
    let running = thread_comms();
    tests
        .iter()
        .filter(|t| running.iter().any(|c| comm_of(t) == c.as_slice()))
        .cloned()
        .collect()
}

/// A thread's name as the kernel keeps it: its first 15 bytes.
fn comm_of(name: &str) -> &[u8] {
    &name.as_bytes()[..name.len().min(15)]
}

/// The kernel's names of this process's threads.
fn thread_comms() -> Vec<Vec<u8>> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read(e.ok()?.path().join("comm")).ok())
        .map(|mut c| {
            if c.last() == Some(&b'\n') {
                c.pop();
            }
            c
        })
        .collect()
}

/// The tests of the harness `program`, as `--list` prints them (asked once
/// per process). A program with its own `main` that reads `--list` as an
/// argument of its own diverts into worker mode at its first flow call
/// instead, and exits at once on its empty stdin.
fn harness_tests(program: &Path) -> Option<&'static [String]> {
    static TESTS: std::sync::OnceLock<Option<Vec<String>>> = std::sync::OnceLock::new();
    TESTS
        .get_or_init(|| {
            let out = std::process::Command::new(program)
                .args(["--list", "--format", "terse"])
                .env(crate::local::worker::WORKER_ENV, "1")
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            let text = String::from_utf8(out.stdout).ok()?;
            Some(
                text.lines()
                    .filter_map(|l| l.strip_suffix(": test"))
                    .map(str::to_owned)
                    .collect(),
            )
        })
        .as_deref()
}

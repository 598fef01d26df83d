//! How to start this program again so that it reaches its first flow call,
//! where flowrun diverts it into worker or task mode: local worker
//! processes and task-mode processes on Dask workers both start it this way.
//!
//! It runs with the same arguments. Inside a `cargo test` binary the program
//! is the test harness: it runs only the current test (`--exact <name>`),
//! whose flow call diverts it the same way.

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
    let thread = std::thread::current();
    let test = thread.name().filter(|n| *n != "main");
    let args = match (in_deps, test) {
        (true, Some(test)) => vec![
            OsString::from(test),
            "--exact".into(),
            "--nocapture".into(),
            "--test-threads=1".into(),
            "-q".into(),
        ],
        _ => std::env::args_os().skip(1).collect(),
    };
    Ok((program, args))
}

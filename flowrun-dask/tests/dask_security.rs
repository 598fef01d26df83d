//! Only the cluster's own worker processes can join: a process without the
//! secret is refused, and so is a worker program of another build.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use flowrun::{flow, task, TaskErrorKind};
use flowrun_dask::{current_cluster, ClusterKwargs, DaskTaskRunner};

#[task]
fn add(a: u32, b: u32) -> u32 {
    a + b
}

#[test]
fn the_scheduler_listens_on_loopback_and_refuses_a_process_without_the_secret() {
    #[flow(task_runner = DaskTaskRunner::default())]
    fn intruded() -> (String, bool, u32) {
        let address = current_cluster().unwrap().status().unwrap().address;
        let mut intruder = TcpStream::connect(&address).unwrap();
        intruder
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Read the challenge, then answer with a made-up worker hello.
        let mut len = [0u8; 4];
        intruder.read_exact(&mut len).unwrap();
        let mut challenge = vec![0u8; u32::from_le_bytes(len) as usize];
        intruder.read_exact(&mut challenge).unwrap();
        let forged = [1u8, 0, 0, 7, 7, 0, 1, 0xff, 0xff];
        intruder
            .write_all(&(forged.len() as u32).to_le_bytes())
            .unwrap();
        intruder.write_all(&forged).unwrap();
        // The scheduler answers with a refusal and closes the connection.
        let mut rest = Vec::new();
        let closed = intruder.read_to_end(&mut rest).is_ok();
        let still_works = add.submit(2, 3).result().unwrap();
        (address, closed, still_works)
    }
    let (address, closed, sum) = intruded().unwrap();
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    assert!(closed, "the connection must be closed");
    assert_eq!(sum, 5);
}

/// A copy of this test binary with its build id changed: a different build
/// that still runs, and the guard that deletes it whatever the test's
/// outcome. A worker process runs the test up to the flow call too: there
/// it makes nothing and owns nothing, the path is its flow process's copy.
fn other_build() -> (std::path::PathBuf, Option<tempfile::TempPath>) {
    if flowrun::worker::is_worker() {
        let flow = std::os::unix::process::parent_id();
        let path = std::env::temp_dir().join(format!("flowrun-test-{flow}-other-build"));
        return (path, None);
    }
    let exe = std::env::current_exe().unwrap();
    let mut bytes = std::fs::read(&exe).unwrap();
    let id = flowrun_dask::build_id();
    let hex = id
        .strip_prefix("gnu-")
        .expect("the test binary carries a GNU build id");
    let raw: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let at = bytes.windows(raw.len()).position(|w| w == raw).unwrap();
    for b in &mut bytes[at..at + raw.len()] {
        *b = !*b;
    }
    let copy = common::scratch("other-build");
    std::fs::write(&copy, &bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    (copy.clone(), tempfile::TempPath::try_from_path(copy).ok())
}

#[test]
fn a_worker_program_of_another_build_is_refused_with_a_clear_error() {
    #[flow]
    fn with_other_build() -> (TaskErrorKind, String) {
        let e = add.submit(1, 1).result().unwrap_err();
        (e.kind().clone(), e.message().to_owned())
    }
    let (copy, _delete) = other_build();
    let runner = DaskTaskRunner::new()
        .cluster_kwargs(ClusterKwargs::new().n_workers(1).worker_program(&copy));
    let (kind, message) = with_other_build.with_runner(runner).call().unwrap();
    assert_eq!(kind, TaskErrorKind::Crashed);
    assert!(
        message.contains("different build than the flow"),
        "{message}"
    );
}

//! Large values passing a chain on a real Dask cluster (a scheduler and
//! stock Python workers from PyPI, through `flowrun-dask/tests/support`):
//! the next link in the same task process takes the value itself rather
//! than reading it back, freed result files are overwritten rather than
//! new shared memory faulted in, and neither ever costs a value: values
//! still held stay intact, and a task process that dies after taking a
//! value leaves it for the retry.
//!
//! As in `dask_real.rs`, the Dask workers run this test binary in task
//! mode, as the current test; every test begins with [`begin`], which
//! diverts such a process before the test starts a cluster of its own. What
//! happened inside the task process is measured by the tasks themselves
//! (`/proc/self/io`, their worker's fds) or by the kernel (inotify), never
//! from flowrun's own report. A missing Dask install fails the tests;
//! nothing is skipped.

mod common;
mod support;
mod tasks;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use flowrun::{flow, task};
use flowrun_dask::DaskTaskRunner;
use support::{begin, runner, Cluster, WorkerSpec};
use tasks::{ones, plus_one};

/// What the last link saw: whether every byte is `expect`, the bytes its
/// task process has read through `read` calls so far, and its pid.
#[task]
fn inspect(x: Vec<u8>, expect: u8) -> (bool, u64, u32) {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    let rchar = io
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    (x.iter().all(|&b| b == expect), rchar, std::process::id())
}

/// `ones`, then `links` of `plus_one`, each taking the one before; every
/// `hold`-th link's future is kept (0: none) and read at the end, each of
/// them checked against the value it must have.
#[flow(task_runner = DaskTaskRunner::new())]
fn bumped(mb: usize, links: u8, hold: u8) -> ((bool, u64, u32), Vec<bool>) {
    let mut last = ones.submit(mb);
    let mut held = Vec::new();
    for link in 1..=links {
        last = plus_one.submit(last);
        if hold > 0 && link % hold == 0 {
            held.push((link, last.clone()));
        }
    }
    let seen = inspect.submit(last, 1 + links).result().unwrap();
    let intact = held
        .into_iter()
        .map(|(link, f)| f.result().unwrap().iter().all(|&b| b == 1 + link))
        .collect();
    (seen, intact)
}

/// Watches /dev/shm for the result files task processes create.
struct Creations(OwnedFd);

impl Creations {
    fn watch() -> Creations {
        // SAFETY: inotify_init1 has no preconditions; the fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(fd.as_raw_fd(), c"/dev/shm".as_ptr(), libc::IN_CREATE)
        };
        assert!(wd >= 0, "inotify: {}", std::io::Error::last_os_error());
        Creations(fd)
    }

    /// How many result files the task process `pid` created since the
    /// last look.
    fn results_of(&self, pid: u32) -> usize {
        let prefix = format!("flowrun-result-{pid}-");
        self.names()
            .iter()
            .filter(|n| n.starts_with(&prefix))
            .count()
    }

    /// The names of the files created since the last call.
    fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: reads into a buffer we own, of its length.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return names;
            }
            let mut at = 0;
            while at + 16 <= n as usize {
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let name = &buf[at + 16..at + 16 + len];
                let end = name.iter().position(|&b| b == 0).unwrap_or(len);
                names.push(String::from_utf8_lossy(&name[..end]).into_owned());
                at += 16 + len;
            }
        }
    }
}

#[test]
fn a_chain_in_one_task_process_takes_each_value_in_memory_and_overwrites_freed_files() {
    let _t =
        begin("a_chain_in_one_task_process_takes_each_value_in_memory_and_overwrites_freed_files");
    assert!(
        std::path::Path::new("/dev/shm").is_dir(),
        "this test needs /dev/shm"
    );
    // One worker, one thread: one task process runs every link.
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let (mb, links) = (32, 8);
    let creations = Creations::watch();
    let ((all_right, rchar, pid), _) = bumped
        .with_runner(runner(&cluster))
        .call(mb, links, 0)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(all_right, "the last link did not get the chain's value");
    // Nine values of 32 MiB passed through this process; each was taken
    // as it was kept from the link before, none read back from its file.
    assert!(
        rchar < (mb as u64) << 19,
        "the task process read {} MiB passing {mb} MiB values",
        rchar >> 20
    );
    // Nine large results were written; after the first few, over the
    // files of results Dask had released.
    let created = creations.results_of(pid);
    assert!(
        (1..=4).contains(&created),
        "{created} result files were created for {} results",
        links + 1
    );
}

#[test]
fn freed_files_are_reused_only_once_their_values_are_gone() {
    let _t = begin("freed_files_are_reused_only_once_their_values_are_gone");
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    // Every third link is held by the flow until the end, while the
    // others are released and their files written over by later links.
    let ((all_right, _, _), intact) = bumped
        .with_runner(runner(&cluster))
        .call(8, 12, 3)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(all_right);
    assert_eq!(intact, vec![true; 4], "a held value was overwritten");
}

/// Adds one, after ending its task process the first time it runs
/// (`marker` not there yet): the value it took goes with the process.
#[task(retries = 1)]
fn plus_one_once_dying(mut x: Vec<u8>, marker: String) -> Vec<u8> {
    if std::fs::File::create_new(&marker).is_ok() {
        std::process::exit(9);
    }
    for b in &mut x {
        *b = b.wrapping_add(1);
    }
    x
}

#[flow(task_runner = DaskTaskRunner::new())]
fn dying_link(mb: usize, marker: String) -> (bool, u64, u32) {
    let first = plus_one.submit(ones.submit(mb));
    let second = plus_one_once_dying.submit(first, marker);
    inspect.submit(second, 3).result().unwrap()
}

#[test]
fn a_task_process_that_dies_with_a_taken_value_leaves_it_for_the_retry() {
    let _t = begin("a_task_process_that_dies_with_a_taken_value_leaves_it_for_the_retry");
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let marker = common::scratch("dying-link");
    let _ = std::fs::remove_file(&marker);
    let (all_right, _, _) = dying_link
        .with_runner(runner(&cluster))
        .call(8, marker.display().to_string())
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(marker.exists(), "the first attempt did not run");
    assert!(all_right, "the retry did not get the value");
    let _ = std::fs::remove_file(&marker);
}

#[task]
fn tick(n: u64) -> u64 {
    n + 1
}

/// How many fds the worker running this task has open on result files
/// (held values and freed files kept for reuse).
#[task]
fn result_files_of_worker() -> usize {
    let worker = std::os::unix::process::parent_id();
    std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("flowrun-result"))
        .count()
}

/// A chain of large values, then small tasks one after another for
/// `busy_ms`; returns the worker's result files after the chain and at
/// the end.
#[flow(task_runner = DaskTaskRunner::new())]
fn chain_then_small_tasks(mb: usize, busy_ms: u64) -> (usize, usize) {
    let mut last = ones.submit(mb);
    for _ in 0..4 {
        last = plus_one.submit(last);
    }
    assert!(inspect.submit(last, 5).result().unwrap().0);
    let after_chain = result_files_of_worker.submit().result().unwrap();
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < std::time::Duration::from_millis(busy_ms) {
        n = tick.submit(n).result().unwrap();
    }
    (
        after_chain,
        result_files_of_worker.submit().result().unwrap(),
    )
}

#[test]
fn freed_files_offered_to_small_tasks_still_close_when_idle() {
    let _t = begin("freed_files_offered_to_small_tasks_still_close_when_idle");
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    // Each small task is offered a freed file it does not use; the files
    // still close 2 s after they were freed, not after they were offered.
    let (after_chain, at_end) = chain_then_small_tasks
        .with_runner(runner(&cluster))
        .call(8, 5_000)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(after_chain > 0, "the chain left no freed file to reuse");
    assert_eq!(at_end, 0, "freed files stayed open while small tasks ran");
}

/// `plus_one`, after a pause long enough for Dask to release the value
/// two links back while it runs.
#[task]
fn plus_one_slowly(mut x: Vec<u8>) -> Vec<u8> {
    std::thread::sleep(std::time::Duration::from_millis(400));
    for b in &mut x {
        *b = b.wrapping_add(1);
    }
    x
}

#[flow(task_runner = DaskTaskRunner::new())]
fn slowly_bumped(mb: usize, links: u8) -> (bool, u64, u32) {
    let mut last = ones.submit(mb);
    for _ in 0..links {
        last = plus_one_slowly.submit(last);
    }
    inspect.submit(last, 1 + links).result().unwrap()
}

#[test]
fn a_result_goes_over_a_file_freed_while_its_task_ran() {
    let _t = begin("a_result_goes_over_a_file_freed_while_its_task_ran");
    let cluster = Cluster::start(&[WorkerSpec::threads(1)]);
    let (mb, links) = (16, 5);
    let creations = Creations::watch();
    let (all_right, _, pid) = slowly_bumped
        .with_runner(runner(&cluster))
        .call(mb, links)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(all_right, "the last link did not get the chain's value");
    // When a link starts, the value two links back is not yet released
    // (that waits for the flow to hear of the link before); by the time
    // its result is ready it is, and the result goes over its file. Only
    // the first two results (the first is the second's input) need new
    // files.
    let created = creations.results_of(pid);
    assert_eq!(created, 2, "result files created for {} results", links + 1);
}

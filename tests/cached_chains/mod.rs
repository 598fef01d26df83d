//! The DAG of the resume experiment, shared by `tests/resume.rs` (which
//! checks that a killed flow resumes without re-executing completed tasks)
//! and `benches/cache.rs` (which measures it at 10,000 tasks): chains of
//! cached steps, each level waiting for the one before. A step notes its
//! execution as a line of a log file; its result file is named after its
//! run, so the completed steps are the file names in the storage folder.
//! Its includer has a `common` module with the workspace tests' helpers.
#![allow(dead_code)]

use std::path::Path;

use flowrun::{task, TaskFuture, TaskOptions};

#[task(
    cache_policy = INPUTS + TASK_SOURCE,
    task_run_name = "step-{chain}-{level}",
    result_storage_key = "{task_run.name}"
)]
pub(crate) fn step(log: String, chain: u64, level: u64, prev: u64, pause_ms: u64) -> u64 {
    crate::common::append(&log, &format!("step-{chain}-{level}"));
    std::thread::sleep(std::time::Duration::from_millis(pause_ms));
    prev + chain * 100 + level
}

/// Submits `chains` chains of `depth` steps with their results in
/// `storage`, each step pausing `pause_ms`; the last step of each chain.
pub(crate) fn submit_chains(
    storage: &Path,
    log: &str,
    chains: u64,
    depth: u64,
    pause_ms: u64,
) -> Vec<TaskFuture<u64>> {
    let opts = || TaskOptions::new().result_storage(storage);
    (0..chains)
        .map(|chain| {
            let mut prev = step
                .with_options(opts())
                .submit(log, chain, 0, 0u64, pause_ms);
            for level in 1..depth {
                prev = step
                    .with_options(opts())
                    .submit(log, chain, level, prev, pause_ms);
            }
            prev
        })
        .collect()
}

/// The sum of the last steps of `chains` chains of `depth` steps.
pub(crate) fn chains_total(chains: u64, depth: u64) -> u64 {
    (0..chains)
        .map(|c| (0..depth).map(|l| c * 100 + l).sum::<u64>())
        .sum()
}

/// The names of the runs whose result file exists in `storage`, sorted.
pub(crate) fn completed(storage: &Path) -> Vec<String> {
    crate::common::result_files(storage)
}

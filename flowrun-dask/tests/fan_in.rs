//! A fan-in on a local cluster: the reducer reads the upstream results
//! itself, so large values never pass through the flow's process. (Futures
//! inside collections on every runner: `scenarios.rs`.)

mod common;

use flowrun::{flow, task};

/// Large enough to dwarf what the flow allocates for itself.
const BIG: usize = 16 << 20;

#[task]
fn make(fill: u8) -> Vec<u8> {
    vec![fill; BIG]
}

#[task]
fn sizes(parts: Vec<Vec<u8>>) -> (usize, u64) {
    let bytes = parts.iter().map(Vec::len).sum();
    let sum = parts.iter().flatten().map(|&b| u64::from(b)).sum();
    (bytes, sum)
}

#[test]
fn a_fan_in_of_large_values_goes_to_the_reducer_not_through_the_flow() {
    #[flow(task_runner = common::local_cluster(2, 1))]
    fn fan_in() -> ((usize, u64), u64) {
        // The cluster is up once a first task ran.
        let _ = sizes.submit(Vec::<Vec<u8>>::new()).result().unwrap();
        // Reset this process's peak resident memory (VmHWM) to its current one.
        std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
        let start = common::status_kb("VmRSS:");
        let parts: Vec<_> = (1..=4u8).map(|b| make.submit(b)).collect();
        let got = sizes.submit(parts).result().unwrap();
        (got, common::status_kb("VmHWM:").saturating_sub(start))
    }
    let ((bytes, sum), peak_kb) = fan_in().unwrap();
    assert_eq!(bytes, 4 * BIG);
    assert_eq!(sum, (1 + 2 + 3 + 4) * BIG as u64);
    assert!(
        peak_kb * 1024 < BIG as u64 / 2,
        "the flow's peak memory rose by {} MiB while 4 x {} MiB values went to the reducer",
        peak_kb / 1024,
        BIG >> 20
    );
}

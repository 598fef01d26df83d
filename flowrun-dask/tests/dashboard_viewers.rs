//! Many pages on one dashboard at once, over plain HTTP (no browser): the
//! dashboard keeps streaming to every one of them while the flow runs.
//!
//! `FLOWRUN_TEST_VIEWERS_SECS` sets how long the 20 viewers watch (default
//! 8 s; the figure is 60).

mod common;

use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowrun::{flow, task};
use flowrun_dask::DaskTaskRunner;

const VIEWERS: usize = 20;

#[task]
fn short(i: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    i
}

/// What one viewer saw.
#[derive(Debug, Default)]
struct Seen {
    events: usize,
    /// Seconds after the start of each event.
    times: Vec<f64>,
    /// `/api/state` answers that were not 200.
    bad_states: usize,
    states: usize,
}

fn state_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = common::send_get(
        addr,
        "/api/state",
        "127.0.0.1",
        "Connection: close",
        Duration::from_secs(10),
    ) else {
        return false;
    };
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// Follows the event stream, and asks for the state now and then (each
/// such request may poll the cluster, beside the dashboard's own poller).
fn view(addr: SocketAddr, began: Instant, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut lines = common::event_stream(addr, Duration::from_millis(50));
    let mut next_state = Instant::now();
    let mut line = String::new();
    while !stop.load(Ordering::Acquire) {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {
                if line.starts_with("data:") {
                    seen.events += 1;
                    seen.times.push(began.elapsed().as_secs_f64());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        if Instant::now() >= next_state {
            seen.states += 1;
            if !state_ok(addr) {
                seen.bad_states += 1;
            }
            next_state = Instant::now() + Duration::from_millis(100);
        }
    }
    seen
}

#[flow(task_runner = DaskTaskRunner::new().cluster_kwargs(
    common::cluster_of(2, 2).dashboard_address("127.0.0.1:0")))]
fn watched_by_many(secs: u64) -> (Vec<Seen>, u64) {
    let link = flowrun_dask::dashboard_link().expect("the flow run's dashboard link");
    let addr = common::socket_of(&link);
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let viewers: Vec<_> = (0..VIEWERS)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || view(addr, began, stop))
        })
        .collect();
    // Bars keep coming while they watch.
    let mut total = 0;
    let mut i = 0;
    while began.elapsed() < Duration::from_secs(secs) {
        let batch: Vec<_> = (i..i + 20).map(|j| short.submit(j)).collect();
        total += flowrun::results(batch).unwrap().len() as u64;
        i += 20;
    }
    stop.store(true, Ordering::Release);
    let seen = viewers.into_iter().map(|v| v.join().unwrap()).collect();
    (seen, total)
}

#[test]
fn twenty_viewers_keep_getting_updates_while_the_flow_runs() {
    let secs: u64 = std::env::var("FLOWRUN_TEST_VIEWERS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let (seen, total) = watched_by_many(secs).unwrap();
    assert!(total > 0);
    for (i, s) in seen.iter().enumerate() {
        // A poll every 300 ms: at least one event per 2 s all along, and
        // one in the last 2 s (a frozen page stops getting them).
        assert!(
            s.events as u64 >= secs / 2,
            "viewer {i} got {} events in {secs} s",
            s.events
        );
        let last = s.times.last().copied().unwrap_or(0.0);
        assert!(
            last >= secs as f64 - 2.0,
            "viewer {i}'s last event came at {last:.1} s of {secs}"
        );
        let gaps = s.times.windows(2).map(|w| w[1] - w[0]);
        let worst = gaps.fold(0.0f64, f64::max);
        assert!(worst < 3.0, "viewer {i} waited {worst:.1} s for an event");
        assert_eq!(s.bad_states, 0, "viewer {i}: {s:?}");
        assert!(s.states > 0);
    }
}

//! The scheduler's listener: accepts connections, authenticates them
//! (at most [`MAX_HANDSHAKES`] at a time), then carries each worker's
//! frames to and from the scheduler through its event channel.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use flowrun_core::plumbing::{lock, wait_timeout};

use super::frame::{self, Oversized, FRAME_LIMIT};
use super::handshake::{self, Gate, HANDSHAKE_DEADLINE};
use crate::local::wire::{Completion, ToScheduler, ToWorker, ToWorkerOut, WireError};
use crate::local::Event;

/// How many connections may be in their handshake at once; the next one
/// waits in the listen backlog until one ends (by the deadline at worst).
pub(crate) const MAX_HANDSHAKES: usize = 32;

/// How often a refused stranger (a connection that never proved it is a
/// worker) reaches the log; the ones in between are counted.
const STRANGER_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps a flood of strangers from flooding the flow's log.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    quiet: u64,
}

impl Throttle {
    /// `Some(n)` when this refusal is to be reported, `n` being how many
    /// were left out since the last report.
    fn report(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < STRANGER_REPORT_INTERVAL)
        {
            self.quiet += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.quiet))
    }
}

/// Counts connections in their handshake.
#[derive(Default)]
struct Slots {
    busy: Mutex<usize>,
    freed: Condvar,
}

struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        *lock(&self.0.busy) -= 1;
        self.0.freed.notify_one();
    }
}

impl Slots {
    /// Waits for a free slot; `None` once `closed`.
    fn take(self: &Arc<Self>, closed: &AtomicBool) -> Option<Slot> {
        let mut busy = lock(&self.busy);
        while *busy >= MAX_HANDSHAKES {
            if closed.load(Ordering::Acquire) {
                return None;
            }
            busy = wait_timeout(&self.freed, busy, Duration::from_millis(100)).0;
        }
        *busy += 1;
        Some(Slot(self.clone()))
    }
}

/// Starts the listener's thread. It stops when `closed` is set and the
/// listening socket is shut down (which wakes `accept`).
pub(crate) fn spawn(
    listener: TcpListener,
    gate: Gate,
    events: Sender<Event>,
    closed: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("flowrun-acceptor".into())
        .spawn(move || accept_loop(listener, Arc::new(gate), events, closed))
        .map(drop)
}

fn accept_loop(
    listener: TcpListener,
    gate: Arc<Gate>,
    events: Sender<Event>,
    closed: Arc<AtomicBool>,
) {
    let slots = Arc::new(Slots::default());
    let throttle = Arc::new(Mutex::new(Throttle::default()));
    loop {
        let Some(slot) = slots.take(&closed) else {
            return;
        };
        let accepted = listener.accept();
        if closed.load(Ordering::Acquire) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or memory: wait rather than spin.
                tracing::debug!(target: "flowrun_dask::cluster", "accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let (gate, events, throttle) = (gate.clone(), events.clone(), throttle.clone());
        let _ = std::thread::Builder::new()
            .name("flowrun-handshake".into())
            .spawn(move || connection(stream, slot, &gate, &events, &throttle));
    }
}

/// One connection: its handshake (holding `slot`), then its read loop.
fn connection(
    stream: TcpStream,
    slot: Slot,
    gate: &Gate,
    events: &Sender<Event>,
    throttle: &Mutex<Throttle>,
) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let admitted = handshake::admit(&stream, gate, Instant::now() + HANDSHAKE_DEADLINE);
    drop(slot);
    let worker = match admitted {
        Ok(a) => a,
        Err(refusal) => {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            report_refusal(refusal, &peer, events, throttle);
            return;
        }
    };
    if stream.set_read_timeout(None).is_err() || stream.set_write_timeout(None).is_err() {
        return;
    }
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let (tx, rx) = crossbeam_channel::unbounded::<ToWorkerOut>();
    let id = worker.worker;
    let writer_events = events.clone();
    if std::thread::Builder::new()
        .name(format!("flowrun-worker-{id}-writer"))
        .spawn(move || write_loop(write_half, rx, id, &writer_events))
        .is_err()
    {
        return;
    }
    if events
        .send(Event::Connected {
            worker: id,
            pid: worker.pid,
            writer: tx,
        })
        .is_err()
    {
        return;
    }
    read_loop(stream, id, events);
}

/// Tells the scheduler (and so the flow's log) about a refusal; a
/// stranger's at most once a second, counting the others.
fn report_refusal(
    refusal: handshake::Refusal,
    peer: &str,
    events: &Sender<Event>,
    throttle: &Mutex<Throttle>,
) {
    let mut reason = format!("{} (from {peer})", refusal.reason);
    if refusal.worker.is_none() {
        let report = lock(throttle).report(Instant::now());
        match report {
            None => {
                tracing::debug!(target: "flowrun_dask::cluster", "Refused a connection to the cluster: {reason}");
                return;
            }
            Some(0) => {}
            Some(n) => reason.push_str(&format!(
                "; {n} more were refused since the last such warning"
            )),
        }
    }
    let _ = events.send(Event::Refused {
        worker: refusal.worker,
        reason,
    });
}

fn read_loop(mut stream: TcpStream, worker: u32, events: &Sender<Event>) {
    let mut buf = Vec::new();
    loop {
        match frame::read_frame::<ToScheduler>(&mut stream, &mut buf, FRAME_LIMIT) {
            Ok(Some(batch)) => {
                if events.send(Event::Messages { worker, batch }).is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                // Workers never write a frame over the limit: this is a
                // broken connection, said as such in the debug log.
                tracing::debug!(target: "flowrun_dask::cluster", "Connection of worker {worker} broke: {e}");
                break;
            }
        }
    }
    let _ = events.send(Event::Disconnected { worker });
}

/// Sends the scheduler's messages to one worker, batched. A message too
/// large for a frame is answered on the worker's behalf, as a failure of
/// the runs it carried, instead of leaving them waiting.
fn write_loop(
    mut stream: TcpStream,
    rx: Receiver<ToWorkerOut>,
    worker: u32,
    events: &Sender<Event>,
) {
    if let Err(e) = send(&mut stream, &rx, worker, events) {
        tracing::debug!(target: "flowrun_dask::cluster", "Cannot write to worker {worker}: {e}");
        // The read loop then sees the connection end, and the scheduler
        // the worker's loss: a worker it can no longer reach is not kept.
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
}

fn send(
    stream: &mut TcpStream,
    rx: &Receiver<ToWorkerOut>,
    worker: u32,
    events: &Sender<Event>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        let batch: Vec<ToWorkerOut> = std::iter::once(first).chain(rx.try_iter()).collect();
        let stop = batch.iter().any(|m| matches!(m, ToWorker::Shutdown));
        for r in frame::write_batch(stream, batch, &mut buf, FRAME_LIMIT)? {
            match answer_oversized(r) {
                Some(Answer::ToScheduler(batch)) => {
                    let _ = events.send(Event::Messages { worker, batch });
                }
                Some(Answer::ToWorker(m)) => {
                    frame::write_frame(stream, &[m], &mut buf, FRAME_LIMIT)?
                }
                None => {}
            }
        }
        if stop {
            break;
        }
    }
    Ok(())
}

enum Answer {
    ToScheduler(Vec<ToScheduler>),
    ToWorker(ToWorkerOut),
}

fn oversized_error(what: &str, size: usize) -> WireError {
    WireError {
        panic: false,
        message: frame::too_large(what, size, FRAME_LIMIT),
        kind: None,
    }
}

/// The failure that stands for a message that could not be sent.
fn answer_oversized(r: Oversized<ToWorkerOut>) -> Option<Answer> {
    match r.message {
        ToWorker::Run(tasks) => Some(Answer::ToScheduler(vec![ToScheduler::Done(
            tasks
                .into_iter()
                .map(|t| Completion {
                    id: t.id,
                    result: Err(oversized_error("the task's input", r.size)),
                    duration_us: 0,
                })
                .collect(),
        )])),
        ToWorker::Resolved(results) => Some(Answer::ToWorker(ToWorker::Resolved(
            results
                .into_iter()
                .map(|(id, _)| (id, Err(oversized_error("the result", r.size))))
                .collect(),
        ))),
        // Handshake messages and Shutdown are a few bytes.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Read;

    use super::*;

    /// Whether the scheduler's challenge arrives within `wait`.
    fn challenged(mut s: &TcpStream, wait: Duration) -> bool {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(1))
    }

    #[test]
    fn strangers_are_reported_at_most_once_a_second_with_a_count_of_the_rest() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.report(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.report(t0 + Duration::from_millis(100 * i)), None);
        }
        assert_eq!(t.report(t0 + Duration::from_millis(1100)), Some(5));
        assert_eq!(t.report(t0 + Duration::from_millis(1200)), None);
    }

    #[test]
    fn at_most_the_bound_of_strangers_are_in_their_handshake_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Gate {
            secret: [1; 32],
            build: "b".into(),
            expected: Arc::new(Mutex::new(HashSet::new())),
        };
        let (events, refusals) = crossbeam_channel::unbounded();
        let closed = Arc::new(AtomicBool::new(false));
        spawn(listener, gate, events, closed.clone()).unwrap();
        let extra = 4;
        // Silent strangers: each holds a slot until the deadline.
        let silent: Vec<TcpStream> = (0..MAX_HANDSHAKES + extra)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let began = Instant::now();
        let first: Vec<bool> = silent
            .iter()
            .map(|s| challenged(s, Duration::from_millis(300)))
            .collect();
        let served = first.iter().filter(|&&c| c).count();
        assert_eq!(served, MAX_HANDSHAKES, "handshakes under way at once");
        // At the deadline the first ones are cut (reported once, throttled),
        // and the others get their turn.
        let Ok(Event::Refused { reason, .. }) = refusals.recv_timeout(Duration::from_secs(30))
        else {
            panic!("no refusal")
        };
        assert!(began.elapsed() >= HANDSHAKE_DEADLINE - Duration::from_secs(1));
        assert!(reason.contains("deadline"), "{reason}");
        let later = silent
            .iter()
            .zip(&first)
            .filter(|(_, &served)| !served)
            .filter(|(s, _)| challenged(s, Duration::from_secs(5)))
            .count();
        assert_eq!(later, extra, "the waiting connections were served next");
        closed.store(true, Ordering::Release);
    }
}

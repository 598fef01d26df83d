//! Property tests: random and truncated bytes fed to the frame decoder and
//! to the scheduler's side of the handshake. Nothing panics, nothing waits
//! past the deadline, and nothing allocates beyond the limits, measured by
//! a counting allocator (this test binary's global allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::frame::{self, FRAME_LIMIT, HELLO_LIMIT};
use super::handshake::{self, Gate};
use crate::local::wire::{ToScheduler, ToWorker, PROTOCOL};

/// Counts, per thread, the bytes live and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn add(n: usize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + n;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

fn sub(n: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(n)));
}

// SAFETY: forwards to the system allocator; the counters are plain
// thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(layout.size());
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size);
        sub(layout.size());
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most `f` has live at once on this thread, above what was live before.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, PEAK.with(Cell::get) - base)
}

/// A genuine hello, as a worker sends it (length and body).
fn hello_frame(secret: &[u8; 32], nonce: &[u8; 32]) -> Vec<u8> {
    let hello = handshake::Hello::Hello {
        worker: 1,
        pid: 7,
        build: "gnu-0123456789abcdef".into(),
        protocol: PROTOCOL,
        proof: handshake::proof(secret, nonce, 1),
    };
    let mut wire = Vec::new();
    frame::write_frame(&mut wire, &[hello], &mut Vec::new(), HELLO_LIMIT).unwrap();
    wire
}

/// Bytes that start like a frame more often than uniform noise would.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..1024)).prop_map(|(len, body)| {
            let mut v = len.to_le_bytes().to_vec();
            v.extend(body);
            v
        }),
        (0usize..600, prop::collection::vec(any::<u8>(), 0..700)).prop_map(|(len, body)| {
            let mut v = (len as u32).to_le_bytes().to_vec();
            v.extend(body);
            v
        }),
        (0usize..200).prop_map(|cut| {
            let mut v = hello_frame(&[1; 32], &[2; 32]);
            v.truncate(cut.min(v.len()));
            v
        }),
        Just(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_frame_decoder_survives_any_bytes_within_its_limits(bytes in hostile()) {
        let mut buf = Vec::new();
        let (_, peak) = peak_of(|| {
            let _ = frame::read_one::<handshake::Hello>(&mut &bytes[..], &mut buf, HELLO_LIMIT);
        });
        prop_assert!(buf.capacity() <= HELLO_LIMIT, "buffer of {}", buf.capacity());
        // The body, the decoded build string and an error message at most.
        prop_assert!(peak <= 4 * HELLO_LIMIT, "peak {peak}");

        let mut buf = Vec::new();
        let _ = frame::read_frame::<ToWorker>(&mut &bytes[..], &mut buf, FRAME_LIMIT);
        let _ = frame::read_frame::<ToScheduler>(&mut &bytes[..], &mut buf, FRAME_LIMIT);
        // A claimed length costs only the bytes that arrived (in chunks).
        prop_assert!(buf.capacity() <= frame::KEEP_CAPACITY, "buffer of {}", buf.capacity());
    }
}

fn gate() -> Gate {
    Gate {
        secret: [1; 32],
        build: "gnu-0123456789abcdef".into(),
        expected: Arc::new(Mutex::new(HashSet::from([1]))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_handshake_refuses_random_and_truncated_bytes_in_bounded_time_and_memory(
        bytes in hostile(),
        close in any::<bool>(),
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        peer.write_all(&bytes).unwrap();
        if close {
            peer.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let deadline = Duration::from_millis(300);
        let began = Instant::now();
        let gate = gate();
        let (outcome, peak) = peak_of(|| handshake::admit(&stream, &gate, Instant::now() + deadline));
        let took = began.elapsed();
        prop_assert!(outcome.is_err(), "admitted a stranger: {outcome:?}");
        prop_assert!(took < deadline + Duration::from_secs(2), "took {took:?}");
        prop_assert!(peak <= 16 * 1024, "peak {peak}");
        drop(peer);
    }
}

#[test]
fn the_handshake_admits_the_genuine_hello_and_a_slow_peer_is_cut_at_the_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let worker = std::thread::spawn(move || {
        let stream = TcpStream::connect(addr).unwrap();
        handshake::join(&stream, &[1; 32], 1, "gnu-0123456789abcdef")
    });
    let (stream, _) = listener.accept().unwrap();
    let admitted = handshake::admit(&stream, &gate(), Instant::now() + Duration::from_secs(10));
    assert_eq!(admitted.unwrap().worker, 1);
    worker.join().unwrap().unwrap();

    // One byte every 100 ms: each read succeeds, the whole does not.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        for b in hello_frame(&[1; 32], &[0; 32]) {
            if s.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (stream, _) = listener.accept().unwrap();
    let began = Instant::now();
    let refused = handshake::admit(
        &stream,
        &gate(),
        Instant::now() + Duration::from_millis(500),
    );
    let took = began.elapsed();
    let reason = refused.unwrap_err().reason;
    assert!(reason.contains("deadline"), "{reason}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    drop(stream);
    slow.join().unwrap();

    // A peer that connects and says nothing.
    let silent = TcpStream::connect(addr).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let refused = handshake::admit(
        &stream,
        &gate(),
        Instant::now() + Duration::from_millis(300),
    );
    let reason = refused.unwrap_err().reason;
    assert!(reason.contains("deadline"), "{reason}");
    drop(silent);
}

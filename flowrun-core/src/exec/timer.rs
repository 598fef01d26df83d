//! One background thread that fires callbacks at deadlines (retry delays,
//! timeouts), and a runtime-independent `sleep` future built on it.

use crate::plumbing::{lock, wait, wait_timeout};
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

type Callback = Box<dyn FnOnce() + Send>;

struct Entry {
    at: Instant,
    seq: u64,
    /// Taken (and dropped) by whoever comes first: the deadline, or a
    /// cancel, which so frees what the callback holds at once.
    callback: Arc<Mutex<Option<Callback>>>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Earliest deadline first in a max-heap.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.at.cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

struct Timer {
    heap: Mutex<(BinaryHeap<Entry>, u64)>,
    cond: Condvar,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            heap: Mutex::new((BinaryHeap::new(), 0)),
            cond: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("flowrun-timer".into())
            .spawn(move || t.run())
            .expect("flowrun could not start its timer thread");
        t
    })
}

impl Timer {
    fn run(&self) {
        let mut guard = lock(&self.heap);
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(top) = guard.0.peek() {
                if top.at <= now {
                    due.push(guard.0.pop().expect("peeked"));
                } else {
                    break;
                }
            }
            if !due.is_empty() {
                drop(guard);
                for e in due {
                    let callback = lock(&e.callback).take();
                    if let Some(callback) = callback {
                        callback();
                    }
                }
                guard = lock(&self.heap);
                continue;
            }
            guard = match guard.0.peek().map(|e| e.at) {
                None => wait(&self.cond, guard),
                Some(at) => wait_timeout(&self.cond, guard, at.saturating_duration_since(now)).0,
            };
        }
    }
}

/// Cancels a scheduled callback.
#[derive(Clone)]
pub(crate) struct TimerHandle(Arc<Mutex<Option<Callback>>>);

impl TimerHandle {
    /// Drops the callback now (with everything it holds) unless it ran.
    pub(crate) fn cancel(&self) {
        let callback = lock(&self.0).take();
        drop(callback);
    }
}

/// Calls `callback` on the timer thread at `at`. Callbacks must be quick.
pub(crate) fn schedule(at: Instant, callback: impl FnOnce() + Send + 'static) -> TimerHandle {
    let t = timer();
    let callback: Arc<Mutex<Option<Callback>>> = Arc::new(Mutex::new(Some(Box::new(callback))));
    let mut guard = lock(&t.heap);
    guard.1 += 1;
    let seq = guard.1;
    let earliest = guard.0.peek().map(|e| e.at);
    guard.0.push(Entry {
        at,
        seq,
        callback: callback.clone(),
    });
    drop(guard);
    if earliest.is_none_or(|e| at < e) {
        t.cond.notify_one();
    }
    TimerHandle(callback)
}

/// A future that completes after `duration`, on any executor.
pub(crate) fn sleep(duration: Duration) -> Sleep {
    Sleep {
        at: Instant::now() + duration,
        shared: None,
    }
}

/// Whether the deadline passed, and who to wake when it does.
type Fired = Arc<Mutex<(bool, Option<Waker>)>>;

pub(crate) struct Sleep {
    at: Instant,
    shared: Option<(Fired, TimerHandle)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        match &self.shared {
            Some((state, _)) => {
                let mut s = lock(state);
                if s.0 {
                    return Poll::Ready(());
                }
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
            None => {
                let state = Arc::new(Mutex::new((false, Some(cx.waker().clone()))));
                let fired = state.clone();
                let handle = schedule(self.at, move || {
                    let waker = {
                        let mut s = lock(&fired);
                        s.0 = true;
                        s.1.take()
                    };
                    if let Some(w) = waker {
                        w.wake();
                    }
                });
                self.shared = Some((state, handle));
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((_, handle)) = &self.shared {
            handle.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_callback_frees_what_it_holds_at_once() {
        let held = Arc::new(vec![0u8; 1024]);
        let inside = held.clone();
        let handle = schedule(Instant::now() + Duration::from_secs(3600), move || {
            drop(inside);
        });
        assert_eq!(Arc::strong_count(&held), 2);
        handle.cancel();
        assert_eq!(Arc::strong_count(&held), 1, "kept until its deadline");
    }
}

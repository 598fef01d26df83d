//! Reading results from the cluster in batches.
//!
//! A result stays on its worker until the flow reads it, and each read is a
//! gather: one round trip to the scheduler. Reading many results one by one
//! (`results()`, `as_completed`) would pay that trip for each. So a read
//! also fetches, in the same gather, small results (up to [`PREFETCH_ONE`]
//! each) that completed and were not read yet, in the order they
//! completed, up to [`PREFETCH_BYTES`] held in this process; later reads
//! find them here. Large results are fetched only when read: they usually
//! feed other tasks, and move between workers only. Sizes come from the
//! scheduler (one `nbytes` question per batch), except for tasks whose
//! results read so far were all small, which are taken as small again (a
//! task whose results then grow can bring up to [`PREFETCH_KEYS`] of them
//! before that is seen). A read with nothing else to fetch is one gather.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowrun_core::plumbing::{lock, wait};
use flowrun_core::{TaskError, TaskErrorKind};

use super::block_on;
use super::format;
use crate::protocol::{DaskClient, ProtocolError};

/// How long reading a result may take.
const GATHER_TIMEOUT: Duration = Duration::from_secs(600);

/// The most bytes of results read ahead and held until they are read.
pub(crate) const PREFETCH_BYTES: u64 = 64 << 20;

/// The least time between the starts of two gathers of closely following
/// reads (see `Reads::read`).
const GATHER_GAP: Duration = Duration::from_millis(20);

/// The most results one gather reads ahead.
const PREFETCH_KEYS: usize = 4096;

/// The largest result read ahead: large ones usually feed other tasks
/// (they move between workers) and are fetched only when read.
const PREFETCH_ONE: u64 = 64 << 10;

/// The results of one session, read in batches.
pub(crate) struct Reads {
    client: Arc<DaskClient>,
    state: Mutex<State>,
    /// Wakes readers waiting for a batch that holds their key.
    arrived: Condvar,
}

#[derive(Default)]
struct State {
    /// Completed keys not read yet, oldest first; `unread_set` says which
    /// entries are still current.
    unread: VecDeque<String>,
    unread_set: HashSet<String>,
    /// Results read ahead, until their run reads them.
    ready: HashMap<String, Bytes>,
    ready_bytes: u64,
    /// Keys of gathers under way.
    inflight: HashSet<String>,
    /// The largest result read so far of each task.
    largest: HashMap<String, u64>,
    /// When the last gather started.
    last_gather: Option<Instant>,
}

impl Reads {
    pub(crate) fn new(client: Arc<DaskClient>) -> Arc<Reads> {
        Arc::new(Reads {
            client,
            state: Mutex::new(State::default()),
            arrived: Condvar::new(),
        })
    }

    /// `key` completed: its result may be read ahead.
    pub(crate) fn completed(&self, key: &str) {
        let mut state = lock(&self.state);
        if state.unread_set.insert(key.to_owned()) {
            state.unread.push_back(key.to_owned());
        }
    }

    /// `key` is released on the scheduler: nothing can read it any more.
    pub(crate) fn forget(&self, key: &str) {
        let mut state = lock(&self.state);
        state.unread_set.remove(key);
        if let Some(value) = state.ready.remove(key) {
            state.ready_bytes -= value.len() as u64;
        }
    }

    /// Reads `key`'s result (a result frame's value).
    pub(crate) fn read(&self, key: &str) -> Result<Bytes, TaskError> {
        let others = {
            let mut state = lock(&self.state);
            loop {
                if let Some(value) = state.ready.remove(key) {
                    state.ready_bytes -= value.len() as u64;
                    return Ok(value);
                }
                if state.inflight.contains(key) {
                    state = wait(&self.arrived, state);
                    continue;
                }
                // Reads that follow each other closely (a loop over results
                // while tasks still complete) wait a moment, so that one
                // gather takes what completed meanwhile: a gather per few
                // results would load the scheduler that runs the tasks.
                let since = state.last_gather.map(|t| t.elapsed());
                match since {
                    Some(since) if since < GATHER_GAP => {
                        drop(state);
                        std::thread::sleep(GATHER_GAP - since);
                        state = lock(&self.state);
                        state.last_gather = None;
                    }
                    _ => break,
                }
            }
            state.last_gather = Some(Instant::now());
            state.unread_set.remove(key);
            let mut others = Vec::new();
            while others.len() < PREFETCH_KEYS {
                let Some(other) = state.unread.pop_front() else {
                    break;
                };
                if state.unread_set.remove(&other) && other != key {
                    others.push(other);
                }
            }
            state.inflight.insert(key.to_owned());
            state.inflight.extend(others.iter().cloned());
            others
        };
        let (own, ahead) = self.gather(key, &others);
        let mut state = lock(&self.state);
        state.inflight.remove(key);
        for other in &others {
            state.inflight.remove(other);
        }
        for (other, value) in ahead {
            state.ready_bytes += value.len() as u64;
            state.ready.insert(other, value);
        }
        // What did not fit (or could not be read ahead) waits for a later
        // read, at the front as it is the oldest.
        for other in others.into_iter().rev() {
            if !state.ready.contains_key(&other) && state.unread_set.insert(other.clone()) {
                state.unread.push_front(other);
            }
        }
        drop(state);
        self.arrived.notify_all();
        own
    }

    /// Gathers `key` and as many of `others` as the budget allows; a batch
    /// that fails is retried as the single read.
    fn gather(
        &self,
        key: &str,
        others: &[String],
    ) -> (Result<Bytes, TaskError>, Vec<(String, Bytes)>) {
        if !others.is_empty() {
            let (room, known) = {
                let state = lock(&self.state);
                let room = PREFETCH_BYTES.saturating_sub(state.ready_bytes);
                // Results of tasks whose results were all small so far are
                // taken as small again, without asking the scheduler.
                let known: HashMap<String, i64> = others
                    .iter()
                    .filter_map(|o| {
                        let size = *state.largest.get(task_of(o))?;
                        (size <= PREFETCH_ONE).then(|| (o.clone(), size as i64))
                    })
                    .collect();
                (room, known)
            };
            let client = self.client.clone();
            let owned = key.to_owned();
            let others = others.to_vec();
            let batch = block_on(
                async move {
                    let unknown: Vec<String> = others
                        .iter()
                        .filter(|o| !known.contains_key(*o))
                        .cloned()
                        .collect();
                    let mut sizes = known;
                    if !unknown.is_empty() {
                        sizes.extend(client.nbytes(&unknown).await?);
                    }
                    let mut total = 0u64;
                    let mut keys = vec![owned.clone()];
                    for other in others {
                        let size = sizes.get(&other).copied().unwrap_or(-1);
                        // Unknown sizes and large results are not read
                        // ahead.
                        let Ok(size) = u64::try_from(size) else {
                            continue;
                        };
                        if size > PREFETCH_ONE {
                            continue;
                        }
                        if total + size > room {
                            break;
                        }
                        total += size;
                        keys.push(other);
                    }
                    let mut values = client.gather(&keys).await?;
                    let own = values.remove(&owned).unwrap_or_default();
                    Ok::<_, ProtocolError>((own, values))
                },
                GATHER_TIMEOUT,
            );
            if let Some(Ok((own, values))) = batch {
                let ahead: Vec<(String, Bytes)> = values
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, unframe(&v).ok()?)))
                    .collect();
                let own = unframe(&own);
                self.observe(key, &own, &ahead);
                return (own, ahead);
            }
        }
        let own = fetch_one(&self.client, key);
        self.observe(key, &own, &[]);
        (own, Vec::new())
    }

    /// Remembers the largest result of each task seen so far.
    fn observe(&self, key: &str, own: &Result<Bytes, TaskError>, ahead: &[(String, Bytes)]) {
        let mut state = lock(&self.state);
        let own = own.as_ref().ok().map(|v| (key, v));
        for (key, value) in own
            .into_iter()
            .chain(ahead.iter().map(|(k, v)| (k.as_str(), v)))
        {
            let largest = state.largest.entry(task_of(key).to_owned()).or_default();
            *largest = (*largest).max(value.len() as u64);
        }
    }
}

/// The task of a key (`<task>-<n>-<flow run tag>-<attempt>`).
fn task_of(key: &str) -> &str {
    key.rsplitn(4, '-').nth(3).unwrap_or(key)
}

fn unframe(value: &[u8]) -> Result<Bytes, TaskError> {
    format::strip_result(value)
        .map(Bytes::copy_from_slice)
        .map_err(|e| TaskError::new(TaskErrorKind::ResultUnavailable, e))
}

/// Reads one result from the cluster. A result lost with its worker is
/// recomputed by Dask; the read waits for it.
fn fetch_one(client: &Arc<DaskClient>, key: &str) -> Result<Bytes, TaskError> {
    let client = client.clone();
    let key = key.to_owned();
    let address = client.address().to_owned();
    let fut = async move {
        let deadline = Instant::now() + GATHER_TIMEOUT;
        loop {
            match client.gather(std::slice::from_ref(&key)).await {
                Ok(mut values) => return Ok(values.remove(&key).unwrap_or_default()),
                Err(ProtocolError::NotInMemory { .. }) if Instant::now() < deadline => {
                    let status = client.task_status(std::slice::from_ref(&key)).await?;
                    match status.get(&key).cloned().flatten().as_deref() {
                        // In memory again soon (a worker was lost and
                        // the key is being moved): ask again after a pause.
                        Some("memory") => tokio::time::sleep(Duration::from_millis(50)).await,
                        Some("erred") | None => {
                            return Err(ProtocolError::NotInMemory { keys: vec![key] })
                        }
                        Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                Err(e) => return Err(e),
            }
        }
    };
    let value = match block_on(fut, GATHER_TIMEOUT + Duration::from_secs(5)) {
        Some(Ok(value)) => value,
        Some(Err(ProtocolError::Closed { .. })) => {
            return Err(TaskError::new(
                TaskErrorKind::ResultUnavailable,
                "its result stayed on the Dask cluster and is gone: the flow run's connection \
                 to the cluster is closed (read results while the flow runs)",
            ))
        }
        Some(Err(e)) => {
            return Err(TaskError::new(
                TaskErrorKind::ResultUnavailable,
                format!("could not read its result from the Dask scheduler at {address}: {e}"),
            ))
        }
        None => {
            return Err(TaskError::new(
                TaskErrorKind::ResultUnavailable,
                format!(
                    "reading its result from the Dask scheduler at {address} took longer than {}s",
                    GATHER_TIMEOUT.as_secs()
                ),
            ))
        }
    };
    unframe(&value)
}

#[cfg(test)]
mod tests {
    use super::task_of;

    #[test]
    fn the_task_of_a_key_is_before_its_run_number() {
        assert_eq!(task_of("bump-12-8431af74-1"), "bump");
        assert_eq!(task_of("my-task-3-8431af74-2"), "my-task");
        assert_eq!(task_of("odd"), "odd");
    }
}

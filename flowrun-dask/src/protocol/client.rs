//! The client: one RPC connection for questions (versions, identity, gather,
//! task status) and one batched stream for submissions and events.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowrun_core::plumbing::lock;
use rmpv::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::conn::{parse_address, Connection};
use super::error::ProtocolError;
use super::graph::{update_graph_messages, SubprocessTask};
use super::msg::{self, get, get_str, key_string, str_array, Incoming, OutMessage};
use super::payload::decode_bytes;
use super::stream::{
    dispatch, event_channel, reader_loop, writer_loop, EventReceiver, Outgoing, Shared,
};
use super::tls::Security;
use super::version;
use tokio_rustls::TlsConnector;

/// A worker as the scheduler describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    /// Its address, `tcp://host:port`.
    pub address: String,
    /// Its name (`--name`), or the address when it has none.
    pub name: String,
    /// Its thread count, i.e. how many tasks it runs at once.
    pub nthreads: u32,
    /// The abstract resources it offers (`--resources GPU=1`).
    pub resources: BTreeMap<String, f64>,
    /// Its memory limit in bytes; 0 when unlimited or unknown.
    pub memory_limit: u64,
    /// Its status (`running`, `paused`, `closing`, ...), when reported.
    pub status: Option<String>,
}

/// What the scheduler knows about its cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterInfo {
    /// The scheduler's id.
    pub scheduler_id: String,
    /// The scheduler's own idea of its address.
    pub address: String,
    /// The connected workers, ordered by address.
    pub workers: Vec<WorkerInfo>,
}

impl ClusterInfo {
    /// Total threads of the workers that are running.
    pub fn total_threads(&self) -> u32 {
        self.running().map(|w| w.nthreads).sum()
    }

    /// Whether some running worker offers all of `resources` at once. A task
    /// whose resources no worker has waits forever (Dask sets no timeout for
    /// that by default), so callers should check before submitting.
    pub fn can_satisfy(&self, resources: &BTreeMap<String, f64>) -> bool {
        self.running().any(|w| {
            resources
                .iter()
                .all(|(name, need)| w.resources.get(name).is_some_and(|have| have >= need))
        })
    }

    fn running(&self) -> impl Iterator<Item = &WorkerInfo> {
        self.workers
            .iter()
            .filter(|w| w.status.as_deref().is_none_or(|s| s == "running"))
    }
}

/// How long `close` waits for the scheduler to end the stream.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of a Dask scheduler that runs subprocess tasks on stock Python
/// workers.
///
/// It owns one RPC connection and one stream connection. Keys submitted by
/// this client are held on the scheduler until [`release`](Self::release)d,
/// or until the client disconnects: the scheduler then releases everything
/// the client held, so keep the client alive until results are gathered.
pub struct DaskClient {
    address: String,
    client_id: String,
    version: String,
    rpc: tokio::sync::Mutex<Option<Connection>>,
    queue: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
    events: Mutex<Option<EventReceiver>>,
    reader: Mutex<Option<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    graphs: AtomicU64,
    /// Tasks submitted so far: the submission order of the next one.
    submitted: AtomicU64,
    /// Set by `close`; every later call fails.
    closing: AtomicBool,
    /// For the RPC connections of a `tls://` address.
    tls: Option<TlsConnector>,
}

flowrun_core::__debug_fields!(DaskClient {
    address,
    client_id,
    version,
    ..
});

/// A client id unique across processes and within one.
fn new_client_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "flowrun-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn as_u64_lossy(value: Option<&Value>) -> u64 {
    match value {
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .unwrap_or(0),
        None => 0,
    }
}

fn parse_worker(address: String, info: &Value) -> WorkerInfo {
    let resources = get(info, "resources")
        .and_then(Value::as_map)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|(k, v)| {
                    let amount = v.as_f64().or_else(|| v.as_i64().map(|i| i as f64))?;
                    Some((key_string(k), amount))
                })
                .collect()
        })
        .unwrap_or_default();
    WorkerInfo {
        name: get(info, "name")
            .map(key_string)
            .unwrap_or_else(|| address.clone()),
        nthreads: u32::try_from(as_u64_lossy(get(info, "nthreads"))).unwrap_or(u32::MAX),
        resources,
        memory_limit: as_u64_lossy(get(info, "memory_limit")),
        status: get_str(info, "status").map(str::to_owned),
        address,
    }
}

/// The first failure in a broadcast's answers (`{worker: {"status": ...}}`).
fn worker_failures(reply: &Value, op: &str) -> Result<(), ProtocolError> {
    let Some(answers) = reply.as_map() else {
        return Ok(());
    };
    for (worker, answer) in answers {
        if get_str(answer, "status").is_some_and(|s| s != "OK") {
            let text = get_str(answer, "exception_text").unwrap_or("(no exception text)");
            return Err(ProtocolError::Scheduler {
                op: op.to_string(),
                text: format!("worker {}: {text}", key_string(worker)),
            });
        }
    }
    Ok(())
}

impl DaskClient {
    /// Connects to the scheduler at `address` (`tcp://host:port`), checks its
    /// version and registers a client stream, all within `timeout`.
    ///
    /// Fails with [`ProtocolError::UnsupportedVersion`] for `distributed`
    /// older than [`MIN_SUPPORTED_VERSION`](super::MIN_SUPPORTED_VERSION),
    /// before anything is sent that such a scheduler would choke on.
    pub async fn connect(address: &str, timeout: Duration) -> Result<DaskClient, ProtocolError> {
        Self::connect_with(address, timeout, &Security::default()).await
    }

    /// [`connect`](Self::connect) with TLS settings, which a `tls://`
    /// address needs. A certificate the other side refuses, or one that is
    /// not the cluster's, fails with an error naming the address.
    pub async fn connect_with(
        address: &str,
        timeout: Duration,
        security: &Security,
    ) -> Result<DaskClient, ProtocolError> {
        let tls = match parse_address(address)?.tls {
            true => Some(security.connector(address)?),
            false => None,
        };
        match tokio::time::timeout(timeout, Self::connect_inner(address, tls)).await {
            Ok(result) => result,
            Err(_) => Err(ProtocolError::ConnectTimeout {
                address: address.to_string(),
                timeout,
            }),
        }
    }

    async fn connect_inner(
        address: &str,
        tls: Option<TlsConnector>,
    ) -> Result<DaskClient, ProtocolError> {
        let mut rpc = Connection::open(address, tls.as_ref()).await?;
        let versions = rpc.call("versions", vec![]).await?.body;
        let found = get(&versions, "packages")
            .and_then(|p| get_str(p, "distributed"))
            .ok_or_else(|| {
                ProtocolError::connect(
                    address,
                    "the scheduler did not report its distributed version",
                )
            })?
            .to_string();
        if !version::is_supported(&found) {
            rpc.close().await;
            return Err(ProtocolError::UnsupportedVersion {
                address: address.to_string(),
                found,
                minimum: version::MIN_SUPPORTED_VERSION.to_string(),
            });
        }
        if version::is_newer_than_tested(&found) {
            tracing::warn!(
                "the Dask scheduler at {address} runs distributed {found}, newer than the newest tested \
                 release {}; if submissions fail, pin distributed",
                version::NEWEST_TESTED_VERSION
            );
        }

        let client_id = new_client_id();
        let mut stream = Connection::open(address, tls.as_ref()).await?;
        // Echoing the scheduler's own versions avoids a version-mismatch
        // warning; the scheduler only refuses on a non-empty `error`.
        let register = msg::map(vec![
            ("op", "register-client".into()),
            ("client", client_id.as_str().into()),
            ("reply", false.into()),
            ("versions", versions),
        ]);
        stream.send(OutMessage::new(register), false).await?;
        let mut first = stream.receive().await?;
        let ops = match std::mem::replace(&mut first.body, Value::Nil) {
            Value::Array(ops) => ops,
            single => vec![single],
        };
        let start = ops
            .first()
            .filter(|op| get_str(op, "op") == Some("stream-start"))
            .ok_or_else(|| {
                ProtocolError::connect(
                    address,
                    format!(
                        "expected stream-start, got {}",
                        msg::short(&Value::Array(ops.clone()))
                    ),
                )
            })?;
        if let Some(error) = get_str(start, "error").filter(|e| !e.is_empty()) {
            return Err(ProtocolError::Refused {
                address: address.to_string(),
                reason: error.to_string(),
            });
        }
        if let Some(warning) = get_str(start, "warning").filter(|w| !w.is_empty()) {
            tracing::debug!("scheduler warning at registration: {warning}");
        }

        let shared = Arc::new(Shared::default());
        let (events_tx, events) = event_channel();
        // Ops that came in the same batch as stream-start are events too.
        first.body = Value::Array(ops.into_iter().skip(1).collect());
        dispatch(first, &events_tx, &shared);

        let (queue, queue_rx) = mpsc::unbounded_channel();
        let Connection { reader, writer } = stream;
        let reader = tokio::spawn(reader_loop(reader, events_tx, shared.clone()));
        let writer = tokio::spawn(writer_loop(writer, queue_rx, shared.clone()));
        Ok(DaskClient {
            address: address.to_string(),
            client_id,
            version: found,
            rpc: tokio::sync::Mutex::new(Some(rpc)),
            queue,
            shared,
            events: Mutex::new(Some(events)),
            reader: Mutex::new(Some(reader)),
            writer: Mutex::new(Some(writer)),
            graphs: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            tls,
        })
    }

    /// The `distributed` version the scheduler reported.
    pub fn scheduler_version(&self) -> &str {
        &self.version
    }

    /// The scheduler address this client connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The id under which the scheduler knows this client.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Takes the receiver of this client's events. There is one receiver per
    /// client, so this returns `Some` only on the first call. Events queue up
    /// (unbounded) until taken.
    pub fn events(&self) -> Option<EventReceiver> {
        lock(&self.events).take()
    }

    /// Runs one RPC. The connection is taken out of its slot for the call and
    /// only put back when the call completed, so a call abandoned midway
    /// (its future dropped) cannot leave a half-read reply for the next one.
    ///
    /// A kept connection may have died since its last use (scheduler
    /// restarted, idle connection dropped); the call is then retried once on
    /// a fresh one. Every RPC this client makes only reads or sets a value
    /// by name, so a retry is harmless.
    async fn call(&self, op: &str, args: Vec<(&str, Value)>) -> Result<Incoming, ProtocolError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(ProtocolError::Closed {
                reason: format!(
                    "the client closed its connection to the scheduler at {}",
                    self.address
                ),
            });
        }
        let mut slot = self.rpc.lock().await;
        let (mut conn, reused) = match slot.take() {
            Some(conn) => (conn, true),
            None => (
                Connection::open(&self.address, self.tls.as_ref()).await?,
                false,
            ),
        };
        let mut result = conn.call(op, args.clone()).await;
        if reused
            && matches!(
                result,
                Err(ProtocolError::Closed { .. } | ProtocolError::Io(_))
            )
        {
            conn = Connection::open(&self.address, self.tls.as_ref()).await?;
            result = conn.call(op, args).await;
        }
        match result {
            // An exception reported by the scheduler leaves the connection in
            // step; any other failure may not have.
            Ok(_) | Err(ProtocolError::Scheduler { .. }) => {
                *slot = Some(conn);
                result
            }
            Err(ProtocolError::Closed { reason }) => Err(ProtocolError::Closed {
                reason: format!("{reason} (scheduler at {})", self.address),
            }),
            Err(ProtocolError::Io(e)) => Err(ProtocolError::Closed {
                reason: format!("I/O error with the scheduler at {}: {e}", self.address),
            }),
            Err(other) => Err(other),
        }
    }

    /// The scheduler's view of the cluster.
    pub async fn identity(&self) -> Result<ClusterInfo, ProtocolError> {
        // No `n_workers` argument: older releases reject it.
        let reply = self.call("identity", vec![]).await?.body;
        let mut workers: Vec<WorkerInfo> = get(&reply, "workers")
            .and_then(Value::as_map)
            .map(|entries| {
                entries
                    .iter()
                    .map(|(address, info)| parse_worker(key_string(address), info))
                    .collect()
            })
            .unwrap_or_default();
        workers.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(ClusterInfo {
            scheduler_id: get_str(&reply, "id").unwrap_or_default().to_string(),
            address: get_str(&reply, "address").unwrap_or_default().to_string(),
            workers,
        })
    }

    /// Queues stream ops and waits until they are written to the socket.
    async fn send_ops(&self, ops: Vec<OutMessage>) -> Result<(), ProtocolError> {
        let closed = |reason: String| ProtocolError::Closed {
            reason: format!("{reason} (scheduler at {})", self.address),
        };
        if let Some(reason) = self.shared.closed_reason() {
            return Err(closed(reason));
        }
        let (done, ack) = oneshot::channel();
        self.queue
            .send(Outgoing { ops, done })
            .map_err(|_| closed("the client is closed".into()))?;
        match ack.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(closed(reason)),
            Err(_) => Err(closed("the client is closed".into())),
        }
    }

    /// Submits tasks. Tasks are grouped by annotation set (resources and
    /// retries) into one `update-graph` message each, sent in dependency
    /// order in one stream write. Returns once the messages are written;
    /// outcomes arrive as [`ClientEvent`](super::ClientEvent)s. Tasks of
    /// equal priority run in the order they were submitted, also across
    /// calls.
    ///
    /// Dependencies may name keys of earlier submissions that this client
    /// still holds. A dependency the scheduler does not know cancels the
    /// dependent with reason "lost dependencies".
    pub async fn submit(&self, tasks: Vec<SubprocessTask>) -> Result<(), ProtocolError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let n = self.graphs.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}-{n}", self.client_id);
        let sequence = self
            .submitted
            .fetch_add(tasks.len() as u64, Ordering::Relaxed);
        let messages =
            update_graph_messages(&tasks, &token, i64::try_from(sequence).unwrap_or(i64::MAX))?;
        lock(&self.shared.wanted).extend(tasks.into_iter().map(|t| t.key));
        self.send_ops(messages).await
    }

    /// Registers a Dask worker plugin under `name` on every worker, and on
    /// every worker that joins later; `plugin` is its pickle (see
    /// [`PythonShim::plugin_pickle`](super::PythonShim::plugin_pickle)).
    /// A worker whose plugin fails to start is named in the error.
    pub async fn register_worker_plugin(
        &self,
        name: &str,
        plugin: Vec<u8>,
    ) -> Result<(), ProtocolError> {
        let reply = self
            .call(
                "register_worker_plugin",
                vec![
                    ("plugin", Value::Binary(plugin)),
                    ("name", name.into()),
                    ("idempotent", false.into()),
                ],
            )
            .await?
            .body;
        worker_failures(&reply, "register_worker_plugin")
    }

    /// Removes the worker plugin `name` from every worker (each runs its
    /// `teardown`) and from the scheduler, so later workers do not get it.
    pub async fn unregister_worker_plugin(&self, name: &str) -> Result<(), ProtocolError> {
        let reply = self
            .call("unregister_worker_plugin", vec![("name", name.into())])
            .await?
            .body;
        worker_failures(&reply, "unregister_worker_plugin")
    }

    /// Removes a topic from the scheduler's event log, with its history and
    /// subscribers: the scheduler never forgets a topic by itself, so a
    /// client that made one up for its own events removes it when done.
    /// It runs a function on the scheduler (`Client.run_on_scheduler`), so
    /// a scheduler that refuses pickled functions refuses this too.
    pub async fn remove_topic(&self, topic: &str) -> Result<(), ProtocolError> {
        use super::pickle::{dumps, PyObject as P};
        let function = dumps(&P::call(
            P::global("builtins", "eval"),
            vec![
                P::str(
                    "lambda dask_scheduler: dask_scheduler._broker._topics.pop(t, None) and None",
                ),
                P::Dict(vec![(P::str("t"), P::str(topic))]),
            ],
        ));
        let reply = self
            .call(
                "run_function",
                vec![("function", Value::Binary(function)), ("wait", true.into())],
            )
            .await?
            .body;
        match get_str(&reply, "status") {
            Some("OK") => Ok(()),
            _ => Err(ProtocolError::Scheduler {
                op: "run_function".into(),
                text: get_str(&reply, "exception_text")
                    .unwrap_or("(no exception text)")
                    .to_string(),
            }),
        }
    }

    /// Subscribes this client to a topic of the scheduler's event log: every
    /// event published on it from now on arrives as
    /// [`ClientEvent::Topic`](super::ClientEvent::Topic).
    pub async fn subscribe_topic(&self, topic: &str) -> Result<(), ProtocolError> {
        self.send_ops(vec![OutMessage::new(msg::map(vec![
            ("op", "subscribe-topic".into()),
            ("topic", topic.into()),
            ("client", self.client_id.as_str().into()),
        ]))])
        .await
    }

    /// Fetches the results (stdout bytes) of keys that are in memory.
    pub async fn gather(&self, keys: &[String]) -> Result<HashMap<String, Vec<u8>>, ProtocolError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let mut reply = self
            .call(
                "gather",
                vec![("keys", str_array(keys.iter().map(String::as_str)))],
            )
            .await?;
        let body = std::mem::replace(&mut reply.body, Value::Nil);
        match get_str(&body, "status") {
            Some("OK") => {}
            Some("error") => {
                let keys = get(&body, "keys")
                    .and_then(msg::key_list)
                    .unwrap_or_else(|| keys.to_vec());
                return Err(ProtocolError::NotInMemory { keys });
            }
            _ => {
                return Err(ProtocolError::Malformed(format!(
                    "unexpected gather reply {}",
                    msg::short(&body)
                )))
            }
        }
        let data = get(&body, "data")
            .and_then(Value::as_map)
            .ok_or_else(|| ProtocolError::Malformed("gather reply without data".into()))?;
        let mut results = HashMap::with_capacity(data.len());
        for (key, reference) in data {
            let key = key_string(key);
            let ser = reply.take_serialized(reference)?;
            let bytes = decode_bytes(ser).map_err(|e| e.for_key(&key))?;
            results.insert(key, bytes);
        }
        let missing: Vec<String> = keys
            .iter()
            .filter(|k| !results.contains_key(*k))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(ProtocolError::NotInMemory { keys: missing });
        }
        Ok(results)
    }

    /// Tells the scheduler this client no longer needs the keys; results
    /// nobody else needs are forgotten.
    ///
    /// Release a key only together with, or after, the keys that depend on
    /// it: a released key that still has dependents makes a later
    /// [`cancel`](Self::cancel) of its dependencies fail on the scheduler.
    pub async fn release(&self, keys: &[String]) -> Result<(), ProtocolError> {
        if keys.is_empty() {
            return Ok(());
        }
        {
            let mut wanted = lock(&self.shared.wanted);
            keys.iter().for_each(|k| {
                wanted.remove(k);
            });
        }
        self.send_ops(vec![OutMessage::new(msg::map(vec![
            ("op", "client-releases-keys".into()),
            ("keys", str_array(keys.iter().map(String::as_str))),
            ("client", self.client_id.as_str().into()),
        ]))])
        .await
    }

    /// Cancels keys and everything that depends on them; the scheduler
    /// confirms with [`ClientEvent::CancelledKeys`](super::ClientEvent).
    /// Keys this client does not hold are skipped. A subprocess already
    /// running is not killed (Dask cannot interrupt a running task); its
    /// result is discarded.
    pub async fn cancel(&self, keys: &[String]) -> Result<(), ProtocolError> {
        let held: Vec<String> = {
            let mut wanted = lock(&self.shared.wanted);
            keys.iter().filter(|k| wanted.remove(*k)).cloned().collect()
        };
        if held.is_empty() {
            return Ok(());
        }
        self.send_ops(vec![OutMessage::new(msg::map(vec![
            ("op", "cancel-keys".into()),
            ("keys", str_array(held.iter().map(String::as_str))),
            ("force", false.into()),
            ("reason", "cancelled by flowrun".into()),
            ("msg", "".into()),
        ]))])
        .await
    }

    /// The scheduler's state of each key (`"memory"`, `"processing"`, ...),
    /// or `None` for keys it does not know (never submitted, or forgotten).
    pub async fn task_status(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Option<String>>, ProtocolError> {
        let status = |v: &Value| v.as_str().map(str::to_owned);
        self.per_key("get_task_status", keys, vec![], status).await
    }

    /// The size in bytes of each key's result, as its worker measured it
    /// (-1 while unknown). Every key must be one the scheduler holds.
    pub async fn nbytes(&self, keys: &[String]) -> Result<HashMap<String, i64>, ProtocolError> {
        let size = |v: &Value| v.as_i64().unwrap_or(-1);
        self.per_key("nbytes", keys, vec![("summary", false.into())], size)
            .await
    }

    /// The addresses of the workers holding each key's result.
    pub async fn who_has(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<String>>, ProtocolError> {
        let addresses = |v: &Value| msg::key_list(v).unwrap_or_default();
        self.per_key("who_has", keys, vec![], addresses).await
    }

    /// Asks the scheduler's handler `op` about `keys` (with `more`
    /// arguments) and reads its reply, a map from key to a value that
    /// `value` converts.
    async fn per_key<T>(
        &self,
        op: &str,
        keys: &[String],
        more: Vec<(&str, Value)>,
        value: impl Fn(&Value) -> T,
    ) -> Result<HashMap<String, T>, ProtocolError> {
        let mut args = vec![("keys", str_array(keys.iter().map(String::as_str)))];
        args.extend(more);
        let reply = self.call(op, args).await?.body;
        let entries = reply.as_map().ok_or_else(|| {
            ProtocolError::Malformed(format!("unexpected {op} reply {}", msg::short(&reply)))
        })?;
        Ok(entries
            .iter()
            .map(|(k, v)| (key_string(k), value(v)))
            .collect())
    }

    /// Ends the session: the scheduler releases every key of this client and
    /// closes the stream; then the RPC connection is closed. Every later
    /// call fails; closing again does nothing.
    pub async fn close(&self) -> Result<(), ProtocolError> {
        if self.closing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shared.mark_closed("the client closed the connection");
        let (done, ack) = oneshot::channel();
        let bye = Outgoing {
            ops: vec![
                OutMessage::new(msg::map(vec![("op", "close-client".into())])),
                OutMessage::new(msg::map(vec![("op", "close-stream".into())])),
            ],
            done,
        };
        let sent = match self.queue.send(bye) {
            // A scheduler that stopped reading must not hold the close up.
            Ok(()) => match tokio::time::timeout(CLOSE_TIMEOUT, ack).await {
                Ok(answer) => answer.unwrap_or_else(|_| Err("the stream writer stopped".into())),
                Err(_) => Err(format!(
                    "the scheduler did not take the close within {}s",
                    CLOSE_TIMEOUT.as_secs()
                )),
            },
            Err(_) => Err("the stream writer stopped".into()),
        };
        // The scheduler answers close-stream by closing the socket; the
        // reader then ends. Do not wait forever for a scheduler that hangs.
        let reader = lock(&self.reader).take();
        if let Some(mut reader) = reader {
            if sent.is_ok()
                && tokio::time::timeout(CLOSE_TIMEOUT, &mut reader)
                    .await
                    .is_err()
            {
                tracing::warn!("the scheduler at {} did not close the stream", self.address);
            }
            reader.abort();
        }
        if let Some(rpc) = self.rpc.lock().await.take() {
            rpc.close().await;
        }
        sent.map_err(|reason| ProtocolError::Closed { reason })
    }
}

impl Drop for DaskClient {
    fn drop(&mut self) {
        // Without this the background tasks would keep the sockets open, and
        // the scheduler would keep this client's keys alive.
        for handle in [lock(&self.reader).take(), lock(&self.writer).take()]
            .into_iter()
            .flatten()
        {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_can_be_shared_between_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<DaskClient>();
        shareable::<super::super::EventReceiver>();
    }

    #[test]
    fn cluster_info_answers_resource_questions() {
        let worker = |address: &str, gpu: Option<f64>, status: &str| WorkerInfo {
            address: address.into(),
            name: address.into(),
            nthreads: 2,
            resources: gpu.map(|n| ("GPU".to_string(), n)).into_iter().collect(),
            memory_limit: 0,
            status: Some(status.into()),
        };
        let info = ClusterInfo {
            scheduler_id: "s".into(),
            address: "tcp://s:1".into(),
            workers: vec![
                worker("tcp://a:1", Some(1.0), "running"),
                worker("tcp://b:1", Some(4.0), "closing"),
                worker("tcp://c:1", None, "running"),
            ],
        };
        let need = |n: f64| BTreeMap::from([("GPU".to_string(), n)]);
        assert!(info.can_satisfy(&need(1.0)));
        assert!(
            !info.can_satisfy(&need(2.0)),
            "the closing worker does not count"
        );
        assert!(info.can_satisfy(&BTreeMap::new()));
        assert_eq!(info.total_threads(), 4);
    }

    #[test]
    fn worker_entries_tolerate_odd_values() {
        let entry = msg::map(vec![
            ("name", 7.into()),
            ("nthreads", 4.into()),
            ("memory_limit", Value::F64(1e9)),
            (
                "resources",
                msg::map(vec![("GPU", 1.into()), ("bad", "x".into())]),
            ),
        ]);
        let worker = parse_worker("tcp://w:1".into(), &entry);
        assert_eq!(worker.name, "7");
        assert_eq!(worker.nthreads, 4);
        assert_eq!(worker.memory_limit, 1_000_000_000);
        assert_eq!(worker.resources, BTreeMap::from([("GPU".to_string(), 1.0)]));
        let empty = parse_worker("tcp://w:2".into(), &Value::Nil);
        assert_eq!(empty.name, "tcp://w:2");
        assert_eq!(empty.nthreads, 0);
    }
}

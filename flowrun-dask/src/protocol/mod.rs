//! A client of the Dask `distributed` scheduler protocol, written from the
//! wire format up, so that flowrun can run tasks on a real Dask cluster's
//! stock Python workers.
//!
//! A task is a command that a worker runs with
//! `subprocess.check_output(argv, input=<stdin>, stderr=PIPE)`, or through a
//! small Python [`PythonShim`] shipped with the task: the worker needs only
//! Python, `dask` and `distributed`, and the result is bytes (the
//! subprocess's stdout). The pieces:
//!
//! * `frame`: length-prefixed frames over TCP;
//! * `msg`: msgpack bodies and Dask's out-of-band extensions;
//! * `pickle`: a writer for the task graph and a symbolic reader for the
//!   exceptions workers send back;
//! * `graph`: [`SubprocessTask`]s to `update-graph` messages;
//! * `payload`: results and exceptions coming back;
//! * `tls`: TLS for `tls://` addresses;
//! * `conn`, `stream`, `client`: connections, the batched stream with
//!   its [`ClientEvent`]s, and the [`DaskClient`] API;
//! * `event`: [`TopicEvent`]s published on the scheduler's topics;
//! * `version`: the `distributed` releases this speaks to
//!   (>= [`MIN_SUPPORTED_VERSION`]).
//!
//! Addresses are `tcp://` or `tls://` (with [`Security`], as Dask's own
//! `Security` takes it). Deliberately left out: heartbeats (the scheduler
//! never evicts a silent client), compression (off by default; compressed
//! results are reported as [`ProtocolError::CompressedResult`]), and results
//! that are not `bytes`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flowrun_dask::protocol::ProtocolError> {
//! use flowrun_dask::protocol::{ClientEvent, DaskClient, SubprocessTask};
//! use std::time::Duration;
//!
//! let client = DaskClient::connect("tcp://127.0.0.1:8786", Duration::from_secs(10)).await?;
//! let mut events = client.events().expect("first call");
//! client.submit(vec![SubprocessTask::new("run1-hello", ["/bin/echo", "hello"])]).await?;
//! if let Some(ClientEvent::KeyInMemory { key }) = events.recv().await {
//!     let out = client.gather(&[key]).await?;
//!     assert_eq!(out["run1-hello"], b"hello\n");
//! }
//! client.close().await
//! # }
//! ```

mod client;
mod conn;
mod error;
mod event;
mod frame;
mod graph;
mod msg;
mod payload;
mod pickle;
mod stream;
mod tls;
mod version;

/// The value of the first entry of a dict whose key `is_key` accepts.
pub(crate) fn dict_get<V>(entries: &[(V, V)], is_key: impl Fn(&V) -> bool) -> Option<&V> {
    entries.iter().find(|(k, _)| is_key(k)).map(|(_, v)| v)
}

pub use client::{ClusterInfo, DaskClient, WorkerInfo};
pub(crate) use conn::Connection;
pub use error::ProtocolError;
pub use event::{EventValue, TopicEvent};
pub use graph::{PythonShim, StdinPart, SubprocessTask};
pub use payload::TaskException;
pub use stream::{ClientEvent, EventReceiver};
pub use tls::Security;
pub use version::{MIN_SUPPORTED_VERSION, NEWEST_TESTED_VERSION};

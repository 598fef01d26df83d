//! The batched stream: the long-lived connection on which the client submits
//! graphs and the scheduler reports task outcomes.
//!
//! Two background tasks own the two halves of the socket:
//! * the reader drains it continuously, because the scheduler gives up on a
//!   peer whose receive window stays closed for 30 s, and turns each op into a
//!   [`ClientEvent`] on an unbounded channel (so slow consumers never stall
//!   the socket);
//! * the writer packs whatever ops are queued into one message, so a burst of
//!   submissions and releases costs one frame instead of one each.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use flowrun_core::plumbing::lock;
use rmpv::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, Notify};

use super::error::ProtocolError;
use super::event::{EventValue, TopicEvent};
use super::frame::{read_frames, write_frames};
use super::msg::{self, get, get_str, key_list, key_string, Incoming, OutMessage};
use super::payload::{decode_exception, TaskException};

/// Something the scheduler reported about this client's keys.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The task finished and its result can be gathered.
    KeyInMemory {
        /// The task key.
        key: String,
    },
    /// The task failed after its retries, or one of its dependencies failed
    /// (then `error` is the dependency's error).
    TaskErred {
        /// The task key.
        key: String,
        /// The failure.
        error: TaskException,
    },
    /// The scheduler dropped the keys: cancelled, a dependency was unknown
    /// ("lost dependencies"), or already forgotten.
    CancelledKeys {
        /// The keys.
        keys: Vec<String>,
        /// The scheduler's reason.
        reason: String,
    },
    /// The result was lost with its worker; the scheduler recomputes it when
    /// it can and then reports `KeyInMemory` again.
    LostData {
        /// The task key.
        key: String,
    },
    /// The task is rerun after an explicit retry.
    TaskRetried {
        /// The task key.
        key: String,
    },
    /// The cluster was restarted: every key of this client is gone.
    Restarted,
    /// An event of a topic this client subscribed to
    /// ([`DaskClient::subscribe_topic`](super::DaskClient::subscribe_topic)).
    Topic(TopicEvent),
    /// The stream ended; no further events follow.
    Closed {
        /// Why the stream ended.
        reason: String,
    },
}

/// Receives the [`ClientEvent`]s of one client, in the order the scheduler
/// sent them.
#[derive(Debug)]
pub struct EventReceiver {
    rx: mpsc::UnboundedReceiver<ClientEvent>,
}

impl EventReceiver {
    /// Waits for the next event; `None` once the stream has ended and every
    /// event (including the final [`ClientEvent::Closed`]) was received.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }

    /// Returns an event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<ClientEvent> {
        self.rx.try_recv().ok()
    }
}

/// A group of ops the writer sends together, and who to tell when they are
/// on the wire.
pub(crate) struct Outgoing {
    pub(crate) ops: Vec<OutMessage>,
    pub(crate) done: oneshot::Sender<Result<(), String>>,
}

/// State the API and the background tasks share.
#[derive(Default)]
pub(crate) struct Shared {
    /// Set once the stream is unusable, with the reason.
    closed: Mutex<Option<String>>,
    /// Keys this client holds on the scheduler (submitted, not released or
    /// cancelled). Cancelling a key nobody wants trips an assertion in the
    /// scheduler that kills the stream, so cancel only sends these.
    pub(crate) wanted: Mutex<HashSet<String>>,
    /// Wakes the writer so it shuts the socket when the reader gives up.
    pub(crate) shutdown: Notify,
}

impl Shared {
    /// Records why the stream ended; the first reason wins.
    pub(crate) fn mark_closed(&self, reason: &str) {
        let mut closed = lock(&self.closed);
        if closed.is_none() {
            *closed = Some(reason.to_string());
        }
    }

    /// The reason the stream ended, if it did.
    pub(crate) fn closed_reason(&self) -> Option<String> {
        lock(&self.closed).clone()
    }
}

/// Keeps one stream message (and thus one frame 0) to a reasonable size.
const MAX_BATCH_OPS: usize = 10_000;
const MAX_BATCH_BYTES: usize = 64 << 20;

/// Sends queued ops until the queue closes or a write fails.
pub(crate) async fn writer_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    loop {
        let first = tokio::select! {
            next = queue.recv() => match next {
                Some(item) => item,
                None => break,
            },
            _ = shared.shutdown.notified() => break,
        };
        let mut bytes = first
            .ops
            .iter()
            .map(OutMessage::attachment_bytes)
            .sum::<usize>();
        let mut ops_count = first.ops.len();
        let mut batch = vec![first];
        while ops_count < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(item) => {
                    bytes += item
                        .ops
                        .iter()
                        .map(OutMessage::attachment_bytes)
                        .sum::<usize>();
                    ops_count += item.ops.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let mut ops = Vec::with_capacity(ops_count);
        let mut acks = Vec::with_capacity(batch.len());
        for item in batch {
            ops.extend(item.ops);
            acks.push(item.done);
        }
        let result = match msg::encode(ops, true) {
            Ok(frames) => write_frames(&mut writer, &frames)
                .await
                .map_err(|e| format!("cannot write to the scheduler: {e}")),
            Err(e) => Err(e.to_string()),
        };
        let failed = result.as_ref().err().cloned();
        for ack in acks {
            let _ = ack.send(result.clone());
        }
        if let Some(reason) = failed {
            shared.mark_closed(&reason);
            break;
        }
    }
    // Fail whatever is still queued instead of leaving callers waiting.
    queue.close();
    let reason = shared
        .closed_reason()
        .unwrap_or_else(|| "the client is closing".to_string());
    while let Ok(item) = queue.try_recv() {
        let _ = item.done.send(Err(reason.clone()));
    }
}

/// Reads the stream until it ends, forwarding events.
pub(crate) async fn reader_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    events: mpsc::UnboundedSender<ClientEvent>,
    shared: Arc<Shared>,
) {
    let reason = loop {
        let frames = match read_frames(&mut reader).await {
            Ok(frames) => frames,
            Err(ProtocolError::Closed { .. }) => {
                break "the scheduler closed the stream".to_string()
            }
            Err(e) => break e.to_string(),
        };
        match Incoming::decode(frames) {
            Ok(incoming) => {
                if let Some(reason) = dispatch(incoming, &events, &shared) {
                    break reason;
                }
            }
            // The framing is intact, so the stream can go on; one unreadable
            // message is logged rather than taking the client down.
            Err(e) => tracing::warn!("ignoring unreadable stream message: {e}"),
        }
    };
    // A reason recorded earlier (for example "closed by the client") is the
    // more useful one.
    shared.mark_closed(&reason);
    let reason = shared.closed_reason().unwrap_or(reason);
    let _ = events.send(ClientEvent::Closed { reason });
    shared.shutdown.notify_one();
}

/// Handles one stream message, which holds one op map or an array of them.
/// Returns a reason when the scheduler announced the end of the stream.
pub(crate) fn dispatch(
    mut incoming: Incoming,
    events: &mpsc::UnboundedSender<ClientEvent>,
    shared: &Shared,
) -> Option<String> {
    let ops = match std::mem::replace(&mut incoming.body, Value::Nil) {
        Value::Array(ops) => ops,
        single => vec![single],
    };
    for op in ops {
        match translate(&op, &mut incoming, shared) {
            Ok(Some(ClientEvent::Closed { reason })) => return Some(reason),
            Ok(Some(event)) => {
                let _ = events.send(event);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("ignoring malformed stream op {}: {e}", msg::short(&op)),
        }
    }
    None
}

fn required_key(op: &Value) -> Result<String, ProtocolError> {
    get(op, "key")
        .map(key_string)
        .ok_or_else(|| ProtocolError::Malformed("op without a key".into()))
}

/// Turns one op map into an event, or `None` for ops of no interest.
fn translate(
    op: &Value,
    incoming: &mut Incoming,
    shared: &Shared,
) -> Result<Option<ClientEvent>, ProtocolError> {
    let name = get_str(op, "op").unwrap_or_default();
    let event = match name {
        "key-in-memory" => ClientEvent::KeyInMemory {
            key: required_key(op)?,
        },
        "task-erred" => {
            let key = required_key(op)?;
            let error = match get(op, "exception") {
                Some(reference) => match incoming.take_serialized(reference) {
                    Ok(ser) => decode_exception(ser),
                    Err(e) => TaskException::undecodable(e),
                },
                None => TaskException::undecodable("the message has no exception"),
            };
            ClientEvent::TaskErred { key, error }
        }
        "cancelled-keys" => {
            let keys = get(op, "keys")
                .and_then(key_list)
                .ok_or_else(|| ProtocolError::Malformed("cancelled-keys without keys".into()))?;
            // The scheduler released them for us.
            let mut wanted = lock(&shared.wanted);
            for key in &keys {
                wanted.remove(key);
            }
            ClientEvent::CancelledKeys {
                keys,
                reason: get_str(op, "reason").unwrap_or("cancelled").to_string(),
            }
        }
        "lost-data" => ClientEvent::LostData {
            key: required_key(op)?,
        },
        "task-retried" => ClientEvent::TaskRetried {
            key: required_key(op)?,
        },
        "restart" => {
            lock(&shared.wanted).clear();
            ClientEvent::Restarted
        }
        "event" => {
            let topic = get_str(op, "topic")
                .ok_or_else(|| ProtocolError::Malformed("event without a topic".into()))?
                .to_string();
            // The scheduler sends `(time, message)`.
            let (time, message) = match get(op, "event") {
                Some(Value::Array(pair)) if pair.len() == 2 => (
                    pair[0]
                        .as_f64()
                        .or_else(|| pair[0].as_i64().map(|t| t as f64))
                        .unwrap_or(0.0),
                    EventValue::from_msgpack(pair[1].clone()),
                ),
                Some(other) => (0.0, EventValue::from_msgpack(other.clone())),
                None => (0.0, EventValue::Nil),
            };
            ClientEvent::Topic(TopicEvent {
                topic,
                time,
                message,
            })
        }
        "stream-closed" | "close" => ClientEvent::Closed {
            reason: format!("the scheduler sent {name:?}"),
        },
        // Replies to heartbeats, pub/sub events, and ops of newer releases.
        other => {
            tracing::debug!("ignoring stream op {other:?}");
            return Ok(None);
        }
    };
    Ok(Some(event))
}

/// Creates the event channel.
pub(crate) fn event_channel() -> (mpsc::UnboundedSender<ClientEvent>, EventReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, EventReceiver { rx })
}

#[cfg(test)]
mod tests {
    use super::super::msg::{encode, map, str_set, Attachment};
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn incoming(ops: Vec<OutMessage>) -> Incoming {
        Incoming::decode(encode(ops, true).unwrap()).unwrap()
    }

    fn events_of(ops: Vec<OutMessage>) -> (Vec<ClientEvent>, Option<String>) {
        let (tx, mut rx) = event_channel();
        let shared = Shared::default();
        let end = dispatch(incoming(ops), &tx, &shared);
        let mut out = Vec::new();
        while let Some(e) = rx.try_recv() {
            out.push(e);
        }
        (out, end)
    }

    fn op(fields: Vec<(&str, Value)>) -> OutMessage {
        OutMessage::new(map(fields))
    }

    #[test]
    fn translates_scheduler_ops_in_order() {
        let mut erred = op(vec![]);
        let exception = erred.attach(Attachment::Serialized {
            header: vec![
                ("serializer".into(), "dask".into()),
                ("type".into(), "bytes".into()),
            ],
            // RuntimeError('boom')
            frames: vec![
                b"\x80\x04\x8c\x08builtins\x8c\x0cRuntimeError\x93\x8c\x04boom\x85R.".to_vec(),
            ],
        });
        erred.body = map(vec![
            ("op", "task-erred".into()),
            ("key", "b".into()),
            ("exception", exception),
            ("traceback", Value::Nil),
        ]);
        let (events, end) = events_of(vec![
            op(vec![
                ("op", "key-in-memory".into()),
                ("key", "a".into()),
                ("type", Value::Binary(vec![])),
            ]),
            erred,
            op(vec![
                ("op", "adjust-heartbeat-interval".into()),
                ("interval", 5.0.into()),
            ]),
            op(vec![
                ("op", "cancelled-keys".into()),
                ("keys", str_set(["c", "d"])),
                ("reason", "lost dependencies".into()),
            ]),
            op(vec![("op", "lost-data".into()), ("key", "a".into())]),
            op(vec![("op", "restart".into())]),
            op(vec![
                ("op", "event".into()),
                ("topic", "t".into()),
                (
                    "event",
                    Value::Array(vec![
                        Value::F64(2.5),
                        map(vec![("worker", "tcp://w:1".into())]),
                    ]),
                ),
            ]),
        ]);
        assert_eq!(end, None);
        assert_eq!(events.len(), 6, "{events:?}");
        assert_eq!(events[0], ClientEvent::KeyInMemory { key: "a".into() });
        let ClientEvent::TaskErred { key, error } = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(key, "b");
        assert_eq!(error.class, "builtins.RuntimeError");
        assert_eq!(error.message, "boom");
        assert_eq!(
            events[2],
            ClientEvent::CancelledKeys {
                keys: vec!["c".into(), "d".into()],
                reason: "lost dependencies".into()
            }
        );
        assert_eq!(events[3], ClientEvent::LostData { key: "a".into() });
        assert_eq!(events[4], ClientEvent::Restarted);
        let ClientEvent::Topic(event) = &events[5] else {
            panic!("{events:?}")
        };
        assert_eq!((event.topic.as_str(), event.time), ("t", 2.5));
        assert_eq!(
            event.message.get("worker").and_then(EventValue::as_str),
            Some("tcp://w:1")
        );
    }

    #[test]
    fn malformed_ops_are_skipped_and_stream_closed_ends() {
        let (events, end) = events_of(vec![
            op(vec![("op", "key-in-memory".into())]),
            op(vec![
                ("op", "task-erred".into()),
                ("key", "x".into()),
                ("exception", 3.into()),
            ]),
            op(vec![("op", "stream-closed".into())]),
            op(vec![
                ("op", "key-in-memory".into()),
                ("key", "never".into()),
            ]),
        ]);
        assert_eq!(events.len(), 1);
        let ClientEvent::TaskErred { error, .. } = &events[0] else {
            panic!()
        };
        assert_eq!(error.class, "<undecodable>");
        assert!(end.unwrap().contains("stream-closed"));
    }

    #[tokio::test]
    async fn reader_ends_with_closed_and_writer_batches() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (client_read, client_write) = tokio::io::split(client);
        let (mut server_read, mut server_write) = tokio::io::split(server);
        let shared = Arc::new(Shared::default());
        let (events_tx, mut events) = event_channel();
        let reader = tokio::spawn(reader_loop(client_read, events_tx, shared.clone()));
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();

        // Queue three groups before the writer runs: they go out as one batch.
        let mut acks = Vec::new();
        for i in 0..3 {
            let (done, ack) = oneshot::channel();
            let ops = vec![op(vec![("op", "x".into()), ("i", i.into())])];
            queue_tx.send(Outgoing { ops, done }).unwrap();
            acks.push(ack);
        }
        let writer = tokio::spawn(writer_loop(client_write, queue_rx, shared.clone()));
        for ack in acks {
            ack.await.unwrap().unwrap();
        }
        let frames = read_frames(&mut server_read).await.unwrap();
        let body = Incoming::decode(frames).unwrap().body;
        assert_eq!(body.as_array().unwrap().len(), 3);

        let message = encode(
            vec![op(vec![
                ("op", "key-in-memory".into()),
                ("key", "k".into()),
            ])],
            true,
        )
        .unwrap();
        write_frames(&mut server_write, &message).await.unwrap();
        server_write.shutdown().await.unwrap();
        drop(server_write);
        assert_eq!(
            events.recv().await,
            Some(ClientEvent::KeyInMemory { key: "k".into() })
        );
        drop(server_read);
        let Some(ClientEvent::Closed { .. }) = events.recv().await else {
            panic!()
        };
        reader.await.unwrap();
        // The reader's end stops the writer too, failing later sends.
        writer.await.unwrap();
        let (done, ack) = oneshot::channel();
        let _ = queue_tx.send(Outgoing { ops: vec![], done });
        assert!(ack.await.map(|r| r.is_err()).unwrap_or(true));
    }
}

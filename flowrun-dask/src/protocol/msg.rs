//! Messages: msgpack in frame 0, plus Dask's extensions that point at later
//! frames.
//!
//! * `{"__Serialized__": i}`: `frames[i]` is a msgpack sub-header with
//!   `num-sub-frames = n`, and the next `n` frames are the payload. The
//!   scheduler forwards these untouched (results, exceptions, our graph).
//! * `{"__Pickled__": i}`: `frames[i]` is msgpack
//!   `{"pickled-obj": <pickle>, "num-sub-frames": n}`; the scheduler always
//!   unpickles it on arrival.
//! * `{"__Set__": true, "as-list": [...]}`: a Python `set`. Plain msgpack
//!   arrays arrive in Python as tuples, which some handlers cannot use.
//!
//! Outgoing messages are built as [`rmpv::Value`] trees in which an
//! attachment is a placeholder; frame numbers are only known once several
//! messages are packed into one batch, so the placeholders are resolved then.

use rmpv::Value;

use super::error::ProtocolError;

/// A msgpack extension type we never send for real; it marks where an
/// attachment goes until [`encode`] gives it its frame number.
const PLACEHOLDER_EXT: i8 = 0x55;

/// Builds a msgpack map with string keys.
pub(crate) fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// Encodes strings as a Python `set`.
pub(crate) fn str_set<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    map(vec![
        ("__Set__", Value::Boolean(true)),
        (
            "as-list",
            Value::Array(items.into_iter().map(Value::from).collect()),
        ),
    ])
}

/// Encodes strings as a msgpack array (a Python tuple on arrival).
pub(crate) fn str_array<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::Array(items.into_iter().map(Value::from).collect())
}

/// Data sent out of band, next to the msgpack body.
#[derive(Debug, Clone)]
pub(crate) enum Attachment {
    /// A `Serialized` object: a sub-header (without `num-sub-frames`, which is
    /// filled in) and its payload frames.
    Serialized {
        header: Vec<(Value, Value)>,
        frames: Vec<Vec<u8>>,
    },
    /// A pickle the scheduler unpickles on arrival.
    Pickled(Vec<u8>),
}

/// One outgoing message (an RPC request or one op of a stream batch).
#[derive(Debug, Clone)]
pub(crate) struct OutMessage {
    /// The msgpack body, possibly holding placeholders from [`Self::attach`].
    pub body: Value,
    attachments: Vec<Attachment>,
}

impl OutMessage {
    /// A message without attachments.
    pub(crate) fn new(body: Value) -> Self {
        OutMessage {
            body,
            attachments: Vec::new(),
        }
    }

    /// Registers an attachment and returns the value to put where it belongs
    /// in the body.
    pub(crate) fn attach(&mut self, attachment: Attachment) -> Value {
        let index = self.attachments.len() as u32;
        self.attachments.push(attachment);
        Value::Ext(PLACEHOLDER_EXT, index.to_le_bytes().to_vec())
    }

    /// Total bytes of the attachments, to keep batches to a sane size.
    pub(crate) fn attachment_bytes(&self) -> usize {
        self.attachments
            .iter()
            .map(|a| match a {
                Attachment::Serialized { frames, .. } => frames.iter().map(Vec::len).sum(),
                Attachment::Pickled(p) => p.len(),
            })
            .sum()
    }
}

fn pack(value: &Value) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value)
        .map_err(|e| ProtocolError::Malformed(format!("cannot encode msgpack: {e}")))?;
    Ok(out)
}

/// Replaces placeholders by `{"__Serialized__": i}` / `{"__Pickled__": i}`,
/// with `i` taken from `refs` (one entry per attachment of the message).
fn resolve_placeholders(value: &mut Value, refs: &[Value]) {
    match value {
        Value::Ext(PLACEHOLDER_EXT, data) => {
            let index = <[u8; 4]>::try_from(data.as_slice())
                .map(u32::from_le_bytes)
                .ok()
                .and_then(|i| refs.get(i as usize));
            if let Some(replacement) = index {
                *value = replacement.clone();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| resolve_placeholders(v, refs)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, v)| resolve_placeholders(v, refs)),
        _ => {}
    }
}

/// Packs messages into the frames of one wire message. With `batch` the body
/// is an array of the messages (the batched stream); otherwise exactly one
/// message is expected and sent as is (RPC).
pub(crate) fn encode(
    messages: Vec<OutMessage>,
    batch: bool,
) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut frames: Vec<Vec<u8>> = vec![Vec::new()];
    let mut bodies = Vec::with_capacity(messages.len());
    for message in messages {
        let mut refs = Vec::with_capacity(message.attachments.len());
        for attachment in message.attachments {
            let index = Value::from(frames.len() as u64);
            match attachment {
                Attachment::Serialized {
                    mut header,
                    frames: payload,
                } => {
                    header.push(("num-sub-frames".into(), Value::from(payload.len() as u64)));
                    frames.push(pack(&Value::Map(header))?);
                    frames.extend(payload);
                    refs.push(map(vec![("__Serialized__", index)]));
                }
                Attachment::Pickled(pickle) => {
                    frames.push(pack(&map(vec![
                        ("pickled-obj", Value::Binary(pickle)),
                        ("num-sub-frames", Value::from(0)),
                    ]))?);
                    refs.push(map(vec![("__Pickled__", index)]));
                }
            }
        }
        let mut body = message.body;
        if !refs.is_empty() {
            resolve_placeholders(&mut body, &refs);
        }
        bodies.push(body);
    }
    frames[0] = if batch {
        pack(&Value::Array(bodies))?
    } else {
        let body = bodies.pop().filter(|_| bodies.is_empty()).ok_or_else(|| {
            ProtocolError::Malformed("an RPC message must be exactly one map".into())
        })?;
        pack(&body)?
    };
    Ok(frames)
}

/// A `Serialized` object taken out of an incoming message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Serialized {
    /// The msgpack sub-header (`serializer`, `type`, `compression`, ...).
    pub header: Value,
    /// The payload frames.
    pub frames: Vec<Vec<u8>>,
}

/// An incoming message: the decoded body and the frames it may point at.
#[derive(Debug)]
pub(crate) struct Incoming {
    /// Frame 0, decoded.
    pub body: Value,
    frames: Vec<Vec<u8>>,
}

impl Incoming {
    /// Decodes frame 0.
    pub(crate) fn decode(frames: Vec<Vec<u8>>) -> Result<Incoming, ProtocolError> {
        let first = frames
            .first()
            .ok_or_else(|| ProtocolError::Malformed("message without frames".into()))?;
        let mut reader = first.as_slice();
        let body = rmpv::decode::read_value(&mut reader)
            .map_err(|e| ProtocolError::Malformed(format!("invalid msgpack: {e}")))?;
        Ok(Incoming { body, frames })
    }

    /// If `value` is `{"__Serialized__": i}`, moves that object's frames out of
    /// the message. Each object is meant to be taken once; a second take of
    /// the same object yields empty frames.
    pub(crate) fn take_serialized(&mut self, value: &Value) -> Result<Serialized, ProtocolError> {
        let index = get(value, "__Serialized__")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                ProtocolError::Malformed(format!(
                    "expected a Serialized object, got {}",
                    short(value)
                ))
            })?;
        let bad =
            |what: &str| ProtocolError::Malformed(format!("Serialized object {index}: {what}"));
        let index = usize::try_from(index).map_err(|_| bad("index out of range"))?;
        let header_frame = self
            .frames
            .get(index)
            .ok_or_else(|| bad("sub-header frame missing"))?;
        let header = rmpv::decode::read_value(&mut header_frame.as_slice())
            .map_err(|e| bad(&format!("invalid sub-header: {e}")))?;
        let count = get(&header, "num-sub-frames")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("sub-header without num-sub-frames"))?;
        let start = index + 1;
        let end = usize::try_from(count)
            .ok()
            .and_then(|c| start.checked_add(c))
            .filter(|&end| end <= self.frames.len())
            .ok_or_else(|| bad("fewer frames than num-sub-frames"))?;
        let frames = self.frames[start..end]
            .iter_mut()
            .map(std::mem::take)
            .collect();
        Ok(Serialized { header, frames })
    }
}

/// Looks up a string key in a msgpack map.
pub(crate) fn get<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Reads a string field of a map.
pub(crate) fn get_str<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    get(value, key).and_then(Value::as_str)
}

/// A key as flowrun knows it. Dask keys may also be ints or tuples; those
/// cannot come from this client's graphs, but are rendered rather than
/// dropped so nothing is silently lost.
pub(crate) fn key_string(value: &Value) -> String {
    match value {
        Value::String(s) => s
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => short(other),
    }
}

/// Keys from either a plain array or a `__Set__` map (the scheduler uses both
/// for `cancelled-keys`).
pub(crate) fn key_list(value: &Value) -> Option<Vec<String>> {
    let items = match value {
        Value::Array(items) => items,
        Value::Map(_) if get(value, "__Set__").and_then(Value::as_bool) == Some(true) => {
            get(value, "as-list")?.as_array()?
        }
        _ => return None,
    };
    Some(items.iter().map(key_string).collect())
}

/// A short rendering of a value for error messages.
pub(crate) fn short(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::frame::tests::hex;
    use super::*;

    /// Frame 0 of the handshake from `wire_examples_output.txt`.
    const HANDSHAKE_BODY: &str =
        "83ab636f6d7072657373696f6ec0a6707974686f6e93030b07af7069636b6c652d70726f746f636f6c05";

    /// Frame 0 of `register-client` from `wire_examples_output.txt`.
    const REGISTER_BODY: &str =
        "84a26f70af72656769737465722d636c69656e74a6636c69656e74ab526177436c69656e742d31a5\
        7265706c79c2a876657273696f6e7382a4686f737480a87061636b6167657380";

    #[test]
    fn encodes_the_documented_handshake_and_register_client() {
        let handshake = map(vec![
            ("compression", Value::Nil),
            ("python", Value::Array(vec![3.into(), 11.into(), 7.into()])),
            ("pickle-protocol", 5.into()),
        ]);
        let frames = encode(vec![OutMessage::new(handshake)], false).unwrap();
        assert_eq!(frames, vec![hex(HANDSHAKE_BODY)]);

        let register = map(vec![
            ("op", "register-client".into()),
            ("client", "RawClient-1".into()),
            ("reply", false.into()),
            (
                "versions",
                map(vec![("host", map(vec![])), ("packages", map(vec![]))]),
            ),
        ]);
        let frames = encode(vec![OutMessage::new(register)], false).unwrap();
        assert_eq!(frames, vec![hex(REGISTER_BODY)]);
    }

    #[test]
    fn attachments_get_frame_numbers_across_a_batch() {
        let mut first = OutMessage::new(Value::Nil);
        let ser = first.attach(Attachment::Serialized {
            header: vec![("serializer".into(), "pickle".into())],
            frames: vec![b"P1".to_vec()],
        });
        first.body = map(vec![("op", "a".into()), ("x", ser)]);
        let mut second = OutMessage::new(Value::Nil);
        let pickled = second.attach(Attachment::Pickled(b"P2".to_vec()));
        second.body = map(vec![("op", "b".into()), ("y", Value::Array(vec![pickled]))]);

        let frames = encode(vec![first, second], true).unwrap();
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[2], b"P1");
        let body = Incoming::decode(frames.clone()).unwrap().body;
        let ops = body.as_array().unwrap();
        assert_eq!(
            get(&ops[0], "x"),
            Some(&map(vec![("__Serialized__", 1.into())]))
        );
        assert_eq!(
            get(&ops[1], "y"),
            Some(&Value::Array(vec![map(vec![("__Pickled__", 3.into())])]))
        );
        // The sub-headers are as the scheduler expects them.
        let sub1 = rmpv::decode::read_value(&mut frames[1].as_slice()).unwrap();
        assert_eq!(get(&sub1, "num-sub-frames"), Some(&Value::from(1)));
        assert_eq!(get_str(&sub1, "serializer"), Some("pickle"));
        let sub3 = rmpv::decode::read_value(&mut frames[3].as_slice()).unwrap();
        assert_eq!(
            get(&sub3, "pickled-obj"),
            Some(&Value::Binary(b"P2".to_vec()))
        );
        assert_eq!(get(&sub3, "num-sub-frames"), Some(&Value::from(0)));
    }

    #[test]
    fn takes_serialized_objects_out_of_a_message() {
        let mut msg = OutMessage::new(Value::Nil);
        let ser = msg.attach(Attachment::Serialized {
            header: vec![("serializer".into(), "dask".into())],
            frames: vec![b"a".to_vec(), b"b".to_vec()],
        });
        msg.body = map(vec![("data", ser)]);
        let mut incoming = Incoming::decode(encode(vec![msg], false).unwrap()).unwrap();
        let reference = get(&incoming.body, "data").unwrap().clone();
        let taken = incoming.take_serialized(&reference).unwrap();
        assert_eq!(taken.frames, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(get_str(&taken.header, "serializer"), Some("dask"));
    }

    #[test]
    fn bad_serialized_references_are_errors() {
        let body = pack(&map(vec![("x", 1.into())])).unwrap();
        let header_without_count = pack(&map(vec![("serializer", "dask".into())])).unwrap();
        let header_too_many = pack(&map(vec![("num-sub-frames", 5.into())])).unwrap();
        let mut incoming = Incoming::decode(vec![
            body,
            header_without_count,
            header_too_many,
            b"x".to_vec(),
        ])
        .unwrap();
        for reference in [
            Value::from(1),
            map(vec![("__Serialized__", 9.into())]),
            map(vec![("__Serialized__", 1.into())]),
            map(vec![("__Serialized__", 2.into())]),
            map(vec![("__Serialized__", 3.into())]),
            map(vec![("__Serialized__", (-1).into())]),
        ] {
            assert!(incoming.take_serialized(&reference).is_err(), "{reference}");
        }
        assert!(Incoming::decode(vec![]).is_err());
        assert!(Incoming::decode(vec![vec![0xa5, 0x61]]).is_err());
        assert!(Incoming::decode(vec![vec![0xdc, 0xff, 0xff]]).is_err());
    }

    #[test]
    fn encodes_the_documented_update_graph_attachments() {
        // Frames 1 and 4 of the update-graph example in
        // `wire_examples_output.txt`: the expr_ser sub-header and the pickled
        // annotations, byte for byte.
        let annotations = hex(
            "80047d288c097265736f75726365737d288c074c4943454e53454b01758c07\
                               726574726965734b02752e",
        );
        let mut message = OutMessage::new(Value::Nil);
        let expr = message.attach(Attachment::Serialized {
            header: vec![
                ("serializer".into(), "pickle".into()),
                ("writeable".into(), Value::Array(vec![])),
            ],
            frames: vec![b"graph".to_vec()],
        });
        let annotations_ref = message.attach(Attachment::Pickled(annotations.clone()));
        message.body = map(vec![("expr_ser", expr), ("annotations", annotations_ref)]);
        let frames = encode(vec![message], true).unwrap();
        assert_eq!(
            frames[1],
            b"\x83\xaaserializer\xa6pickle\xa9writeable\x90\xaenum-sub-frames\x01"
        );
        let mut pickled = b"\x82\xabpickled-obj\xc4\x2a".to_vec();
        pickled.extend(&annotations);
        pickled.extend(b"\xaenum-sub-frames\x00");
        assert_eq!(frames[3], pickled);
        assert_eq!(frames[3].len(), 73);
    }

    #[test]
    fn key_lists_come_as_arrays_or_sets() {
        let keys = key_list(&str_set(["a", "b"])).unwrap();
        assert_eq!(keys, vec!["a", "b"]);
        assert_eq!(key_list(&str_array(["c"])).unwrap(), vec!["c"]);
        assert_eq!(key_list(&Value::from(3)), None);
        assert_eq!(
            key_string(&Value::Array(vec!["x".into(), 1.into()])),
            r#"["x", 1]"#
        );
    }
}

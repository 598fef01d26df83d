//! Events published on the scheduler's topics (`log_event` in Python),
//! which reach the clients subscribed to the topic.
//!
//! A worker's task can publish with `get_worker().log_event(topic, msg)`;
//! the scheduler adds `"worker": <address>` to dict messages from workers.
//! Messages are msgpack, so they arrive as plain data.

use rmpv::Value;

/// One event of a topic this client subscribed to.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicEvent {
    /// The topic.
    pub topic: String,
    /// When the scheduler received it, in seconds since the Unix epoch.
    pub time: f64,
    /// What was published.
    pub message: EventValue,
}

/// A msgpack value of an event message.
#[derive(Debug, Clone, PartialEq)]
pub enum EventValue {
    /// `None`.
    Nil,
    /// A bool.
    Bool(bool),
    /// An integer (unsigned values above `i64::MAX` are clamped).
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// A bytes object.
    Bytes(Vec<u8>),
    /// A list or tuple.
    List(Vec<EventValue>),
    /// A dict, in the order it was sent.
    Map(Vec<(EventValue, EventValue)>),
}

impl EventValue {
    /// The entry of a dict message under a str key.
    pub fn get(&self, key: &str) -> Option<&EventValue> {
        match self {
            EventValue::Map(entries) => {
                super::dict_get(entries, |k| matches!(k, EventValue::Str(s) if s == key))
            }
            _ => None,
        }
    }

    /// The text of a str, or of bytes that are UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            EventValue::Str(s) => Some(s),
            EventValue::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The bytes of a bytes object, or of a str.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            EventValue::Bytes(b) => Some(b),
            EventValue::Str(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// An integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            EventValue::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub(crate) fn from_msgpack(value: Value) -> EventValue {
        match value {
            Value::Nil => EventValue::Nil,
            Value::Boolean(b) => EventValue::Bool(b),
            Value::Integer(n) => EventValue::Int(n.as_i64().unwrap_or(if n.as_u64().is_some() {
                i64::MAX
            } else {
                0
            })),
            Value::F32(f) => EventValue::Float(f.into()),
            Value::F64(f) => EventValue::Float(f),
            Value::String(s) => match s.into_str() {
                Some(s) => EventValue::Str(s),
                None => EventValue::Nil,
            },
            Value::Binary(b) => EventValue::Bytes(b),
            Value::Array(items) => {
                EventValue::List(items.into_iter().map(EventValue::from_msgpack).collect())
            }
            Value::Map(entries) => EventValue::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (EventValue::from_msgpack(k), EventValue::from_msgpack(v)))
                    .collect(),
            ),
            Value::Ext(_, _) => EventValue::Nil,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::msg::map;

    #[test]
    fn converts_msgpack_and_reads_fields() {
        let message = EventValue::from_msgpack(map(vec![
            ("k", "key-1".into()),
            ("o", Value::Binary(b"out\n".to_vec())),
            ("n", Value::from(u64::MAX)),
            ("f", Value::F64(1.5)),
            ("l", Value::Array(vec![Value::Nil, true.into()])),
        ]));
        assert_eq!(message.get("k").and_then(EventValue::as_str), Some("key-1"));
        assert_eq!(
            message.get("o").and_then(EventValue::as_bytes),
            Some(&b"out\n"[..])
        );
        assert_eq!(
            message.get("n").and_then(EventValue::as_i64),
            Some(i64::MAX)
        );
        assert_eq!(message.get("f"), Some(&EventValue::Float(1.5)));
        assert_eq!(
            message.get("l"),
            Some(&EventValue::List(vec![
                EventValue::Nil,
                EventValue::Bool(true)
            ]))
        );
        assert_eq!(message.get("missing"), None);
        assert_eq!(EventValue::Int(3).get("k"), None);
    }
}

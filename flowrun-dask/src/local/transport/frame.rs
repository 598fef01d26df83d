//! Frames: a little-endian `u32` length, then a postcard-encoded batch of
//! messages. One size policy holds on both ends of a connection: a writer
//! never sends a frame larger than [`FRAME_LIMIT`] (it splits batches, and
//! hands back a single message that cannot fit, with its size), and a
//! reader refuses a larger length before it allocates anything.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::super::wire::{ToScheduler, ToWorker};

/// The largest frame body (after the length) either side writes or reads
/// once a connection is authenticated.
pub(crate) const FRAME_LIMIT: usize = 256 << 20;

/// The largest frame a connection may send before it authenticated: the
/// worker's hello is about 150 bytes.
pub(crate) const HELLO_LIMIT: usize = 512;

/// The largest frame a worker reads from the scheduler during the
/// handshake (a challenge, a welcome or a refusal with its reason).
pub(crate) const REPLY_LIMIT: usize = 4096;

/// What a read buffer keeps between frames: a large frame's buffer is given
/// back once that frame is decoded.
pub(crate) const KEEP_CAPACITY: usize = 1 << 20;

/// The first allocation for a frame body; larger bodies grow as their bytes
/// arrive, so a length nobody follows up on costs nothing.
const FIRST_CHUNK: usize = 64 << 10;

/// A message that splits in two when it does not fit a frame, such as a
/// batch of completions.
pub(crate) trait Split: Sized {
    /// Two halves, in order, or the message itself when it holds one item.
    fn split(self) -> Result<(Self, Self), Self>;
}

fn halves<T>(mut v: Vec<T>) -> Result<(Vec<T>, Vec<T>), Vec<T>> {
    if v.len() < 2 {
        return Err(v);
    }
    let tail = v.split_off(v.len() / 2);
    Ok((v, tail))
}

impl Split for ToScheduler {
    fn split(self) -> Result<(Self, Self), Self> {
        fn map<T>(
            v: Vec<T>,
            f: fn(Vec<T>) -> ToScheduler,
        ) -> Result<(ToScheduler, ToScheduler), ToScheduler> {
            halves(v).map(|(a, b)| (f(a), f(b))).map_err(f)
        }
        match self {
            ToScheduler::Started(v) => map(v, ToScheduler::Started),
            ToScheduler::Done(v) => map(v, ToScheduler::Done),
            ToScheduler::Output(v) => map(v, ToScheduler::Output),
            ToScheduler::Log(v) => map(v, ToScheduler::Log),
            ToScheduler::Submit(v) => map(v, ToScheduler::Submit),
            ToScheduler::Handled(v) => map(v, ToScheduler::Handled),
            ToScheduler::Released(v) => map(v, ToScheduler::Released),
            other => Err(other),
        }
    }
}

impl<A> Split for ToWorker<A> {
    fn split(self) -> Result<(Self, Self), Self> {
        match self {
            ToWorker::Run(v) => halves(v)
                .map(|(a, b)| (ToWorker::Run(a), ToWorker::Run(b)))
                .map_err(ToWorker::Run),
            ToWorker::Resolved(v) => halves(v)
                .map(|(a, b)| (ToWorker::Resolved(a), ToWorker::Resolved(b)))
                .map_err(ToWorker::Resolved),
            other => Err(other),
        }
    }
}

/// A message larger than the frame limit on its own, handed back unsent.
#[derive(Debug)]
pub(crate) struct Oversized<M> {
    pub message: M,
    /// Its encoded size in bytes.
    pub size: usize,
}

/// The message for a value that does not fit a frame.
pub(crate) fn too_large(what: &str, size: usize, limit: usize) -> String {
    format!(
        "{what} is {size} bytes encoded, more than the local cluster's frame limit of {limit} bytes"
    )
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn encoded_size<T: Serialize + ?Sized>(value: &T) -> io::Result<usize> {
    postcard::experimental::serialized_size(value)
        .map_err(|e| invalid(format!("unencodable message: {e}")))
}

/// Writes `batch` as one frame; fails, writing nothing, when it does not
/// fit in `limit` bytes.
pub(crate) fn write_frame<T: Serialize>(
    w: &mut impl Write,
    batch: &[T],
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<()> {
    // Measured first, so a frame that cannot be sent is never built.
    let size = encoded_size(batch)?;
    if size > limit {
        return Err(invalid(too_large("a frame", size, limit)));
    }
    let len = u32::try_from(size).map_err(|_| invalid(too_large("a frame", size, limit)))?;
    buf.clear();
    buf.extend_from_slice(&len.to_le_bytes());
    let encoded = postcard::to_extend(batch, std::mem::take(buf))
        .map_err(|e| invalid(format!("unencodable message: {e}")))?;
    *buf = encoded;
    let written = w.write_all(buf);
    shrink(buf);
    written
}

/// Writes `batch` in as many frames of at most `limit` bytes as it takes,
/// in order, splitting batches and [`Split`] messages. Messages that do not
/// fit even alone are left out and returned, for the caller to answer.
pub(crate) fn write_batch<M: Serialize + Split>(
    w: &mut impl Write,
    batch: Vec<M>,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<Vec<Oversized<M>>> {
    let mut refused = Vec::new();
    write_split(w, batch, buf, limit, &mut refused)?;
    Ok(refused)
}

fn write_split<M: Serialize + Split>(
    w: &mut impl Write,
    mut batch: Vec<M>,
    buf: &mut Vec<u8>,
    limit: usize,
    refused: &mut Vec<Oversized<M>>,
) -> io::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let size = encoded_size(&batch)?;
    if size <= limit {
        return write_frame(w, &batch, buf, limit);
    }
    if batch.len() > 1 {
        let tail = batch.split_off(batch.len() / 2);
        write_split(w, batch, buf, limit, refused)?;
        return write_split(w, tail, buf, limit, refused);
    }
    let Some(message) = batch.pop() else {
        return Ok(());
    };
    match message.split() {
        Ok((a, b)) => {
            write_split(w, vec![a], buf, limit, refused)?;
            write_split(w, vec![b], buf, limit, refused)
        }
        Err(message) => {
            let size = encoded_size(&message)?;
            refused.push(Oversized { message, size });
            Ok(())
        }
    }
}

/// Reads one frame's body into `buf`. `Ok(false)` at a clean end of stream
/// before a frame; a length over `limit` is refused before anything is
/// allocated, and a body grows only as its bytes arrive.
pub(crate) fn read_body(r: &mut impl Read, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(invalid(format!(
            "a frame of {len} bytes is larger than the limit of {limit} bytes"
        )));
    }
    buf.clear();
    while buf.len() < len {
        let want = len.min(FIRST_CHUNK.max(buf.len() * 2));
        let start = buf.len();
        buf.reserve_exact(want - start);
        buf.resize(want, 0);
        r.read_exact(&mut buf[start..]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(format!(
                    "the connection ended inside a frame of {len} bytes"
                ))
            } else {
                e
            }
        })?;
    }
    Ok(true)
}

/// Gives back a large frame's memory.
pub(crate) fn shrink(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_CAPACITY {
        buf.clear();
        buf.shrink_to(KEEP_CAPACITY);
    }
}

/// Reads one frame of at most `limit` bytes. `Ok(None)` at a clean end of
/// stream.
pub(crate) fn read_frame<T: DeserializeOwned>(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<Option<Vec<T>>> {
    if !read_body(r, buf, limit)? {
        return Ok(None);
    }
    let decoded = postcard::from_bytes(buf)
        .map(Some)
        .map_err(|e| invalid(format!("undecodable frame: {e}")));
    shrink(buf);
    decoded
}

/// Reads a frame of at most `limit` bytes that holds exactly one message,
/// decoded as `T` (a message type of one variant, during the handshake):
/// unlike a batch, nothing in it can make the decoder reserve room for
/// elements that never come.
pub(crate) fn read_one<T: DeserializeOwned>(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<Option<T>> {
    if !read_body(r, buf, limit)? {
        return Ok(None);
    }
    let decoded = decode_one(buf);
    shrink(buf);
    decoded.map(Some)
}

/// Decodes a batch of exactly one message.
pub(crate) fn decode_one<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    let (n, rest) = postcard::take_from_bytes::<usize>(body)
        .map_err(|e| invalid(format!("undecodable frame: {e}")))?;
    if n != 1 {
        return Err(invalid(format!("expected one message, got {n}")));
    }
    let (message, rest) = postcard::take_from_bytes::<T>(rest)
        .map_err(|e| invalid(format!("undecodable frame: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("trailing bytes after the message"));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::wire::{Completion, Start, ToWorker};

    fn done(id: u64, len: usize) -> Completion {
        Completion {
            id,
            result: Ok(crate::local::store::Payload::Inline(
                serde_bytes::ByteBuf::from(vec![id as u8; len]),
            )),
            duration_us: 5,
        }
    }

    #[test]
    fn frames_round_trip_batches() {
        let batch = vec![
            ToScheduler::Started(vec![Start {
                id: 1,
                thread: 0,
                at_us: 5,
            }]),
            ToScheduler::Done(vec![done(1, 100)]),
        ];
        let mut wire = Vec::new();
        let mut buf = Vec::new();
        write_frame(&mut wire, &batch, &mut buf, FRAME_LIMIT).unwrap();
        write_frame(&mut wire, &batch, &mut buf, FRAME_LIMIT).unwrap();
        let mut r = &wire[..];
        for _ in 0..2 {
            let got: Vec<ToScheduler> = read_frame(&mut r, &mut buf, FRAME_LIMIT).unwrap().unwrap();
            assert_eq!(got.len(), 2);
        }
        assert!(read_frame::<ToScheduler>(&mut r, &mut buf, FRAME_LIMIT)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_batch_larger_than_the_limit_is_split_in_order_into_frames_that_fit() {
        let limit = 10_000;
        // 40 completions of 1,000 bytes: four times the limit in one message.
        let batch = vec![
            ToScheduler::Handled(vec![7]),
            ToScheduler::Done((0..40).map(|i| done(i, 1000)).collect()),
        ];
        let mut wire = Vec::new();
        let mut buf = Vec::new();
        let refused = write_batch(&mut wire, batch, &mut buf, limit).unwrap();
        assert!(refused.is_empty());
        let mut r = &wire[..];
        let mut ids = Vec::new();
        let mut frames = 0;
        while let Some(batch) = read_frame::<ToScheduler>(&mut r, &mut buf, limit).unwrap() {
            frames += 1;
            for m in batch {
                match m {
                    ToScheduler::Done(v) => ids.extend(v.iter().map(|c| c.id)),
                    ToScheduler::Handled(v) => assert_eq!(v, [7]),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert!(frames >= 4, "{frames} frames");
        assert_eq!(ids, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_message_that_cannot_fit_alone_comes_back_with_its_size_and_the_rest_is_sent() {
        let limit = 10_000;
        let batch = vec![ToScheduler::Done(vec![
            done(1, 10),
            done(2, 20_000),
            done(3, 10),
        ])];
        let mut wire = Vec::new();
        let mut buf = Vec::new();
        let refused = write_batch(&mut wire, batch, &mut buf, limit).unwrap();
        assert_eq!(refused.len(), 1);
        let ToScheduler::Done(v) = &refused[0].message else {
            panic!("{:?}", refused[0].message)
        };
        assert_eq!(v[0].id, 2);
        assert!(refused[0].size > 20_000);
        let text = too_large("the result", refused[0].size, limit);
        assert!(
            text.contains(&refused[0].size.to_string()) && text.contains("10000"),
            "{text}"
        );
        let mut r = &wire[..];
        let mut ids = Vec::new();
        while let Some(batch) = read_frame::<ToScheduler>(&mut r, &mut buf, limit).unwrap() {
            for m in batch {
                if let ToScheduler::Done(v) = m {
                    ids.extend(v.iter().map(|c| c.id));
                }
            }
        }
        assert_eq!(ids, [1, 3]);
    }

    #[test]
    fn a_frame_over_the_limit_is_not_written() {
        let mut wire = Vec::new();
        let mut buf = Vec::new();
        let e = write_frame(
            &mut wire,
            &[ToScheduler::Done(vec![done(1, 2000)])],
            &mut buf,
            1000,
        )
        .unwrap_err();
        assert!(e.to_string().contains("1000"), "{e}");
        assert!(wire.is_empty());
    }

    #[test]
    fn a_huge_length_is_refused_without_allocating() {
        let wire = u32::MAX.to_le_bytes();
        let mut buf = Vec::new();
        let e = read_frame::<ToWorker>(&mut &wire[..], &mut buf, FRAME_LIMIT).unwrap_err();
        assert!(e.to_string().contains("4294967295"), "{e}");
        assert_eq!(buf.capacity(), 0);
    }

    #[test]
    fn a_length_without_its_bytes_allocates_only_what_arrived() {
        let mut wire = (200u32 << 20).to_le_bytes().to_vec();
        wire.extend_from_slice(&[0; 10]);
        let mut buf = Vec::new();
        assert!(read_frame::<ToWorker>(&mut &wire[..], &mut buf, FRAME_LIMIT).is_err());
        assert!(buf.capacity() <= FIRST_CHUNK, "{}", buf.capacity());
    }

    #[test]
    fn the_read_buffer_shrinks_back_after_a_large_frame() {
        let mut wire = Vec::new();
        let mut buf = Vec::new();
        write_frame(
            &mut wire,
            &[ToScheduler::Done(vec![done(1, 8 << 20)])],
            &mut buf,
            FRAME_LIMIT,
        )
        .unwrap();
        assert!(
            buf.capacity() <= KEEP_CAPACITY,
            "writer kept {}",
            buf.capacity()
        );
        let got = read_frame::<ToScheduler>(&mut &wire[..], &mut buf, FRAME_LIMIT).unwrap();
        assert!(got.is_some());
        assert!(
            buf.capacity() <= KEEP_CAPACITY,
            "reader kept {}",
            buf.capacity()
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut wire = 5u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[0xff; 5]);
        let mut buf = Vec::new();
        assert!(read_frame::<ToWorker>(&mut &wire[..], &mut buf, FRAME_LIMIT).is_err());
    }
}

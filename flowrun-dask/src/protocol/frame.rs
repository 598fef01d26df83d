//! Framing: how one message (a list of byte frames) travels over TCP.
//!
//! Layout, all integers u64 little-endian (Dask packs them with the native
//! `struct` format `Q`, which is little-endian on every platform it ships for):
//!
//! ```text
//! N                           byte count of the block that follows
//!   nframes                   \
//!   len[0] .. len[nframes-1]   | the block
//!   frame[0] .. frame[k-1]    /
//! frame[k] .. frame[nframes-1]  only when k < nframes; not counted in N
//! ```
//!
//! Python writers move large buffers out of the block, so the reader must
//! accept frames after it. Our writer keeps everything inside the block, which
//! every supported release reads.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::ProtocolError;

/// A bound on the frame count, so that a corrupt header cannot make us
/// allocate a huge length table. Real messages carry two frames per gathered
/// key; this allows millions of keys.
const MAX_FRAMES: u64 = 1 << 24;

/// How much to reserve up front for a frame whose length came off the wire.
/// Larger frames grow while they arrive, so a bogus length costs nothing until
/// the data is actually there.
const PREALLOC_LIMIT: u64 = 1 << 20;

/// Encodes the length header (`N`, `nframes`, the lengths) of a message whose
/// frames all go inside the block.
pub(crate) fn encode_header(frames: &[Vec<u8>]) -> Vec<u8> {
    let payload: usize = frames.iter().map(Vec::len).sum();
    let block_len = 8 + 8 * frames.len() + payload;
    let mut header = Vec::with_capacity(16 + 8 * frames.len());
    header.extend_from_slice(&(block_len as u64).to_le_bytes());
    header.extend_from_slice(&(frames.len() as u64).to_le_bytes());
    for frame in frames {
        header.extend_from_slice(&(frame.len() as u64).to_le_bytes());
    }
    header
}

/// Writes one message and flushes it.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    frames: &[Vec<u8>],
) -> std::io::Result<()> {
    w.write_all(&encode_header(frames)).await?;
    for frame in frames {
        w.write_all(frame).await?;
    }
    w.flush().await
}

/// Reads exactly `len` bytes, growing the buffer as data arrives rather than
/// trusting `len` for the allocation.
async fn read_len<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> Result<Vec<u8>, ProtocolError> {
    let mut buf = Vec::with_capacity(len.min(PREALLOC_LIMIT) as usize);
    let got = (&mut *r)
        .take(len)
        .read_to_end(&mut buf)
        .await
        .map_err(ProtocolError::from_read)?;
    if (got as u64) < len {
        return Err(ProtocolError::Closed {
            reason: format!("the scheduler closed the connection in the middle of a message ({got} of {len} bytes)"),
        });
    }
    Ok(buf)
}

fn u64_at(block: &[u8], pos: usize) -> Option<u64> {
    let bytes = block.get(pos..pos.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Splits the block into the frame lengths and the frames that lie inside it.
fn parse_block(block: &[u8]) -> Result<(Vec<u64>, Vec<Vec<u8>>), ProtocolError> {
    let malformed = |what: &str| ProtocolError::Malformed(format!("frame header: {what}"));
    let nframes = u64_at(block, 0).ok_or_else(|| malformed("block shorter than 8 bytes"))?;
    if nframes > MAX_FRAMES {
        return Err(malformed(&format!("{nframes} frames announced")));
    }
    let table_end = 8 + 8 * nframes as usize;
    if table_end > block.len() {
        return Err(malformed("length table longer than the block"));
    }
    let lengths: Vec<u64> = (0..nframes as usize)
        .map(|i| u64_at(block, 8 + 8 * i).unwrap_or(0))
        .collect();
    let mut frames = Vec::with_capacity(lengths.len());
    let mut pos = table_end;
    for &len in &lengths {
        if pos == block.len() {
            break;
        }
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| pos.checked_add(len))
            .filter(|&end| end <= block.len())
            .ok_or_else(|| malformed("block does not end on a frame boundary"))?;
        frames.push(block[pos..end].to_vec());
        pos = end;
    }
    Ok((lengths, frames))
}

/// Reads one message: the frames inside the block, then any that follow it.
pub(crate) async fn read_frames<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut n = [0u8; 8];
    r.read_exact(&mut n)
        .await
        .map_err(ProtocolError::from_read)?;
    let block = read_len(r, u64::from_le_bytes(n)).await?;
    let (lengths, mut frames) = parse_block(&block)?;
    drop(block);
    for &len in &lengths[frames.len()..] {
        frames.push(read_len(r, len).await?);
    }
    Ok(frames)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The handshake message exactly as `wire_examples_output.txt` shows it.
    const HANDSHAKE_WIRE: &str = "3a00000000000000 0100000000000000 2a00000000000000 \
        83ab636f6d7072657373696f6ec0a6707974686f6e93030b07af7069636b6c652d70726f746f636f6c05";

    /// The gather request from `wire_examples_output.txt`.
    const GATHER_WIRE: &str = "2c00000000000000 0100000000000000 1c00000000000000 \
        83a26f70a6676174686572a46b65797391a36b2d41a57265706c79c3";

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    async fn write_to_vec(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frames(&mut out, frames).await.unwrap();
        out
    }

    #[tokio::test]
    async fn writes_the_documented_handshake_bytes() {
        let wire = hex(HANDSHAKE_WIRE);
        let body = wire[24..].to_vec();
        assert_eq!(body.len(), 42);
        assert_eq!(write_to_vec(&[body]).await, wire);
        assert_eq!(wire.len(), 66);
    }

    #[tokio::test]
    async fn reads_the_documented_gather_request() {
        let wire = hex(GATHER_WIRE);
        let frames = read_frames(&mut &wire[..]).await.unwrap();
        assert_eq!(frames, vec![wire[24..].to_vec()]);
    }

    #[tokio::test]
    async fn round_trips_several_frames_including_empty_ones() {
        let frames = vec![b"head".to_vec(), Vec::new(), vec![7u8; 1000], Vec::new()];
        let wire = write_to_vec(&frames).await;
        assert_eq!(read_frames(&mut &wire[..]).await.unwrap(), frames);
    }

    #[tokio::test]
    async fn reads_frames_sent_after_the_block() {
        // What a Python writer does with large buffers: only frame 0 is
        // inside the N-counted block, frames 1 and 2 follow it.
        let frames = [b"msg".to_vec(), vec![1u8; 300], b"tail".to_vec()];
        let mut wire = Vec::new();
        let block_len = 8 + 8 * 3 + 3;
        wire.extend_from_slice(&(block_len as u64).to_le_bytes());
        wire.extend_from_slice(&3u64.to_le_bytes());
        for f in &frames {
            wire.extend_from_slice(&(f.len() as u64).to_le_bytes());
        }
        for f in &frames {
            wire.extend_from_slice(f);
        }
        let mut reader = &wire[..];
        assert_eq!(read_frames(&mut reader).await.unwrap(), frames.to_vec());
        assert!(reader.is_empty());
    }

    #[tokio::test]
    async fn two_messages_back_to_back() {
        let mut wire = write_to_vec(&[b"one".to_vec()]).await;
        wire.extend(write_to_vec(&[b"two".to_vec(), b"2".to_vec()]).await);
        let mut reader = &wire[..];
        assert_eq!(
            read_frames(&mut reader).await.unwrap(),
            vec![b"one".to_vec()]
        );
        assert_eq!(
            read_frames(&mut reader).await.unwrap(),
            vec![b"two".to_vec(), b"2".to_vec()]
        );
    }

    #[tokio::test]
    async fn malformed_input_gives_errors_not_panics() {
        let cases: Vec<Vec<u8>> = vec![
            // empty stream: the peer closed
            vec![],
            // N announces more than there is
            hex("ff00000000000000 0100"),
            // block too short for nframes
            hex("0400000000000000 01000000"),
            // absurd frame count
            hex("0800000000000000 ffffffffffffffff"),
            // length table does not fit in the block
            hex("1000000000000000 0200000000000000 0500000000000000"),
            // a frame straddles the block end
            hex("1300000000000000 0100000000000000 0900000000000000 616263"),
            // frame after the block announced as huge, stream ends
            hex("1000000000000000 0100000000000000 ffffffffffffff7f"),
        ];
        for wire in cases {
            let result = read_frames(&mut &wire[..]).await;
            assert!(result.is_err(), "accepted {wire:02x?}");
        }
    }
}

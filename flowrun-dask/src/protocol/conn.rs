//! One connection to the scheduler (TCP, or TLS over TCP): address
//! parsing, the handshake, and request/response calls.

use rmpv::Value;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::error::ProtocolError;
use super::frame::{read_frames, write_frames};
use super::msg::{self, get, get_str, Incoming, OutMessage};

/// A scheduler address, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `tls://` rather than `tcp://`.
    pub tls: bool,
    /// `host:port`, as `TcpStream::connect` takes it.
    pub addr: String,
    /// The host alone.
    pub host: String,
}

/// Parses `tcp://host:port` or `tls://host:port` (no scheme means tcp).
pub(crate) fn parse_address(address: &str) -> Result<Target, ProtocolError> {
    let invalid = |reason: &str| ProtocolError::InvalidAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let (tls, rest) = match address.split_once("://") {
        Some(("tcp", rest)) => (false, rest),
        Some(("tls", rest)) => (true, rest),
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "scheme {scheme:?} is not supported, only tcp:// and tls:// are"
            )))
        }
        None => (false, address),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected host:port"))?;
    if host.is_empty() {
        return Err(invalid("the host is empty"));
    }
    port.parse::<u16>()
        .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
    Ok(Target {
        tls,
        addr: rest.to_string(),
        host: host.to_string(),
    })
}

/// The reading half of a connection, TCP or TLS.
pub(crate) type ReadHalf = BufReader<Box<dyn AsyncRead + Send + Unpin>>;

/// The writing half of a connection, TCP or TLS.
pub(crate) type WriteHalf = BufWriter<Box<dyn AsyncWrite + Send + Unpin>>;

/// The handshake both peers send first. `compression: null` makes sure none
/// of our own connections compress; `pickle-protocol` is required by the
/// peer even though we never receive pickles we did not ask for.
fn handshake() -> OutMessage {
    OutMessage::new(msg::map(vec![
        ("compression", Value::Nil),
        ("python", Value::Array(vec![3.into(), 11.into(), 0.into()])),
        ("pickle-protocol", 5.into()),
    ]))
}

/// An open, handshaken connection.
pub(crate) struct Connection {
    pub(crate) reader: ReadHalf,
    pub(crate) writer: WriteHalf,
}

impl Connection {
    /// Connects (with TLS through `tls` for a `tls://` address) and
    /// exchanges handshakes. Errors name the address.
    pub(crate) async fn open(
        address: &str,
        tls: Option<&TlsConnector>,
    ) -> Result<Connection, ProtocolError> {
        let target = parse_address(address)?;
        let stream = TcpStream::connect(&target.addr)
            .await
            .map_err(|e| ProtocolError::connect(address, e))?;
        // Small request messages must not wait for Nagle's algorithm.
        stream
            .set_nodelay(true)
            .map_err(|e| ProtocolError::connect(address, e))?;
        detect_dead_peers(&stream).map_err(|e| ProtocolError::connect(address, e))?;
        let (read, write): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = if target.tls {
            let tls = tls.ok_or_else(|| {
                ProtocolError::connect(
                    address,
                    "a tls:// address needs TLS settings (Security with the cluster's CA \
                         and a client certificate)",
                )
            })?;
            let stream = tls
                .connect(super::tls::server_name(&target.host), stream)
                .await
                .map_err(|e| {
                    ProtocolError::connect(address, format!("the TLS handshake failed: {e}"))
                })?;
            let (read, write) = tokio::io::split(stream);
            (Box::new(read), Box::new(write))
        } else {
            let (read, write) = stream.into_split();
            (Box::new(read), Box::new(write))
        };
        let mut conn = Connection {
            reader: BufReader::with_capacity(64 * 1024, read),
            writer: BufWriter::with_capacity(64 * 1024, write),
        };
        // Both sides write first and then read; the order does not matter.
        conn.send(handshake(), false)
            .await
            .map_err(|e| ProtocolError::connect(address, e))?;
        let reply = conn
            .receive()
            .await
            .map_err(|e| ProtocolError::connect(address, e))?;
        if get(&reply.body, "compression").is_none()
            || get(&reply.body, "pickle-protocol").is_none()
        {
            return Err(ProtocolError::connect(
                address,
                format!(
                    "not a Dask scheduler (unexpected handshake {})",
                    msg::short(&reply.body)
                ),
            ));
        }
        Ok(conn)
    }

    /// Writes one message (or one batch of stream ops).
    pub(crate) async fn send(
        &mut self,
        message: OutMessage,
        batch: bool,
    ) -> Result<(), ProtocolError> {
        let frames = msg::encode(vec![message], batch)?;
        write_frames(&mut self.writer, &frames).await?;
        Ok(())
    }

    /// Reads one message.
    pub(crate) async fn receive(&mut self) -> Result<Incoming, ProtocolError> {
        Incoming::decode(read_frames(&mut self.reader).await?)
    }

    /// Sends `{"op": op, "reply": true, ...args}` and returns the reply,
    /// turning the scheduler's `uncaught-error` answer into an error.
    pub(crate) async fn call(
        &mut self,
        op: &str,
        args: Vec<(&str, Value)>,
    ) -> Result<Incoming, ProtocolError> {
        let mut fields = vec![("op", Value::from(op)), ("reply", Value::Boolean(true))];
        fields.extend(args);
        self.send(OutMessage::new(msg::map(fields)), false).await?;
        let reply = self.receive().await?;
        if get_str(&reply.body, "status") == Some("uncaught-error") {
            let text = get_str(&reply.body, "exception_text")
                .unwrap_or("(no exception text)")
                .to_string();
            return Err(ProtocolError::Scheduler {
                op: op.to_string(),
                text,
            });
        }
        Ok(reply)
    }

    /// Tells the server this connection is done; errors are irrelevant then.
    pub(crate) async fn close(mut self) {
        let bye = msg::map(vec![("op", "close".into()), ("reply", false.into())]);
        let _ = self.send(OutMessage::new(bye), false).await;
    }
}

/// How long a connection may stay silent before the kernel starts probing
/// it, and how long unanswered probes or unacknowledged data take to end
/// it. A scheduler that vanishes without closing (its host crashed, a
/// firewall dropped the idle flow) then ends the connection within about a
/// minute, and everything waiting on it fails instead of hanging; Dask's
/// own clients get the same from their heartbeats.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;
const UNACKED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn detect_dead_peers(stream: &TcpStream) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket.set_tcp_user_timeout(Some(UNACKED_TIMEOUT))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let addr = |a: &str| parse_address(a).unwrap().addr;
        assert_eq!(addr("tcp://127.0.0.1:8786"), "127.0.0.1:8786");
        assert_eq!(addr("127.0.0.1:8786"), "127.0.0.1:8786");
        assert_eq!(addr("tcp://[::1]:8786/"), "[::1]:8786");
        assert_eq!(addr("tcp://sched.example:1"), "sched.example:1");
        let tls = parse_address("tls://sched.example:8786").unwrap();
        assert!(tls.tls);
        assert_eq!(tls.host, "sched.example");
        assert!(!parse_address("tcp://h:1").unwrap().tls);
        for bad in [
            "tls://h",
            "tcp://h",
            "tcp://:1",
            "tcp://h:99999",
            "ucx://h:1",
            "",
        ] {
            let err = parse_address(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}

//! The error type of the protocol client.

use std::time::Duration;

/// Everything that can go wrong while talking to a Dask scheduler.
///
/// Errors carry the scheduler address or the key they concern, so that a
/// message shown to a user says *where* the problem is without extra context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The address is not of the form `tcp://host:port` or `tls://host:port`.
    #[error("invalid Dask scheduler address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The TCP connection or the handshake failed.
    #[error("cannot connect to the Dask scheduler at {address}: {reason}")]
    Connect {
        /// The scheduler address.
        address: String,
        /// The underlying failure, as text.
        reason: String,
    },

    /// Connecting (TCP, handshake, version check, registration) took longer
    /// than the caller allowed.
    #[error("timed out after {timeout:?} while connecting to the Dask scheduler at {address}")]
    ConnectTimeout {
        /// The scheduler address.
        address: String,
        /// The time limit that was exceeded.
        timeout: Duration,
    },

    /// The scheduler runs a `distributed` release whose `update-graph` message
    /// has a different shape; talking to it would make it drop our stream.
    #[error(
        "the Dask scheduler at {address} runs distributed {found}, \
         but flowrun needs distributed >= {minimum}"
    )]
    UnsupportedVersion {
        /// The scheduler address.
        address: String,
        /// The version the scheduler reported.
        found: String,
        /// The oldest version this client speaks to.
        minimum: String,
    },

    /// The scheduler refused to open a client stream.
    #[error("the Dask scheduler at {address} refused the client: {reason}")]
    Refused {
        /// The scheduler address.
        address: String,
        /// The scheduler's explanation.
        reason: String,
    },

    /// The scheduler answered an RPC with an exception.
    #[error("the Dask scheduler failed to handle {op:?}: {text}")]
    Scheduler {
        /// The RPC operation.
        op: String,
        /// The scheduler's text of the exception.
        text: String,
    },

    /// The connection ended, or the stream was already closed when the
    /// operation was attempted.
    #[error("connection to the Dask scheduler closed: {reason}")]
    Closed {
        /// Why, as far as known.
        reason: String,
    },

    /// A message from the network did not have the expected shape.
    #[error("malformed message from the Dask scheduler: {0}")]
    Malformed(String),

    /// An I/O error on an established connection.
    #[error("I/O error talking to the Dask scheduler: {0}")]
    Io(#[from] std::io::Error),

    /// A task given to `submit` cannot be expressed as a Dask task.
    #[error("invalid task {key:?}: {reason}")]
    InvalidTask {
        /// The task key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// `gather` asked for keys that are not in memory on the cluster
    /// (erred, released, cancelled or unknown).
    #[error("cannot gather keys that are not in memory: {keys:?}")]
    NotInMemory {
        /// The keys the scheduler could not collect.
        keys: Vec<String>,
    },

    /// A gathered result was compressed on the wire, which this client does
    /// not decode (compression is off in Dask's default configuration).
    #[error(
        "result of {key:?} arrived compressed with {compression}; \
         set distributed.comm.compression to false on the cluster"
    )]
    CompressedResult {
        /// The task key.
        key: String,
        /// The compression the frames were sent with.
        compression: String,
    },

    /// A gathered result is not a `bytes` object, so it was not produced by a
    /// subprocess task of this client.
    #[error(
        "result of {key:?} is not bytes (serializer {serializer:?}, type {type_name:?}); \
         only subprocess task outputs can be gathered"
    )]
    UnsupportedResult {
        /// The task key.
        key: String,
        /// The Dask serializer family of the result.
        serializer: String,
        /// The Python type name given in the header, if any.
        type_name: String,
    },
}

impl ProtocolError {
    /// Wraps an I/O error of the connection phase with the address it concerns.
    pub(crate) fn connect(address: &str, err: impl std::fmt::Display) -> Self {
        ProtocolError::Connect {
            address: address.to_string(),
            reason: err.to_string(),
        }
    }

    /// Turns an end-of-file into the `Closed` variant, because for a message
    /// stream a truncated read means the peer went away, not an I/O fault.
    pub(crate) fn from_read(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::Closed {
                reason: "the scheduler closed the connection".to_string(),
            }
        } else {
            ProtocolError::Io(err)
        }
    }
}

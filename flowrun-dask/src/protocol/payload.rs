//! Reading what workers send back through the scheduler: task results
//! (`gather`) and task exceptions (`task-erred`).
//!
//! Both arrive as `Serialized` objects that the scheduler forwards unchanged.
//! The result of `check_output` is `bytes`, which Dask ships with
//! `serializer: "dask", type: "bytes"` and the raw bytes as frames, so no
//! pickle is involved; a large result is a `memoryview` of shared memory,
//! shipped the same way with `type: "memoryview"`. An exception is a pickle carried inside such bytes;
//! it is read symbolically.

use std::fmt;

use rmpv::Value;

use super::error::ProtocolError;
use super::msg::{get, get_str, Serialized};
use super::pickle::{loads, PyObject};

/// A task failure as reported by a worker.
///
/// For a subprocess that exited non-zero, `class` is
/// `subprocess.CalledProcessError` and `returncode`, `stdout` and `stderr`
/// are filled in. A task whose *dependency* failed is reported with the
/// dependency's error (Dask's "blame"), so a whole failed chain shows the
/// root cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskException {
    /// The Python exception class, `module.QualName`.
    pub class: String,
    /// The exception's message, as Python's `str(exc)` would roughly give it.
    pub message: String,
    /// The exit status for a failed subprocess (negative: killed by a signal).
    pub returncode: Option<i64>,
    /// What the subprocess wrote to stdout before failing.
    pub stdout: Vec<u8>,
    /// What the subprocess wrote to stderr.
    pub stderr: Vec<u8>,
}

impl fmt::Display for TaskException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)?;
        if !self.stderr.is_empty() {
            write!(
                f,
                "; stderr: {}",
                String::from_utf8_lossy(&self.stderr).trim_end()
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for TaskException {}

impl TaskException {
    /// An error that stands in for an exception this client could not decode,
    /// so that a failure is never lost because its payload was unreadable.
    pub(crate) fn undecodable(reason: impl fmt::Display) -> Self {
        TaskException {
            class: "<undecodable>".to_string(),
            message: format!("the task failed, but its exception could not be read: {reason}"),
            returncode: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }
}

/// Why a payload could not be turned into bytes.
#[derive(Debug)]
pub(crate) enum PayloadError {
    Compressed(String),
    Unsupported {
        serializer: String,
        type_name: String,
    },
    Malformed(String),
}

impl PayloadError {
    pub(crate) fn for_key(self, key: &str) -> ProtocolError {
        match self {
            PayloadError::Compressed(compression) => ProtocolError::CompressedResult {
                key: key.to_string(),
                compression,
            },
            PayloadError::Unsupported {
                serializer,
                type_name,
            } => ProtocolError::UnsupportedResult {
                key: key.to_string(),
                serializer,
                type_name,
            },
            PayloadError::Malformed(reason) => {
                ProtocolError::Malformed(format!("result of {key:?}: {reason}"))
            }
        }
    }
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Compressed(c) => write!(f, "frames compressed with {c}"),
            PayloadError::Unsupported {
                serializer,
                type_name,
            } => {
                write!(f, "serializer {serializer:?} type {type_name:?}")
            }
            PayloadError::Malformed(reason) => f.write_str(reason),
        }
    }
}

/// Extracts the bytes of a `bytes` object serialized by Dask.
pub(crate) fn decode_bytes(ser: Serialized) -> Result<Vec<u8>, PayloadError> {
    let header = &ser.header;
    // Results forwarded from a worker keep the worker's compression choice;
    // one non-null entry means at least one frame is not the raw bytes.
    if let Some(Value::Array(compression)) = get(header, "compression") {
        if let Some(used) = compression.iter().find(|c| !c.is_nil()) {
            let name = used
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| used.to_string());
            return Err(PayloadError::Compressed(name));
        }
    }
    let serializer = get_str(header, "serializer").unwrap_or("").to_string();
    let type_name = get_str(header, "type").unwrap_or("").to_string();
    if serializer == "error" {
        let text: Vec<u8> = ser.frames.concat();
        return Err(PayloadError::Malformed(format!(
            "the worker could not serialize it: {}",
            String::from_utf8_lossy(&text)
        )));
    }
    if serializer != "dask"
        || !matches!(
            type_name.as_str(),
            "bytes" | "builtins.bytes" | "bytearray" | "memoryview"
        )
    {
        return Err(PayloadError::Unsupported {
            serializer,
            type_name,
        });
    }
    // Frames above the shard size are split; shards of one frame follow each
    // other, so for a single bytes object the concatenation of all frames is
    // the value. Check the split bookkeeping rather than trust it blindly.
    if let Some(Value::Array(counts)) = get(header, "split-num-sub-frames") {
        let total: u64 = counts.iter().filter_map(Value::as_u64).sum();
        if total != ser.frames.len() as u64 {
            return Err(PayloadError::Malformed(format!(
                "split-num-sub-frames sums to {total}, but {} frames arrived",
                ser.frames.len()
            )));
        }
    }
    Ok(ser.frames.concat())
}

/// Reads the exception of a `task-erred` message.
pub(crate) fn decode_exception(ser: Serialized) -> TaskException {
    // The worker pickles the exception and ships the pickle as dask bytes.
    let pickle = match get_str(&ser.header, "serializer") {
        Some("pickle") => Ok(ser.frames.concat()),
        _ => decode_bytes(ser),
    };
    match pickle {
        Ok(pickle) => match loads(&pickle) {
            Ok(tree) => describe_exception(&tree),
            Err(e) => TaskException::undecodable(e),
        },
        Err(e) => TaskException::undecodable(e),
    }
}

fn global_name(object: &PyObject) -> Option<String> {
    match object {
        PyObject::Global { module, name } => Some(format!("{module}.{name}")),
        _ => None,
    }
}

/// Interprets an unpickled exception tree.
///
/// `distributed` pickles exceptions through tblib, which gives
/// `unpickle_exception_with_attrs(cls, {"__dict__": ..., "args": ...}, ...)`
/// wrapped in a BUILD; without tblib it is the plain `cls(*args)` reduction
/// plus BUILD with the instance `__dict__`.
pub(crate) fn describe_exception(tree: &PyObject) -> TaskException {
    let mut node = tree;
    let mut state: Option<&PyObject> = None;
    while let PyObject::Build { obj, state: s } = node {
        state = state.or(Some(s));
        node = obj;
    }
    let (class, args, attrs) = match node {
        PyObject::Call { func, args } => match global_name(func) {
            Some(f) if f.contains("unpickle_exception") && !args.is_empty() => {
                let class = global_name(&args[0]).unwrap_or_else(|| args[0].repr());
                let packed = args.get(1);
                let args = packed.and_then(|p| p.get("args")).and_then(PyObject::items);
                let attrs = packed.and_then(|p| p.get("__dict__")).or(state);
                (class, args.unwrap_or(&[]), attrs)
            }
            Some(class) => (class, args.as_slice(), state),
            None => (func.repr(), args.as_slice(), state),
        },
        PyObject::New { cls, args, .. } => (
            global_name(cls).unwrap_or_else(|| cls.repr()),
            args.as_slice(),
            state,
        ),
        other => ("<unknown>".to_string(), other.items().unwrap_or(&[]), None),
    };
    let attr = |name: &str| attrs.and_then(|a| a.get(name));
    let bytes_attr = |name: &str| match attr(name) {
        Some(PyObject::Bytes(b)) => b.clone(),
        Some(PyObject::Str(s)) => s.clone().into_bytes(),
        _ => Vec::new(),
    };
    let returncode = match attr("returncode") {
        Some(PyObject::Int(n)) => Some(*n),
        _ => None,
    };
    let message = match (class.as_str(), returncode) {
        ("subprocess.CalledProcessError", Some(code)) => {
            let cmd = attr("cmd")
                .or(args.get(1))
                .map(PyObject::repr)
                .unwrap_or_default();
            if code < 0 {
                format!("Command '{cmd}' died with signal {}.", -code)
            } else {
                format!("Command '{cmd}' returned non-zero exit status {code}.")
            }
        }
        _ => match args {
            [] => String::new(),
            [PyObject::Str(text)] => text.clone(),
            [single] => single.repr(),
            _ => PyObject::Tuple(args.to_vec()).repr(),
        },
    };
    TaskException {
        class,
        message,
        returncode,
        stdout: bytes_attr("output"),
        stderr: bytes_attr("stderr"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::tests::hex;
    use super::super::msg::map;
    use super::*;

    /// `distributed.core.error_message(e)["exception"]` for the exception of
    /// `check_output([b"sh", b"-c", b"echo out; echo err >&2; exit 3"],
    /// stderr=PIPE, input=b"")`, pickled by distributed 2026.8.0 with tblib:
    /// the exact bytes a worker puts in `task-erred`.
    const CALLED_PROCESS_ERROR: &str = "\
        800595a7030000000000008c1674626c69622e7069636b6c696e675f737570706f7274948c1d756e\
        7069636b6c655f657863657074696f6e5f776974685f6174747273949394288c0a73756270726f63\
        657373948c1243616c6c656450726f636573734572726f729493947d94288c085f5f646963745f5f\
        947d94288c0a72657475726e636f6465944b038c03636d64945d9428430273689443022d6394431e\
        6563686f206f75743b206563686f20657272203e26323b2065786974203394658c066f7574707574\
        9443046f75740a948c067374646572729443046572720a94758c0461726773944b03680b8694754e\
        68008c12756e7069636b6c655f74726163656261636b9493948c0574626c6962948c054672616d65\
        9493942981947d94288c08665f6c6f63616c73947d948c09665f676c6f62616c73947d94288c085f\
        5f6e616d655f5f948c085f5f6d61696e5f5f948c085f5f66696c655f5f948c073c737464696e3e94\
        758c06665f636f64659468178c04436f64659493942981947d94288c0b636f5f66696c656e616d65\
        9468238c07636f5f6e616d65948c083c6d6f64756c653e948c0b636f5f617267636f756e74944b00\
        8c11636f5f6b776f6e6c79617267636f756e74944b008c0b636f5f7661726e616d657394298c0a63\
        6f5f6e6c6f63616c73944b008c0c636f5f737461636b73697a65944b008c08636f5f666c61677394\
        4b408c0e636f5f66697273746c696e656e6f944b0075628c08665f6c696e656e6f944b0675624b04\
        68178c0954726163656261636b9493942981947d94288c0874625f6672616d659468192981947d94\
        28681c7d94681e7d94286820680368228c392f726f6f742f2e7079656e762f76657273696f6e732f\
        332e31312e372f6c69622f707974686f6e332e31312f73756270726f636573732e70799475682468\
        262981947d942868298c392f726f6f742f2e7079656e762f76657273696f6e732f332e31312e372f\
        6c69622f707974686f6e332e31312f73756270726f636573732e707994682a8c0c636865636b5f6f\
        757470757494682c4b00682d4b00682e29682f4b0068304b0068314b4068324b00756268334dd201\
        75628c0974625f6c696e656e6f944dd2018c0774625f6e6578749468352981947d94286838681929\
        81947d9428681c7d94681e7d9428682068036822683d75682468262981947d942868296840682a8c\
        0372756e94682c4b00682d4b00682e29682f4b0068304b0068314b4068324b00756268334d3b0275\
        6268424d3b0275627562879452944e894e29749452946808622e";

    fn dask_bytes(frames: Vec<Vec<u8>>, compression: Value) -> Serialized {
        Serialized {
            header: map(vec![
                ("serializer", "dask".into()),
                ("type", "bytes".into()),
                ("compression", compression),
                (
                    "split-num-sub-frames",
                    Value::Array(vec![(frames.len() as u64).into()]),
                ),
                ("split-offsets", Value::Array(vec![0.into()])),
                ("num-sub-frames", (frames.len() as u64).into()),
            ]),
            frames,
        }
    }

    #[test]
    fn reads_a_real_called_process_error() {
        let pickle = hex(CALLED_PROCESS_ERROR);
        let error = decode_exception(dask_bytes(vec![pickle], Value::Array(vec![Value::Nil])));
        assert_eq!(error.class, "subprocess.CalledProcessError");
        assert_eq!(error.returncode, Some(3));
        assert_eq!(error.stdout, b"out\n");
        assert_eq!(error.stderr, b"err\n");
        assert_eq!(
            error.message,
            "Command '[b'sh', b'-c', b'echo out; echo err >&2; exit 3']' returned non-zero exit status 3."
        );
    }

    #[test]
    fn reads_a_plain_reduced_exception() {
        // RuntimeError('graph broken') as `REDUCE(builtins.RuntimeError, ('graph broken',))`
        let pickle = hex(
            "80048c086275696c74696e738c0c52756e74696d654572726f72938c0c677261706820\
                          62726f6b656e85522e",
        );
        let error = decode_exception(dask_bytes(vec![pickle], Value::Nil));
        assert_eq!(error.class, "builtins.RuntimeError");
        assert_eq!(error.message, "graph broken");
        assert_eq!(error.returncode, None);
    }

    #[test]
    fn garbage_exceptions_still_give_an_error() {
        let error = decode_exception(dask_bytes(vec![b"\x80\x05garbage".to_vec()], Value::Nil));
        assert_eq!(error.class, "<undecodable>");
        let error = decode_exception(Serialized {
            header: map(vec![("serializer", "msgpack".into())]),
            frames: vec![],
        });
        assert_eq!(error.class, "<undecodable>");
    }

    #[test]
    fn bytes_results_are_concatenated_shards() {
        let ser = dask_bytes(
            vec![b"ab".to_vec(), b"cd".to_vec()],
            Value::Array(vec![Value::Nil, Value::Nil]),
        );
        assert_eq!(decode_bytes(ser).unwrap(), b"abcd");
    }

    #[test]
    fn a_memoryview_result_is_its_bytes() {
        // A large result is a worker's memoryview of shared memory, which
        // Dask ships as `type: "memoryview"` with the raw bytes as frames.
        let mut ser = dask_bytes(vec![b"large".to_vec()], Value::Array(vec![Value::Nil]));
        ser.header = map(vec![
            ("serializer", "dask".into()),
            ("type", "memoryview".into()),
            (
                "sub-header",
                map(vec![
                    ("format", "B".into()),
                    ("shape", Value::Array(vec![5.into()])),
                ]),
            ),
        ]);
        assert_eq!(decode_bytes(ser).unwrap(), b"large");
    }

    #[test]
    fn other_results_are_clear_errors() {
        let lz4 = dask_bytes(vec![b"x".to_vec()], Value::Array(vec!["lz4".into()]));
        let err = decode_bytes(lz4).unwrap_err().for_key("k");
        assert!(err.to_string().contains("lz4"), "{err}");

        let pickled_int = Serialized {
            header: map(vec![("serializer", "pickle".into())]),
            frames: vec![b"\x80\x05K\x42.".to_vec()],
        };
        let err = decode_bytes(pickled_int).unwrap_err().for_key("k");
        assert!(
            matches!(err, ProtocolError::UnsupportedResult { ref serializer, .. } if serializer == "pickle")
        );

        let mut bad_split = dask_bytes(vec![b"x".to_vec()], Value::Nil);
        bad_split.frames.push(b"y".to_vec());
        assert!(decode_bytes(bad_split).is_err());
    }
}

//! Result storage: one file per key in a folder, written atomically
//! (a temporary file renamed into place), so that a reader in any process
//! sees a whole file or none, even when the writer was killed half way.
//!
//! A file is `FRR2`, the expiry time (milliseconds since the Unix epoch,
//! 0 for never, little endian), the time it was written (likewise), the id
//! of the process that wrote it (u32), the BLAKE3 hash of the cache key it was
//! written under (zeros for none), the BLAKE3 hash of the payload, the
//! result's version (16 bytes chosen when the result was computed: a run
//! whose key hashes this result hashes its key and this version), and the
//! payload: the result in the task's codec. A file whose payload hash does
//! not match is corrupt and never read as a hit; a file written under
//! another cache key (one a `result_storage_key` template named) is not a
//! hit either. `FRR1` files (without the version) are still read; their
//! payload hash stands for the version.
//!
//! A result written under a cache key also leaves a record,
//! `.stored-keys/<file>` (on Unix a symbolic link whose target is 128 bits
//! of the key's hash), so that a lookup that finds no file can tell a result deleted
//! under its key from one never stored.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 4] = b"FRR2";
const MAGIC_V1: &[u8; 4] = b"FRR1";
/// The header of an `FRR1` file, which `FRR2` extends.
const HEADER_V1: usize = 4 + 8 + 8 + 4 + 32 + 32;
const HEADER: usize = HEADER_V1 + 16;
const EXPIRES: std::ops::Range<usize> = 4..12;
const WRITTEN: std::ops::Range<usize> = 12..20;
const PID: std::ops::Range<usize> = 20..24;
const KEY: std::ops::Range<usize> = 24..56;
const SUM: std::ops::Range<usize> = 56..88;
const VERSION: std::ops::Range<usize> = 88..104;

/// The folder (inside the storage folder) of the records of the keys
/// results were written under.
pub(crate) const RECORDS: &str = ".stored-keys";

/// The version of a stored result: chosen at random when the result was
/// computed, stored with it and read back on a hit.
pub(crate) type Version = [u8; 16];

/// A version for a result about to be computed.
pub(crate) fn fresh_version() -> Version {
    fastrand::u128(..).to_le_bytes()
}

/// A folder that holds persisted results, one file per key.
///
/// ```
/// use flowrun_core::cache::{Lookup, ResultStorage};
/// let dir = std::env::temp_dir().join(format!("flowrun-doc-storage-{}", std::process::id()));
/// let storage = ResultStorage::new(&dir);
/// storage.write("answer", b"42", None).unwrap();
/// assert!(matches!(storage.read("answer"), Lookup::Hit(b) if &b[..] == b"42"));
/// assert!(matches!(storage.read("question"), Lookup::Missing));
/// assert_eq!(storage.info("answer").unwrap().writer_pid, std::process::id());
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ResultStorage {
    dir: Arc<Path>,
}

/// What [`ResultStorage::read`] found under a key.
#[derive(Debug)]
pub enum Lookup {
    /// A whole, unexpired result.
    Hit(bytes::Bytes),
    /// Nothing is stored under the key.
    Missing,
    /// A result written under another cache key.
    OtherKey,
    /// A result whose expiration has passed.
    Expired,
    /// A file that is not a whole result (truncated, overwritten, not
    /// written by flowrun), or that could not be read; the text says why.
    Unreadable(String),
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ResultStorage {
    /// Storage in the folder `dir` (created on the first write).
    pub fn new(dir: impl AsRef<Path>) -> ResultStorage {
        ResultStorage {
            dir: Arc::from(dir.as_ref()),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file that holds the result stored under `key`.
    pub fn file(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Reads the result stored under `key`.
    pub fn read(&self, key: &str) -> Lookup {
        self.read_keyed(key, None).0
    }

    /// Reads the result in `file`, a hit only if it was written under
    /// `cache_key` (when given); on a hit, also its version.
    pub(crate) fn read_keyed(&self, key: &str, cache_key: Option<&str>) -> (Lookup, Version) {
        let path = self.file(key);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return (Lookup::Missing, [0; 16])
            }
            Err(e) => {
                return (
                    Lookup::Unreadable(format!("{}: {e}", path.display())),
                    [0; 16],
                )
            }
        };
        let header = match data.get(..4) {
            Some(m) if m == MAGIC && data.len() >= HEADER => HEADER,
            Some(m) if m == MAGIC_V1 && data.len() >= HEADER_V1 => HEADER_V1,
            _ => {
                return (
                    Lookup::Unreadable(format!(
                        "{} is not a flowrun result file (bad header)",
                        path.display()
                    )),
                    [0; 16],
                )
            }
        };
        let expires = u64_at(&data, EXPIRES);
        let payload = &data[header..];
        if blake3::hash(payload).as_bytes() != &data[SUM] {
            return (
                Lookup::Unreadable(format!(
                    "{} is corrupt (its checksum does not match its contents)",
                    path.display()
                )),
                [0; 16],
            );
        }
        if cache_key.is_some_and(|k| key_hash(Some(k)) != data[KEY]) {
            return (Lookup::OtherKey, [0; 16]);
        }
        if expires != 0 && now_ms() >= expires {
            return (Lookup::Expired, [0; 16]);
        }
        let mut version = [0u8; 16];
        if header == HEADER {
            version.copy_from_slice(&data[VERSION]);
        } else {
            // An `FRR1` file: its payload's hash identifies the value.
            version.copy_from_slice(&data[SUM][..16]);
        }
        let mut data = bytes::Bytes::from(data);
        (Lookup::Hit(data.split_off(header)), version)
    }

    /// Whether a result was written to `file` under `cache_key` (its record
    /// says so), whether or not the file is still there.
    pub(crate) fn was_stored(&self, file: &str, cache_key: &str) -> bool {
        read_record(&self.record(file)).is_some_and(|k| k == record_text(cache_key))
    }

    fn record(&self, file: &str) -> PathBuf {
        self.dir.join(RECORDS).join(file)
    }

    /// Stores `payload` under `key`, replacing what was there; it expires
    /// `expiration` from now (never when `None`). The file appears whole
    /// or not at all.
    pub fn write(
        &self,
        key: &str,
        payload: &[u8],
        expiration: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.write_keyed(key, None, [0; 16], payload, expiration)
    }

    /// [`write`](ResultStorage::write), recording the cache key the
    /// result is stored under (in the file, and in a record beside it)
    /// and the result's version.
    pub(crate) fn write_keyed(
        &self,
        key: &str,
        cache_key: Option<&str>,
        version: Version,
        payload: &[u8],
        expiration: Option<Duration>,
    ) -> Result<(), StorageError> {
        let err = |source: std::io::Error, path: &Path| StorageError {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| err(e, &self.dir))?;
        let expires = match expiration {
            None => 0,
            Some(d) => now_ms()
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64)
                .max(1),
        };
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            let mut header = [0u8; HEADER];
            header[..4].copy_from_slice(MAGIC);
            header[EXPIRES].copy_from_slice(&expires.to_le_bytes());
            header[WRITTEN].copy_from_slice(&now_ms().to_le_bytes());
            header[PID].copy_from_slice(&std::process::id().to_le_bytes());
            header[KEY].copy_from_slice(&key_hash(cache_key));
            header[SUM].copy_from_slice(blake3::hash(payload).as_bytes());
            header[VERSION].copy_from_slice(&version);
            f.write_all(&header)?;
            f.write_all(payload)?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e, &tmp));
        }
        let target = self.file(key);
        std::fs::rename(&tmp, &target).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e, &target)
        })?;
        if let Some(k) = cache_key {
            // Written after the result: a record never names a result that
            // was not stored. The result is stored either way: a record
            // that cannot be written only means a later deletion of the
            // file goes without its warning.
            let record = self.record(key);
            let k = &record_text(k);
            match write_record(&record, k) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && std::fs::create_dir_all(self.dir.join(RECORDS)).is_ok() =>
                {
                    let _ = write_record(&record, k);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// When and by which process the result under `key` was written, and
    /// when it expires; `None` when there is no whole result file.
    pub fn info(&self, key: &str) -> Option<ResultInfo> {
        // The fields read here are where both formats keep them.
        let mut header = [0u8; HEADER_V1];
        let mut f = std::fs::File::open(self.file(key)).ok()?;
        std::io::Read::read_exact(&mut f, &mut header).ok()?;
        if &header[..4] != MAGIC && &header[..4] != MAGIC_V1 {
            return None;
        }
        let ms = |r| UNIX_EPOCH + Duration::from_millis(u64_at(&header, r));
        let expires = u64_at(&header, EXPIRES);
        let mut pid = [0u8; 4];
        pid.copy_from_slice(&header[PID]);
        Some(ResultInfo {
            written: ms(WRITTEN),
            writer_pid: u32::from_le_bytes(pid),
            expires: (expires != 0).then(|| ms(EXPIRES)),
        })
    }

    /// Deletes the result stored under `key` (and the record of the cache
    /// key it was stored under, so a later lookup is a plain miss);
    /// `Ok(false)` if there was none.
    pub fn remove(&self, key: &str) -> Result<bool, StorageError> {
        let record = self.record(key);
        match std::fs::remove_file(&record) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StorageError {
                    path: record,
                    source,
                })
            }
        }
        let path = self.file(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StorageError { path, source }),
        }
    }
}

/// What a record holds for `cache_key`: 128 bits of its hash, in 32 hex
/// digits (short enough for a symbolic link's target to live in its inode).
fn record_text(cache_key: &str) -> String {
    blake3::hash(cache_key.as_bytes()).to_hex()[..32].to_owned()
}

/// Writes the record `text` at `path`. On Unix a symbolic link whose
/// target is the text: one call, and it appears whole or not at all.
/// Elsewhere a small file (one cut short names no key: a plain miss).
#[cfg(unix)]
fn write_record(path: &Path, text: &str) -> std::io::Result<()> {
    match std::os::unix::fs::symlink(text, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if read_record(path).as_deref() == Some(text) {
                return Ok(());
            }
            // Another key's record (a `result_storage_key` file written
            // over): replaced. A writer in between wins; either record
            // names a key the file was written under.
            std::fs::remove_file(path)?;
            match std::os::unix::fs::symlink(text, path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                other => other,
            }
        }
        other => other,
    }
}

#[cfg(not(unix))]
fn write_record(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// The text of the record at `path`, if there is a whole one.
#[cfg(unix)]
fn read_record(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .into_os_string()
        .into_string()
        .ok()
}

#[cfg(not(unix))]
fn read_record(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn u64_at(data: &[u8], range: std::ops::Range<usize>) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[range]);
    u64::from_le_bytes(b)
}

fn key_hash(cache_key: Option<&str>) -> [u8; 32] {
    cache_key.map_or([0; 32], |k| *blake3::hash(k.as_bytes()).as_bytes())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl fmt::Debug for ResultStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ResultStorage").field(&self.dir).finish()
    }
}

/// The metadata of a stored result (see [`ResultStorage::info`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultInfo {
    /// When it was written.
    pub written: SystemTime,
    /// The id of the process that wrote it (a worker's, for a task that
    /// ran on the local cluster).
    pub writer_pid: u32,
    /// When it expires, if ever.
    pub expires: Option<SystemTime>,
}

/// A result could not be written.
#[derive(Debug, thiserror::Error)]
#[error("could not write {}: {source}", path.display())]
pub struct StorageError {
    /// The file or folder that could not be written.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> ResultStorage {
        let dir = std::env::temp_dir().join(format!(
            "flowrun-storage-{name}-{}-{}",
            std::process::id(),
            fresh_version()[0]
        ));
        ResultStorage::new(dir)
    }

    #[test]
    fn a_result_s_version_is_read_back_with_it() {
        let s = scratch("version");
        let v = fresh_version();
        s.write_keyed("k", Some("k"), v, b"payload", None).unwrap();
        let (found, read) = s.read_keyed("k", Some("k"));
        assert!(matches!(found, Lookup::Hit(b) if &b[..] == b"payload"));
        assert_eq!(read, v);
        assert_ne!(fresh_version(), v, "each computed result gets its own");
        std::fs::remove_dir_all(s.path()).unwrap();
    }

    #[test]
    fn the_record_names_the_last_key_a_file_was_written_under() {
        let s = scratch("records");
        assert!(!s.was_stored("f", "k1"), "nothing written yet");
        s.write_keyed("f", Some("k1"), fresh_version(), b"1", None)
            .unwrap();
        s.write_keyed("f", Some("k1"), fresh_version(), b"1", None)
            .unwrap();
        assert!(s.was_stored("f", "k1"));
        // The same file written under another key (a `result_storage_key`).
        s.write_keyed("f", Some("k2"), fresh_version(), b"2", None)
            .unwrap();
        assert!(s.was_stored("f", "k2") && !s.was_stored("f", "k1"));
        // Deleted behind flowrun's back: the record stays.
        std::fs::remove_file(s.file("f")).unwrap();
        assert!(s.was_stored("f", "k2"));
        // Removed through the storage: forgotten.
        s.write_keyed("f", Some("k2"), fresh_version(), b"2", None)
            .unwrap();
        assert!(s.remove("f").unwrap());
        assert!(!s.was_stored("f", "k2"));
        // A write with no key leaves no record.
        s.write("g", b"3", None).unwrap();
        assert!(!s.record("g").exists());
        std::fs::remove_dir_all(s.path()).unwrap();
    }

    /// A file an earlier flowrun wrote (`FRR1`, no version field) is still
    /// a hit; its payload's hash stands for its version.
    #[test]
    fn a_file_in_the_first_format_is_still_a_hit() {
        let s = scratch("frr1");
        let payload = b"old result";
        let mut data = vec![0u8; HEADER_V1];
        data[..4].copy_from_slice(MAGIC_V1);
        data[KEY].copy_from_slice(&key_hash(Some("k")));
        let sum = *blake3::hash(payload).as_bytes();
        data[SUM].copy_from_slice(&sum);
        data.extend_from_slice(payload);
        std::fs::create_dir_all(s.path()).unwrap();
        std::fs::write(s.file("k"), &data).unwrap();
        let (found, version) = s.read_keyed("k", Some("k"));
        assert!(matches!(found, Lookup::Hit(b) if &b[..] == payload));
        assert_eq!(version[..], sum[..16]);
        assert!(s.info("k").is_some());
        std::fs::remove_dir_all(s.path()).unwrap();
    }
}

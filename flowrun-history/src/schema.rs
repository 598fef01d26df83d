//! The database file: opening it with the settings that let several
//! processes share it, and its versioned schema with migrations.
//!
//! The schema version lives in SQLite's `user_version`. Each migration moves
//! the schema one version up inside one transaction; a database whose
//! version is above [`SCHEMA_VERSION`] was written by a newer flowrun and is
//! refused, naming both versions, rather than read wrongly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::HistoryError;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 1;

/// The database file's name inside a home.
pub const DATABASE_FILE: &str = "history.db";

/// How long one statement waits for another process's write lock before
/// SQLite reports the database busy (the writer then retries the batch).
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Migrations, the one at index `i` moving the schema from version `i` to
/// `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- `seq` is the join key; `id` (a UUIDv7, so it sorts by creation time) is
-- the identifier users see. `history` holds every state change of the run
-- as a JSON array of [time_ms, state, name, message]: one row per run keeps
-- recording to one insert per task run.
CREATE TABLE flow_runs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    core_id TEXT NOT NULL,
    name TEXT NOT NULL,
    flow TEXT NOT NULL,
    state TEXT NOT NULL,
    state_name TEXT,
    message TEXT,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER,
    parameters TEXT,
    parent_flow_run TEXT,
    parent_task_run TEXT,
    tags TEXT,
    pid INTEGER,
    history TEXT NOT NULL DEFAULT '[]',
    tasks_total INTEGER NOT NULL DEFAULT 0,
    tasks_completed INTEGER NOT NULL DEFAULT 0,
    tasks_failed INTEGER NOT NULL DEFAULT 0,
    tasks_crashed INTEGER NOT NULL DEFAULT 0,
    tasks_cancelled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX flow_runs_by_start ON flow_runs(start_ms);
CREATE INDEX flow_runs_by_flow ON flow_runs(flow, start_ms);
CREATE INDEX flow_runs_by_name ON flow_runs(name);
CREATE INDEX flow_runs_by_parent ON flow_runs(parent_flow_run);

-- Few indexes: each costs every recorded task run an insert. Task runs are
-- looked up through their flow run, never alone.
CREATE TABLE task_runs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    flow_run INTEGER NOT NULL,
    name TEXT NOT NULL,
    task TEXT NOT NULL,
    task_key TEXT NOT NULL,
    state TEXT NOT NULL,
    state_name TEXT,
    message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    upstreams TEXT,
    cache_key TEXT,
    created_ms INTEGER NOT NULL,
    start_ms INTEGER,
    end_ms INTEGER,
    history TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX task_runs_by_flow ON task_runs(flow_run);
CREATE INDEX task_runs_failed ON task_runs(flow_run) WHERE state IN ('Failed', 'Crashed');
CREATE INDEX task_runs_by_cache_key ON task_runs(cache_key) WHERE cache_key IS NOT NULL;

CREATE TABLE logs (
    seq INTEGER PRIMARY KEY,
    flow_run INTEGER NOT NULL,
    task_run INTEGER,
    level INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX logs_by_run ON logs(flow_run, seq);
CREATE INDEX logs_by_task ON logs(task_run, seq) WHERE task_run IS NOT NULL;

-- The full-text index reads its text from `logs` (external content), so
-- each line is stored once.
CREATE VIRTUAL TABLE logs_fts USING fts5(text, content='logs', content_rowid='seq');
CREATE TRIGGER logs_fts_insert AFTER INSERT ON logs BEGIN
    INSERT INTO logs_fts(rowid, text) VALUES (new.seq, new.text);
END;
CREATE TRIGGER logs_fts_delete AFTER DELETE ON logs BEGIN
    INSERT INTO logs_fts(logs_fts, rowid, text) VALUES ('delete', old.seq, old.text);
END;
"#];

/// The database path inside `home`.
pub fn database_path(home: &Path) -> PathBuf {
    home.join(DATABASE_FILE)
}

/// Opens (creating when missing) the database in `home`, migrated to
/// [`SCHEMA_VERSION`].
pub(crate) fn open(home: &Path) -> Result<Connection, HistoryError> {
    let path = database_path(home);
    let db_err = |source: rusqlite::Error| HistoryError::Database {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(home.join("storage")).map_err(|source| HistoryError::Home {
        path: home.to_owned(),
        source,
    })?;
    let mut conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
    // WAL lets readers (the `flowrun` command) read while flows write;
    // NORMAL syncs at checkpoints only, which WAL keeps consistent on a crash.
    // Switching a new database to WAL needs it to itself for a moment, and
    // SQLite reports "database is locked" at once, without its busy
    // timeout, when another process starting on the same fresh home has it.
    let mode: String =
        crate::writer::with_retries(|| conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)))
            .map_err(db_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(HistoryError::Unsupported {
            path,
            why: format!("its journal mode cannot be WAL (it stays {mode})"),
        });
    }
    // A larger page cache keeps the indexes' hot pages in memory while a
    // flow records thousands of task runs a second.
    // Checkpoints (copying the WAL into the database, with an fsync) every
    // 16 MB of WAL instead of SQLite's 4 MB: a quarter of the fsyncs.
    conn.execute_batch(
        "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; PRAGMA cache_size=-32768;
         PRAGMA wal_autocheckpoint=4000;",
    )
    .map_err(db_err)?;
    migrate(&mut conn).map_err(|e| match e {
        HistoryError::Database { source, .. } => db_err(source),
        other => other,
    })?;
    Ok(conn)
}

/// Where one look at the schema version left it.
enum Step {
    Current,
    Migrated,
    Newer(i64, Option<String>),
    Unknown(i64),
}

/// Brings the schema to [`SCHEMA_VERSION`], refusing a newer one.
fn migrate(conn: &mut Connection) -> Result<(), HistoryError> {
    let path = conn.path().map(PathBuf::from).unwrap_or_default();
    // A current schema needs only a read (WAL readers never wait): a flow
    // starting while another process commits a long batch does not wait
    // for the write lock.
    let version = crate::writer::with_retries(|| {
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
    });
    if version.is_ok_and(|v| v == SCHEMA_VERSION) {
        return Ok(());
    }
    loop {
        // The check and the migration share one write transaction, so two
        // processes starting on a fresh home do not both migrate.
        let step = crate::writer::with_retries(|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if version > SCHEMA_VERSION {
                let writer = tx
                    .query_row(
                        "SELECT value FROM meta WHERE key = 'flowrun_version'",
                        [],
                        |r| r.get(0),
                    )
                    .ok();
                return Ok(Step::Newer(version, writer));
            }
            if version == SCHEMA_VERSION {
                return Ok(Step::Current);
            }
            let Some(migration) = usize::try_from(version)
                .ok()
                .and_then(|v| MIGRATIONS.get(v))
            else {
                return Ok(Step::Unknown(version));
            };
            tx.execute_batch(migration)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))?;
            tx.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('flowrun_version', ?1)",
                [env!("CARGO_PKG_VERSION")],
            )?;
            tx.commit()?;
            Ok(Step::Migrated)
        })
        .map_err(|source| HistoryError::Database {
            path: path.clone(),
            source,
        })?;
        match step {
            Step::Current => return Ok(()),
            Step::Migrated => {}
            Step::Newer(found, written_by) => {
                return Err(HistoryError::Newer {
                    path,
                    found,
                    supported: SCHEMA_VERSION,
                    written_by,
                })
            }
            Step::Unknown(version) => {
                return Err(HistoryError::Unsupported {
                    path,
                    why: format!("its schema version {version} is not one flowrun writes"),
                })
            }
        }
    }
}

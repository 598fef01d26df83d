//! How fast `flowrun` answers on a large home: a million task runs and ten
//! million log lines, written straight into the database (made once, then
//! kept under target/ and reused).
//!
//! `cargo bench -p flowrun-cli --bench queries` prints the median wall time
//! of the whole command (process start included) over several calls.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const FLOW_RUNS: i64 = 100;
const TASKS_PER_RUN: i64 = 10_000;
const LOGS_PER_TASK: i64 = 10;

/// Words the log lines are made of: a few common ones in every line and
/// one of a thousand rarer ones.
fn word(i: u64) -> String {
    const SYLLABLES: [&str; 10] = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pu"];
    let (a, b, c) = (i % 10, i / 10 % 10, i / 100 % 10);
    format!(
        "{}{}{}",
        SYLLABLES[a as usize], SYLLABLES[b as usize], SYLLABLES[c as usize]
    )
}

fn generate(home: &Path) {
    let marker = home.join("generated");
    if marker.exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(home);
    drop(flowrun_history::Store::create(home).expect("a new home"));
    let mut db = rusqlite::Connection::open(flowrun_history::database_path(home)).unwrap();
    db.execute_batch("PRAGMA synchronous = OFF; PRAGMA cache_size = -500000;")
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let started = Instant::now();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for f in 0..FLOW_RUNS {
        let tx = db.transaction().unwrap();
        let start = now - (FLOW_RUNS - f) * 3_600_000;
        let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (start / 1000) as u64,
            0,
        ));
        tx.execute(
            "INSERT INTO flow_runs (id, core_id, name, flow, state, start_ms, end_ms, pid,
             tasks_total, tasks_completed, tasks_failed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?9, ?10)",
            rusqlite::params![
                id.to_string(),
                format!("core-{f}"),
                format!("run-{f}"),
                format!("flow-{}", f % 7),
                if f % 10 == 3 { "Failed" } else { "Completed" },
                start,
                start + 600_000,
                TASKS_PER_RUN,
                TASKS_PER_RUN - 10,
                10
            ],
        )
        .unwrap();
        let flow = tx.last_insert_rowid();
        {
            let mut task = tx
                .prepare(
                    "INSERT INTO task_runs (id, flow_run, name, task, task_key, state, message,
                     attempts, worker, created_ms, start_ms, end_ms, history)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, 'tcp://127.0.0.1:4000', ?8, ?9, ?10, ?11)",
                )
                .unwrap();
            let mut log = tx
                .prepare(
                    "INSERT INTO logs (flow_run, task_run, level, time_ms, text) VALUES (?1, ?2, 20, ?3, ?4)",
                )
                .unwrap();
            for t in 0..TASKS_PER_RUN {
                let created = start + t * 50;
                let failed = t % 1000 == 7;
                let tid = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                    uuid::NoContext,
                    (created / 1000) as u64,
                    ((created % 1000) * 1_000_000) as u32,
                ));
                let task_name = format!("step_{}", t % 20);
                let end_state = if failed { "Failed" } else { "Completed" };
                let message = failed.then_some("the input was malformed");
                let history = serde_json::to_string(&[
                    (created, "Pending", None, None),
                    (created + 5, "Running", None, None),
                    (created + 45, end_state, None::<&str>, message),
                ])
                .unwrap();
                task.execute(rusqlite::params![
                    tid.to_string(),
                    flow,
                    format!("{task_name}-{}", t / 20),
                    task_name,
                    format!("bench::{task_name}"),
                    end_state,
                    message,
                    created,
                    created + 5,
                    created + 45,
                    history,
                ])
                .unwrap();
                let task_seq = tx.last_insert_rowid();
                for l in 0..LOGS_PER_TASK {
                    let rare = word(next() % 1000);
                    log.execute(rusqlite::params![
                        flow,
                        task_seq,
                        created + 5 + l * 4,
                        format!(
                            "processed batch {l} of partition {} with {} rows, checksum {rare}",
                            t % 64,
                            next() % 10_000
                        )
                    ])
                    .unwrap();
                }
            }
        }
        tx.commit().unwrap();
        if f % 10 == 9 {
            eprintln!(
                "generated {} flow runs in {:.0} s",
                f + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    std::fs::write(marker, "").unwrap();
}

fn median_ms(args: &[&str], home: &Path) -> (f64, String) {
    let mut times = Vec::new();
    let mut out = String::new();
    for _ in 0..7 {
        let started = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_flowrun"))
            .arg("--home")
            .arg(home)
            .args(args)
            .output()
            .unwrap();
        times.push(started.elapsed());
        assert!(
            o.status.success(),
            "flowrun {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out = String::from_utf8(o.stdout).unwrap();
    }
    times.sort();
    (times[3].as_secs_f64() * 1e3, out)
}

fn report(label: &str, args: &[&str], home: &Path) {
    let (ms, out) = median_ms(args, home);
    println!(
        "{label:<44} {ms:>7.1} ms  ({} lines of output)",
        out.lines().count()
    );
}

fn main() {
    let home: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-history-home");
    generate(&home);
    let (_, oldest) = median_ms(&["runs", "--json", "--limit", "100"], &home);
    let runs: serde_json::Value = serde_json::from_str(&oldest).unwrap();
    let newest = runs[0]["id"].as_str().unwrap().to_owned();
    let old = runs[runs.as_array().unwrap().len() - 1]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    println!(
        "home: {} flow runs, {} task runs, {} log lines",
        FLOW_RUNS,
        FLOW_RUNS * TASKS_PER_RUN,
        FLOW_RUNS * TASKS_PER_RUN * LOGS_PER_TASK
    );
    report("flowrun runs", &["runs"], &home);
    report(
        "flowrun runs --flow flow-3 --state failed",
        &["runs", "--flow", "flow-3", "--state", "failed"],
        &home,
    );
    report(
        "flowrun show (newest run, 10,000 task runs)",
        &["show", &newest],
        &home,
    );
    report("flowrun show (oldest run)", &["show", &old], &home);
    report(
        "flowrun logs (newest run, last 200)",
        &["logs", &newest],
        &home,
    );
    report(
        "flowrun logs --grep <rare word> (oldest run)",
        &["logs", &old, "--grep", &word(517)],
        &home,
    );
    report(
        "flowrun logs --grep <in every line> (oldest)",
        &["logs", &old, "--grep", "processed batch"],
        &home,
    );
    report(
        "flowrun logs --task step_3-17 (oldest run)",
        &["logs", &old, "--task", "step_3-17"],
        &home,
    );
    report(
        "flowrun logs --level error (oldest run)",
        &["logs", &old, "--level", "error"],
        &home,
    );
}

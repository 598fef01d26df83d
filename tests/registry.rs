//! The task registry: every task can be run by name from serialized
//! arguments, as a worker process does; tasks whose types cannot be
//! serialized say which type stops them.

mod common;

use std::time::Duration;

use flowrun::registry::registry;
use flowrun::runner::{decode_value, encode_value};
use flowrun::{flow, task, SerializingTaskRunner, TaskErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
}

#[task]
fn translate(p: Point, dx: i32) -> Point {
    Point {
        x: p.x + dx,
        y: p.y,
    }
}

#[task]
async fn slow_echo(text: String) -> String {
    tokio::time::sleep(Duration::from_millis(10)).await;
    text
}

#[task]
fn refuses(n: u8) -> Result<u8, String> {
    Err(format!("refusing {n}"))
}

/// Not serializable: a process runner cannot move it.
#[derive(Clone)]
struct Handle(#[allow(dead_code)] std::sync::Arc<()>);

#[task]
fn uses_handle(_h: Handle, n: u32) -> u32 {
    n
}

#[test]
fn every_task_is_registered_under_its_module_path() {
    let reg = registry();
    for key in [
        "registry::translate",
        "registry::slow_echo",
        "registry::refuses",
        "registry::uses_handle",
    ] {
        assert!(
            reg.get(key).is_some(),
            "{key} missing from {:?}",
            reg.iter().map(|e| e.key()).collect::<Vec<_>>()
        );
    }
    assert_eq!(translate.registry_key(), "registry::translate");
    assert!(reg.duplicates().is_empty());
    assert_eq!(reg.fingerprint(), registry().fingerprint());
}

#[task(retries = 2, retry_delay = 1)]
fn retried() -> u8 {
    1
}

#[test]
fn an_entry_carries_the_task_retry_policy() {
    let policy = registry()
        .get("registry::retried")
        .unwrap()
        .meta()
        .retry_policy();
    assert_eq!(policy.retries, 2);
    assert_eq!(policy.delay.delay_before(1), Duration::from_secs(1));
    let plain = registry().get("registry::refuses").unwrap().meta();
    assert_eq!(plain.retry_policy().retries, 0);
}

#[test]
fn a_task_runs_by_name_from_serialized_arguments() {
    let entry = registry().get("registry::translate").unwrap();
    let p = encode_value(&Point { x: 1, y: 2 }).unwrap();
    let dx = encode_value(&10i32).unwrap();
    let out = entry.run(&[&p, &dx]).unwrap();
    assert_eq!(decode_value::<Point>(&out).unwrap(), Point { x: 11, y: 2 });
}

#[test]
fn an_async_task_runs_by_name() {
    let entry = registry().get("registry::slow_echo").unwrap();
    assert!(entry.is_async());
    let out = entry
        .run(&[&encode_value(&"ping".to_owned()).unwrap()])
        .unwrap();
    assert_eq!(decode_value::<String>(&out).unwrap(), "ping");
}

#[test]
fn a_failure_by_name_comes_back_as_the_task_error() {
    let entry = registry().get("registry::refuses").unwrap();
    let err = entry.run(&[&encode_value(&7u8).unwrap()]).unwrap_err();
    assert_eq!(err.kind(), &TaskErrorKind::Error);
    assert_eq!(err.message(), "refusing 7");
}

#[test]
fn wrong_arguments_by_name_are_an_error_not_a_panic() {
    let entry = registry().get("registry::translate").unwrap();
    let err = entry.run(&[b"\xff\xff"]).unwrap_err();
    assert!(err.message().contains("cannot decode"), "{}", err.message());
    let err = entry.run(&[]).unwrap_err();
    assert!(
        err.message().contains("expected 2 arguments"),
        "{}",
        err.message()
    );
}

#[test]
fn a_task_with_a_non_serializable_type_names_it() {
    let entry = registry().get("registry::uses_handle").unwrap();
    let why = entry
        .serialization_error()
        .expect("Handle cannot be serialized");
    assert!(why.contains("registry::Handle"), "{why}");
    assert!(!why.contains("u32"), "u32 is fine: {why}");
    let err = entry.run(&[]).unwrap_err();
    assert!(err.message().contains("uses_handle"), "{}", err.message());
}

#[test]
fn the_serializing_runner_runs_a_whole_flow_through_the_registry() {
    #[flow(task_runner = SerializingTaskRunner::default())]
    fn moved_around() -> Point {
        let a = translate.submit(Point { x: 0, y: 5 }, 1);
        let b = translate.submit(a, 2);
        let _ = slow_echo.submit("async too".to_owned()).result().unwrap();
        b.result().unwrap()
    }
    assert_eq!(moved_around().unwrap(), Point { x: 3, y: 5 });
}

#[test]
fn a_runner_that_moves_tasks_refuses_a_non_serializable_one_at_submit() {
    #[flow]
    fn chooses_runner_at_run_time() -> String {
        let future = uses_handle.submit(Handle(Default::default()), 3);
        future.result().unwrap_err().to_string()
    }
    let message = chooses_runner_at_run_time
        .with_runner(SerializingTaskRunner::default())
        .call()
        .unwrap();
    common::assert_holds(
        &message,
        &["uses_handle", "SerializingTaskRunner", "registry::Handle"],
    );
    assert_eq!(
        chooses_runner_at_run_time.call().unwrap_err().kind(),
        &flowrun::FlowErrorKind::Panic
    );
}

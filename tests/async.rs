//! Async flows and tasks on tokio, and blocking flows called from inside a
//! tokio runtime.

use std::time::{Duration, Instant};

use flowrun::{flow, task};

#[task]
async fn fetch(id: u32) -> String {
    tokio::time::sleep(Duration::from_millis(200)).await;
    format!("item-{id}")
}

#[task]
fn blocking_len(text: String) -> usize {
    text.len()
}

#[flow]
async fn gather_all(n: u32) -> Vec<String> {
    let futures: Vec<_> = (0..n).map(|i| fetch.submit(i)).collect();
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_flow_awaits_submitted_async_tasks_concurrently() {
    let started = Instant::now();
    let items = gather_all(5).await.unwrap();
    assert_eq!(
        items,
        vec!["item-0", "item-1", "item-2", "item-3", "item-4"]
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_async_flow_works_on_a_current_thread_runtime() {
    #[flow]
    async fn flow_under_test() -> usize {
        let text = fetch(1).await;
        blocking_len.submit(text).await.unwrap()
    }
    assert_eq!(flow_under_test().await.unwrap(), 6);
}

#[flow]
fn sync_flow() -> usize {
    let text = fetch.submit(7).result().unwrap();
    blocking_len(text)
}

#[tokio::test(flavor = "current_thread")]
async fn a_blocking_flow_inside_a_current_thread_runtime_neither_panics_nor_deadlocks() {
    assert_eq!(sync_flow().unwrap(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_flow_inside_a_multi_thread_runtime_neither_panics_nor_deadlocks() {
    assert_eq!(sync_flow().unwrap(), 6);
    let from_blocking = tokio::task::spawn_blocking(|| sync_flow().unwrap())
        .await
        .unwrap();
    assert_eq!(from_blocking, 6);
}

#[test]
fn a_sync_flow_can_run_async_tasks_and_await_nothing() {
    assert_eq!(sync_flow().unwrap(), 6);
}

#[task]
async fn async_fails() -> Result<u32, String> {
    Err("async failure".into())
}

#[tokio::test]
async fn async_task_failures_reach_the_awaiting_flow() {
    #[flow]
    async fn flow_under_test() -> String {
        async_fails.submit().await.unwrap_err().message().to_owned()
    }
    assert_eq!(flow_under_test().await.unwrap(), "async failure");
}

#[tokio::test]
async fn async_flows_can_be_spawned_on_tokio() {
    let handle = tokio::spawn(gather_all(2));
    assert_eq!(handle.await.unwrap().unwrap().len(), 2);
}

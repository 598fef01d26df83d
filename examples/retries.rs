//! A flaky task that fails twice and succeeds on its third attempt.

use std::sync::atomic::{AtomicU32, Ordering};

use flowrun::{flow, get_run_logger, task};

static CALLS: AtomicU32 = AtomicU32::new(0);

/// Fails on its first two attempts, like a service that is still starting.
#[task(retries = 3, retry_delay = 0.2)]
fn flaky_fetch(url: String) -> Result<String, String> {
    let attempt = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    get_run_logger().info(format!("attempt {attempt} to fetch {url}"));
    if attempt < 3 {
        Err(format!("connection refused (attempt {attempt})"))
    } else {
        Ok(format!("<html>{url}</html>"))
    }
}

#[flow]
fn fetch_page(url: String) -> Result<String, flowrun::TaskError> {
    let page = flaky_fetch.submit(url);
    page.result()
}

fn main() {
    let page = fetch_page("https://example.com".to_owned()).expect("flow failed");
    println!("{page} after {} attempts", CALLS.load(Ordering::SeqCst));
}

//! An async flow on tokio: async tasks submitted and awaited, one called
//! directly, with a dependency between them.

use std::time::Duration;

use flowrun::{flow, task};

/// Pretends to download a page.
#[task(retries = 1, timeout = 5)]
async fn download(page: u32) -> String {
    tokio::time::sleep(Duration::from_millis(100)).await;
    format!("page {page}")
}

/// Counts the bytes of a downloaded page.
#[task]
async fn measure(body: String) -> usize {
    body.len()
}

#[flow]
async fn crawl(pages: u32) -> Result<usize, flowrun::TaskError> {
    let downloads: Vec<_> = (0..pages).map(|p| download.submit(p)).collect();
    let sizes: Vec<_> = downloads.iter().map(|d| measure.submit(d)).collect();
    let mut total = 0;
    for size in sizes {
        total += size.await?;
    }
    let extra = download(pages).await;
    Ok(total + extra.len())
}

#[tokio::main]
async fn main() {
    let bytes = crawl(8).await.expect("flow failed");
    println!("downloaded {bytes} bytes");
}

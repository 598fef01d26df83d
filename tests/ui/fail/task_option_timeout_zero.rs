use flowrun::{flow, task};

#[task(timeout = 0)]
fn bad_timeout(n: u32) -> u32 {
    n
}

#[flow]
fn uses_it() -> u32 {
    // The task still expands (with no timeout): no error below.
    bad_timeout.submit(1).result().unwrap_or_default()
}

fn main() {}

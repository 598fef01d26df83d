use flowrun::task;

#[task(retries = -1)]
fn bad_retries() {}

fn main() {}

use flowrun::task;

#[task(retries = 1.5)]
fn bad_retries() {}

fn main() {}

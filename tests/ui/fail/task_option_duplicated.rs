use flowrun::task;

#[task(retries = 1, retries = 2)]
fn duplicated() {}

fn main() {}

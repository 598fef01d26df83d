use flowrun::task;

#[task(retry_delay = exponential())]
fn no_base() {}

fn main() {}

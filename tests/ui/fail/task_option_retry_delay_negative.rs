use flowrun::task;

#[task(retry_delay = [1, -2])]
fn negative_delay() {}

fn main() {}

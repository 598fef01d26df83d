use flowrun::task;

#[task(retry_delay = exponential(1, 2, 3))]
fn too_many_backoff_args() {}

fn main() {}

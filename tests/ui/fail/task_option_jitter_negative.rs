use flowrun::task;

#[task(retry_jitter_factor = -0.5)]
fn bad_jitter() {}

fn main() {}

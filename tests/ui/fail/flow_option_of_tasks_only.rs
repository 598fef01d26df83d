use flowrun::flow;

#[flow(retry_jitter_factor = 0.5)]
fn task_only_option() {}

fn main() {}

use flowrun::flow;

#[flow(concurrency_limits = ["db"])]
fn not_pairs() {}

fn main() {}

use flowrun::flow;

#[flow(concurrency_limits = [("db", 0)])]
fn blocked() {}

#[flow(concurrency_limits = ["db"])]
fn not_pairs() {}

fn main() {}

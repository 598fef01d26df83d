use flowrun::flow;

#[flow(concurrency_limits = [("db", 0)])]
fn blocked() {}

fn main() {}

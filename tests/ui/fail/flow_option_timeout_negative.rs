use flowrun::flow;

#[flow(timeout = -5)]
fn negative_timeout() {}

fn main() {}

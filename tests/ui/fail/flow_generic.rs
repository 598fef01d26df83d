use flowrun::flow;

#[flow]
fn generic_flow<T>() {}

fn main() {}

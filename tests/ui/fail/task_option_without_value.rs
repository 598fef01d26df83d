use flowrun::task;

#[task(timeout)]
fn no_value() {}

fn main() {}

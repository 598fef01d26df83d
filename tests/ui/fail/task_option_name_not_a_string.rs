use flowrun::task;

#[task(name = 5)]
fn bad_name() {}

fn main() {}

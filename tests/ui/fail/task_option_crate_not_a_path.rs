use flowrun::task;

#[task(crate = 5)]
fn bad_crate() {}

fn main() {}

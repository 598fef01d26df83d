use flowrun::task;

#[task(description = "")]
fn bad_description() {}

fn main() {}

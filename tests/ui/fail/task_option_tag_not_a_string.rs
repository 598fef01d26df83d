use flowrun::task;

#[task(tags = [1])]
fn bad_tag() {}

fn main() {}

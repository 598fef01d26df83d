use flowrun::task;

#[task(tags = "io")]
fn bad_tags() {}

fn main() {}

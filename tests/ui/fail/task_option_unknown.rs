use flowrun::task;

#[task(colour = "red")]
fn unknown() {}

fn main() {}

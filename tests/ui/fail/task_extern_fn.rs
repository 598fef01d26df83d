use flowrun::task;

#[task]
extern "C" fn foreign() {}

fn main() {}

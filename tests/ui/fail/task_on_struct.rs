use flowrun::task;

#[task]
struct NotAFunction;

fn main() {}

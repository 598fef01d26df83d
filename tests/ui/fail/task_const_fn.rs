use flowrun::task;

#[task]
const fn constant() {}

fn main() {}

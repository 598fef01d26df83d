use flowrun::task;

#[task]
unsafe fn dangerous() {}

fn main() {}

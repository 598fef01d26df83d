use flowrun::task;

#[task]
fn generic<T: Clone>(value: T) -> T {
    value
}

fn main() {}

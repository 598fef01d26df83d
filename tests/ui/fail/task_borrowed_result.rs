use flowrun::task;

#[task]
fn returns_borrow() -> &'static str {
    "x"
}

fn main() {}

use flowrun::task;

#[task]
fn borrowed(name: &str) -> usize {
    name.len()
}

fn main() {}

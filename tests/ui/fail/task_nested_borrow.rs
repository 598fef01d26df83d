use flowrun::task;

#[task]
fn nested_borrow(names: Vec<&'static str>) -> usize {
    names.len()
}

fn main() {}

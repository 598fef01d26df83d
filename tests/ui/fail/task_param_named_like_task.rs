use flowrun::task;

#[task]
fn count(count: u32) -> u32 {
    count
}

fn main() {}

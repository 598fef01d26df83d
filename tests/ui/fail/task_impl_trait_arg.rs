use flowrun::task;

#[task]
fn opaque(values: impl Iterator<Item = u8>) -> u8 {
    values.sum()
}

fn main() {}

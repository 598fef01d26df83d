use flowrun::task;

struct Thing;

impl Thing {
    #[task]
    fn method(&self) {}
}

fn main() {}

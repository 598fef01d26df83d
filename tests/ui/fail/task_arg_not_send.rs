use flowrun::task;

#[task]
fn count(shared: std::rc::Rc<u32>) -> u32 {
    *shared
}

fn main() {}

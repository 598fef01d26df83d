use flowrun::task;

/// Shared with `Rc`, so it cannot move to another thread.
#[derive(Clone)]
struct Handle(std::rc::Rc<u8>);

#[task]
fn count(_handle: Handle, n: u32) -> u32 {
    n
}

fn main() {}

use flowrun::task;

#[task]
fn make() -> std::rc::Rc<u8> {
    Default::default()
}

fn main() {}

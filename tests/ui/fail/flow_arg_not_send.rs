use flowrun::flow;

#[flow]
fn with_cell(cell: std::rc::Rc<u8>) -> u8 {
    *cell
}

fn main() {}

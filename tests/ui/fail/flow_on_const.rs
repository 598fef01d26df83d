use flowrun::flow;

#[flow]
const NOT_A_FLOW: u8 = 1;

fn main() {}

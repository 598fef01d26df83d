use flowrun::flow;

#[flow(history = "off")]
fn quiet() {}

fn main() {}

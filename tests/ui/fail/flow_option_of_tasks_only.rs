use flowrun::flow;

#[flow(tags = ["x"])]
fn task_only_option() {}

fn main() {}

use flowrun::task;

#[task(retries 3)]
fn not_an_option_list() {}

fn main() {}

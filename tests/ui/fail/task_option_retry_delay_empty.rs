use flowrun::task;

#[task(retry_delay = [])]
fn no_delays() {}

fn main() {}

use flowrun::task;

#[task(task_run_name = "shout-{number")]
fn shout(number: u32) {
    let _ = number;
}

fn main() {}

use flowrun::task;

#[task(task_run_name = "shout-{numbr}")]
fn shout(number: u32) {
    let _ = number;
}

fn main() {}

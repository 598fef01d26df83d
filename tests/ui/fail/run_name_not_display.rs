use flowrun::task;

struct Opaque;

#[task(task_run_name = "take-{value}")]
fn take(value: Vec<Opaque>) {
    let _ = value;
}

fn main() {}

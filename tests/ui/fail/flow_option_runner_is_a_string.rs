use flowrun::flow;

#[flow(task_runner = "dask")]
fn runner_is_a_string() {}

fn main() {}

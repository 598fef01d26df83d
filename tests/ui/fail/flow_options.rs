use flowrun::flow;

#[flow(task_runer = flowrun::ThreadPoolTaskRunner)]
fn misspelled() {}

#[flow(tags = ["x"])]
fn task_only_option() {}

#[flow(task_runner = "dask")]
fn runner_is_a_string() {}

#[flow(timeout = -5)]
fn negative_timeout() {}

fn main() {}

use flowrun::task;

#[task(cache_policy = INPUTS + TASK_SORCE)]
fn misspelled_policy(x: u64) -> u64 {
    x
}

#[task(persist_result = true, result_storage_key = "{task_run.nmae}-{flow.name}")]
fn misspelled_placeholder(x: u64) -> u64 {
    x
}

fn main() {}

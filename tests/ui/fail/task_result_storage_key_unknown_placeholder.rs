use flowrun::task;

#[task(persist_result = true, result_storage_key = "{task_run.nmae}-{flow.name}")]
fn misspelled_placeholder(x: u64) -> u64 {
    x
}

fn main() {}

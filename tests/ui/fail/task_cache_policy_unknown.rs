use flowrun::task;

#[task(cache_policy = INPUTS + TASK_SORCE)]
fn misspelled_policy(x: u64) -> u64 {
    x
}

fn main() {}

use flowrun::flow;

#[flow(task_runer = flowrun::ThreadPoolTaskRunner)]
fn misspelled() {}

fn main() {
    // The flow still exists, with its default options.
    let _ = misspelled();
}

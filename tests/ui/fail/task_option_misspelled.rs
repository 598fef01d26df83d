use flowrun::task;

#[task(retrys = 3)]
fn misspelled() {}

fn main() {
    // The task still exists, with its default options.
    misspelled();
}

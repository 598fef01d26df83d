use flowrun::dask::DaskTaskRunner;
use flowrun::{flow, task};

/// A handle that only means something in this process.
#[derive(Clone)]
struct Handle(std::sync::Arc<u8>);

#[task]
fn count(_handle: Handle, n: u32) -> u32 {
    n
}

#[flow(task_runner = DaskTaskRunner::default())]
fn uses_handle() {
    count.submit(Handle(Default::default()), 3);
}

fn main() {}

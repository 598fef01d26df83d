use flowrun::runner::{TaskCall, TaskRunner};
use flowrun::{flow, task};

/// A runner that never says which tasks it accepts (no `AcceptsTask`).
#[derive(Clone, Default)]
struct Inline;

impl TaskRunner for Inline {
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "Inline".into()
    }
    fn submit(&self, _call: TaskCall) {}
}

#[task]
fn one() -> u32 {
    1
}

#[flow(task_runner = Inline)]
fn uses_inline() {
    one.submit();
}

fn main() {}

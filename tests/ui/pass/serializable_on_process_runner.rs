use flowrun::{flow, task, SerializingTaskRunner};

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Row {
    id: u64,
}

#[task]
fn load(id: u64) -> Row {
    Row { id }
}

#[flow(task_runner = SerializingTaskRunner::default())]
fn pipeline() -> u64 {
    let rows = load.map(0..3).unwrap();
    let numbers = vec![1, 2];
    let _ = numbers.iter().map(|n| n + 1);
    flowrun::results(rows).unwrap().iter().map(|r| r.id).sum()
}

fn main() {
    let _ = pipeline;
}

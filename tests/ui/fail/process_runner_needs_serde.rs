use flowrun::{flow, task, SerializingTaskRunner};

/// Lives only in this process.
#[derive(Clone)]
struct Connection;

#[task]
fn query(_conn: Connection, sql: String) -> usize {
    sql.len()
}

#[flow(task_runner = SerializingTaskRunner::default())]
fn report() {
    query.submit(Connection, "select 1".to_owned());
}

fn main() {}

use flowrun::flow;

#[flow(persist_result = true, result_storage_key = "daily-{parameters[day]}")]
fn daily(day: String) -> usize {
    day.len()
}

fn main() {}

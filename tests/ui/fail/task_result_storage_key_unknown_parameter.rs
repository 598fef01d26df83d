use flowrun::task;

#[task(persist_result = true, result_storage_key = "report-{parameters[dya]}")]
fn report(day: String) -> u64 {
    day.len() as u64
}

fn main() {}

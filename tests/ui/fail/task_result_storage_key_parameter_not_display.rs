use flowrun::task;

#[derive(serde::Serialize, serde::Deserialize)]
struct Day(u8);

#[task(persist_result = true, result_storage_key = "report-{parameters[day]}")]
fn report(day: Day) -> u64 {
    u64::from(day.0)
}

fn main() {}

use flowrun::flow;

#[flow(flow_run_name = "run-{}")]
fn nightly(day: u32) {
    let _ = day;
}

fn main() {}

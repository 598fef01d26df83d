use flowrun::task;

#[task(retrys = 3)]
fn misspelled() {}

#[task(colour = "red")]
fn unknown() {}

#[task(retries = 1, retries = 2)]
fn duplicated() {}

#[task(timeout)]
fn no_value() {}

#[task(name = 5, description = "")]
fn bad_strings() {}

#[task(retries = -1, timeout = 0, retry_jitter_factor = -0.5)]
fn bad_numbers() {}

#[task(retry_delay = [], tags = "io")]
fn bad_lists() {}

#[task(retry_delay = exponential(), tags = [1])]
fn bad_backoff() {}

#[task(retry_delay = exponential(1, 2, 3))]
fn too_many_backoff_args() {}

#[task(retries 3)]
fn not_an_option_list() {}

#[task(crate = 5)]
fn bad_crate() {}

fn main() {}

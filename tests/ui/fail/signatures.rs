use flowrun::{flow, task};

#[task]
fn generic<T: Clone>(value: T) -> T {
    value
}

#[task]
fn borrowed(name: &str) -> usize {
    name.len()
}

#[task]
fn nested_borrow(names: Vec<&'static str>) -> usize {
    names.len()
}

#[task]
fn opaque(values: impl Iterator<Item = u8>) -> u8 {
    values.sum()
}

#[task]
fn returns_borrow() -> &'static str {
    "x"
}

#[task]
const fn constant() {}

#[task]
unsafe fn dangerous() {}

#[task]
extern "C" fn foreign() {}

#[task]
fn count(count: u32) -> u32 {
    count
}

#[flow]
fn generic_flow<T>() {}

struct Thing;

impl Thing {
    #[task]
    fn method(&self) {}
}

#[task]
struct NotAFunction;

#[flow]
const NOT_A_FLOW: u8 = 1;

fn main() {}

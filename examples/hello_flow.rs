//! The smallest flow: one task called directly, one submitted.

use flowrun::{flow, task};

/// Greets someone.
#[task]
fn greet(name: String) -> String {
    format!("Hello, {name}!")
}

/// Greets twice: once now, once through a future.
#[flow]
fn hello(name: String) -> String {
    let direct = greet(name.clone());
    println!("{direct}");
    let future = greet.submit(format!("{name} again"));
    future.result().expect("greeting cannot fail")
}

fn main() {
    let last = hello("flowrun".to_owned()).expect("flow failed");
    println!("{last}");
}

//! Subflows: a flow that calls other flows. Each child is a flow run of its
//! own, linked to the parent, on the parent's task runner; the parent's
//! `FlowRun` lists the children with their states and task run counts.

use flowrun::{flow, task};

/// Greets someone.
#[task]
fn greet(name: String) -> String {
    format!("Hello, {name}!")
}

/// Greets every name of a team.
#[flow]
fn greet_team(names: Vec<String>) -> Vec<String> {
    let futures: Vec<_> = names.into_iter().map(|n| greet.submit(n)).collect();
    flowrun::results(futures).expect("greeting cannot fail")
}

/// Greets two teams, each in a subflow.
#[flow]
fn greet_everyone() -> Result<usize, flowrun::FlowError> {
    let red = greet_team(vec!["Ada".into(), "Grace".into()])?;
    let blue = greet_team(vec!["Linus".into()])?;
    Ok(red.len() + blue.len())
}

fn main() {
    let run = greet_everyone.return_state();
    println!("{} greetings", run.result().expect("flow failed"));
    for child in run.subflows() {
        println!(
            "subflow '{}' of flow '{}': {}, {} task runs",
            child.name,
            child.flow_name,
            child.state,
            child.counts.total()
        );
    }
    assert_eq!(run.subflows().len(), 2);
    assert_eq!(run.task_run_counts_with_subflows().completed, 3);
}

//! Subflows: a flow that calls other flows. Each child is a flow run of its
//! own, linked to the parent, on the parent's task runner; the parent's
//! `FlowRun` lists the children with their states and task run counts,
//! and for a child a task called, that task run's name. On a local
//! cluster, the dashboard lists them too, while they run.

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

/// A task that runs a whole flow: its child is linked to this task run.
#[task]
fn greet_guests(names: Vec<String>) -> usize {
    greet_team(names).expect("greeting cannot fail").len()
}

/// Greets two teams, each in a subflow, and guests through a task.
#[flow]
fn greet_everyone() -> Result<usize, flowrun::FlowError> {
    let red = greet_team(vec!["Ada".into(), "Grace".into()])?;
    let blue = greet_team(vec!["Linus".into()])?;
    let guests = greet_guests.submit(vec!["Barbara".to_owned()]);
    Ok(red.len() + blue.len() + guests.result().expect("guests greeted"))
}

fn main() {
    let run = greet_everyone.return_state();
    println!("{} greetings", run.result().expect("flow failed"));
    for child in run.subflows() {
        let caller = match &child.parent_task_run_name {
            Some(task_run) => format!("task run '{task_run}'"),
            None => "the flow".to_owned(),
        };
        println!(
            "subflow '{}' of flow '{}', called by {caller}: {}, {} task runs",
            child.name,
            child.flow_name,
            child.state,
            child.counts.total()
        );
    }
    assert_eq!(run.subflows().len(), 3);
    assert_eq!(run.task_run_counts_with_subflows().completed, 1 + 3 + 1);
}

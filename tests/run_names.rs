//! Run names: `task_run_name` and `flow_run_name` templates filled with the
//! call's parameters, or a function. On the thread runner and on the local
//! cluster. (Templates that name no parameter do not compile:
//! tests/ui/fail/run_name_*.rs.)

use flowrun::{current_flow_run_name, current_task_run_name, flow, task};
use flowrun_dask::{ClusterKwargs, DaskTaskRunner};

fn cluster() -> DaskTaskRunner {
    DaskTaskRunner::new().cluster_kwargs(ClusterKwargs::new().n_workers(1).threads_per_worker(2))
}

/// Returns the name of the run it ran as.
#[task(task_run_name = "shout-{number}")]
fn shout(number: u32) -> String {
    let _ = number; // Used by the run's name only.
    current_task_run_name().unwrap_or_default()
}

#[task(task_run_name = "{label:>4}|{{literal}}")]
fn padded(label: String, unused: u8) -> String {
    let _ = (label, unused);
    current_task_run_name().unwrap_or_default()
}

fn nightly() -> String {
    "nightly-report".to_owned()
}

#[task(task_run_name = nightly)]
fn report() -> String {
    current_task_run_name().unwrap_or_default()
}

#[task]
fn seven() -> u32 {
    7
}

/// (name seen by the run, name of its future) for each form.
fn names() -> Vec<(String, String)> {
    let submitted = shout.submit(3);
    let mapped = shout.map(vec![4, 5]).unwrap();
    let upstream = seven.submit();
    let from_future = shout.submit(&upstream);
    let mut out = vec![(submitted.result().unwrap(), submitted.name())];
    for m in mapped {
        out.push((m.result().unwrap(), m.name()));
    }
    out.push((from_future.result().unwrap(), from_future.name()));
    let p = padded.submit("ab", 0);
    out.push((p.result().unwrap(), p.name()));
    let r = report.submit();
    out.push((r.result().unwrap(), r.name()));
    // A direct call is named from its arguments too.
    let direct = shout(9);
    out.push((direct.clone(), direct));
    out
}

fn check(label: &str, got: Vec<(String, String)>) {
    let expected = [
        "shout-3",
        "shout-4",
        "shout-5",
        // A future shows as its run's name: the name is given at the call.
        "shout-seven-0",
        "  ab|{literal}",
        "nightly-report",
        "shout-9",
    ];
    let seen: Vec<&str> = got.iter().map(|(seen, _)| seen.as_str()).collect();
    let futures: Vec<&str> = got.iter().map(|(_, f)| f.as_str()).collect();
    assert_eq!(seen, expected, "{label}: names the runs saw");
    assert_eq!(futures, expected, "{label}: names of the futures");
}

#[test]
fn task_run_names_come_from_the_template_or_the_function() {
    #[flow]
    fn threads() -> Vec<(String, String)> {
        names()
    }
    #[flow(task_runner = cluster())]
    fn local_cluster() -> Vec<(String, String)> {
        names()
    }
    check("threads", threads().unwrap());
    check("local cluster", local_cluster().unwrap());
}

#[test]
fn flow_run_names_come_from_the_template() {
    #[flow(flow_run_name = "daily-{day}")]
    fn threads(day: u32) -> String {
        let _ = day;
        current_flow_run_name().unwrap_or_default()
    }
    #[flow(task_runner = cluster(), flow_run_name = "daily-{day}")]
    fn local_cluster(day: u32) -> String {
        let _ = day;
        seven.submit().result().unwrap();
        current_flow_run_name().unwrap_or_default()
    }
    assert_eq!(threads(3).unwrap(), "daily-3");
    assert_eq!(threads.return_state(4).name(), "daily-4");
    assert_eq!(local_cluster(5).unwrap(), "daily-5");
    // `run_name` given per call still wins.
    let renamed = threads.with_options(flowrun::FlowOptions::new().run_name("by-hand"));
    assert_eq!(renamed.call(6).unwrap(), "by-hand");
}

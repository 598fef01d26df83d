//! A temporary home leaves nothing behind when its flow runs on a local
//! cluster, whose worker processes run the test up to the flow call too.
//! A test binary of its own: it points `TMPDIR` at a folder it watches.

use flowrun::{flow, task};

#[task]
fn double(x: u64) -> u64 {
    x * 2
}

#[flow(task_runner = flowrun_dask::DaskTaskRunner::new().cluster_kwargs(
    flowrun_dask::ClusterKwargs::new().n_workers(2).threads_per_worker(1)
))]
fn on_cluster(n: u64) -> u64 {
    (0..n)
        .map(|i| double.submit(i))
        .map(|f| f.result().unwrap())
        .sum()
}

#[test]
fn a_temporary_home_used_with_a_local_cluster_leaves_no_folder() {
    // Set before the cluster starts: its workers inherit it. A worker sees
    // the parent's value, so the folder is the same in both.
    let tmp = match std::env::var_os("FLOWRUN_TEST_TMPDIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            let dir = tempfile::tempdir().unwrap().keep();
            std::env::set_var("FLOWRUN_TEST_TMPDIR", &dir);
            dir
        }
    };
    std::env::set_var("TMPDIR", &tmp);
    {
        let home = flowrun::history::temp_home();
        assert_eq!(on_cluster(10).unwrap(), 90);
        home.flush();
        assert!(home.path().starts_with(&tmp));
    }
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("flowrun-home-"))
        .collect();
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        left.is_empty(),
        "left behind in the temporary folder: {left:?}"
    );
}

use flowrun::dask::ClusterKwargs;

fn main() {
    // Counts are unsigned: a negative worker count does not compile.
    let _ = ClusterKwargs::new().n_workers(-1);
}

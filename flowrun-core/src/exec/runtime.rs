//! The tokio runtime flowrun drives async tasks on when they run on its own
//! threads. It never runs inside the caller's runtime.

use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// flowrun's own multi-thread tokio runtime, created on first use.
///
/// Async tasks run here when a runner executes them on a pool thread. Using
/// a separate runtime means a blocking flow can be called from inside the
/// caller's tokio runtime without "cannot start a runtime from within a
/// runtime" panics.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flowrun-rt")
            .enable_all()
            .build()
            .expect("flowrun could not start its tokio runtime")
    })
}

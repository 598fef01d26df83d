//! The home a flow run uses: the folder the run history records into and
//! whose `storage/` holds the results of tasks that name no
//! `result_storage`.
//!
//! A flow run's home is the one its thread was given with
//! [`set_thread_home`] (what `flowrun_history::temp_home` and `use_home`
//! do), else its parent flow run's, else the process's: `FLOWRUN_HOME`,
//! else `~/.flowrun`. Keeping this in one place makes a temporary home a
//! whole home: the records and the results of a test go to the same folder.
//!
//! ```
//! use std::path::PathBuf;
//!
//! let previous = flowrun_core::home::set_thread_home(Some(PathBuf::from("/tmp/h")));
//! assert_eq!(flowrun_core::home::thread_home(), Some(PathBuf::from("/tmp/h")));
//! flowrun_core::home::set_thread_home(previous);
//! ```

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

thread_local! {
    static THREAD_HOME: RefCell<Option<Arc<Path>>> = const { RefCell::new(None) };
}

/// Makes flow runs started on this thread from now on (and their subflows)
/// use `home` (`None`: the process's home again). Returns the home this
/// thread had, to put back.
pub fn set_thread_home(home: Option<PathBuf>) -> Option<PathBuf> {
    let home = home.map(Arc::<Path>::from);
    THREAD_HOME
        .with(|h| std::mem::replace(&mut *h.borrow_mut(), home))
        .map(|p| p.to_path_buf())
}

/// The home this thread was given with [`set_thread_home`], if any.
pub fn thread_home() -> Option<PathBuf> {
    THREAD_HOME.with(|h| h.borrow().as_deref().map(Path::to_path_buf))
}

/// The home of a flow run starting now on this thread: the thread's, else
/// its parent flow run's; `None`: the process's.
pub(crate) fn for_new_flow() -> Option<Arc<Path>> {
    THREAD_HOME
        .with(|h| h.borrow().clone())
        .or_else(|| crate::flow::subflow::current_parent().and_then(|p| p.flow.home.clone()))
}

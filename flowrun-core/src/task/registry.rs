//! The task registry: every `#[task]` registers itself under a stable key
//! (`module::path::function`), so a process can run any task by name from
//! serialized arguments, as worker processes do.
//!
//! ```
//! let registry = flowrun_core::registry::registry();
//! for task in registry.iter() {
//!     println!("{} (runs in other processes: {})", task.key(), task.serialization_error().is_none());
//! }
//! ```

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use crate::run::error::{TaskError, TaskErrorKind};
use crate::task::{EncodedRun, HeldRun, Task};

pub use crate::task::held::{ArgValue, Held};

/// What `#[task]` submits to the registry.
#[derive(Debug)]
pub struct TaskRegistration {
    /// `module::path::function`.
    pub key: &'static str,
    /// Builds the entry (on first use of the registry).
    pub entry: fn() -> RegistryEntry,
}

inventory::collect!(TaskRegistration);

/// A registered task, type-erased.
#[derive(Debug, Clone, Copy)]
pub struct RegistryEntry {
    key: &'static str,
    name: &'static str,
    is_async: bool,
    run: Result<EncodedRun, &'static str>,
    run_held: Result<HeldRun, &'static str>,
    signature: fn() -> String,
    meta: fn() -> &'static crate::task::TaskMeta,
}

impl RegistryEntry {
    /// The entry of task `T`.
    pub fn of<T: Task>() -> RegistryEntry {
        let meta = T::meta();
        let support: &'static crate::task::TaskSupport<T> = T::support();
        let run = match &support.serialized {
            Ok(fns) => Ok(fns.run),
            Err(why) => Err(why.as_str()),
        };
        let run_held = match &support.serialized {
            Ok(fns) => Ok(fns.run_held),
            Err(why) => Err(why.as_str()),
        };
        RegistryEntry {
            key: meta.key,
            name: meta.name,
            is_async: meta.is_async,
            run,
            run_held,
            signature: || {
                format!(
                    "{} -> {}",
                    std::any::type_name::<T::Args>(),
                    std::any::type_name::<T::Output>()
                )
            },
            meta: T::meta,
        }
    }

    /// The registry key.
    pub fn key(&self) -> &'static str {
        self.key
    }

    /// The task's display name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The task's static description (options, retries, timeout).
    pub fn meta(&self) -> &'static crate::task::TaskMeta {
        (self.meta)()
    }

    /// The task is an `async fn`.
    pub fn is_async(&self) -> bool {
        self.is_async
    }

    /// Why the task cannot run from serialized arguments, if it cannot.
    pub fn serialization_error(&self) -> Option<&'static str> {
        self.run.err()
    }

    /// Argument and result types, for build fingerprints and diagnostics.
    pub fn signature(&self) -> String {
        (self.signature)()
    }

    /// Runs one attempt of the task run named `run_name` on behalf of the
    /// flow process (logs carry the run's name), and, when `hooks` is set,
    /// calls the task's own hooks around it as the flow asked (see
    /// [`TaskHookCall`](crate::TaskHookCall)). What worker processes call.
    pub fn run_attempt(
        &self,
        args: &[&[u8]],
        run_name: &str,
        hooks: Option<crate::TaskHookCall>,
    ) -> Result<Vec<u8>, TaskError> {
        crate::exec::context::with_task_run_name(run_name, || match hooks {
            Some(call) => {
                crate::run::task_hooks::with_hooks(self.meta(), run_name, call, || self.run(args))
            }
            None => self.run(args),
        })
    }

    /// Why this task cannot run from serialized arguments (`why`: what its
    /// types lack).
    fn cannot_run(&self, why: &str) -> TaskError {
        TaskError::new(
            TaskErrorKind::Runner,
            format!(
                "task '{}' cannot run from serialized arguments: {why}",
                self.name
            ),
        )
    }

    /// Runs one attempt of the task in this process from serialized
    /// arguments (one slot per argument) and returns its serialized result.
    /// Panics and `Err` returns become the error.
    pub fn run(&self, args: &[&[u8]]) -> Result<Vec<u8>, TaskError> {
        match self.run {
            Ok(run) => run(args),
            Err(why) => Err(self.cannot_run(why)),
        }
    }
}

impl RegistryEntry {
    /// [`RegistryEntry::run_attempt`] for [`RegistryEntry::run_held`]: one
    /// attempt of the run named `run_name`, calling the task's hooks here
    /// when `hooks` says this process calls them.
    pub fn run_held_attempt(
        &self,
        args: Vec<ArgValue<'_>>,
        run_name: &str,
        hooks: Option<crate::TaskHookCall>,
    ) -> Result<Held, TaskError> {
        crate::exec::context::with_task_run_name(run_name, || match hooks {
            Some(call) => crate::run::task_hooks::with_hooks(self.meta(), run_name, call, || {
                self.run_held(args)
            }),
            None => self.run_held(args),
        })
    }

    /// [`RegistryEntry::run`] from arguments some of which this process
    /// holds as values (moved into the call when of the argument's type),
    /// to the result held as its value: a worker keeps it so that the next
    /// task it runs on this worker takes it without decoding it.
    pub fn run_held(&self, args: Vec<ArgValue<'_>>) -> Result<Held, TaskError> {
        match self.run_held {
            Ok(run) => run(args),
            Err(why) => Err(self.cannot_run(why)),
        }
    }
}

/// Every task of this program, by key.
#[derive(Debug)]
pub struct Registry {
    tasks: HashMap<&'static str, RegistryEntry>,
    sorted: Vec<&'static str>,
    duplicates: Vec<&'static str>,
}

impl Registry {
    /// The task registered under `key`.
    pub fn get(&self, key: &str) -> Option<&RegistryEntry> {
        self.tasks.get(key)
    }

    /// All tasks, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = &RegistryEntry> {
        self.sorted.iter().map(|k| &self.tasks[k])
    }

    /// How many tasks are registered.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// No task is registered.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Keys registered more than once (a bug: names would be ambiguous).
    pub fn duplicates(&self) -> &[&'static str] {
        &self.duplicates
    }

    /// A hash of every task's key and types: two processes with the same
    /// fingerprint agree on what every task name means.
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for entry in self.iter() {
            entry.key.hash(&mut h);
            entry.signature().hash(&mut h);
        }
        h.finish()
    }
}

/// The registry of this program, built on first use.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut tasks = HashMap::new();
        let mut duplicates = Vec::new();
        for reg in inventory::iter::<TaskRegistration> {
            if tasks.insert(reg.key, (reg.entry)()).is_some() {
                duplicates.push(reg.key);
            }
        }
        let mut sorted: Vec<&'static str> = tasks.keys().copied().collect();
        sorted.sort_unstable();
        Registry {
            tasks,
            sorted,
            duplicates,
        }
    })
}

//! Cache policies: what a cache key is made of, in Prefect's vocabulary.

use std::fmt;
use std::ops::Add;

/// What a task run's cache key is computed from. Policies combine with
/// `+`, as in Prefect: `INPUTS + TASK_SOURCE`.
///
/// The key always includes the task's registry key, so two tasks never
/// share a cached result.
///
/// ```
/// use flowrun_core::cache::CachePolicy;
/// let policy = CachePolicy::INPUTS + CachePolicy::TASK_SOURCE;
/// assert!(policy.contains(CachePolicy::INPUTS));
/// assert!(!policy.contains(CachePolicy::RUN_ID));
/// assert_eq!(policy.to_string(), "INPUTS + TASK_SOURCE");
/// assert_eq!(CachePolicy::DEFAULT, CachePolicy::INPUTS + CachePolicy::TASK_SOURCE + CachePolicy::RUN_ID);
/// assert!(CachePolicy::NONE.is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CachePolicy(u8);

impl CachePolicy {
    /// No caching.
    pub const NONE: CachePolicy = CachePolicy(0);
    /// The run's arguments (their serialized bytes; an upstream run's
    /// cache key when it has one, else its serialized result).
    pub const INPUTS: CachePolicy = CachePolicy(1);
    /// The task's source code, hashed by `#[task]` at compile time.
    pub const TASK_SOURCE: CachePolicy = CachePolicy(2);
    /// The flow run's parameters.
    pub const FLOW_PARAMETERS: CachePolicy = CachePolicy(4);
    /// The flow run's id: results are reused within one flow run only.
    pub const RUN_ID: CachePolicy = CachePolicy(8);
    /// Prefect's default: `INPUTS + TASK_SOURCE + RUN_ID`.
    pub const DEFAULT: CachePolicy = CachePolicy(1 | 2 | 8);

    /// Every part of `other` is part of this policy.
    pub fn contains(self, other: CachePolicy) -> bool {
        self.0 & other.0 == other.0
    }

    /// This is [`CachePolicy::NONE`].
    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The key is the same in every flow run (no [`CachePolicy::RUN_ID`]),
    /// so a rerun of a flow resumes from the results of an earlier one.
    pub fn spans_runs(self) -> bool {
        !self.contains(CachePolicy::RUN_ID)
    }

    pub(crate) fn bits(self) -> u8 {
        self.0
    }
}

impl Add for CachePolicy {
    type Output = CachePolicy;
    /// The union of both policies (Prefect's `+`).
    #[allow(clippy::suspicious_arithmetic_impl)]
    fn add(self, rhs: CachePolicy) -> CachePolicy {
        CachePolicy(self.0 | rhs.0)
    }
}

impl fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("NONE");
        }
        let names = [
            (CachePolicy::INPUTS, "INPUTS"),
            (CachePolicy::TASK_SOURCE, "TASK_SOURCE"),
            (CachePolicy::FLOW_PARAMETERS, "FLOW_PARAMETERS"),
            (CachePolicy::RUN_ID, "RUN_ID"),
        ];
        let mut first = true;
        for (p, name) in names {
            if self.contains(p) {
                if !first {
                    f.write_str(" + ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachePolicy({self})")
    }
}

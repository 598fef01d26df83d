//! What a task accepts for each argument: a value, or the future of a run
//! that produces one (a dependency). And what `map` accepts: iterables, or
//! values held constant with [`unmapped`].

use std::fmt;

use crate::run::allow::AllowedUpstream;
use crate::run::error::TaskError;
use crate::run::future::TaskFuture;
use crate::run::record::RunRef;
pub use crate::task::gather::Gather;

/// One argument of a task call: a value now, or the result of an upstream run.
pub enum Input<A: Send + 'static> {
    /// A value.
    Value(A),
    /// The result of an upstream run; the call waits for it.
    Future(TaskFuture<A>),
    /// A collection holding futures (`Vec<TaskFuture<T>>` where a task takes
    /// a `Vec<T>`): every future in it is a dependency of the call.
    Gather(Gather<A>),
    /// The outcome of an upstream run, failed or not, as a `Result`
    /// ([`allow_failure`](crate::allow_failure)); the call waits for it.
    AllowFailure(AllowedUpstream<A>),
}

impl<A: Send + 'static> Input<A> {
    /// Adds the upstream runs of this input (none for a value) to `out`.
    pub fn upstreams(&self, out: &mut Vec<RunRef>) {
        match self {
            Input::Value(_) => {}
            Input::Future(f) => out.push(f.run_ref()),
            Input::Gather(g) => out.extend(g.upstreams()),
            Input::AllowFailure(a) => out.push(a.upstream()),
        }
    }

    /// The value, once any upstream run is final. An upstream failure
    /// becomes [`TaskErrorKind::UpstreamFailed`](crate::TaskErrorKind::UpstreamFailed).
    pub fn resolve(self) -> Result<A, TaskError> {
        match self {
            Input::Value(v) => Ok(v),
            Input::Future(f) => {
                f.cell.mark_observed();
                if let Some(e) = f.cell.error() {
                    return Err(upstream_failed(&f.name(), &e));
                }
                let last = f.cell.handles() == 1;
                f.cell.take_result(last)
            }
            Input::Gather(g) => (g.build)(),
            Input::AllowFailure(a) => Ok(a.take()),
        }
    }
}

pub(crate) fn upstream_failed(upstream: &str, error: &TaskError) -> TaskError {
    TaskError::upstream_failed(upstream, error)
}

impl<A: Send + 'static> fmt::Debug for Input<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Value(_) => f.write_str("Input::Value(..)"),
            Input::Future(fut) => write!(f, "Input::Future({})", fut.name()),
            Input::Gather(g) => write!(f, "Input::{g:?}"),
            Input::AllowFailure(a) => write!(f, "Input::AllowFailure({a:?})"),
        }
    }
}

/// Anything a task accepts where it takes an `A`: an `A`, a
/// `TaskFuture<A>` or a `&TaskFuture<A>`.
pub trait IntoInput<A: Send + 'static> {
    /// Converts into an [`Input`].
    fn into_input(self) -> Input<A>;
}

impl<A: Send + 'static> IntoInput<A> for A {
    fn into_input(self) -> Input<A> {
        Input::Value(self)
    }
}

impl<A: Send + 'static> IntoInput<A> for TaskFuture<A> {
    fn into_input(self) -> Input<A> {
        Input::Future(self)
    }
}

impl<A: Send + 'static> IntoInput<A> for &TaskFuture<A> {
    fn into_input(self) -> Input<A> {
        Input::Future(self.clone())
    }
}

/// `&str` where a task takes a `String`.
impl IntoInput<String> for &str {
    fn into_input(self) -> Input<String> {
        Input::Value(self.to_owned())
    }
}

/// `&String` where a task takes a `String`.
impl IntoInput<String> for &String {
    fn into_input(self) -> Input<String> {
        Input::Value(self.clone())
    }
}

impl<A: Send + 'static> IntoInput<A> for Input<A> {
    fn into_input(self) -> Input<A> {
        self
    }
}

/// Marks an argument of `map` as the same for every mapped call.
///
/// ```
/// use flowrun_core::unmapped;
/// let factor = unmapped(10);
/// # let _ = factor;
/// ```
#[derive(Debug, Clone)]
pub struct Unmapped<X>(pub X);

/// Holds `value` constant across a `map` (it is cloned for each call).
pub fn unmapped<X>(value: X) -> Unmapped<X> {
    Unmapped(value)
}

/// Where the arguments of the mapped calls come from.
pub enum MapSource<A: Send + 'static> {
    /// One input per call.
    Many(std::vec::IntoIter<Input<A>>),
    /// The same input for every call.
    One(Box<dyn FnMut() -> Input<A> + Send>),
}

impl<A: Send + 'static> MapSource<A> {
    /// How many calls this argument provides for, if it is mapped
    /// (`None` for an unmapped argument).
    pub fn mapped_len(&self) -> Option<usize> {
        match self {
            MapSource::Many(it) => Some(it.len()),
            MapSource::One(_) => None,
        }
    }

    /// The input for the next call.
    pub fn next_input(&mut self) -> Input<A> {
        match self {
            MapSource::Many(it) => it.next().expect("map checked the lengths"),
            MapSource::One(f) => f(),
        }
    }
}

/// Anything `map` accepts for an argument of type `A`: an iterable of
/// values or futures, or an [`Unmapped`] value.
pub trait MapArg<A: Send + 'static> {
    /// Converts into a [`MapSource`].
    fn into_source(self) -> MapSource<A>;
}

impl<A, I> MapArg<A> for I
where
    A: Send + 'static,
    I: IntoIterator,
    I::Item: IntoInput<A>,
{
    fn into_source(self) -> MapSource<A> {
        let inputs: Vec<Input<A>> = self.into_iter().map(IntoInput::into_input).collect();
        MapSource::Many(inputs.into_iter())
    }
}

impl<A, X> MapArg<A> for Unmapped<X>
where
    A: Send + 'static,
    X: IntoInput<A> + Clone + Send + 'static,
{
    fn into_source(self) -> MapSource<A> {
        let value = self.0;
        MapSource::One(Box::new(move || value.clone().into_input()))
    }
}

/// Why `map` could not create its calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// Mapped arguments have different lengths.
    #[error(
        "cannot map task '{task}': {details}; every mapped argument must have the same length"
    )]
    UnequalLengths {
        /// The task's name.
        task: String,
        /// Each mapped argument and its length.
        details: String,
    },
    /// Every argument is unmapped, so there is nothing to map over.
    #[error(
        "cannot map task '{task}': every argument is unmapped, so there is nothing to map over"
    )]
    NothingToMap {
        /// The task's name.
        task: String,
    },
}

/// The number of calls of a `map`, checking that mapped arguments agree.
pub fn map_len(task: &str, lengths: &[(&str, Option<usize>)]) -> Result<usize, MapError> {
    let mapped: Vec<(&str, usize)> = lengths
        .iter()
        .filter_map(|(name, len)| len.map(|l| (*name, l)))
        .collect();
    let Some(&(_, first)) = mapped.first() else {
        return Err(MapError::NothingToMap {
            task: task.to_owned(),
        });
    };
    if mapped.iter().all(|(_, l)| *l == first) {
        return Ok(first);
    }
    let details = mapped
        .iter()
        .map(|(name, l)| format!("`{name}` has {l}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(MapError::UnequalLengths {
        task: task.to_owned(),
        details,
    })
}

impl<A: Send + 'static> std::fmt::Debug for MapSource<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapSource::Many(inputs) => f.debug_tuple("Many").field(&inputs.len()).finish(),
            MapSource::One(_) => f.write_str("One"),
        }
    }
}

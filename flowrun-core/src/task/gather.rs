//! Futures inside collections: a task that takes a `Vec<T>` (an array, an
//! `Option<T>`, a tuple, a map with `T` values) accepts the same collection
//! of `TaskFuture<T>`s, and every future in it is a dependency of the call.
//!
//! On the thread runner the collection is built from the upstream results
//! when they are final. For another process the argument is sent as pieces,
//! the collection's own bytes (a length, a map key) and the encoded upstream
//! results, which the process that runs the task joins: postcard encodes a
//! collection as the concatenation of its elements' encodings, so no result
//! is decoded or copied by the flow (on a local cluster a large one stays a
//! reference into the result store).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};

use bytes::Bytes;
use serde::Serialize;

use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::future::TaskFuture;
use crate::run::record::RunRef;
use crate::task::args::{encode_value, length_prefix, ArgSlot};
use crate::task::input::{upstream_failed, Input, IntoInput, MapArg, MapSource};

/// A value built from upstream results: the [`Input::Gather`] of a
/// collection of futures.
pub struct Gather<A: Send + 'static> {
    /// The argument's encoding, piece by piece: its own bytes and the
    /// upstream results, in order. An error if a map key does not serialize.
    pieces: Result<Vec<ArgSlot>, String>,
    upstreams: Vec<RunRef>,
    pub(crate) build: Box<dyn FnOnce() -> Result<A, TaskError> + Send>,
}

impl<A: Send + 'static> Gather<A> {
    fn input(
        pieces: Result<Vec<ArgSlot>, String>,
        upstreams: Vec<RunRef>,
        build: impl FnOnce() -> Result<A, TaskError> + Send + 'static,
    ) -> Input<A> {
        Input::Gather(Gather {
            pieces,
            upstreams,
            build: Box::new(build),
        })
    }

    /// The upstream runs of the collection.
    pub fn upstreams(&self) -> impl Iterator<Item = RunRef> + '_ {
        self.upstreams.iter().cloned()
    }

    /// The argument's encoding as pieces to join.
    pub(crate) fn pieces(&self, index: usize) -> Result<Vec<ArgSlot>, TaskError> {
        self.pieces
            .clone()
            .map_err(|e| crate::task::args::not_serializable::<A>(index, e))
    }
}

impl<A: Send + 'static> std::fmt::Debug for Gather<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather")
            .field("upstreams", &self.upstreams.len())
            .finish_non_exhaustive()
    }
}

/// The value of one future of a collection.
fn take<T: Send + 'static>(f: TaskFuture<T>) -> Result<T, TaskError> {
    Input::Future(f).resolve()
}

fn prefix(len: usize) -> ArgSlot {
    ArgSlot::Bytes(Bytes::from(length_prefix(len)))
}

fn vec_input<T: Send + 'static>(futures: Vec<TaskFuture<T>>) -> Input<Vec<T>> {
    let upstreams: Vec<RunRef> = futures.iter().map(TaskFuture::run_ref).collect();
    let mut pieces = Vec::with_capacity(upstreams.len() + 1);
    pieces.push(prefix(upstreams.len()));
    pieces.extend(upstreams.iter().cloned().map(ArgSlot::Upstream));
    Gather::input(Ok(pieces), upstreams, move || {
        futures.into_iter().map(take).collect()
    })
}

/// `Vec<TaskFuture<T>>` where a task takes a `Vec<T>`.
impl<T: Send + 'static> IntoInput<Vec<T>> for Vec<TaskFuture<T>> {
    fn into_input(self) -> Input<Vec<T>> {
        vec_input(self)
    }
}

/// `Vec<&TaskFuture<T>>` where a task takes a `Vec<T>`.
impl<T: Send + 'static> IntoInput<Vec<T>> for Vec<&TaskFuture<T>> {
    fn into_input(self) -> Input<Vec<T>> {
        vec_input(self.into_iter().cloned().collect())
    }
}

/// `&[TaskFuture<T>]` where a task takes a `Vec<T>`.
impl<T: Send + 'static> IntoInput<Vec<T>> for &[TaskFuture<T>] {
    fn into_input(self) -> Input<Vec<T>> {
        vec_input(self.to_vec())
    }
}

/// `&Vec<TaskFuture<T>>` where a task takes a `Vec<T>`.
impl<T: Send + 'static> IntoInput<Vec<T>> for &Vec<TaskFuture<T>> {
    fn into_input(self) -> Input<Vec<T>> {
        vec_input(self.clone())
    }
}

/// `[TaskFuture<T>; N]` where a task takes a `Vec<T>`.
impl<T: Send + 'static, const N: usize> IntoInput<Vec<T>> for [TaskFuture<T>; N] {
    fn into_input(self) -> Input<Vec<T>> {
        vec_input(self.into())
    }
}

/// `[TaskFuture<T>; N]` where a task takes a `[T; N]`.
impl<T: Send + 'static, const N: usize> IntoInput<[T; N]> for [TaskFuture<T>; N] {
    fn into_input(self) -> Input<[T; N]> {
        let upstreams: Vec<RunRef> = self.iter().map(TaskFuture::run_ref).collect();
        // An array is encoded as its elements, with no length.
        let pieces = upstreams.iter().cloned().map(ArgSlot::Upstream).collect();
        Gather::input(Ok(pieces), upstreams, move || {
            let values = self.into_iter().map(take).collect::<Result<Vec<T>, _>>()?;
            <[T; N]>::try_from(values).map_err(|v| {
                TaskError::new(
                    TaskErrorKind::Runner,
                    format!("an array of {N} futures gave {} values", v.len()),
                )
            })
        })
    }
}

/// `Option<TaskFuture<T>>` where a task takes an `Option<T>`.
impl<T: Send + 'static> IntoInput<Option<T>> for Option<TaskFuture<T>> {
    fn into_input(self) -> Input<Option<T>> {
        let Some(future) = self else {
            return Input::Value(None);
        };
        let up = future.run_ref();
        let pieces = vec![
            ArgSlot::Bytes(Bytes::from_static(&[1])),
            ArgSlot::Upstream(up.clone()),
        ];
        Gather::input(Ok(pieces), vec![up], move || take(future).map(Some))
    }
}

/// `Option<&TaskFuture<T>>` where a task takes an `Option<T>`.
impl<T: Send + 'static> IntoInput<Option<T>> for Option<&TaskFuture<T>> {
    fn into_input(self) -> Input<Option<T>> {
        self.cloned().into_input()
    }
}

macro_rules! tuple_gathers {
    ($( ($($name:ident $idx:tt),*) )*) => {$(
        /// A tuple of futures where a task takes the tuple of their values.
        impl<$($name: Send + 'static),*> IntoInput<($($name,)*)> for ($(TaskFuture<$name>,)*) {
            fn into_input(self) -> Input<($($name,)*)> {
                let upstreams = vec![$(self.$idx.run_ref()),*];
                // A tuple is encoded as its elements in order.
                let pieces = upstreams.iter().cloned().map(ArgSlot::Upstream).collect();
                Gather::input(Ok(pieces), upstreams, move || Ok(($(take(self.$idx)?,)*)))
            }
        }
    )*};
}

tuple_gathers! {
    (A0 0, A1 1)
    (A0 0, A1 1, A2 2)
    (A0 0, A1 1, A2 2, A3 3)
    (A0 0, A1 1, A2 2, A3 3, A4 4)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5)
}

/// A map's entries as pieces: its length, then each key and value.
fn map_input<K, V, M>(entries: Vec<(K, TaskFuture<V>)>) -> Input<M>
where
    K: Serialize + Send + 'static,
    V: Send + 'static,
    M: FromIterator<(K, V)> + Send + 'static,
{
    let upstreams: Vec<RunRef> = entries.iter().map(|(_, f)| f.run_ref()).collect();
    let pieces = (|| {
        let mut pieces = Vec::with_capacity(2 * entries.len() + 1);
        pieces.push(prefix(entries.len()));
        for ((key, _), up) in entries.iter().zip(&upstreams) {
            pieces.push(ArgSlot::Bytes(Bytes::from(encode_value(key)?)));
            pieces.push(ArgSlot::Upstream(up.clone()));
        }
        Ok(pieces)
    })();
    Gather::input(pieces, upstreams, move || {
        entries
            .into_iter()
            .map(|(k, f)| take(f).map(|v| (k, v)))
            .collect()
    })
}

/// `HashMap<K, TaskFuture<V>>` where a task takes a `HashMap<K, V>`.
impl<K, V, S> IntoInput<HashMap<K, V, S>> for HashMap<K, TaskFuture<V>, S>
where
    K: Serialize + Eq + Hash + Send + 'static,
    V: Send + 'static,
    S: BuildHasher + Default + Send + 'static,
{
    fn into_input(self) -> Input<HashMap<K, V, S>> {
        map_input(self.into_iter().collect())
    }
}

/// `BTreeMap<K, TaskFuture<V>>` where a task takes a `BTreeMap<K, V>`.
impl<K, V> IntoInput<BTreeMap<K, V>> for BTreeMap<K, TaskFuture<V>>
where
    K: Serialize + Ord + Send + 'static,
    V: Send + 'static,
{
    fn into_input(self) -> Input<BTreeMap<K, V>> {
        map_input(self.into_iter().collect())
    }
}

/// A future of a list where `map` takes an iterable: `map` waits for the
/// list and makes one call per element, as Prefect resolves a future it maps
/// over. A failed list makes one call that fails as its upstream did.
impl<A: Send + 'static> MapArg<A> for TaskFuture<Vec<A>> {
    fn into_source(self) -> MapSource<A> {
        let up = self.run_ref();
        let inputs = match self.into_result() {
            Ok(values) => values.into_iter().map(Input::Value).collect(),
            Err(e) => {
                let name = up.name();
                let pieces = Ok(vec![ArgSlot::Upstream(up.clone())]);
                vec![Gather::input(pieces, vec![up], move || {
                    Err(upstream_failed(&name, &e))
                })]
            }
        };
        MapSource::Many(inputs.into_iter())
    }
}

/// A borrowed future of a list where `map` takes an iterable (see above).
impl<A: Send + 'static> MapArg<A> for &TaskFuture<Vec<A>> {
    fn into_source(self) -> MapSource<A> {
        self.clone().into_source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::args::SerializedArgs;

    fn enc<T: Serialize>(v: &T) -> Vec<u8> {
        encode_value(v).unwrap()
    }

    /// The pieces rest on postcard encoding a collection as its own bytes
    /// followed by its elements' encodings.
    #[test]
    fn collections_encode_as_the_concatenation_of_their_pieces() {
        let (a, b) = (String::from("alpha"), String::from("beta"));
        let joined = |parts: &[Vec<u8>]| parts.concat();
        assert_eq!(
            enc(&vec![a.clone(), b.clone()]),
            joined(&[length_prefix(2), enc(&a), enc(&b)])
        );
        assert_eq!(enc(&[a.clone(), b.clone()]), joined(&[enc(&a), enc(&b)]));
        assert_eq!(enc(&Some(a.clone())), joined(&[vec![1], enc(&a)]));
        assert_eq!(enc(&(a.clone(), 7u64)), joined(&[enc(&a), enc(&7u64)]));
        let map: BTreeMap<u32, String> = [(1, a.clone()), (300, b.clone())].into();
        assert_eq!(
            enc(&map),
            joined(&[length_prefix(2), enc(&1u32), enc(&a), enc(&300u32), enc(&b)])
        );
        let many: Vec<u64> = (0..200).collect();
        let mut parts = vec![length_prefix(many.len())];
        parts.extend(many.iter().map(enc));
        assert_eq!(enc(&many), joined(&parts));
    }

    #[test]
    fn arguments_in_pieces_decode_and_a_bad_layout_is_a_clear_error() {
        type Args = (Vec<u64>, String, Option<u64>);
        let first = [length_prefix(2), enc(&5u64), enc(&6u64)];
        let second = enc(&"x".to_owned());
        let third = [vec![1], enc(&9u64)];
        let counts = enc(&vec![3u32, 1, 2]);
        let slots: Vec<&[u8]> = first
            .iter()
            .chain([&second])
            .chain(&third)
            .chain([&counts])
            .map(|s| &s[..])
            .collect();
        let args = <Args as SerializedArgs>::decode(&slots).unwrap();
        assert_eq!(args, (vec![5, 6], "x".to_owned(), Some(9)));
        // Counts that do not add up to the pieces.
        let wrong = enc(&vec![3u32, 1, 1]);
        let mut bad = slots.clone();
        *bad.last_mut().unwrap() = &wrong;
        let error = <Args as SerializedArgs>::decode(&bad).unwrap_err();
        assert_eq!(error, "expected 3 arguments, got 7");
        let plain: Vec<&[u8]> = vec![&second];
        assert_eq!(
            <(String, String) as SerializedArgs>::decode(&plain).unwrap_err(),
            "expected 2 arguments, got 1"
        );
    }
}

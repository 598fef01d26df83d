//! `map`: one run per element, `unmapped` arguments, futures as elements,
//! and a clear error for arguments of different lengths.

use flowrun::{flow, task, unmapped, MapError};

#[task]
fn times(value: i64, factor: i64) -> i64 {
    value * factor
}

#[task]
fn negate(value: i64) -> i64 {
    -value
}

#[test]
fn map_runs_once_per_element_in_order() {
    #[flow]
    fn flow_under_test() -> Vec<i64> {
        let futures = negate.map(vec![1, 2, 3]).unwrap();
        assert_eq!(futures.len(), 3);
        flowrun::results(futures).unwrap()
    }
    assert_eq!(flow_under_test().unwrap(), vec![-1, -2, -3]);
}

#[test]
fn map_zips_several_iterables() {
    #[flow]
    fn flow_under_test() -> Vec<i64> {
        flowrun::results(times.map([1, 2, 3], 10..13).unwrap()).unwrap()
    }
    assert_eq!(flow_under_test().unwrap(), vec![10, 22, 36]);
}

#[test]
fn unmapped_arguments_are_the_same_for_every_run() {
    #[flow]
    fn flow_under_test() -> Vec<i64> {
        flowrun::results(times.map(vec![1, 2, 3], unmapped(100)).unwrap()).unwrap()
    }
    assert_eq!(flow_under_test().unwrap(), vec![100, 200, 300]);
}

#[test]
fn futures_can_be_mapped_over_and_held_unmapped() {
    #[flow]
    fn flow_under_test() -> Vec<i64> {
        let negated = negate.map(vec![1, 2, 3]).unwrap();
        let factor = times.submit(2, 5);
        let products = times.map(&negated, unmapped(factor)).unwrap();
        flowrun::results(products).unwrap()
    }
    assert_eq!(flow_under_test().unwrap(), vec![-10, -20, -30]);
}

#[test]
fn unequal_lengths_are_an_error_naming_the_arguments() {
    #[flow]
    fn flow_under_test() -> MapError {
        times.map(vec![1, 2, 3], vec![1, 2]).unwrap_err()
    }
    let error = flow_under_test().unwrap();
    assert!(matches!(error, MapError::UnequalLengths { .. }));
    let message = error.to_string();
    assert!(message.contains("`value` has 3"), "{message}");
    assert!(message.contains("`factor` has 2"), "{message}");
}

#[test]
fn all_unmapped_is_an_error() {
    #[flow]
    fn flow_under_test() -> MapError {
        times.map(unmapped(1), unmapped(2)).unwrap_err()
    }
    assert!(matches!(
        flow_under_test().unwrap(),
        MapError::NothingToMap { .. }
    ));
}

#[test]
fn mapping_an_empty_iterable_submits_nothing() {
    #[flow]
    fn flow_under_test() -> usize {
        negate.map(Vec::<i64>::new()).unwrap().len()
    }
    assert_eq!(flow_under_test().unwrap(), 0);
}

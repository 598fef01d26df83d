//! Compile-time behaviour of the macros: what compiles, and the error
//! (spanned on the offending token) for each misuse.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}

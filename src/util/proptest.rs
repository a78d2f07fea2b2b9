//! The configuration every property test uses: a bounded number of cases (so the suite
//! stays fast), overridden by `PROPTEST_CASES` for a longer hunt
//! (`PROPTEST_CASES=100000 cargo test --lib proptests`), and no regression files written
//! into the source tree (a failure found is kept as a plain unit test instead).

use proptest::test_runner::Config;

/// `cases` cases, or `PROPTEST_CASES` when set.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

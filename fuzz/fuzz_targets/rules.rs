//! Fuzz target `rules`: aliases files, SRS addresses, DKIM body canonicalization; see
//! proto-core/tests/fuzzdriver for the invariants checked. Findings go to
//! fuzz/regressions/rules/, replayed on stable by proto-core's tests.
#![no_main]

#[path = "../../proto-core/tests/fuzzdriver/mod.rs"]
mod fuzzdriver;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzzdriver::run_rules(data);
});

//! Fuzz target `parsers`: see proto-core/tests/fuzzdriver for the invariants checked.
//! Findings go to fuzz/regressions/parsers/, replayed on stable by proto-core's tests.
#![no_main]

#[path = "../../proto-core/tests/fuzzdriver/mod.rs"]
mod fuzzdriver;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzzdriver::run_parsers(data);
});

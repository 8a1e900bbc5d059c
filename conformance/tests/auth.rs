//! The mail-authentication suites (SPF, DKIM, ARC, DMARC) against mail-auth, on a mock DNS.
//!
//! A `harness = false` test: prints one line per suite, `<suite>: N passed, M failed`, on
//! stdout; failure reports, and how many listed deviations each suite used, on stderr. Exits
//! non-zero on a failed case or a stale deviation. Arguments after `--` filter cases by
//! `suite/case` substring; `-v` reports passing cases too.

use std::process::ExitCode;

use postern_conformance::{Options, report, run_auth_suites};

fn main() -> ExitCode {
    report(run_auth_suites(&Options::from_args(
        std::env::args().skip(1),
    )))
}

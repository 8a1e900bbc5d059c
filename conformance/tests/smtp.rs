//! The SMTP dialogue suites (chasquid, Apache James MPT, RFC scenarios), run in memory.
//!
//! A `harness = false` test: prints `<suite>: N passed, M failed` for each suite on stdout,
//! the deviations each suite used and failure reports on stderr, and exits non-zero on a
//! failed scenario or a stale deviation. Arguments after `--` filter
//! scenarios by `suite/scenario` substring; `-v` shows passing transcripts too.

use std::process::ExitCode;

use postern_conformance::{Options, report, run_smtp_suites};

fn main() -> ExitCode {
    report(run_smtp_suites(&Options::from_args(
        std::env::args().skip(1),
    )))
}

//! The SMTP dialogue suites (chasquid, Apache James MPT, RFC scenarios), run in memory.
//!
//! A `harness = false` test: prints `<suite>: N passed, M failed` and
//! `<suite>: K listed deviations used` for each suite on stdout, failure reports on stderr, and
//! exits non-zero on a failed scenario or a stale deviation. Arguments after `--` filter
//! scenarios by `suite/scenario` substring; `-v` shows passing transcripts too.

use std::process::ExitCode;

use postern_conformance::{Options, run_smtp_suites};

fn main() -> ExitCode {
    let options = Options::from_args(std::env::args().skip(1));
    let reports = match run_smtp_suites(&options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conformance: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for report in &reports {
        for detail in &report.details {
            eprintln!("{detail}");
        }
        for stale in &report.stale_deviations {
            eprintln!("{}: error: {stale}", report.suite);
        }
        println!("{}", report.counts_line());
        println!("{}", report.deviations_line());
        ok &= report.ok();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! The mail-authentication suites (SPF, DKIM, ARC, DMARC) against mail-auth, on a mock DNS.
//!
//! A `harness = false` test: prints one line per suite, `<suite>: N passed, M failed`, on
//! stdout; failure reports, and how many listed deviations each suite used, on stderr. Exits
//! non-zero on a failed case or a stale deviation. Arguments after `--` filter cases by
//! `suite/case` substring; `-v` reports passing cases too.

use std::process::ExitCode;

use postern_conformance::{Options, run_auth_suites};

fn main() -> ExitCode {
    let options = Options::from_args(std::env::args().skip(1));
    let reports = match run_auth_suites(&options) {
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
        eprintln!("{}", report.deviations_line());
        println!("{}", report.counts_line());
        ok &= report.ok();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

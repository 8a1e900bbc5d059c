//! The `postern` binary: `postern [-C DIR] serve`, and the operator's commands. It parses the
//! command line; the library ([`postern`]) does the rest.

use std::process::ExitCode;

fn main() -> ExitCode {
    postern::run(argh::from_env())
}

//! External conformance suites: SMTP dialogues run in memory against
//! [`proto_core::server::Session`], and the mail-authentication suites (SPF, DKIM, ARC, DMARC) run
//! against mail-auth on a mock DNS.
//!
//! # What runs
//!
//! Three suites from `conformance/suites/smtp` (the suites' data lives in this crate's
//! `suites/` directory, with its origins and licences in `suites/SOURCES`):
//!
//! | suite | source | format |
//! |---|---|---|
//! | `smtp-chasquid` | `chasquid/t-*/*.cmy` | chasquid's chamuyero scripts |
//! | `smtp-james` | `james-mpt/*.test` | Apache James MPT scripts |
//! | `smtp-rfc-scenarios` | `portable/rfc-scenarios.yaml` | scenarios written from the RFCs |
//!
//! Each suite's parser turns its format into one dialogue model (a scenario is a list of
//! connect / send / expect / close / TLS steps); one runner drives fresh sessions through
//! it, answering the session's events from a fixture application (known users, passwords,
//! local domains; see each suite module for its fixture). `cargo test -p postern-conformance`
//! runs them as the `smtp` test target, which prints one line per suite,
//! `<suite>: N passed, M failed`, then `<suite>: K listed deviations used`, and exits non-zero
//! on any failure. Arguments after `--` are substring filters on `suite/scenario`;
//! `-v` prints the transcript of passing scenarios too.
//!
//! # How replies are compared
//!
//! By reply code only: every suite's reply text, and its enhanced status codes, are the
//! wording and choices of the server the suite was written for (James answers an accepted
//! message with `2.6.0`, chasquid a bad line ending with `5.5.2`). Each expectation consumes
//! one whole reply, multi-line or not. A reply that no step asked for is a mismatch.
//!
//! # Deviations
//!
//! Where postern answers with another code on purpose, `conformance/deviations.toml` lists
//! the step (suite, scenario, step, the suite's code, postern's code) and `DEVIATIONS.md` says
//! why, with the RFC text. A scenario passes when every mismatch is exactly one listed
//! deviation; an entry that matches nothing is an error, so the list stays true.
//!
//! # The mail-authentication suites
//!
//! `cargo test -p postern-conformance --test auth` runs, from `conformance/suites`:
//!
//! | suite | source | what is checked |
//! |---|---|---|
//! | `spf-rfc7208` | `spf/rfc7208-tests.yml` | check_host's result is one of the listed |
//! | `dkim-rfc8463` | `dkim/rfc/rfc8463/` | both signatures verify; mail-auth's signatures of `unsigned.eml` have A.3's `bh=` and verify; A.3's Ed25519 `b=` from mail-auth's parts |
//! | `dkim-mail-auth` | `dkim/mail-auth/*.txt` | the last signature passes |
//! | `dkim-chasquid` | `dkim/chasquid/*` | each signature's state, in order |
//! | `arc-validation` | `arc/arc-draft-validation-tests.yml` | the chain validation status |
//! | `arc-signing` | `arc/arc-draft-sign-tests.yml` | the new set's tags (not `b=`, not `t=`) and that it verifies |
//! | `dmarc-cases` | `dmarc/dmarc-cases.yaml` | the DMARC result and the disposition |
//!
//! DNS answers come from [`authdns`], mail-auth's cache traits answered from a zone built
//! from the suite, with mail-auth's own resolver given no name servers: nothing goes to the
//! network. Where mail-auth differs from a suite, `deviations.toml` lists the case
//! (`[[auth]]` entries) and `DEVIATIONS.md` says why (A1-A24).

mod arc;
mod auth;
pub mod authdns;
mod chasquid;
mod deviations;
mod dialogue;
mod dkim;
mod dmarc;
mod fixture;
mod james;
mod pyexpr;
mod rfc_scenarios;
mod runner;
mod spf;

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::deviations::Deviations;
use crate::dialogue::Scenario;

pub use crate::auth::run_auth_suites;

/// Why the suites could not be loaded at all.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A suite's directory is not in `conformance/suites`.
    #[error(
        "the conformance suites are missing: expected the directory {} \
         (it is part of the repository; see conformance/suites/SOURCES)",
        dir.display()
    )]
    SuitesMissing {
        /// Where they were looked for.
        dir: PathBuf,
    },
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The deviation list is malformed.
    #[error("bad deviation list {}: {message}", path.display())]
    Deviations {
        /// The list's path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A suite's files are not what this runner knows.
    #[error("{}: {message}", path.display())]
    Suite {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// How to run the suites.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run only scenarios whose `suite/scenario` contains one of these (all when empty).
    pub filters: Vec<String>,
    /// Also report passing scenarios, with their transcripts.
    pub verbose: bool,
}

impl Options {
    /// Options from command-line arguments: `-v`/`--verbose`, and filters. Other flags (such
    /// as those `cargo test` passes on) are ignored.
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Options {
        let mut options = Options::default();
        for arg in args {
            match arg.as_str() {
                "-v" | "--verbose" => options.verbose = true,
                flag if flag.starts_with('-') => {}
                filter => options.filters.push(filter.to_string()),
            }
        }
        options
    }

    fn selects(&self, suite: &str, scenario: &str) -> bool {
        let full = format!("{suite}/{scenario}");
        self.filters.is_empty() || self.filters.iter().any(|f| full.contains(f.as_str()))
    }
}

/// The result of one suite.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    /// The suite's name, e.g. `smtp-chasquid`.
    pub suite: &'static str,
    /// Scenarios that passed (listed deviations allowed).
    pub passed: usize,
    /// Scenarios that failed or could not be read.
    pub failed: usize,
    /// Listed deviations that covered a mismatch.
    pub deviations_used: usize,
    /// A report for every failed scenario (and, when verbose, every passing one).
    pub details: Vec<String>,
    /// Listed deviations that covered nothing: errors.
    pub stale_deviations: Vec<String>,
}

impl SuiteReport {
    /// `<suite>: N passed, M failed`.
    pub fn counts_line(&self) -> String {
        format!(
            "{}: {} passed, {} failed",
            self.suite, self.passed, self.failed
        )
    }

    /// `<suite>: K listed deviations used`.
    pub fn deviations_line(&self) -> String {
        format!(
            "{}: {} listed deviations used",
            self.suite, self.deviations_used
        )
    }

    /// No failure and no stale deviation.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.stale_deviations.is_empty()
    }
}

/// The directory of the SMTP suites: `conformance/suites/smtp`.
pub fn smtp_suites_dir() -> Result<PathBuf, LoadError> {
    let dir = conformance_dir()?.join("smtp");
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(LoadError::SuitesMissing { dir })
    }
}

/// The directory of all suites: `conformance/suites`.
fn conformance_dir() -> Result<PathBuf, LoadError> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("suites");
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(LoadError::SuitesMissing { dir })
    }
}

/// What a `harness = false` suite test prints and returns: one `<suite>: N passed, M failed`
/// line per suite on stdout; failure reports, stale deviations and the deviations used on
/// stderr. Fails on a load error, a failed case or a stale deviation.
pub fn report(result: Result<Vec<SuiteReport>, LoadError>) -> std::process::ExitCode {
    let reports = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conformance: {e}");
            return std::process::ExitCode::FAILURE;
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
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Runs the three SMTP suites.
pub fn run_smtp_suites(options: &Options) -> Result<Vec<SuiteReport>, LoadError> {
    let root = smtp_suites_dir()?;
    let mut deviations =
        Deviations::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deviations.toml"))?;
    let suites = [
        ("smtp-chasquid", chasquid::load(&root.join("chasquid"))?),
        ("smtp-james", james::load(&root.join("james-mpt"))?),
        (
            "smtp-rfc-scenarios",
            rfc_scenarios::load(&root.join("portable").join("rfc-scenarios.yaml"))?,
        ),
    ];
    Ok(suites
        .into_iter()
        .map(|(suite, loaded)| run_suite(suite, loaded, &mut deviations, options))
        .collect())
}

/// A scenario as loaded: ready to run, or broken.
type Loaded = Result<Scenario, Broken>;

/// A script that could not be parsed; it counts as a failed scenario.
#[derive(Debug, Clone)]
struct Broken {
    name: String,
    file: String,
    error: String,
}

fn run_suite(
    suite: &'static str,
    loaded: Vec<Loaded>,
    deviations: &mut Deviations,
    options: &Options,
) -> SuiteReport {
    let mut report = SuiteReport {
        suite,
        passed: 0,
        failed: 0,
        deviations_used: 0,
        details: Vec::new(),
        stale_deviations: Vec::new(),
    };
    let known: HashSet<String> = loaded
        .iter()
        .map(|l| match l {
            Ok(s) => s.name.clone(),
            Err(b) => b.name.clone(),
        })
        .collect();
    let mut ran = HashSet::new();
    for item in loaded {
        let scenario = match item {
            Ok(s) if options.selects(suite, &s.name) => s,
            Err(b) if options.selects(suite, &b.name) => {
                report.failed += 1;
                report.details.push(format!(
                    "FAIL {suite} {} ({}): cannot run the script: {}",
                    b.name, b.file, b.error
                ));
                continue;
            }
            _ => continue,
        };
        ran.insert(scenario.name.clone());
        let outcome = runner::run(&scenario);
        let mut covered = Vec::new();
        let mut failures = Vec::new();
        for m in &outcome.mismatches {
            match deviations.cover(suite, &scenario.name, m) {
                Some(d) => covered.push(format!(
                    "{} {}: expected {}, postern {} ({})",
                    scenario.at_word, d.step, d.expected, d.actual, d.summary
                )),
                None => failures.push(m),
            }
        }
        let passed = failures.is_empty();
        if passed {
            report.passed += 1;
        } else {
            report.failed += 1;
        }
        if passed && !options.verbose {
            continue;
        }
        let mut text = format!(
            "{} {suite} {} ({})\n",
            if passed { "PASS" } else { "FAIL" },
            scenario.name,
            scenario.file
        );
        for m in failures {
            let place = m.at.map_or_else(
                || "scenario".to_string(),
                |a| format!("{} {a}", scenario.at_word),
            );
            text.push_str(&format!(
                "  {place}: {}\n    expected: {}\n    actual:   {}\n",
                m.source, m.expected, m.actual
            ));
        }
        for c in &covered {
            text.push_str(&format!("  listed deviation: {c}\n"));
        }
        text.push_str("  transcript:\n");
        for line in &outcome.transcript {
            text.push_str(&format!("    {line}\n"));
        }
        report.details.push(text);
    }
    report.deviations_used = deviations.used_count(suite);
    let stale = deviations
        .unused(suite, &ran)
        .into_iter()
        .map(|d| format!("listed deviation no longer happens: {d}"))
        .chain(
            deviations
                .unknown_scenarios(suite, &known)
                .into_iter()
                .map(|d| format!("listed deviation names an unknown scenario: {d}")),
        );
    report.stale_deviations = stale.collect();
    report
}

/// Reads a text file.
fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The files of `dir` named `*.<ext>`, sorted by name.
fn files_with_extension(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, LoadError> {
    let io_error = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == ext) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

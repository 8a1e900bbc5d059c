//! The mail-authentication suites, run against mail-auth (the library postern uses for SPF,
//! DKIM, DMARC and ARC) on a mock DNS, and how their outcomes are judged.
//!
//! Each suite module turns its files into [`Case`]s: one check each, what the suite expects
//! and what mail-auth gave, both as short words (`fail`, `temperror|permerror`). A case
//! passes when they agree, or when `deviations.toml` lists exactly that case with exactly
//! that expectation and outcome (`[[auth]]` entries; the reasons are in DEVIATIONS.md). An
//! entry that covers nothing is an error, as for the SMTP suites.
//!
//! Everything is offline: DNS answers come from [`crate::authdns`] (a zone built from the
//! suite), and mail-auth's own resolver has no name servers.

use std::collections::HashSet;
use std::path::Path;

use crate::deviations::AuthDeviations;
use crate::{LoadError, Options, SuiteReport, conformance_dir};
use crate::{arc, dkim, dmarc, spf};

/// One check of a suite, done.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    /// The case's name, unique in its suite (`scenario/test` for the YAML suites).
    pub name: String,
    /// What the suite expects, as a short word or `a|b` alternatives.
    pub expected: String,
    /// What mail-auth gave, as a short word.
    pub actual: String,
    /// Whether `actual` is what the suite expects.
    pub passed: bool,
    /// What was checked and what mail-auth said, for failure reports (and `-v`).
    pub detail: String,
}

impl Case {
    /// A case that passes when `actual` is one of the `|`-separated words of `expected`.
    pub fn one_of(name: String, expected: String, actual: String, detail: String) -> Case {
        let passed = expected.split('|').any(|e| e == actual);
        Case {
            name,
            expected,
            actual,
            passed,
            detail,
        }
    }
}

/// A suite's cases: those the options selected, and the names of all of them.
#[derive(Debug, Default)]
pub(crate) struct SuiteRun {
    /// Every case the suite has, run or not (to judge deviation entries).
    pub known: HashSet<String>,
    /// The cases run.
    pub cases: Vec<Case>,
}

impl SuiteRun {
    /// Adds `name` to the known cases, and says whether to run it.
    pub fn select(&mut self, options: &Options, suite: &str, name: &str) -> bool {
        self.known.insert(name.to_string());
        options.selects(suite, name)
    }
}

/// Runs the mail-authentication suites: one report per suite, in the order printed.
pub fn run_auth_suites(options: &Options) -> Result<Vec<SuiteReport>, LoadError> {
    let root = conformance_dir()?;
    let mut deviations =
        AuthDeviations::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deviations.toml"))?;
    let spf_run = spf::run(&root.join("spf").join("rfc7208-tests.yml"), options)?;
    let dkim_runs = dkim::run(&root.join("dkim"), options)?;
    let arc_runs = arc::run(&root.join("arc"), options)?;
    let dmarc_run = dmarc::run(&root.join("dmarc").join("dmarc-cases.yaml"), options)?;
    let mut runs = vec![("spf-rfc7208", spf_run)];
    runs.extend(dkim_runs);
    runs.extend(arc_runs);
    runs.push(("dmarc-cases", dmarc_run));
    Ok(runs
        .into_iter()
        .map(|(suite, run)| judge(suite, run, &mut deviations, options))
        .collect())
}

fn judge(
    suite: &'static str,
    run: SuiteRun,
    deviations: &mut AuthDeviations,
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
    let mut ran = HashSet::new();
    for case in run.cases {
        ran.insert(case.name.clone());
        let listed = if case.passed {
            None
        } else {
            deviations
                .cover(suite, &case.name, &case.expected, &case.actual)
                .map(|d| d.summary.clone())
        };
        let passed = case.passed || listed.is_some();
        if passed {
            report.passed += 1;
        } else {
            report.failed += 1;
        }
        if passed && !options.verbose {
            continue;
        }
        let mut text = format!(
            "{} {suite} {}: expected {}, mail-auth {}\n",
            if passed { "PASS" } else { "FAIL" },
            case.name,
            case.expected,
            case.actual
        );
        if let Some(summary) = listed {
            text.push_str(&format!("  listed deviation: {summary}\n"));
        }
        for line in case.detail.lines() {
            text.push_str(&format!("  {line}\n"));
        }
        report.details.push(text);
    }
    report.deviations_used = deviations.used_count(suite);
    report.stale_deviations = deviations.stale(suite, &ran, &run.known);
    report
}

/// Decodes a YAML string whose `\xNN` escapes stand for raw bytes: YAML has read each escape
/// as the code point U+00NN, so every character below U+0100 is one byte (Latin-1); others
/// (none in the suites) are kept as UTF-8.
pub(crate) fn latin1_bytes(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len());
    for c in text.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(b) => bytes.push(b),
            Err(_) => {
                let mut buf = [0; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    bytes
}

/// A message with LF line ends turned to CRLF (CRLF already there is kept).
pub(crate) fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 16);
    let mut prev = 0u8;
    for &b in text {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

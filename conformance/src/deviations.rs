//! The list of deliberate deviations (`conformance/deviations.toml`) and how mismatches are
//! checked against it.
//!
//! Each entry names one step of one scenario, the reply code(s) the suite expects there, and
//! the code postern answers instead; `DEVIATIONS.md` gives the reasoning. A mismatch is
//! covered only by an entry that matches all of it, and each entry covers exactly one
//! mismatch. Entries that cover nothing in a run are errors, so the list cannot go stale.
//! Only a wrong reply code can be listed: a missing reply, a reply nobody asked for or a wrong
//! body always fails.
//!
//! ```toml
//! [[deviation]]
//! suite = "smtp-chasquid"
//! scenario = "t-12-minor_dialogs/bad_data_dot"
//! step = 33            # the script line (chasquid, James) or YAML step index
//! expected = "521"     # as the runner prints it: "521", "250|5xx"
//! actual = 554
//! summary = "bare CR or LF in DATA"
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::LoadError;
use crate::runner::{Actual, Mismatch};

/// The suites entries may name.
pub(crate) const SUITES: [&str; 3] = ["smtp-chasquid", "smtp-james", "smtp-rfc-scenarios"];

/// One listed deviation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Deviation {
    /// The suite, e.g. `smtp-chasquid`.
    pub suite: String,
    /// The scenario within it.
    pub scenario: String,
    /// The step: a script line, or a YAML step index.
    pub step: u32,
    /// The code(s) the suite expects at that step.
    pub expected: String,
    /// The code postern answers.
    pub actual: u16,
    /// One line on why; the reasoning is in DEVIATIONS.md.
    pub summary: String,
}

impl fmt::Display for Deviation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} step {}: expected {}, postern {} ({})",
            self.suite, self.scenario, self.step, self.expected, self.actual, self.summary
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviationFile {
    #[serde(default)]
    deviation: Vec<Deviation>,
    /// The mail-authentication suites' entries (`[[auth]]`), loaded by [`AuthDeviations`].
    #[serde(default)]
    auth: Vec<AuthDeviation>,
}

/// The mail-authentication suites entries may name.
pub(crate) const AUTH_SUITES: [&str; 7] = [
    "spf-rfc7208",
    "dkim-rfc8463",
    "dkim-mail-auth",
    "dkim-chasquid",
    "arc-validation",
    "arc-signing",
    "dmarc-cases",
];

/// One listed deviation of a mail-authentication suite (`[[auth]]`): a whole case whose
/// outcome differs from the suite's expectation, with the reason in DEVIATIONS.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthDeviation {
    /// The suite, e.g. `spf-rfc7208`.
    pub suite: String,
    /// The case within it, as the runner names it.
    pub case: String,
    /// What the suite expects, as the runner prints it.
    pub expected: String,
    /// What mail-auth gives, as the runner prints it.
    pub actual: String,
    /// One line on why; the reasoning is in DEVIATIONS.md.
    pub summary: String,
}

impl fmt::Display for AuthDeviation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: expected {}, mail-auth {} ({})",
            self.suite, self.case, self.expected, self.actual, self.summary
        )
    }
}

/// The `[[auth]]` entries of the list, with which ones a run has used.
#[derive(Debug)]
pub(crate) struct AuthDeviations {
    entries: Vec<AuthDeviation>,
    used: Vec<bool>,
}

impl AuthDeviations {
    /// Loads and checks the `[[auth]]` entries: known suites, no case listed twice.
    pub fn load(path: &Path) -> Result<AuthDeviations, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        AuthDeviations::parse(&text).map_err(|message| LoadError::Deviations {
            path: path.to_path_buf(),
            message,
        })
    }

    fn parse(text: &str) -> Result<AuthDeviations, String> {
        let file: DeviationFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = HashSet::new();
        for d in &file.auth {
            if !AUTH_SUITES.contains(&d.suite.as_str()) {
                return Err(format!(
                    "unknown suite {:?} (known: {})",
                    d.suite,
                    AUTH_SUITES.join(", ")
                ));
            }
            if !seen.insert((d.suite.clone(), d.case.clone())) {
                return Err(format!("listed twice: {} {}", d.suite, d.case));
            }
        }
        let used = vec![false; file.auth.len()];
        Ok(AuthDeviations {
            entries: file.auth,
            used,
        })
    }

    /// The entry that covers `case` of `suite` failing with exactly this expectation and
    /// outcome, now marked used.
    pub fn cover(
        &mut self,
        suite: &str,
        case: &str,
        expected: &str,
        actual: &str,
    ) -> Option<&AuthDeviation> {
        let i = self.entries.iter().enumerate().position(|(i, d)| {
            !self.used[i]
                && d.suite == suite
                && d.case == case
                && d.expected == expected
                && d.actual == actual
        })?;
        self.used[i] = true;
        Some(&self.entries[i])
    }

    /// How many entries of `suite` the run used.
    pub fn used_count(&self, suite: &str) -> usize {
        self.entries
            .iter()
            .zip(&self.used)
            .filter(|(d, used)| **used && d.suite == suite)
            .count()
    }

    /// Entries of `suite` that covered nothing, among those whose case `ran`, and entries
    /// naming a case the suite does not have.
    pub fn stale(
        &self,
        suite: &str,
        ran: &HashSet<String>,
        known: &HashSet<String>,
    ) -> Vec<String> {
        self.entries
            .iter()
            .zip(&self.used)
            .filter(|(d, _)| d.suite == suite)
            .filter_map(|(d, used)| {
                if !known.contains(&d.case) {
                    Some(format!("listed deviation names an unknown case: {d}"))
                } else if !used && ran.contains(&d.case) {
                    Some(format!("listed deviation no longer happens: {d}"))
                } else {
                    None
                }
            })
            .collect()
    }
}

/// The loaded list, with which entries a run has used.
#[derive(Debug)]
pub(crate) struct Deviations {
    entries: Vec<Deviation>,
    used: Vec<bool>,
}

impl Deviations {
    /// Loads and checks the list: known suites, no entry listed twice.
    pub fn load(path: &Path) -> Result<Deviations, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Deviations::parse(&text).map_err(|message| LoadError::Deviations {
            path: path.to_path_buf(),
            message,
        })
    }

    fn parse(text: &str) -> Result<Deviations, String> {
        let file: DeviationFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = HashSet::new();
        for d in &file.deviation {
            if !SUITES.contains(&d.suite.as_str()) {
                return Err(format!(
                    "unknown suite {:?} (known: {})",
                    d.suite,
                    SUITES.join(", ")
                ));
            }
            if !seen.insert((d.suite.clone(), d.scenario.clone(), d.step)) {
                return Err(format!(
                    "listed twice: {} {} step {}",
                    d.suite, d.scenario, d.step
                ));
            }
        }
        let used = vec![false; file.deviation.len()];
        Ok(Deviations {
            entries: file.deviation,
            used,
        })
    }

    /// The entry that covers `mismatch` of `scenario` in `suite`, now marked used.
    pub fn cover(
        &mut self,
        suite: &str,
        scenario: &str,
        mismatch: &Mismatch,
    ) -> Option<&Deviation> {
        let Actual::Code { code, .. } = mismatch.actual else {
            return None;
        };
        let step = mismatch.at?;
        let i = self.entries.iter().enumerate().position(|(i, d)| {
            !self.used[i]
                && d.suite == suite
                && d.scenario == scenario
                && d.step == step
                && d.expected == mismatch.expected
                && d.actual == code
        })?;
        self.used[i] = true;
        Some(&self.entries[i])
    }

    /// How many entries of `suite` the run used.
    pub fn used_count(&self, suite: &str) -> usize {
        self.entries
            .iter()
            .zip(&self.used)
            .filter(|(d, used)| **used && d.suite == suite)
            .count()
    }

    /// Entries of `suite` that covered nothing, among those whose scenario `ran`.
    pub fn unused(&self, suite: &str, ran: &HashSet<String>) -> Vec<&Deviation> {
        self.entries
            .iter()
            .zip(&self.used)
            .filter(|(d, used)| !**used && d.suite == suite && ran.contains(&d.scenario))
            .map(|(d, _)| d)
            .collect()
    }

    /// Entries of `suite` naming a scenario the suite does not have.
    pub fn unknown_scenarios(&self, suite: &str, known: &HashSet<String>) -> Vec<&Deviation> {
        self.entries
            .iter()
            .filter(|d| d.suite == suite && !known.contains(&d.scenario))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mismatch(at: u32, expected: &str, actual: Actual) -> Mismatch {
        Mismatch {
            at: Some(at),
            expected: expected.into(),
            source: String::new(),
            actual,
        }
    }

    fn code(c: u16) -> Actual {
        Actual::Code {
            code: c,
            lines: vec![format!("{c} x")],
        }
    }

    const LIST: &str = r#"
[[deviation]]
suite = "smtp-chasquid"
scenario = "a"
step = 3
expected = "521"
actual = 554
summary = "bare LF"
"#;

    #[test]
    fn covers_exactly_one_matching_mismatch() {
        let mut d = Deviations::parse(LIST).unwrap_or_else(|e| panic!("{e}"));
        let cases: Vec<(&str, &str, Mismatch, bool)> = vec![
            ("smtp-james", "a", mismatch(3, "521", code(554)), false),
            ("smtp-chasquid", "b", mismatch(3, "521", code(554)), false),
            ("smtp-chasquid", "a", mismatch(4, "521", code(554)), false),
            ("smtp-chasquid", "a", mismatch(3, "500", code(554)), false),
            ("smtp-chasquid", "a", mismatch(3, "521", code(550)), false),
            (
                "smtp-chasquid",
                "a",
                mismatch(3, "521", Actual::Other("no reply".into())),
                false,
            ),
            ("smtp-chasquid", "a", mismatch(3, "521", code(554)), true),
            // Used up: the same mismatch again is not covered.
            ("smtp-chasquid", "a", mismatch(3, "521", code(554)), false),
        ];
        for (suite, scenario, m, want) in cases {
            assert_eq!(
                d.cover(suite, scenario, &m).is_some(),
                want,
                "{suite} {scenario} {m:?}"
            );
        }
        assert_eq!(d.used_count("smtp-chasquid"), 1);
    }

    #[test]
    fn reports_unused_entries() {
        let d = Deviations::parse(LIST).unwrap_or_else(|e| panic!("{e}"));
        let ran: HashSet<String> = ["a".to_string()].into();
        assert_eq!(d.unused("smtp-chasquid", &ran).len(), 1);
        assert_eq!(
            d.unused("smtp-chasquid", &HashSet::new()).len(),
            0,
            "not run, not judged"
        );
        assert_eq!(d.unknown_scenarios("smtp-chasquid", &ran).len(), 0);
        assert_eq!(
            d.unknown_scenarios("smtp-chasquid", &HashSet::new()).len(),
            1
        );
    }

    const AUTH_LIST: &str = r#"
[[auth]]
suite = "spf-rfc7208"
case = "a/b"
expected = "fail"
actual = "temperror"
summary = "why"
"#;

    #[test]
    fn auth_entries_cover_one_exact_case() {
        let mut d =
            AuthDeviations::parse(&format!("{LIST}{AUTH_LIST}")).unwrap_or_else(|e| panic!("{e}"));
        assert!(d.cover("spf-rfc7208", "a/b", "fail", "pass").is_none());
        assert!(d.cover("spf-rfc7208", "a/c", "fail", "temperror").is_none());
        assert!(
            d.cover("dkim-rfc8463", "a/b", "fail", "temperror")
                .is_none()
        );
        assert!(d.cover("spf-rfc7208", "a/b", "fail", "temperror").is_some());
        assert!(d.cover("spf-rfc7208", "a/b", "fail", "temperror").is_none());
        assert_eq!(d.used_count("spf-rfc7208"), 1);
        let case: HashSet<String> = ["a/b".to_string()].into();
        assert!(d.stale("spf-rfc7208", &case, &case).is_empty());
        let fresh = AuthDeviations::parse(AUTH_LIST).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fresh.stale("spf-rfc7208", &case, &case).len(), 1, "unused");
        assert_eq!(
            fresh
                .stale("spf-rfc7208", &HashSet::new(), &HashSet::new())
                .len(),
            1,
            "unknown case"
        );
        assert!(AuthDeviations::parse(&AUTH_LIST.replace("spf-rfc7208", "spf")).is_err());
        assert!(AuthDeviations::parse(&format!("{AUTH_LIST}{AUTH_LIST}")).is_err());
        // The SMTP loader accepts the file with both kinds of entries.
        assert!(Deviations::parse(&format!("{LIST}{AUTH_LIST}")).is_ok());
    }

    #[test]
    fn refuses_bad_lists() {
        let bad = [
            LIST.replace("smtp-chasquid", "smtp-other"),
            format!("{LIST}{LIST}"),
            LIST.replace("summary", "why"),
            LIST.replace("actual = 554", "actual = \"554\""),
        ];
        for text in bad {
            assert!(Deviations::parse(&text).is_err(), "must refuse:\n{text}");
        }
    }
}

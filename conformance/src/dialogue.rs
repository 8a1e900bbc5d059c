//! The dialogue model every suite is parsed into.
//!
//! A [`Scenario`] is a list of [`Step`]s: open a connection, send bytes, expect a reply, close,
//! run the TLS handshake, expect the server to have closed. Each suite's parser (chasquid's
//! `.cmy`, James' MPT `.test`, the portable YAML) only translates its format into this model,
//! so one runner executes them all and one comparison rule applies everywhere.
//!
//! Every step carries the place it came from (`at`: a line of a script, or the index of a YAML
//! step), which failure output and the deviation list use to name it.

use std::fmt;
use std::sync::Arc;

use crate::fixture::Fixture;

/// One dialogue to run against fresh sessions.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    /// Unique within its suite, e.g. `t-12-minor_dialogs/bad_data` or `starttls`.
    pub name: String,
    /// Where it comes from, relative to the suites' directory, for failure reports.
    pub file: String,
    /// How its steps are named in reports and the deviation list: `line` or `step`.
    pub at_word: &'static str,
    /// The application and configuration the sessions run with.
    pub fixture: Arc<Fixture>,
    /// What the client does, in order.
    pub steps: Vec<Step>,
    /// The body the last accepted message must have, CRLF line endings.
    pub verify_body: Option<Vec<u8>>,
}

/// A step and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    /// The script line (chasquid, James) or the 1-based step index (YAML).
    pub at: u32,
    /// What to do.
    pub kind: StepKind,
}

/// What a client does in one step.
#[derive(Debug, Clone)]
pub(crate) enum StepKind {
    /// Open a new connection (ending the current one); with `tls`, TLS is on from the start.
    Connect {
        /// Implicit TLS (port 465 style).
        tls: bool,
    },
    /// Write these bytes.
    Send(Vec<u8>),
    /// Read one whole reply and compare it.
    Expect(Expect),
    /// The client closes the connection.
    Close,
    /// Run the TLS handshake the server asked for with its 220 to STARTTLS.
    TlsHandshake,
    /// The server must have closed the connection.
    ExpectClosed,
}

/// What one reply must look like.
#[derive(Debug, Clone)]
pub(crate) struct Expect {
    /// Acceptable codes; the reply matches if it matches any.
    pub accept: Vec<CodeSpec>,
    /// The expectation as the suite wrote it, for failure output.
    pub source: String,
    /// Text that must appear nowhere in the reply.
    pub must_not_contain: Option<String>,
}

impl Expect {
    /// An expectation of exactly `code`.
    pub fn code(code: u16, source: impl Into<String>) -> Expect {
        Expect {
            accept: vec![CodeSpec::Code(code)],
            source: source.into(),
            must_not_contain: None,
        }
    }

    /// Whether a reply with `code` meets the expectation.
    pub fn accepts(&self, code: u16) -> bool {
        self.accept.iter().any(|spec| spec.matches(code))
    }

    /// The acceptable codes as the deviation list writes them: `521`, `250|5xx`.
    pub fn codes(&self) -> String {
        let codes: Vec<String> = self.accept.iter().map(CodeSpec::to_string).collect();
        codes.join("|")
    }
}

/// One acceptable reply code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeSpec {
    /// Exactly this code.
    Code(u16),
    /// Any code of this class (first digit), written `5xx`.
    Class(u8),
}

impl CodeSpec {
    /// Whether `code` is acceptable.
    pub fn matches(self, code: u16) -> bool {
        match self {
            CodeSpec::Code(c) => c == code,
            CodeSpec::Class(class) => code / 100 == u16::from(class),
        }
    }

    /// The three-digit code at the start of `text` (`"250 2.1.0 Sender"`, `"250.*"`), if any.
    pub fn leading_code(text: &str) -> Option<u16> {
        let digits = text.get(..3)?;
        if !digits.bytes().all(|b| b.is_ascii_digit())
            || !(b'2'..=b'5').contains(&digits.as_bytes()[0])
        {
            return None;
        }
        digits.parse().ok()
    }
}

impl fmt::Display for CodeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeSpec::Code(c) => write!(f, "{c}"),
            CodeSpec::Class(class) => write!(f, "{class}xx"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_codes() {
        let cases: Vec<(&str, Option<u16>)> = vec![
            ("250", Some(250)),
            ("250.*", Some(250)),
            ("250-PIPELINING", Some(250)),
            ("501 5.5.2 Error decoding AUTH response", Some(501)),
            ("25", None),
            ("abc", None),
            ("150 x", None),
            ("650", None),
            ("^250", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                CodeSpec::leading_code(text),
                want,
                "leading code of {text:?}"
            );
        }
    }

    #[test]
    fn code_specs_match_and_print() {
        let e = Expect {
            accept: vec![CodeSpec::Code(250), CodeSpec::Class(5)],
            source: String::new(),
            must_not_contain: None,
        };
        assert_eq!(e.codes(), "250|5xx");
        for (code, want) in [(250, true), (251, false), (554, true), (421, false)] {
            assert_eq!(e.accepts(code), want, "code {code}");
        }
    }
}

//! The two texts of MTA-STS: the `_mta-sts` TXT record ([RFC 8461 section 3.1]) and the
//! policy file ([RFC 8461 section 3.2]), and MX pattern matching ([RFC 8461 section 4.1]).
//! Pure functions: no I/O.
//!
//! [RFC 8461 section 3.1]: https://www.rfc-editor.org/rfc/rfc8461#section-3.1
//! [RFC 8461 section 3.2]: https://www.rfc-editor.org/rfc/rfc8461#section-3.2
//! [RFC 8461 section 4.1]: https://www.rfc-editor.org/rfc/rfc8461#section-4.1

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The largest `max_age` honoured, in seconds (RFC 8461 3.2: about one year); larger values
/// are capped to it.
pub const MAX_MAX_AGE: u64 = 31_557_600;

/// A domain's policy, as fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// What to do with MX hosts that fail the policy.
    pub mode: Mode,
    /// The allowed MX host patterns, lower case, no trailing dot: `mx.example.org` or
    /// `*.example.org` (one label).
    pub mx: Vec<String>,
    /// How long the policy may be cached, at most [`MAX_MAX_AGE`].
    pub max_age: Duration,
    /// The `id` of the TXT record the policy was fetched under.
    pub id: String,
}

/// A policy's mode (RFC 8461 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Deliver only to matching MX hosts over TLS with a valid certificate; defer otherwise.
    Enforce,
    /// Report failures (TLS-RPT) but deliver as if there were no policy.
    Testing,
    /// No policy in force: the domain's way of withdrawing one.
    None,
}

/// Why a TXT record or a policy file was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub String);

impl Policy {
    /// Whether the MX host `host` matches one of the policy's patterns (RFC 8461 4.1): an
    /// exact name, or `*.` followed by a name, matching exactly one more label on the left.
    /// Case and a trailing dot do not matter.
    pub fn allows_mx(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

impl Mode {
    /// The word used in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

impl FromStr for Mode {
    type Err = SyntaxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `%s"enforce"` and friends: case-sensitive (RFC 7405).
        match s {
            "enforce" => Ok(Mode::Enforce),
            "testing" => Ok(Mode::Testing),
            "none" => Ok(Mode::None),
            other => Err(SyntaxError(format!("unknown mode {other:?}"))),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `id` of the one usable `_mta-sts` record among `records`, or `None` when there is
/// none (then the domain has no policy to fetch).
///
/// RFC 8461 3.1: "If multiple TXT records for "_mta-sts" are returned by the resolver,
/// records that do not begin with "v=STSv1;" are discarded. If the number of resulting
/// records is not one, or if the resulting record is syntactically invalid, senders MUST
/// assume the recipient domain does not have an available MTA-STS Policy". A record of
/// several strings arrives here joined, as 3.1 asks.
pub fn txt_id(records: &[Vec<u8>]) -> Result<String, SyntaxError> {
    let candidates: Vec<&Vec<u8>> = records
        .iter()
        .filter(|r| {
            // "v=STSv1" then the field delimiter (which may start with spaces, per the
            // ABNF), so that "v=STSv10" is not taken for version 1.
            r.strip_prefix(b"v=STSv1")
                .is_some_and(|rest| matches!(rest.first(), Some(b';' | b' ' | b'\t')))
        })
        .collect();
    match candidates.as_slice() {
        [] => Err(SyntaxError("no TXT record starts with v=STSv1".into())),
        [one] => parse_txt(one),
        _ => Err(SyntaxError(format!(
            "{} TXT records start with v=STSv1, want exactly one",
            candidates.len()
        ))),
    }
}

/// Parses one record (RFC 8461 3.1 ABNF):
///
/// ```text
/// sts-text-record = sts-version 1*(sts-field-delim sts-field) [sts-field-delim]
/// sts-field-delim = *WSP ";" *WSP
/// sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
/// sts-extension   = sts-ext-name "=" sts-ext-value
/// ```
fn parse_txt(record: &[u8]) -> Result<String, SyntaxError> {
    let text = std::str::from_utf8(record)
        .map_err(|_| SyntaxError("the TXT record is not ASCII".into()))?;
    let mut fields = text.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=STSv1") {
        return Err(SyntaxError(format!("{text:?} does not start with v=STSv1")));
    }
    let fields: Vec<&str> = fields.collect();
    let mut id = None;
    for (i, field) in fields.iter().enumerate() {
        // One optional delimiter may end the record: "v=STSv1; id=x;".
        if field.is_empty() && i + 1 == fields.len() && i > 0 {
            continue;
        }
        let Some((name, value)) = field.split_once('=') else {
            return Err(SyntaxError(format!("field {field:?} is not name=value")));
        };
        if name == "id" {
            let good =
                (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !good || id.is_some() {
                return Err(SyntaxError(format!(
                    "bad or repeated id {value:?} (want 1 to 32 letters and digits, once)"
                )));
            }
            id = Some(value.to_string());
        } else if !ext_name(name) || !ext_value(value) {
            return Err(SyntaxError(format!("bad field {field:?}")));
        }
    }
    id.ok_or_else(|| SyntaxError(format!("{text:?} has no id")))
}

/// `sts-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")` (also the policy
/// file's extension key).
fn ext_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=32).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

/// `sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)`: printable, no `;`, `=` or space.
fn ext_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|c| c.is_ascii_graphic() && c != b';' && c != b'=')
}

/// Parses a policy file (RFC 8461 3.2), fetched under the TXT record's `id`.
///
/// Lines end with LF or CRLF; each is `key:` then optional spaces and the value; trailing
/// spaces are dropped. `version` must be `STSv1`; `mode`, `max_age` and (unless the mode is
/// `none`) at least one `mx` are required; other keys (extensions, 3.2) are ignored, as
/// are blank lines. Deliberate choices: a known key other than `mx` given twice makes the
/// policy invalid (the RFC does not say which one counts); a `max_age` above the RFC's
/// maximum, [`MAX_MAX_AGE`], is capped to it rather than refused (a deviation: a policy
/// meant to last longer than allowed lasts as long as allowed).
pub fn parse_policy(body: &[u8], id: &str) -> Result<Policy, SyntaxError> {
    let text =
        std::str::from_utf8(body).map_err(|_| SyntaxError("the policy is not UTF-8".into()))?;
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| SyntaxError(format!("line {}: {what}", i + 1));
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad(format!("{line:?} is not `key: value`")));
        };
        let value = value.trim_matches([' ', '\t']);
        let twice = || bad(format!("{key} given twice"));
        match key {
            "version" => {
                if version.is_some() {
                    return Err(twice());
                }
                if value != "STSv1" {
                    return Err(bad(format!("unknown version {value:?}")));
                }
                version = Some(());
            }
            "mode" => {
                if mode.is_some() {
                    return Err(twice());
                }
                mode = Some(value.parse::<Mode>().map_err(|e| bad(e.0))?);
            }
            "max_age" => {
                if max_age.is_some() {
                    return Err(twice());
                }
                // sts-policy-max-age-value = 1*10(DIGIT)
                if value.is_empty()
                    || value.len() > 10
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad(format!("max_age {value:?} is not 1 to 10 digits")));
                }
                let seconds: u64 = value
                    .parse()
                    .map_err(|_| bad(format!("max_age {value:?}")))?;
                max_age = Some(seconds.min(MAX_MAX_AGE));
            }
            "mx" => mx.push(mx_pattern(value).map_err(bad)?),
            other if ext_name(other) => {}
            other => return Err(bad(format!("{other:?} is not a field name"))),
        }
    }
    if version.is_none() {
        return Err(SyntaxError("no version".into()));
    }
    let mode = mode.ok_or_else(|| SyntaxError("no mode".into()))?;
    let max_age = max_age.ok_or_else(|| SyntaxError("no max_age".into()))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(SyntaxError(format!("mode {mode} without any mx")));
    }
    Ok(Policy {
        mode,
        mx,
        max_age: Duration::from_secs(max_age),
        id: id.to_string(),
    })
}

/// `sts-policy-mx-value = ["*."] Domain` (RFC 5321 Domain: dot-separated labels of letters,
/// digits and inner hyphens). Returned lower case, without a trailing dot.
fn mx_pattern(value: &str) -> Result<String, String> {
    let lower = value.trim_end_matches('.').to_ascii_lowercase();
    let domain = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err(format!("mx {value:?} is not a host name or *.host name"));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mx: &[&str]) -> Policy {
        Policy {
            mode: Mode::Enforce,
            mx: mx.iter().map(|s| s.to_string()).collect(),
            max_age: Duration::from_secs(86400),
            id: "x".into(),
        }
    }

    #[test]
    fn txt_records() {
        let ok = |records: &[&str]| {
            let records: Vec<Vec<u8>> = records.iter().map(|r| r.as_bytes().to_vec()).collect();
            txt_id(&records)
        };
        let long = format!("v=STSv1; id={}", "a".repeat(33));
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["v=STSv1; id=20160831085700Z;"], Some("20160831085700Z")),
            (&["v=STSv1;id=abc"], Some("abc")),
            (&["v=STSv1 ; id=abc ;"], Some("abc")),
            (&["v=STSv1; id=abc; ext=val-ue"], Some("abc")),
            (&["v=spf1 -all", "v=STSv1; id=one"], Some("one")),
            (&["v=STSv1; id=one", "v=STSv1; id=two"], None),
            (&["v=STSv10; id=abc"], None),
            (&["v=STSv1"], None),
            (&["v=STSv1;"], None),
            (&["v=STSv1; id="], None),
            (&["v=STSv1; id=has-dash"], None),
            (&["v=STSv1; id=a; id=b"], None),
            (&[&long], None),
            (&["v=STSv1; id=abc;;"], None),
            (&["v=STSv1; id=abc; junk"], None),
            (&["id=abc; v=STSv1"], None),
            (&[], None),
        ];
        for (records, want) in cases {
            let got = ok(records);
            assert_eq!(got.as_deref().ok(), *want, "records {records:?}: {got:?}");
        }
    }

    #[test]
    fn policies() {
        let good = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\n";
        let p = parse_policy(good.as_bytes(), "id1").expect("good");
        assert_eq!(
            p,
            Policy {
                mode: Mode::Enforce,
                mx: vec!["mail.example.com".into(), "*.example.net".into()],
                max_age: Duration::from_secs(604800),
                id: "id1".into(),
            }
        );
        // (policy text, Ok((mode, max_age, number of mx)) or Err(()))
        type Case<'a> = (&'a str, Result<(Mode, u64, usize), ()>);
        let cases: &[Case<'_>] = &[
            (good, Ok((Mode::Enforce, 604800, 2))),
            // LF only, no final newline, spaces around values, unknown fields.
            (
                "version: STSv1\nmode:testing\nmx:  a.example  \nfuture_key: whatever\nmax_age: 86400",
                Ok((Mode::Testing, 86400, 1)),
            ),
            (
                "version: STSv1\nmode: none\nmax_age: 1\n",
                Ok((Mode::None, 1, 0)),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 9999999999\n",
                Ok((Mode::Enforce, MAX_MAX_AGE, 1)),
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", Err(())),
            (
                "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
                Err(()),
            ),
            ("mode: enforce\nmx: a.example\nmax_age: 1\n", Err(())),
            ("version: STSv1\nmx: a.example\nmax_age: 1\n", Err(())),
            ("version: STSv1\nmode: enforce\nmx: a.example\n", Err(())),
            (
                "version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n",
                Err(()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
                Err(()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",
                Err(()),
            ),
            (
                "version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 1\n",
                Err(()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a*.example\nmax_age: 1\n",
                Err(()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n",
                Err(()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n",
                Err(()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx a.example\nmax_age: 1\n",
                Err(()),
            ),
            ("<html>version: STSv1</html>", Err(())),
        ];
        for (text, want) in cases {
            let got = parse_policy(text.as_bytes(), "id")
                .map(|p| (p.mode, p.max_age.as_secs(), p.mx.len()))
                .map_err(|_| ());
            assert_eq!(got, *want, "policy {text:?}");
        }
        assert!(parse_policy(b"version: STSv1\n\xff", "id").is_err());
    }

    #[test]
    fn mx_patterns_match_one_label() {
        let p = policy(&["mail.example.com", "*.example.net"]);
        let cases = [
            ("mail.example.com", true),
            ("MAIL.Example.COM.", true),
            ("other.example.com", false),
            ("example.com", false),
            ("mx1.example.net", true),
            ("MX1.EXAMPLE.NET.", true),
            ("example.net", false),
            ("a.b.example.net", false),
            (".example.net", false),
            ("mx1.example.net.evil", false),
            ("xexample.net", false),
        ];
        for (host, allowed) in cases {
            assert_eq!(p.allows_mx(host), allowed, "host {host:?}");
        }
    }
}

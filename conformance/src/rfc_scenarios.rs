//! The `smtp-rfc-scenarios` suite: `portable/rfc-scenarios.yaml`, black-box scenarios written
//! from the RFC texts.
//!
//! # Format (the file's header)
//!
//! A list of scenarios `{id, ref, level, note?, verify_delivered_body?, steps}`; each step is
//! one of `{send}` (a line, CRLF appended), `{raw}` (exact bytes), `{expect: [codes]}` (one
//! whole reply; codes are numbers or classes like `"5xx"`, optionally with
//! `must_not_contain`), `{send|raw, expect}` (both, with an optional `repeat: N`), `{tls: true}`
//! (the handshake after a 220 to STARTTLS) and `{expect_closed: true}`. Unknown fields and
//! other combinations are errors. Each scenario runs on a new plain connection; steps are
//! named by their 1-based index.
//!
//! # Fixture
//!
//! Host `mx.postern.test` serving `postern.test`, the client calling itself
//! `client.example.org`; the mailbox and AUTH user `alice@postern.test`; `nobody@postern.test`
//! does not exist. STARTTLS is offered and AUTH only under TLS (postern's default policy);
//! limits are postern's defaults.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proto_core::server::AuthPolicy;
use serde::Deserialize;

use crate::dialogue::{CodeSpec, Expect, Scenario, Step, StepKind};
use crate::fixture::Fixture;
use crate::{Broken, LoadError, Loaded, read};

const HOSTNAME: &str = "mx.postern.test";
const DOMAIN: &str = "postern.test";
const HOST: &str = "client.example.org";
const LOCAL_RCPT: &str = USER;
const UNKNOWN_RCPT: &str = "nobody@postern.test";
const USER: &str = "alice@postern.test";
const PASS: &str = "correct horse battery staple";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlScenario {
    id: String,
    #[serde(rename = "ref")]
    _reference: String,
    level: String,
    #[serde(default, rename = "note")]
    _note: Option<String>,
    #[serde(default)]
    verify_delivered_body: Option<String>,
    steps: Vec<YamlStep>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlStep {
    send: Option<String>,
    raw: Option<String>,
    expect: Option<Vec<YamlCode>>,
    must_not_contain: Option<String>,
    repeat: Option<u32>,
    tls: Option<bool>,
    expect_closed: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum YamlCode {
    Number(u16),
    Text(String),
}

/// Loads the scenarios of `path`.
pub(crate) fn load(path: &Path) -> Result<Vec<Loaded>, LoadError> {
    let text = read(path)?;
    let scenarios: Vec<YamlScenario> =
        serde_yaml::from_str(&text).map_err(|e| LoadError::Suite {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    // The AUTH user is the local mailbox.
    let fixture = Arc::new(
        Fixture::new(HOSTNAME, AuthPolicy::TlsOnly)
            .domain(DOMAIN)
            .mailbox(USER, Some(PASS)),
    );
    let mut ids = HashSet::new();
    let mut out = Vec::new();
    for s in scenarios {
        if !ids.insert(s.id.clone()) {
            return Err(LoadError::Suite {
                path: path.to_path_buf(),
                message: format!("scenario id {:?} is used twice", s.id),
            });
        }
        let file = format!("portable/rfc-scenarios.yaml#{}", s.id);
        out.push(match convert(&s) {
            Ok((steps, verify_body)) => Ok(Scenario {
                name: s.id,
                file,
                at_word: "step",
                fixture: fixture.clone(),
                steps,
                verify_body,
            }),
            Err(error) => Err(Broken {
                name: s.id,
                file,
                error,
            }),
        });
    }
    Ok(out)
}

/// A scenario's steps (after a connect) and the body to verify.
fn convert(s: &YamlScenario) -> Result<(Vec<Step>, Option<Vec<u8>>), String> {
    if !["MUST", "SHOULD", "MAY"].contains(&s.level.as_str()) {
        return Err(format!("unknown level {:?}", s.level));
    }
    let mut steps = vec![Step {
        at: 0,
        kind: StepKind::Connect { tls: false },
    }];
    for (i, step) in s.steps.iter().enumerate() {
        let at = u32::try_from(i + 1).map_err(|_| "too many steps".to_string())?;
        let kinds = convert_step(step).map_err(|e| format!("step {at}: {e}"))?;
        steps.extend(kinds.into_iter().map(|kind| Step { at, kind }));
    }
    let verify = s
        .verify_delivered_body
        .as_deref()
        .map(substitute)
        .transpose()?;
    Ok((steps, verify.map(String::into_bytes)))
}

fn convert_step(step: &YamlStep) -> Result<Vec<StepKind>, String> {
    let send = match (&step.send, &step.raw) {
        (Some(line), None) => Some(format!("{}\r\n", substitute(line)?).into_bytes()),
        (None, Some(raw)) => Some(substitute(raw)?.into_bytes()),
        (None, None) => None,
        (Some(_), Some(_)) => return Err("both `send` and `raw`".into()),
    };
    let expect = step
        .expect
        .as_ref()
        .map(|codes| expectation(codes, step))
        .transpose()?;
    if step.must_not_contain.is_some() && expect.is_none() {
        return Err("`must_not_contain` without `expect`".into());
    }
    let alone = send.is_none() && expect.is_none() && step.repeat.is_none();
    match (step.tls, step.expect_closed) {
        (Some(true), None) if alone => return Ok(vec![StepKind::TlsHandshake]),
        (None, Some(true)) if alone => return Ok(vec![StepKind::ExpectClosed]),
        (None, None) => {}
        _ => return Err("`tls` and `expect_closed` must be `true` and alone in their step".into()),
    }
    let mut once = Vec::new();
    once.extend(send.map(StepKind::Send));
    once.extend(expect.map(StepKind::Expect));
    match step.repeat {
        _ if once.is_empty() => Err("an empty step".into()),
        None => Ok(once),
        Some(n) if n > 0 && (step.send.is_some() || step.raw.is_some()) => {
            Ok((0..n).flat_map(|_| once.clone()).collect())
        }
        Some(_) => Err("`repeat` needs a positive count and something to send".into()),
    }
}

fn expectation(codes: &[YamlCode], step: &YamlStep) -> Result<Expect, String> {
    if codes.is_empty() {
        return Err("an empty `expect` list".into());
    }
    let accept = codes
        .iter()
        .map(|c| match c {
            YamlCode::Number(n) if (200..=599).contains(n) => Ok(CodeSpec::Code(*n)),
            YamlCode::Text(t)
                if t.len() == 3 && t.ends_with("xx") && matches!(t.as_bytes()[0], b'2'..=b'5') =>
            {
                Ok(CodeSpec::Class(t.as_bytes()[0] - b'0'))
            }
            other => Err(format!(
                "{other:?} is neither a reply code nor a class like \"5xx\""
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shown: Vec<String> = accept.iter().map(CodeSpec::to_string).collect();
    let mut source = format!("expect: [{}]", shown.join(", "));
    if let Some(banned) = &step.must_not_contain {
        source.push_str(&format!(", must_not_contain: {banned:?}"));
    }
    Ok(Expect {
        accept,
        source,
        must_not_contain: step.must_not_contain.clone(),
    })
}

/// Replaces `${NAME}` with the fixture's values; an unknown name is an error.
fn substitute(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated variable in {text:?}"))?;
        out.push_str(
            &variable(&after[..end])
                .ok_or_else(|| format!("unknown variable ${{{}}}", &after[..end]))?,
        );
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn variable(name: &str) -> Option<String> {
    Some(match name {
        "HOST" => HOST.to_string(),
        "LOCAL_RCPT" => LOCAL_RCPT.to_string(),
        "UNKNOWN_RCPT" => UNKNOWN_RCPT.to_string(),
        "USER" => USER.to_string(),
        "PASS" => PASS.to_string(),
        "B64_PLAIN" => STANDARD.encode(format!("\0{USER}\0{PASS}")),
        "X2000" => "x".repeat(2000),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_variables() {
        let cases: Vec<(&str, Result<String, ()>)> = vec![
            (
                "RCPT TO:<${LOCAL_RCPT}>",
                Ok("RCPT TO:<alice@postern.test>".into()),
            ),
            ("EHLO ${HOST}", Ok("EHLO client.example.org".into())),
            ("no vars", Ok("no vars".into())),
            ("${NOPE}", Err(())),
            ("${HOST", Err(())),
        ];
        for (text, want) in cases {
            assert_eq!(
                substitute(text).map_err(|_| ()),
                want,
                "substituting {text:?}"
            );
        }
        assert_eq!(
            substitute("NOOP ${X2000}").map(|s| s.len()).ok(),
            Some(2005)
        );
        let b64 = substitute("${B64_PLAIN}").unwrap_or_default();
        let decoded = STANDARD.decode(b64).unwrap_or_default();
        assert_eq!(decoded, format!("\0{USER}\0{PASS}").into_bytes());
    }

    fn step(yaml: &str) -> Result<Vec<StepKind>, String> {
        let s: YamlStep = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        convert_step(&s)
    }

    #[test]
    fn converts_each_step_kind() {
        let cases: Vec<(&str, usize)> = vec![
            ("{send: NOOP}", 1),
            ("{raw: \"a\\r\\n\"}", 1),
            ("{expect: [250, \"5xx\"]}", 1),
            ("{expect: [250], must_not_contain: STARTTLS}", 1),
            ("{repeat: 3, send: NOOP, expect: [250]}", 6),
            ("{tls: true}", 1),
            ("{expect_closed: true}", 1),
        ];
        for (yaml, n) in cases {
            assert_eq!(step(yaml).map(|k| k.len()), Ok(n), "converting {yaml}");
        }
        let bad = [
            "{}",
            "{send: a, raw: b}",
            "{tls: false}",
            "{tls: true, send: a}",
            "{expect_closed: false}",
            "{expect: []}",
            "{expect: [150]}",
            "{expect: [\"5x\"]}",
            "{must_not_contain: x}",
            "{repeat: 2, expect: [250]}",
            "{repeat: 0, send: a}",
            "{sned: a}",
        ];
        for yaml in bad {
            assert!(
                step(yaml).is_err(),
                "{yaml} must be refused, got {:?}",
                step(yaml).map(|k| k.len())
            );
        }
    }
}

//! The `smtp-james` suite: Apache James' MPT ("Mail Protocol Tester") SMTP scripts (`*.test`).
//!
//! # Format (`james-mpt/SOURCE.txt`)
//!
//! - `C: text` is a line the client sends (CRLF appended; a literal `\r\n` inside it is an
//!   escape for a real CR LF, used to pipeline or inject). `C:` alone sends an empty line.
//!   Consecutive `C:` lines form one pipelined write.
//! - `S: regex` is a Java regex for the next reply *line*. Replies are compared by code, so
//!   `S:` lines are grouped back into replies: a line whose pattern has `-` after the code
//!   continues the reply, and so does a reply's first line (e.g. `250.*`) when the next pattern
//!   is such a continuation. The EHLO reply, whose keyword list differs from James', is thus
//!   one `250` reply, however many lines each server sends.
//! - Blank lines are cosmetic; anything else is an error.
//!
//! # Fixture
//!
//! Domain and host name `mydomain.tld`; user `bob@mydomain.tld` / `secret`; AUTH allowed over
//! plaintext (the scripts authenticate before STARTTLS) and STARTTLS offered. The mailbox
//! `starttls@mydomain.tld` exists too: `rcpt_with_starttls.test` sends to it and expects 250
//! (James' MPT server does not check recipients at RCPT time).

use std::path::Path;
use std::sync::Arc;

use proto_core::server::AuthPolicy;

use crate::dialogue::{CodeSpec, Expect, Scenario, Step, StepKind};
use crate::fixture::Fixture;
use crate::{Broken, LoadError, Loaded, read};

/// Loads every `*.test` script of `dir`, in name order.
pub(crate) fn load(dir: &Path) -> Result<Vec<Loaded>, LoadError> {
    let fixture = Arc::new(
        Fixture::new("mydomain.tld", AuthPolicy::AllowPlaintext)
            .domain("mydomain.tld")
            .mailbox("bob@mydomain.tld", Some("secret"))
            .mailbox("starttls@mydomain.tld", None),
    );
    let mut out = Vec::new();
    for path in crate::files_with_extension(dir, "test")? {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = format!("james-mpt/{name}.test");
        let text = read(&path)?;
        out.push(match parse(&text) {
            Ok(steps) => Ok(Scenario {
                name,
                file,
                at_word: "line",
                fixture: fixture.clone(),
                steps,
                verify_body: None,
            }),
            Err(error) => Err(Broken { name, file, error }),
        });
    }
    Ok(out)
}

/// Parses one script: a connect, then alternating pipelined writes and reply expectations.
fn parse(text: &str) -> Result<Vec<Step>, String> {
    let mut steps = vec![Step {
        at: 1,
        kind: StepKind::Connect { tls: false },
    }];
    let mut send: Option<(u32, Vec<u8>)> = None;
    let mut expect: Vec<(u32, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = u32::try_from(i + 1).map_err(|_| "script too long".to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("C:") {
            steps.extend(group_replies(&std::mem::take(&mut expect))?);
            let text = match rest.strip_prefix(' ') {
                Some(t) => t,
                None if rest.is_empty() => "",
                None => return Err(format!("line {at}: expected a space after `C:`: {line:?}")),
            };
            let bytes = send.get_or_insert_with(|| (at, Vec::new()));
            bytes
                .1
                .extend_from_slice(&unescape(text).map_err(|e| format!("line {at}: {e}"))?);
            bytes.1.extend_from_slice(b"\r\n");
        } else if let Some(rest) = line.strip_prefix("S: ") {
            if let Some((at, bytes)) = send.take() {
                steps.push(Step {
                    at,
                    kind: StepKind::Send(bytes),
                });
            }
            expect.push((at, rest.to_string()));
        } else {
            return Err(format!("line {at}: neither `C:` nor `S:`: {line:?}"));
        }
    }
    steps.extend(group_replies(&expect)?);
    if let Some((at, bytes)) = send {
        steps.push(Step {
            at,
            kind: StepKind::Send(bytes),
        });
    }
    Ok(steps)
}

/// `\r\n` escapes become CR LF; any other backslash escape is refused.
fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let replaced = text.replace("\\r\\n", "\r\n");
    if replaced.contains("\\r") || replaced.contains("\\n") {
        return Err("a `\\r` or `\\n` escape outside a `\\r\\n` pair".into());
    }
    Ok(replaced.into_bytes())
}

/// Groups consecutive `S:` patterns into one `Expect` per reply.
fn group_replies(lines: &[(u32, String)]) -> Result<Vec<Step>, String> {
    let continues = |pattern: &str| pattern.as_bytes().get(3) == Some(&b'-');
    let mut steps = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let (at, first) = &lines[i];
        let code = CodeSpec::leading_code(first).ok_or_else(|| {
            format!("line {at}: the pattern does not start with a reply code: {first:?}")
        })?;
        let mut end = i;
        loop {
            let joins_next = continues(&lines[end].1)
                || (end == i && lines.get(end + 1).is_some_and(|(_, next)| continues(next)));
            if !joins_next {
                break;
            }
            let Some((next_at, next)) = lines.get(end + 1) else {
                return Err(format!(
                    "line {}: a multi-line reply without its last line",
                    lines[end].0
                ));
            };
            if CodeSpec::leading_code(next) != Some(code) {
                return Err(format!(
                    "line {next_at}: a reply line with another code than line {at}"
                ));
            }
            end += 1;
        }
        let source: Vec<String> = lines[i..=end]
            .iter()
            .map(|(_, p)| format!("S: {p}"))
            .collect();
        steps.push(Step {
            at: *at,
            kind: StepKind::Expect(Expect::code(code, source.join(" / "))),
        });
        i = end + 1;
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match &s.kind {
                StepKind::Connect { .. } => format!("{} connect", s.at),
                StepKind::Send(b) => format!("{} send {:?}", s.at, String::from_utf8_lossy(b)),
                StepKind::Expect(e) => format!("{} expect {}", s.at, e.codes()),
                _ => format!("{} other", s.at),
            })
            .collect()
    }

    #[test]
    fn pipelined_groups_and_ehlo_replies() {
        let script = "S: 220 mydomain.tld smtp\nC: ehlo x\nC: mail from:<a@b>\nS: 250.*\nS: 250-PIPELINING\n\
                      S: 250 8BITMIME\nS: 250 2.1.0 Sender OK\nC:\nC: a\\r\\nb\n\nS: 451 .*\n";
        let steps = parse(script).unwrap_or_default();
        assert_eq!(
            describe(&steps),
            vec![
                "1 connect",
                "1 expect 220",
                "2 send \"ehlo x\\r\\nmail from:<a@b>\\r\\n\"",
                "4 expect 250",
                "7 expect 250",
                "8 send \"\\r\\na\\r\\nb\\r\\n\"",
                "11 expect 451",
            ]
        );
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let bad = [
            "S: 220 x\nLOG INFO\n",
            "S: 220 x\nC:ehlo\n",
            "S: .*\n",
            "S: 250-a\n",
            "S: 250-a\nS: 251 b\n",
            "C: a\\nb\n",
        ];
        for script in bad {
            assert!(parse(script).is_err(), "{script:?} must be refused");
        }
    }
}

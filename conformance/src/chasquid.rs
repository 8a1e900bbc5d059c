//! The `smtp-chasquid` suite: chasquid's "chamuyero" dialogue scripts (`.cmy`).
//!
//! # Format (`chasquid/SOURCE.txt`, chasquid's `test/util/chamuyero`)
//!
//! One operation per line, `<proc> <op> [params]`; `#` starts a comment, a trailing `\` joins
//! the next line. The scripts use the process `c` and these operations:
//!
//! | op | meaning here |
//! |---|---|
//! | `tcp_connect host:1025` | new session, plain SMTP |
//! | `tls_connect host:1465` | new session with TLS on from the start (implicit TLS) |
//! | `-> LINE` | send LINE and CRLF |
//! | `~> EXPR` | send the value of a Python string expression (see [`crate::pyexpr`]) |
//! | `<- TEXT`, `<~ REGEX`, `<... REGEX` | read one whole reply; compare its code with the leading 3 digits |
//! | `close` | the client closes |
//!
//! Reply text is chasquid's own wording, so only codes are compared: `c <- 503 5.5.1 Invisible
//! customers are not welcome!` expects a 503. `<...` ("read lines until one matches", used as
//! `<... 250 HELP` to skip chasquid's EHLO keywords) reads one whole reply and compares its code.
//! A `<script>.cmy.verify` file next to a script is the message chasquid delivers (minus trace
//! headers); it must equal the body of the last message accepted, LF turned into CRLF.
//!
//! # Fixture (each directory's `config/chasquid.conf`)
//!
//! Host name from `hostname:`, message size from `max_data_size_mb:` (chasquid's default 50),
//! local domains from `config/domains/*`, the user `user@<hostname>` / `secretpassword` that
//! chasquid's test setup creates, and at most 3 errors per session (chasquid answers 421 to the
//! third). AUTH is only offered under TLS, as chasquid does.
//!
//! # Which directories run
//!
//! Only directories whose `.cmy` scripts are pure dialogues with one server make sense in
//! memory: see [`RUN`] and [`SKIP`]. A `t-*` directory in neither list is an error, so a new
//! one added to `suites/smtp/chasquid` gets looked at.

use std::path::Path;
use std::sync::Arc;

use proto_core::server::AuthPolicy;

use crate::dialogue::{CodeSpec, Expect, Scenario, Step, StepKind};
use crate::fixture::Fixture;
use crate::{Broken, LoadError, Loaded, pyexpr, read};

/// Directories whose `.cmy` files are SMTP dialogues with one chasquid and run here.
const RUN: &[&str] = &[
    // sendmail.cmy is a plain delivery dialogue on 1025 (a null sender); the rest of that test
    // (the DSN expected_dsr describes) is end-to-end delivery and does not run here.
    "t-05-null_address",
    // The minor dialogs: every script is a dialogue on 1025 or 1465.
    "t-12-minor_dialogs",
];

/// Directories that do not run in memory, and why.
const SKIP: &[(&str, &str)] = &[
    (
        "t-04-aliases",
        "its only .cmy drives the chasquid-util command line (`c = ./chasquid-util.sh`), not SMTP",
    ),
    (
        "t-06-idna",
        "two servers relaying to each other through DNS zones; no .cmy dialogue",
    ),
    (
        "t-07-smtputf8",
        "end-to-end delivery with an SMTP client program; no .cmy dialogue",
    ),
    (
        "t-21-dkim",
        "two servers signing and verifying DKIM through DNS; no .cmy dialogue",
    ),
    (
        "t-22-forward_via",
        "three servers forwarding through DNS, checking delivered headers; no .cmy dialogue",
    ),
];

/// The AUTH user chasquid's test setup adds to every test server.
const USER: (&str, &str) = ("user", "secretpassword");
/// chasquid's `max_data_size_mb` default.
const DEFAULT_MAX_DATA_MB: u64 = 50;
/// Errors per session; chasquid answers 421 to the third.
const MAX_ERRORS: u32 = 3;
/// The ports the scripts connect to.
const SMTP_PORT: &str = "1025";
const SUBMISSIONS_PORT: &str = "1465";

/// Loads every script of the directories in [`RUN`], in name order.
pub(crate) fn load(dir: &Path) -> Result<Vec<Loaded>, LoadError> {
    check_directories(dir)?;
    let mut out = Vec::new();
    for name in RUN {
        let test_dir = dir.join(name);
        let fixture = Arc::new(fixture(&test_dir)?);
        for path in crate::files_with_extension(&test_dir, "cmy")? {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let scenario = format!("{name}/{stem}");
            let file = format!("chasquid/{name}/{stem}.cmy");
            let text = read(&path)?;
            let verify_path = path.with_extension("cmy.verify");
            let verify_body = if verify_path.exists() {
                Some(read(&verify_path)?.replace('\n', "\r\n").into_bytes())
            } else {
                None
            };
            out.push(match parse(&text) {
                Ok(steps) => Ok(Scenario {
                    name: scenario,
                    file,
                    at_word: "line",
                    fixture: fixture.clone(),
                    steps,
                    verify_body,
                }),
                Err(error) => Err(Broken {
                    name: scenario,
                    file,
                    error,
                }),
            });
        }
    }
    Ok(out)
}

/// Every `t-*` directory must be in [`RUN`] or [`SKIP`], and every listed one must exist.
fn check_directories(dir: &Path) -> Result<(), LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LoadError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("t-") && entry.path().is_dir() {
            found.push(name);
        }
    }
    for name in &found {
        if !RUN.contains(&name.as_str()) && !SKIP.iter().any(|(s, _)| s == name) {
            return Err(LoadError::Suite {
                path: dir.join(name),
                message:
                    "a chasquid test directory this runner does not know: add it to RUN or SKIP \
                          in conformance/src/chasquid.rs"
                        .into(),
            });
        }
    }
    for name in RUN.iter().chain(SKIP.iter().map(|(s, _)| s)) {
        if !found.iter().any(|f| f == name) {
            return Err(LoadError::Suite {
                path: dir.join(name),
                message: "listed in conformance/src/chasquid.rs but missing".into(),
            });
        }
    }
    Ok(())
}

/// The fixture of one test directory, from its `config/`.
fn fixture(test_dir: &Path) -> Result<Fixture, LoadError> {
    let conf_path = test_dir.join("config/chasquid.conf");
    let conf = read(&conf_path)?;
    let setting = |key: &str| {
        conf.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.trim_start().strip_prefix(':'))
            .map(|v| v.trim().trim_matches('"').to_string())
            .next()
    };
    let bad = |message: String| LoadError::Suite {
        path: conf_path.clone(),
        message,
    };
    let hostname = setting("hostname").ok_or_else(|| bad("no hostname".into()))?;
    let max_mb = match setting("max_data_size_mb") {
        Some(v) => v
            .parse()
            .map_err(|_| bad(format!("max_data_size_mb {v:?} is not a number")))?,
        None => DEFAULT_MAX_DATA_MB,
    };
    let mut f = Fixture::new(&hostname, AuthPolicy::TlsOnly);
    let limits = &mut f.config_mut().limits;
    limits.max_message_size = max_mb * 1024 * 1024;
    limits.max_errors = MAX_ERRORS;
    let domains_dir = test_dir.join("config/domains");
    let domains = std::fs::read_dir(&domains_dir).map_err(|source| LoadError::Io {
        path: domains_dir.clone(),
        source,
    })?;
    for entry in domains.flatten() {
        f = f.domain(&entry.file_name().to_string_lossy());
    }
    Ok(f.mailbox(&format!("{}@{hostname}", USER.0), Some(USER.1)))
}

/// Parses one script into steps.
fn parse(text: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut continued = String::new();
    for (i, raw) in text.split('\n').enumerate() {
        let at = u32::try_from(i + 1).map_err(|_| "script too long".to_string())?;
        let mut line = raw.to_string();
        if !continued.is_empty() {
            line = format!("{} {}", continued, line.trim_start());
            continued.clear();
        }
        if let Some(head) = line.strip_suffix('\\') {
            continued = head.to_string();
            continue;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let kind = parse_line(&line).map_err(|e| format!("line {at}: {e}: {line:?}"))?;
        steps.push(Step { at, kind });
    }
    if !continued.is_empty() {
        return Err("the script ends inside a continued line".into());
    }
    if !matches!(
        steps.first(),
        Some(Step {
            kind: StepKind::Connect { .. },
            ..
        })
    ) {
        return Err("the script does not start with a connect".into());
    }
    Ok(steps)
}

fn parse_line(line: &str) -> Result<StepKind, String> {
    // As Python's `line.split(None, 2)`: leading blanks go, trailing ones stay in params.
    let (proc, rest) = split_word(line);
    let (op, params) = split_word(rest);
    if proc != "c" {
        return Err(format!(
            "unknown process {proc:?} (the scripts talk to `c`)"
        ));
    }
    Ok(match op {
        "tcp_connect" | "tls_connect" => {
            let port = params.trim().rsplit(':').next().unwrap_or_default();
            match (op, port) {
                ("tcp_connect", SMTP_PORT) => StepKind::Connect { tls: false },
                ("tls_connect", SUBMISSIONS_PORT) => StepKind::Connect { tls: true },
                _ => {
                    return Err(format!(
                        "`{op}` to port {port} is not in the fixture (tcp_connect {SMTP_PORT}, \
                         tls_connect {SUBMISSIONS_PORT})"
                    ));
                }
            }
        }
        "->" => StepKind::Send(format!("{params}\r\n").into_bytes()),
        "~>" => StepKind::Send(pyexpr::eval(params)?),
        "<-" | "<~" | "<..." => {
            let code = CodeSpec::leading_code(params)
                .ok_or_else(|| "the expectation does not start with a reply code".to_string())?;
            StepKind::Expect(Expect::code(code, line.trim()))
        }
        "close" if params.trim().is_empty() => StepKind::Close,
        other => return Err(format!("unsupported operation {other:?}")),
    })
}

/// Splits off the first whitespace-separated word; the rest loses its leading whitespace only.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(kind: &StepKind) -> String {
        match kind {
            StepKind::Connect { tls } => format!("connect tls={tls}"),
            StepKind::Send(b) => format!("send {:?}", String::from_utf8_lossy(b)),
            StepKind::Expect(e) => format!("expect {}", e.codes()),
            StepKind::Close => "close".into(),
            StepKind::TlsHandshake => "tls".into(),
            StepKind::ExpectClosed => "closed".into(),
        }
    }

    #[test]
    fn parses_each_operation() {
        let cases: Vec<(&str, &str)> = vec![
            ("c tcp_connect localhost:1025", "connect tls=false"),
            ("c tls_connect localhost:1465", "connect tls=true"),
            ("c -> EHLO localhost", "send \"EHLO localhost\\r\\n\""),
            ("c -> ", "send \"\\r\\n\""),
            ("c ->", "send \"\\r\\n\""),
            ("c ->  two  ", "send \"two  \\r\\n\""),
            ("c ~> '.\\n'", "send \".\\n\""),
            (
                "c <- 503 5.5.1 Invisible customers are not welcome!",
                "expect 503",
            ),
            ("c <~ 220", "expect 220"),
            ("c <... 250 HELP", "expect 250"),
            ("c close", "close"),
        ];
        for (line, want) in cases {
            let got = parse_line(line).map(|k| describe(&k));
            assert_eq!(got.as_deref(), Ok(want), "parsing {line:?}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let bad = [
            "c tcp_connect localhost:1587",
            "c tls_connect localhost:1025",
            "c tcp_connect localhost:1465",
            "c = ./chasquid-util.sh aliases-resolve x",
            "c wait 0",
            "c <~ ^220",
            "c ~> 'abc",
            "d -> EHLO x",
            "c sleep 1",
        ];
        for line in bad {
            assert!(parse_line(line).is_err(), "{line:?} must be refused");
        }
    }

    #[test]
    fn scripts_skip_comments_and_join_continuations() {
        let script = "\n# comment\nc tcp_connect localhost:1025\n  # indented comment\nc -> HELO\\\n   there\nc <~ 250\n";
        let steps = parse(script).unwrap_or_default();
        let got: Vec<(u32, String)> = steps.iter().map(|s| (s.at, describe(&s.kind))).collect();
        assert_eq!(
            got,
            vec![
                (3, "connect tls=false".to_string()),
                (6, "send \"HELO there\\r\\n\"".to_string()),
                (7, "expect 250".to_string()),
            ]
        );
        assert!(parse("c -> EHLO x\n").is_err(), "must connect first");
    }
}

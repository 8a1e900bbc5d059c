//! Runs one [`Scenario`] against `proto_core::server::Session`s in memory and records what differed.
//!
//! The runner plays both the client (the scenario's steps) and the server's driver: it feeds
//! each send to [`Session::handle_input`] in one piece, drains [`Session::poll_action`]
//! after every input, answers events from the [`Fixture`], and queues the replies. An `Expect`
//! step takes the next whole reply from that queue and compares its code. The clock is
//! virtual and never moves: no suite here waits for a timeout.
//!
//! Beyond the codes, the runner checks what a client on a socket would notice:
//! - a reply nobody asked for (still queued when the connection ends, or sent right after a
//!   TLS handshake before any command) is a mismatch: that is how injected or duplicated
//!   commands show;
//! - the TLS handshake only happens after the session asked for it with `Action::StartTls`,
//!   and with no plaintext reply pending behind the 220;
//! - `ExpectClosed` needs `Action::Close`.

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use proto_core::{
    Reply, ReversePath, server::Action, server::Event, server::Session, server::Verdict,
};

use crate::dialogue::{Expect, Scenario, Step, StepKind};
use crate::fixture::{Fixture, tls_info};

/// What running a scenario gave.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// Every difference from the scenario, in order.
    pub mismatches: Vec<Mismatch>,
    /// The whole dialogue, for failure reports.
    pub transcript: Vec<String>,
}

/// One difference between what the suite expects and what the session did.
#[derive(Debug, Clone)]
pub(crate) struct Mismatch {
    /// The step (`Step::at`), or `None` for a check of the whole scenario.
    pub at: Option<u32>,
    /// What the suite has at that step: acceptable codes (`521`, `250|5xx`) or a description.
    pub expected: String,
    /// The suite's own text for the step.
    pub source: String,
    /// What happened instead.
    pub actual: Actual,
}

/// What happened instead of the expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Actual {
    /// A reply with another code: the only kind of mismatch a listed deviation may cover.
    Code {
        /// Its code.
        code: u16,
        /// The reply as sent, one string per line.
        lines: Vec<String>,
    },
    /// Anything else, described.
    Other(String),
}

impl fmt::Display for Actual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actual::Code { lines, .. } => match lines.as_slice() {
                [one] => write!(f, "{one}"),
                [first, .., last] => write!(f, "{first} ... {last} ({} lines)", lines.len()),
                [] => write!(f, "an empty reply"),
            },
            Actual::Other(s) => f.write_str(s),
        }
    }
}

/// Runs `scenario` from the start.
pub(crate) fn run(scenario: &Scenario) -> Outcome {
    let mut run = Run {
        fixture: &scenario.fixture,
        now: Instant::now(),
        conn: None,
        log: Log {
            at_word: scenario.at_word,
            ..Log::default()
        },
    };
    for step in &scenario.steps {
        run.step(step);
    }
    let last = scenario.steps.last().map(|s| s.at);
    run.end_connection(last);
    if let Some(want) = &scenario.verify_body {
        let got = run.log.delivered.last();
        if got != Some(want) {
            let actual = match got {
                None => "no message was delivered".to_string(),
                Some(body) => format!("the delivered body was {}", show_bytes(body, 400)),
            };
            run.log.mismatch(
                None,
                format!("delivered body {}", show_bytes(want, 400)),
                "verify".into(),
                Actual::Other(actual),
            );
        }
    }
    Outcome {
        mismatches: run.log.mismatches,
        transcript: run.log.transcript,
    }
}

/// The connection under test.
struct Conn {
    session: Session,
    /// Replies sent and not yet read by an `Expect`.
    replies: VecDeque<Reply>,
    /// The session emitted `Action::Close`.
    closed: bool,
    /// The session emitted `Action::StartTls` and waits for the handshake.
    tls_requested: bool,
}

/// What the run has seen so far.
#[derive(Debug, Default)]
struct Log {
    /// How steps are named: `line` or `step`.
    at_word: &'static str,
    transcript: Vec<String>,
    mismatches: Vec<Mismatch>,
    /// The body of the message being received.
    body: Vec<u8>,
    /// Bodies of accepted messages, in order.
    delivered: Vec<Vec<u8>>,
}

impl Log {
    fn note(&mut self, line: impl Into<String>) {
        self.transcript.push(line.into());
    }

    fn mismatch(&mut self, at: Option<u32>, expected: String, source: String, actual: Actual) {
        let place = at.map_or_else(|| "end".to_string(), |a| format!("{} {a}", self.at_word));
        self.note(format!("!! {place}: expected {expected}, got {actual}"));
        self.mismatches.push(Mismatch {
            at,
            expected,
            source,
            actual,
        });
    }
}

struct Run<'a> {
    fixture: &'a Fixture,
    now: Instant,
    conn: Option<Conn>,
    log: Log,
}

impl Run<'_> {
    fn step(&mut self, step: &Step) {
        let at = Some(step.at);
        match &step.kind {
            StepKind::Connect { tls } => {
                self.end_connection(at);
                self.log.note(if *tls {
                    "-- connect (TLS from the start)"
                } else {
                    "-- connect"
                });
                let session = Session::new(
                    self.fixture.config.clone(),
                    self.fixture.peer(*tls),
                    self.now,
                );
                self.conn = Some(Conn {
                    session,
                    replies: VecDeque::new(),
                    closed: false,
                    tls_requested: false,
                });
                self.drain();
            }
            StepKind::Send(bytes) => {
                let closed = self.conn.as_ref().is_none_or(|c| c.closed);
                for line in show_input(bytes) {
                    self.log.note(format!("C: {line}"));
                }
                match &mut self.conn {
                    Some(conn) if !closed => conn.session.handle_input(self.now, bytes),
                    _ => self
                        .log
                        .note("   (not delivered: the connection is closed)"),
                }
                self.drain();
            }
            StepKind::Expect(expect) => self.expect(step.at, expect),
            StepKind::Close => {
                self.end_connection(at);
            }
            StepKind::TlsHandshake => self.handshake(step.at),
            StepKind::ExpectClosed => {
                self.drain();
                if !self.conn.as_ref().is_some_and(|c| c.closed) {
                    self.log.mismatch(
                        at,
                        "the server to close the connection".into(),
                        "expect_closed: true".into(),
                        Actual::Other("the connection is still open".into()),
                    );
                }
            }
        }
    }

    fn expect(&mut self, at: u32, expect: &Expect) {
        let Some(conn) = &mut self.conn else {
            let actual = Actual::Other("no connection".into());
            return self
                .log
                .mismatch(Some(at), expect.codes(), expect.source.clone(), actual);
        };
        let Some(reply) = conn.replies.pop_front() else {
            let actual = Actual::Other(if conn.closed {
                "no reply: the server closed the connection".into()
            } else {
                "no reply: the session waits for more input".into()
            });
            return self
                .log
                .mismatch(Some(at), expect.codes(), expect.source.clone(), actual);
        };
        let code = reply.code().get();
        let lines = reply_lines(&reply);
        if !expect.accepts(code) {
            let actual = Actual::Code { code, lines };
            self.log
                .mismatch(Some(at), expect.codes(), expect.source.clone(), actual);
        } else if let Some(banned) = &expect.must_not_contain
            && lines.iter().any(|l| l.contains(banned.as_str()))
        {
            let actual = Actual::Other(format!("a reply containing {banned:?}"));
            self.log.mismatch(
                Some(at),
                format!("no {banned:?}"),
                expect.source.clone(),
                actual,
            );
        }
    }

    fn handshake(&mut self, at: u32) {
        let source = "tls: true".to_string();
        let Some(conn) = &mut self.conn else {
            let actual = Actual::Other("no connection".into());
            return self
                .log
                .mismatch(Some(at), "a TLS handshake".into(), source, actual);
        };
        if !conn.tls_requested {
            let actual = Actual::Other("the session did not ask for a TLS handshake".into());
            return self
                .log
                .mismatch(Some(at), "a TLS handshake".into(), source, actual);
        }
        // A plaintext reply queued behind the 220 would be read by the client's TLS stack.
        let early: Vec<Reply> = conn.replies.drain(..).collect();
        for reply in early {
            let actual = Actual::Other(format!(
                "a plaintext reply after the 220: {}",
                reply_lines(&reply).join(" | ")
            ));
            self.log.mismatch(
                Some(at),
                "no reply before the handshake".into(),
                source.clone(),
                actual,
            );
        }
        conn.tls_requested = false;
        self.log.note("-- TLS handshake");
        if let Some(conn) = &mut self.conn
            && let Err(e) = conn.session.handle_tls_established(self.now, tls_info())
        {
            let actual = Actual::Other(format!("handle_tls_established failed: {e}"));
            self.log
                .mismatch(Some(at), "a TLS handshake".into(), source.clone(), actual);
        }
        self.drain();
        // Nothing may answer before the client has sent a command over TLS.
        let early: Vec<Reply> = self
            .conn
            .as_mut()
            .map(|c| c.replies.drain(..).collect())
            .unwrap_or_default();
        for reply in early {
            let actual = Actual::Other(format!(
                "a reply before any command over TLS: {}",
                reply_lines(&reply).join(" | ")
            ));
            self.log
                .mismatch(Some(at), "no reply".into(), source.clone(), actual);
        }
    }

    /// The client is done with the connection: any reply it did not read is unexpected.
    fn end_connection(&mut self, at: Option<u32>) {
        let Some(conn) = &mut self.conn else { return };
        let unread: Vec<Reply> = conn.replies.drain(..).collect();
        for reply in unread {
            let actual = Actual::Other(format!(
                "an unexpected reply: {}",
                reply_lines(&reply).join(" | ")
            ));
            self.log.mismatch(
                at,
                "no further reply".into(),
                "(end of connection)".into(),
                actual,
            );
        }
        if !conn.closed {
            self.log.note("-- client closes");
            conn.session.handle_eof(self.now);
            self.drain();
        }
        self.conn = None;
    }

    /// Carries out every action the session has, answering events from the fixture.
    fn drain(&mut self) {
        let Some(conn) = &mut self.conn else { return };
        let log = &mut self.log;
        while let Some(action) = conn.session.poll_action() {
            match action {
                Action::Send(reply) => {
                    for line in reply_lines(&reply) {
                        log.note(format!("S: {line}"));
                    }
                    conn.replies.push_back(reply);
                }
                Action::Event(event) => {
                    match &event {
                        Event::MessageStart | Event::TransactionAborted => log.body.clear(),
                        Event::MessageData(chunk) => log.body.extend_from_slice(chunk),
                        _ => {}
                    }
                    let queue_id = format!("Q{}", log.delivered.len() + 1);
                    let authenticated = conn.session.authenticated().is_some();
                    let Some((ticket, verdict)) =
                        self.fixture.decide(&event, authenticated, &queue_id)
                    else {
                        if let Some(s) = summary(&event) {
                            log.note(format!("   [app] {s}"));
                        }
                        continue;
                    };
                    log.note(format!(
                        "   [app] {} -> {}",
                        summary(&event).unwrap_or_default(),
                        show_verdict(&verdict)
                    ));
                    if matches!(event, Event::MessageEnd { .. })
                        && !matches!(verdict, Verdict::Reject(_))
                    {
                        log.delivered.push(std::mem::take(&mut log.body));
                    }
                    if let Err(e) = conn.session.resolve(self.now, ticket, verdict) {
                        log.mismatch(
                            None,
                            "resolve to succeed".into(),
                            "(fixture)".into(),
                            Actual::Other(format!("resolve failed: {e}")),
                        );
                    }
                }
                Action::StartTls => {
                    log.note("-- server asks for the TLS handshake");
                    conn.tls_requested = true;
                }
                Action::Close => {
                    log.note("-- server closes the connection");
                    conn.closed = true;
                }
                other => log.note(format!("-- unknown action {other:?}")),
            }
        }
    }
}

/// A reply as its wire lines, without CRLF.
fn reply_lines(reply: &Reply) -> Vec<String> {
    String::from_utf8_lossy(&reply.to_bytes())
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn summary(event: &Event) -> Option<String> {
    Some(match event {
        Event::Mail { from, .. } => match from {
            ReversePath::Null => "MAIL <>".to_string(),
            other => format!("MAIL {other}"),
        },
        Event::Rcpt { to, .. } => format!("RCPT {to}"),
        Event::Auth { credentials, .. } => {
            format!("AUTH {} as {}", credentials.mechanism, credentials.authcid)
        }
        Event::MessageStart => "message starts".to_string(),
        Event::MessageEnd { .. } => "message ends".to_string(),
        Event::TransactionAborted => "transaction aborted".to_string(),
        _ => return None,
    })
}

fn show_verdict(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Accept => "accept".into(),
        Verdict::AcceptWithText(t) => format!("accept ({t})"),
        Verdict::Reject(r) => format!("reject {}", reply_lines(r).join(" | ")),
        _ => "other verdict".into(),
    }
}

/// Client input as transcript lines: one per CRLF-terminated line, long lines and long runs
/// of lines shortened, bare CR and LF made visible.
fn show_input(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                lines.push(show_bytes(&rest[..i], 120));
                rest = &rest[i + 2..];
            }
            None => {
                lines.push(format!("{} [no CRLF]", show_bytes(rest, 120)));
                rest = &[];
            }
        }
    }
    if lines.len() > 12 {
        let hidden = lines.len() - 8;
        let tail = lines.split_off(lines.len() - 2);
        lines.truncate(6);
        lines.push(format!("... ({hidden} more lines)"));
        lines.extend(tail);
    }
    lines
}

/// Bytes as readable text: bare CR and LF escaped, shortened past `max` characters.
fn show_bytes(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let escaped: String = text.replace('\r', "\\r").replace('\n', "\\n");
    if escaped.chars().count() > max {
        let head: String = escaped.chars().take(max).collect();
        format!("{head}... ({} bytes)", bytes.len())
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto_core::server::AuthPolicy;

    use super::*;

    fn scenario(kinds: Vec<StepKind>, verify_body: Option<&[u8]>) -> Scenario {
        let fixture = Fixture::new("mx.test", AuthPolicy::TlsOnly)
            .domain("test")
            .mailbox("a@test", Some("pw"));
        let mut steps = vec![Step {
            at: 0,
            kind: StepKind::Connect { tls: false },
        }];
        steps.extend(kinds.into_iter().enumerate().map(|(i, kind)| Step {
            at: u32::try_from(i + 1).unwrap_or(u32::MAX),
            kind,
        }));
        Scenario {
            name: "t".into(),
            file: "t".into(),
            at_word: "step",
            fixture: Arc::new(fixture),
            steps,
            verify_body: verify_body.map(<[u8]>::to_vec),
        }
    }

    fn send(s: &str) -> StepKind {
        StepKind::Send(s.as_bytes().to_vec())
    }

    fn expect(code: u16) -> StepKind {
        StepKind::Expect(Expect::code(code, format!("{code}")))
    }

    /// Steps, the body to verify, and the mismatches as `step: expected / actual kind`.
    type Case = (Vec<StepKind>, Option<&'static [u8]>, Vec<&'static str>);

    #[test]
    fn reports_every_kind_of_difference() {
        let delivery = || {
            vec![
                expect(220),
                send("EHLO c\r\nMAIL FROM:<x@y>\r\nRCPT TO:<a@test>\r\nDATA\r\n"),
                expect(250),
                expect(250),
                expect(250),
                expect(354),
                send("hello\r\n.\r\n"),
                expect(250),
            ]
        };
        let cases: Vec<Case> = vec![
            (
                vec![expect(220), send("NOOP\r\n"), expect(250)],
                None,
                vec![],
            ),
            (
                vec![expect(220), send("NOOP\r\n"), expect(500)],
                None,
                vec!["3: 500 / code 250"],
            ),
            (
                vec![expect(220), send("NOOP\r\nNOOP\r\n"), expect(250)],
                None,
                vec!["3: no further reply / other"],
            ),
            (vec![expect(220), expect(250)], None, vec!["2: 250 / other"]),
            (
                vec![
                    expect(220),
                    send("QUIT\r\n"),
                    expect(221),
                    StepKind::ExpectClosed,
                ],
                None,
                vec![],
            ),
            (
                vec![expect(220), StepKind::ExpectClosed],
                None,
                vec!["2: the server to close the connection / other"],
            ),
            (
                vec![expect(220), StepKind::TlsHandshake],
                None,
                vec!["2: a TLS handshake / other"],
            ),
            (
                vec![
                    expect(220),
                    send("STARTTLS\r\nNOOP\r\n"),
                    expect(220),
                    StepKind::TlsHandshake,
                    send("NOOP\r\n"),
                    expect(250),
                ],
                None,
                vec![],
            ),
            (delivery(), Some(b"hello\r\n"), vec![]),
            (
                delivery(),
                Some(b"other\r\n"),
                vec!["end: delivered body other\\r\\n / other"],
            ),
        ];
        for (kinds, body, want) in cases {
            let sc = scenario(kinds, body);
            let outcome = run(&sc);
            let got: Vec<String> = outcome
                .mismatches
                .iter()
                .map(|m| {
                    let at = m.at.map_or_else(|| "end".to_string(), |a| a.to_string());
                    let kind = match &m.actual {
                        Actual::Code { code, .. } => format!("code {code}"),
                        Actual::Other(_) => "other".to_string(),
                    };
                    format!("{at}: {} / {kind}", m.expected)
                })
                .collect();
            assert_eq!(got, want, "transcript:\n{}", outcome.transcript.join("\n"));
        }
    }

    #[test]
    fn input_is_shown_line_by_line() {
        let cases: Vec<(&[u8], Vec<&str>)> = vec![
            (b"EHLO x\r\n", vec!["EHLO x"]),
            (b"\r\n", vec![""]),
            (b".\n", vec![".\\n [no CRLF]"]),
            (b"a\r\nb\nc\r\n", vec!["a", "b\\nc"]),
        ];
        for (input, want) in cases {
            assert_eq!(
                show_input(input),
                want,
                "showing {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let many = b"x\r\n".repeat(20);
        let shown = show_input(&many);
        assert_eq!(shown.len(), 9, "{shown:?}");
        assert_eq!(shown[6], "... (12 more lines)");
        let long = show_bytes(&[b'a'; 500], 10);
        assert_eq!(long, "aaaaaaaaaa... (500 bytes)");
    }
}

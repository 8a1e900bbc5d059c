//! The SMTP client session against scripted server replies, on a virtual clock.
//!
//! Each case is a list of server "turns" (what the server sends before it waits for the client
//! again), the body the driver hands in, and the expected client wire text and per-recipient
//! results. Every case is also run with every turn split at every byte, and byte by byte:
//! the client's actions must not change.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proto_core::{
    Body, ForwardPath, ReversePath, TlsInfo, client::ClientAction, client::ClientConfig,
    client::ClientCredentials, client::ClientError, client::ClientEvent, client::ClientSession,
    client::FailureReason, client::MailJob, client::Outcome, client::RecipientStatus,
    client::Stage, client::TlsPolicy,
};

/// What a run produced: the client's wire text (all sends, concatenated), driver actions and
/// events in order, and the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    wire: String,
    log: Vec<String>,
    outcome: Option<Outcome>,
    /// Outcomes of further jobs (see `push_job`).
    more: Vec<Outcome>,
}

fn origin() -> Instant {
    // The virtual clock needs an origin; after this it only moves when a test says so.
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

struct Driver {
    s: ClientSession,
    now: Instant,
    body: Vec<Vec<u8>>,
    run: Run,
}

impl Driver {
    fn new(cfg: ClientConfig, job: MailJob, body: &[&[u8]], now: Instant) -> Driver {
        let mut d = Driver {
            s: ClientSession::new(Arc::new(cfg), job, now),
            now,
            body: body.iter().map(|c| c.to_vec()).collect(),
            run: Run {
                wire: String::new(),
                log: Vec::new(),
                outcome: None,
                more: Vec::new(),
            },
        };
        d.drain();
        d
    }

    fn input(&mut self, bytes: &[u8]) {
        self.s.handle_input(self.now, bytes);
        self.drain();
    }

    fn drain(&mut self) {
        loop {
            while let Some(a) = self.s.poll_action() {
                match a {
                    ClientAction::Send(b) => self.run.wire.push_str(&String::from_utf8_lossy(&b)),
                    ClientAction::StartTls => {
                        self.run.log.push("starttls".into());
                        self.s
                            .handle_tls_established(
                                self.now,
                                TlsInfo::new("TLSv1.3", "TLS_AES_128_GCM_SHA256", None),
                            )
                            .unwrap();
                    }
                    ClientAction::Event(ClientEvent::BodyRequested) => {
                        self.run.log.push("body".into())
                    }
                    ClientAction::Event(ClientEvent::Finished(o)) => {
                        self.run.log.push("finished".into());
                        if self.run.outcome.is_none() {
                            self.run.outcome = Some(o);
                        } else {
                            self.run.more.push(o);
                        }
                    }
                    ClientAction::Close => self.run.log.push("close".into()),
                    _ => self.run.log.push("other".into()),
                }
            }
            if self.s.wants_body() && !self.body.is_empty() {
                let chunk = self.body.remove(0);
                let last = self.body.is_empty();
                self.s.handle_body(self.now, &chunk, last).unwrap();
                continue;
            }
            break;
        }
    }
}

/// Runs `turns`, each split at the given offsets (per turn).
fn run(
    cfg: &ClientConfig,
    job: &MailJob,
    turns: &[&str],
    body: &[&[u8]],
    split: &dyn Fn(usize) -> Vec<usize>,
) -> Run {
    let mut d = Driver::new(cfg.clone(), job.clone(), body, origin());
    for t in turns {
        let bytes = t.as_bytes();
        let mut last = 0;
        for c in split(bytes.len()).into_iter().chain([bytes.len()]) {
            let c = c.clamp(last, bytes.len());
            d.input(&bytes[last..c]);
            last = c;
        }
    }
    d.run
}

fn summary(o: &Outcome) -> Vec<String> {
    o.recipients
        .iter()
        .map(|r| match &r.status {
            RecipientStatus::Accepted(reply) => format!("ok {}", reply.code()),
            RecipientStatus::TemporaryFailure(why) => format!("temp {}", why_text(why)),
            RecipientStatus::PermanentFailure(why) => format!("perm {}", why_text(why)),
            _ => "other".into(),
        })
        .collect()
}

fn why_text(why: &FailureReason) -> String {
    match why {
        FailureReason::Reply(r) => r.code().to_string(),
        FailureReason::Local(e) => format!("{e:?}"),
        _ => "other".into(),
    }
}

fn mbox(s: &str) -> ForwardPath {
    ForwardPath::parse(s).unwrap()
}

fn job(rcpts: &[&str]) -> MailJob {
    MailJob::new(
        ReversePath::parse("a@x.test").unwrap(),
        rcpts.iter().map(|r| mbox(r)),
    )
}

fn cfg() -> ClientConfig {
    ClientConfig::new("c.test")
}

const GREET: &str = "220 mx.test ESMTP\r\n";
const EHLO_PIPE: &str = "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000\r\n";
const EHLO_PLAIN: &str = "250 mx.test\r\n";

struct Case {
    name: &'static str,
    cfg: ClientConfig,
    job: MailJob,
    turns: Vec<&'static str>,
    body: Vec<&'static [u8]>,
    wire: &'static str,
    results: Vec<&'static str>,
    /// Whether the log ends with close (always true in these cases).
    closes: bool,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.push(Case {
        name: "pipelined DATA, one recipient refused",
        cfg: cfg(),
        job: job(&["b@y.test", "nobody@y.test"]),
        turns: vec![
            GREET,
            EHLO_PIPE,
            "250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n",
            "250 2.0.0 queued\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"a\r\n.b\r\n"],
        wire: "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<nobody@y.test>\r\nDATA\r\na\r\n..b\r\n.\r\nQUIT\r\n",
        results: vec!["ok 250", "perm 550"],
        closes: true,
    });
    let mut nopipe = cfg();
    nopipe.pipelining = false;
    v.push(Case {
        name: "EHLO refused, HELO, lock-step, bare LF normalised",
        cfg: cfg(),
        job: job(&["b@y.test", "c@y.test"]),
        turns: vec![
            GREET,
            "502 5.5.1 what\r\n",
            "250 mx.test\r\n",
            "250 ok\r\n",
            "451 4.3.0 later\r\n",
            "250 ok\r\n",
            "354 go\r\n",
            "250 queued\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"x\n.\n", b"y"],
        wire: "EHLO c.test\r\nHELO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\nx\r\n..\r\ny\r\n.\r\nQUIT\r\n",
        results: vec!["temp 451", "ok 250"],
        closes: true,
    });
    v.push(Case {
        name: "pipelining configured off",
        cfg: nopipe.clone(),
        job: job(&["b@y.test"]),
        turns: vec![
            GREET,
            EHLO_PIPE,
            "250 ok\r\n",
            "250 ok\r\n",
            "354 go\r\n",
            "250 queued\r\n",
            "221 bye\r\n",
        ],
        body: vec![b""],
        wire: "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n.\r\nQUIT\r\n",
        results: vec!["ok 250"],
        closes: true,
    });
    v.push(Case {
        name: "STARTTLS opportunistic, EHLO again",
        cfg: nopipe.clone(),
        job: job(&["b@y.test"]),
        turns: vec![
            GREET,
            "250-mx.test\r\n250 STARTTLS\r\n",
            "220 go ahead\r\n",
            "250 mx.test\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "354 go\r\n",
            "250 queued\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"hi\r\n"],
        wire: "EHLO c.test\r\nSTARTTLS\r\nEHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
        results: vec!["ok 250"],
        closes: true,
    });
    let mut required = cfg();
    required.tls = TlsPolicy::Required;
    v.push(Case {
        name: "TLS required, STARTTLS not offered",
        cfg: required.clone(),
        job: job(&["b@y.test"]),
        turns: vec![GREET, EHLO_PIPE, "221 bye\r\n"],
        body: vec![],
        wire: "EHLO c.test\r\nQUIT\r\n",
        results: vec!["temp StartTlsNotOffered"],
        closes: true,
    });
    v.push(Case {
        name: "TLS required, STARTTLS refused",
        cfg: required,
        job: job(&["b@y.test"]),
        turns: vec![
            GREET,
            "250-mx.test\r\n250 STARTTLS\r\n",
            "454 4.7.0 no tls today\r\n",
            "221 bye\r\n",
        ],
        body: vec![],
        wire: "EHLO c.test\r\nSTARTTLS\r\nQUIT\r\n",
        results: vec!["temp StartTlsRefused(Reply { code: ReplyCode(454), enhanced: Some(EnhancedStatus { class: 4, subject: 7, detail: 0 }), lines: [\"no tls today\"] })"],
        closes: true,
    });
    let mut never = cfg();
    never.tls = TlsPolicy::Never;
    never.auth = Some(ClientCredentials::new("user", "secret"));
    never.allow_plaintext_auth = true;
    v.push(Case {
        name: "AUTH LOGIN in plaintext when allowed, STARTTLS never",
        cfg: never,
        job: job(&["b@y.test"]),
        turns: vec![
            GREET,
            "250-mx.test\r\n250-STARTTLS\r\n250-PIPELINING\r\n250 AUTH LOGIN\r\n",
            "334 VXNlcm5hbWU6\r\n",
            "334 UGFzc3dvcmQ6\r\n",
            "235 2.7.0 ok\r\n",
            "250 ok\r\n250 ok\r\n354 go\r\n",
            "250 queued\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"hi\r\n"],
        wire: "EHLO c.test\r\nAUTH LOGIN\r\ndXNlcg==\r\nc2VjcmV0\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
        results: vec!["ok 250"],
        closes: true,
    });
    let mut plain_auth = cfg();
    plain_auth.auth = Some(ClientCredentials::new("user", "secret"));
    v.push(Case {
        name: "AUTH PLAIN after STARTTLS; 535 fails temporarily",
        cfg: plain_auth.clone(),
        job: job(&["b@y.test"]),
        turns: vec![
            GREET,
            "250-mx.test\r\n250 STARTTLS\r\n",
            "220 go\r\n",
            "250-mx.test\r\n250 AUTH PLAIN LOGIN\r\n",
            "535 5.7.8 bad\r\n",
            "221 bye\r\n",
        ],
        body: vec![],
        wire: "EHLO c.test\r\nSTARTTLS\r\nEHLO c.test\r\nAUTH PLAIN AHVzZXIAc2VjcmV0\r\nQUIT\r\n",
        results: vec!["temp AuthFailed(Reply { code: ReplyCode(535), enhanced: Some(EnhancedStatus { class: 5, subject: 7, detail: 8 }), lines: [\"bad\"] })"],
        closes: true,
    });
    v.push(Case {
        name: "AUTH refused without TLS",
        cfg: plain_auth,
        job: job(&["b@y.test"]),
        turns: vec![GREET, "250-mx.test\r\n250 AUTH PLAIN\r\n", "221 bye\r\n"],
        body: vec![],
        wire: "EHLO c.test\r\nQUIT\r\n",
        results: vec!["temp AuthNeedsTls"],
        closes: true,
    });
    let mut eight = job(&["b@y.test"]);
    eight.body = Some(Body::EightBitMime);
    v.push(Case {
        name: "8BITMIME needed, not offered: permanent, nothing sent",
        cfg: cfg(),
        job: eight.clone(),
        turns: vec![GREET, EHLO_PLAIN, "221 bye\r\n"],
        body: vec![],
        wire: "EHLO c.test\r\nQUIT\r\n",
        results: vec!["perm EightBitMimeNotOffered"],
        closes: true,
    });
    let mut binary = job(&["b@y.test"]);
    binary.body = Some(Body::BinaryMime);
    v.push(Case {
        name: "BINARYMIME needed, only CHUNKING offered (as Postfix): permanent, nothing sent",
        cfg: cfg(),
        job: binary,
        turns: vec![
            GREET,
            "250-mx.test\r\n250-8BITMIME\r\n250 CHUNKING\r\n",
            "221 bye\r\n",
        ],
        body: vec![],
        wire: "EHLO c.test\r\nQUIT\r\n",
        results: vec!["perm BinaryMimeNotOffered { binary_mime: false, chunking: true }"],
        closes: true,
    });
    let mut big = eight.clone();
    big.size = Some(1001);
    v.push(Case {
        name: "SIZE exceeded: permanent",
        cfg: cfg(),
        job: big,
        turns: vec![GREET, EHLO_PIPE, "221 bye\r\n"],
        body: vec![],
        wire: "EHLO c.test\r\nQUIT\r\n",
        results: vec!["perm MessageTooBig { size: 1001, limit: 1000 }"],
        closes: true,
    });
    let mut sized = eight;
    sized.size = Some(1000);
    v.push(Case {
        name: "SIZE and BODY parameters sent",
        cfg: cfg(),
        job: sized,
        turns: vec![
            GREET,
            EHLO_PIPE,
            "250 ok\r\n250 ok\r\n354 go\r\n",
            "250 queued\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"\xc3\xa9\r\n"],
        wire: "EHLO c.test\r\nMAIL FROM:<a@x.test> SIZE=1000 BODY=8BITMIME\r\nRCPT TO:<b@y.test>\r\nDATA\r\n\u{e9}\r\n.\r\nQUIT\r\n",
        results: vec!["ok 250"],
        closes: true,
    });
    let mut utf8 = job(&["b@y.test", "jos\u{e9}@y.test"]);
    utf8.recipients[0].notify = None;
    v.push(Case {
        name: "non-ASCII recipient without SMTPUTF8: permanent",
        cfg: cfg(),
        job: utf8,
        turns: vec![GREET, EHLO_PIPE, "221 bye\r\n"],
        body: vec![],
        wire: "EHLO c.test\r\nQUIT\r\n",
        results: vec!["perm SmtpUtf8NotOffered", "perm SmtpUtf8NotOffered"],
        closes: true,
    });
    let mut reqtls = job(&["b@y.test"]);
    reqtls.requiretls = true;
    v.push(Case {
        name: "REQUIRETLS without TLS: permanent",
        cfg: cfg(),
        job: reqtls,
        turns: vec![GREET, "250-mx.test\r\n250 REQUIRETLS\r\n", "221 bye\r\n"],
        body: vec![],
        wire: "EHLO c.test\r\nQUIT\r\n",
        results: vec!["perm RequireTlsNotOffered"],
        closes: true,
    });
    v.push(Case {
        name: "pipelined MAIL refused: every recipient gets its reply",
        cfg: cfg(),
        job: job(&["b@y.test", "c@y.test"]),
        turns: vec![
            GREET,
            EHLO_PIPE,
            "451 4.3.0 busy\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"never sent"],
        wire: "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\nQUIT\r\n",
        results: vec!["temp 451", "temp 451"],
        closes: true,
    });
    v.push(Case {
        name: "all RCPT refused but DATA got 354: lone dot (RFC 2920 3.1)",
        cfg: cfg(),
        job: job(&["b@y.test"]),
        turns: vec![
            GREET,
            EHLO_PIPE,
            "250 ok\r\n550 5.1.1 no\r\n354 go\r\n",
            "554 no valid recipients\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"never sent"],
        wire: "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n.\r\nQUIT\r\n",
        results: vec!["perm 550"],
        closes: true,
    });
    v.push(Case {
        name: "final reply 452: accepted recipients fail temporarily",
        cfg: cfg(),
        job: job(&["b@y.test", "c@y.test"]),
        turns: vec![
            GREET,
            EHLO_PIPE,
            "250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n",
            "452 4.3.1 disk full\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"x"],
        wire: "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
        results: vec!["temp 452", "perm 550"],
        closes: true,
    });
    let chunky = "250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n";
    v.push(Case {
        name: "BDAT pipelined, chunks as handed in, bare CR normalised",
        cfg: cfg(),
        job: job(&["b@y.test"]),
        turns: vec![
            GREET,
            chunky,
            "250 ok\r\n250 ok\r\n",
            "250 2.0.0 5 octets\r\n250 2.0.0 queued\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"a\r.b\r", b"\nc"],
        wire: "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 5\r\na\r\n.bBDAT 5 LAST\r\n\r\nc\r\nQUIT\r\n",
        results: vec!["ok 250"],
        closes: true,
    });
    v.push(Case {
        name: "BDAT lock-step without PIPELINING, first chunk refused",
        cfg: cfg(),
        job: job(&["b@y.test"]),
        turns: vec![
            GREET,
            "250-mx.test\r\n250 CHUNKING\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "552 5.3.4 too big\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"aaaa", b"bbbb"],
        wire: "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 4\r\naaaaQUIT\r\n",
        results: vec!["perm 552"],
        closes: true,
    });
    v.push(Case {
        name: "greeting 554: permanent, QUIT",
        cfg: cfg(),
        job: job(&["b@y.test"]),
        turns: vec!["554 5.7.1 go away\r\n", "221 bye\r\n"],
        body: vec![],
        wire: "QUIT\r\n",
        results: vec!["perm 554"],
        closes: true,
    });
    v.push(Case {
        name: "421 in the middle: temporary, close without QUIT",
        cfg: cfg(),
        job: job(&["b@y.test"]),
        turns: vec![GREET, EHLO_PIPE, "421 4.3.2 shutting down\r\n"],
        body: vec![],
        wire: "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
        results: vec!["temp 421"],
        closes: true,
    });
    let mut evil_name = nopipe.clone();
    evil_name.hostname = "c.test\r\nRSET x".into();
    v.push(Case {
        name: "bare-LF replies tolerated; hostname cannot inject a command",
        cfg: evil_name,
        job: job(&["b@y.test"]),
        turns: vec![
            "220 mx.test\n",
            "250-mx.test\n250 8BITMIME\n",
            "250 ok\n",
            "250 ok\n",
            "354 go\n",
            "250 queued\n",
            "221 bye\n",
        ],
        body: vec![b"x\r\n"],
        wire: "EHLO c.testRSETx\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
        results: vec!["ok 250"],
        closes: true,
    });
    v.push(Case {
        name: "250 where 220 was due: a temporary failure, never a delivery",
        cfg: cfg(),
        job: job(&["b@y.test"]),
        turns: vec!["250 hello?\r\n", "221 bye\r\n"],
        body: vec![],
        wire: "QUIT\r\n",
        results: vec!["temp 250"],
        closes: true,
    });
    v.push(Case {
        name: "250 to DATA: temporary, nothing delivered",
        cfg: nopipe.clone(),
        job: job(&["b@y.test"]),
        turns: vec![
            GREET,
            EHLO_PLAIN,
            "250 ok\r\n",
            "250 ok\r\n",
            "250 sure\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"x"],
        wire: "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nQUIT\r\n",
        results: vec!["temp 250"],
        closes: true,
    });
    v.push(Case {
        name: "421 while the body is being sent",
        cfg: nopipe.clone(),
        job: job(&["b@y.test"]),
        turns: vec![
            GREET,
            EHLO_PLAIN,
            "250 ok\r\n",
            "250 ok\r\n",
            "354 go\r\n421 4.4.2 timeout\r\n",
        ],
        body: vec![],
        wire: "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
        results: vec!["temp 421"],
        closes: true,
    });
    v.push(Case {
        name: "no recipients: no transaction",
        cfg: cfg(),
        job: job(&[]),
        turns: vec![GREET, EHLO_PIPE, "221 bye\r\n"],
        body: vec![],
        wire: "EHLO c.test\r\nQUIT\r\n",
        results: vec![],
        closes: true,
    });
    v.push(Case {
        name: "garbage instead of a reply: temporary",
        cfg: cfg(),
        job: job(&["b@y.test"]),
        turns: vec![GREET, "HTTP/1.1 400 Bad\r\n"],
        body: vec![],
        wire: "EHLO c.test\r\n",
        results: vec!["temp BadReply(BadCode)"],
        closes: true,
    });
    lmtp_cases(&mut v);
    v
}

fn lmtp() -> ClientConfig {
    ClientConfig::new_lmtp("c.test")
}

const LHLO_PIPE: &str =
    "250-lmtp.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n";
const LHLO_CHUNKING: &str =
    "250-lmtp.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n";

/// LMTP (RFC 2033): LHLO, and after the body one reply per accepted recipient, in order.
fn lmtp_cases(v: &mut Vec<Case>) {
    v.push(Case {
        name: "LMTP: one reply per accepted recipient after DATA",
        cfg: lmtp(),
        job: job(&["b@y.test", "nobody@y.test", "full@y.test", "c@y.test"]),
        turns: vec![
            "220 lmtp.test LMTP\r\n",
            LHLO_PIPE,
            "250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n250 ok\r\n354 go\r\n",
            "250 2.0.0 <b@y.test> saved\r\n552 5.2.2 <full@y.test> over quota\r\n",
            "451 4.3.0 <c@y.test> try later\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"a\r\n.b\r\n"],
        wire: "LHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n\
               RCPT TO:<nobody@y.test>\r\nRCPT TO:<full@y.test>\r\nRCPT TO:<c@y.test>\r\n\
               DATA\r\na\r\n..b\r\n.\r\nQUIT\r\n",
        results: vec!["ok 250", "perm 550", "perm 552", "temp 451"],
        closes: true,
    });
    let mut lockstep = lmtp();
    lockstep.pipelining = false;
    v.push(Case {
        name: "LMTP: lock-step",
        cfg: lockstep,
        job: job(&["b@y.test", "c@y.test"]),
        turns: vec![
            "220 lmtp.test LMTP\r\n",
            "250 lmtp.test\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "354 go\r\n",
            "250 2.0.0 b saved\r\n",
            "250 2.0.0 c saved\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"x"],
        wire: "LHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n\
               RCPT TO:<c@y.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
        results: vec!["ok 250", "ok 250"],
        closes: true,
    });
    v.push(Case {
        name: "LMTP: BDAT LAST gets one reply per accepted recipient",
        cfg: lmtp(),
        job: job(&["b@y.test", "c@y.test"]),
        turns: vec![
            "220 lmtp.test LMTP\r\n",
            LHLO_CHUNKING,
            "250 ok\r\n250 ok\r\n250 ok\r\n",
            "250 2.0.0 b saved\r\n552 5.2.2 c over quota\r\n",
            "221 bye\r\n",
        ],
        body: vec![b"hello\r\n"],
        wire: "LHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n\
               RCPT TO:<c@y.test>\r\nBDAT 7 LAST\r\nhello\r\nQUIT\r\n",
        results: vec!["ok 250", "perm 552"],
        closes: true,
    });
    v.push(Case {
        name: "LMTP: every RCPT refused, DATA refused (RFC 2033 4.2: 503)",
        cfg: lmtp(),
        job: job(&["b@y.test", "c@y.test"]),
        turns: vec![
            "220 lmtp.test LMTP\r\n",
            LHLO_PIPE,
            "250 ok\r\n550 5.1.1 no b\r\n450 4.2.1 c busy\r\n503 5.5.1 no valid recipients\r\n",
            "221 bye\r\n",
        ],
        body: vec![],
        wire: "LHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n\
               RCPT TO:<c@y.test>\r\nDATA\r\nQUIT\r\n",
        results: vec!["perm 550", "temp 450"],
        closes: true,
    });
    v.push(Case {
        name: "LMTP: LHLO refused, no HELO fallback",
        cfg: lmtp(),
        job: job(&["b@y.test"]),
        turns: vec![
            "220 lmtp.test LMTP\r\n",
            "500 5.5.1 unknown command\r\n",
            "221 bye\r\n",
        ],
        body: vec![],
        wire: "LHLO c.test\r\nQUIT\r\n",
        results: vec!["perm 500"],
        closes: true,
    });
}

fn check(case: &Case, r: &Run, how: &str) {
    let ctx = format!(
        "case {:?} ({how})\n turns {:?}\n body {:?}",
        case.name, case.turns, case.body
    );
    assert_eq!(r.wire, case.wire, "{ctx}");
    assert!(r.more.is_empty(), "{ctx}: several outcomes");
    let o = r
        .outcome
        .as_ref()
        .unwrap_or_else(|| panic!("{ctx}: no outcome"));
    assert_eq!(summary(o), case.results, "{ctx}");
    if case.closes {
        assert_eq!(
            r.log.last().map(String::as_str),
            Some("close"),
            "{ctx}: {:?}",
            r.log
        );
    }
}

#[test]
fn scripted_table_every_split() {
    for case in cases() {
        let whole = run(&case.cfg, &case.job, &case.turns, &case.body, &|_| vec![]);
        check(&case, &whole, "whole turns");
        let bytewise = run(&case.cfg, &case.job, &case.turns, &case.body, &|n| {
            (1..n).collect()
        });
        check(&case, &bytewise, "byte by byte");
        assert_eq!(
            bytewise, whole,
            "case {:?}: byte by byte differs",
            case.name
        );
        let longest = case.turns.iter().map(|t| t.len()).max().unwrap_or(0);
        for cut in 1..longest {
            let split = run(&case.cfg, &case.job, &case.turns, &case.body, &|_| {
                vec![cut]
            });
            assert_eq!(split, whole, "case {:?}: split at {cut} differs", case.name);
        }
    }
}

/// Several jobs on one connection: each further transaction starts with RSET (grouped when
/// pipelining); a job the server cannot take fails alone; a lost connection fails the rest.
#[test]
fn several_jobs_on_one_connection() {
    let mut eight = job(&["d@y.test"]);
    eight.body = Some(Body::EightBitMime);
    /// (pipelining, turns, expected wire, expected results per job)
    type JobsCase<'a> = (bool, Vec<&'a str>, &'a str, Vec<Vec<&'a str>>);
    let cases: Vec<JobsCase> = vec![
        (
            true,
            vec![
                GREET,
                "250-mx.test\r\n250 PIPELINING\r\n",
                "250 ok\r\n250 ok\r\n354 go\r\n",
                "250 queued 1\r\n",
                "250 reset\r\n250 ok\r\n550 no\r\n354 go\r\n",
                "554 no valid recipients\r\n",
                "221 bye\r\n",
            ],
            "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\none\r\n.\r\n\
             RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n.\r\nQUIT\r\n",
            vec![
                vec!["ok 250"],
                vec!["perm EightBitMimeNotOffered"],
                vec!["perm 550"],
            ],
        ),
        (
            false,
            vec![
                GREET,
                EHLO_PLAIN,
                "250 ok\r\n",
                "250 ok\r\n",
                "354 go\r\n",
                "250 queued 1\r\n",
                "250 reset\r\n",
                "250 ok\r\n",
                "451 later\r\n",
                "221 bye\r\n",
            ],
            "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\none\r\n.\r\n\
             RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nQUIT\r\n",
            vec![
                vec!["ok 250"],
                vec!["perm EightBitMimeNotOffered"],
                vec!["temp 451"],
            ],
        ),
        (
            false,
            vec![GREET, EHLO_PLAIN, "250 ok\r\n"],
            "EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n",
            vec![
                vec!["temp ConnectionClosed(Rcpt)"],
                vec!["temp ConnectionClosed(Rcpt)"],
                vec!["temp ConnectionClosed(Rcpt)"],
            ],
        ),
    ];
    for (pipelining, turns, wire, want) in cases {
        let mut c = cfg();
        c.pipelining = pipelining;
        let mut d = Driver::new(c, job(&["b@y.test"]), &[b"one"], origin());
        d.s.push_job(eight.clone()).unwrap();
        d.s.push_job(job(&["c@y.test"])).unwrap();
        for t in &turns {
            d.input(t.as_bytes());
            // The third job's (empty) body, once asked for.
            if d.s.job_index() == 2 && d.s.wants_body() {
                d.s.handle_body(d.now, b"", true).unwrap();
                d.drain();
            }
        }
        d.s.handle_eof(d.now);
        d.drain();
        let ctx = format!("pipelining={pipelining} turns {turns:?}");
        assert_eq!(d.run.wire, wire, "{ctx}");
        let all: Vec<Outcome> = d.run.outcome.iter().chain(&d.run.more).cloned().collect();
        let got: Vec<Vec<String>> = all.iter().map(summary).collect();
        assert_eq!(got, want, "{ctx}");
        let jobs: Vec<usize> = all.iter().map(|o| o.job).collect();
        assert_eq!(jobs, vec![0, 1, 2], "{ctx}");
        assert!(
            d.s.push_job(job(&["e@y.test"])).is_err(),
            "{ctx}: push after close"
        );
    }
}

/// RFC 3207 4.2 / CVE-2011-0411 mirrored: replies the server sent with its 220 to STARTTLS,
/// in the same read, are discarded, never taken as answers to commands sent under TLS.
#[test]
fn plaintext_after_starttls_220_is_discarded() {
    let mut c = cfg();
    c.pipelining = false;
    let mut d = Driver::new(c, job(&["b@y.test"]), &[b"hi"], origin());
    for t in [
        GREET,
        "250-mx.test\r\n250 STARTTLS\r\n",
        "220 go ahead\r\n250 injected\r\n250 injected\r\n",
    ] {
        d.input(t.as_bytes());
    }
    assert_eq!(d.run.wire, "EHLO c.test\r\nSTARTTLS\r\nEHLO c.test\r\n");
    assert!(d.s.tls().is_some());
    assert_eq!(d.s.capabilities(), None, "plaintext capabilities forgotten");
    d.input(b"250 mx.test\r\n");
    assert!(
        d.run.wire.ends_with("MAIL FROM:<a@x.test>\r\n"),
        "{:?}",
        d.run.wire
    );
}

#[test]
fn eof_mid_transaction_is_temporary() {
    let mut d = Driver::new(cfg(), job(&["b@y.test"]), &[b"x"], origin());
    d.input(GREET.as_bytes());
    d.input(EHLO_PIPE.as_bytes());
    d.input(b"250 ok\r\n250 ok\r\n354 go\r\n");
    d.s.handle_eof(d.now);
    d.drain();
    let o = d.run.outcome.unwrap();
    assert_eq!(
        o.recipients[0].status,
        RecipientStatus::TemporaryFailure(FailureReason::Local(ClientError::ConnectionClosed(
            Stage::DataEnd
        )))
    );
    assert_eq!(d.run.log.last().map(String::as_str), Some("close"));
}

/// LMTP: the connection lost between the per-recipient replies: the recipients answered keep
/// their result, the others fail temporarily.
#[test]
fn lmtp_eof_between_per_recipient_replies() {
    let turns: [&[u8]; 4] = [
        b"220 lmtp.test LMTP\r\n",
        LHLO_PIPE.as_bytes(),
        b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        b"550 5.2.1 b is disabled\r\n",
    ];
    let mut d = Driver::new(lmtp(), job(&["b@y.test", "c@y.test"]), &[b"x"], origin());
    for t in turns {
        d.input(t);
    }
    assert!(d.run.outcome.is_none(), "c's reply is still awaited");
    d.s.handle_eof(d.now);
    d.drain();
    let o = d.run.outcome.as_ref().unwrap();
    assert_eq!(
        summary(o),
        vec!["perm 550", "temp ConnectionClosed(DataEnd)"]
    );
    assert_eq!(d.run.log.last().map(String::as_str), Some("close"));
}

#[test]
fn overlong_reply_fails() {
    let mut c = cfg();
    c.max_reply_len = 100;
    let mut d = Driver::new(c, job(&["b@y.test"]), &[], origin());
    d.input(&[b'2'; 50]);
    assert!(d.run.outcome.is_none());
    d.input(&[b'x'; 51]);
    assert_eq!(
        summary(d.run.outcome.as_ref().unwrap()),
        vec!["temp ReplyTooLong"]
    );
    // Many short lines are fine while they stay under the limit.
    let mut d = Driver::new(cfg(), job(&["b@y.test"]), &[], origin());
    d.input(GREET.as_bytes());
    for _ in 0..500 {
        d.input(b"250-X-LONG-EHLO-LINE\r\n");
    }
    d.input(b"250 SIZE 10\r\n");
    assert_eq!(
        d.s.capabilities().and_then(|c| c.size),
        Some(proto_core::client::SizeLimit::Max(10))
    );
}

#[test]
fn api_misuse_is_a_usage_error() {
    let mut d = Driver::new(cfg(), job(&["b@y.test"]), &[], origin());
    assert!(d.s.handle_body(d.now, b"x", true).is_err());
    assert!(
        d.s.handle_tls_established(d.now, TlsInfo::default())
            .is_err()
    );
    assert!(d.s.handle_tls_failed(d.now).is_err());
}

#[test]
fn timeouts_per_rfc5321_4_5_3_2() {
    // (name, turns before waiting, expected wait, stage)
    let cases: Vec<(&str, Vec<&str>, u64, Stage)> = vec![
        ("greeting", vec![], 300, Stage::Greeting),
        ("ehlo", vec![GREET], 300, Stage::Hello),
        ("mail", vec![GREET, EHLO_PIPE], 300, Stage::Mail),
        (
            "rcpt",
            vec![GREET, EHLO_PIPE, "250 ok\r\n"],
            300,
            Stage::Rcpt,
        ),
        (
            "data init",
            vec![GREET, EHLO_PIPE, "250 ok\r\n250 ok\r\n"],
            120,
            Stage::DataInit,
        ),
        (
            "data termination",
            vec![GREET, EHLO_PIPE, "250 ok\r\n250 ok\r\n354 go\r\n"],
            600,
            Stage::DataEnd,
        ),
    ];
    for (name, turns, secs, stage) in cases {
        let start = origin();
        let mut d = Driver::new(cfg(), job(&["b@y.test"]), &[b"body"], start);
        for (i, t) in turns.iter().enumerate() {
            // Each turn arrives a minute later: the deadline follows the current command.
            d.now = start + Duration::from_secs(60 * i as u64);
            d.input(t.as_bytes());
        }
        let deadline =
            d.s.poll_timeout()
                .unwrap_or_else(|| panic!("{name}: no timeout"));
        assert_eq!(deadline, d.now + Duration::from_secs(secs), "{name}");
        // Early and partial input do not move it.
        d.s.handle_timeout(deadline - Duration::from_secs(1));
        d.s.handle_input(d.now + Duration::from_secs(10), b"25");
        d.drain();
        assert_eq!(d.s.poll_timeout(), Some(deadline), "{name}: moved");
        assert!(d.run.outcome.is_none(), "{name}: early timeout fired");
        d.now = deadline;
        d.s.handle_timeout(deadline);
        d.drain();
        let o = d
            .run
            .outcome
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no outcome"));
        assert_eq!(
            o.recipients[0].status,
            RecipientStatus::TemporaryFailure(FailureReason::Local(ClientError::Timeout(stage))),
            "{name}"
        );
        assert_eq!(
            d.run.log.last().map(String::as_str),
            Some("close"),
            "{name}"
        );
        assert_eq!(d.s.poll_timeout(), None, "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Any split of the server's reply stream (within each turn) gives the same actions.
    #[test]
    fn any_split_gives_the_same_actions(
        idx in 0usize..64,
        cuts in proptest::collection::vec(0usize..200, 0..10),
    ) {
        let cases = cases();
        let case = &cases[idx % cases.len()];
        let whole = run(&case.cfg, &case.job, &case.turns, &case.body, &|_| vec![]);
        let mut cuts = cuts;
        cuts.sort_unstable();
        let split = run(&case.cfg, &case.job, &case.turns, &case.body, &|_| cuts.clone());
        prop_assert_eq!(split, whole, "case {:?} cuts {:?}", case.name, cuts);
    }

    /// Whatever the server sends, the client never panics, and after EOF it has reported
    /// exactly one outcome and closed. Input is drawn mostly from the reply alphabet to get deep.
    #[test]
    fn hostile_server_never_panics(
        reads in proptest::collection::vec(
            proptest::collection::vec(prop_oneof![
                Just(b"220 ok\r\n".to_vec()),
                Just(b"250-PIPELINING\r\n250-CHUNKING\r\n250 STARTTLS\r\n".to_vec()),
                Just(b"250 ok\r\n".to_vec()),
                Just(b"354 go\r\n".to_vec()),
                Just(b"334 VXNlcm5hbWU6\r\n".to_vec()),
                Just(b"421 bye\r\n".to_vec()),
                Just(b"550 no\r\n".to_vec()),
                Just(b"\n".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..8),
            ], 0..6).prop_map(|v| v.concat()),
            0..12,
        ),
        tls in prop_oneof![Just(TlsPolicy::Never), Just(TlsPolicy::Opportunistic), Just(TlsPolicy::Required)],
        pipelining: bool,
        lmtp: bool,
    ) {
        let mut c = cfg();
        c.tls = tls;
        c.pipelining = pipelining;
        c.lmtp = lmtp;
        c.auth = Some(ClientCredentials::new("u", "p"));
        c.allow_plaintext_auth = true;
        let mut d = Driver::new(c, job(&["b@y.test", "c@y.test"]), &[b"a\r\n", b".b"], origin());
        for r in &reads {
            d.input(r);
        }
        d.s.handle_eof(d.now);
        d.drain();
        prop_assert!(d.run.outcome.is_some(), "{:?}", d.run.log);
        prop_assert_eq!(d.run.log.iter().filter(|l| *l == "close").count(), 1, "{:?}", d.run.log);
        prop_assert!(d.s.is_closed());
    }

    /// The body encoder never emits a bare CR or LF and the dot-stuffed body decodes back to
    /// the normalised input, whatever the chunking.
    #[test]
    fn body_never_carries_bare_line_endings(
        body in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')], 0..60),
        cut in 0usize..60,
    ) {
        let cut = cut.min(body.len());
        let mut d = Driver::new(cfg(), job(&["b@y.test"]), &[&body[..cut], &body[cut..]], origin());
        d.input(GREET.as_bytes());
        d.input(EHLO_PIPE.as_bytes());
        d.input(b"250 ok\r\n250 ok\r\n354 go\r\n");
        let wire = d.run.wire.as_bytes();
        let start = wire.windows(6).position(|w| w == b"DATA\r\n").unwrap() + 6;
        let data = &wire[start..];
        prop_assert!(data.ends_with(b"\r\n.\r\n") || data == b".\r\n", "{:?}", data);
        for (i, &b) in data.iter().enumerate() {
            if b == b'\r' { prop_assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR in {:?}", data); }
            if b == b'\n' { prop_assert!(i > 0 && data[i - 1] == b'\r', "bare LF in {:?}", data); }
        }
        // Exactly one terminator, at the end.
        let terminators = data.windows(5).filter(|w| w == b"\r\n.\r\n").count()
            + usize::from(data.starts_with(b".\r\n"));
        prop_assert_eq!(terminators, 1, "{:?}", data);
    }
}

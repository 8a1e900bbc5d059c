//! The client session talking to the server session in memory, on a virtual clock: the bytes
//! of one are fed to the other (in pieces of a chosen size), TLS is a handshake both sides are
//! told about. Messages must arrive byte-exact (after the client's line-ending normalisation)
//! and the client's per-recipient results must match the server application's verdicts.

#![allow(clippy::unwrap_used)]

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::{Harness, Out};
use proptest::prelude::*;
use proto_core::{
    Body, ForwardPath, Notify, OriginalRecipient, Ret, ReversePath, TlsInfo, client::ClientAction,
    client::ClientConfig, client::ClientCredentials, client::ClientError, client::ClientEvent,
    client::ClientSession, client::FailureReason, client::MailJob, client::Outcome,
    client::RecipientStatus, client::Stage, client::TlsPolicy, server::Config,
};

/// A client and a server connected in memory.
struct Pair {
    client: ClientSession,
    server: Harness,
    /// Server outputs already passed on.
    seen: usize,
    /// Bytes per delivery in each direction (`usize::MAX`: whole writes).
    piece: usize,
    /// Body chunks per job (index = `job_index()`).
    bodies: Vec<Vec<Vec<u8>>>,
    outcome: Option<Outcome>,
    /// Outcomes of further jobs.
    more: Vec<Outcome>,
    client_tls: bool,
    server_tls: bool,
    client_closed: bool,
    server_closed: bool,
    /// The client's wire text, for failure messages (bodies left out).
    commands: Vec<String>,
}

impl Pair {
    fn new(
        server: Config,
        client: ClientConfig,
        job: MailJob,
        body: Vec<Vec<u8>>,
        piece: usize,
    ) -> Pair {
        let server = Harness::new(server);
        let client = ClientSession::new(Arc::new(client), job, server.now);
        Pair {
            client,
            server,
            seen: 0,
            piece: piece.max(1),
            bodies: vec![body],
            outcome: None,
            more: Vec::new(),
            client_tls: false,
            server_tls: false,
            client_closed: false,
            server_closed: false,
            commands: Vec::new(),
        }
    }

    /// Moves bytes both ways until neither side has anything to do.
    fn run(&mut self) {
        loop {
            let mut progress = false;
            let mut to_server = Vec::new();
            while let Some(a) = self.client.poll_action() {
                match a {
                    ClientAction::Send(b) => {
                        if b.len() < 512 {
                            self.commands.push(String::from_utf8_lossy(&b).into_owned());
                        }
                        to_server.extend_from_slice(&b);
                    }
                    ClientAction::StartTls => self.client_tls = true,
                    ClientAction::Event(ClientEvent::Finished(o)) => {
                        if self.outcome.is_none() {
                            self.outcome = Some(o);
                        } else {
                            self.more.push(o);
                        }
                    }
                    ClientAction::Event(_) => {}
                    ClientAction::Close => self.client_closed = true,
                    _ => panic!("unknown action"),
                }
            }
            if !to_server.is_empty() && !self.server_closed {
                for piece in to_server.chunks(self.piece) {
                    self.server.input(piece);
                }
                progress = true;
            }
            let mut to_client = Vec::new();
            for o in &self.server.out[self.seen..] {
                match o {
                    Out::Reply(r) => to_client.extend_from_slice(r.as_bytes()),
                    Out::StartTls => self.server_tls = true,
                    Out::Close => self.server_closed = true,
                    Out::Event(_) => {}
                }
            }
            self.seen = self.server.out.len();
            if !to_client.is_empty() && !self.client_closed {
                for piece in to_client.chunks(self.piece) {
                    self.client.handle_input(self.server.now, piece);
                }
                progress = true;
            }
            if self.client_tls && self.server_tls {
                self.client_tls = false;
                self.server_tls = false;
                self.server.tls();
                self.client
                    .handle_tls_established(
                        self.server.now,
                        TlsInfo::new("TLSv1.3", "TLS_AES_128_GCM_SHA256", None),
                    )
                    .unwrap();
                progress = true;
            }
            let body = self.bodies.get_mut(self.client.job_index());
            if let Some(body) = body.filter(|b| !b.is_empty() && self.client.wants_body()) {
                let chunk = body.remove(0);
                let last = body.is_empty();
                self.client
                    .handle_body(self.server.now, &chunk, last)
                    .unwrap();
                progress = true;
            }
            if self.server_closed && !self.client_closed && to_client.is_empty() {
                self.client.handle_eof(self.server.now);
                progress = true;
            }
            if self.client_closed && !self.server_closed {
                self.server.session.handle_eof(self.server.now);
                self.server.drain();
                progress = true;
            }
            if !progress {
                return;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.server.now += d;
        self.client.handle_timeout(self.server.now);
        self.server.session.handle_timeout(self.server.now);
        self.server.drain();
        self.run();
    }
}

/// The body as the client must deliver it: bare CR and LF become CRLF, and a non-empty body
/// ends with CRLF. Written independently of the client's encoder.
fn normalised(body: &[u8]) -> Vec<u8> {
    let s = body
        .iter()
        .map(|&b| b as char)
        .collect::<String>()
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace('\n', "\r\n");
    let mut v: Vec<u8> = s.chars().map(|c| c as u8).collect();
    if !v.is_empty() && !v.ends_with(b"\r\n") {
        v.extend_from_slice(b"\r\n");
    }
    v
}

fn job(rcpts: &[&str]) -> MailJob {
    MailJob::new(
        ReversePath::parse("a@x.test").unwrap(),
        rcpts.iter().map(|r| ForwardPath::parse(r).unwrap()),
    )
}

fn server_config() -> Config {
    harness::config()
}

/// Expected result per recipient: the test application refuses `nobody` with 550.
fn expected(job: &MailJob) -> Vec<String> {
    job.recipients
        .iter()
        .map(|r| match &r.to {
            ForwardPath::Mailbox(m) if m.local_part().as_str() == "nobody" => "perm 550".into(),
            _ => "ok 250".into(),
        })
        .collect()
}

fn summary(o: &Outcome) -> Vec<String> {
    o.recipients
        .iter()
        .map(|r| match &r.status {
            RecipientStatus::Accepted(reply) => format!("ok {}", reply.code()),
            RecipientStatus::TemporaryFailure(FailureReason::Reply(r)) => {
                format!("temp {}", r.code())
            }
            RecipientStatus::PermanentFailure(FailureReason::Reply(r)) => {
                format!("perm {}", r.code())
            }
            other => format!("{other:?}"),
        })
        .collect()
}

fn ten_megabytes() -> Vec<u8> {
    let mut body = Vec::with_capacity(10 * 1024 * 1024 + 100);
    let mut i = 0u64;
    while body.len() < 10 * 1024 * 1024 {
        match i % 5 {
            0 => body.extend_from_slice(b".a line that starts with a dot\r\n"),
            1 => body.extend_from_slice(b"a line with a bare LF\n"),
            2 => body.extend_from_slice(format!("line {i} {}\r\n", "x".repeat(60)).as_bytes()),
            3 => body.extend_from_slice(b"..\r\n"),
            _ => body.extend_from_slice(b".\r\n"),
        }
        i += 1;
    }
    body
}

/// (name, body, chunk size the driver hands in)
fn bodies() -> Vec<(&'static str, Vec<u8>, usize)> {
    vec![
        ("empty", Vec::new(), 1),
        ("dots", b".\r\n..\r\n.x\r\nend\r\n.".to_vec(), 3),
        (
            "terminator inside",
            b"a\r\n.\r\nMAIL FROM:<evil@x>\r\n".to_vec(),
            1,
        ),
        ("bare LF and CR", b"a\nb\rc\r\r\n\n.\n".to_vec(), 2),
        ("no final CRLF", b"Subject: x\r\n\r\nbody".to_vec(), 7),
        (
            "8-bit",
            "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n"
                .as_bytes()
                .to_vec(),
            5,
        ),
    ]
}

fn deliver(
    name: &str,
    server: Config,
    client: ClientConfig,
    job: MailJob,
    body: &[u8],
    chunk: usize,
    piece: usize,
) -> Pair {
    let chunks: Vec<Vec<u8>> = if body.is_empty() {
        vec![Vec::new()]
    } else {
        body.chunks(chunk).map(<[u8]>::to_vec).collect()
    };
    let mut p = Pair::new(server, client, job.clone(), chunks, piece);
    p.run();
    let ctx = format!(
        "{name}: body {:?}\n client said {:#?}\n server said {:#?}",
        String::from_utf8_lossy(&body[..body.len().min(200)]),
        p.commands,
        p.server.replies()
    );
    let o = p
        .outcome
        .clone()
        .unwrap_or_else(|| panic!("{ctx}\nno outcome"));
    assert_eq!(summary(&o), expected(&job), "{ctx}");
    assert!(p.client_closed && p.server_closed, "{ctx}\nnot closed");
    if expected(&job).iter().any(|e| e.starts_with("ok")) {
        assert_eq!(p.server.messages.len(), 1, "{ctx}");
        let got = &p.server.messages[0];
        let want = normalised(body);
        assert!(
            got == &want,
            "{ctx}\n got {} octets, want {} octets; first difference at {:?}",
            got.len(),
            want.len(),
            got.iter().zip(&want).position(|(a, b)| a != b)
        );
        let reply = o.data_reply.as_ref().unwrap();
        assert!(
            reply.lines()[0].starts_with("queued as"),
            "{ctx}: {reply:?}"
        );
    }
    p
}

#[test]
fn messages_arrive_byte_exact_with_every_mode() {
    let rcpts = ["b@y.test", "nobody@y.test", "c@y.test"];
    for (body_name, body, chunk) in bodies() {
        for pipelining in [true, false] {
            for chunking in [true, false] {
                for server_ext in [true, false] {
                    let mut client = ClientConfig::new("c.test");
                    client.pipelining = pipelining;
                    client.chunking = chunking;
                    let mut server = server_config();
                    server.extensions.pipelining = server_ext;
                    server.extensions.chunking = server_ext;
                    let mut j = job(&rcpts);
                    if body_name == "8-bit" {
                        j.body = Some(Body::EightBitMime);
                    }
                    let name = format!(
                        "{body_name}, client pipelining={pipelining} chunking={chunking}, server offers them={server_ext}"
                    );
                    let p = deliver(&name, server, client, j, &body, chunk, usize::MAX);
                    // The client used what was both offered and allowed.
                    let sent = p.commands.concat();
                    assert_eq!(
                        sent.contains("BDAT"),
                        chunking && server_ext,
                        "{name}: {sent}"
                    );
                    assert!(p.client.tls().is_some(), "{name}: STARTTLS not used");
                    // RFC 2920: commands are grouped only when PIPELINING was offered.
                    let grouped = p
                        .commands
                        .iter()
                        .any(|c| c.contains("MAIL FROM") && c.contains("RCPT TO"));
                    assert_eq!(
                        grouped,
                        pipelining && server_ext,
                        "{name}: {:?}",
                        p.commands
                    );
                }
            }
        }
    }
}

#[test]
fn ten_megabyte_body_streamed_in_chunks() {
    let body = ten_megabytes();
    for chunking in [false, true] {
        let mut client = ClientConfig::new("c.test");
        client.chunking = chunking;
        let mut j = job(&["b@y.test", "c@y.test"]);
        j.size = Some(body.len() as u64 + body.len() as u64 / 10);
        deliver(
            &format!("10 MB, chunking={chunking}"),
            server_config(),
            client,
            j,
            &body,
            64 * 1024,
            usize::MAX,
        );
    }
}

#[test]
fn envelope_parameters_are_accepted_by_our_server() {
    let mut j = job(&["b@y.test", "jos\u{e9}@y.test"]);
    j.recipients[0].notify = Some(Notify::On {
        success: true,
        failure: true,
        delay: false,
    });
    j.recipients[0].orcpt = Some(OriginalRecipient {
        addr_type: "rfc822".into(),
        address: "b+orig=x@y.test".into(),
    });
    j.recipients[1].notify = Some(Notify::Never);
    j.ret = Some(Ret::Headers);
    j.envid = Some("id with spaces+plus=eq".into());
    j.body = Some(Body::EightBitMime);
    j.size = Some(100);
    let p = deliver(
        "DSN, SMTPUTF8, SIZE, BODY",
        server_config(),
        ClientConfig::new("c.test"),
        j,
        b"hello\r\n",
        100,
        usize::MAX,
    );
    let sent = p.commands.concat();
    assert!(
        sent.contains("MAIL FROM:<a@x.test> SIZE=100 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+20with+20spaces+2Bplus+3Deq"),
        "{sent}"
    );
    assert!(
        sent.contains("RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Borig+3Dx@y.test"),
        "{sent}"
    );
}

#[test]
fn binarymime_goes_unchanged_with_bdat() {
    let mut j = job(&["b@y.test"]);
    j.body = Some(Body::BinaryMime);
    let body = b"\x00\x01\r\x0a\n.\r\n\xff".to_vec();
    let mut p = Pair::new(
        server_config(),
        ClientConfig::new("c.test"),
        j,
        vec![body[..3].to_vec(), body[3..].to_vec()],
        usize::MAX,
    );
    p.run();
    assert!(p.outcome.unwrap().all_delivered(), "{:?}", p.commands);
    assert_eq!(p.server.messages, vec![body]);
}

#[test]
fn auth_against_our_server() {
    // (name, password, expected result)
    let cases = [
        ("right password", "secret", "ok 250"),
        ("wrong password", "nope", "auth failed"),
    ];
    for (name, password, want) in cases {
        let mut server = server_config();
        server.require_auth = true;
        let mut client = ClientConfig::new("c.test");
        client.tls = TlsPolicy::Required;
        client.auth = Some(ClientCredentials::new("user", password));
        let mut p = Pair::new(server, client, job(&["b@y.test"]), vec![b"x".to_vec()], 5);
        p.run();
        let o = p
            .outcome
            .clone()
            .unwrap_or_else(|| panic!("{name}: no outcome"));
        let got = match &o.recipients[0].status {
            RecipientStatus::Accepted(r) => format!("ok {}", r.code()),
            RecipientStatus::TemporaryFailure(FailureReason::Local(ClientError::AuthFailed(_))) => {
                "auth failed".into()
            }
            other => format!("{other:?}"),
        };
        assert_eq!(got, want, "{name}: {:?}", p.commands);
        assert!(p.client.authenticated() == (want == "ok 250"), "{name}");
        assert!(p.server_closed && p.client_closed, "{name}");
    }
}

#[test]
fn tls_required_but_server_has_no_certificate() {
    let mut server = server_config();
    server.extensions.starttls = false;
    let mut client = ClientConfig::new("c.test");
    client.tls = TlsPolicy::Required;
    let mut p = Pair::new(server, client, job(&["b@y.test"]), vec![], usize::MAX);
    p.run();
    assert_eq!(
        p.outcome.unwrap().recipients[0].status,
        RecipientStatus::TemporaryFailure(FailureReason::Local(ClientError::StartTlsNotOffered))
    );
    assert!(p.server.messages.is_empty());
    assert!(p.server_closed && p.client_closed);
}

#[test]
fn client_times_out_while_the_server_sits_on_the_message() {
    let mut p = Pair::new(
        server_config(),
        ClientConfig::new("c.test"),
        job(&["b@y.test"]),
        vec![b"x\r\n".to_vec()],
        usize::MAX,
    );
    p.server.app.auto = false;
    p.run();
    // The server waits for MAIL's verdict; the client for MAIL's reply (5 minutes).
    while !p.server.pending.is_empty() {
        p.server.resolve_next(proto_core::server::Verdict::Accept);
        p.run();
        if p.server
            .pending
            .first()
            .is_some_and(|(_, e)| e == "message-end")
        {
            break;
        }
    }
    assert!(p.outcome.is_none(), "{:?}", p.commands);
    let deadline = p.client.poll_timeout().unwrap();
    assert_eq!(
        deadline,
        p.server.now + Duration::from_secs(600),
        "DATA termination: 10 min"
    );
    p.advance(Duration::from_secs(599));
    assert!(p.outcome.is_none());
    p.advance(Duration::from_secs(1));
    assert_eq!(
        p.outcome.unwrap().recipients[0].status,
        RecipientStatus::TemporaryFailure(FailureReason::Local(ClientError::Timeout(
            Stage::DataEnd
        )))
    );
    assert!(p.client_closed && p.server_closed);
}

#[test]
fn several_messages_on_one_connection() {
    for (pipelining, chunking) in [(true, true), (true, false), (false, true), (false, false)] {
        let mut client = ClientConfig::new("c.test");
        client.pipelining = pipelining;
        client.chunking = chunking;
        let mut p = Pair::new(
            server_config(),
            client,
            job(&["b@y.test", "nobody@y.test"]),
            vec![b"first\r\n".to_vec()],
            usize::MAX,
        );
        p.client.push_job(job(&["nobody@y.test"])).unwrap();
        p.client.push_job(job(&["c@y.test"])).unwrap();
        p.bodies.push(vec![b"never sent".to_vec()]);
        p.bodies.push(vec![b"third\n".to_vec(), b".".to_vec()]);
        p.run();
        let name = format!("pipelining={pipelining} chunking={chunking}");
        let all: Vec<Vec<String>> = p.outcome.iter().chain(&p.more).map(summary).collect();
        assert_eq!(
            all,
            vec![vec!["ok 250", "perm 550"], vec!["perm 550"], vec!["ok 250"]],
            "{name}: {:?}",
            p.commands
        );
        assert_eq!(
            p.server.messages,
            vec![b"first\r\n".to_vec(), b"third\r\n.\r\n".to_vec()],
            "{name}"
        );
        assert!(p.client_closed && p.server_closed, "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Whatever pieces the bytes travel in, both ways, the same message arrives with the
    /// same results.
    #[test]
    fn any_piece_size_gives_the_same_delivery(
        idx in 0usize..6,
        piece in 1usize..64,
        chunk in 1usize..16,
        pipelining: bool,
        chunking: bool,
    ) {
        let (name, body, _) = bodies().swap_remove(idx);
        let mut client = ClientConfig::new("c.test");
        client.pipelining = pipelining;
        client.chunking = chunking;
        let mut j = job(&["b@y.test", "nobody@y.test"]);
        j.body = Some(Body::EightBitMime);
        let p = deliver(name, server_config(), client, j, &body, chunk, piece);
        let whole = deliver(name, server_config(), {
            let mut c = ClientConfig::new("c.test");
            c.pipelining = pipelining;
            c.chunking = chunking;
            c
        }, {
            let mut j = job(&["b@y.test", "nobody@y.test"]);
            j.body = Some(Body::EightBitMime);
            j
        }, &body, usize::MAX, usize::MAX);
        prop_assert_eq!(&p.outcome.as_ref().map(summary), &whole.outcome.as_ref().map(summary));
        prop_assert_eq!(&p.server.messages, &whole.server.messages);
    }
}

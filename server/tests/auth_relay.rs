//! AUTH, the brute-force defence and the relay policy, against the real binary over loopback
//! with real clients (Python's smtplib, lettre). Users are created with `postern user add`.
//! Nothing here touches a non-loopback address or DNS.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lettre::message::Message;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{SmtpTransport, Transport};

const BINARY: &str = env!("CARGO_BIN_EXE_postern");

/// The brute-force settings of every test server: delays from the 2nd failure (200 ms), lockout
/// at the 4th, for 2 s.
const AUTH_CONFIG: &str = "[auth]\n\
     allow_plaintext_on_loopback = true\n\
     delay_after_failures = 2\n\
     failure_delay_ms = 200\n\
     lockout_after_failures = 4\n\
     lockout_seconds = 2\n\
     [senders]\n\
     \"alice@localhost\" = [\"granted.example\", \"team@localhost\"]\n\
     \"bob@localhost\" = [\"<>\"]\n";

mod common;

/// A running server in its own temporary directory; killed and reaped on drop (by `inner`,
/// which is dropped before the directory).
struct Server {
    inner: common::Server,
    dir: tempfile::TempDir,
    cert_pem: String,
}

impl Server {
    /// A server for `localhost` and `bücher.example` with users alice@localhost (password
    /// `alice-pw`), bob@localhost (`bob-password`), josé@bücher.example (`jose-password`) and the
    /// receive-only info@localhost; `extra` is appended to postern.toml.
    fn start(extra: &str) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::write(
            root.join("postern.toml"),
            format!(
                "hostname = \"localhost\"\n\
                 data_dir = \"data\"\n\
                 {extra}\
                 {dns}\
                 [listeners]\n\
                 smtp = [\"127.0.0.1:0\"]\n\
                 submission = [\"127.0.0.1:0\"]\n\
                 submissions = [\"127.0.0.1:0\"]\n",
                dns = common::OFFLINE_DNS
            ),
        )
        .expect("write config");
        let pair = common::cert(&["localhost"]);
        common::write_certbot(&root.join("certs/localhost"), &pair);
        let cert_pem = pair.0;
        fs::create_dir_all(root.join("domains/localhost")).expect("mkdir domain");
        fs::create_dir_all(root.join("domains/bücher.example")).expect("mkdir domain");
        for (addr, pw) in [
            ("alice@localhost", "alice-pw"),
            ("bob@localhost", "bob-password"),
            ("josé@bücher.example", "jose-password"),
        ] {
            user_cli(root, &["add", addr, "--password-stdin"], pw);
        }
        user_cli(root, &["add", "info@localhost", "--receive-only"], "");

        let inner = common::Server::start(root, 3);
        Server {
            inner,
            dir,
            cert_pem,
        }
    }

    fn port(&self, role: &str) -> String {
        self.inner.port(role).to_string()
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> String {
        self.inner.log()
    }

    fn wait_inbox(&self, domain: &str, user: &str, n: usize) -> Vec<String> {
        self.inner.wait_inbox(domain, user, n)
    }

    /// Every Maildir that exists: `domain/user`.
    fn mailboxes(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mail = self.root().join("data/mail");
        for d in fs::read_dir(&mail).into_iter().flatten().flatten() {
            for u in fs::read_dir(d.path()).into_iter().flatten().flatten() {
                found.push(format!(
                    "{}/{}",
                    d.file_name().to_string_lossy(),
                    u.file_name().to_string_lossy()
                ));
            }
        }
        found.sort();
        found
    }

    fn lettre(&self, mechanism: Mechanism, user: &str, password: &str) -> SmtpTransport {
        let tls = TlsParameters::builder("localhost".to_string())
            .certificate_store(CertificateStore::None)
            .add_root_certificate(Certificate::from_pem(self.cert_pem.as_bytes()).expect("cert"))
            .build_rustls()
            .expect("tls parameters");
        SmtpTransport::builder_dangerous("127.0.0.1")
            .port(self.inner.port("submissions"))
            .tls(Tls::Wrapper(tls))
            .hello_name(ClientId::Domain("client.test".to_string()))
            .credentials(Credentials::new(user.to_string(), password.to_string()))
            .authentication(vec![mechanism])
            .timeout(Some(Duration::from_secs(20)))
            .build()
    }
}

/// `postern -C root user args...` with `stdin`; must succeed.
fn user_cli(root: &Path, args: &[&str], stdin: &str) {
    let mut child = Command::new(BINARY)
        .arg("-C")
        .arg(root)
        .arg("user")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(format!("{stdin}\n").as_bytes());
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "user {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A dialogue with smtplib: connects (`plain`, `starttls` or `ssl`), says EHLO, then sends each
/// line and prints `<code> <text>` per reply. In a line, `b64:<text>` is replaced by the base64
/// of `<text>` (with `\0` for NUL); a line `BODY:<message>` sends the message and the final
/// dot (after a 354). Stops after a 421 or a closed connection.
const DIALOGUE: &str = r#"
import base64, smtplib, ssl, sys
port, mode = int(sys.argv[1]), sys.argv[2]
ctx = ssl._create_unverified_context()
if mode == "ssl":
    s = smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", context=ctx, timeout=20)
else:
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20)
    if mode == "starttls":
        s.starttls(context=ctx)
s.ehlo()
s.command_encoding = "utf-8"
for line in sys.argv[3:]:
    words = []
    for w in line.split(" "):
        if w.startswith("b64:"):
            w = base64.b64encode(w[4:].replace("\\0", "\0").encode()).decode()
        words.append(w)
    try:
        if line.startswith("BODY:"):
            s.send(line[5:] + "\r\n.\r\n")
            code, text = s.getreply()
        else:
            code, text = s.docmd(" ".join(words))
    except smtplib.SMTPServerDisconnected:
        print("disconnected")
        break
    print(code, text.decode().replace("\n", " | "))
    if code == 421:
        break
"#;

/// Runs [`DIALOGUE`]; one line of output per command.
fn dialogue(port: &str, mode: &str, lines: &[&str]) -> Vec<String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(DIALOGUE)
        .arg(port)
        .arg(mode)
        .args(lines)
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// Asserts each reply starts with the expected text.
fn expect(replies: &[String], want: &[&str], context: &str) {
    assert_eq!(replies.len(), want.len(), "{context}: {replies:#?}");
    for (i, (got, want)) in replies.iter().zip(want).enumerate() {
        assert!(
            got.starts_with(want),
            "{context}, reply {i}: got {got:?}, want {want:?}\nall: {replies:#?}"
        );
    }
}

const PLAIN_OK: &str = "AUTH PLAIN b64:\\0alice@localhost\\0alice-pw";

#[test]
fn plain_and_login_good_and_bad_passwords() {
    // No delays or lockouts here: that is the next test.
    let server = Server::start(
        &AUTH_CONFIG
            .replace("delay_after_failures = 2", "delay_after_failures = 1000")
            .replace(
                "lockout_after_failures = 4",
                "lockout_after_failures = 1000",
            ),
    );
    let sub = server.port("submission");
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("PLAIN, initial response", &[PLAIN_OK], &["235 2.7.0"]),
        (
            "PLAIN, after a 334",
            &["AUTH PLAIN", "b64:\\0alice@localhost\\0alice-pw"],
            &["334", "235 2.7.0"],
        ),
        (
            "PLAIN, user in another case, authzid = the user",
            &["AUTH PLAIN b64:Alice@LOCALHOST\\0ALICE@localhost\\0alice-pw"],
            &["235 2.7.0"],
        ),
        (
            "LOGIN",
            &["AUTH LOGIN", "b64:bob@localhost", "b64:bob-password"],
            &["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 2.7.0"],
        ),
        (
            "LOGIN with the user as initial response, IDNA and NFC",
            &[
                "AUTH LOGIN b64:jose\u{301}@xn--bcher-kva.example",
                "b64:jose-password",
            ],
            &["334 UGFzc3dvcmQ6", "235 2.7.0"],
        ),
        (
            "PLAIN, wrong password",
            &["AUTH PLAIN b64:\\0alice@localhost\\0wrong"],
            &["535 5.7.8"],
        ),
        (
            "LOGIN, wrong password",
            &["AUTH LOGIN", "b64:alice@localhost", "b64:bob-password"],
            &["334", "334", "535 5.7.8"],
        ),
        (
            "unknown user: the same answer",
            &["AUTH PLAIN b64:\\0nobody@localhost\\0alice-pw"],
            &["535 5.7.8"],
        ),
        (
            "receive-only user",
            &["AUTH PLAIN b64:\\0info@localhost\\0anything"],
            &["535 5.7.8"],
        ),
        (
            "authzid of someone else",
            &["AUTH PLAIN b64:bob@localhost\\0alice@localhost\\0alice-pw"],
            &["535 5.7.8"],
        ),
        (
            "PLAIN cancelled",
            &["AUTH PLAIN", "*", PLAIN_OK],
            &["334", "501", "235"],
        ),
        (
            "LOGIN cancelled at the password",
            &["AUTH LOGIN", "b64:alice@localhost", "*"],
            &["334", "334", "501"],
        ),
        (
            "bad base64",
            &["AUTH PLAIN !!!notbase64", "AUTH LOGIN", "%%%"],
            &["501", "334", "501"],
        ),
        (
            "MAIL before AUTH, then after",
            &[
                "MAIL FROM:<alice@localhost>",
                PLAIN_OK,
                "MAIL FROM:<alice@localhost>",
            ],
            &["530 5.7.0", "235", "250"],
        ),
        ("a second AUTH", &[PLAIN_OK, PLAIN_OK], &["235", "503"]),
    ];
    for (name, lines, want) in cases {
        let replies = dialogue(&sub, "plain", lines);
        expect(&replies, want, name);
    }
    // Each auth line names the user (ours only: an unknown name is not written down) and
    // the session.
    let log = server.log();
    let auth_lines: Vec<&str> = log.lines().filter(|l| l.contains(" auth user=")).collect();
    let ok = auth_lines
        .iter()
        .find(|l| l.contains("user=alice@localhost") && l.contains("result=ok"))
        .unwrap_or_else(|| panic!("no auth line for alice:\n{log}"));
    assert!(
        ok.contains(" client=127.0.0.1 role=submission result=ok"),
        "{ok}"
    );
    let session = ok
        .split(" session=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("a session id");
    assert_eq!(session.len(), 16, "{ok}");
    assert!(
        auth_lines.iter().any(|l| l.contains("user=alice@localhost")
            && l.contains("result=failed reason=\"bad credentials\"")),
        "{log}"
    );
    assert!(
        auth_lines.iter().any(|l| l.contains("user=unknown")
            && l.contains("result=failed reason=\"bad credentials\"")),
        "{log}"
    );
    assert!(
        auth_lines
            .iter()
            .any(|l| l.contains("user=info@localhost") && l.contains("result=failed")),
        "receive-only users are ours: {log}"
    );
    for secret in [
        "alice-pw",
        "bob-password",
        "wrong",
        "anything",
        "YWxpY2",
        "nobody@",
    ] {
        assert!(
            !log.contains(secret),
            "AUTH data in the log ({secret}):\n{log}"
        );
    }
}

#[test]
fn auth_needs_tls_except_on_loopback_when_configured() {
    let server = Server::start("");
    let sub = server.port("submission");
    let plain = dialogue(&sub, "plain", &[PLAIN_OK]);
    expect(
        &plain,
        &["538 5.7.11"],
        "plaintext AUTH without the setting",
    );
    let tls = dialogue(&sub, "starttls", &[PLAIN_OK, "MAIL FROM:<alice@localhost>"]);
    expect(&tls, &["235 2.7.0", "250"], "after STARTTLS");
    let smtp = dialogue(&server.port("smtp"), "starttls", &[PLAIN_OK]);
    expect(
        &smtp,
        &["502"],
        "no AUTH on smtp unless [auth] smtp_listener",
    );
}

#[test]
fn brute_force_delays_then_locks_out_then_expires() {
    let server = Server::start(AUTH_CONFIG);
    let sub = server.port("submission");
    let bad = "AUTH PLAIN b64:\\0alice@localhost\\0guess";
    // Fresh connections, as a brute-forcer would (the session itself also cuts off a
    // client after too many errors).
    let mut timings = Vec::new();
    for i in 1..=4 {
        let t = Instant::now();
        let r = dialogue(&sub, "plain", &[bad]);
        timings.push(t.elapsed());
        expect(&r, &["535 5.7.8"], &format!("failure {i}"));
    }
    // Failures 2..4 were delayed by 200 ms each; the first was not.
    assert!(timings[1] >= Duration::from_millis(200), "{timings:?}");
    // Locked: even the right password is refused, for the user and for this IP.
    let r = dialogue(&sub, "plain", &[PLAIN_OK]);
    expect(&r, &["454 4.7.0"], "locked out");
    let r = dialogue(
        &sub,
        "plain",
        &["AUTH PLAIN b64:\\0bob@localhost\\0bob-password"],
    );
    expect(&r, &["454 4.7.0"], "the IP is locked out too");
    let log = server.log();
    assert!(log.contains("failures=4 lockout=start"), "{log}");
    assert!(log.contains("result=locked"), "{log}");
    // Two seconds after the last failure, the lockout is over.
    std::thread::sleep(Duration::from_millis(2100));
    let r = dialogue(&sub, "plain", &[PLAIN_OK]);
    expect(&r, &["235 2.7.0"], "after the cooling-off period");
}

#[test]
fn lettre_logs_in_with_plain_and_login_and_sends() {
    let server = Server::start(AUTH_CONFIG);
    let message = |from: &str, subject: &str| {
        Message::builder()
            .from(from.parse().expect("from"))
            .to("Bob <bob@localhost>".parse().expect("to"))
            .subject(subject)
            .body(String::from("Hello from lettre.\r\n"))
            .expect("message")
    };
    server
        .lettre(Mechanism::Plain, "alice@localhost", "alice-pw")
        .send(&message("Alice <alice@localhost>", "via plain"))
        .expect("PLAIN and send");
    server
        .lettre(Mechanism::Login, "alice@localhost", "alice-pw")
        .send(&message("Alice <alice+news@localhost>", "via login"))
        .expect("LOGIN and send");
    let inbox = server.wait_inbox("localhost", "bob", 2);
    assert_eq!(inbox.len(), 2, "{inbox:?}\n{}", server.log());
    assert!(inbox.iter().any(|m| m.contains("Subject: via plain")));
    assert!(inbox.iter().any(|m| m.contains("Subject: via login")));

    let err = server
        .lettre(Mechanism::Login, "alice@localhost", "wrong")
        .send(&message("Alice <alice@localhost>", "refused"))
        .expect_err("a wrong password");
    assert_eq!(
        err.status().map(|c| c.to_string()),
        Some("535".into()),
        "{err}"
    );
    // Envelope sender from the message's From: not hers.
    let err = server
        .lettre(Mechanism::Plain, "bob@localhost", "bob-password")
        .send(&message("Alice <alice@localhost>", "impersonation"))
        .expect_err("bob sending as alice");
    assert_eq!(
        err.status().map(|c| c.to_string()),
        Some("553".into()),
        "{err}"
    );
    assert_eq!(server.wait_inbox("localhost", "bob", 2).len(), 2);
}

#[test]
fn mail_from_must_be_owned() {
    let server = Server::start(AUTH_CONFIG);
    let sub = server.port("submission");
    let cases = [
        ("<alice@localhost>", "250"),
        ("<ALICE@LocalHost>", "250"),
        ("<alice+tag@localhost>", "250"),
        ("<team@localhost>", "250"),
        ("<anyone@granted.example>", "250"),
        ("<anyone@GRANTED.example>", "250"),
        ("<>", "553 5.7.1 Null sender not allowed"),
        ("<bob@localhost>", "553 5.7.1"),
        ("<bob+alice@localhost>", "553 5.7.1"),
        ("<alice@other.example>", "553 5.7.1"),
        ("<alice@localhost.other.example>", "553 5.7.1"),
        ("<anyone@sub.granted.example>", "553 5.7.1"),
        ("<postmaster@localhost>", "553 5.7.1"),
        ("<alice@[127.0.0.1]>", "553 5.7.1"),
        ("<\"alice@localhost\"@other.example>", "553 5.7.1"),
        ("<@localhost:alice@other.example>", "553 5.7.1"),
    ];
    for (from, want) in cases {
        let r = dialogue(&sub, "plain", &[PLAIN_OK, &format!("MAIL FROM:{from}")]);
        expect(&r, &["235", want], &format!("MAIL FROM:{from}"));
    }
    // Unauthenticated mail on port 25 may come from anyone (it is incoming mail).
    let r = dialogue(
        &server.port("smtp"),
        "plain",
        &["MAIL FROM:<bob@localhost>"],
    );
    expect(&r, &["250"], "port 25 without AUTH");
}

/// The open-relay suite: an unauthenticated client on port 25 tries every trick to get mail
/// sent elsewhere. None may be accepted; the local forms reach local users only.
#[test]
fn open_relay_suite() {
    let server = Server::start(AUTH_CONFIG);
    let smtp = server.port("smtp");
    let refused = [
        "<someone@other.example>",
        "<SOMEONE@OTHER.EXAMPLE>",
        "<alice%other.example@localhost>",
        "<alice%other.example@LOCALHOST>",
        "<\"alice%other.example\"@localhost>",
        "<\"alice@other.example\"@localhost>",
        "<\"ALICE@OTHER.EXAMPLE\"@LocalHost>",
        "<@localhost:alice@other.example>",
        "<@LOCALHOST,@localhost:alice@other.example>",
        "<other.example!alice@localhost>",
        "<alice@other.example@localhost>",
        "<alice@localhost.>",
        "<alice@localhost..>",
        "<alice@LOCALHOST.>",
        "<alice@[127.0.0.1]>",
        "<alice@[IPv6:::1]>",
        "<alice@[ipv6:0:0:0:0:0:0:0:1]>",
        "<alice@[IPv6:::ffff:127.0.0.1]>",
        "<alice@[IPv6:2001:db8::1]>",
        "<alice@[192.0.2.1]>",
        "<alice@localhost.other.example>",
        "<alice@other-localhost>",
        "<alice@xn--other-example>",
        "<alice%bücher.example@localhost>",
        "<postmaster@other.example>",
        "<\"alice\\@other.example\"@localhost>",
        "alice@other.example",
    ];
    for rcpt in refused {
        let r = dialogue(
            &smtp,
            "plain",
            &[
                "MAIL FROM:<attacker@evil.example> SMTPUTF8",
                &format!("RCPT TO:{rcpt}"),
            ],
        );
        assert_eq!(r.len(), 2, "{rcpt}: {r:?}");
        assert!(r[0].starts_with("250"), "{rcpt}: {r:?}");
        let code = &r[1][..3];
        assert!(
            matches!(code, "550" | "553" | "501" | "555"),
            "RCPT TO:{rcpt} must be refused, got {:?}",
            r[1]
        );
    }
    // The case and IDNA variants of a local domain are that domain: delivered locally.
    let local = [
        ("<alice@LocalHost>", "localhost/alice"),
        ("<ALICE@LOCALHOST>", "localhost/alice"),
        ("<Alice+Tag@localhost>", "localhost/alice"),
        (
            "<jose\u{301}@xn--bcher-kva.example>",
            "xn--bcher-kva.example/josé",
        ),
        ("<JOSÉ@BÜCHER.EXAMPLE>", "xn--bcher-kva.example/josé"),
        ("<PostMaster@localhost>", "localhost/postmaster"),
        ("<postmaster>", "localhost/postmaster"),
    ];
    for (rcpt, _) in local {
        let r = dialogue(
            &smtp,
            "plain",
            &[
                "MAIL FROM:<attacker@evil.example> SMTPUTF8",
                &format!("RCPT TO:{rcpt}"),
                "DATA",
                "BODY:Subject: local\r\n\r\nlocal",
            ],
        );
        expect(&r, &["250", "250", "354", "250"], rcpt);
    }
    // Nothing else was created: no mailbox for any relayed form.
    let mut want: Vec<String> = local.iter().map(|(_, m)| m.to_string()).collect();
    want.sort();
    want.dedup();
    assert_eq!(server.mailboxes(), want, "{}", server.log());
    // Copies show in new/ a moment before their delivery is recorded and logged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.log().matches(" delivered ").count() < local.len()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = server.log();
    let delivered: Vec<&str> = log.lines().filter(|l| l.contains(" delivered ")).collect();
    assert_eq!(delivered.len(), local.len(), "{log}");
    assert!(delivered.iter().all(|l| !l.contains("other")), "{log}");
}

/// Authenticated, a user may address anyone: local recipients and other domains are
/// accepted (the latter for outbound delivery); routing tricks and unknown local users are not.
#[test]
fn authenticated_recipients() {
    let server = Server::start(AUTH_CONFIG);
    let sub = server.port("submission");
    let r = dialogue(
        &sub,
        "plain",
        &[
            PLAIN_OK,
            "MAIL FROM:<alice@localhost>",
            "RCPT TO:<someone@other.example>",
            "RCPT TO:<bob%other.example@localhost>",
            "RCPT TO:<nobody@localhost>",
            "RCPT TO:<bob@LOCALHOST>",
        ],
    );
    expect(
        &r,
        &["235", "250", "250", "550 5.7.1", "550 5.1.1", "250"],
        "authenticated RCPTs",
    );
}

/// The header From of an authenticated user's message is checked like MAIL FROM: refused
/// (550 5.7.1) by default, accepted with `header_from = "allow"`.
#[test]
fn header_from_is_checked() {
    let send = |server: &Server, header: &str| {
        let body = format!("BODY:{header}Subject: header from\r\n\r\nbody\r\nFrom: x@evil.example");
        dialogue(
            &server.port("submission"),
            "plain",
            &[
                PLAIN_OK,
                "MAIL FROM:<alice@localhost>",
                "RCPT TO:<bob@localhost>",
                "DATA",
                &body,
            ],
        )
    };
    let server = Server::start(AUTH_CONFIG);
    let cases = [
        ("From: Alice <alice@localhost>\r\n", "250"),
        ("From: \"Alice\" <ALICE+x@LocalHost> (me)\r\n", "250"),
        ("From: Team <team@localhost>\r\n", "250"),
        (
            "From: Bob <bob@localhost>\r\n",
            "550 5.7.1 Message refused: From bob@localhost",
        ),
        ("From: \"alice@localhost\" <bob@localhost>\r\n", "550 5.7.1"),
        ("From: alice@localhost, bob@localhost\r\n", "550 5.7.1"),
        (
            "From: alice@localhost\r\nFrom: bob@localhost\r\n",
            "550 5.7.1 Message refused: more than one",
        ),
        ("", "550 5.7.1 Message refused: no From"),
        // Sender names the agent that sent it: it is checked like From.
        (
            "From: Alice <alice@localhost>\r\nSender: alice+lists@localhost\r\n",
            "250",
        ),
        (
            "From: Alice <alice@localhost>\r\nSender: Bob <bob@localhost>\r\n",
            "550 5.7.1 Message refused: Sender bob@localhost",
        ),
        (
            "From: Team <team@localhost>\r\nSender: a@localhost\r\nSender: b@localhost\r\n",
            "550 5.7.1 Message refused: more than one Sender",
        ),
    ];
    for (header, want) in cases {
        let r = send(&server, header);
        expect(&r, &["235", "250", "250", "354", want], header);
    }
    assert_eq!(
        server.wait_inbox("localhost", "bob", 4).len(),
        4,
        "{}",
        server.log()
    );
    assert!(
        server
            .log()
            .contains("header_from=\"From bob@localhost is not the sender's\"")
    );

    let lenient = Server::start(
        &AUTH_CONFIG.replace("[senders]", "[relay]\nheader_from = \"allow\"\n[senders]"),
    );
    let r = send(&lenient, "From: Bob <bob@localhost>\r\n");
    expect(
        &r,
        &["235", "250", "250", "354", "250"],
        "header_from = allow",
    );
    // Without AUTH (incoming mail on port 25) the header From is not ours to judge.
    let r = dialogue(
        &server.port("smtp"),
        "plain",
        &[
            "MAIL FROM:<someone@other.example>",
            "RCPT TO:<bob@localhost>",
            "DATA",
            "BODY:From: Bob <bob@localhost>\r\n\r\nhi",
        ],
    );
    expect(&r, &["250", "250", "354", "250"], "port 25");
}

/// `MAIL FROM:<>` from an authenticated user (bounces, auto-replies) is refused unless
/// `[senders]` grants the user `"<>"`; here bob has it, alice does not.
#[test]
fn a_null_sender_needs_a_grant() {
    let server = Server::start(AUTH_CONFIG);
    let r = dialogue(
        &server.port("submission"),
        "plain",
        &[PLAIN_OK, "MAIL FROM:<>"],
    );
    expect(
        &r,
        &["235", "553 5.7.1 Null sender not allowed"],
        "alice, no grant",
    );
    let r = dialogue(
        &server.port("submission"),
        "plain",
        &[
            "AUTH PLAIN b64:\\0bob@localhost\\0bob-password",
            "MAIL FROM:<>",
            "RCPT TO:<alice@localhost>",
        ],
    );
    expect(&r, &["235", "250", "250"], "bob, granted");
}

/// Clients from a trusted network may address other domains without AUTH; everyone else gets
/// 550 5.7.1.
#[test]
fn trusted_networks_may_relay_without_auth() {
    let trusted = Server::start("[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n");
    let lines = [
        "MAIL FROM:<anyone@other.example>",
        "RCPT TO:<someone@other.example>",
        "RCPT TO:<alice%other.example@localhost>",
        "RCPT TO:<alice@localhost>",
    ];
    let r = dialogue(&trusted.port("smtp"), "plain", &lines);
    expect(&r, &["250", "250", "550 5.7.1", "250"], "trusted");
    let other = Server::start("[relay]\ntrusted_networks = [\"192.0.2.0/24\", \"::1/128\"]\n");
    let r = dialogue(&other.port("smtp"), "plain", &lines);
    expect(
        &r,
        &["250", "550 5.7.1 Relaying denied", "550 5.7.1", "250"],
        "not trusted",
    );
}

/// smtplib's own login() (it picks PLAIN) over implicit TLS, then sendmail.
const SMTPLIB_LOGIN_SEND: &str = r#"
import smtplib, ssl, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl._create_unverified_context()
s = smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", context=ctx, timeout=20)
try:
    s.login(user, password)
    print("login ok")
except smtplib.SMTPAuthenticationError as e:
    print("login", e.smtp_code, e.smtp_error.decode())
    sys.exit(0)
msg = "From: %s\r\nTo: bob@localhost\r\nSubject: smtplib login\r\n\r\nhi\r\n" % user
print("refused", s.sendmail(user, ["bob@localhost"], msg))
s.quit()
"#;

#[test]
fn smtplib_login_and_send_over_implicit_tls() {
    let server = Server::start(AUTH_CONFIG);
    let run = |user: &str, pw: &str| {
        let out = Command::new("python3")
            .arg("-c")
            .arg(SMTPLIB_LOGIN_SEND)
            .args([&server.port("submissions"), user, pw])
            .stdin(Stdio::null())
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run("alice@localhost", "alice-pw");
    assert!(
        out.contains("login ok") && out.contains("refused {}"),
        "{out}"
    );
    let out = run("alice@localhost", "nope");
    assert!(out.contains("login 535 5.7.8"), "{out}");
    let out = run("info@localhost", "whatever");
    assert!(out.contains("login 535 5.7.8"), "{out}");
    assert_eq!(
        server.wait_inbox("localhost", "bob", 1).len(),
        1,
        "{}",
        server.log()
    );
}

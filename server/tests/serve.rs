//! The real `postern` binary, driven by real clients over loopback: Python's smtplib and
//! lettre, plain, STARTTLS and implicit TLS. Every server runs in its own temporary
//! configuration directory on ports the kernel picks (`127.0.0.1:0`); the addresses are read
//! from the server's startup lines. A guard kills each server when its test ends, pass or fail.
//! Nothing here touches a non-loopback address or the system's DNS: the servers' resolver is
//! [`common::OFFLINE_DNS`] (a closed loopback port), smtplib gets `local_hostname`, lettre an
//! explicit HELO name and an IP address.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lettre::message::Message;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{SmtpTransport, Transport};

const BINARY: &str = env!("CARGO_BIN_EXE_postern");

mod common;

/// A running server in its own temporary directory; killed and reaped on drop (by `inner`,
/// which is dropped before the directory).
struct Server {
    inner: common::Server,
    dir: tempfile::TempDir,
    cert_pem: String,
}

impl Server {
    /// Starts `postern -C <tempdir> serve` with a fresh configuration, certificate and the
    /// local domain `localhost` (users: alice, listed in domains/localhost/users).
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::write(
            root.join("postern.toml"),
            format!(
                "hostname = \"localhost\"\n\
                 data_dir = \"data\"\n\
                 max_message_size = 1048576\n\
                 {}\
                 [listeners]\n\
                 smtp = [\"127.0.0.1:0\"]\n\
                 submission = [\"127.0.0.1:0\"]\n\
                 submissions = [\"127.0.0.1:0\"]\n",
                common::OFFLINE_DNS
            ),
        )
        .expect("write config");
        let pair = common::cert(&["localhost"]);
        common::write_certbot(&root.join("certs/localhost"), &pair);
        let cert_pem = pair.0;
        fs::create_dir_all(root.join("domains/localhost")).expect("mkdir domain");
        fs::write(
            root.join("domains/localhost/users"),
            "# test users\nalice\n",
        )
        .expect("write users");

        let inner = common::Server::start(root, 3);
        Server {
            inner,
            dir,
            cert_pem,
        }
    }

    fn port(&self, role: &str) -> u16 {
        self.inner.port(role)
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log (its standard error).
    fn log(&self) -> String {
        self.inner.log()
    }

    /// The messages in `<data_dir>/mail/<domain>/<user>/new`, oldest name first.
    fn inbox(&self, domain: &str, user: &str) -> Vec<String> {
        self.inner.inbox(domain, user)
    }

    /// The one message in an inbox, with its subject checked. Delivery runs after the 250,
    /// so this waits (bounded) for it to arrive.
    fn only_message(&self, domain: &str, user: &str, subject: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.inbox(domain, user).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let inbox = self.inbox(domain, user);
        assert_eq!(
            inbox.len(),
            1,
            "{user}@{domain}: {inbox:?}\nlog:\n{}",
            self.log()
        );
        let m = inbox.into_iter().next().unwrap_or_default();
        assert!(m.contains(&format!("Subject: {subject}")), "{m}");
        m
    }

    /// The TLS parameters a client needs to trust this server's certificate as `localhost`.
    fn lettre_tls(&self) -> TlsParameters {
        TlsParameters::builder("localhost".to_string())
            .certificate_store(CertificateStore::None)
            .add_root_certificate(Certificate::from_pem(self.cert_pem.as_bytes()).expect("cert"))
            .build_rustls()
            .expect("tls parameters")
    }

    fn lettre(&self, role: &str, tls: Tls) -> SmtpTransport {
        SmtpTransport::builder_dangerous("127.0.0.1")
            .port(self.port(role))
            .tls(tls)
            .hello_name(ClientId::Domain("client.test".to_string()))
            .timeout(Some(Duration::from_secs(20)))
            .build()
    }
}

use common::python;

/// Sends one message with smtplib; `mode` is `plain`, `starttls` or `ssl`.
const SMTPLIB_SEND: &str = r#"
import smtplib, ssl, sys
port, mode, rcpt, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl._create_unverified_context()
msg = ("From: sender@client.test\r\nTo: %s\r\nSubject: %s\r\n\r\n"
       "Hello from smtplib.\r\n.leading dot\r\n" % (rcpt, subject)).encode()
if mode == "ssl":
    s = smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", context=ctx, timeout=20)
else:
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20)
    if mode == "starttls":
        s.starttls(context=ctx)
refused = s.sendmail("sender@client.test", [rcpt], msg)
s.quit()
print("refused", refused)
"#;

fn assert_trace(m: &str, rcpt: &str, protocol: &str) {
    assert!(
        m.starts_with("Return-Path: <sender@client.test>\r\n"),
        "{m}"
    );
    assert!(m.contains(&format!("Delivered-To: {rcpt}\r\n")), "{m}");
    assert!(
        m.contains("Received: from client.test ([127.0.0.1])\r\n"),
        "{m}"
    );
    assert!(
        m.contains(&format!("by localhost (postern) with {protocol} id ")),
        "{m}"
    );
    assert!(m.contains(&format!("for <{rcpt}>; ")), "{m}");
    // The trace fields come before the client's own header.
    let received = m.find("Received:").unwrap_or(usize::MAX);
    let subject = m.find("Subject:").unwrap_or(0);
    assert!(received < subject, "{m}");
}

#[test]
fn smtplib_plain_delivers_with_trace_headers() {
    let server = Server::start();
    let out = python(
        SMTPLIB_SEND,
        &[
            server.port("smtp").to_string(),
            "plain".into(),
            "alice@localhost".into(),
            "plain smtplib".into(),
        ],
    );
    assert!(out.contains("refused {}"), "{out}");
    let m = server.only_message("localhost", "alice", "plain smtplib");
    assert_trace(&m, "alice@localhost", "ESMTP");
    assert!(!m.contains("using TLS"), "{m}");
    assert!(
        m.contains("Hello from smtplib.\r\n.leading dot\r\n"),
        "dot-unstuffed body: {m}"
    );
    // One log line per event, all with the same queue id.
    let log = server.log();
    let id = log
        .lines()
        .find_map(|l| l.split(" received id=").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no received line in:\n{log}"))
        .to_string();
    let received = log
        .lines()
        .find(|l| l.contains(" received id="))
        .expect("line");
    assert!(received.contains(" session="), "{received}");
    // The copy shows in new/ a moment before its delivery is recorded and logged.
    let want = format!("delivered id={id} to=<alice@localhost>");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.log().contains(&want) {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(m.contains(&format!(" id {id}\r\n")), "{m}");
}

#[test]
fn smtplib_starttls_records_tls_in_received() {
    let server = Server::start();
    python(
        SMTPLIB_SEND,
        &[
            server.port("smtp").to_string(),
            "starttls".into(),
            "alice@localhost".into(),
            "starttls smtplib".into(),
        ],
    );
    let m = server.only_message("localhost", "alice", "starttls smtplib");
    assert_trace(&m, "alice@localhost", "ESMTPS");
    // The cipher's IANA name (RFC 8446 B.4), not rustls's TLS13_ spelling.
    assert!(m.contains("\t(using TLSv1.3 with cipher TLS_AES_"), "{m}");
}

#[test]
fn postmaster_always_exists() {
    let server = Server::start();
    python(
        SMTPLIB_SEND,
        &[
            server.port("smtp").to_string(),
            "plain".into(),
            "postmaster@localhost".into(),
            "to the postmaster".into(),
        ],
    );
    let m = server.only_message("localhost", "postmaster", "to the postmaster");
    assert_trace(&m, "postmaster@localhost", "ESMTP");
}

/// BINARYMIME is offered nowhere (its mail may go on to a server that cannot take binary
/// bodies; postern does not convert them), so a client sends 8BITMIME instead; CHUNKING and
/// 8BITMIME stay. A client that sends BODY=BINARYMIME anyway is told the parameter is not
/// offered, before any data.
#[test]
fn binary_bodies_are_not_offered() {
    let server = Server::start();
    let script = r#"
import smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=20)
s.ehlo()
if s.has_extn("starttls"):
    s.starttls(context=ssl._create_unverified_context())
    s.ehlo()
print(" ".join(sorted(s.esmtp_features)))
code, text = s.docmd("MAIL FROM:<sender@client.test> BODY=BINARYMIME")
print(code, text.decode())
code, text = s.docmd("MAIL FROM:<sender@client.test> BODY=8BITMIME")
print(code, text.decode())
s.quit()
"#;
    for role in ["smtp", "submission"] {
        let out = python(script, &[server.port(role).to_string()]);
        let lines: Vec<&str> = out.lines().collect();
        let features: Vec<&str> = lines[0].split(' ').collect();
        assert!(features.contains(&"chunking"), "{role}: {out}");
        assert!(features.contains(&"8bitmime"), "{role}: {out}");
        assert!(!features.contains(&"binarymime"), "{role}: {out}");
        // Submission wants AUTH before any MAIL; smtp answers the parameters.
        let (binary, eight) = if role == "smtp" {
            ("555 5.5.4", "250")
        } else {
            ("530", "530")
        };
        assert!(lines[1].starts_with(binary), "{role}: {out}");
        assert!(lines[2].starts_with(eight), "{role}: {out}");
    }
}

/// Refused recipients: replies as smtplib sees them.
const SMTPLIB_REFUSED: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=20)
s.ehlo()
s.mail("sender@client.test")
for rcpt in sys.argv[2:]:
    code, text = s.rcpt(rcpt)
    print(rcpt, code, text.decode())
code, text = s.docmd("DATA")
print("data", code, text.decode())
s.quit()
"#;

#[test]
fn foreign_domains_and_unknown_users_are_refused() {
    let server = Server::start();
    let out = python(
        SMTPLIB_REFUSED,
        &[
            server.port("smtp").to_string(),
            "someone@example.com".into(),
            "nobody@localhost".into(),
        ],
    );
    assert!(
        out.contains("someone@example.com 550 5.7.1 Relaying denied"),
        "{out}"
    );
    assert!(out.contains("nobody@localhost 550 5.1.1"), "{out}");
    assert!(out.contains("data 554"), "no valid recipients: {out}");
    assert!(!server.root().join("data/mail/localhost/nobody").exists());
    let log = server.log();
    assert!(
        log.contains("rejected id=") && log.contains("to=<someone@example.com>"),
        "{log}"
    );
}

/// The submission ports: TLS works, AUTH is offered only under TLS, and (no users yet) every
/// login is refused and MAIL needs AUTH.
const SMTPLIB_SUBMISSION: &str = r#"
import smtplib, ssl, sys
port, mode = int(sys.argv[1]), sys.argv[2]
ctx = ssl._create_unverified_context()
if mode == "ssl":
    s = smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", context=ctx, timeout=20)
else:
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20)
    s.ehlo()
    print("plain auth offered", s.has_extn("auth"))
    print("plain mail", s.mail("sender@client.test")[0])
    s.starttls(context=ctx)
s.ehlo()
print("tls", s.sock.version())
print("auth offered", s.has_extn("auth"))
try:
    s.login("alice", "secret")
    print("login ok")
except smtplib.SMTPAuthenticationError as e:
    print("login", e.smtp_code, e.smtp_error.decode())
print("mail", s.mail("sender@client.test")[0])
s.quit()
"#;

#[test]
fn smtplib_implicit_tls_on_submissions() {
    let server = Server::start();
    let out = python(
        SMTPLIB_SUBMISSION,
        &[server.port("submissions").to_string(), "ssl".into()],
    );
    assert!(out.contains("tls TLSv1.3"), "{out}");
    assert!(out.contains("auth offered True"), "{out}");
    assert!(out.contains("login 535 5.7.8"), "{out}");
    assert!(out.contains("mail 530"), "{out}");
    assert!(
        !server.log().contains("secret"),
        "AUTH data must never be logged"
    );
}

#[test]
fn smtplib_starttls_on_submission() {
    let server = Server::start();
    let out = python(
        SMTPLIB_SUBMISSION,
        &[server.port("submission").to_string(), "starttls".into()],
    );
    assert!(out.contains("plain auth offered False"), "{out}");
    assert!(out.contains("plain mail 530"), "{out}");
    assert!(out.contains("tls TLSv1.3"), "{out}");
    assert!(out.contains("auth offered True"), "{out}");
    assert!(out.contains("login 535 5.7.8"), "{out}");
}

fn lettre_message(to: &str, subject: &str) -> Message {
    Message::builder()
        .from("Sender <sender@client.test>".parse().expect("from"))
        .to(to.parse().expect("to"))
        .subject(subject)
        .body(String::from("Hello from lettre.\r\n"))
        .expect("message")
}

#[test]
fn lettre_plain_and_starttls_deliver() {
    let server = Server::start();
    let plain = server.lettre("smtp", Tls::None);
    plain
        .send(&lettre_message("alice@localhost", "lettre plain"))
        .expect("plain send");
    let m = server.only_message("localhost", "alice", "lettre plain");
    assert_trace(&m, "alice@localhost", "ESMTP");

    let starttls = server.lettre("smtp", Tls::Required(server.lettre_tls()));
    starttls
        .send(&lettre_message("postmaster@localhost", "lettre starttls"))
        .expect("starttls send");
    let m = server.only_message("localhost", "postmaster", "lettre starttls");
    assert_trace(&m, "postmaster@localhost", "ESMTPS");
    assert!(m.contains("\t(using TLSv1.3 with cipher "), "{m}");
    assert!(m.contains("Hello from lettre."), "{m}");
}

#[test]
fn lettre_implicit_tls_handshakes_and_requires_auth() {
    let server = Server::start();
    let wrapper = server.lettre("submissions", Tls::Wrapper(server.lettre_tls()));
    assert!(wrapper.test_connection().expect("TLS handshake and EHLO"));
    let err = wrapper
        .send(&lettre_message("alice@localhost", "lettre implicit"))
        .expect_err("MAIL without AUTH is refused on submissions");
    assert!(err.is_permanent(), "{err}");
    assert_eq!(
        err.status().map(|c| c.to_string()),
        Some("530".to_string()),
        "{err}"
    );
    assert!(server.inbox("localhost", "alice").is_empty());
}

#[test]
fn sigterm_stops_the_server() {
    let mut server = Server::start();
    let pid = server.inner.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.inner.child.try_wait().expect("try_wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGUSR1, SIGUSR2 and SIGALRM are logged and ignored (their default would end the daemon
/// without a word); a SIGHUP with [listeners] changed says it needs a restart, and one that
/// puts them back says nothing about listeners; the server keeps serving on the addresses it
/// started with throughout.
#[test]
fn stray_signals_and_listener_changes_are_explained() {
    let mut server = Server::start();
    for signal in ["USR1", "USR2", "ALRM"] {
        server.inner.signal(signal);
        server
            .inner
            .wait_log(&format!("SIG{signal} received and ignored"), 10);
    }
    assert!(server.inner.child.try_wait().expect("try_wait").is_none());
    let config = server.dir.path().join("postern.toml");
    let text = fs::read_to_string(&config).expect("config");
    let moved = text.replacen("smtp = [\"127.0.0.1:0\"]", "smtp = [\"127.0.0.1:1\"]", 1);
    assert_ne!(moved, text);
    fs::write(&config, &moved).expect("write");
    server.inner.signal("HUP");
    server.inner.wait_log("[listeners] changed in", 10);
    fs::write(&config, &text).expect("write");
    server.inner.signal("HUP");
    let reloaded = |log: &str| log.matches("configuration reloaded from").count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloaded(&server.inner.log()) < 2 {
        assert!(Instant::now() < deadline, "{}", server.inner.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = server.inner.log();
    assert_eq!(log.matches("[listeners] changed in").count(), 1, "{log}");
    // Still serving where it started.
    python(
        SMTPLIB_SEND,
        &[
            server.port("smtp").to_string(),
            "plain".into(),
            "alice@localhost".into(),
            "after the signals".into(),
        ],
    );
    server.only_message("localhost", "alice", "after the signals");
}

/// Runs `postern -C dir serve`, which must fail; its standard error.
fn failed_start(dir: &std::path::Path) -> String {
    let out = Command::new(BINARY)
        .arg("-C")
        .arg(dir)
        .arg("serve")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

#[test]
fn a_bad_config_names_file_line_and_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("postern.toml"),
        "hostname = \"localhost\"\n[listeners]\nsmtp = [\"127.0.0.1:0\"]\nsmpt = [\"127.0.0.1:0\"]\n",
    )
    .expect("write");
    let stderr = failed_start(dir.path());
    assert!(
        stderr.contains("postern.toml, line 4: unknown field `smpt`"),
        "{stderr}"
    );
    assert!(stderr.contains("fix: "), "{stderr}");
}

/// A broken users or aliases file, or a DKIM key the server cannot use, stops the start with
/// its file (and line) and the reason: running without it would refuse its users' or
/// aliases' mail for good, or answer every submission of the domain 451.
#[test]
fn a_broken_users_aliases_or_key_file_refuses_to_start() {
    for (file, text, want, fix) in [
        (
            "users",
            "alice\nbob:secret\n",
            "users, line 2: malformed user",
            "fix: correct the line",
        ),
        (
            "aliases",
            "postmaster: alice\nthis line has no colon\n",
            "aliases, line 2: ",
            "fix: correct the line",
        ),
        (
            "dkim/s1.pem",
            "not a key\n",
            "dkim/s1.pem: ",
            "fix: make it readable by the user running postern",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("postern.toml"),
            "hostname = \"localhost\"\n[listeners]\nsmtp = [\"127.0.0.1:0\"]\n",
        )
        .expect("write");
        fs::create_dir_all(dir.path().join("domains/localhost/dkim")).expect("domain");
        fs::write(dir.path().join("domains/localhost").join(file), text).expect("file");
        let stderr = failed_start(dir.path());
        assert!(
            stderr.contains(&format!("domains/localhost/{want}")),
            "{file}: {stderr}"
        );
        assert!(stderr.contains(fix), "{stderr}");
    }
}

/// `postern config check` reads what serve reads and reports every problem at once (file,
/// line, fix), warnings after; exit 1. Once they are fixed: exit 0, and serve starts.
#[test]
fn config_check_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::write(
        root.join("postern.toml"),
        "hostname = \"localhost\"\ndata_dir = \"data\"\n[listeners]\nsmtp = [\"127.0.0.1:0\"]\n",
    )
    .expect("write");
    for domain in ["localhost", "other.example"] {
        fs::create_dir_all(root.join("domains").join(domain).join("dkim")).expect("domain");
    }
    let local = root.join("domains/localhost");
    fs::write(local.join("users"), "alice\nbob:secret\n").expect("users");
    fs::write(local.join("aliases"), "a: alice\na: bob\n").expect("aliases");
    let other = root.join("domains/other.example");
    fs::write(other.join("aliases"), "no colon here\n").expect("aliases");
    fs::write(other.join("dkim/s1.pem"), "not a key\n").expect("key");
    let check = || {
        Command::new(BINARY)
            .arg("-C")
            .arg(root)
            .args(["config", "check"])
            .output()
            .expect("run postern")
    };
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for want in [
        "domains/localhost/users, line 2: malformed user",
        "domains/other.example/aliases, line 1: ",
        "domains/other.example/dkim/s1.pem: ",
        "certs/localhost",
        "fix: correct the line",
        "warning: ",
        "postern: 4 problems: serve would not start",
    ] {
        assert!(stderr.contains(want), "{want:?} in\n{stderr}");
    }
    // Nothing was started or created.
    assert!(!root.join("data").exists());

    fs::write(local.join("users"), "alice\n").expect("users");
    fs::write(other.join("aliases"), "postmaster: alice@localhost\n").expect("aliases");
    fs::remove_file(other.join("dkim/s1.pem")).expect("key");
    common::write_certbot(&root.join("certs/localhost"), &common::cert(&["localhost"]));
    let out = check();
    let stdout = common::succeeded(&out);
    assert!(
        stdout.contains("postern.toml: ok (hostname localhost"),
        "{stdout}"
    );
    assert!(stdout.contains("certificates: "), "{stdout}");
    // Files written 0644 (as a git clone leaves them): warned about, and fixed on request.
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("domains/localhost/users is readable by every user of this machine (mode 0644); it should be 0640"),
        "{stderr}"
    );
    assert!(
        stderr.contains("certs/localhost/privkey.pem is readable"),
        "{stderr}"
    );
    let fix = Command::new(BINARY)
        .arg("-C")
        .arg(root)
        .args(["config", "check", "--fix-modes"])
        .output()
        .expect("run postern");
    assert!(fix.status.success(), "{fix:?}");
    assert!(
        String::from_utf8_lossy(&fix.stdout).contains("fixed the mode of "),
        "{fix:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(local.join("users"))
        .expect("users")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    let again = check();
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("readable by every user"),
        "{again:?}"
    );
}

#[test]
fn a_missing_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("postern.toml"),
        "hostname = \"mx.example.org\"\n[listeners]\nsmtp = [\"127.0.0.1:0\"]\n",
    )
    .expect("write");
    let stderr = failed_start(dir.path());
    assert!(
        stderr.contains("no certificate for the host name mx.example.org"),
        "{stderr}"
    );
    assert!(stderr.contains("certs/mx.example.org"), "{stderr}");
}

/// First run in an empty directory creates the embedded default. It then listens on the fixed
/// default ports (loopback only); if another program holds them the server exits with an error
/// naming the listener's line, which is fine here: the files are what is checked.
#[test]
fn first_run_creates_the_embedded_default() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("postern-data");
    let (child, lines) = spawn_in(tmp.path(), &dir);
    let mut child = KillOnDrop(child);
    let first = lines
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_default();
    assert!(
        first.contains("created the default configuration"),
        "{first}"
    );
    // The state directory beside the configuration, made before the listeners are bound.
    let state = tmp.path().join("postern-data-state");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !state.join("mail").is_dir() {
        assert!(Instant::now() < deadline, "no {}", state.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.0.kill();
    let config = fs::read_to_string(dir.join("postern.toml")).expect("postern.toml");
    for key in [
        "hostname = \"localhost\"",
        "data_dir",
        "max_message_size = 52428800",
        "smtp = [\"127.0.0.1:2525\"]",
        "submission = [\"127.0.0.1:2587\"]",
        "submissions = [\"127.0.0.1:2465\"]",
    ] {
        assert!(config.contains(key), "{key} missing from:\n{config}");
    }
    assert!(dir.join("certs/localhost/fullchain.pem").is_file());
    assert!(dir.join("certs/localhost/privkey.pem").is_file());
    assert!(dir.join("domains/localhost").is_dir());
    // Ready for git: a .gitignore for the secrets, and the state beside, not inside.
    let ignore = fs::read_to_string(dir.join(".gitignore")).expect(".gitignore");
    for line in ["certs/", "domains/*/dkim/*.pem", "srs.key"] {
        assert!(ignore.lines().any(|l| l == line), "{line} in\n{ignore}");
    }
    assert!(
        !config.lines().any(|l| l.starts_with("data_dir")),
        "{config}"
    );
    assert!(!dir.join("mail").exists() && !dir.join("queue").exists());
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Like [`spawn`] but with the configuration directory `dir` under the working directory `cwd`.
fn spawn_in(cwd: &Path, dir: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BINARY)
        .arg("-C")
        .arg(dir)
        .arg("serve")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn postern");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

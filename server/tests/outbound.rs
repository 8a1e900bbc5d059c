//! Outbound delivery end to end, over loopback only: a user submits through 587 to postern A,
//! which finds the recipient's mail exchanger in a test DNS server on 127.0.0.1 and delivers
//! to postern B (over IPv4, and over IPv6 to an MX that has only ::1), to Postfix's
//! smtp-sink, and to scripted SMTP servers that answer 451 then 250, or 550; a remote that
//! never answers until the give-up time, and a restart with the message still queued.
//! Bounces (DSNs) arrive in the sender's Maildir on A.

mod common;

use postern::dns::test_server;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, instance, wait_messages};

/// A port free on both 127.0.0.1 and ::1 (for an MX that listens on both).
fn free_dual_port() -> u16 {
    for _ in 0..50 {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind v4");
        let port = v4.local_addr().expect("addr").port();
        if TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

/// A port where nothing listens (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts the test DNS server on 127.0.0.1 with `zone`.
fn dns(dir: &Path, zone: &str) -> test_server::TestServer {
    let path = dir.join("zone");
    fs::write(&path, zone).expect("zone");
    test_server::TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &path).expect("dns")
}

/// Submits a message from alice@a.test to `to` through A's submission port, with STARTTLS
/// and AUTH.
fn submit(a: &Server, to: &[&str], subject: &str) {
    submit_with(a, to, subject, "", "");
}

/// [`submit`] with MAIL and RCPT parameters (space-separated, e.g. "REQUIRETLS",
/// "NOTIFY=SUCCESS").
fn submit_with(a: &Server, to: &[&str], subject: &str, mail_options: &str, rcpt_options: &str) {
    let script = r#"
import smtplib, ssl, sys
port, subject, mail_options, rcpt_options = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
to = sys.argv[5:]
msg = ("From: Alice <alice@a.test>\r\nTo: " + ", ".join(to) + "\r\nSubject: " + subject +
       "\r\nMessage-ID: <" + subject + "@a.test>\r\n\r\nHello from A.\r\n.leading dot\r\n")
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
s.starttls(context=ssl._create_unverified_context())
s.ehlo()
s.login("alice@a.test", "pw-for-tests")
s.sendmail("alice@a.test", to, msg, mail_options, rcpt_options)
s.quit()
print("sent")
"#;
    let mut args = vec![
        a.port("submission").to_string(),
        subject.to_string(),
        mail_options.to_string(),
        rcpt_options.to_string(),
    ];
    args.extend(to.iter().map(|t| t.to_string()));
    assert_eq!(common::python(script, &args).trim(), "sent");
}

/// The configuration of A: DNS on the test server, remote MX port `mx_port`, fast retries.
fn sender_config(dns_port: u16, mx_port: u16, delivery: &str, routes: &str) -> String {
    format!(
        "[auth]\nallow_plaintext_on_loopback = true\n\
         [dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n\
         [delivery]\nmx_port = {mx_port}\nfirst_retry = 1\nmax_retry_interval = 2\n{delivery}\n\
         [routes]\n{routes}\n"
    )
}

/// Starts A (sender, domain a.test with alice).
fn start_sender(config: &str) -> (tempfile::TempDir, Server) {
    let dir = instance(
        "a.test",
        &[("a.test", &["alice"])],
        config,
        "smtp = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]",
    );
    let server = Server::start(dir.path(), 2);
    (dir, server)
}

#[test]
fn submitted_mail_reaches_the_recipients_mx_over_ipv4_and_ipv6() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let zone = "\
test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300
remote.test. 300 MX 10 mx.remote.test.
mx.remote.test. 300 A 127.0.0.1
v6.test. 300 MX 10 mx6.v6.test.
mx6.v6.test. 300 AAAA ::1
implicit.test. 300 A 127.0.0.1
nullmx.test. 300 MX 0 .
";
    let dns = dns(tmp.path(), zone);
    let port = free_dual_port();
    let b_dir = instance(
        "mx.remote.test",
        &[
            ("remote.test", &["bob"]),
            ("v6.test", &["carol"]),
            ("implicit.test", &["dan"]),
        ],
        "",
        &format!("smtp = [\"127.0.0.1:{port}\", \"[::1]:{port}\"]"),
    );
    // Both listeners are "smtp": one entry in the listener map.
    let b = Server::start(b_dir.path(), 1);
    let (_a_dir, a) = start_sender(&sender_config(dns.addr.port(), port, "", ""));

    submit(
        &a,
        &["bob@remote.test", "carol@v6.test", "dan@implicit.test"],
        "three",
    );
    for (domain, user) in [
        ("remote.test", "bob"),
        ("v6.test", "carol"),
        ("implicit.test", "dan"),
    ] {
        let got = wait_messages(&b, domain, user, 1, 30);
        let text = &got[0];
        assert!(text.contains("Subject: three\r\n"), "{text}");
        assert!(
            text.contains("\r\n.leading dot\r\n"),
            "dot-stuffing undone: {text}"
        );
        // B's Received field names A's EHLO, and TLS (B offers STARTTLS, A uses it).
        assert!(text.contains("Received: from a.test ("), "{text}");
        assert!(text.contains("(using TLSv1."), "{text}");
        // A's own Received field, for the submission, travels with the message.
        assert!(
            text.contains("by a.test (postern) with ESMTPSA id "),
            "{text}"
        );
    }
    // carol's copy went over IPv6: B logs the client address.
    b.wait_log("client=::1", 10);
    // A logs a delivery once the remote's 250 has arrived, which can be after B has written
    // the message: wait for the line rather than reading the log once.
    a.wait_log("to=<carol@v6.test> relay=mx6.v6.test[::1]:", 10);
    a.wait_log("tls=TLSv1.3 cert=unverified", 10);

    // A null MX fails at once and bounces to alice, on A.
    submit(&a, &["nobody@nullmx.test"], "nullmx");
    let bounces = wait_messages(&a, "a.test", "alice", 1, 30);
    let dsn = &bounces[0];
    assert!(
        dsn.contains("Content-Type: multipart/report; report-type=delivery-status"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@nullmx.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.10"), "{dsn}");
    assert!(dsn.contains("Return-Path: <>"), "{dsn}");
}

/// A scripted SMTP server: connection `n` answers RCPT with `rcpt_replies[n]` (the last one
/// for later connections). Records each message it accepts.
struct Scripted {
    port: u16,
    messages: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
    /// The client address of each connection.
    peers: Arc<Mutex<Vec<IpAddr>>>,
}

impl Scripted {
    fn start(rcpt_replies: &[&str]) -> Scripted {
        Scripted::start_with(rcpt_replies, false)
    }

    /// `broken_tls`: announce STARTTLS, then answer its handshake with garbage.
    fn start_with(rcpt_replies: &[&str], broken_tls: bool) -> Scripted {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0usize));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let replies: Vec<String> = rcpt_replies.iter().map(|s| s.to_string()).collect();
        {
            let messages = messages.clone();
            let connections = connections.clone();
            let peers = peers.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().take(20) {
                    let Ok(stream) = stream else { continue };
                    if let Ok(peer) = stream.peer_addr() {
                        peers.lock().expect("lock").push(peer.ip());
                    }
                    let n = {
                        let mut c = connections.lock().expect("lock");
                        *c += 1;
                        *c - 1
                    };
                    let reply = replies[n.min(replies.len() - 1)].clone();
                    let _ = serve_scripted(stream, &reply, &messages, broken_tls);
                }
            });
        }
        Scripted {
            port,
            messages,
            connections,
            peers,
        }
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().expect("lock").clone()
    }
}

fn serve_scripted(
    stream: TcpStream,
    rcpt_reply: &str,
    messages: &Mutex<Vec<String>>,
    broken_tls: bool,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    out.write_all(b"220 scripted.test ESMTP\r\n")?;
    let mut accepted = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" if broken_tls => out.write_all(b"250-scripted.test\r\n250 STARTTLS\r\n")?,
            "EHLO" | "HELO" => out.write_all(b"250 scripted.test\r\n")?,
            "STAR" => {
                out.write_all(b"220 2.0.0 go ahead\r\n")?;
                out.write_all(b"this is not a TLS server hello\r\n")?;
                return Ok(());
            }
            "MAIL" | "RSET" => out.write_all(b"250 2.0.0 ok\r\n")?,
            "RCPT" => {
                out.write_all(format!("{rcpt_reply}\r\n").as_bytes())?;
                accepted |= rcpt_reply.starts_with('2');
            }
            "DATA" if accepted => {
                out.write_all(b"354 go ahead\r\n")?;
                let mut body = String::new();
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l)? == 0 {
                        return Ok(());
                    }
                    if l == ".\r\n" {
                        break;
                    }
                    body.push_str(&l);
                }
                messages.lock().expect("lock").push(body);
                out.write_all(b"250 2.0.0 stored\r\n")?;
            }
            "DATA" => out.write_all(b"554 5.5.1 no valid recipients\r\n")?,
            "QUIT" => {
                out.write_all(b"221 2.0.0 bye\r\n")?;
                return Ok(());
            }
            _ => out.write_all(b"502 5.5.2 not implemented\r\n")?,
        }
    }
}

#[test]
fn a_451_is_retried_until_250_and_a_550_bounces() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = dns(tmp.path(), "");
    let grey = Scripted::start(&["451 4.7.1 greylisted, come back later", "250 2.1.5 ok"]);
    let reject = Scripted::start(&["550 5.1.1 no such user here"]);
    let routes = format!(
        "\"grey.test\" = \"[127.0.0.1]:{}\"\n\"reject.test\" = \"[127.0.0.1]:{}\"",
        grey.port, reject.port
    );
    let (_a_dir, a) = start_sender(&sender_config(dns.addr.port(), 25, "", &routes));

    submit(&a, &["someone@grey.test", "nobody@reject.test"], "mixed");
    // The 550 bounces at once; the 451 is tried again and gets through.
    let bounces = wait_messages(&a, "a.test", "alice", 1, 30);
    let dsn = &bounces[0];
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@reject.test"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user here"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(
        !dsn.contains("grey.test\r\nAction"),
        "only the failure is reported: {dsn}"
    );
    // The original's headers come back.
    assert!(dsn.contains("Subject: mixed"), "{dsn}");

    let deadline = Instant::now() + Duration::from_secs(30);
    while grey.messages().is_empty() {
        assert!(
            Instant::now() < deadline,
            "never retried; log:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(*grey.connections.lock().expect("lock") >= 2);
    assert!(grey.messages()[0].contains("Subject: mixed"));
    assert!(reject.messages().is_empty());
    let log = a.log();
    assert!(log.contains("deferred id="), "{log}");
    assert!(log.contains("to=<someone@grey.test> attempts=1"), "{log}");
    a.wait_log("removed id=", 10);
    // Exactly one bounce: the delivered recipient never produces one.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.inbox("a.test", "alice").len(), 1);
}

#[test]
fn a_remote_down_past_the_give_up_time_bounces() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = dns(tmp.path(), "");
    let routes = format!("\"down.test\" = \"[127.0.0.1]:{}\"", closed_port());
    let (_a_dir, a) = start_sender(&sender_config(
        dns.addr.port(),
        25,
        "give_up_after = 3\nconnect_timeout = 2",
        &routes,
    ));
    submit(&a, &["someone@down.test"], "down");
    let bounces = wait_messages(&a, "a.test", "alice", 1, 40);
    let dsn = &bounces[0];
    assert!(
        dsn.contains("Final-Recipient: rfc822; someone@down.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert!(dsn.contains("Status: 5.4.7"), "{dsn}");
    let log = a.log();
    assert!(log.contains("gave up"), "{log}");
}

#[test]
fn a_restart_with_mail_still_queued_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = dns(tmp.path(), "");
    // The remote is down at first: the message waits in A's queue.
    let port = closed_port();
    let routes = format!("\"later.test\" = \"[127.0.0.1]:{port}\"");
    let config = sender_config(dns.addr.port(), 25, "connect_timeout = 2", &routes);
    let (a_dir, mut a) = start_sender(&config);
    submit(&a, &["someone@later.test"], "restart");
    a.wait_log("deferred id=", 20);
    // A crash, not a clean stop: the queue is what the last commit left.
    a.signal("KILL");
    a.wait_exit(30);
    drop(a);

    // The remote comes up; A starts again and delivers what it had queued.
    let b_dir = instance(
        "mx.later.test",
        &[("later.test", &["someone"])],
        "",
        &format!("smtp = [\"127.0.0.1:{port}\"]"),
    );
    let b = Server::start(b_dir.path(), 1);
    let a = Server::start(a_dir.path(), 2);
    let got = wait_messages(&b, "later.test", "someone", 1, 30);
    assert!(got[0].contains("Subject: restart"), "{}", got[0]);
    a.wait_log("queued messages resume delivery", 5);
}

#[test]
fn postfix_smtp_sink_takes_the_mail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = dns(tmp.path(), "");
    let sink_dir = tmp.path().join("sink");
    fs::create_dir_all(&sink_dir).expect("sink dir");
    // smtp-sink drops root privileges to the user given with -u: let it write here.
    let _ = Command::new("chmod").arg("0777").arg(&sink_dir).status();
    let port = closed_port();
    let program = if Path::new("/usr/sbin/smtp-sink").exists() {
        "/usr/sbin/smtp-sink"
    } else {
        "smtp-sink"
    };
    let mut sink = Command::new(program)
        .args(["-u", "nobody", "-d"])
        .arg(sink_dir.join("%Y%m%d%H%M%S."))
        .arg(format!("127.0.0.1:{port}"))
        .arg("10")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink (Postfix) must be installed: .ci/run installs it");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(Instant::now() < deadline, "smtp-sink did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let routes = format!("\"sink.test\" = \"[127.0.0.1]:{port}\"");
    let (_a_dir, a) = start_sender(&sender_config(dns.addr.port(), 25, "", &routes));
    submit(&a, &["one@sink.test", "two@sink.test"], "sink");
    // The transaction is over (and smtp-sink's dump complete) once A has removed the message.
    a.wait_log("removed id=", 30);
    let deadline = Instant::now() + Duration::from_secs(30);
    let dumped = loop {
        let files: Vec<String> = fs::read_dir(&sink_dir)
            .expect("read sink dir")
            .filter_map(|e| fs::read_to_string(e.expect("entry").path()).ok())
            .collect();
        // A dump file exists from the first byte on: wait for a complete one.
        if let Some(done) = files.into_iter().find(|f| f.contains("Subject: sink")) {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "nothing reached smtp-sink; log:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = sink.kill();
    let _ = sink.wait();
    let text = &dumped;
    // smtp-sink's dump: the envelope, then the message.
    assert!(
        text.contains("one@sink.test") && text.contains("two@sink.test"),
        "{text}"
    );
    assert!(text.contains("Subject: sink"), "{text}");
}

/// A domain that showed TLS before is never sent to in plaintext again: a server that stops
/// offering STARTTLS gets nothing (deferred), while a domain never seen with TLS still gets
/// its mail over plaintext.
#[test]
fn the_tls_level_a_domain_showed_is_never_lowered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let plain = Scripted::start(&["250 2.1.5 ok"]);
    let zone = "\
test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300
plain.test. 300 MX 10 mx.plain.test.
fresh.test. 300 MX 10 mx.plain.test.
mx.plain.test. 300 A 127.0.0.1
";
    let dns = dns(tmp.path(), zone);
    let config = sender_config(dns.addr.port(), plain.port, "mta_sts = false", "");
    let a_dir = instance(
        "a.test",
        &[("a.test", &["alice"])],
        &config,
        "smtp = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]",
    );
    // What an earlier run learnt: plain.test had TLS.
    fs::create_dir_all(a_dir.path().join("data")).expect("data");
    fs::write(a_dir.path().join("data/tls-domains"), "plain.test tls\n").expect("memory");
    let a = Server::start(a_dir.path(), 2);

    submit(&a, &["x@plain.test", "y@fresh.test"], "downgrade");
    a.wait_log("to=<x@plain.test> attempts=1", 30);
    a.wait_log("to=<y@fresh.test> relay=mx.plain.test[127.0.0.1]", 30);
    let log = a.log();
    assert!(log.contains("does not offer STARTTLS"), "{log}");
    // The deferral says why TLS was required.
    assert!(
        log.contains(
            "(TLS required: plain.test has offered TLS before, so tls-domains requires it"
        ),
        "{log}"
    );
    // One message reached the server: fresh.test's. plain.test's never did.
    let deadline = Instant::now() + Duration::from_secs(10);
    while plain.messages().is_empty() {
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(plain.messages().len(), 1, "{}", a.log());
    // Plaintext is nothing to remember; the memory is unchanged.
    let memory = fs::read_to_string(a_dir.path().join("data/tls-domains")).expect("memory");
    assert_eq!(
        memory
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        ["plain.test tls"]
    );

    // The operator decides plain.test really lost its TLS: `postern tls list` shows the level,
    // `postern tls forget` drops it, and the running server's next retry goes in plaintext.
    let tls = |args: &[&str]| {
        Command::new(common::BINARY)
            .arg("-C")
            .arg(a_dir.path())
            .arg("tls")
            .args(args)
            .output()
            .expect("run postern tls")
    };
    let listed = tls(&["list"]);
    assert!(listed.status.success());
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "plain.test tls\n");
    let forgot = tls(&["forget", "Plain.Test"]);
    assert!(forgot.status.success(), "{forgot:?}");
    assert!(
        String::from_utf8_lossy(&forgot.stdout).starts_with("forgot Plain.Test (was tls)"),
        "{forgot:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while plain.messages().len() < 2 {
        assert!(Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    a.wait_log("to=<x@plain.test> relay=mx.plain.test[127.0.0.1]", 10);
    let again = tls(&["forget", "plain.test"]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("plain.test is not remembered"),
        "{again:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&tls(&["list"]).stdout),
        format!(
            "no domain remembered ({})\n",
            a_dir.path().join("data/tls-domains").display()
        )
    );
}

/// With the remote's CA trusted, delivery to its MX is verified TLS and remembered as such;
/// an MTA-STS policy in enforce mode that does not list a domain's MX keeps its mail queued.
#[test]
fn verified_tls_is_remembered_and_mta_sts_enforce_limits_the_mx() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ca, chain, key) = common::signed_cert(&[
        "mx.remote.test",
        "mta-sts.remote.test",
        "mta-sts.other.test",
    ]);
    fs::write(tmp.path().join("chain.pem"), &chain).expect("chain");
    fs::write(tmp.path().join("key.pem"), &key).expect("key");
    let policies = [
        "mta-sts.remote.test=version: STSv1|mode: enforce|mx: mx.remote.test|max_age: 86400|"
            .to_string(),
        "mta-sts.other.test=version: STSv1|mode: enforce|mx: *.elsewhere.test|max_age: 86400|"
            .to_string(),
    ];
    let mut args = vec![
        tmp.path().join("chain.pem").display().to_string(),
        tmp.path().join("key.pem").display().to_string(),
    ];
    args.extend(policies);
    let https = common::Script::start(common::POLICY_SERVER, &args);
    let https_port: u16 = https.line().trim().parse().expect("policy server port");

    let zone = "\
test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300
remote.test. 300 MX 10 mx.remote.test.
other.test. 300 MX 10 mx.remote.test.
mx.remote.test. 300 A 127.0.0.1
_mta-sts.remote.test. 300 TXT \"v=STSv1; id=20261128\"
_mta-sts.other.test. 300 TXT \"v=STSv1; id=1\"
mta-sts.remote.test. 300 A 127.0.0.1
mta-sts.other.test. 300 A 127.0.0.1
";
    let dns = dns(tmp.path(), zone);
    let port = closed_port();
    let b_dir = instance(
        "mx.remote.test",
        &[("remote.test", &["bob"]), ("other.test", &["carol"])],
        "",
        &format!("smtp = [\"127.0.0.1:{port}\"]"),
    );
    let certs = b_dir.path().join("certs/mx.remote.test");
    fs::write(certs.join("fullchain.pem"), &chain).expect("B chain");
    fs::write(certs.join("privkey.pem"), &key).expect("B key");
    let b = Server::start(b_dir.path(), 1);

    let config = sender_config(
        dns.addr.port(),
        port,
        &format!("tls_roots = [\"ca.pem\"]\nmta_sts_port = {https_port}"),
        "",
    );
    let a_dir = instance(
        "a.test",
        &[("a.test", &["alice"])],
        &config,
        "smtp = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]",
    );
    fs::write(a_dir.path().join("ca.pem"), &ca).expect("ca");
    let a = Server::start(a_dir.path(), 2);

    submit(&a, &["bob@remote.test", "carol@other.test"], "sts");
    let got = wait_messages(&b, "remote.test", "bob", 1, 30);
    assert!(got[0].contains("Subject: sts"), "{}", got[0]);
    a.wait_log("to=<carol@other.test> attempts=1", 30);
    // bob's delivery is logged after B has his copy: wait for the line.
    a.wait_log("to=<bob@remote.test> relay=mx.remote.test[127.0.0.1]", 10);
    let log = a.log();
    assert!(log.contains(" tls=TLSv1.3 cert=verified "), "{log}");
    assert!(
        log.contains("MTA-STS: none of the 1 MX hosts of other.test"),
        "{log}"
    );
    assert!(b.inbox("other.test", "carol").is_empty());
    let memory = fs::read_to_string(a_dir.path().join("data/tls-domains")).expect("memory");
    assert!(memory.contains("remote.test verified"), "{memory}");
}

/// A remote whose STARTTLS is broken still gets the mail, in plaintext on a second
/// connection (nothing required TLS for that domain); the sender asked for NOTIFY=SUCCESS and
/// the remote has no DSN extension, so the sender is told the message was relayed.
#[test]
fn a_broken_starttls_falls_back_to_plaintext_and_success_is_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = dns(tmp.path(), "");
    let broken = Scripted::start_with(&["250 2.1.5 ok"], true);
    let routes = format!("\"broken.test\" = \"[127.0.0.1]:{}\"", broken.port);
    let (_a_dir, a) = start_sender(&sender_config(dns.addr.port(), 25, "", &routes));
    submit_with(
        &a,
        &["x@broken.test"],
        "fallback",
        "",
        "NOTIFY=SUCCESS,FAILURE",
    );
    let reports = wait_messages(&a, "a.test", "alice", 1, 30);
    assert_eq!(broken.messages().len(), 1, "{}", a.log());
    assert!(broken.messages()[0].contains("Subject: fallback"));
    assert!(*broken.connections.lock().expect("lock") >= 2);
    let log = a.log();
    assert!(log.contains("tls-fallback id="), "{log}");
    assert!(
        log.contains("to=<x@broken.test> relay=127.0.0.1[127.0.0.1]:"),
        "{log}"
    );
    let dsn = &reports[0];
    assert!(dsn.contains("Action: relayed"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; x@broken.test"),
        "{dsn}"
    );
}

/// REQUIRETLS (RFC 8689): the message goes only over TLS that verifies; a remote whose
/// certificate does not verify never gets it.
#[test]
fn requiretls_mail_waits_for_verified_tls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let zone = "\
test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300
remote.test. 300 MX 10 mx.remote.test.
mx.remote.test. 300 A 127.0.0.1
";
    let dns = dns(tmp.path(), zone);
    let port = closed_port();
    let b_dir = instance(
        "mx.remote.test",
        &[("remote.test", &["bob"])],
        "",
        &format!("smtp = [\"127.0.0.1:{port}\"]"),
    );
    let b = Server::start(b_dir.path(), 1);
    let (_a_dir, a) = start_sender(&sender_config(dns.addr.port(), port, "mta_sts = false", ""));
    submit_with(&a, &["bob@remote.test"], "secret", "REQUIRETLS", "");
    a.wait_log("to=<bob@remote.test> attempts=1", 30);
    assert!(b.inbox("remote.test", "bob").is_empty());
    // The deferral gives the handshake's error and why verified TLS was required.
    let log = a.log();
    let line = log
        .lines()
        .find(|l| l.contains(" deferred ") && l.contains("to=<bob@remote.test>"))
        .unwrap_or_else(|| panic!("no deferred line:\n{log}"));
    assert!(line.contains("TLS handshake failed: "), "{line}");
    assert!(line.contains("certificate"), "{line}");
    assert!(
        line.contains("(TLS required: the message asks for REQUIRETLS (verified TLS))"),
        "{line}"
    );
    // Without REQUIRETLS the same remote (self-signed certificate) gets mail.
    submit(&a, &["bob@remote.test"], "plain");
    let got = wait_messages(&b, "remote.test", "bob", 1, 30);
    assert!(got[0].contains("Subject: plain"), "{}", got[0]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(b.inbox("remote.test", "bob").len(), 1, "{}", a.log());
}

/// A message still queued after `delay_warning_after` gets the sender one delay warning
/// (RFC 3464 action "delayed"), not one per attempt.
#[test]
fn a_late_message_gets_one_delay_warning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = dns(tmp.path(), "");
    let routes = format!("\"late.test\" = \"[127.0.0.1]:{}\"", closed_port());
    let (_a_dir, a) = start_sender(&sender_config(
        dns.addr.port(),
        25,
        "delay_warning_after = 1\nconnect_timeout = 2",
        &routes,
    ));
    submit(&a, &["someone@late.test"], "late");
    let warnings = wait_messages(&a, "a.test", "alice", 1, 30);
    let dsn = &warnings[0];
    assert!(dsn.contains("Action: delayed"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; someone@late.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Will-Retry-Until: "), "{dsn}");
    // More attempts follow (every 1-2 s here), without more warnings.
    a.wait_log("to=<someone@late.test> attempts=4", 30);
    assert_eq!(a.inbox("a.test", "alice").len(), 1, "{}", a.log());
}

/// A remote that accepts connections and never answers holds only its own domain's
/// connections: mail for another domain goes out meanwhile.
#[test]
fn a_stalled_remote_does_not_hold_up_other_domains() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = dns(tmp.path(), "");
    let stalled = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let stalled_port = stalled.local_addr().expect("addr").port();
    // Accept and hold every connection, saying nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in stalled.incoming().take(10) {
            held.push(s);
        }
    });
    let fast = Scripted::start(&["250 2.1.5 ok"]);
    let routes = format!(
        "\"stalled.test\" = \"[127.0.0.1]:{stalled_port}\"\n\"fast.test\" = \"[127.0.0.1]:{}\"",
        fast.port
    );
    let (_a_dir, a) = start_sender(&sender_config(
        dns.addr.port(),
        25,
        "max_connections = 2\nmax_connections_per_domain = 1",
        &routes,
    ));
    submit(&a, &["one@stalled.test"], "stalled1");
    submit(&a, &["two@stalled.test"], "stalled2");
    submit(&a, &["three@fast.test"], "fast");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fast.messages().is_empty() {
        assert!(Instant::now() < deadline, "fast.test waited: {}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(fast.messages()[0].contains("Subject: fast"));
    assert!(
        !a.log().contains("to=<one@stalled.test> relay"),
        "{}",
        a.log()
    );
}

/// `[delivery] source_ipv4` is the address outbound connections come from.
#[test]
fn outbound_connections_use_the_configured_source_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = dns(tmp.path(), "");
    let remote = Scripted::start(&["250 2.1.5 ok"]);
    let routes = format!("\"src.test\" = \"[127.0.0.1]:{}\"", remote.port);
    let (_a_dir, a) = start_sender(&sender_config(
        dns.addr.port(),
        25,
        "source_ipv4 = \"127.0.0.2\"",
        &routes,
    ));
    submit(&a, &["x@src.test"], "source");
    let deadline = Instant::now() + Duration::from_secs(30);
    while remote.messages().is_empty() {
        assert!(Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let peers = remote.peers.lock().expect("lock").clone();
    assert_eq!(peers, vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]);
}

/// SIGHUP takes `[routes]` again: mail waiting for a dead next hop goes to the new one.
#[test]
fn sighup_changes_the_routes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = dns(tmp.path(), "");
    let dead = closed_port();
    let config = |port: u16| {
        sender_config(
            dns.addr.port(),
            25,
            "connect_timeout = 2",
            &format!("\"hup.test\" = \"[127.0.0.1]:{port}\""),
        )
    };
    let (a_dir, a) = start_sender(&config(dead));
    submit(&a, &["x@hup.test"], "rerouted");
    a.wait_log("to=<x@hup.test> attempts=1", 30);
    let alive = Scripted::start(&["250 2.1.5 ok"]);
    let text = fs::read_to_string(a_dir.path().join("postern.toml")).expect("config");
    fs::write(
        a_dir.path().join("postern.toml"),
        text.replace(&format!(":{dead}\""), &format!(":{}\"", alive.port)),
    )
    .expect("rewrite");
    a.signal("HUP");
    a.wait_log("configuration reloaded", 10);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive.messages().is_empty() {
        assert!(Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(alive.messages()[0].contains("Subject: rerouted"));
}

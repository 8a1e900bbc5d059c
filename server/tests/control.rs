//! The control socket (`<data_dir>/control.sock`) and the commands that use it, against the
//! running server: `postern queue list` and `postern status` while a message waits for a
//! remote that is down; the socket is mode 0600 and refuses another user.

mod common;

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use postern::dns::test_server::TestServer;

/// `postern send-test --from FROM --password-stdin ARGS` in `dir`, the password given.
fn send_test(dir: &std::path::Path, from: &str, args: &[&str]) -> std::process::Output {
    common::with_stdin(
        Command::new(common::BINARY)
            .arg("-C")
            .arg(dir)
            .args(["send-test", "--from", from, "--password-stdin"])
            .args(args),
        &format!("{}\n", common::PASSWORD),
    )
}

/// A test DNS server whose zone sends remote.test's mail to 127.0.0.1.
fn remote_dns(dir: &std::path::Path) -> TestServer {
    let zone = dir.join("zone");
    fs::write(
        &zone,
        "test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300\n\
         remote.test. 300 MX 10 mx.remote.test.\n\
         mx.remote.test. 300 A 127.0.0.1\n",
    )
    .expect("zone");
    TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &zone).expect("dns")
}

/// `GET path` on 127.0.0.1:`port`: the whole response.
fn scrape(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut page = String::new();
    stream.read_to_string(&mut page).expect("response");
    page
}

#[test]
fn queue_list_and_status_see_a_deferred_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = remote_dns(tmp.path());
    // A port nobody listens on: the remote is down, the message waits.
    let closed = common::free_port();
    let metrics_port = common::free_port();
    let dir = common::instance(
        "a.test",
        &[("a.test", &["alice"])],
        &format!(
            "[auth]\nallow_plaintext_on_loopback = true\n[dns]\nnameservers = [\"{}\"]\n\
             [delivery]\nmx_port = {closed}\nfirst_retry = 600\nmta_sts = false\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            dns.addr
        ),
        "smtp = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]",
    );
    let server = common::Server::start(dir.path(), 2);
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="laptop.test", timeout=30)
s.login("alice@a.test", sys.argv[2])
s.sendmail("alice@a.test", ["bob@remote.test"], "From: alice@a.test\r\nSubject: " + sys.argv[3] + "\r\n\r\nx\r\n")
s.quit()
print("sent")
"#;
    let submit = |subject: &str| {
        let out = common::python(
            script,
            &[
                server.port("submission").to_string(),
                common::PASSWORD.into(),
                subject.into(),
            ],
        );
        assert_eq!(out.trim(), "sent");
    };
    submit("waits");
    server.wait_log("deferred id=", 30);

    let out = common::postern(dir.path(), &["queue", "list"]);
    let shown = common::succeeded(&out);
    assert!(shown.contains("from <alice@a.test>"), "{shown}");
    assert!(
        shown.contains("    <bob@remote.test> pending, 1 attempts, next "),
        "{shown}"
    );
    assert!(shown.contains("connect"), "the last error: {shown}");

    let out = common::postern(dir.path(), &["queue", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let entry = &list.as_array().expect("array")[0];
    assert_eq!(entry["from"], "<alice@a.test>");
    assert_eq!(entry["recipients"][0]["state"], "pending");
    assert_eq!(entry["recipients"][0]["attempts"], 1);

    let out = common::postern(dir.path(), &["status"]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{shown}");
    assert!(shown.starts_with("a.test up "), "{shown}");
    assert!(
        shown.contains(&format!(
            "listening on 127.0.0.1:{} (submission)",
            server.port("submission")
        )),
        "{shown}"
    );
    assert!(
        shown.contains("queue: 1 messages, 1 recipients pending"),
        "{shown}"
    );
    assert!(
        shown.contains("last hour: 1 received, 0 rejected, 0 delivered, 1 deferred, 0 failed"),
        "{shown}"
    );
    assert!(shown.contains("certificate: "), "{shown}");

    // The same, scraped in the OpenMetrics format with a plain HTTP client.
    let page = scrape(metrics_port, "/metrics");
    assert!(
        page.starts_with("HTTP/1.1 200 OK\r\n")
            && page.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{page}"
    );
    let body = page.split("\r\n\r\n").nth(1).expect("a body");
    for want in [
        "postern_messages_received_total 1\n",
        "postern_deliveries_total{result=\"deferred\"} 1\n",
        "postern_deliveries_total{result=\"delivered\"} 0\n",
        "postern_auth_total{result=\"ok\"} 1\n",
        "postern_queue_messages 1\n",
        "postern_queue_pending_recipients 1\n",
        "postern_sessions{listener=\"smtp\"} 0\n",
        "# TYPE postern_certificate_expiry_timestamp_seconds gauge\n",
    ] {
        assert!(body.contains(want), "{want:?} in\n{body}");
    }
    assert!(body.ends_with("# EOF\n"), "{body}");
    // The MX of remote.test and its address came from the test DNS server.
    let answers: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("postern_dns_lookups_total{result=\"answer\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no DNS answers counted in\n{body}"));
    assert!(answers >= 2, "{body}");
    assert!(
        body.contains("postern_dns_lookups_total{result=\"temporary\"} "),
        "{body}"
    );
    assert!(scrape(metrics_port, "/other").starts_with("HTTP/1.1 404 "));

    // Mode 0600, and another user is refused (the directories on the way let them pass).
    let socket = dir.path().join("data/control.sock");
    let mode = fs::metadata(&socket).expect("socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    for d in [dir.path().to_path_buf(), dir.path().join("data")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    // `queue list` as nobody: it fails, with what it said.
    let as_nobody = || {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::BINARY)
            .arg("-C")
            .arg(dir.path())
            .args(["queue", "list"])
            .output()
            .expect("run setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        stderr
    };
    let stderr = as_nobody();
    assert!(
        stderr.contains("cannot talk to the running server"),
        "{stderr}"
    );
    assert!(stderr.contains("Permission denied"), "{stderr}");
    // With the socket's mode opened up, the server still refuses another user.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).expect("chmod");
    let stderr = as_nobody();
    assert!(
        stderr.contains("user id 65534 may not use this server's control socket"),
        "{stderr}"
    );
    server.wait_log("refused a connection from user id 65534", 10);
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).expect("chmod");

    // `queue show`: the entry, and the header section as it will go out (with the Date and
    // Message-ID the server added).
    let id = entry["id"].as_str().expect("id").to_string();
    let out = common::postern(dir.path(), &["queue", "show", &id]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{shown}");
    assert!(shown.starts_with(&id), "{shown}");
    assert!(shown.contains("Subject: waits\n"), "{shown}");
    assert!(
        shown.contains(&format!("Message-ID: <{id}@a.test>")),
        "{shown}"
    );

    // `queue remove`: the sender gets a DSN; `--silent`: no DSN.
    submit("drop me");
    submit("drop me quietly");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.log().matches("deferred id=").count() < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let listed = {
        let out = common::postern(dir.path(), &["queue", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        list.as_array()
            .expect("array")
            .iter()
            .map(|e| {
                let id = e["id"].as_str().expect("id").to_string();
                let out = common::postern(dir.path(), &["queue", "show", &id]);
                (id, String::from_utf8_lossy(&out.stdout).into_owned())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(listed.len(), 3, "{listed:?}");
    let find = |subject: &str| {
        listed
            .iter()
            .find(|(_, text)| text.contains(&format!("Subject: {subject}\n")))
            .map(|(id, _)| id.clone())
            .expect("listed")
    };
    let out = common::postern(dir.path(), &["queue", "remove", &find("drop me")]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("the sender gets a DSN for 1 recipients"),
        "{out:?}"
    );
    let dsn = common::wait_messages(&server, "a.test", "alice", 1, 20);
    assert!(
        dsn[0].contains("removed from the queue by the operator"),
        "{}",
        dsn[0]
    );
    assert!(dsn[0].contains("Subject: drop me\r\n"), "{}", dsn[0]);
    let out = common::postern(
        dir.path(),
        &["queue", "remove", "--silent", &find("drop me quietly")],
    );
    assert!(out.status.success(), "{out:?}");
    let out = common::postern(dir.path(), &["queue", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let out = common::postern(dir.path(), &["queue", "remove", &find("drop me")]);
    assert_eq!(out.status.code(), Some(1), "gone already: {out:?}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        server.inbox("a.test", "alice").len(),
        1,
        "no DSN for --silent"
    );

    // The remote comes back: `queue retry` delivers now instead of in ten minutes.
    let out = common::postern(dir.path(), &["queue", "retry", "0000000000000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no message 0000000000000000"),
        "{out:?}"
    );
    // `queue hold`: no attempt until `queue release`, even when the remote is back and a
    // retry is asked for; `queue retry` takes the others.
    let out = common::postern(dir.path(), &["queue", "hold", &id]);
    assert!(out.status.success(), "{out:?}");
    submit("retry me");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.log().matches("deferred id=").count() < 4 {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = common::postern(dir.path(), &["queue", "list"]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("    <bob@remote.test> held, 1 attempts"),
        "{shown}"
    );
    let b_dir = common::instance(
        "mx.remote.test",
        &[("remote.test", &["bob"])],
        "",
        &format!("smtp = [\"127.0.0.1:{closed}\"]"),
    );
    let b = common::Server::start(b_dir.path(), 1);
    let out = common::postern(dir.path(), &["queue", "retry", "--domain", "REMOTE.test"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("1 messages due now: "),
        "{out:?}"
    );
    let got = common::wait_messages(&b, "remote.test", "bob", 1, 20);
    assert!(got[0].contains("Subject: retry me"), "{}", got[0]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(b.inbox("remote.test", "bob").len(), 1, "the held one waits");
    let out = common::postern(dir.path(), &["queue", "release", &id]);
    assert!(out.status.success(), "{out:?}");
    let got = common::wait_messages(&b, "remote.test", "bob", 2, 20);
    assert!(got.iter().any(|m| m.contains("Subject: waits")), "{got:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = common::postern(dir.path(), &["queue", "list"]);
        if String::from_utf8_lossy(&out.stdout) == "the queue is empty\n" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Without a server, the commands say so.
    drop(server);
    let out = common::postern(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is `postern serve` running"),
        "{out:?}"
    );
}

/// `postern send-test`: submits through the running server's submission port (STARTTLS,
/// AUTH), then follows the message in the queue until it leaves: exit 0 when every recipient
/// got it, 1 when one failed (and the log lines say why).
#[test]
fn send_test_follows_a_message_to_its_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = remote_dns(tmp.path());
    let port = common::free_port();
    let b_dir = common::instance(
        "mx.remote.test",
        &[("remote.test", &["bob"])],
        "",
        &format!("smtp = [\"127.0.0.1:{port}\"]"),
    );
    let b = common::Server::start(b_dir.path(), 1);
    let metrics_port = common::free_port();
    let dir = common::instance(
        "a.test",
        &[("a.test", &["alice"])],
        &format!(
            "[dns]\nnameservers = [\"{}\"]\n[delivery]\nmx_port = {port}\nmta_sts = false\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            dns.addr
        ),
        "smtp = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]",
    );
    let a = common::Server::start(dir.path(), 2);
    let send = |to: &[&str]| {
        let mut args = Vec::new();
        for t in to {
            args.extend(["--to", *t]);
        }
        send_test(dir.path(), "alice@a.test", &args)
    };
    let out = send(&["bob@remote.test"]);
    let shown = common::succeeded(&out);
    assert!(shown.contains("(submission) as alice@a.test"), "{shown}");
    assert!(shown.contains("250 2.0.0 Ok: queued as "), "{shown}");
    assert!(
        shown.contains("to=<bob@remote.test> relay=mx.remote.test[127.0.0.1]"),
        "{shown}"
    );
    assert!(shown.trim_end().ends_with("delivered"), "{shown}");
    common::wait_messages(&b, "remote.test", "bob", 1, 20);
    let status = Command::new(common::BINARY)
        .arg("-C")
        .arg(dir.path())
        .arg("status")
        .output()
        .expect("status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains("outbound: 1 of 1 deliveries over TLS (100%)"),
        "{status}"
    );

    let out = send(&["bob@remote.test", "nobody@remote.test"]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{shown}{stderr}");
    assert!(shown.contains("failed id="), "{shown}");
    assert!(shown.contains("550 5.1.1"), "{shown}");
    assert!(
        stderr.contains("1 recipient(s) failed; the sender gets a DSN"),
        "{stderr}"
    );

    // Mail from another server on port 25: a refused recipient, its checks, a Maildir copy;
    // the metrics count them by label.
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="mta.stranger.test", timeout=30)
s.ehlo()
s.mail("x@stranger.test")
print(s.rcpt("nobody@a.test")[0])
print(s.rcpt("alice@a.test")[0])
print(s.data(b"From: x@stranger.test\r\nSubject: hi\r\n\r\nhello\r\n")[0])
s.quit()
"#;
    let out = common::python(script, &[a.port("smtp").to_string()]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["550", "250", "250"],
        "{out}"
    );
    let inbox = common::wait_messages(&a, "a.test", "alice", 2, 20);
    assert!(inbox.iter().any(|m| m.contains("Subject: hi")), "{inbox:?}");
    let page = scrape(metrics_port, "/metrics");
    for want in [
        "postern_rejections_total{status=\"5.1.1\"} 1\n",
        "postern_check_results_total{check=\"spf\",result=\"none\"} 1\n",
        "postern_check_results_total{check=\"dmarc\",result=\"none\"} 1\n",
        "postern_received_tls_total{version=\"none\"} 1\n",
        "postern_deliveries_by_method_total{method=\"smtp\"} 2\n",
        "postern_relayed_tls_total{version=\"TLSv1.3\"} 2\n",
    ] {
        assert!(page.contains(want), "{want:?} in\n{page}");
    }
}

/// A data_dir whose path is too long for a socket's name: mail goes on, the log says the
/// commands cannot reach this server, and they say so too.
#[test]
fn without_a_control_socket_the_server_still_serves() {
    let dir = common::instance(
        "a.test",
        &[("a.test", &["alice"])],
        &format!("data_dir = \"{}\"\n", "d".repeat(120)),
        "smtp = [\"127.0.0.1:0\"]",
    );
    // `instance` writes its own data_dir first; the second one would be a duplicate key.
    let config = fs::read_to_string(dir.path().join("postern.toml")).expect("config");
    let config = config.replacen("data_dir = \"data\"\n", "", 1);
    fs::write(dir.path().join("postern.toml"), config).expect("config");
    let server = common::Server::start(dir.path(), 1);
    server.wait_log("cannot open the control socket", 10);
    let out = common::postern(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot talk to the running server"),
        "{out:?}"
    );
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="mta.test", timeout=30)
s.sendmail("x@mta.test", ["alice@a.test"], "Subject: still here\r\n\r\nhi\r\n")
s.quit()
print("sent")
"#;
    assert_eq!(
        common::python(script, &[server.port("smtp").to_string()]).trim(),
        "sent"
    );
    let mail = dir
        .path()
        .join("d".repeat(120))
        .join("mail/a.test/alice/new");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fs::read_dir(&mail).map_or(0, |d| d.count()) == 0 {
        assert!(std::time::Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The runs the slow command of [`a_slow_local_delivery_is_never_doubled_nor_half_removed`]
/// logged so far.
fn runs(file: &std::path::Path) -> String {
    fs::read_to_string(file).unwrap_or_default()
}

/// Waits (at most 30 s) until `file` holds `n` lines `start`.
fn wait_starts(file: &std::path::Path, n: usize) {
    for _ in 0..300 {
        if runs(file).matches("start\n").count() >= n {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the command did not start {n} times: {:?}", runs(file));
}

/// The id of the only queued message.
fn only_id(dir: &std::path::Path) -> String {
    let out = common::postern(dir, &["queue", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1, "{list:?}");
    list[0]["id"].as_str().expect("id").to_string()
}

#[test]
fn a_slow_local_delivery_is_never_doubled_nor_half_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("runs");
    let script = tmp.path().join("slow.sh");
    fs::write(
        &script,
        format!(
            "echo start >> {0}\nsleep 3\ncat > /dev/null\necho end >> {0}\n",
            log.display()
        ),
    )
    .expect("script");
    let dir = common::instance(
        "a.test",
        &[("a.test", &["alice"])],
        &format!(
            "[mailboxes]\n\"alice@a.test\" = {{ command = \"/bin/sh {}\", timeout = 60 }}\n",
            script.display()
        ),
        "smtp = [\"127.0.0.1:0\"]",
    );
    let server = common::Server::start(dir.path(), 1);
    let send = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=30)
s.sendmail("someone@client.test", ["alice@a.test"], "From: someone@client.test\r\nSubject: slow\r\n\r\nx\r\n")
s.quit()
print("sent")
"#;
    let port = server.port("smtp").to_string();
    assert_eq!(
        common::python(send, std::slice::from_ref(&port)).trim(),
        "sent"
    );

    // While the command runs, the operator asks for the message again, twice: the other
    // worker must not deliver it a second time.
    wait_starts(&log, 1);
    let id = only_id(dir.path());
    for args in [
        &["queue", "retry", id.as_str()][..],
        &["queue", "retry", "--all"],
    ] {
        let out = common::postern(dir.path(), args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    server.wait_log(&format!("delivered id={id}"), 30);
    // The retries were handed out again once the first run was over: long enough for a
    // second run to start if one were going to.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(runs(&log), "start\nend\n", "{}", server.log());

    // A removal during the delivery waits for it: the message is delivered, not also
    // bounced.
    assert_eq!(common::python(send, &[port]).trim(), "sent");
    wait_starts(&log, 2);
    let id = only_id(dir.path());
    let out = common::postern(dir.path(), &["queue", "remove", &id]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("no message {id} in the queue")),
        "{said}"
    );
    let log_text = server.log();
    assert!(
        log_text.contains(&format!("delivered id={id}")),
        "{log_text}"
    );
    assert!(!log_text.contains("failed id="), "{log_text}");
    assert!(!log_text.contains("dsn "), "{log_text}");
    assert_eq!(runs(&log), "start\nend\nstart\nend\n", "{log_text}");
}

/// The commands while messages keep arriving: each answers, and nothing is lost or doubled.
#[test]
fn the_commands_answer_under_load() {
    const MESSAGES: usize = 200;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dns = remote_dns(tmp.path());
    let closed = common::free_port();
    let dir = common::instance(
        "a.test",
        &[("a.test", &["alice"])],
        &format!(
            "[auth]\nallow_plaintext_on_loopback = true\n[dns]\nnameservers = [\"{}\"]\n\
             [delivery]\nmx_port = {closed}\nfirst_retry = 600\nmta_sts = false\n",
            dns.addr
        ),
        "smtp = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]",
    );
    let server = common::Server::start(dir.path(), 2);
    let script = r#"
import smtplib, sys
for c in range(4):
    s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="laptop.test", timeout=30)
    s.login("alice@a.test", sys.argv[2])
    for i in range(int(sys.argv[3]) // 4):
        s.sendmail("alice@a.test", ["bob@remote.test"], "From: alice@a.test\r\nSubject: load %d %d\r\n\r\nx\r\n" % (c, i))
    s.quit()
print("sent")
"#;
    let args = [
        server.port("submission").to_string(),
        common::PASSWORD.to_string(),
        MESSAGES.to_string(),
    ];
    let sender = std::thread::spawn(move || common::python(script, &args));
    let ok = |args: &[&str]| {
        let out = common::postern(dir.path(), args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let mut rounds = 0;
    while !sender.is_finished() && rounds < 200 {
        let list: serde_json::Value =
            serde_json::from_slice(&ok(&["queue", "list", "--json"])).expect("JSON");
        assert!(list.as_array().expect("array").len() <= MESSAGES);
        ok(&["status"]);
        ok(&["queue", "retry", "--all"]);
        rounds += 1;
    }
    assert_eq!(sender.join().expect("sender").trim(), "sent");
    assert!(rounds > 0, "the sender was done before any command ran");
    let list: serde_json::Value =
        serde_json::from_slice(&ok(&["queue", "list", "--json"])).expect("JSON");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), MESSAGES, "{}", server.log());
    assert!(
        list.iter()
            .all(|e| e["recipients"][0]["state"] == "pending"),
        "{list:?}"
    );
    let status = String::from_utf8_lossy(&ok(&["status"])).into_owned();
    assert!(
        status.contains(&format!(
            "queue: {MESSAGES} messages, {MESSAGES} recipients pending"
        )),
        "{status}"
    );
}

/// `send-test --check-auth`: the delivered copy checked as a receiver would, through the
/// server's DNS: a sender whose domain is set up passes; one without DKIM and outside its
/// SPF record fails DMARC, and the exit status says so.
#[test]
fn send_test_checks_auth_as_a_receiver_would() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = common::instance(
        "mx.a.test",
        &[("a.test", &["alice", "bob"]), ("c.test", &["carol"])],
        "",
        "submission = [\"127.0.0.1:0\"]",
    );
    let dkim = common::zone_line(&common::keygen(dir.path(), "a.test", "rsa", "s1"));
    let zone = tmp.path().join("zone");
    fs::write(
        &zone,
        format!(
            "test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300\n\
             mx.a.test. 300 A 192.0.2.25\n\
             a.test. 300 TXT \"v=spf1 ip4:192.0.2.25 -all\"\n\
             _dmarc.a.test. 300 TXT \"v=DMARC1; p=reject\"\n\
             c.test. 300 TXT \"v=spf1 ip4:192.0.2.25 -all\"\n\
             _dmarc.c.test. 300 TXT \"v=DMARC1; p=reject\"\n\
             {dkim}\n"
        ),
    )
    .expect("zone");
    let dns = TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &zone).expect("dns");
    let config = fs::read_to_string(dir.path().join("postern.toml")).expect("config");
    let offline = common::with_offline_dns("");
    assert!(config.contains(offline.trim()), "{config}");
    fs::write(
        dir.path().join("postern.toml"),
        config.replace(
            offline.trim(),
            &format!("[dns]\nnameservers = [\"{}\"]", dns.addr),
        ),
    )
    .expect("config");
    let _server = common::Server::start(dir.path(), 1);
    let send = |from: &str, more: &[&str]| {
        let mut args = vec!["--to", "bob@a.test", "--check-auth"];
        args.extend_from_slice(more);
        let out = send_test(dir.path(), from, &args);
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };

    // From the hostname's own address (its A record): everything passes.
    let (code, said) = send("alice@a.test", &[]);
    assert_eq!(code, Some(0), "{said}");
    for want in [
        "as a receiver would see it, sent from 192.0.2.25 (HELO mx.a.test):",
        "Authentication-Results: receiver.example;",
        "spf=pass",
        "dkim=pass",
        "header.d=a.test",
        "dmarc=pass",
        "DMARC passes",
    ] {
        assert!(said.contains(want), "{want:?} in\n{said}");
    }
    // From an address SPF does not list: SPF fails, DKIM still carries DMARC.
    let (code, said) = send("alice@a.test", &["--ip", "192.0.2.99"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("spf=fail"), "{said}");
    assert!(said.contains("dmarc=pass"), "{said}");
    // c.test has no DKIM key: nothing carries DMARC.
    let (code, said) = send("carol@c.test", &["--ip", "192.0.2.99"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("dmarc=fail"), "{said}");
    assert!(
        said.contains("DMARC would not pass (192.0.2.99: "),
        "{said}"
    );
}

//! The control socket (`<data_dir>/control.sock`) and the commands that use it, against the
//! running server: `postern queue list` and `postern status` while a message waits for a
//! remote that is down; the socket is mode 0600 and refuses another user.

mod common;

use std::fs;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use postern::dns::test_server::TestServer;

fn postern(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(common::BINARY)
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("run postern")
}

#[test]
fn queue_list_and_status_see_a_deferred_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let zone = tmp.path().join("zone");
    fs::write(
        &zone,
        "test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300\n\
         remote.test. 300 MX 10 mx.remote.test.\n\
         mx.remote.test. 300 A 127.0.0.1\n",
    )
    .expect("zone");
    let dns = TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &zone).expect("dns");
    // A port nobody listens on: the remote is down, the message waits.
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
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
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="laptop.test", timeout=30)
s.login("alice@a.test", sys.argv[2])
s.sendmail("alice@a.test", ["bob@remote.test"], "From: alice@a.test\r\nSubject: waits\r\n\r\nx\r\n")
s.quit()
print("sent")
"#;
    let out = common::python(
        script,
        &[
            server.port("submission").to_string(),
            common::PASSWORD.into(),
        ],
    );
    assert_eq!(out.trim(), "sent");
    server.wait_log("deferred id=", 30);

    let out = postern(dir.path(), &["queue", "list"]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("from <alice@a.test>"), "{shown}");
    assert!(
        shown.contains("    <bob@remote.test> pending, 1 attempts, next "),
        "{shown}"
    );
    assert!(shown.contains("connect"), "the last error: {shown}");

    let out = postern(dir.path(), &["queue", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let entry = &list.as_array().expect("array")[0];
    assert_eq!(entry["from"], "<alice@a.test>");
    assert_eq!(entry["recipients"][0]["state"], "pending");
    assert_eq!(entry["recipients"][0]["attempts"], 1);

    let out = postern(dir.path(), &["status"]);
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

    // Mode 0600, and another user is refused (the directories on the way let them pass).
    let socket = dir.path().join("data/control.sock");
    let mode = fs::metadata(&socket).expect("socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    for d in [dir.path().to_path_buf(), dir.path().join("data")] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::BINARY)
        .arg("-C")
        .arg(dir.path())
        .args(["queue", "list"])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot talk to the running server"),
        "{stderr}"
    );
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // The remote comes back: `queue retry` delivers now instead of in ten minutes.
    let out = postern(dir.path(), &["queue", "retry", "0000000000000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no message 0000000000000000"),
        "{out:?}"
    );
    let b_dir = common::instance(
        "mx.remote.test",
        &[("remote.test", &["bob"])],
        "",
        &format!("smtp = [\"127.0.0.1:{closed}\"]"),
    );
    let b = common::Server::start(b_dir.path(), 1);
    let out = postern(dir.path(), &["queue", "retry", "--domain", "REMOTE.test"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("1 messages due now: "),
        "{out:?}"
    );
    let got = common::wait_messages(&b, "remote.test", "bob", 1, 20);
    assert!(got[0].contains("Subject: waits"), "{}", got[0]);
    server.wait_log("removed id=", 10);
    let out = postern(dir.path(), &["queue", "list"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "the queue is empty\n");

    // Without a server, the commands say so.
    drop(server);
    let out = postern(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is `postern serve` running"),
        "{out:?}"
    );
}

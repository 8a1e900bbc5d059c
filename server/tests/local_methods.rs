//! Local delivery methods (`[mailboxes]`), against the real binary: a message received over
//! SMTP and delivered by LMTP to a real Dovecot (`dovecot-lmtpd`, started here on a Unix
//! socket in a temporary directory, as root, with a minimal configuration written here),
//! checked in Dovecot's Maildir; a message delivered into a command that writes it to a file;
//! and a broken `[mailboxes]` entry that stops the server with its file and line.
//!
//! Pipe aliases are not reached from SMTP yet (RCPT does not resolve aliases); the unit tests
//! of `deliver/local.rs` put an `Address::Pipe` recipient in the queue directly.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, cert, config_dir, python, write_certbot};

/// A Dovecot serving LMTP on `<dir>/lmtp`, delivering into `<dir>/mail/<domain>/<user>/`.
/// Stopped (SIGTERM, then SIGKILL) when dropped.
struct Dovecot {
    dir: tempfile::TempDir,
    child: Child,
}

impl Dovecot {
    fn start() -> Dovecot {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // Dovecot delivers as `nobody`: it must reach the mail directory.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::create_dir(root.join("mail")).expect("mkdir mail");
        fs::set_permissions(root.join("mail"), fs::Permissions::from_mode(0o1777))
            .expect("chmod mail");
        let r = root.display();
        fs::write(
            root.join("dovecot.conf"),
            format!(
                "protocols = lmtp\n\
                 base_dir = {r}/run\n\
                 state_dir = {r}/state\n\
                 log_path = {r}/dovecot.log\n\
                 ssl = no\n\
                 mail_location = maildir:{r}/mail/%d/%n\n\
                 passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
                 userdb {{\n  driver = static\n  \
                   args = uid=65534 gid=65534 home={r}/mail/%d/%n allow_all_users=yes\n}}\n\
                 service lmtp {{\n  unix_listener {r}/lmtp {{\n    mode = 0666\n  }}\n}}\n"
            ),
        )
        .expect("dovecot.conf");
        let child = Command::new("/usr/sbin/dovecot")
            .arg("-F")
            .arg("-c")
            .arg(root.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(root.join("stderr.log")).expect("log"))
            .spawn()
            .expect("/usr/sbin/dovecot runs (Debian package dovecot-lmtpd; see .ci/run)");
        let d = Dovecot { dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "Dovecot did not create its LMTP socket; log:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("lmtp")
    }

    fn log(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("dovecot.log"))
    }

    /// Waits (at most 30 s) for `n` messages in `<user>@<domain>`'s `new/`; returns them.
    fn wait_inbox(&self, domain: &str, user: &str, n: usize) -> Vec<String> {
        wait_files(
            &self
                .dir
                .path()
                .join("mail")
                .join(domain)
                .join(user)
                .join("new"),
            n,
        )
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its children; SIGKILL if it takes too long.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (at most 30 s) until `dir` holds `n` files; returns their contents, by name.
fn wait_files(dir: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut names: Vec<PathBuf> = fs::read_dir(dir)
            .map(|entries| entries.map(|e| e.expect("entry").path()).collect())
            .unwrap_or_default();
        if names.len() >= n || Instant::now() >= deadline {
            names.sort();
            return names
                .iter()
                .map(|p| fs::read_to_string(p).expect("read message"))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one message to the recipients in argv[2] (comma-separated) with smtplib.
const SEND: &str = r#"
import smtplib, sys
port, rcpts = int(sys.argv[1]), sys.argv[2].split(",")
msg = ("From: sender@client.test\r\nTo: %s\r\nSubject: local methods\r\n\r\n"
       "Hello.\r\n.leading dot\r\n" % ", ".join(rcpts)).encode()
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20)
print("refused", s.sendmail("sender@client.test", rcpts, msg))
s.quit()
"#;

/// A postern configuration directory with `mailboxes` as its `[mailboxes]` table, the local
/// domain `lmtp.test` (users alice, bob, carol) besides `localhost` (alice).
fn postern_dir(mailboxes: &str) -> tempfile::TempDir {
    let dir = config_dir(&format!("[mailboxes]\n{mailboxes}\n"));
    let root = dir.path();
    write_certbot(&root.join("certs/localhost"), &cert(&["localhost"]));
    fs::create_dir_all(root.join("domains/lmtp.test")).expect("mkdir domain");
    fs::write(root.join("domains/lmtp.test/users"), "alice\nbob\ncarol\n").expect("users");
    dir
}

#[test]
fn lmtp_delivery_to_dovecot() {
    let dovecot = Dovecot::start();
    let dir = postern_dir(&format!(
        "\"lmtp.test\" = {{ lmtp = \"unix:{}\" }}\n\"bob@lmtp.test\" = {{ maildir = true }}",
        dovecot.socket().display()
    ));
    let server = Server::start(dir.path(), 2);
    let out = python(
        SEND,
        &[
            server.port("smtp").to_string(),
            "alice@lmtp.test,carol@lmtp.test,bob@lmtp.test".into(),
        ],
    );
    assert!(out.contains("refused {}"), "{out}");

    // alice and carol were sent in one LMTP transaction: one copy for both, which names
    // neither (Dovecot adds Delivered-To only to a copy for one recipient).
    for user in ["alice", "carol"] {
        let inbox = dovecot.wait_inbox("lmtp.test", user, 1);
        assert_eq!(
            inbox.len(),
            1,
            "{user}: Dovecot log:\n{}\npostern log:\n{}",
            dovecot.log(),
            server.log()
        );
        let m = &inbox[0];
        // Dovecot, the final delivery agent, adds Return-Path and its Received.
        assert!(
            m.starts_with("Return-Path: <sender@client.test>\nReceived: from localhost\n"),
            "{m}"
        );
        assert!(
            m.contains(
                "Received: from client.test ([127.0.0.1])\n\tby localhost (postern) with ESMTP id "
            ),
            "{m}"
        );
        assert!(
            m.ends_with("Subject: local methods\n\nHello.\n.leading dot\n"),
            "{m}"
        );
    }
    // bob is exempt from his domain's LMTP: his copy is in postern's Maildir.
    let bob = server.wait_inbox("lmtp.test", "bob", 1);
    assert_eq!(bob.len(), 1, "{}", server.log());
    assert!(
        bob[0].starts_with("Return-Path: <sender@client.test>\r\nDelivered-To: bob@lmtp.test\r\n"),
        "{}",
        bob[0]
    );
    assert!(dovecot.wait_inbox("lmtp.test", "bob", 0).is_empty());
    server.wait_log("removed id=", 30);

    // A copy for one recipient: Delivered-To from Dovecot, and our Received names alice.
    let out = python(
        SEND,
        &[server.port("smtp").to_string(), "alice@lmtp.test".into()],
    );
    assert!(out.contains("refused {}"), "{out}");
    let inbox = dovecot.wait_inbox("lmtp.test", "alice", 2);
    assert_eq!(inbox.len(), 2, "{}", server.log());
    let m = inbox
        .iter()
        .find(|m| m.contains("Delivered-To:"))
        .unwrap_or_else(|| panic!("no copy with Delivered-To: {inbox:?}"));
    assert!(
        m.starts_with("Return-Path: <sender@client.test>\nDelivered-To: alice@lmtp.test\n"),
        "{m}"
    );
    assert!(m.contains("\tfor <alice@lmtp.test>; "), "{m}");

    let log = server.log();
    for user in ["alice", "carol"] {
        let line = log
            .lines()
            .find(|l| l.contains("delivered id=") && l.contains(&format!("to=<{user}@lmtp.test>")))
            .unwrap_or_else(|| panic!("no delivered line for {user}:\n{log}"));
        assert!(
            line.contains("lmtp=unix:") && line.contains("reply=\"250 2.0.0"),
            "{line}"
        );
    }
}

#[test]
fn command_delivery_writes_a_file() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let dir = postern_dir(&format!(
        "\"alice@localhost\" = {{ command = \"/bin/sh -c 'cat > \\\"$1\\\"' sh {}/%to_user%-at-%to_domain%.eml\", timeout = 30 }}",
        out_dir.path().display()
    ));
    let server = Server::start(dir.path(), 2);
    let out = python(
        SEND,
        &[server.port("smtp").to_string(), "alice@localhost".into()],
    );
    assert!(out.contains("refused {}"), "{out}");
    let file = out_dir.path().join("alice-at-localhost.eml");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(file.exists() && server.log().contains("removed id=")) {
        assert!(
            Instant::now() < deadline,
            "no delivery by command; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = fs::read_to_string(&file).expect("the command wrote the message");
    assert!(
        m.starts_with(
            "Return-Path: <sender@client.test>\nDelivered-To: alice@localhost\n\
             Received: from client.test ([127.0.0.1])\n"
        ),
        "{m}"
    );
    assert!(
        m.ends_with("Subject: local methods\n\nHello.\n.leading dot\n"),
        "{m}"
    );
    assert!(
        server.inbox("localhost", "alice").is_empty(),
        "not in the Maildir"
    );
    assert!(
        server
            .log()
            .contains("to=<alice@localhost> command=\"exit status 0"),
        "{}",
        server.log()
    );
}

#[test]
fn a_broken_mailboxes_entry_names_its_line() {
    let dir = postern_dir("\"lmtp.test\" = { lmtp = \"dovecot\" }");
    let out = Command::new(common::BINARY)
        .arg("-C")
        .arg(dir.path())
        .arg("serve")
        .stdin(Stdio::null())
        .output()
        .expect("postern runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // config_dir writes hostname and data_dir on lines 1 and 2, then the table.
    assert!(
        stderr.contains(
            "postern.toml, line 4: [mailboxes] \"lmtp.test\": \"dovecot\" is not an LMTP address"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("unix:/run/dovecot/lmtp"), "{stderr}");
}

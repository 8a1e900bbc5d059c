//! The blocking `std::net` example (examples/sink.rs) receives a message from Python's
//! smtplib: the core runs under a plain thread-per-connection loop.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn python_smtplib_sends_through_the_std_net_sink() {
    // `cargo test` builds the examples next to the test binaries' directory.
    let exe = std::env::current_exe().unwrap();
    let sink = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/sink");
    if !sink.exists() {
        // Built by a plain `cargo test`; not when only this test target was asked for.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "postern-proto-core", "--example", "sink"])
            .status()
            .unwrap();
        assert!(st.success());
    }
    assert!(sink.exists(), "example not built at {}", sink.display());
    let dir = std::env::temp_dir().join(format!("postern-sink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(&sink)
        .args(["127.0.0.1:0", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _guard = Kill(child);
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = format!(
        r#"
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "a@example.org"
m["To"] = "b@example.net"
m["Subject"] = "sink test"
m.set_content(".leading dot\nsecond line\n")
with smtplib.SMTP("{host}", {port}, timeout=10) as s:
    s.ehlo("client.test")
    assert s.has_extn("pipelining") and s.has_extn("8bitmime"), s.esmtp_features
    code, text = s.noop()
    assert code == 250, (code, text)
    refused = s.send_message(m)
    assert refused == {{}}, refused
print("sent")
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = std::fs::read_to_string(dir.join("0.eml")).unwrap();
    assert!(stored.contains("Subject: sink test\r\n"), "{stored}");
    assert!(
        stored.contains("\r\n.leading dot\r\nsecond line\r\n"),
        "dot-unstuffed: {stored:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

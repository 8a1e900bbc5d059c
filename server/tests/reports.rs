//! DMARC and TLS reports mailed to a `[reports]` address on port 25: still delivered as the
//! aliases say, kept, and shown by `postern reports` (text and JSON), with the domain and
//! span filters.

mod common;

use std::fs;
use std::path::Path;

/// Sends the file `sample` (a report as some receiver mailed it) to `to` on port 25.
fn send(port: u16, to: &str, sample: &Path) {
    let script = r#"
import re, smtplib, sys
# The samples are stored with LF line ends; SMTP wants CRLF.
body = re.sub(rb"\r?\n", b"\r\n", open(sys.argv[3], "rb").read())
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="mx.reporter.test", timeout=30)
s.sendmail("noreply-dmarc@reporter.test", [sys.argv[2]], body)
s.quit()
print("sent")
"#;
    let out = common::python(
        script,
        &[
            port.to_string(),
            to.to_string(),
            sample.display().to_string(),
        ],
    );
    assert_eq!(out.trim(), "sent");
}

fn suite(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../conformance/suites/dmarc/reports")
        .join(name)
}

#[test]
fn reports_mailed_to_a_report_address_show_up_in_postern_reports() {
    let dir = common::instance(
        "mx.a.test",
        &[("a.test", &["alice"])],
        "[reports]\naddresses = [\"RUA@a.test\"]\n",
        "smtp = [\"127.0.0.1:0\"]",
    );
    fs::write(dir.path().join("domains/a.test/aliases"), "rua: alice\n").expect("aliases");
    let server = common::Server::start(dir.path(), 1);
    let port = server.port("smtp");
    send(port, "rua@a.test", &suite("mail-auth/100.eml"));
    send(port, "rua@a.test", &suite("postern/tlsrpt-failure.eml"));
    send(port, "rua@a.test", &suite("mail-auth-arf/004.eml"));
    // Mail to another address is not read as a report, even if it is one.
    send(port, "alice@a.test", &suite("mail-auth/101.eml"));
    server.wait_log("report id=", 20);
    common::wait_messages(&server, "a.test", "alice", 4, 20);
    for _ in 0..100 {
        if server.log().matches("report id=").count() >= 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = server.log();
    assert!(
        log.contains("report id=") && log.contains(" kind=dmarc "),
        "{log}"
    );
    assert!(
        log.contains(" kind=tls ") && log.contains("domain=example.org"),
        "{log}"
    );
    assert!(
        log.contains(" kind=failure ") && log.contains("domain=interpublication.org"),
        "{log}"
    );
    assert_eq!(log.matches("report id=").count(), 3, "{log}");

    let reports = |args: &[&str]| {
        let mut all = vec!["reports", "--no-dns"];
        all.extend_from_slice(args);
        common::succeeded(&common::postern(dir.path(), &all))
    };
    let text = reports(&[]);
    assert!(text.contains("DMARC "), "{text}");
    assert!(text.contains(" reports "), "{text}");
    assert!(
        text.contains(
            "TLS example.org (reported by Company-X): 5326 sessions succeeded, 303 failed"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "  certificate-expired at mx.example.org: 200 sessions (from 2001:db8:abcd:12::1)"
        ),
        "{text}"
    );

    assert!(
        text.contains(
            "  starttls-not-supported at mx.example.org: 103 sessions (from 198.51.100.62)"
        ),
        "{text}"
    );
    assert!(
        text.contains("failure report interpublication.org: dmarc failed for mail from 148.163.85.135 (envelope from info@interpublication.org)"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&reports(&["--json"])).expect("JSON");
    let dmarc = json["dmarc"].as_array().expect("dmarc");
    assert!(!dmarc.is_empty(), "{json}");
    let domain = dmarc[0]["domain"].as_str().expect("domain").to_string();
    let messages: u64 = dmarc
        .iter()
        .map(|s| s["messages"].as_u64().unwrap_or(0))
        .sum();
    assert!(messages > 0, "{json}");
    // Only the report sent to the report address: 101.eml's rows are not there.
    let rows = fs::read_to_string(dir.path().join("data/reports/dmarc.jsonl")).expect("rows");
    assert!(
        rows.lines()
            .all(|l| l.contains(&format!("\"domain\":\"{domain}\""))),
        "{rows}"
    );

    // The filters: another domain, and a span that ends before now.
    assert_eq!(
        reports(&["nobody.test"]),
        "no reports received in that span\n"
    );
    let only = reports(&["example.org"]);
    assert!(only.starts_with("TLS example.org"), "{only}");
    assert!(reports(&["--since", "7d"]).contains("TLS example.org"));
    let out = common::postern(dir.path(), &["reports", "--since", "soon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since \"soon\""));
}

/// `deliver = false`: a report is kept and answered 250 without being queued or delivered;
/// a message that is not a report is refused (nothing is lost without a word); a message
/// for a report address and a user is delivered to the user and still read.
#[test]
fn reports_can_be_kept_without_delivery() {
    let dir = common::instance(
        "mx.a.test",
        // rua@ is neither a user nor an alias: a kept-only report address needs neither.
        &[("a.test", &["alice"])],
        "[reports]\naddresses = [\"rua@a.test\"]\ndeliver = false\n",
        "smtp = [\"127.0.0.1:0\"]",
    );
    let server = common::Server::start(dir.path(), 1);
    let port = server.port("smtp");
    let script = r#"
import re, smtplib, sys
body = re.sub(rb"\r?\n", b"\r\n", open(sys.argv[2], "rb").read()) if sys.argv[2] != "-" else b"Subject: hi\r\n\r\nnot a report\r\n"
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="mx.reporter.test", timeout=30)
try:
    s.sendmail("noreply@reporter.test", sys.argv[3].split(","), body)
    print("sent")
except smtplib.SMTPException as e:
    print("refused", e)
s.quit()
"#;
    let send = |sample: &str, to: &str| {
        common::python(
            script,
            &[port.to_string(), sample.to_string(), to.to_string()],
        )
    };
    let tls = suite("postern/tlsrpt-failure.eml").display().to_string();
    assert_eq!(send(&tls, "rua@a.test").trim(), "sent");
    let said = send("-", "rua@a.test");
    assert!(said.contains("refused") && said.contains("5.6.0"), "{said}");
    assert_eq!(send(&tls, "rua@a.test,alice@a.test").trim(), "sent");
    common::wait_messages(&server, "a.test", "alice", 1, 20);
    for _ in 0..100 {
        if server.log().matches(" kind=tls ").count() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = server.log();
    assert_eq!(log.matches(" kind=tls ").count(), 2, "{log}");
    // Nothing for rua@ was delivered; only alice's copy was queued.
    assert!(server.inbox("a.test", "rua").is_empty(), "{log}");
    assert_eq!(log.matches("queued id=").count(), 1, "{log}");
    let out = common::postern(dir.path(), &["reports", "--no-dns"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(
            "TLS example.org (reported by Company-X): 10652 sessions succeeded, 606 failed"
        ),
        "{text}"
    );
}

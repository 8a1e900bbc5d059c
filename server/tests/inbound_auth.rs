//! Mail authentication end to end, over loopback only: postern A signs what alice submits
//! and delivers it to postern B, which checks SPF, DKIM and DMARC against a test DNS server
//! (src/dns/test_server.rs) publishing A's keys and policies; B's Maildir copy carries the
//! results. Forged mail sent straight to B is refused (DMARC p=reject, SPF -all) or has its
//! forged results removed.

mod common;

use postern::dns::test_server;

use std::fs;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{BINARY, Server, instance, keygen, wait_messages, zone_line};

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

/// Sends a message straight to `port` (no TLS, no AUTH) with EHLO `helo`, MAIL FROM
/// `sender` and the header section `header`; prints "sent" or the refusing reply's code and
/// text.
const SEND: &str = r#"
import smtplib, sys
port, helo, sender, rcpt, header = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
msg = header.replace("\n", "\r\n") + "\r\nHello B.\r\n"
s = smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=30)
try:
    s.sendmail(sender, [rcpt], msg)
    print("sent")
except smtplib.SMTPRecipientsRefused as e:
    code, text = list(e.recipients.values())[0]
    print(code, text.decode())
except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as e:
    print(e.smtp_code, e.smtp_error.decode())
s.quit()
"#;

fn send(b: &Server, helo: &str, sender: &str, header: &str) -> String {
    common::python(
        SEND,
        &[
            b.port("smtp").to_string(),
            helo.to_string(),
            sender.to_string(),
            "bob@b.test".to_string(),
            header.to_string(),
        ],
    )
    .trim()
    .to_string()
}

/// Submits from alice@a.test to bob@b.test through A's submission port (STARTTLS, AUTH);
/// with a second argument `bare`, a message without Date and Message-ID.
const SUBMIT: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
if sys.argv[2:] == ["bare"]:
    msg = ("From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: bare\r\n"
           "\r\nNo Date, no Message-ID.\r\n")
else:
    msg = ("Authentication-Results: A.TEST; dkim=pass (claimed by the sender)\r\n"
           "From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: signed  mail\r\n"
           "Message-ID: <1@a.test>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
           "\r\nHello from A,  with a signature.\r\n.leading dot\r\n")
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30)
s.starttls(context=ssl._create_unverified_context())
s.ehlo()
s.login("alice@a.test", "pw-for-tests")
s.sendmail("alice@a.test", ["bob@b.test"], msg)
s.quit()
print("sent")
"#;

#[test]
fn signed_mail_passes_and_forgeries_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let b_port = free_port();

    // A: a.test, alice, two keys (every key signs).
    let a_dir = tempfile::tempdir().expect("tempdir");
    let a_root = a_dir.path();
    fs::create_dir_all(a_root.join("domains/a.test")).expect("domain");
    let ed = keygen(a_root, "a.test", "ed25519", "ed1");
    let rsa = keygen(a_root, "a.test", "rsa2048", "rsa1");

    let zone = format!(
        "test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300\n\
         a.test. 300 TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
         _dmarc.a.test. 300 TXT \"v=DMARC1; p=reject\"\n\
         {}\n{}\n\
         b.test. 300 MX 10 mx.b.test.\n\
         mx.b.test. 300 A 127.0.0.1\n\
         stranger.test. 300 TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
         nospf.test. 300 TXT \"v=spf1 -all\"\n\
         quarantined.test. 300 TXT \"v=spf1 -all\"\n\
         _dmarc.quarantined.test. 300 TXT \"v=DMARC1; p=quarantine\"\n",
        zone_line(&ed),
        zone_line(&rsa),
    );
    let zone_file = tmp.path().join("zone");
    fs::write(&zone_file, zone).expect("zone");
    let dns =
        test_server::TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &zone_file).expect("dns");
    let dns_table = format!("[dns]\nnameservers = [\"{}\"]\n", dns.addr);

    // A's configuration, written over the directory keygen used (it has the keys).
    let a_template = instance(
        "a.test",
        &[("a.test", &["alice"])],
        &format!(
            "[auth]\nallow_plaintext_on_loopback = true\n{dns_table}\
             [delivery]\nmx_port = {b_port}\nfirst_retry = 1\nmax_retry_interval = 2\n"
        ),
        "smtp = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]",
    );
    copy_dir(a_template.path(), a_root);
    let a = Server::start(a_root, 2);

    let b_dir = instance(
        "mx.b.test",
        &[("b.test", &["bob"])],
        &dns_table,
        &format!("smtp = [\"127.0.0.1:{b_port}\"]"),
    );
    let b = Server::start(b_dir.path(), 1);

    // 1. Signed by A, verified by B.
    let out = common::python(SUBMIT, &[a.port("submission").to_string()]);
    assert_eq!(out.trim(), "sent");
    let got = wait_messages(&b, "b.test", "bob", 1, 30);
    let text = &got[0];
    assert_eq!(
        text.matches("DKIM-Signature: v=1;").count(),
        2,
        "one signature per key: {text}"
    );
    let results = field(text, "Authentication-Results");
    assert!(results.starts_with("mx.b.test;"), "{results}");
    assert_eq!(
        results.matches("dkim=pass").count(),
        2,
        "both signatures: {results}"
    );
    for want in [
        "spf=pass",
        "smtp.mailfrom=alice@a.test",
        "smtp.helo=a.test",
        "dmarc=pass",
        "header.from=a.test",
        "policy.dmarc=reject",
        "arc=none",
    ] {
        assert!(results.contains(want), "{want} missing: {results}");
    }
    // B's own results only: the sender's claim in A's name was removed by A.
    assert_eq!(text.matches("Authentication-Results:").count(), 1, "{text}");
    assert!(!text.contains("claimed by the sender"), "{text}");
    a.wait_log("forged_results_removed=1", 10);
    let spf = field(text, "Received-SPF");
    assert!(
        spf.starts_with("pass (mx.b.test: domain of alice@a.test"),
        "{spf}"
    );
    assert!(spf.contains("client-ip=127.0.0.1"), "{spf}");
    // The copy B stored verifies on its own: `postern dkim verify` on B's configuration
    // (whose resolver is the test DNS server).
    let stored = b_dir.path().join("copy.eml");
    fs::write(&stored, text).expect("copy");
    let out = Command::new(BINARY)
        .arg("-C")
        .arg(b_dir.path())
        .args(["dkim", "verify"])
        .arg(&stored)
        .stdin(Stdio::null())
        .output()
        .expect("run postern");
    let verify = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{verify}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(verify.matches("pass").count(), 2, "{verify}");
    b.wait_log(
        "auth=\"spf=pass helo-spf=pass dkim=pass:a.test,pass:a.test arc=none dmarc=pass",
        10,
    );
    assert_eq!(common::dkimpy("dkim", &zone_file, text), "pass\npass\n");

    // 1b. A message without Date and Message-ID gets both from A (an MSA), before signing:
    //     B and dkimpy verify signatures that cover them.
    let out = common::python(
        SUBMIT,
        &[a.port("submission").to_string(), "bare".to_string()],
    );
    assert_eq!(out.trim(), "sent");
    let got = wait_messages(&b, "b.test", "bob", 2, 30);
    let bare = got
        .iter()
        .find(|m| m.contains("Subject: bare"))
        .expect("the bare message");
    let id = field(bare, "Message-ID");
    assert!(
        id.starts_with('<') && id.ends_with("@a.test>"),
        "{id}\n{bare}"
    );
    assert!(field(bare, "Date").ends_with(" +0000"), "{bare}");
    let signature = field(bare, "DKIM-Signature").to_ascii_lowercase();
    assert!(
        signature.contains("date") && signature.contains("message-id"),
        "h= covers them: {signature}"
    );
    assert_eq!(
        field(bare, "Authentication-Results")
            .matches("dkim=pass")
            .count(),
        2,
        "{bare}"
    );
    assert_eq!(common::dkimpy("dkim", &zone_file, bare), "pass\npass\n");

    // 2. A forged copy from a stranger's address (SPF passes for stranger.test, but nothing
    //    aligns with a.test): refused per a.test's p=reject.
    let forged = "From: Alice <alice@a.test>\nTo: bob@b.test\nSubject: forged\n";
    let reply = send(&b, "stranger.test", "mallory@stranger.test", forged);
    assert!(reply.starts_with("550 5.7.1 "), "{reply}");
    assert!(reply.contains("DMARC policy of a.test"), "{reply}");

    // 3. SPF -all for the MAIL FROM domain: refused at MAIL with 5.7.23.
    let reply = send(
        &b,
        "stranger.test",
        "mallory@nospf.test",
        "From: m@nospf.test\n",
    );
    assert!(reply.starts_with("550 5.7.23 "), "{reply}");

    // 4. Results forged in B's name are removed; B's own are added. p=quarantine failures
    //    are accepted and marked (SPF fails but only marks: the quarantine domain is not the
    //    MAIL FROM domain).
    let header = "Authentication-Results: MX.B.TEST; dkim=pass header.d=a.test\n\
                  Authentication-Results: elsewhere.test; spf=pass\n\
                  From: q@quarantined.test\nSubject: marked\n";
    let reply = send(&b, "stranger.test", "mallory@stranger.test", header);
    assert_eq!(reply, "sent");
    let got = wait_messages(&b, "b.test", "bob", 3, 30);
    let text = got
        .iter()
        .find(|m| m.contains("Subject: marked"))
        .expect("the marked message");
    assert!(
        !text.contains("MX.B.TEST; dkim=pass"),
        "forgery kept: {text}"
    );
    assert!(
        text.contains("Authentication-Results: elsewhere.test; spf=pass\r\n"),
        "{text}"
    );
    let results = field(text, "Authentication-Results");
    assert!(results.starts_with("mx.b.test;"), "{results}");
    for want in [
        "dkim=none",
        "spf=pass",
        "dmarc=fail",
        "policy.dmarc=quarantine",
    ] {
        assert!(results.contains(want), "{want} missing: {results}");
    }
    b.wait_log("forged_results_removed=1", 10);
}

/// The unfolded value of the first `name:` field of `message`.
fn field(message: &str, name: &str) -> String {
    let start = message
        .find(&format!("{name}: "))
        .unwrap_or_else(|| panic!("no {name} in {message}"));
    let rest = &message[start + name.len() + 2..];
    let mut value = String::new();
    for (i, line) in rest.split("\r\n").enumerate() {
        if i > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        value.push_str(line.trim_start());
        value.push(' ');
    }
    value.trim_end().to_string()
}

/// Copies the files of `from` into `to` (keeping what `to` has).
fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A key that cannot be used (here: not a key at all), put in place while the server runs
/// (at startup it would refuse to start), fails the signing, and the submission is answered
/// 451: the message never goes out unsigned.
#[test]
fn a_signing_failure_defers_the_submission() {
    let a_dir = instance(
        "a.test",
        &[("a.test", &["alice"])],
        "[auth]\nallow_plaintext_on_loopback = true\n",
        "submission = [\"127.0.0.1:0\"]",
    );
    let a = Server::start(a_dir.path(), 1);
    let keys = a_dir.path().join("domains/a.test/dkim");
    fs::create_dir_all(&keys).expect("mkdir");
    fs::write(keys.join("broken.pem"), "not a key\n").expect("write");
    let script = SUBMIT.replace(
        "s.sendmail(\"alice@a.test\", [\"bob@b.test\"], msg)\ns.quit()\nprint(\"sent\")",
        "try:\n    s.sendmail(\"alice@a.test\", [\"bob@b.test\"], msg)\n    print(\"sent\")\n\
         except smtplib.SMTPDataError as e:\n    print(e.smtp_code, e.smtp_error.decode())",
    );
    let out = common::python(&script, &[a.port("submission").to_string()]);
    assert!(out.trim().starts_with("451 4.3.0 "), "{out}");
    a.wait_log("reason=\"dkim signing: ", 10);
    assert!(a.log().contains("broken.pem"), "{}", a.log());
    assert!(!a.log().contains("queued id="), "{}", a.log());
}

/// A DNS server failure makes SPF a temporary error: accepted and marked by default,
/// answered 451 4.4.3 with `temperror = "defer"`; never a permanent refusal.
#[test]
fn dns_failures_are_accepted_or_deferred_never_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let zone_file = tmp.path().join("zone");
    fs::write(
        &zone_file,
        "test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300\n\
         broken.test. 300 SERVFAIL\n",
    )
    .expect("zone");
    let dns =
        test_server::TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &zone_file).expect("dns");
    let dns_table = format!("[dns]\nnameservers = [\"{}\"]\n", dns.addr);
    let start = |checks: &str| {
        let dir = instance(
            "mx.b.test",
            &[("b.test", &["bob"])],
            &format!("{dns_table}{checks}"),
            "smtp = [\"127.0.0.1:0\"]",
        );
        let server = Server::start(dir.path(), 1);
        (dir, server)
    };
    let header = "From: x@broken.test\nSubject: dns trouble\n";

    let (_accepting_dir, accepting) = start("");
    let reply = send(&accepting, "helo.broken.test", "x@broken.test", header);
    assert_eq!(reply, "sent");
    let got = wait_messages(&accepting, "b.test", "bob", 1, 30);
    let results = field(&got[0], "Authentication-Results");
    assert!(results.contains("spf=temperror"), "{results}");
    assert!(
        field(&got[0], "Received-SPF").starts_with("temperror "),
        "{got:?}"
    );

    let (_deferring_dir, deferring) = start("[checks]\ntemperror = \"defer\"\n");
    let reply = send(&deferring, "helo.broken.test", "x@broken.test", header);
    assert!(reply.starts_with("451 4.4.3 "), "{reply}");
    assert!(deferring.inbox("b.test", "bob").is_empty());
}

/// A client on port 25 whose reverse name is forward-confirmed (its PTR name has its
/// address) is named in `Received:` and in the log, as `name [address]`; one whose PTR name
/// does not point back is shown by its address alone.
#[test]
fn received_names_a_client_only_by_a_confirmed_reverse_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let zone_file = tmp.path().join("zone");
    fs::write(
        &zone_file,
        "test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300\n\
         1.0.0.127.in-addr.arpa. 300 PTR mta.client.test.\n\
         2.0.0.127.in-addr.arpa. 300 PTR mta.client.test.\n\
         mta.client.test. 300 A 127.0.0.1\n",
    )
    .expect("zone");
    let dns =
        test_server::TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &zone_file).expect("dns");
    let dir = instance(
        "mx.b.test",
        &[("b.test", &["bob"])],
        &format!("[dns]\nnameservers = [\"{}\"]\n", dns.addr),
        "smtp = [\"127.0.0.1:0\"]",
    );
    let b = Server::start(dir.path(), 1);
    let script = r#"
import smtplib, sys
port, source, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = smtplib.SMTP("127.0.0.1", port, local_hostname="helo.client.test", timeout=30,
                 source_address=(source, 0))
s.sendmail("x@client.test", ["bob@b.test"], "Subject: " + subject + "\r\n\r\nhi\r\n")
s.quit()
print("sent")
"#;
    let port = b.port("smtp").to_string();
    for (source, subject) in [("127.0.0.1", "confirmed"), ("127.0.0.2", "unconfirmed")] {
        let out = common::python(script, &[port.clone(), source.into(), subject.into()]);
        assert_eq!(out.trim(), "sent");
    }
    let got = wait_messages(&b, "b.test", "bob", 2, 30);
    let of = |subject: &str| {
        got.iter()
            .find(|m| m.contains(&format!("Subject: {subject}\r\n")))
            .unwrap_or_else(|| panic!("no {subject} in {got:?}"))
    };
    let confirmed = field(of("confirmed"), "Received");
    assert!(
        confirmed.starts_with("from helo.client.test (mta.client.test [127.0.0.1])"),
        "{confirmed}"
    );
    let unconfirmed = field(of("unconfirmed"), "Received");
    assert!(
        unconfirmed.starts_with("from helo.client.test ([127.0.0.2])"),
        "{unconfirmed}"
    );
    assert!(
        b.log().contains(" client_name=mta.client.test "),
        "{}",
        b.log()
    );
}

//! Aliases and forwarding end to end, over loopback: a stranger's mail to anything@ours.test
//! (a catch-all to an outside mailbox) leaves postern A with an SRS sender and reaches the
//! outside server B; a bounce to that SRS address comes back to A and goes on to the original
//! sender; a forged SRS address is refused; aliases to local users, suffixes and dropped dots.

mod common;

use postern::dns::test_server;

use std::fs;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use common::{Server, instance};

/// One SMTP transaction on `port` as a stranger (no AUTH): returns each reply code line.
fn transaction(port: u16, from: &str, to: &[&str], body: &str) -> Vec<String> {
    let script = r#"
import smtplib, sys
port, sender, body = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rcpts = sys.argv[4:]
s = smtplib.SMTP("127.0.0.1", port, local_hostname="mta.stranger.test", timeout=30)
s.ehlo()
print(s.mail(sender)[0])
ok = []
for r in rcpts:
    code, text = s.rcpt(r)
    print(code, text.decode())
    if code == 250:
        ok.append(r)
if ok:
    print(s.data(body.encode())[0])
s.quit()
"#;
    let mut args = vec![port.to_string(), from.to_string(), body.to_string()];
    args.extend(to.iter().map(|t| t.to_string()));
    common::python(script, &args)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn catch_all_forwarding_with_srs_and_its_bounce() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let zone = "\
test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300
outside.test. 300 MX 10 mx.outside.test.
stranger.test. 300 MX 10 mx.outside.test.
mx.outside.test. 300 A 127.0.0.1
";
    fs::write(tmp.path().join("zone"), zone).expect("zone");
    let dns =
        test_server::TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &tmp.path().join("zone"))
            .expect("dns");
    // B: the outside world (the forwarding target and the original sender's domain).
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let b_dir = instance(
        "mx.outside.test",
        &[("outside.test", &["me"]), ("stranger.test", &["someone"])],
        "",
        &format!("smtp = [\"127.0.0.1:{port}\"]"),
    );
    let b = Server::start(b_dir.path(), 1);
    // A: ours.test, every address forwarded to me@outside.test, except alice (local).
    let a_config = format!(
        "[dns]\nnameservers = [\"127.0.0.1:{}\"]\n[delivery]\nmx_port = {port}\nmta_sts = false\n",
        dns.addr.port()
    );
    let a_dir = instance(
        "mx.ours.test",
        &[("ours.test", &["alice"])],
        &a_config,
        "smtp = [\"127.0.0.1:0\"]",
    );
    fs::write(
        a_dir.path().join("domains/ours.test/aliases"),
        "# everything else goes to the outside mailbox\n\
         sales: alice, me@outside.test\n\
         *: me@outside.test\n",
    )
    .expect("aliases");
    let a = Server::start(a_dir.path(), 1);
    let a_port = a.port("smtp");

    let body = "From: someone@stranger.test\r\nSubject: hello\r\n\r\nforward me\r\n";
    let r = transaction(
        a_port,
        "someone@stranger.test",
        &[
            "anything@ours.test",
            "a.l.i.c.e+tag@ours.test",
            "sales@ours.test",
        ],
        body,
    );
    assert_eq!(r[0], "250");
    assert!(r[1..4].iter().all(|l| l.starts_with("250")), "{r:?}");
    assert_eq!(r[4], "250");

    // One copy each: alice is reached twice (as a.l.i.c.e+tag, and through "sales"), the
    // outside mailbox twice (anything@, sales@); a transaction delivers once per destination.
    let alice = common::wait_messages(&a, "ours.test", "alice", 1, 30);
    assert!(alice[0].contains("Subject: hello"));
    let got = common::wait_messages(&b, "outside.test", "me", 1, 30);
    let copy = &got[0];
    assert!(copy.contains("Subject: hello\r\n"), "{copy}");
    let return_path = copy
        .lines()
        .find_map(|l| l.strip_prefix("Return-Path: <"))
        .and_then(|l| l.strip_suffix('>'))
        .expect("Return-Path")
        .to_string();
    assert!(
        return_path.starts_with("SRS0=")
            && return_path.ends_with("=stranger.test=someone@ours.test"),
        "{return_path}"
    );
    // The log says where the copy went, for which address, and with which sender.
    a.wait_log("to=<me@outside.test>", 10);
    let log = a.log();
    let line = log
        .lines()
        .find(|l| l.contains(" delivered ") && l.contains("to=<me@outside.test>"))
        .unwrap_or_else(|| panic!("no delivered line:\n{log}"));
    assert!(line.contains(" orig_to=<anything@ours.test>"), "{line}");
    assert!(line.contains(&format!(" sender=<{return_path}>")), "{line}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        b.inbox("outside.test", "me").len(),
        1,
        "one forwarded copy: {}",
        a.log()
    );

    // The outside server bounces to the SRS address: A checks it and passes the bounce on to
    // the original sender.
    let bounce = "From: MAILER-DAEMON@outside.test\r\nSubject: Undelivered\r\n\r\nsorry\r\n";
    let r = transaction(a_port, "", &[&return_path], bounce);
    assert!(r[1].starts_with("250"), "{r:?}");
    assert_eq!(r[2], "250", "{r:?}");
    let returned = common::wait_messages(&b, "stranger.test", "someone", 1, 30);
    assert!(
        returned[0].contains("Subject: Undelivered"),
        "{}",
        returned[0]
    );
    assert!(
        returned[0].starts_with("Return-Path: <>\r\n"),
        "{}",
        returned[0]
    );

    // A forged or altered SRS address is refused; so is one with an unknown hash.
    let mut forged = return_path.clone();
    let i = "SRS0=".len();
    // SRS hashes compare without case (a hop may lower-case the local part): change the
    // letter, not only its case.
    let c = if forged[i..i + 1].eq_ignore_ascii_case("A") {
        "B"
    } else {
        "A"
    };
    forged.replace_range(i..i + 1, c);
    let r = transaction(
        a_port,
        "",
        &[&forged, "SRS0=abcd=AA=stranger.test=x@ours.test"],
        bounce,
    );
    assert!(r[1].starts_with("550") && r[1].contains("5.7.1"), "{r:?}");
    assert!(r[2].starts_with("550"), "{r:?}");
}

#[test]
fn without_a_catch_all_unknown_users_are_refused_and_loops_are_reported() {
    let a_dir = instance(
        "mx.ours.test",
        &[("ours.test", &["alice"])],
        "[dns]\nnameservers = [\"127.0.0.1:9\"]\n",
        "smtp = [\"127.0.0.1:0\"]",
    );
    fs::write(
        a_dir.path().join("domains/ours.test/aliases"),
        "info: alice\nping: pong\npong: ping\n",
    )
    .expect("aliases");
    let a = Server::start(a_dir.path(), 1);
    let r = transaction(
        a.port("smtp"),
        "x@stranger.test",
        &[
            "info@ours.test",
            "nobody@ours.test",
            "ping@ours.test",
            "someone@elsewhere.test",
        ],
        "Subject: t\r\n\r\nbody\r\n",
    );
    assert!(r[1].starts_with("250"), "{r:?}");
    assert!(r[2].starts_with("550") && r[2].contains("5.1.1"), "{r:?}");
    assert!(r[3].starts_with("550") && r[3].contains("5.4.6"), "{r:?}");
    // Forwarding is what the aliases say: no relaying for anyone else.
    assert!(r[4].starts_with("550") && r[4].contains("5.7.1"), "{r:?}");
    let got = common::wait_messages(&a, "ours.test", "alice", 1, 30);
    assert!(
        got[0].contains("Delivered-To: alice@ours.test"),
        "{}",
        got[0]
    );

    // An edited file is in force without a restart.
    fs::write(
        a_dir.path().join("domains/ours.test/aliases"),
        "nobody: alice\n",
    )
    .expect("aliases");
    std::thread::sleep(Duration::from_millis(1500));
    let r = transaction(
        a.port("smtp"),
        "x@stranger.test",
        &["nobody@ours.test"],
        "Subject: t2\r\n\r\nbody\r\n",
    );
    assert!(r[1].starts_with("250"), "{r:?}");
}

/// A pipe alias (`user: | command`) runs the command with the message on its input.
#[test]
fn a_pipe_alias_gets_the_message() {
    let a_dir = instance(
        "mx.ours.test",
        &[("ours.test", &["alice"])],
        "[dns]\nnameservers = [\"127.0.0.1:9\"]\n",
        "smtp = [\"127.0.0.1:0\"]",
    );
    let out = a_dir.path().join("piped.eml");
    fs::write(
        a_dir.path().join("domains/ours.test/aliases"),
        format!(
            "archive: | /bin/sh -c 'cat > {}'\nboth: alice, archive\n",
            out.display()
        ),
    )
    .expect("aliases");
    let a = Server::start(a_dir.path(), 1);
    let r = transaction(
        a.port("smtp"),
        "x@stranger.test",
        &["both@ours.test"],
        "Subject: piped\r\n\r\nto a command\r\n",
    );
    assert_eq!(r.last().map(String::as_str), Some("250"), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&out).is_ok_and(|t| t.contains("to a command")) {
        assert!(Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = fs::read_to_string(&out).expect("piped");
    assert!(text.contains("Subject: piped\n"), "{text}");
    assert!(text.contains("Delivered-To: archive@ours.test"), "{text}");
    common::wait_messages(&a, "ours.test", "alice", 1, 30);
}

/// The issue's forwarding proof: a stranger's DKIM-signed message (its SPF and key in the
/// test DNS) to a catch-all of ours.test forwarded to me@outside.test arrives there with an
/// SRS sender that passes SPF, the stranger's signature intact, and our ARC set verifying,
/// at postern B and at an outside verifier (dkimpy's arc_verify). ours.test has an Ed25519
/// key that sorts before its RSA key: ARC must seal with the RSA one.
#[test]
fn forwarded_mail_passes_spf_dkim_and_arc_at_the_next_hop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The stranger's signing key, made with our own CLI in a scratch configuration.
    let stranger = instance(
        "mx.stranger.test",
        &[("stranger.test", &[])],
        "",
        "smtp = [\"127.0.0.1:0\"]",
    );
    let stranger_key = common::keygen(stranger.path(), "stranger.test", "ed25519", "s1");
    // A: ours.test, with its own key for the ARC seal.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let zone_path = tmp.path().join("zone");
    // A's configuration comes first: the zone publishes A's key, and the DNS server reads
    // the zone once, at start.
    let a_dir = instance(
        "mx.ours.test",
        &[("ours.test", &[])],
        "",
        "smtp = [\"127.0.0.1:0\"]",
    );
    let ours_key = common::keygen(a_dir.path(), "ours.test", "rsa2048", "arc1");
    let ours_ed_key = common::keygen(a_dir.path(), "ours.test", "ed25519", "aed1");
    let zone = format!(
        "test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300\n\
         outside.test. 300 MX 10 mx.outside.test.\n\
         mx.outside.test. 300 A 127.0.0.1\n\
         stranger.test. 300 TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
         ours.test. 300 TXT \"v=spf1 ip4:127.0.0.1 -all\"\n\
         {}\n{}\n{}\n",
        common::zone_line(&stranger_key),
        common::zone_line(&ours_key),
        common::zone_line(&ours_ed_key)
    );
    fs::write(&zone_path, zone).expect("zone");
    let dns =
        test_server::TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &zone_path).expect("dns");
    let dns_table = format!("[dns]\nnameservers = [\"127.0.0.1:{}\"]\n", dns.addr.port());

    let b_dir = instance(
        "mx.outside.test",
        &[("outside.test", &["me"])],
        &dns_table,
        &format!("smtp = [\"127.0.0.1:{port}\"]"),
    );
    let b = Server::start(b_dir.path(), 1);
    let text = fs::read_to_string(a_dir.path().join("postern.toml")).expect("config");
    fs::write(
        a_dir.path().join("postern.toml"),
        text.replacen(
            "data_dir = \"data\"\n",
            &format!(
                "data_dir = \"data\"\n{dns_table}[delivery]\nmx_port = {port}\nmta_sts = false\n"
            ),
            1,
        )
        .replace("[dns]\nnameservers = [\"127.0.0.1:9\"]\n", ""),
    )
    .expect("config");
    fs::write(
        a_dir.path().join("domains/ours.test/aliases"),
        "*: me@outside.test\n",
    )
    .expect("aliases");
    let a = Server::start(a_dir.path(), 1);

    // The stranger signs its message with `postern dkim sign`.
    let unsigned = tmp.path().join("message.eml");
    fs::write(
        &unsigned,
        "From: Someone <someone@stranger.test>\r\nTo: anything@ours.test\r\n\
         Subject: signed and forwarded\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <fwd-1@stranger.test>\r\n\r\nThis body must stay as it is.\r\n",
    )
    .expect("message");
    let signed = std::process::Command::new(common::BINARY)
        .arg("-C")
        .arg(stranger.path())
        .args(["dkim", "sign"])
        .arg(&unsigned)
        .output()
        .expect("dkim sign");
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let signed = String::from_utf8(signed.stdout).expect("utf-8");
    assert!(signed.starts_with("DKIM-Signature:"), "{signed}");

    let r = transaction(
        a.port("smtp"),
        "someone@stranger.test",
        &["anything@ours.test"],
        &signed,
    );
    assert_eq!(
        r.last().map(String::as_str),
        Some("250"),
        "{r:?}; log:\n{}",
        a.log()
    );
    let got = common::wait_messages(&b, "outside.test", "me", 1, 30);
    let copy = &got[0];
    // B's checks of what A forwarded: its Authentication-Results field, unfolded.
    let start = copy
        .find("Authentication-Results: mx.outside.test")
        .expect("B's Authentication-Results");
    let field: String = copy[start..]
        .split("\r\n")
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with([' ', '\t']))
        .map(|(_, l)| l.trim())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        field.contains("spf=pass"),
        "SPF of the SRS sender: {field}\n{copy}"
    );
    assert!(field.contains("smtp.mailfrom=\"SRS0="), "{field}");
    assert!(
        field.contains("dkim=pass") && field.contains("header.d=stranger.test"),
        "{field}"
    );
    assert!(field.contains("arc=pass"), "{field}\n{copy}");
    assert!(copy.contains("ARC-Seal: i=1; a=rsa-sha256"), "{copy}");
    assert!(copy.contains("This body must stay as it is.\r\n"), "{copy}");

    // The outside verifier: dkimpy (Debian's python3-dkim), with the test zone as its DNS.
    let said = common::dkimpy("arc", &zone_path, copy);
    assert!(said.starts_with("pass"), "dkimpy arc_verify: {said}");
}

/// The issue's setup: user i@wac.test, who reads mail elsewhere (`i: i.wac@gmail.test`,
/// `*: i.wac@gmail.test`). The bounce of a message i sent goes where mail to i goes (to
/// gmail.test, not into a Maildir no one reads), and so does mail to postmaster@wac.test;
/// `postern alias resolve` says the same as the server.
#[test]
fn bounces_and_postmaster_follow_the_aliases() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let zone = "\
test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300
gmail.test. 300 MX 10 mx.gmail.test.
far.test. 300 MX 10 mx.gmail.test.
mx.gmail.test. 300 A 127.0.0.1
";
    fs::write(tmp.path().join("zone"), zone).expect("zone");
    let dns =
        test_server::TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &tmp.path().join("zone"))
            .expect("dns");
    // B: gmail.test (i's outside mailbox) and far.test, where nobody exists (550 5.1.1).
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let b_dir = instance(
        "mx.gmail.test",
        &[("gmail.test", &["i.wac"]), ("far.test", &[])],
        "",
        &format!("smtp = [\"127.0.0.1:{port}\"]"),
    );
    let b = Server::start(b_dir.path(), 1);
    let a_config = format!(
        "[dns]\nnameservers = [\"127.0.0.1:{}\"]\n[delivery]\nmx_port = {port}\nmta_sts = false\n\
         [auth]\nallow_plaintext_on_loopback = true\n",
        dns.addr.port()
    );
    let a_dir = instance(
        "mx.wac.test",
        &[("wac.test", &["i"])],
        &a_config,
        "smtp = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]",
    );
    fs::write(
        a_dir.path().join("domains/wac.test/aliases"),
        "i: i.wac@gmail.test\n*: i.wac@gmail.test\n",
    )
    .expect("aliases");
    let a = Server::start(a_dir.path(), 2);

    // What the CLI says: both go to gmail.test.
    for (address, why) in [
        ("i@wac.test", "i@wac.test: alias \"i\""),
        (
            "postmaster@wac.test",
            "postmaster@wac.test: neither alias nor user, caught by \"*\"",
        ),
    ] {
        let out = std::process::Command::new(common::BINARY)
            .arg("-C")
            .arg(a_dir.path())
            .args(["alias", "resolve", address])
            .output()
            .expect("run postern");
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{address}: {shown}");
        assert_eq!(
            shown.lines().next(),
            Some("remote i.wac@gmail.test"),
            "{shown}"
        );
        assert!(shown.contains(why), "{address}: {shown}");
    }

    // i sends to an address that does not exist; B refuses it, A bounces to i.
    let script = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="laptop.test", timeout=30)
s.login("i@wac.test", "pw-for-tests")
s.sendmail("i@wac.test", ["nobody@far.test"],
           "From: i@wac.test\r\nTo: nobody@far.test\r\nSubject: lost\r\n\r\nwill bounce\r\n")
s.quit()
print("sent")
"#;
    let out = common::python(script, &[a.port("submission").to_string()]);
    assert_eq!(out.trim(), "sent");
    let got = common::wait_messages(&b, "gmail.test", "i.wac", 1, 30);
    let dsn = &got[0];
    assert!(dsn.starts_with("Return-Path: <>\r\n"), "{dsn}");
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@far.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Subject: lost"), "{dsn}");
    // The returned headers are the message as it left: with the Message-ID postern added.
    let returned = dsn
        .split("Content-Type: text/rfc822-headers")
        .nth(1)
        .expect("returned headers");
    assert!(returned.contains("Message-ID: <"), "{dsn}");
    assert!(returned.contains("@mx.wac.test>"), "{dsn}");
    // Nothing went into a local Maildir for i.
    assert!(a.inbox("wac.test", "i").is_empty(), "{}", a.log());
    assert!(
        a.log().contains("dsn=") && a.log().contains("to=<i@wac.test>"),
        "{}",
        a.log()
    );

    // A stranger's mail to postmaster@wac.test goes the same way.
    let r = transaction(
        a.port("smtp"),
        "someone@stranger.test",
        &["postmaster@wac.test"],
        "Subject: abuse report\r\n\r\nfor the postmaster\r\n",
    );
    assert_eq!(r.last().map(String::as_str), Some("250"), "{r:?}");
    let got = common::wait_messages(&b, "gmail.test", "i.wac", 2, 30);
    assert!(
        got.iter().any(|m| m.contains("Subject: abuse report")),
        "{got:?}"
    );
    assert!(a.inbox("wac.test", "postmaster").is_empty(), "{}", a.log());
}

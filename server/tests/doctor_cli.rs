//! `postern doctor`: the DNS a domain publishes, seen through a test DNS server on loopback
//! (the server's `[dns]`). One zone that is right, and one with a mistake for each check; the
//! findings, their fixes, the exit status and the JSON form.

mod common;

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Output};

use postern::dns::test_server::TestServer;

/// A configuration for mx.example.org (domain example.org, an RSA key `sel`) whose resolver
/// is a test DNS server publishing `zone` plus, when `publish_key`, the key's record.
fn setup(zone: &str, publish_key: bool) -> (tempfile::TempDir, TestServer) {
    setup_with(zone, publish_key, "")
}

/// [`setup`], with `extra` (tables) added to postern.toml.
fn setup_with(zone: &str, publish_key: bool, extra: &str) -> (tempfile::TempDir, TestServer) {
    // The key first (in a directory of its own), so its record can go into the zone.
    let keys = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(keys.path().join("domains/example.org")).expect("domain");
    let record = common::keygen(keys.path(), "example.org", "rsa2048", "sel");
    let mut text = format!(
        "test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300\n\
         org. 3600 SOA ns.org. hostmaster.org. 1 7200 900 1209600 300\n\
         arpa. 3600 SOA ns.arpa. hostmaster.arpa. 1 7200 900 1209600 300\n{zone}"
    );
    if publish_key {
        text.push_str(&common::zone_line(&record));
        text.push('\n');
    }
    let zone_file = keys.path().join("zone");
    fs::write(&zone_file, text).expect("zone");
    let dns = TestServer::start(IpAddr::V4(Ipv4Addr::LOCALHOST), &zone_file).expect("dns");
    let dir = common::instance(
        "mx.example.org",
        &[("example.org", &["alice"])],
        &format!("[dns]\nnameservers = [\"{}\"]\n{extra}", dns.addr),
        "smtp = [\"127.0.0.1:0\"]",
    );
    let dkim = dir.path().join("domains/example.org/dkim");
    fs::create_dir_all(&dkim).expect("dkim");
    fs::copy(
        keys.path().join("domains/example.org/dkim/sel.pem"),
        dkim.join("sel.pem"),
    )
    .expect("copy the key");
    (dir, dns)
}

fn doctor(dir: &Path, args: &[&str]) -> Output {
    Command::new(common::BINARY)
        .arg("-C")
        .arg(dir)
        .arg("doctor")
        .args(["--ip", "127.0.0.1"])
        .args(args)
        .output()
        .expect("run postern")
}

const RIGHT: &str = "\
example.org. 300 MX 10 mx.example.org.
mx.example.org. 300 A 127.0.0.1
1.0.0.127.in-addr.arpa. 300 PTR mx.example.org.
example.org. 300 TXT \"v=spf1 mx -all\"
_dmarc.example.org. 300 TXT \"v=DMARC1; p=reject; rua=mailto:postmaster@example.org\"
_smtp._tls.example.org. 300 TXT \"v=TLSRPTv1; rua=mailto:postmaster@example.org\"
";

#[test]
fn a_right_zone_is_all_ok() {
    let (dir, _dns) = setup(RIGHT, true);
    let out = doctor(dir.path(), &[]);
    let shown = common::succeeded(&out);
    for want in [
        "ok      mx.example.org address: mx.example.org has 127.0.0.1",
        "ok      mx.example.org ptr: 127.0.0.1 is mx.example.org, and mx.example.org has 127.0.0.1 (FCrDNS)",
        "ok      mx.example.org certificate: ",
        "ok      example.org mx: mx.example.org is an MX (preference 10)",
        "ok      example.org spf: \"v=spf1 mx -all\" passes for 127.0.0.1",
        "ok      example.org dkim: selector sel (rsa-sha256) is published",
        "ok      example.org dmarc: p=reject; reports to postmaster@example.org",
        "ok      example.org tls-rpt: ",
    ] {
        assert!(shown.contains(want), "{want:?} in\n{shown}");
    }
    assert!(!shown.contains("error"), "{shown}");
}

#[test]
fn each_mistake_is_an_error_with_its_fix() {
    let wrong = "\
example.org. 300 MX 10 mail.elsewhere.test.
mx.example.org. 300 A 127.0.0.1
example.org. 300 TXT \"v=spf1 include:missing.example.test -all\"
_dmarc.example.org. 300 TXT \"v=DMARC1; p=\"
";
    let (dir, _dns) = setup(wrong, false);
    let out = doctor(dir.path(), &[]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{shown}");
    for want in [
        "error   mx.example.org ptr: 127.0.0.1 has no reverse name (PTR)",
        "fix: ask your provider to set the reverse name of 127.0.0.1 to mx.example.org",
        "error   example.org mx: the MX records name mail.elsewhere.test, not mx.example.org",
        "fix: example.org. IN MX 10 mx.example.org.",
        "error   example.org spf: \"v=spf1 include:missing.example.test -all\" gives permerror for 127.0.0.1",
        "fix: example.org. IN TXT \"v=spf1 mx -all\"",
        "error   example.org dkim: selector sel (rsa-sha256) is not published",
        "fix: sel._domainkey.example.org. IN TXT \"v=DKIM1; k=rsa; p=",
        "warning example.org tls-rpt: no TLS-RPT record (optional)",
    ] {
        assert!(shown.contains(want), "{want:?} in\n{shown}");
    }
    assert!(
        shown.contains("error   example.org dmarc: the record does not parse"),
        "{shown}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error(s) found"),
        "{out:?}"
    );

    // The same as JSON, for scripts.
    let out = doctor(dir.path(), &["--json", "example.org"]);
    assert_eq!(out.status.code(), Some(1));
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON document");
    let mx = findings
        .as_array()
        .expect("an array")
        .iter()
        .find(|f| f["check"] == "mx")
        .expect("the mx finding");
    assert_eq!(mx["level"], "error");
    assert_eq!(mx["domain"], "example.org");
    assert_eq!(mx["fix"], "example.org. IN MX 10 mx.example.org.");
    let other = Command::new(common::BINARY)
        .arg("-C")
        .arg(dir.path())
        .args(["doctor", "other.example"])
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("other.example is not a local domain"),
        "{other:?}"
    );
}

/// An MTA-STS policy is fetched and must list the hostname; DMARC report addresses in other
/// domains must be authorised there.
#[test]
fn mta_sts_policies_and_report_destinations_are_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ca, chain, key) = common::signed_cert(&["mta-sts.example.org"]);
    fs::write(tmp.path().join("chain.pem"), &chain).expect("chain");
    fs::write(tmp.path().join("key.pem"), &key).expect("key");
    let policy_server = |mx: &str| {
        let args = vec![
            tmp.path().join("chain.pem").display().to_string(),
            tmp.path().join("key.pem").display().to_string(),
            format!("mta-sts.example.org=version: STSv1|mode: enforce|mx: {mx}|max_age: 86400|"),
        ];
        let https = common::Script::start(common::POLICY_SERVER, &args);
        let port: u16 = https.line().trim().parse().expect("policy server port");
        (https, port)
    };
    let (https, port) = policy_server("mx.example.org");
    let zone = RIGHT.replace(
        "rua=mailto:postmaster@example.org",
        "rua=mailto:postmaster@example.org,mailto:dmarc@reports.test,mailto:r@elsewhere.test",
    ) + "\
example.org._report._dmarc.reports.test. 300 TXT \"v=DMARC1\"
_mta-sts.example.org. 300 TXT \"v=STSv1; id=20261203\"
mta-sts.example.org. 300 A 127.0.0.1
";
    let (dir, _dns) = setup_with(
        &zone,
        true,
        &format!("[delivery]\ntls_roots = [\"ca.pem\"]\nmta_sts_port = {port}\n"),
    );
    fs::write(dir.path().join("ca.pem"), &ca).expect("ca");
    let out = doctor(dir.path(), &[]);
    let shown = common::succeeded(&out);
    for want in [
        "ok      example.org mta-sts: policy id=20261203: mode enforce, mx mx.example.org, max_age 86400 s",
        "ok      example.org dmarc: reports.test accepts reports about example.org (example.org._report._dmarc.reports.test)",
        "warning example.org dmarc: reports go to r@elsewhere.test, in another domain, which has not said it accepts them",
        "warning example.org dmarc: reports go to postmaster@example.org, which [reports] addresses does not list",
        "fix: [reports] addresses = [\"postmaster@example.org\"] in postern.toml",
        "fix: ask the operator of elsewhere.test to publish example.org._report._dmarc.elsewhere.test. IN TXT \"v=DMARC1\"",
    ] {
        assert!(shown.contains(want), "{want:?} in\n{shown}");
    }
    drop(https);

    // A policy that does not list the hostname: senders enforcing it would not deliver.
    let (_https, port) = policy_server("*.elsewhere.test");
    let config = fs::read_to_string(dir.path().join("postern.toml")).expect("config");
    let config = config
        .lines()
        .map(|l| {
            if l.starts_with("mta_sts_port") {
                format!("mta_sts_port = {port}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(dir.path().join("postern.toml"), config).expect("config");
    let out = doctor(dir.path(), &[]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{shown}");
    for want in [
        "error   example.org mta-sts: policy id=20261203: mode enforce, mx *.elsewhere.test, max_age 86400 s: mx.example.org is not among its mx",
        "fix: add the line \"mx: mx.example.org\" to https://mta-sts.example.org/.well-known/mta-sts.txt, then give _mta-sts.example.org a new id=",
    ] {
        assert!(shown.contains(want), "{want:?} in\n{shown}");
    }
}

//! Certificates, against the real binary over loopback: the certbot and acme.sh layouts, SNI
//! (wildcards too), the default certificate, and live reload (the issue's certificate test:
//! files replaced under a running server; new connections see the new certificate, a
//! connection opened before keeps working). Certificates are made with rcgen, the RSA one with
//! `openssl req`.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Script, Server, cert, config_dir, hex, peer_cert, write_certbot};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// An RSA certificate for `name` made by openssl: (certificate PEM, key PEM, DER hex).
fn openssl_rsa(dir: &std::path::Path, name: &str) -> (String, String, String) {
    let (cert_file, key_file) = (dir.join("rsa.crt"), dir.join("rsa.key"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(&key_file)
        .arg("-out")
        .arg(&cert_file)
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl req failed");
    let pem = fs::read_to_string(&cert_file).expect("cert");
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    (pem, fs::read_to_string(&key_file).expect("key"), hex(&der))
}

#[test]
fn certbot_and_acme_sh_layouts_and_sni() {
    let dir = config_dir("");
    let root = dir.path();
    // certbot: certs/ is a symlink to live/, whose files are symlinks into archive/.
    let live = root.join("letsencrypt/live");
    let archive = root.join("letsencrypt/archive/mx");
    let default = cert(&["localhost"]);
    write_certbot(&live.join("localhost"), &default);
    let mx = cert(&["mx.example.org", "smtp.example.org"]);
    write_certbot(&archive, &mx);
    fs::create_dir_all(live.join("mx.example.org")).expect("mkdir");
    for f in ["fullchain.pem", "privkey.pem"] {
        symlink(archive.join(f), live.join("mx.example.org").join(f)).expect("symlink");
    }
    fs::write(live.join("README"), "certbot's README: not a certificate\n").expect("README");
    let wild = cert(&["*.wild.example"]);
    write_certbot(&live.join("wild"), &wild);
    // acme.sh: ECC and RSA directories side by side.
    let ecc = cert(&["ecc.example.net"]);
    let ecc_dir = live.join("ecc.example.net_ecc");
    fs::create_dir_all(&ecc_dir).expect("mkdir");
    fs::write(ecc_dir.join("fullchain.cer"), &ecc.0).expect("write");
    fs::write(ecc_dir.join("ecc.example.net.key"), &ecc.1).expect("write");
    let rsa = openssl_rsa(root, "rsa.example.net");
    let rsa_dir = live.join("rsa.example.net");
    fs::create_dir_all(&rsa_dir).expect("mkdir");
    fs::write(rsa_dir.join("fullchain.cer"), &rsa.0).expect("write");
    fs::write(rsa_dir.join("rsa.example.net.key"), &rsa.1).expect("write");
    symlink(&live, root.join("certs")).expect("symlink certs");

    let server = Server::start(root, 2);
    let port = server.port("submissions");
    let cases = [
        ("", &default.2, "no SNI: the host name's"),
        ("localhost", &default.2, "the host name"),
        ("mx.example.org", &mx.2, "certbot, symlinked files"),
        ("SMTP.example.org", &mx.2, "second SAN, case-insensitive"),
        ("ecc.example.net", &ecc.2, "acme.sh _ecc"),
        ("rsa.example.net", &rsa.2, "acme.sh RSA"),
        ("a.wild.example", &wild.2, "wildcard"),
        (
            "a.b.wild.example",
            &default.2,
            "wildcard covers one label only",
        ),
        (
            "wild.example",
            &default.2,
            "wildcard does not cover its parent",
        ),
        ("unknown.example", &default.2, "unknown name: the default"),
    ];
    for (sni, expected, why) in cases {
        let (der, version) = peer_cert(port, sni);
        assert_eq!(
            &der,
            expected,
            "SNI {sni:?} ({why}); log:\n{}",
            server.log()
        );
        assert_eq!(version, "TLSv1.3", "SNI {sni:?}");
    }
    // TLS 1.2 is offered too.
    let out = common::python(
        common::PEER_CERT,
        &[port.to_string(), "mx.example.org".into(), "1.2".into()],
    );
    assert!(out.ends_with("TLSv1.2\n"), "{out}");
    assert!(out.starts_with(&mx.2), "{out}");
}

#[test]
fn a_mismatched_key_names_the_file() {
    let dir = config_dir("");
    let root = dir.path();
    let a = cert(&["localhost"]);
    let b = cert(&["localhost"]);
    write_certbot(&root.join("certs/localhost"), &(a.0, b.1, a.2));
    let out = Command::new(common::BINARY)
        .arg("-C")
        .arg(root)
        .arg("serve")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("certs/localhost/privkey.pem"), "{stderr}");
    assert!(stderr.contains("does not fit the certificate"), "{stderr}");
}

/// Holds one STARTTLS connection open: prints its certificate, waits for a line on stdin, then
/// sends a whole message over the same connection and prints the certificate again.
const HELD_OPEN: &str = r#"
import smtplib, ssl, sys
ctx = ssl._create_unverified_context()
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.test", timeout=30)
s.starttls(context=ctx)
print("cert", s.sock.getpeercert(True).hex())
sys.stdin.readline()
msg = (b"From: sender@client.test\r\nTo: alice@localhost\r\nSubject: held open\r\n\r\n"
       b"sent after the certificate was replaced\r\n")
print("refused", s.sendmail("sender@client.test", ["alice@localhost"], msg))
print("cert", s.sock.getpeercert(True).hex())
s.quit()
"#;

/// Waits until new connections on `port` (no SNI) get `expected`; fails after 15 s.
fn wait_for_cert(server: &Server, port: u16, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (der, _) = peer_cert(port, "");
        if der == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 15 s; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The issue's certificate test.
#[test]
fn replaced_certificates_are_served_without_dropping_connections() {
    let dir = config_dir("tls_reload_interval = 1");
    let root = dir.path();
    let old = cert(&["localhost"]);
    write_certbot(&root.join("certs/localhost"), &old);
    let mx_old = cert(&["mx.example.org"]);
    write_certbot(&root.join("certs/mx.example.org"), &mx_old);
    let server = Server::start(root, 2);
    let port = server.port("submissions");
    assert_eq!(peer_cert(port, "").0, old.2);
    assert_eq!(peer_cert(port, "mx.example.org").0, mx_old.2);

    let mut held = Script::start(HELD_OPEN, &[server.port("smtp").to_string()]);
    assert_eq!(held.line(), format!("cert {}", old.2));

    // Renew in place, as acme.sh does (key first, then the chain).
    let new = cert(&["localhost"]);
    write_certbot(&root.join("certs/localhost"), &new);
    wait_for_cert(&server, port, &new.2);
    server.wait_log("tls msg=\"reloaded", 5);

    // The connection opened before keeps its certificate and still carries a message.
    held.send("go");
    assert_eq!(held.line(), "refused {}");
    assert_eq!(held.line(), format!("cert {}", old.2));
    let inbox = server.wait_inbox("localhost", "alice", 1);
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert!(inbox[0].contains("Subject: held open"), "{}", inbox[0]);

    // A broken replacement keeps that certificate, the log says which file and why, and it
    // does not hold back the renewal of another.
    fs::write(
        root.join("certs/localhost/fullchain.pem"),
        "not a certificate\n",
    )
    .expect("break");
    let mx_new = cert(&["mx.example.org"]);
    write_certbot(&root.join("certs/mx.example.org"), &mx_new);
    let deadline = Instant::now() + Duration::from_secs(15);
    while peer_cert(port, "mx.example.org").0 != mx_new.2 {
        assert!(
            Instant::now() < deadline,
            "mx not renewed; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(peer_cert(port, "").0, new.2);
    let log = server.log();
    let kept =
        "certs/localhost/fullchain.pem: no certificate in it; keeping its previous certificate";
    let first = log
        .lines()
        .position(|l| l.contains(kept))
        .unwrap_or_else(|| panic!("{log}"));
    // From then on no reload claims success: the broken file is still there.
    let after: Vec<&str> = log.lines().skip(first).collect();
    assert!(
        after.iter().all(|l| !l.contains("tls msg=\"reloaded")),
        "{log}"
    );
    assert!(
        after
            .iter()
            .any(|l| l.contains("tls msg=\"reload incomplete (1 kept")),
        "{log}"
    );
}

#[test]
fn sighup_reloads_certificates() {
    let dir = config_dir("tls_reload_interval = 0");
    let root = dir.path();
    let old = cert(&["localhost"]);
    write_certbot(&root.join("certs/localhost"), &old);
    let server = Server::start(root, 2);
    let port = server.port("submissions");
    let new = cert(&["localhost"]);
    write_certbot(&root.join("certs/localhost"), &new);
    std::thread::sleep(Duration::from_millis(1500));
    // Polling is off: still the old one until SIGHUP.
    assert_eq!(peer_cert(port, "").0, old.2);
    server.signal("HUP");
    wait_for_cert(&server, port, &new.2);
}

/// certbot's renewal: new files in archive/, then the symlinks in live/ point at them.
#[test]
fn a_certbot_renewal_is_picked_up() {
    let dir = config_dir("tls_reload_interval = 1");
    let root = dir.path();
    let archive = root.join("archive/localhost");
    let live = root.join("certs/localhost");
    fs::create_dir_all(&archive).expect("mkdir");
    fs::create_dir_all(&live).expect("mkdir");
    let link = |generation: u32| {
        for (name, kind) in [("fullchain", "fullchain"), ("privkey", "privkey")] {
            let tmp = live.join(format!("{name}.tmp"));
            symlink(
                format!("../../archive/localhost/{kind}{generation}.pem"),
                &tmp,
            )
            .expect("symlink");
            fs::rename(&tmp, live.join(format!("{name}.pem"))).expect("rename");
        }
    };
    let first = cert(&["localhost"]);
    fs::write(archive.join("fullchain1.pem"), &first.0).expect("write");
    fs::write(archive.join("privkey1.pem"), &first.1).expect("write");
    link(1);
    let server = Server::start(root, 2);
    let port = server.port("submissions");
    assert_eq!(peer_cert(port, "").0, first.2);

    let second = cert(&["localhost"]);
    fs::write(archive.join("fullchain2.pem"), &second.0).expect("write");
    fs::write(archive.join("privkey2.pem"), &second.1).expect("write");
    link(2);
    wait_for_cert(&server, port, &second.2);
}

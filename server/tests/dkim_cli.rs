//! `postern -C DIR dkim ...` run as the real binary: keygen, dns, sign, verify.
//!
//! Keys are published on the loopback test DNS server (src/dns/test_server.rs), which the
//! binary's resolver is pointed at by `[dns] nameservers`; nothing asks the system's resolver.
//! Signatures are also checked independently, with mail-auth fed the printed records.

mod common;
use postern::dns::test_server;

use std::collections::HashMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};

use common::BINARY;
use test_server::TestServer;

/// Runs `postern -C dir dkim args...`.
fn dkim(dir: &Path, args: &[&str]) -> Output {
    Command::new(BINARY)
        .arg("-C")
        .arg(dir)
        .arg("dkim")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run postern")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A configuration directory with the local domain example.org.
fn config_dir() -> tempfile::TempDir {
    let dir = common::config_dir("");
    fs::create_dir_all(dir.path().join("domains/example.org")).expect("mkdir");
    dir
}

/// A record as printed: the name (no final dot) and its strings.
#[derive(Debug, Clone)]
struct Record {
    name: String,
    strings: Vec<String>,
}

impl Record {
    fn value(&self) -> String {
        self.strings.concat()
    }
}

/// The zone-file lines of `stdout` (comments skipped).
fn records(stdout: &[u8]) -> Vec<Record> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|line| {
            let (name, rest) = line
                .split_once(". IN TXT ")
                .unwrap_or_else(|| panic!("not a record line: {line:?}"));
            let strings = rest
                .split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect();
            Record {
                name: name.to_string(),
                strings,
            }
        })
        .collect()
}

/// Serves `records` (and an SOA for example.org) on loopback, and points postern.toml at it.
fn publish(dir: &Path, records: &[Record]) -> TestServer {
    let mut zone = String::from(
        "example.org. 3600 SOA ns.example.org. h.example.org. 1 7200 900 1209600 60\n",
    );
    for r in records {
        let strings: Vec<String> = r.strings.iter().map(|s| format!("\"{s}\"")).collect();
        zone.push_str(&format!("{}. 60 TXT {}\n", r.name, strings.join(" ")));
    }
    let zone_file = dir.join("test.zone");
    fs::write(&zone_file, zone).expect("write zone");
    let server =
        TestServer::start(Ipv4Addr::LOCALHOST.into(), &zone_file).expect("test DNS server");
    common::write_config(
        dir,
        &format!("[dns]\nnameservers = [\"{}\"]\n", server.addr),
    );
    server
}

const MESSAGE: &str = "From: Alice <alice@example.org>\n\
To: Bob <bob@example.net>\n\
Subject: DKIM  test\n\
Date: Sat, 28 Nov 2026 10:00:00 +0000\n\
Message-ID: <1@example.org>\n\
List-Id: <test.example.org>\n\
\n\
Hello   world.\n\
\n\
\n";

/// The results mail-auth gives for `message`, keys taken from `records` only.
fn mail_auth_results(message: &[u8], records: &[Record]) -> Vec<DkimResult> {
    let cache = Cache::default();
    for r in records {
        let key = DomainKey::parse(r.value().as_bytes()).expect("mail-auth parses the record");
        cache.insert(
            format!("{}.", r.name).into_boxed_str(),
            Txt::DomainKey(Arc::new(key)),
            Instant::now(),
        );
    }
    let parsed = AuthenticatedMessage::parse(message).expect("mail-auth parses the message");
    let authenticator = MessageAuthenticator::new(
        mail_auth::hickory_resolver::config::ResolverConfig::from_name_servers(Vec::new()),
        mail_auth::hickory_resolver::config::ResolverOpts::default(),
    )
    .expect("authenticator without servers");
    let params = Parameters::new(&parsed).with_txt_cache(&cache);
    smol::block_on(authenticator.verify_dkim(params))
        .iter()
        .map(|o| o.result().clone())
        .collect()
}

#[derive(Default)]
struct Cache(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for Cache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.lock().expect("lock").get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.lock().expect("lock").remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _: Instant) {
        self.0.lock().expect("lock").insert(key, value);
    }
}

#[test]
fn keygen_writes_a_private_key_and_a_record_that_verifies() {
    let dir = config_dir();
    let root = dir.path();

    let out = dkim(
        root,
        &[
            "keygen",
            "example.org",
            "--algo",
            "ed25519",
            "--selector",
            "ed1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let key = root.join("domains/example.org/dkim/ed1.pem");
    let mode = fs::metadata(&key)
        .expect("key written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key mode {mode:o}");
    let pem = fs::read_to_string(&key).expect("read key");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    let ed = records(&out.stdout);
    assert_eq!(ed.len(), 1, "{}", text(&out));
    assert_eq!(ed[0].name, "ed1._domainkey.example.org");
    let value = ed[0].value();
    assert!(value.starts_with("v=DKIM1; k=ed25519; p="), "{value}");
    // RFC 8463 4.2: the raw 32-octet public key, 44 characters of base64.
    assert_eq!(value.len(), "v=DKIM1; k=ed25519; p=".len() + 44, "{value}");

    // RSA, default selector rsa-YYYYMM: SPKI, split into strings of at most 255 octets.
    let out = dkim(root, &["keygen", "example.org"]);
    assert!(out.status.success(), "{}", text(&out));
    let rsa = records(&out.stdout);
    assert_eq!(rsa.len(), 1, "{}", text(&out));
    let selector = rsa[0]
        .name
        .strip_suffix("._domainkey.example.org")
        .expect("record name");
    assert!(
        selector.len() == 10
            && selector.starts_with("rsa-20")
            && selector[4..].bytes().all(|b| b.is_ascii_digit()),
        "{selector}"
    );
    let mode = fs::metadata(root.join(format!("domains/example.org/dkim/{selector}.pem")))
        .expect("rsa key written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        rsa[0]
            .value()
            .starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"),
        "{}",
        rsa[0].value()
    );
    assert!(rsa[0].strings.len() >= 2, "{rsa:?}");
    assert!(rsa[0].strings.iter().all(|s| s.len() <= 255), "{rsa:?}");
    assert_eq!(rsa[0].strings[0].len(), 255);

    // dns prints both, in selector order.
    let out = dkim(root, &["dns", "EXAMPLE.ORG"]);
    assert!(out.status.success(), "{}", text(&out));
    let all = records(&out.stdout);
    assert_eq!(all.len(), 2, "{}", text(&out));
    assert_eq!(all[0].value(), ed[0].value());
    assert_eq!(all[1].value(), rsa[0].value());

    // Sign with both keys; mail-auth verifies each with the printed records.
    let file = root.join("message.eml");
    fs::write(&file, MESSAGE).expect("write message");
    let out = dkim(root, &["sign", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    let signed = out.stdout.clone();
    let signed_text = String::from_utf8_lossy(&signed);
    assert_eq!(
        signed_text.matches("DKIM-Signature:").count(),
        2,
        "{signed_text}"
    );
    assert!(
        signed_text.ends_with(&MESSAGE.replace('\n', "\r\n")),
        "{signed_text}"
    );
    assert!(
        signed_text.lines().all(|l| l.len() <= 79),
        "folded: {signed_text}"
    );
    assert!(signed_text.contains("c=relaxed/relaxed;"), "{signed_text}");
    assert!(
        signed_text.contains("a=ed25519-sha256;") && signed_text.contains("a=rsa-sha256;"),
        "{signed_text}"
    );
    let results = mail_auth_results(&signed, &all);
    assert_eq!(
        results,
        vec![DkimResult::Pass, DkimResult::Pass],
        "{signed_text}"
    );

    // The over-signed fields cannot be added afterwards; unsigned ones can.
    let added = [b"Subject: another\r\n".as_slice(), &signed].concat();
    let results = mail_auth_results(&added, &all);
    assert!(
        results.iter().all(|r| *r != DkimResult::Pass),
        "{results:?}"
    );
    let added = [b"X-Extra: fine\r\n".as_slice(), &signed].concat();
    assert_eq!(
        mail_auth_results(&added, &all),
        vec![DkimResult::Pass, DkimResult::Pass]
    );
}

#[test]
fn keygen_refuses_to_overwrite_and_unknown_domains() {
    let dir = config_dir();
    let root = dir.path();
    let out = dkim(
        root,
        &[
            "keygen",
            "example.org",
            "--algo",
            "ed25519",
            "--selector",
            "s1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let key = root.join("domains/example.org/dkim/s1.pem");
    let before = fs::read(&key).expect("key");

    for algo in ["ed25519", "rsa2048"] {
        let out = dkim(
            root,
            &["keygen", "example.org", "--algo", algo, "--selector", "s1"],
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("s1.pem already exists"), "{}", text(&out));
        assert_eq!(fs::read(&key).expect("key"), before, "the key was replaced");
    }

    let out = dkim(root, &["keygen", "nosuch.example", "--algo", "ed25519"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown domain nosuch.example"),
        "{}",
        text(&out)
    );
    assert!(
        err.contains(&root.join("domains/nosuch.example").display().to_string()),
        "{}",
        text(&out)
    );
    assert!(!root.join("domains/nosuch.example").exists());

    let out = dkim(
        root,
        &["keygen", "example.org", "--selector", "bad_selector"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a valid selector"),
        "{}",
        text(&out)
    );

    let out = dkim(root, &["keygen", "example.org", "--algo", "dsa"]);
    assert!(!out.status.success(), "{}", text(&out));

    // A key file that is not a key is named, never skipped.
    fs::write(
        root.join("domains/example.org/dkim/broken.pem"),
        "not a key\n",
    )
    .expect("write");
    let out = dkim(root, &["dns", "example.org"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.pem"),
        "{}",
        text(&out)
    );
}

#[test]
fn sign_then_verify_against_the_test_dns_server() {
    let dir = config_dir();
    let root = dir.path();
    let mut published = Vec::new();
    for (algo, selector) in [("ed25519", "ed"), ("rsa2048", "rsa")] {
        let out = dkim(
            root,
            &[
                "keygen",
                "example.org",
                "--algo",
                algo,
                "--selector",
                selector,
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        published.extend(records(&out.stdout));
    }
    let server = publish(root, &published);

    let file = root.join("message.eml");
    fs::write(&file, MESSAGE).expect("write message");
    let out = dkim(root, &["sign", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out));
    let signed = root.join("signed.eml");
    fs::write(&signed, &out.stdout).expect("write signed");

    let out = dkim(root, &["verify", signed.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("d=example.org s=ed: pass"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("d=example.org s=rsa: pass"),
        "{}",
        text(&out)
    );
    assert!(server.queries() >= 2, "the keys came from the test server");

    // A changed body fails both signatures.
    let tampered =
        String::from_utf8_lossy(&fs::read(&signed).expect("read")).replace("Hello", "Jello");
    let file2 = root.join("tampered.eml");
    fs::write(&file2, tampered).expect("write");
    let out = dkim(root, &["verify", file2.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 of 2 signatures did not verify"),
        "{}",
        text(&out)
    );

    // A key missing from DNS fails (NXDOMAIN), the other still passes.
    let _server = publish(root, &published[..1]);
    let out = dkim(root, &["verify", signed.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("d=example.org s=ed: pass"),
        "{}",
        text(&out)
    );
    assert!(
        !stdout.contains("d=example.org s=rsa: pass"),
        "{}",
        text(&out)
    );

    // An unsigned message.
    let out = dkim(root, &["verify", file.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no DKIM signature"),
        "{}",
        text(&out)
    );

    // --domain: the From domain is not needed; a domain without keys is refused.
    fs::create_dir_all(root.join("domains/other.example")).expect("mkdir");
    let out = dkim(
        root,
        &[
            "sign",
            "--domain",
            "other.example",
            file.to_str().expect("path"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("other.example has no DKIM key"),
        "{}",
        text(&out)
    );
}

/// `verify` on RFC 8463 A.3 (ed25519-sha256 and rsa-sha256, relaxed) and on the same message
/// signed simple/simple by dkimpy, keys served from the vectors' dns.txt.
#[test]
fn verify_rfc8463_vectors() {
    let vectors =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/suites/dkim/rfc/rfc8463");
    let dns = fs::read_to_string(vectors.join("dns.txt")).expect("dns.txt");
    let published: Vec<Record> = dns
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, value)| Record {
            name: name.to_string(),
            strings: value
                .as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect(),
        })
        .collect();
    assert_eq!(published.len(), 2, "{dns}");
    let dir = config_dir();
    let root = dir.path();
    let mut zone = String::from(
        "football.example.com. 3600 SOA ns.example.com. h.example.com. 1 7200 900 1209600 60\n",
    );
    for r in &published {
        let strings: Vec<String> = r.strings.iter().map(|s| format!("\"{s}\"")).collect();
        zone.push_str(&format!("{}. 60 TXT {}\n", r.name, strings.join(" ")));
    }
    fs::write(root.join("test.zone"), zone).expect("zone");
    let server =
        TestServer::start(Ipv4Addr::LOCALHOST.into(), &root.join("test.zone")).expect("dns");
    common::write_config(
        root,
        &format!("[dns]\nnameservers = [\"{}\"]\n", server.addr),
    );

    for file in ["signed-relaxed.eml", "signed-simple-dkimpy.eml"] {
        let out = dkim(
            root,
            &["verify", vectors.join(file).to_str().expect("path")],
        );
        assert!(out.status.success(), "{file}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("d=football.example.com s=brisbane: pass"),
            "{file}: {}",
            text(&out)
        );
        assert!(
            stdout.contains("d=football.example.com s=test: pass"),
            "{file}: {}",
            text(&out)
        );
    }
    let out = dkim(
        root,
        &[
            "verify",
            vectors.join("unsigned.eml").to_str().expect("path"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// Runs openssl with `args`; its standard output.
fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    out.stdout
}

/// Keys made by openssl (Ed25519 PKCS#8, RSA PKCS#1 "traditional") are read, and their records
/// carry the public keys openssl derives; openssl reads the keys keygen writes.
#[test]
fn keys_interoperate_with_openssl() {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let dir = config_dir();
    let root = dir.path();
    let keys = root.join("domains/example.org/dkim");
    fs::create_dir_all(&keys).expect("mkdir");
    let ed = keys.join("o-ed.pem");
    let rsa = keys.join("o-rsa.pem");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", &path(&ed)]);
    openssl(&["genrsa", "-traditional", "-out", &path(&rsa), "2048"]);
    assert!(
        fs::read_to_string(&rsa)
            .expect("rsa")
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );

    let out = dkim(root, &["dns", "example.org"]);
    assert!(out.status.success(), "{}", text(&out));
    let published = records(&out.stdout);
    assert_eq!(published.len(), 2, "{}", text(&out));
    let ed_spki = openssl(&["pkey", "-in", &path(&ed), "-pubout", "-outform", "DER"]);
    assert_eq!(
        published[0].value(),
        format!(
            "v=DKIM1; k=ed25519; p={}",
            b64(&ed_spki[ed_spki.len() - 32..])
        )
    );
    let rsa_spki = openssl(&["pkey", "-in", &path(&rsa), "-pubout", "-outform", "DER"]);
    assert_eq!(
        published[1].value(),
        format!("v=DKIM1; k=rsa; p={}", b64(&rsa_spki))
    );

    for algo in ["ed25519", "rsa2048"] {
        let out = dkim(
            root,
            &["keygen", "example.org", "--algo", algo, "--selector", algo],
        );
        assert!(out.status.success(), "{}", text(&out));
        let ours = keys.join(format!("{algo}.pem"));
        let spki = openssl(&["pkey", "-in", &path(&ours), "-pubout", "-outform", "DER"]);
        let value = records(&out.stdout)[0].value();
        let p = if algo == "ed25519" {
            b64(&spki[spki.len() - 32..])
        } else {
            b64(&spki)
        };
        assert!(value.ends_with(&format!("; p={p}")), "{algo}: {value}");
    }
}

/// An internationalized domain: its directory in Unicode, the record name and `d=` in A-labels.
#[test]
fn idn_domains_use_a_labels() {
    let dir = config_dir();
    let root = dir.path();
    fs::create_dir_all(root.join("domains/bücher.example")).expect("mkdir");
    let out = dkim(
        root,
        &[
            "keygen",
            "XN--BCHER-KVA.example",
            "--algo",
            "ed25519",
            "--selector",
            "s",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(root.join("domains/bücher.example/dkim/s.pem").exists());
    assert_eq!(
        records(&out.stdout)[0].name,
        "s._domainkey.xn--bcher-kva.example"
    );
    let file = root.join("m.eml");
    fs::write(
        &file,
        "From: José <jose@bücher.example>\r\nSubject: x\r\n\r\nhi\r\n",
    )
    .expect("write");
    let out = dkim(root, &["sign", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out));
    let signed = String::from_utf8_lossy(&out.stdout);
    assert!(signed.contains(" d=xn--bcher-kva.example;"), "{signed}");
}

/// `keygen` run as root for a server that runs as another user: the new `dkim/` directory
/// and key get the owner of the directory they go into, so that server can read them (a
/// root-owned 0600 key answered every submission 451). Needs root, as CI runs the tests.
#[test]
fn keygen_as_root_leaves_keys_owned_like_their_directory() {
    use std::os::unix::fs::MetadataExt as _;
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (CI runs the tests as root)"
    );
    let dir = config_dir();
    let domain = dir.path().join("domains/example.org");
    // 65534: nobody/nogroup, standing for the service user.
    std::os::unix::fs::chown(&domain, Some(65534), Some(65534)).expect("chown");
    let out = dkim(
        dir.path(),
        &[
            "keygen",
            "example.org",
            "--algo",
            "ed25519",
            "--selector",
            "s1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    for (path, mode) in [
        (domain.join("dkim"), 0o700),
        (domain.join("dkim/s1.pem"), 0o600),
    ] {
        let meta = fs::metadata(&path).expect("stat");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (65534, 65534, mode),
            "{}",
            path.display()
        );
    }
}

//! `postern init DOMAIN`: a configuration directory for a real domain, checked with
//! `postern config check`, and the DNS records it prints. The server is never started here:
//! its listeners are on every address, and tests use loopback only.

mod common;

use std::fs;
use std::process::Output;

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn init_writes_a_production_directory_and_prints_the_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("etc-postern");
    let out = common::postern(
        &dir,
        &[
            "init",
            "Example.ORG",
            "--ipv4",
            "192.0.2.25",
            "--ipv6",
            "2001:db8::25",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "example.org. IN MX 10 mx.example.org.",
        "mx.example.org. IN A 192.0.2.25",
        "mx.example.org. IN AAAA 2001:db8::25",
        "example.org. IN TXT \"v=spf1 mx -all\"",
        "._domainkey.example.org. IN TXT \"v=DKIM1; k=rsa; p=",
        "._domainkey.example.org. IN TXT \"v=DKIM1; k=ed25519; p=",
        "_dmarc.example.org. IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org\"",
        "_smtp._tls.example.org. IN TXT \"v=TLSRPTv1; rua=mailto:postmaster@example.org\"",
        "PTR) of 192.0.2.25 and 2001:db8::25 to mx.example.org.",
        "postern user add you@example.org",
    ] {
        assert!(printed.contains(want), "{want:?} in\n{printed}");
    }
    // The state goes beside the configuration, not into it.
    let state = tmp.path().join("etc-postern-state");
    assert!(
        printed.contains(&format!("will be in {}", state.display())),
        "{printed}"
    );

    let config = fs::read_to_string(dir.join("postern.toml")).expect("postern.toml");
    for want in [
        "hostname = \"mx.example.org\"",
        "smtp = [\"0.0.0.0:25\", \"[::]:25\"]",
        "submission = [\"0.0.0.0:587\", \"[::]:587\"]",
        "submissions = [\"0.0.0.0:465\", \"[::]:465\"]",
    ] {
        assert!(config.contains(want), "{want:?} in\n{config}");
    }
    assert!(!config.contains("127.0.0.1:2525"), "{config}");
    let keys: Vec<_> = fs::read_dir(dir.join("domains/example.org/dkim"))
        .expect("dkim")
        .map(|e| e.expect("entry").file_name().into_string().expect("name"))
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(dir.join(".gitignore").is_file());

    // What is missing is the certificate, and config check says so.
    let check = common::postern(&dir, &["config", "check"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(text(&check).contains("certs"), "{}", text(&check));
    assert!(
        text(&check).contains("postern: 1 problem"),
        "{}",
        text(&check)
    );
    common::write_certbot(
        &dir.join("certs/mx.example.org"),
        &common::cert(&["mx.example.org"]),
    );
    let check = common::postern(&dir, &["config", "check"]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("ok (hostname mx.example.org"),
        "{}",
        text(&check)
    );

    // config show: the effective file, state resolved beside the directory, and a valid
    // postern.toml that config check accepts as it is.
    let show = common::postern(&dir, &["config", "show"]);
    assert!(show.status.success(), "{}", text(&show));
    let shown = String::from_utf8_lossy(&show.stdout).into_owned();
    for want in [
        "hostname = \"mx.example.org\"\n",
        "min_free_space = 104857600  # default\n",
        "\n[listeners]\nsmtp = [\"0.0.0.0:25\", \"[::]:25\"]\n",
        "ip_preference = \"ipv6\"\n",
    ] {
        assert!(shown.contains(want), "{want:?} in\n{shown}");
    }
    assert!(
        shown.contains(&format!(
            "data_dir = \"{}-state\"  # default\n",
            dir.display()
        )),
        "{shown}"
    );
    let copy = tempfile::tempdir().expect("tempdir");
    fs::write(copy.path().join("postern.toml"), &shown).expect("write");
    common::write_certbot(
        &copy.path().join("certs/mx.example.org"),
        &common::cert(&["mx.example.org"]),
    );
    let check = common::postern(copy.path(), &["config", "check"]);
    assert!(check.status.success(), "{}", text(&check));

    // Once set up, init writes nothing.
    let before = fs::read_to_string(dir.join("postern.toml")).expect("read");
    let again = common::postern(&dir, &["init", "example.org"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("set up already"), "{}", text(&again));
    assert_eq!(
        fs::read_to_string(dir.join("postern.toml")).expect("read"),
        before
    );
    let bad = common::postern(&tmp.path().join("other"), &["init", "not a domain"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("is not a domain name"),
        "{}",
        text(&bad)
    );
}

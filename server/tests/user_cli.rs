//! `postern -C DIR user ...`: every command, good and bad input. A failing command must name
//! the problem and leave the users file byte for byte as it was.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BINARY: &str = env!("CARGO_BIN_EXE_postern");

/// Runs `postern -C dir user args...` with `stdin` as standard input.
fn user(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BINARY)
        .arg("-C")
        .arg(dir)
        .arg("user")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn postern");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("wait")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A configuration directory with the local domains example.org and bücher.example.
fn config_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir.path().join("domains/example.org")).expect("mkdir");
    fs::create_dir_all(dir.path().join("domains/bücher.example")).expect("mkdir");
    dir
}

fn users_file(dir: &Path, domain: &str) -> String {
    fs::read_to_string(dir.join("domains").join(domain).join("users")).unwrap_or_default()
}

#[test]
fn add_list_check_passwd_remove() {
    let dir = config_dir();
    let root = dir.path();
    let out = user(
        root,
        &["add", "Alice@Example.ORG", "--password-stdin"],
        "s3cret pass\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("added alice@example.org"),
        "{}",
        text(&out)
    );
    let file = users_file(root, "example.org");
    assert!(
        file.starts_with("alice@example.org $argon2id$v=19$"),
        "{file}"
    );
    assert!(!file.contains("s3cret"), "{file}");

    let out = user(root, &["add", "--receive-only", "info@example.org"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(users_file(root, "example.org").contains("\ninfo@example.org - receive-only\n"));

    // IDNA: the A-label form is the same domain; stored in Unicode.
    let out = user(
        root,
        &[
            "add",
            "jose\u{301}@XN--BCHER-KVA.example",
            "--password-stdin",
        ],
        "password-1\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(users_file(root, "bücher.example").starts_with("josé@bücher.example $argon2id$"));

    let out = user(root, &["list"], "");
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        listed,
        "josé@bücher.example\nalice@example.org\ninfo@example.org receive-only no-password\n"
    );
    let out = user(root, &["list", "EXAMPLE.org"], "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice@example.org\ninfo@example.org receive-only no-password\n"
    );

    let out = user(
        root,
        &["check", "alice@example.org", "--password-stdin"],
        "s3cret pass\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = user(
        root,
        &["check", "ALICE@example.org", "--password-stdin"],
        "s3cret pass\r\n",
    );
    assert!(out.status.success(), "CRLF is a line end: {}", text(&out));
    let out = user(
        root,
        &["check", "alice@example.org", "--password-stdin"],
        "wrong\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("wrong password for alice@example.org"),
        "{}",
        text(&out)
    );
    let out = user(
        root,
        &["check", "josé@bücher.example", "--password-stdin"],
        "password-1\n",
    );
    assert!(out.status.success(), "NFC lookups: {}", text(&out));

    let out = user(
        root,
        &["passwd", "alice@example.org", "--password-stdin"],
        "a new one\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = user(
        root,
        &["check", "alice@example.org", "--password-stdin"],
        "s3cret pass\n",
    );
    assert_eq!(out.status.code(), Some(1), "old password: {}", text(&out));
    let out = user(
        root,
        &["check", "alice@example.org", "--password-stdin"],
        "a new one\n",
    );
    assert!(out.status.success(), "{}", text(&out));

    let out = user(root, &["remove", "alice@example.org"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        users_file(root, "example.org"),
        "info@example.org - receive-only\n"
    );
}

#[test]
fn bad_input_names_the_problem_and_changes_nothing() {
    let dir = config_dir();
    let root = dir.path();
    let out = user(
        root,
        &["add", "alice@example.org", "--password-stdin"],
        "password-1\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let before = users_file(root, "example.org");

    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["add", "bob@nowhere.example", "--password-stdin"],
            "password-1\n",
            "unknown domain nowhere.example",
        ),
        (
            &["add", "alice@example.org", "--password-stdin"],
            "password-1\n",
            "user alice@example.org already exists",
        ),
        (
            &["add", "ALICE@EXAMPLE.ORG", "--password-stdin"],
            "password-1\n",
            "already exists",
        ),
        (
            &["add", "bob@example.org", "--password-stdin"],
            "\n",
            "empty password",
        ),
        (
            &["add", "bob@example.org", "--password-stdin"],
            "",
            "empty password",
        ),
        (
            &["add", "bob", "--password-stdin"],
            "password-1\n",
            "malformed address \"bob\"",
        ),
        (
            &["add", "bob@", "--password-stdin"],
            "password-1\n",
            "malformed address",
        ),
        (
            &["add", "bob%evil@example.org", "--password-stdin"],
            "password-1\n",
            "malformed address",
        ),
        (
            &["add", "a@b@example.org", "--password-stdin"],
            "password-1\n",
            "malformed address",
        ),
        (
            &["add", "bob@[127.0.0.1]", "--password-stdin"],
            "password-1\n",
            "address literal",
        ),
        (
            &["add", "../x@example.org", "--password-stdin"],
            "password-1\n",
            "malformed address",
        ),
        (
            &["remove", "bob@example.org"],
            "",
            "no user bob@example.org",
        ),
        (&["remove", "bob@nowhere.example"], "", "unknown domain"),
        (
            &["passwd", "bob@example.org", "--password-stdin"],
            "password-1\n",
            "no user bob@example.org",
        ),
        (
            &["passwd", "alice@example.org", "--password-stdin"],
            "\n",
            "empty password",
        ),
        (
            &["check", "bob@example.org", "--password-stdin"],
            "password-1\n",
            "no user bob@example.org",
        ),
        (
            &["list", "nowhere.example"],
            "",
            "unknown domain nowhere.example",
        ),
    ];
    for (args, stdin, want) in cases {
        let out = user(root, args, stdin);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(want),
            "{args:?}: want {want:?} in {}",
            text(&out)
        );
        assert_eq!(
            users_file(root, "example.org"),
            before,
            "{args:?} changed the file"
        );
    }
    assert!(!root.join("domains/nowhere.example").exists());

    // A broken line: the commands refuse to rewrite the file, and say where.
    let broken = format!("{before}this is not a user\n");
    fs::write(root.join("domains/example.org/users"), &broken).expect("write");
    let out = user(
        root,
        &["add", "bob@example.org", "--password-stdin"],
        "password-1\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("users, line 2"), "{}", text(&out));
    assert_eq!(users_file(root, "example.org"), broken);
    // No temporary file is left behind.
    let names: Vec<_> = fs::read_dir(root.join("domains/example.org"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["users"], "{names:?}");
}

/// Without `--password-stdin` the password comes from the terminal, asked twice: run under a
/// pseudo-terminal with util-linux `script` (skipped where it is missing).
#[test]
fn passwords_from_the_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to provide a terminal");
        return;
    }
    let dir = config_dir();
    let root = dir.path();
    let in_pty = |args: &str, typed: &str| {
        let mut child = Command::new("script")
            .arg("-qec")
            .arg(format!("{BINARY} -C {} user {args}", root.display()))
            .arg("/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn script");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(typed.as_bytes());
        }
        child.wait_with_output().expect("wait")
    };
    let out = in_pty("add carol@example.org", "tty-password\ntty-password\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("New password: "), "{}", text(&out));
    let out = user(
        root,
        &["check", "carol@example.org", "--password-stdin"],
        "tty-password\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let before = users_file(root, "example.org");
    let out = in_pty("passwd carol@example.org", "first-one\nsecond-one\n");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the passwords do not match"),
        "{}",
        text(&out)
    );
    assert_eq!(users_file(root, "example.org"), before);
}

/// Too short a password is refused, with the minimum ([auth] min_password_length, 8 unless
/// postern.toml says otherwise); without a terminal and without --password-stdin the error
/// says how to give it; `passwd` on a receive-only user makes it a user that can log in, and
/// says so.
#[test]
fn short_passwords_no_terminal_and_receive_only_passwd() {
    let dir = config_dir();
    let root = dir.path();
    let out = user(
        root,
        &["add", "bob@example.org", "--password-stdin"],
        "7-chars\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("shorter than 8 characters ([auth] min_password_length"),
        "{}",
        text(&out)
    );
    fs::write(
        root.join("postern.toml"),
        "[auth]\nmin_password_length = 12\n[listeners]\nsmtp = [\"127.0.0.1:0\"]\n",
    )
    .expect("config");
    let out = user(
        root,
        &["add", "bob@example.org", "--password-stdin"],
        "ten-chars!\n",
    );
    assert!(
        text(&out).contains("shorter than 12 characters"),
        "{}",
        text(&out)
    );
    let out = user(
        root,
        &["add", "bob@example.org", "--password-stdin"],
        "twelve-chars\n",
    );
    assert!(out.status.success(), "{}", text(&out));

    // No controlling terminal (a new session), no --password-stdin.
    let out = Command::new("setsid")
        .arg("--wait")
        .arg(BINARY)
        .arg("-C")
        .arg(root)
        .args(["user", "add", "carol@example.org"])
        .stdin(Stdio::null())
        .output()
        .expect("run setsid");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no terminal to ask for the password on: give it on standard input with --password-stdin"),
        "{}",
        text(&out)
    );

    let out = user(root, &["add", "--receive-only", "info@example.org"], "");
    assert!(out.status.success(), "{}", text(&out));
    let out = user(
        root,
        &["passwd", "info@example.org", "--password-stdin"],
        "info-password\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("it was receive-only and can now log in and send"),
        "{}",
        text(&out)
    );
    let out = user(
        root,
        &["check", "info@example.org", "--password-stdin"],
        "info-password\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = user(root, &["list"], "");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("receive-only"),
        "{}",
        text(&out)
    );
}

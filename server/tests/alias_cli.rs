//! `postern -C DIR alias resolve ADDRESS`: the real binary on temporary configuration
//! directories. Catch-all, suffixes, drop characters, recursion, pipes, loops and broken files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_postern");

/// Runs `postern -C dir alias resolve args...`.
fn resolve(dir: &Path, args: &[&str]) -> Output {
    Command::new(BINARY)
        .arg("-C")
        .arg(dir)
        .args(["alias", "resolve"])
        .args(args)
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

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A configuration directory: example.org with users alice and bob, its aliases file, and the
/// local domain other.example without aliases. Returns the directory and the aliases path.
fn config_dir(aliases: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let domain = dir.path().join("domains/example.org");
    fs::create_dir_all(&domain).expect("mkdir");
    fs::create_dir_all(dir.path().join("domains/other.example")).expect("mkdir");
    fs::write(domain.join("users"), "alice\nbob - receive-only\n").expect("users");
    let file = domain.join("aliases");
    fs::write(&file, aliases).expect("aliases");
    (dir, file)
}

const ALIASES: &str = "\
# The team.
team: sales, ops, ext@partner.example
sales: alice
ops: bob, archive
archive: | /usr/local/bin/archive --all
john.doe: alice
news+eu: bob
*: postmaster
";

#[test]
fn destinations_and_why() {
    let (dir, file) = config_dir(ALIASES);
    let file = file.display().to_string();
    let out = resolve(dir.path(), &["Team@Example.ORG"]);
    assert!(out.status.success(), "{}", text(&out));
    let want = format!(
        "local alice@example.org\n\
         \x20 team@example.org: alias \"team\" ({file}:2)\n\
         \x20 sales@example.org: alias \"sales\" ({file}:3)\n\
         \x20 alice@example.org: existing user \"alice\"\n\
         local bob@example.org\n\
         \x20 team@example.org: alias \"team\" ({file}:2)\n\
         \x20 ops@example.org: alias \"ops\" ({file}:4)\n\
         \x20 bob@example.org: existing user \"bob\"\n\
         pipe | /usr/local/bin/archive --all\n\
         \x20 team@example.org: alias \"team\" ({file}:2)\n\
         \x20 ops@example.org: alias \"ops\" ({file}:4)\n\
         \x20 archive@example.org: alias \"archive\" ({file}:5)\n\
         \x20 | /usr/local/bin/archive --all: piped to a command\n\
         remote ext@partner.example\n\
         \x20 team@example.org: alias \"team\" ({file}:2)\n\
         \x20 ext@partner.example: not a local domain, delivered remotely\n"
    );
    assert_eq!(stdout(&out), want, "{}", text(&out));
}

#[test]
fn catch_all_suffixes_and_dots() {
    let (dir, file) = config_dir(ALIASES);
    let file = file.display().to_string();
    // (address, first line of the output, a line the explanation must have)
    let cases = [
        // Unknown user: the catch-all.
        (
            "nobody@example.org",
            "local postmaster@example.org",
            format!("nobody@example.org: neither alias nor user, caught by \"*\" ({file}:8)"),
        ),
        // A user is not caught, with or without a suffix; drop characters are ignored.
        (
            "alice@example.org",
            "local alice@example.org",
            "alice@example.org: existing user \"alice\"".to_string(),
        ),
        (
            "alice+lists@example.org",
            "local alice@example.org",
            "alice+lists@example.org: existing user \"alice\"".to_string(),
        ),
        (
            "A.lice@example.org",
            "local alice@example.org",
            "a.lice@example.org: existing user \"alice\"".to_string(),
        ),
        // An alias with dots matches with any dots, and with a suffix.
        (
            "johndoe@example.org",
            "local alice@example.org",
            format!("johndoe@example.org: alias \"johndoe\" ({file}:6)"),
        ),
        (
            "J.o.h.n.Doe+x@example.org",
            "local alice@example.org",
            format!(
                "j.o.h.n.doe+x@example.org: alias \"johndoe\" once suffix and drop \
                 characters are removed ({file}:6)"
            ),
        ),
        // An alias with a suffix wins over the catch-all; without it, the catch-all.
        (
            "news+eu@example.org",
            "local bob@example.org",
            format!("news+eu@example.org: alias \"news+eu\" ({file}:7)"),
        ),
        (
            "news+us@example.org",
            "local postmaster@example.org",
            format!("news+us@example.org: neither alias nor user, caught by \"*\" ({file}:8)"),
        ),
        // Not local: as is.
        (
            "<Someone@Elsewhere.example>",
            "remote Someone@Elsewhere.example",
            "Someone@Elsewhere.example: not a local domain, delivered remotely".to_string(),
        ),
    ];
    for (address, first, why) in cases {
        let out = resolve(dir.path(), &[address]);
        assert!(out.status.success(), "{address}: {}", text(&out));
        let shown = stdout(&out);
        assert_eq!(shown.lines().next(), Some(first), "{address}: {shown}");
        assert!(
            shown.lines().any(|l| l.trim() == why),
            "{address}: expected {why:?} in\n{shown}"
        );
    }

    // Other drop characters and separators on the command line.
    let out = resolve(
        dir.path(),
        &[
            "--drop-characters",
            "",
            "--suffix-separators",
            "-",
            "john.doe-x@example.org",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("alias \"john.doe\" once suffix"),
        "{}",
        text(&out)
    );
}

#[test]
fn unknown_in_a_domain_without_catch_all() {
    let (dir, _) = config_dir(ALIASES);
    let out = resolve(dir.path(), &["ghost@other.example"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        stdout(&out),
        "unknown ghost@other.example\n\
         \x20 ghost@other.example: no such user, no alias, no catch-all\n"
    );
    assert!(
        text(&out).contains(
            "postern: ghost@other.example: no deliverable destination; \
             a message to it would be refused"
        ),
        "{}",
        text(&out)
    );
    // One unknown target among deliverable ones: delivered, exit 0.
    fs::write(
        dir.path().join("domains/other.example/aliases"),
        "list: ghost, alice@example.org\n",
    )
    .expect("write");
    let out = resolve(dir.path(), &["list@other.example"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        ["unknown ghost@other.example", "local alice@example.org"]
    );
}

#[test]
fn loops_and_depth_are_clear_errors() {
    let (dir, _) = config_dir("a: b\nb: c@other.example\n");
    fs::write(
        dir.path().join("domains/other.example/aliases"),
        "c: a@example.org\n",
    )
    .expect("write");
    let out = resolve(dir.path(), &["a@example.org"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "postern: cannot resolve a@example.org: alias loop: a@example.org -> b@example.org \
         -> c@other.example -> a@example.org\n"
    );
    assert_eq!(stdout(&out), "", "nothing is printed when resolution fails");

    let chain: String = (0..11).map(|i| format!("l{i}: l{}\n", i + 1)).collect();
    let (dir, _) = config_dir(&chain);
    let out = resolve(dir.path(), &["l0@example.org"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("aliases nested deeper than 10: l0@example.org -> l1@example.org"),
        "{}",
        text(&out)
    );
}

#[test]
fn broken_file_names_file_and_line() {
    let (dir, file) = config_dir("# fine\nsales: alice\nops bob\n");
    let out = resolve(dir.path(), &["sales@example.org"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "postern: {}, line 3: missing ':' (expected \"user: target, target\")\n",
            file.display()
        )),
        "{}",
        text(&out)
    );
    assert!(stderr.contains("keeps the previous version"), "{stderr}");

    // Other mistakes, each named with its line.
    let cases = [
        ("a@example.org: b\n", 1, "must not contain '@'"),
        ("\n\na: | \n", 3, "the pipe has no command"),
        ("a: b c\n", 1, "a target is one address"),
        ("a: ,\n", 1, "no target"),
    ];
    for (aliases, line, reason) in cases {
        fs::write(&file, aliases).expect("write");
        let out = resolve(dir.path(), &["a@example.org"]);
        assert_eq!(out.status.code(), Some(1), "{aliases:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let head = format!("postern: {}, line {line}: ", file.display());
        assert!(
            stderr.starts_with(&head) && stderr.contains(reason),
            "{aliases:?}: {stderr}"
        );
    }

    // A duplicate key is a warning: the last line wins, exit 0.
    fs::write(&file, "a: alice\na: bob\n").expect("write");
    let out = resolve(dir.path(), &["a@example.org"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).starts_with("local bob@example.org\n"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "postern: warning: {}, line 2: \"a\" is defined again (first on line 1)",
            file.display()
        )),
        "{}",
        text(&out)
    );

    // A malformed address.
    let out = resolve(dir.path(), &["not an address"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("malformed address \"not an address\""),
        "{}",
        text(&out)
    );
}

/// chasquid's t-04 aliases file, brought as is, with its test's settings.
#[test]
fn chasquid_file_brought_as_is() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../conformance/suites/smtp/chasquid/t-04-aliases/config/domains/testserver/aliases");
    let file = fs::read_to_string(&source).expect("t-04 aliases in conformance/suites");
    let dir = tempfile::tempdir().expect("tempdir");
    let domain = dir.path().join("domains/testserver");
    fs::create_dir_all(&domain).expect("mkdir");
    fs::write(domain.join("aliases"), file).expect("write");
    fs::write(domain.join("users"), "azul\níndigo\n").expect("write");
    let args = ["--drop-characters", "._", "--suffix-separators", "+-"];
    let with = |address: &'static str| [&args[..], &[address]].concat();
    let out = resolve(dir.path(), &with("a.ñi_l-blah@testserver"));
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(str::to_string)
        .collect();
    assert_eq!(lines, ["local azul@testserver", "local índigo@testserver"]);
    let out = resolve(dir.path(), &with("tubo@testserver"));
    assert!(
        stdout(&out).starts_with("pipe | writemailto ../.data/pipe_alias_worked\n"),
        "{}",
        text(&out)
    );
}

/// Without flags, `[aliases]` of postern.toml decides the suffix separators and drop
/// characters, as the server does; a flag still wins.
#[test]
fn the_configured_separators_are_used() {
    let (dir, _) = config_dir(ALIASES);
    fs::write(
        dir.path().join("postern.toml"),
        "hostname = \"mx.example.org\"\n[aliases]\nsuffix_separators = \"-\"\ndrop_characters = \"\"\n[listeners]\nsmtp = [\"127.0.0.1:0\"]\n",
    )
    .expect("config");
    let out = resolve(dir.path(), &["alice-lists@example.org"]);
    assert!(
        stdout(&out).starts_with("local alice@example.org"),
        "{}",
        text(&out)
    );
    // "+" is no separator here, and dots are not dropped: both reach the catch-all.
    for address in ["alice+lists@example.org", "a.lice@example.org"] {
        let out = resolve(dir.path(), &[address]);
        assert!(
            stdout(&out).starts_with("local postmaster@example.org"),
            "{}",
            text(&out)
        );
    }
    let out = resolve(
        dir.path(),
        &["alice+lists@example.org", "--suffix-separators", "+"],
    );
    assert!(
        stdout(&out).starts_with("local alice@example.org"),
        "{}",
        text(&out)
    );
}

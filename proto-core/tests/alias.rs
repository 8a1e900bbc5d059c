//! Alias resolution against chasquid: its conformance alias files (t-04, t-22, from
//! conformance/suites) and the cases of its aliases package tests, written as tables here. Each
//! destination is shown the way `chasquid-util aliases-resolve` prints it: `(email) addr`,
//! `(pipe) command`, `(forward) addr via a/b`.

use std::collections::BTreeSet;

use proptest::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};

use proto_core::{
    Mailbox, mail::AliasError, mail::AliasOptions, mail::AliasTable, mail::AliasTables,
    mail::Destination, mail::Rule, mail::resolve,
};

/// `<workspace>/conformance/suites/smtp/chasquid`.
fn chasquid_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/suites/smtp/chasquid")
}

fn read(path: &str) -> String {
    let path = chasquid_dir().join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Options as in a chasquid.conf.
fn options(drop: &str, suffix: &str) -> AliasOptions {
    AliasOptions {
        drop_characters: drop.into(),
        suffix_separators: suffix.into(),
        ..AliasOptions::default()
    }
}

/// Tables from (domain, file text).
fn tables(files: &[(&str, &str)], o: &AliasOptions) -> AliasTables {
    let mut t = AliasTables::new();
    for (domain, text) in files {
        let (table, warnings) =
            AliasTable::parse(domain, text, o).unwrap_or_else(|e| panic!("{domain}: {e}"));
        assert!(warnings.is_empty(), "{domain}: {warnings:?}");
        t.insert(table);
    }
    t
}

/// A destination in chasquid-util's notation. Local users and unknown local addresses are
/// both `(email)` there: chasquid hands unknown ones to delivery, which fails.
fn chasquid_form(d: &Destination) -> String {
    match d {
        Destination::Local { user, domain } | Destination::Unknown { user, domain } => {
            format!("(email) {user}@{domain}")
        }
        Destination::Remote(m) => format!("(email) {m}"),
        Destination::Pipe { command, .. } => format!("(pipe) {command}"),
        Destination::Forward { address, via } => {
            format!("(forward) {address} via {}", via.join("/"))
        }
        other => format!("unexpected {other:?}"),
    }
}

/// Runs `(address, expected destinations)` cases; `users` are the existing users.
fn check(t: &AliasTables, o: &AliasOptions, users: &[&str], cases: &[(&str, &[&str])]) {
    let users: BTreeSet<String> = users.iter().map(|s| s.to_string()).collect();
    let exists = |domain: &str, user: &str| -> Result<bool, String> {
        Ok(users.contains(&format!("{user}@{domain}")))
    };
    for (address, want) in cases {
        let mailbox = Mailbox::parse(address).unwrap_or_else(|e| panic!("{address}: {e}"));
        let got: Vec<String> = resolve(&mailbox, t, &exists, o)
            .unwrap_or_else(|e| panic!("{address}: {e}"))
            .iter()
            .map(|r| chasquid_form(&r.destination))
            .collect();
        assert_eq!(got, *want, "resolving {address}");
    }
}

#[test]
fn t04_aliases() {
    // t-04-aliases/config/chasquid.conf: suffix_separators "+-", drop_characters "._".
    let o = options("._", "+-");
    let t = tables(
        &[(
            "testserver",
            &read("t-04-aliases/config/domains/testserver/aliases"),
        )],
        &o,
    );
    let users = [
        "user@testserver",
        "jose@testserver",
        "juan@testserver",
        "ñangapirí@testserver",
        "azul@testserver",
        "índigo@testserver",
    ];
    // From run.sh (send_and_check) and test_chasquid_util.cmy (aliases-resolve).
    let cases: &[(&str, &[&str])] = &[
        ("pepe@testserver", &["(email) jose@testserver"]),
        ("joan@testserver", &["(email) juan@testserver"]),
        ("pitanga@testserver", &["(email) ñangapirí@testserver"]),
        (
            "añil@testserver",
            &["(email) azul@testserver", "(email) índigo@testserver"],
        ),
        (
            "a.ñi_l@testserver",
            &["(email) azul@testserver", "(email) índigo@testserver"],
        ),
        (
            "añil-blah@testserver",
            &["(email) azul@testserver", "(email) índigo@testserver"],
        ),
        (
            "añil+blah@testserver",
            &["(email) azul@testserver", "(email) índigo@testserver"],
        ),
        (
            "a.ñi_l-blah@testserver",
            &["(email) azul@testserver", "(email) índigo@testserver"],
        ),
        (
            "tubo@testserver",
            &["(pipe) writemailto ../.data/pipe_alias_worked"],
        ),
        ("anunknownuser@blah", &["(email) anunknownuser@blah"]),
        // Case and NFC: the same alias.
        ("PePe@TestServer", &["(email) jose@testserver"]),
        (
            "an\u{303}il@testserver",
            &["(email) azul@testserver", "(email) índigo@testserver"],
        ),
        // Not an alias, but a user.
        ("user@testserver", &["(email) user@testserver"]),
        ("us.er+x@testserver", &["(email) user@testserver"]),
    ];
    check(&t, &o, &users, cases);

    // nono@testserver must fail delivery (run.sh): it is unknown, and resolution says so.
    let nono = Mailbox::parse("nono@testserver").expect("address");
    let got = resolve(&nono, &t, &|_, _| Ok(false), &o).expect("resolves");
    assert_eq!(
        got.iter().map(|r| &r.destination).collect::<Vec<_>>(),
        [&Destination::Unknown {
            user: "nono".into(),
            domain: "testserver".into()
        }]
    );
}

#[test]
fn t22_forward_via() {
    // No suffix or drop settings in t-22's configs: chasquid's defaults.
    let o = AliasOptions::default();
    let dodo_secondary = read("t-22-forward_via/secondary/domains/dodo/aliases");
    let dodo_primary = read("t-22-forward_via/primary/domains/dodo/aliases");
    let kiwi_external = read("t-22-forward_via/external/domains/kiwi/aliases");

    // The secondary server for dodo: only user222 exists there; everything else goes to the
    // primary through the catch-all "*: * via primary".
    let secondary = tables(&[("dodo", &dodo_secondary)], &o);
    check(
        &secondary,
        &o,
        &["user222@dodo"],
        &[
            ("user111@dodo", &["(forward) user111@dodo via primary"]),
            ("user222@dodo", &["(email) user222@dodo"]),
            ("chain-1-1@dodo", &["(forward) chain-1-2@dodo via primary"]),
            ("chain-1-4@dodo", &["(forward) chain-1-5@dodo via primary"]),
            ("user333@kiwi", &["(email) user333@kiwi"]),
            // The right-side '*' is the user as given.
            (
                "Some.One+x@dodo",
                &["(forward) Some.One+x@dodo via primary"],
            ),
        ],
    );

    let primary = tables(&[("dodo", &dodo_primary)], &o);
    check(
        &primary,
        &o,
        &["user111@dodo"],
        &[
            ("chain-1-2@dodo", &["(email) chain-1-3@kiwi"]),
            ("chain-1-5@dodo", &["(email) user111@dodo"]),
            ("user111@dodo", &["(email) user111@dodo"]),
        ],
    );

    let external = tables(&[("kiwi", &kiwi_external)], &o);
    check(
        &external,
        &o,
        &["user333@kiwi"],
        &[
            (
                "chain-1-3@kiwi",
                &["(forward) chain-1-4@dodo via secondary"],
            ),
            ("user333@kiwi", &["(email) user333@kiwi"]),
        ],
    );
}

/// chasquid's aliases_test.go richFileContents, as a file: overrides, normalisation of the
/// right side, exact keys with suffixes winning over clean ones.
#[test]
fn rich_file() {
    let text = "
# comment
a: b
c: d@e, f,
x: | command

o1: a
o1: b

aA: bB@dom-B

pq: pa
p.q: pb
p.q+r: pc
pq+r: pd
ppp1: p.q+r
ppp2: p.q
ppp3: ppp2

y: z";
    let o = options(".", "+");
    let (table, warnings) = AliasTable::parse("dom", text, &o).expect("parses");
    // o1 twice, and p.q is pq, p.q+r is pq+r.
    let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
    assert_eq!(lines, [8, 13, 15], "{warnings:?}");
    assert_eq!(table.len(), 11);
    let mut t = AliasTables::new();
    t.insert(table);
    t.insert(AliasTable::empty("dom-b"));
    let all: &[&str] = &[
        "b@dom", "f@dom", "bb@dom-b", "pb@dom", "pd@dom", "z@dom", "pa@dom", "pc@dom",
    ];
    check(
        &t,
        &o,
        all,
        &[
            ("a@dom", &["(email) b@dom"]),
            ("c@dom", &["(email) d@e", "(email) f@dom"]),
            ("x@dom", &["(pipe) command"]),
            ("o1@dom", &["(email) b@dom"]),
            ("aA@dom", &["(email) bb@dom-b"]),
            ("aa@dom", &["(email) bb@dom-b"]),
            ("pq@dom", &["(email) pb@dom"]),
            ("p.q@dom", &["(email) pb@dom"]),
            ("p.q+r@dom", &["(email) pd@dom"]),
            ("pq+r@dom", &["(email) pd@dom"]),
            ("pq+z@dom", &["(email) pb@dom"]),
            ("\"p..q\"@dom", &["(email) pb@dom"]),
            ("\"p..q+r\"@dom", &["(email) pd@dom"]),
            ("ppp1@dom", &["(email) pd@dom"]),
            ("ppp2@dom", &["(email) pb@dom"]),
            ("ppp3@dom", &["(email) pb@dom"]),
            ("y@dom", &["(email) z@dom"]),
        ],
    );
}

/// chasquid's TestCatchAll and TestRightSideAsterisk.
#[test]
fn catch_all_and_right_side_star() {
    let o = options(".", "+");
    let t = tables(&[("dom", "a: a@remote\nb: c\nc: | cmd\n*: c\n")], &o);
    // Users whose name starts with x do not exist; the others do.
    let users = ["a@dom", "b@dom", "c@dom", "zz@dom"];
    check(
        &t,
        &o,
        &users,
        &[
            ("a@dom", &["(email) a@remote"]),
            ("a+z@dom", &["(email) a@remote"]),
            ("\"a.\"@dom", &["(email) a@remote"]),
            ("b@dom", &["(pipe) cmd"]),
            ("c@dom", &["(pipe) cmd"]),
            ("x@dom", &["(pipe) cmd"]),
            ("zz@dom", &["(email) zz@dom"]),
            ("a@remote", &["(email) a@remote"]),
        ],
    );

    let t = tables(
        &[
            ("dom1", "a: aaa@remote\n*: *@dom2\nz: *@remote\n"),
            ("dom2", "b: bbb@remote\n*: *@remote\n"),
            ("dom3", "*: *@dom3\n"),
            ("dom4", "*: *@remote1, *@remote2, fixed@remote3\n"),
            ("dom5", "a: b@dom5\n*: *@remote\n"),
        ],
        &o,
    );
    check(
        &t,
        &o,
        &[],
        &[
            ("a@dom1", &["(email) aaa@remote"]),
            ("b@dom1", &["(email) bbb@remote"]),
            ("xyz@dom1", &["(email) xyz@remote"]),
            ("xyz@dom2", &["(email) xyz@remote"]),
            ("z@dom1", &["(email) z@remote"]),
            ("a+lala@dom1", &["(email) aaa@remote"]),
            ("\"a..\"@dom1", &["(email) aaa@remote"]),
            ("xyz+abcd@dom1", &["(email) xyz+abcd@remote"]),
            ("x.y.z@dom1", &["(email) x.y.z@remote"]),
            (
                "abc@dom4",
                &[
                    "(email) abc@remote1",
                    "(email) abc@remote2",
                    "(email) fixed@remote3",
                ],
            ),
            ("a@dom5", &["(email) b@remote"]),
            ("b@dom5", &["(email) b@remote"]),
            ("c@dom5", &["(email) c@remote"]),
        ],
    );
    // chasquid: recursion limit; here the loop is named.
    let x = Mailbox::parse("x@dom3").expect("address");
    let err = resolve(&x, &t, &|_, _| Ok(false), &o).expect_err("loops");
    assert_eq!(
        err,
        AliasError::Loop {
            chain: vec!["x@dom3".into(), "x@dom3".into()]
        }
    );
}

/// postmaster: an alias, a user or the catch-all of the domain takes it; only when none does
/// is it the domain's own mailbox (RFC 5321 section 4.5.1), never unknown.
#[test]
fn postmaster_follows_aliases_then_stands_on_its_own() {
    let o = options(".", "+");
    let t = tables(
        &[
            ("plain", "a: b\n"),
            ("caught", "*: me@elsewhere\n"),
            ("named", "postmaster: ops@elsewhere\n*: me@elsewhere\n"),
            ("user", "*: me@elsewhere\n"),
            ("classic", "*: postmaster\n"),
        ],
        &o,
    );
    let exists = |domain: &str, user: &str| -> Result<bool, String> {
        Ok(domain == "user" && user == "postmaster")
    };
    // (address, destination, the rule of the last step)
    let cases = [
        // `*: postmaster`: everything, postmaster too, in postmaster's own mailbox.
        (
            "postmaster@classic",
            "local postmaster@classic",
            "postmaster",
        ),
        ("nobody@classic", "local postmaster@classic", "postmaster"),
        ("postmaster@plain", "local postmaster@plain", "postmaster"),
        ("PostMaster@plain", "local postmaster@plain", "postmaster"),
        (
            "post.master+x@plain",
            "local postmaster@plain",
            "postmaster",
        ),
        ("postmaster@caught", "remote me@elsewhere", "not local"),
        ("postmaster@named", "remote ops@elsewhere", "not local"),
        ("postmaster@user", "local postmaster@user", "user"),
        ("postmasters@plain", "unknown postmasters@plain", "unknown"),
    ];
    let kind = |rule: &Rule| match rule {
        Rule::Postmaster => "postmaster",
        Rule::NotLocal => "not local",
        Rule::User { .. } => "user",
        Rule::Unknown => "unknown",
        _ => "other",
    };
    for (address, want, last_rule) in cases {
        let mailbox = Mailbox::parse(address).expect("address");
        let got = resolve(&mailbox, &t, &exists, &o).unwrap_or_else(|e| panic!("{address}: {e}"));
        assert_eq!(got.len(), 1, "{address}: {got:?}");
        assert_eq!(got[0].destination.to_string(), want, "{address}");
        let rule = &got[0].trail.last().expect("a step").rule;
        assert_eq!(kind(rule), last_rule, "{address}: ended on {rule:?}");
    }
    // The catch-all's step names it, so `postern alias resolve` says why.
    let mailbox = Mailbox::parse("postmaster@caught").expect("address");
    let got = resolve(&mailbox, &t, &exists, &o).expect("resolves");
    assert!(
        matches!(got[0].trail[0].rule, Rule::CatchAll { line: 1 }),
        "{got:?}"
    );
}

/// chasquid's TestAddrRewrite: several drop characters and suffix separators.
#[test]
fn drop_characters_and_suffixes() {
    let o = options(".~", "-+");
    let t = tables(
        &[
            (
                "def",
                "abc: x@y\nñoño: x@y\nrecu: ab+cd@p-q.com\nremo: x-@y-z.com\nrecu-zzz: z@z\n",
            ),
            ("p-q.com", ""),
        ],
        &o,
    );
    let users = ["abc@p-q.com", "ab@p-q.com", "re@def"];
    check(
        &t,
        &o,
        &users,
        &[
            ("abc@def", &["(email) x@y"]),
            ("a.b.c@def", &["(email) x@y"]),
            ("a~b~c@def", &["(email) x@y"]),
            ("abc-ñaca@def", &["(email) x@y"]),
            ("abc+xyz@def", &["(email) x@y"]),
            ("abc-x.y+z@def", &["(email) x@y"]),
            ("ñ.o~ño-ñaca@def", &["(email) x@y"]),
            ("a.bc-ñaca@p-q.com", &["(email) abc@p-q.com"]),
            ("recu+blah@def", &["(email) ab@p-q.com"]),
            ("re-cu@def", &["(email) re@def"]),
            ("re.cu@def", &["(email) ab@p-q.com"]),
            ("re.cu-zzz@def", &["(email) z@z"]),
            ("re@def", &["(email) re@def"]),
            ("r.e.c.u@def", &["(email) ab@p-q.com"]),
            ("re.cu-yyy@def", &["(email) ab@p-q.com"]),
            ("xy@z.com", &["(email) xy@z.com"]),
            ("x.y@z.com", &["(email) x.y@z.com"]),
            ("x+blah@y", &["(email) x+blah@y"]),
            ("remo@def", &["(email) x-@y-z.com"]),
        ],
    );
}

#[test]
fn loops_depth_and_fan_out_fail_clearly() {
    let o = AliasOptions::default();
    let t = tables(&[("b", "a: c@d\n"), ("d", "c: a@b\n")], &o);
    let a = Mailbox::parse("a@b").expect("address");
    let err = resolve(&a, &t, &|_, _| Ok(true), &o).expect_err("loop");
    assert_eq!(err.to_string(), "alias loop: a@b -> c@d -> a@b");

    // The catch-all reaching an alias that leads back to an unknown user.
    let t = tables(&[("dom", "a: x\n*: a\n")], &o);
    for addr in ["a@dom", "x@dom", "xx@dom"] {
        let m = Mailbox::parse(addr).expect("address");
        let err = resolve(&m, &t, &|_, u| Ok(!u.starts_with('x')), &o).expect_err(addr);
        assert!(matches!(err, AliasError::Loop { .. }), "{addr}: {err}");
    }
    let b = Mailbox::parse("b@dom").expect("address");
    assert!(resolve(&b, &t, &|_, u| Ok(!u.starts_with('x')), &o).is_ok());

    // A chain of 12 distinct aliases: deeper than 10.
    let chain: String = (0..12).map(|i| format!("a{i}: a{}\n", i + 1)).collect();
    let t = tables(&[("dom", &chain)], &o);
    let a0 = Mailbox::parse("a0@dom").expect("address");
    let err = resolve(&a0, &t, &|_, _| Ok(true), &o).expect_err("too deep");
    assert!(
        matches!(err, AliasError::TooDeep { limit: 10, .. }),
        "{err}"
    );
    // Exactly 10 expansions are fine.
    let a2 = Mailbox::parse("a2@dom").expect("address");
    let got = resolve(&a2, &t, &|_, _| Ok(true), &o).expect("10 deep");
    assert_eq!(got[0].trail.len(), 11, "{got:?}");

    // Fan-out: 3 levels of 11 targets each would be 1331 destinations.
    let mut text = String::from("top: ");
    text.push_str(
        &(0..11)
            .map(|i| format!("m{i}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    text.push('\n');
    for i in 0..11 {
        let targets: Vec<String> = (0..11).map(|j| format!("l{i}x{j}")).collect();
        text.push_str(&format!("m{i}: {}\n", targets.join(", ")));
        for j in 0..11 {
            let leaves: Vec<String> = (0..11).map(|k| format!("u{i}x{j}x{k}@r")).collect();
            text.push_str(&format!("l{i}x{j}: {}\n", leaves.join(", ")));
        }
    }
    let t = tables(&[("dom", &text)], &o);
    let top = Mailbox::parse("top@dom").expect("address");
    let err = resolve(&top, &t, &|_, _| Ok(true), &o).expect_err("too many");
    assert!(
        matches!(err, AliasError::TooManyDestinations { limit: 1000, .. }),
        "{err}"
    );

    // Repeated targets at every level: few destinations, exponential work; bounded.
    let fan = |from: &str, to: &str| format!("{from}: {}\n", vec![to; 100].join(", "));
    let text = [
        fan("a", "b"),
        fan("b", "c"),
        fan("c", "d"),
        fan("d", "e"),
        fan("e", "f"),
    ]
    .concat();
    let t = tables(&[("dom", &text)], &o);
    let a = Mailbox::parse("a@dom").expect("address");
    let err = resolve(&a, &t, &|_, _| Ok(true), &o).expect_err("too much work");
    assert_eq!(
        err.to_string(),
        "a@dom expands to more than 10000 addresses"
    );

    // The user lookup failing fails the resolution (the caller answers 4xx).
    let t = tables(&[("dom", "a: b\n")], &o);
    let a = Mailbox::parse("a@dom").expect("address");
    let err = resolve(&a, &t, &|_, _| Err("disk on fire".into()), &o).expect_err("lookup");
    assert_eq!(
        err.to_string(),
        "cannot check whether b@dom exists: disk on fire"
    );
}

#[test]
fn trails_explain_each_destination() {
    let o = AliasOptions::default();
    let t = tables(
        &[(
            "dom",
            "# team\nteam: alice, bob, ext@remote, archive\nsales: team\narchive: | archive --all\n",
        )],
        &o,
    );
    let m = Mailbox::parse("Sales+x@dom").expect("address");
    let got = resolve(&m, &t, &|_, u| Ok(u == "alice"), &o).expect("resolves");
    let shown: Vec<(String, Vec<String>)> = got
        .iter()
        .map(|r| {
            (
                r.destination.to_string(),
                r.trail.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    let sales = "sales+x@dom: alias \"sales\" once suffix and drop characters are removed (line 3)";
    let team = "team@dom: alias \"team\" (line 2)";
    let want = [
        ("local alice@dom", "alice@dom: existing user \"alice\""),
        (
            "unknown bob@dom",
            "bob@dom: no such user, no alias, no catch-all",
        ),
        (
            "remote ext@remote",
            "ext@remote: not a local domain, delivered remotely",
        ),
    ];
    let mut want: Vec<(String, Vec<String>)> = want
        .iter()
        .map(|(d, last)| {
            (
                d.to_string(),
                vec![sales.into(), team.into(), last.to_string()],
            )
        })
        .collect();
    want.push((
        "pipe | archive --all".into(),
        vec![
            sales.into(),
            team.into(),
            "archive@dom: alias \"archive\" (line 4)".into(),
            "| archive --all: piped to a command".into(),
        ],
    ));
    assert_eq!(shown, want);
    assert_eq!(got[3].destination.argv(), Some(vec!["archive", "--all"]));
    assert_eq!(
        got[3].destination,
        Destination::Pipe {
            command: "archive --all".into(),
            alias: "archive@dom".into()
        }
    );

    // The catch-all step names its line.
    let t = tables(&[("dom", "\n*: alice\n")], &o);
    let m = Mailbox::parse("nobody@dom").expect("address");
    let got = resolve(&m, &t, &|_, u| Ok(u == "alice"), &o).expect("resolves");
    assert!(
        matches!(got[0].trail[0].rule, Rule::CatchAll { line: 2 }),
        "{got:?}"
    );
    assert_eq!(
        got[0].trail[0].to_string(),
        "nobody@dom: neither alias nor user, caught by \"*\" (line 2)"
    );
}

proptest! {
    /// Any text parses or fails with a line number inside the text, and resolving any address
    /// against what parsed never panics.
    #[test]
    fn arbitrary_files_never_panic(
        lines in proptest::collection::vec(
            prop_oneof![
                any::<String>(),
                "[a-c*.+]{0,3}:[ a-c*.+@,|#]{0,12}",
                "[a-c]{1,2}: [a-c]{1,2}(@(dom|x))?(, [a-c*]{1,2}(@(dom|x))?){0,3}",
            ],
            0..12,
        ),
        local in "[a-c.+*]{1,4}",
    ) {
        let text = lines.join("\n");
        let o = AliasOptions::default();
        match AliasTable::parse("dom", &text, &o) {
            Err(e) => prop_assert!(e.line >= 1 && e.line <= text.lines().count(), "{}", e),
            Ok((table, _)) => {
                let mut t = AliasTables::new();
                t.insert(table);
                if let Ok(m) = Mailbox::parse(&format!("\"{local}\"@dom")) {
                    let _ = resolve(&m, &t, &|_, u| Ok(u.len() == 1), &o);
                }
            }
        }
    }
}

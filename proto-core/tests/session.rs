//! Server session behaviour through the public API, on a virtual clock.

#![allow(clippy::unwrap_used)]

mod harness;

use std::time::Duration;

use harness::{Harness, Out, config, run_split};
use proptest::prelude::*;
use proto_core::{
    Reply, ReplyCode, server::AuthPolicy, server::Config, server::Event, server::Verdict,
};

/// Expected replies: each entry is a prefix of the reply's last line ("250", "250 2.1.5", ...).
fn check(name: &str, cfg: Config, input: &str, want: &[&str]) -> Harness {
    let mut h = Harness::new(cfg);
    h.input(input.as_bytes());
    let got = h.replies();
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: input {input:?}\n got {got:#?}"
    );
    for (g, w) in got.iter().zip(want) {
        assert!(
            g.starts_with(w),
            "{name}: input {input:?}\n reply {g:?} should start {w:?}\n all {got:#?}"
        );
    }
    h
}

const HELLO: &str = "EHLO c.test\r\n";

#[test]
fn dialogue_table() {
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("greeting only", "", vec!["220 mx.test"]),
        ("ehlo", HELLO, vec!["220", "250 "]),
        ("helo", "HELO c.test\r\n", vec!["220", "250 mx.test"]),
        (
            "empty helo",
            "HELO\r\nEHLO\r\n",
            vec!["220", "501 5.5.4", "501 5.5.4"],
        ),
        (
            "lower case",
            "ehlo c\r\nmail from:<a@b.c>\r\nrset\r\n",
            vec!["220", "250", "250 2.1.0", "250 2.0.0"],
        ),
        (
            "noop rset before ehlo",
            "NOOP\r\nRSET\r\n",
            vec!["220", "250 2.0.0", "250 2.0.0"],
        ),
        (
            "mail before helo",
            "MAIL FROM:<a@b.c>\r\n",
            vec!["220", "503 5.5.1"],
        ),
        (
            "rcpt before mail",
            "EHLO c\r\nRCPT TO:<u@mx.test>\r\n",
            vec!["220", "250", "503 5.5.1"],
        ),
        (
            "data before rcpt",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nDATA\r\n",
            vec!["220", "250", "250", "554 5.5.1"],
        ),
        (
            "data before mail",
            "HELO c\r\nDATA\r\n",
            vec!["220", "250", "503 5.5.1"],
        ),
        (
            "nested mail",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nMAIL FROM:<a@b.c>\r\n",
            vec!["220", "250", "250", "503 5.5.1"],
        ),
        (
            "rset clears",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRSET\r\nRCPT TO:<u@mx.test>\r\n",
            vec!["220", "250", "250", "250", "503"],
        ),
        (
            "ehlo resets",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nEHLO c\r\nMAIL FROM:<a@b.c>\r\n",
            vec!["220", "250", "250", "250", "250 2.1.0"],
        ),
        (
            "null sender",
            "EHLO c\r\nMAIL FROM:<>\r\n",
            vec!["220", "250", "250 2.1.0"],
        ),
        (
            "unknown param",
            "EHLO c\r\nMAIL FROM:<a@b.c> XFOO=1\r\n",
            vec!["220", "250", "555 5.5.4"],
        ),
        (
            "params after helo",
            "HELO c\r\nMAIL FROM:<a@b.c> SIZE=10\r\n",
            vec!["220", "250", "555 5.5.4"],
        ),
        (
            "size too big",
            "EHLO c\r\nMAIL FROM:<a@b.c> SIZE=999999999999\r\n",
            vec!["220", "250", "552 5.3.4"],
        ),
        (
            "size ok",
            "EHLO c\r\nMAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME\r\n",
            vec!["220", "250", "250"],
        ),
        (
            "utf8 needs smtputf8",
            "EHLO c\r\nMAIL FROM:<ñandú@b.c>\r\n",
            vec!["220", "250", "553 5.6.7"],
        ),
        (
            "utf8 with smtputf8",
            "EHLO c\r\nMAIL FROM:<ñandú@b.c> SMTPUTF8\r\nRCPT TO:<ü@mx.test>\r\n",
            vec!["220", "250", "250", "250 2.1.5"],
        ),
        (
            "utf8 rcpt without",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<ü@mx.test>\r\n",
            vec!["220", "250", "250", "553 5.6.7"],
        ),
        (
            "postmaster",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<postMASTER>\r\n",
            vec!["220", "250", "250", "250 2.1.5"],
        ),
        (
            "source route",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<@r.example:u@mx.test>\r\n",
            vec!["220", "250", "250", "250 2.1.5"],
        ),
        (
            "unknown user",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<nobody@mx.test>\r\n",
            vec!["220", "250", "250", "550 5.1.1"],
        ),
        (
            "bad address",
            "EHLO c\r\nMAIL FROM:<not an address>\r\nMAIL FROM:<a@b.c>\r\n",
            vec!["220", "250", "501 5.1.7", "250"],
        ),
        (
            "dsn params",
            "EHLO c\r\nMAIL FROM:<a@b.c> RET=HDRS ENVID=x\r\nRCPT TO:<u@mx.test> NOTIFY=FAILURE ORCPT=rfc822;u@mx.test\r\n",
            vec!["220", "250", "250", "250"],
        ),
        (
            "dsn after helo",
            "HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test> NOTIFY=NEVER\r\n",
            vec!["220", "250", "250", "555"],
        ),
        (
            "requiretls without tls",
            "EHLO c\r\nMAIL FROM:<a@b.c> REQUIRETLS\r\n",
            vec!["220", "250", "555"],
        ),
        (
            "vrfy expn help",
            "EHLO c\r\nVRFY u\r\nEXPN staff\r\nHELP\r\n",
            vec!["220", "250", "252 2.5.0", "502 5.5.1", "214 2.0.0"],
        ),
        (
            "unknown command",
            "EHLO c\r\nXYZZY\r\nNOOP\r\n",
            vec!["220", "250", "500 5.5.1", "250"],
        ),
        ("quit", "QUIT\r\nNOOP\r\n", vec!["220", "221 2.0.0"]),
        (
            "full message",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
            vec![
                "220",
                "250",
                "250",
                "250",
                "354",
                "250 2.0.0 queued as Q1",
                "221",
            ],
        ),
        (
            "empty message",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n.\r\n",
            vec!["220", "250", "250", "250", "354", "250 2.0.0"],
        ),
        (
            "data args",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA now\r\n",
            vec!["220", "250", "250", "250", "501"],
        ),
        (
            "bdat",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nBDAT 5\r\nabcdeBDAT 3 LAST\r\nfgh",
            vec![
                "220",
                "250",
                "250",
                "250",
                "250 2.0.0 5 octets",
                "250 2.0.0 queued",
            ],
        ),
        (
            "bdat 0 last",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nBDAT 0 LAST\r\n",
            vec!["220", "250", "250", "250", "250 2.0.0 queued"],
        ),
        (
            "data after bdat",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nBDAT 3\r\nabcDATA\r\n",
            vec!["220", "250", "250", "250", "250", "503 5.5.1"],
        ),
        (
            "bdat without mail skips its octets",
            "EHLO c\r\nBDAT 6\r\nNOOP\r\nNOOP\r\n",
            vec!["220", "250", "503 5.5.1", "250"],
        ),
        (
            "bdat after helo",
            "HELO c\r\nBDAT 6\r\nNOOP\r\nNOOP\r\n",
            vec!["220", "250", "502 5.5.1", "250"],
        ),
        (
            "bdat bad size closes",
            "EHLO c\r\nBDAT x\r\nNOOP\r\n",
            vec!["220", "250", "501 5.5.4"],
        ),
        (
            "binarymime needs bdat",
            "EHLO c\r\nMAIL FROM:<a@b.c> BODY=BINARYMIME\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n",
            vec!["220", "250", "250", "250", "503 5.5.1"],
        ),
        (
            "starttls with argument",
            "EHLO c\r\nSTARTTLS foo\r\n",
            vec!["220", "250", "501 5.5.4"],
        ),
        (
            "starttls in transaction",
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nSTARTTLS\r\n",
            vec!["220", "250", "250", "503 5.5.1"],
        ),
        (
            "auth over plaintext",
            "EHLO c\r\nAUTH PLAIN AHUAc2VjcmV0\r\n",
            vec!["220", "250", "538 5.7.11"],
        ),
        (
            "http",
            "GET / HTTP/1.1\r\nHost: x\r\n",
            vec!["220", "502 5.7.0"],
        ),
        (
            "bare cr in command",
            "EHLO c\r\nNOOP\rRSET\r\n",
            vec!["220", "250", "500 5.5.2"],
        ),
        (
            "lf-only command lines are refused, never read",
            "EHLO c\nNOOP\nMAIL FROM:<a@b.test>\r\nNOOP\r\n",
            vec!["220", "500 5.5.2", "500 5.5.2", "503 5.5.1", "250"],
        ),
        (
            "a bare LF inside a line ends nothing",
            "NOOP\nQUIT\r\n",
            vec!["220", "500 5.5.2", "221"],
        ),
    ];
    for (name, input, want) in cases {
        check(name, config(), input, &want);
    }
}

#[test]
fn ehlo_advertises_by_config_and_state() {
    let h = check("ehlo", config(), HELLO, &["220", "250"]);
    let Out::Reply(ehlo) = &h.out[1] else {
        panic!()
    };
    for ext in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "BINARYMIME",
        "DSN",
        "STARTTLS",
    ] {
        assert!(
            ehlo.contains(&format!("250-{ext}\r\n")) || ehlo.contains(&format!("250 {ext}\r\n")),
            "{ext} in {ehlo}"
        );
    }
    assert!(!ehlo.contains("AUTH"), "no AUTH before TLS: {ehlo}");
    assert!(
        !ehlo.contains("REQUIRETLS"),
        "no REQUIRETLS before TLS: {ehlo}"
    );

    // After STARTTLS: AUTH and REQUIRETLS appear, STARTTLS disappears.
    let mut h = Harness::new(config());
    h.input(b"EHLO c\r\nSTARTTLS\r\n");
    assert_eq!(h.out.last(), Some(&Out::StartTls));
    h.tls();
    h.input(HELLO.as_bytes());
    let Some(Out::Reply(ehlo)) = h.out.last() else {
        panic!()
    };
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && ehlo.contains("REQUIRETLS"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");

    // Everything off: a bare greeting line.
    let mut c = config();
    c.extensions = proto_core::server::Extensions::default();
    c.extensions.pipelining = false;
    c.extensions.size = false;
    c.extensions.eight_bit_mime = false;
    c.extensions.smtputf8 = false;
    c.extensions.enhanced_status_codes = false;
    c.extensions.chunking = false;
    c.extensions.dsn = false;
    c.auth = AuthPolicy::Never;
    let mut h = Harness::new(c);
    h.input(b"EHLO c\r\nNOOP\r\n");
    assert_eq!(h.out[1], Out::Reply("250 mx.test greets c\r\n".into()));
    assert_eq!(
        h.out[2],
        Out::Reply("250 OK\r\n".into()),
        "no enhanced codes when off"
    );
}

#[test]
fn recipient_limit_is_452_and_not_an_error() {
    let mut c = config();
    c.limits.max_recipients = 100;
    c.limits.max_errors = 3;
    let mut input = String::from("EHLO c\r\nMAIL FROM:<a@b.c>\r\n");
    for i in 0..105 {
        input.push_str(&format!("RCPT TO:<u{i}@mx.test>\r\n"));
    }
    input.push_str("NOOP\r\n");
    let mut hh = Harness::new(c);
    hh.input(input.as_bytes());
    let codes = hh.codes();
    assert_eq!(
        codes.iter().filter(|c| *c == "250").count(),
        1 + 1 + 100 + 1
    );
    assert_eq!(codes.iter().filter(|c| *c == "452").count(), 5);
    assert!(hh.replies().iter().any(|r| r.starts_with("452 4.5.3")));
    assert!(!hh.closed());
}

#[test]
fn too_many_errors_closes_with_421() {
    let mut c = config();
    c.limits.max_errors = 3;
    let mut h = Harness::new(c);
    h.input(b"AUTH PLAIN x\r\nFOO\r\nBAR\r\nNOOP\r\n");
    assert_eq!(h.codes(), ["220", "503", "500", "421"]);
    assert!(h.replies()[3].starts_with("421 4.7.0"));
    assert!(h.closed());
    // A fatal error sticks: nothing more is read or said.
    h.input(b"NOOP\r\n");
    h.session.handle_eof(h.now);
    h.drain();
    assert_eq!(h.codes().len(), 4);
    assert_eq!(h.session.poll_timeout(), None);
}

#[test]
fn command_line_limit_skips_to_line_end() {
    let mut h = Harness::new(config());
    let long = format!("EHLO c\r\nNOOP {}\r\nNOOP\r\n", "x".repeat(600));
    // Fed a byte at a time, the long line is never buffered whole.
    for b in long.as_bytes() {
        h.input(std::slice::from_ref(b));
        assert!(
            h.session.buffered_len() <= 512,
            "buffered {}",
            h.session.buffered_len()
        );
    }
    assert_eq!(h.codes(), ["220", "250", "500", "250"]);
    assert!(h.replies()[2].starts_with("500 5.5.2"));
    // 512 octets including CRLF is allowed.
    let mut h = Harness::new(config());
    h.input(format!("NOOP {}\r\n", "x".repeat(505)).as_bytes());
    assert_eq!(h.codes(), ["220", "250"]);
    let mut h = Harness::new(config());
    h.input(format!("NOOP {}\r\n", "x".repeat(506)).as_bytes());
    assert_eq!(h.codes(), ["220", "500"]);
}

#[test]
fn auth_line_limit() {
    let mut c = config();
    c.auth = AuthPolicy::AllowPlaintext;
    c.limits.max_auth_line = 1000;
    // The initial response may be longer than a command line, up to the AUTH limit.
    let ok = format!("EHLO c\r\nAUTH PLAIN {}\r\n", "QUFB".repeat(150));
    check(
        "auth line within limit",
        c.clone(),
        &ok,
        &["220", "250", "501 5.5.2"],
    );
    let long = format!("EHLO c\r\nAUTH PLAIN {}\r\nNOOP\r\n", "QUFB".repeat(300));
    check(
        "auth line too long",
        c.clone(),
        &long,
        &["220", "250", "500 5.5.2", "250"],
    );
    let long_response = format!("EHLO c\r\nAUTH LOGIN\r\n{}\r\nNOOP\r\n", "QUFB".repeat(300));
    check(
        "sasl response too long",
        c,
        &long_response,
        &["220", "250", "334", "500 5.5.6", "250"],
    );
}

#[test]
fn data_smuggling_is_refused_and_session_stays_in_sync() {
    let variants: [&[u8]; 6] = [
        b"x\n.\nMAIL FROM:<evil@x>\r\n",
        b"x\r.\rMAIL FROM:<evil@x>\r\n",
        b"x\n.\r\nMAIL FROM:<evil@x>\r\n",
        b"x\r\n.\rMAIL FROM:<evil@x>\r\n",
        b"x\r\n.\nMAIL FROM:<evil@x>\r\n",
        b"x\r\n\n.\r\nMAIL FROM:<evil@x>\r\n",
    ];
    for v in variants {
        let mut h = Harness::new(config());
        h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n");
        h.input(v);
        // Still inside DATA: the smuggled MAIL was not read as a command.
        assert_eq!(
            h.codes(),
            ["220", "250", "250", "250", "354"],
            "{:?}",
            String::from_utf8_lossy(v)
        );
        h.input(b"more\r\n.\r\nNOOP\r\n");
        assert_eq!(
            h.codes(),
            ["220", "250", "250", "250", "354", "554", "250"],
            "{:?}",
            String::from_utf8_lossy(v)
        );
        assert!(h.replies()[5].starts_with("554 5.6.0"));
        assert!(h.messages.is_empty(), "never accepted");
        assert!(h.out.contains(&Out::Event("aborted".into())));
    }
}

#[test]
fn dot_unstuffing_body_and_size_limit() {
    let mut h = Harness::new(config());
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n..leading\r\n...\r\n.x\r\n.\r\n");
    assert_eq!(h.messages, vec![b".leading\r\n..\r\nx\r\n".to_vec()]);

    let mut c = config();
    c.limits.max_message_size = 1000;
    let mut h = Harness::new(c);
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n");
    for _ in 0..30 {
        h.input(&[b"a".repeat(98), b"\r\n".to_vec()].concat());
    }
    h.input(b".\r\nNOOP\r\n");
    assert_eq!(h.codes()[5..], ["552", "250"]);
    assert!(h.replies()[5].starts_with("552 5.3.4"));
    assert!(h.messages.is_empty());

    let mut c = config();
    c.limits.max_message_size = 10;
    let mut h = Harness::new(c);
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nBDAT 8\r\n12345678BDAT 8 LAST\r\n12345678NOOP\r\n");
    assert_eq!(h.codes()[4..], ["250", "552", "250"], "{:?}", h.replies());
    assert!(h.messages.is_empty());

    let mut h = Harness::new(config());
    h.input(
        format!(
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n{}\r\n.\r\nNOOP\r\n",
            "y".repeat(999)
        )
        .as_bytes(),
    );
    assert_eq!(h.codes()[5..], ["500", "250"]);
}

#[test]
fn hundred_megabytes_stream_with_flat_memory() {
    let mut h = Harness::new(config());
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n");
    let line = [b"x".repeat(78), b"\r\n".to_vec()].concat();
    let piece: Vec<u8> = line.repeat(64 * 1024 / line.len());
    let target = 100 * 1024 * 1024;
    let mut sent = 0usize;
    let mut body_bytes = 0usize;
    let mut max_buffered = 0usize;
    while sent < target {
        h.session.handle_input(h.now, &piece);
        sent += piece.len();
        max_buffered = max_buffered.max(h.session.buffered_len());
        while let Some(a) = h.session.poll_action() {
            match a {
                proto_core::server::Action::Event(Event::MessageData(d)) => body_bytes += d.len(),
                proto_core::server::Action::Event(Event::MessageStart) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    // The body streams out up to the 50 MiB default limit, then is only consumed.
    assert_eq!(body_bytes, 50 * 1024 * 1024);
    assert!(max_buffered <= 64 * 1024 + 1024, "buffered {max_buffered}");
    h.session.handle_input(h.now, b".\r\n");
    // Default limit is 50 MiB: the 100 MB message is refused after being consumed in full.
    h.drain();
    assert!(h.replies().last().unwrap().starts_with("552 5.3.4"));
}

#[test]
fn hundred_megabytes_accepted_under_a_larger_limit() {
    let mut c = config();
    c.limits.max_message_size = 200 * 1024 * 1024;
    let mut h = Harness::new(c);
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n");
    let piece: Vec<u8> = [b"y".repeat(998), b"\r\n".to_vec()].concat().repeat(60);
    let mut total = 0usize;
    let mut max_chunk = 0usize;
    while total < 100 * 1000 * 1000 {
        h.session.handle_input(h.now, &piece);
        total += piece.len();
        while let Some(a) = h.session.poll_action() {
            if let proto_core::server::Action::Event(Event::MessageData(d)) = a {
                max_chunk = max_chunk.max(d.len());
            }
        }
        assert!(h.session.buffered_len() <= piece.len());
    }
    assert!(max_chunk <= 64 * 1024);
    h.input(b".\r\n");
    assert!(
        h.replies().last().unwrap().starts_with("250 2.0.0"),
        "{:?}",
        h.replies().last()
    );
}

#[test]
fn starttls_discards_pipelined_plaintext_and_resets() {
    let mut h = Harness::new(config());
    h.input(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<u@mx.test>\r\n");
    assert_eq!(h.codes(), ["220", "250", "220"]);
    assert_eq!(h.out.last(), Some(&Out::StartTls));
    assert!(!h.session.wants_input());
    // Plaintext arriving before the handshake completes is ignored too.
    h.input(b"DATA\r\n");
    h.tls();
    assert!(h.session.tls().is_some());
    assert_eq!(h.session.helo(), None, "EHLO state is forgotten");
    h.input(b"MAIL FROM:<a@b.c>\r\n");
    assert_eq!(
        h.codes().last().unwrap(),
        "503",
        "must EHLO again after TLS"
    );
    h.input(b"EHLO c\r\nSTARTTLS\r\n");
    assert!(
        h.replies().last().unwrap().starts_with("503 5.5.1"),
        "no second STARTTLS"
    );
    assert!(
        !h.out
            .iter()
            .any(|o| matches!(o, Out::Event(e) if e.starts_with("mail <evil")))
    );
    assert_eq!(
        h.session
            .handle_tls_established(h.now, proto_core::TlsInfo::default()),
        Err(proto_core::server::UsageError::TlsNotRequested)
    );
}

fn tls_session(c: Config) -> Harness {
    let mut h = Harness::new(c);
    h.input(b"EHLO c\r\nSTARTTLS\r\n");
    h.tls();
    h.input(b"EHLO c\r\n");
    h
}

#[test]
fn auth_plain_and_login() {
    use base64::Engine;
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let mut h = tls_session(config());
    h.input(format!("AUTH PLAIN {}\r\n", b64(b"\0bob\0secret")).as_bytes());
    assert!(h.replies().last().unwrap().starts_with("235 2.7.0"));
    assert_eq!(h.session.authenticated(), Some("bob"));
    h.input(b"AUTH PLAIN\r\n");
    assert!(
        h.replies().last().unwrap().starts_with("503 5.5.1"),
        "AUTH twice"
    );

    let mut h = tls_session(config());
    h.input(b"AUTH PLAIN\r\n");
    assert_eq!(h.replies().last().unwrap(), "334 ");
    h.input(format!("{}\r\n", b64(b"\0bob\0wrong")).as_bytes());
    assert!(h.replies().last().unwrap().starts_with("535 5.7.8"));
    assert_eq!(h.session.authenticated(), None);
    h.input(b"AUTH LOGIN\r\n");
    assert_eq!(h.replies().last().unwrap(), "334 VXNlcm5hbWU6");
    h.input(format!("{}\r\n", b64(b"bob")).as_bytes());
    assert_eq!(h.replies().last().unwrap(), "334 UGFzc3dvcmQ6");
    h.input(format!("{}\r\n", b64(b"secret")).as_bytes());
    assert!(h.replies().last().unwrap().starts_with("235"));
    assert!(h.out.contains(&Out::Event("auth bob".into())));

    for (input, want) in [
        ("AUTH PLAIN\r\n*\r\n", "501 5.0.0"),
        ("AUTH PLAIN\r\n!!!not-base64!!!\r\n", "501 5.5.2"),
        ("AUTH LOGIN\r\n*\r\n", "501 5.0.0"),
        ("AUTH X-UNKNOWN\r\n", "504 5.5.4"),
        (
            "MAIL FROM:<a@b.c>\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\n",
            "503 5.5.1",
        ),
    ] {
        let mut h = tls_session(config());
        h.input(input.as_bytes());
        assert!(
            h.replies().last().unwrap().starts_with(want),
            "{input:?}: {:?}",
            h.replies()
        );
        // The session is usable afterwards.
        h.input(b"NOOP\r\n");
        assert_eq!(h.codes().last().unwrap(), "250", "{input:?}");
    }
}

#[test]
fn auth_policy_and_required_auth() {
    let mut c = config();
    c.require_auth = true;
    let mut h = tls_session(c);
    h.input(b"MAIL FROM:<a@b.c>\r\n");
    assert!(h.replies().last().unwrap().starts_with("530 5.7.0"));
    h.input(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\nMAIL FROM:<bob@b.c>\r\n");
    assert_eq!(h.codes()[h.codes().len() - 2..], ["235", "250"]);

    let mut c = config();
    c.auth = AuthPolicy::AllowPlaintext;
    check(
        "plaintext allowed",
        c,
        "EHLO c\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\n",
        &["220", "250", "235"],
    );
    let mut c = config();
    c.auth = AuthPolicy::Never;
    check(
        "never",
        c,
        "EHLO c\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\n",
        &["220", "250", "502"],
    );
    let mut c = config();
    c.auth = AuthPolicy::AllowPlaintext;
    check(
        "auth needs ehlo",
        c,
        "HELO c\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\n",
        &["220", "250", "503"],
    );
}

#[test]
fn pipelined_replies_wait_for_verdicts_in_order() {
    let mut h = Harness::new(config());
    h.app.auto = false;
    h.input(
        b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nRCPT TO:<v@mx.test>\r\nDATA\r\n",
    );
    assert_eq!(h.codes(), ["220", "250"]);
    assert!(!h.session.wants_input());
    assert_eq!(
        h.pending.len(),
        1,
        "only MAIL is asked about until it is answered"
    );
    h.resolve_next(Verdict::Accept);
    h.resolve_next(Verdict::Reject(Reply::new(
        ReplyCode::MAILBOX_UNAVAILABLE,
        None,
        "no",
    )));
    h.resolve_next(Verdict::Accept);
    assert_eq!(h.codes(), ["220", "250", "250", "550", "250", "354"]);
    h.input(b"hi\r\n.\r\n");
    assert_eq!(h.pending.len(), 1);
    assert_eq!(h.pending[0].1, "message-end");
    // A wrong ticket is a usage error; the right one still works.
    let (ticket, _) = h.pending[0].clone();
    assert_eq!(
        h.session.resolve(
            h.now,
            ticket,
            Verdict::Reject(Reply::new(ReplyCode::OK, None, "x"))
        ),
        Err(proto_core::server::UsageError::NotARejection(ReplyCode::OK))
    );
    h.resolve_next(Verdict::AcceptWithText("queued as X".into()));
    assert_eq!(h.replies().last().unwrap(), "250 2.0.0 queued as X");
    assert_eq!(
        h.session.resolve(h.now, ticket, Verdict::Accept),
        Err(proto_core::server::UsageError::UnknownTicket)
    );
}

#[test]
fn pending_input_is_bounded() {
    let mut c = config();
    c.limits.max_pending_input = 100;
    let mut h = Harness::new(c);
    h.app.auto = false;
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n");
    h.input(&b"NOOP\r\n".repeat(30));
    assert!(h.closed());
    assert!(h.replies().last().unwrap().starts_with("421 4.5.0"));
    assert!(
        h.out.contains(&Out::Event("aborted".into())),
        "the pending MAIL is called off"
    );
}

#[test]
fn verdict_421_closes() {
    let mut h = Harness::new(config());
    h.app.auto = false;
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nNOOP\r\n");
    h.resolve_next(Verdict::Reject(Reply::new(
        ReplyCode::SERVICE_UNAVAILABLE,
        None,
        "bye",
    )));
    assert_eq!(h.codes(), ["220", "250", "421"]);
    assert!(h.closed());
}

#[test]
fn timeouts_follow_rfc_5321() {
    let mut h = Harness::new(config());
    let t0 = h.now;
    assert_eq!(
        h.session.poll_timeout(),
        Some(t0 + Duration::from_secs(300))
    );
    h.advance(Duration::from_secs(299));
    assert!(!h.closed(), "spurious or early timeouts are no-ops");
    h.input(b"EHLO c\r\n");
    assert_eq!(
        h.session.poll_timeout(),
        Some(h.now + Duration::from_secs(300))
    );
    h.advance(Duration::from_secs(300));
    assert!(h.closed());
    assert!(h.replies().last().unwrap().starts_with("421 4.4.2"));

    // The whole session is bounded even when the client keeps talking.
    let mut c = config();
    c.timeouts.session = Duration::from_secs(600);
    let mut h = Harness::new(c);
    for _ in 0..11 {
        h.advance(Duration::from_secs(60));
        h.input(b"NOOP\r\n");
    }
    assert!(h.closed(), "{:?}", h.replies());

    // Inside DATA the data timeout applies, and the open transaction is aborted.
    let mut c = config();
    c.timeouts.data = Duration::from_secs(10);
    let mut h = Harness::new(c);
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\npartial");
    h.advance(Duration::from_secs(10));
    assert!(h.closed());
    assert!(h.out.contains(&Out::Event("aborted".into())));
}

#[test]
fn a_command_line_has_one_deadline_however_slowly_it_arrives() {
    // One byte every 5 s never ends the line: the command deadline is not moved by it.
    let mut h = Harness::new(config());
    h.input(b"EHLO c\r\n");
    let deadline = h.session.poll_timeout().unwrap();
    for b in b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP "
        .iter()
        .cycle()
        .take(59)
    {
        h.advance(Duration::from_secs(5));
        h.input(&[*b]);
        assert_eq!(
            h.session.poll_timeout(),
            Some(deadline),
            "a partial line moved it"
        );
    }
    assert!(!h.closed());
    h.advance(Duration::from_secs(5));
    assert!(
        h.closed(),
        "295 s of dribble plus 5: the line's 300 s are up"
    );
    assert!(h.replies().last().unwrap().starts_with("421 4.4.2"));

    // A line that ends starts the next one's full time.
    let mut h = Harness::new(config());
    h.advance(Duration::from_secs(200));
    h.input(b"NO");
    h.advance(Duration::from_secs(99));
    h.input(b"OP\r\n");
    assert_eq!(h.codes(), ["220", "250"]);
    assert_eq!(
        h.session.poll_timeout(),
        Some(h.now + Duration::from_secs(300))
    );
}

#[test]
fn message_data_must_keep_the_minimum_rate() {
    let data = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n";
    // Defaults: 300 s, 500 octets/s. One octet every 5 s earns 2 ms each: cut after ~300 s.
    let mut h = Harness::new(config());
    h.input(data);
    let mut rounds = 0;
    while !h.closed() && rounds < 100 {
        h.advance(Duration::from_secs(5));
        h.input(b"x");
        rounds += 1;
    }
    assert!(
        h.closed(),
        "a drip of 0.2 octets/s held DATA for {rounds} rounds"
    );
    assert!((60..=61).contains(&rounds), "{rounds}");
    assert!(h.out.contains(&Out::Event("aborted".into())));
    assert!(h.replies().last().unwrap().starts_with("421 4.4.2"));

    // Faster than the rate, with pauses shorter than the data timeout: never cut, and the
    // deadline never runs more than the data timeout ahead.
    let mut h = Harness::new(config());
    h.input(data);
    let lines = [&[b'y'; 98][..], b"\r\n"].concat().repeat(200);
    for _ in 0..50 {
        h.advance(Duration::from_secs(20));
        h.input(&lines);
        assert!(h.session.poll_timeout().unwrap() <= h.now + Duration::from_secs(300));
    }
    h.input(b".\r\n");
    assert_eq!(h.codes().last().map(String::as_str), Some("250"));
    assert!(!h.closed());

    // BDAT chunks too.
    let mut h = Harness::new(config());
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nBDAT 1000 LAST\r\n");
    let mut rounds = 0;
    while !h.closed() && rounds < 100 {
        h.advance(Duration::from_secs(5));
        h.input(b"x");
        rounds += 1;
    }
    assert!((60..=61).contains(&rounds), "{rounds}");

    // A rate of 0: every read restarts the data timeout (the drip is only bounded by the
    // session timeout).
    let mut c = config();
    c.timeouts.min_data_rate = 0;
    let mut h = Harness::new(c);
    h.input(data);
    for _ in 0..100 {
        h.advance(Duration::from_secs(5));
        h.input(b"x");
    }
    assert!(!h.closed());
}

#[test]
fn a_chunk_larger_than_any_message_is_refused_before_it_is_read() {
    let mut c = config();
    c.limits.max_message_size = 1000;
    for script in [
        &b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nBDAT 99999999999 LAST\r\n"[..],
        b"EHLO c\r\nBDAT 1001\r\n",
    ] {
        let mut h = Harness::new(c.clone());
        h.input(script);
        assert!(
            h.replies().last().unwrap().starts_with("552 5.3.4"),
            "{:?}",
            h.replies()
        );
        assert!(h.closed(), "the session would otherwise read the octets");
    }
    // Within the limit, a chunk that makes the message too large is still read, and the
    // session goes on.
    let mut h = Harness::new(c);
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nBDAT 600\r\n");
    h.input(&[b'x'; 600]);
    h.input(b"BDAT 600 LAST\r\n");
    h.input(&[b'x'; 600]);
    h.input(b"NOOP\r\n");
    let codes = h.codes();
    assert_eq!(
        codes[codes.len() - 3..],
        ["250", "552", "250"],
        "{:?}",
        h.replies()
    );
    assert!(!h.closed());
}

#[test]
fn shutdown_closes_idle_sessions_and_lets_transactions_finish() {
    let mut h = Harness::new(config());
    h.input(b"EHLO c\r\n");
    h.session.handle_shutdown(h.now);
    h.drain();
    assert_eq!(h.codes(), ["220", "250", "421"]);
    assert!(h.replies()[2].starts_with("421 4.3.2"));
    assert!(h.closed());

    let mut h = Harness::new(config());
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\npart");
    h.session.handle_shutdown(h.now);
    h.drain();
    assert!(!h.closed(), "the message in flight continues");
    h.input(b"ial\r\n.\r\nMAIL FROM:<a@b.c>\r\n");
    assert_eq!(h.codes()[4..], ["354", "250", "421"]);
    assert_eq!(h.messages, vec![b"partial\r\n".to_vec()]);
    assert!(h.closed());
    // Shutdown after close, or twice, is a no-op.
    h.session.handle_shutdown(h.now);
    h.drain();
    assert_eq!(h.codes().len(), 7);
}

#[test]
fn eof_aborts_transaction_without_reply() {
    let mut h = Harness::new(config());
    h.input(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n");
    h.session.handle_eof(h.now);
    h.drain();
    assert_eq!(h.codes(), ["220", "250", "250"]);
    assert_eq!(
        h.out[h.out.len() - 2..],
        [Out::Event("aborted".into()), Out::Close]
    );
}

/// Scripts for the chunk-invariance property: every split of the input gives the same
/// replies, events and message bodies.
fn scripts() -> Vec<Vec<u8>> {
    vec![
        b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nRCPT TO:<nobody@mx.test>\r\nDATA\r\nSubject: x\r\n\r\n..a\r\n.\r\nQUIT\r\n".to_vec(),
        b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nBDAT 4\r\nab\r\nBDAT 0 LAST\r\nRSET\r\nQUIT\r\n".to_vec(),
        b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\nx\n.\nQUIT\r\n.\r\nNOOP\r\n".to_vec(),
        [b"NOOP ".to_vec(), b"z".repeat(700), b"\r\nHELO c\r\nXX\r\nQUIT\r\n".to_vec()].concat(),
        b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n".to_vec(),
        b"EHLO c\nMAIL FROM:<a@b.c> SIZE=10 BODY=8BITMIME\nRCPT TO:<u@mx.test>\nDATA\n\xc3\xbc\r\n\r\n.\r\n".to_vec(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn any_split_gives_the_same_actions(
        idx in 0usize..6,
        mut cuts in proptest::collection::vec(0usize..800, 0..12),
    ) {
        let script = &scripts()[idx];
        cuts.sort_unstable();
        let whole = run_split(&config(), script, &[]);
        let split = run_split(&config(), script, &cuts);
        prop_assert_eq!(&split, &whole, "script {} cuts {:?}", idx, cuts);
        // And byte by byte.
        let every: Vec<usize> = (1..script.len()).collect();
        prop_assert_eq!(run_split(&config(), script, &every), whole);
    }

    #[test]
    fn arbitrary_input_never_panics_and_stays_bounded(
        chunks in proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![
                    Just(b"\r\n".to_vec()), Just(b"\n".to_vec()), Just(b".".to_vec()),
                    Just(b"EHLO x".to_vec()), Just(b"MAIL FROM:<a@b>".to_vec()),
                    Just(b"RCPT TO:<u@mx.test>".to_vec()), Just(b"DATA".to_vec()),
                    Just(b"BDAT 3".to_vec()), Just(b" LAST".to_vec()), Just(b"STARTTLS".to_vec()),
                    Just(b"AUTH PLAIN".to_vec()), Just(b"RSET".to_vec()), Just(b"\r".to_vec()),
                    proptest::collection::vec(any::<u8>(), 0..20),
                ],
                0..20,
            ).prop_map(|v| v.concat()),
            1..20,
        )
    ) {
        let mut h = Harness::new(config());
        for c in &chunks {
            h.input(c);
            prop_assert!(h.session.buffered_len() <= 12288 + c.len() + 64 * 1024);
            if h.out.last() == Some(&Out::StartTls) && h.session.tls().is_none() {
                h.tls();
            }
        }
        h.session.handle_eof(h.now);
        h.drain();
        prop_assert!(h.closed());
    }
}

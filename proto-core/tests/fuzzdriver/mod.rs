//! The fuzz driver, shared by the cargo-fuzz targets (`fuzz/`) and the regression test that
//! replays their findings on stable Rust (`tests/fuzz_regressions.rs`).
//!
//! It drives a server session through arbitrary input, answering every event, and checks the
//! invariants that must hold whatever the peer sends: no panic, replies that encode to valid
//! SMTP, input held within the limits, nothing after `Close`, tickets resolved in order.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use proto_core::{
    Mailbox, Reply, ReplyCode, TlsInfo, server::Action, server::AuthPolicy, server::Command,
    server::Config, server::Event, server::PeerInfo, server::Session, server::Verdict,
};

/// Tokens that random bytes are mapped onto, so the fuzzer reaches deep states quickly
/// (the idea comes from Stalwart's smtp-proto fuzz target; the table is ours).
const ALPHABET: &[&[u8]] = &[
    b"EHLO x\r\n",
    b"HELO x\r\n",
    b"MAIL FROM:<a@b.c>",
    b"MAIL FROM:<>",
    b"RCPT TO:<u@mx.test>",
    b"RCPT TO:<postmaster>",
    b"DATA\r\n",
    b"BDAT ",
    b"LAST",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AGJvYgBzZWNyZXQ=",
    b"*",
    b" SIZE=",
    b" BODY=8BITMIME",
    b" BODY=BINARYMIME",
    b" SMTPUTF8",
    b" NOTIFY=FAILURE",
    b" ORCPT=rfc822;a+40b",
    b" RET=HDRS",
    b" ENVID=x",
    b" REQUIRETLS",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\r\n.\r\n",
    b"..",
    b" ",
    b"<",
    b">",
    b"@",
    b":",
    b"\"",
    b"\\",
    b"0",
    b"1",
    b"99",
    b"\xc3\xbc",
    b"\xff",
    b"GET / HTTP/1.1\r\n",
    b"VRFY x\r\n",
    b"HELP\r\n",
];

/// Maps bytes onto [`ALPHABET`] tokens: one byte, one token.
pub fn to_smtp_alphabet(data: &[u8]) -> Vec<u8> {
    data.iter()
        .flat_map(|&b| ALPHABET[b as usize % ALPHABET.len()].iter().copied())
        .collect()
}

/// Runs one session over `data`. The first byte chooses the configuration and how the rest
/// is cut into inputs; the session must uphold its invariants whatever follows.
pub fn run_session(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let mut config = Config::new("mx.test");
    config.extensions.starttls = selector & 1 != 0;
    config.auth = if selector & 2 != 0 {
        AuthPolicy::AllowPlaintext
    } else {
        AuthPolicy::TlsOnly
    };
    config.require_auth = selector & 4 != 0;
    config.limits.max_message_size = 200;
    config.limits.max_command_line = 64;
    config.limits.max_auth_line = 128;
    config.limits.max_text_line = 80;
    config.limits.max_recipients = 3;
    config.limits.max_pending_input = 256;
    config.limits.max_chunk = 16;
    let limits = config.limits;
    let step = 1 + usize::from(selector >> 3);
    let mut peer = PeerInfo::default();
    if selector & 0x80 != 0 {
        peer.tls = Some(TlsInfo::default());
    }
    // The clock origin for a virtual clock; it moves only by the fixed steps below.
    #[allow(clippy::disallowed_methods)]
    let mut now = Instant::now();
    let mut session = Session::new(Arc::new(config), peer, now);
    let mut closed = false;
    let mut pending = Vec::new();
    for (i, input) in stream.chunks(step).enumerate() {
        // Verdicts arrive late sometimes: resolve what is pending every other input.
        if i % 2 == 0 {
            for (n, ticket) in pending.drain(..).enumerate() {
                let verdict = if n % 3 == 2 {
                    Verdict::Reject(Reply::new(ReplyCode::MAILBOX_UNAVAILABLE, None, "no"))
                } else {
                    Verdict::Accept
                };
                session.resolve(now, ticket, verdict).unwrap();
            }
        }
        session.handle_input(now, input);
        assert!(
            session.buffered_len()
                <= limits.max_auth_line + limits.max_pending_input + input.len() + limits.max_chunk,
            "session holds {} bytes",
            session.buffered_len()
        );
        closed |= drain(&mut session, &mut pending, now, closed);
        if i % 7 == 6 {
            now += Duration::from_secs(200);
            session.handle_timeout(now);
            closed |= drain(&mut session, &mut pending, now, closed);
        }
    }
    session.handle_eof(now);
    drain(&mut session, &mut pending, now, closed);
    assert!(session.is_closed());
    assert_eq!(session.poll_timeout(), None);
}

fn drain(
    session: &mut Session,
    pending: &mut Vec<proto_core::server::Ticket>,
    now: Instant,
    was_closed: bool,
) -> bool {
    let mut closed = false;
    while let Some(action) = session.poll_action() {
        assert!(!was_closed && !closed, "action after Close: {action:?}");
        match action {
            Action::Send(reply) => {
                let wire = reply.to_bytes();
                let (parsed, used) = Reply::parse(&wire).unwrap().unwrap();
                assert_eq!(used, wire.len());
                assert_eq!(parsed.code(), reply.code());
            }
            Action::StartTls => session
                .handle_tls_established(now, TlsInfo::default())
                .unwrap(),
            Action::Close => closed = true,
            Action::Event(
                Event::Mail { ticket, .. }
                | Event::Rcpt { ticket, .. }
                | Event::Auth { ticket, .. }
                | Event::MessageEnd { ticket },
            ) => pending.push(ticket),
            Action::Event(Event::MessageData(d)) => assert!(!d.is_empty()),
            Action::Event(_) => {}
            _ => {}
        }
    }
    closed
}

/// Runs the stand-alone parsers over `data`: they must never panic, and what they accept
/// must print back to something they accept again.
pub fn run_parsers(data: &[u8]) {
    let _ = Command::parse(data);
    if let Ok(Some((reply, _))) = Reply::parse(data) {
        let again = Reply::parse(&reply.to_bytes()).unwrap().unwrap().0;
        assert_eq!(again.code(), reply.code());
    }
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(m) = s.parse::<Mailbox>()
    {
        assert_eq!(m.to_string().parse::<Mailbox>().as_ref(), Ok(&m), "{s:?}");
    }
}

/// The mail-rule parsers on hostile input: an aliases file (parsed, then a few addresses
/// resolved against it: errors are fine, panics and unbounded work are not), an SRS local part
/// (decoding never panics; what decodes re-encodes to an address that decodes the same), and
/// DKIM body canonicalization (the output does not depend on where the input is split).
pub fn run_rules(data: &[u8]) {
    use proto_core::dkim::{BodyCanonicalizer, Canonicalization};
    use proto_core::{
        Domain, mail::AliasOptions, mail::AliasTable, mail::AliasTables, mail::Srs, mail::resolve,
    };
    use std::time::UNIX_EPOCH;

    let text = String::from_utf8_lossy(data);
    let options = AliasOptions::default();
    if let Ok((table, _)) = AliasTable::parse("example.org", &text, &options) {
        let mut tables = AliasTables::new();
        tables.insert(table);
        let exists = |_: &str, user: &str| Ok(user.len().is_multiple_of(2));
        for address in [
            "a@example.org",
            "postmaster@example.org",
            "x.y+z@example.org",
        ] {
            let mailbox: Mailbox = address.parse().unwrap();
            let _ = resolve(&mailbox, &tables, &exists, &options);
        }
        for line in text.lines().take(4) {
            if let Some((key, _)) = line.split_once(':')
                && let Ok(m) = format!("{}@example.org", key.trim()).parse::<Mailbox>()
            {
                let _ = resolve(&m, &tables, &exists, &options);
            }
        }
    }

    let srs = Srs::new(b"fuzzing key");
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Ok((original, _)) = srs.decode(&text, now) {
        let forwarder = Domain::parse("fwd.example").unwrap();
        if let Ok(encoded) = srs.forward(&original, &forwarder, now)
            && let Ok(again) = srs.reverse(&encoded, now)
        {
            assert_eq!(again, original);
        }
    }

    for c in [Canonicalization::Simple, Canonicalization::Relaxed] {
        let mut whole = Vec::new();
        let mut one = BodyCanonicalizer::new(c);
        one.feed(data, &mut whole);
        one.finish(&mut whole);
        let mut split = Vec::new();
        let mut parts = BodyCanonicalizer::new(c);
        let cut = data.first().map_or(0, |b| usize::from(*b)) % (data.len() + 1);
        parts.feed(&data[..cut], &mut split);
        parts.feed(&data[cut..], &mut split);
        parts.finish(&mut split);
        assert_eq!(whole, split, "{c:?} split at {cut}");
    }
}

//! The header From of a message, for checking that an authenticated user sends as themselves.
//!
//! [`HeaderCollector`] keeps the header section of the body as it streams past (at most
//! [`MAX_HEADER`] bytes; the body itself is never kept), and [`from_addresses`] reads the
//! addresses of its `From:` field. This is a deliberately small scan, not a MIME parser: it
//! only needs the addr-specs of [RFC 5322 section 3.6.2](https://www.rfc-editor.org/rfc/rfc5322#section-3.6.2)
//! `from = "From:" mailbox-list CRLF`, with display names, comments, quoted strings, groups and
//! folding ([section 2.2.3](https://www.rfc-editor.org/rfc/rfc5322#section-2.2.3)) handled;
//! encoded words can only occur in display names, which are skipped. UTF-8 (RFC 6532) is fine.
//!
//! The check ([`check`]) fails unless there is exactly one From field ("The origination date
//! field and the originator address field MUST appear in each message" and at most once,
//! section 3.6), it holds at least one address, and every address is one the user may send as.

use std::fmt;

use proto_core::Mailbox;

use crate::directory::users::Address;

/// The most header bytes kept. A header section longer than this is judged on its first
/// `MAX_HEADER` bytes (a From field beyond it counts as missing).
pub const MAX_HEADER: usize = 64 * 1024;

/// Collects the header section of a streamed body.
#[derive(Debug, Default)]
pub struct HeaderCollector {
    bytes: Vec<u8>,
    done: bool,
}

/// Why a header From is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromProblem {
    /// No From field.
    Missing,
    /// More than one From field.
    Repeated,
    /// A From field without any address we can read.
    Unreadable,
    /// An address the user may not send as.
    NotOwned(String),
    /// More than one Sender field.
    SenderRepeated,
    /// A Sender address the user may not send as (or none that reads).
    SenderNotOwned(String),
}

impl HeaderCollector {
    /// Feeds the next chunk of the (unstuffed) body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        let room = MAX_HEADER.saturating_sub(self.bytes.len());
        let start = self.bytes.len().saturating_sub(3);
        self.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        // The header ends at the first empty line (CRLF CRLF; a body starting with CRLF has
        // no header at all).
        if self.bytes.starts_with(b"\r\n") {
            self.bytes.clear();
            self.done = true;
        } else if let Some(end) = find(&self.bytes[start..], b"\r\n\r\n") {
            self.bytes.truncate(start + end + 2);
            self.done = true;
        } else if self.bytes.len() >= MAX_HEADER {
            self.done = true;
        }
    }

    /// The header section seen so far.
    pub fn header(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Display for FromProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FromProblem::Missing => f.write_str("no From header field"),
            FromProblem::Repeated => f.write_str("more than one From header field"),
            FromProblem::Unreadable => f.write_str("no readable address in the From header field"),
            FromProblem::NotOwned(a) => write!(f, "From {a} is not the sender's"),
            FromProblem::SenderRepeated => f.write_str("more than one Sender header field"),
            FromProblem::SenderNotOwned(a) => write!(f, "Sender {a} is not the sender's"),
        }
    }
}

/// Checks the header From, and the Sender if there is one (RFC 5322 3.6.2: the mailbox of
/// the agent that sent the message), against `owns` (is this normalised address the
/// user's?).
pub fn check(header: &[u8], owns: impl Fn(&Address) -> bool) -> Result<(), FromProblem> {
    let owned = |a: &str| {
        Mailbox::parse(a)
            .ok()
            .and_then(|m| Address::from_mailbox(&m).ok())
            .is_some_and(|addr| owns(&addr))
    };
    // Bounded: it goes into the reply and the log.
    let shown = |a: &str| a.chars().take(100).collect::<String>();
    match fields_named(header, "sender").as_slice() {
        [] => {}
        [one] => {
            let addresses = from_addresses(one);
            match addresses.as_slice() {
                [a] if owned(a) => {}
                [a, ..] => return Err(FromProblem::SenderNotOwned(shown(a))),
                [] => return Err(FromProblem::SenderNotOwned(shown(one.trim()))),
            }
        }
        _ => return Err(FromProblem::SenderRepeated),
    }
    let fields = from_fields(header);
    let value = match fields.as_slice() {
        [] => return Err(FromProblem::Missing),
        [one] => one,
        _ => return Err(FromProblem::Repeated),
    };
    let addresses = from_addresses(value);
    if addresses.is_empty() {
        return Err(FromProblem::Unreadable);
    }
    for a in addresses {
        if !owned(&a) {
            return Err(FromProblem::NotOwned(shown(&a)));
        }
    }
    Ok(())
}

/// The unfolded values of every `From:` field.
pub fn from_fields(header: &[u8]) -> Vec<String> {
    fields_named(header, "from")
}

/// The unfolded values of every field called `wanted` (lower case).
fn fields_named(header: &[u8], wanted: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(header);
    let mut fields: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            // A continuation line (folding): part of the field before.
            if let Some(c) = &mut current {
                c.push_str(line);
            }
            continue;
        }
        if let Some(c) = current.take() {
            fields.push(c);
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim_end().eq_ignore_ascii_case(wanted)
        {
            current = Some(value.to_string());
        }
    }
    fields.extend(current);
    fields
}

/// The addr-specs of a mailbox-list (or address-list with groups): for each mailbox its
/// `<angle-addr>`, or the bare addr-spec; comments dropped, quoted strings kept as written.
pub fn from_addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut segment = String::new(); // the current mailbox, outside comments
    let mut angle: Option<String> = None; // the last <...> of this mailbox
    let mut in_angle = false;
    let mut in_quote = false;
    let mut comment = 0u32;
    let mut escaped = false;
    let mut finish = |segment: &mut String, angle: &mut Option<String>| {
        let a = angle.take().unwrap_or_else(|| {
            segment
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
        });
        if !a.is_empty() {
            out.push(a);
        }
        segment.clear();
    };
    for c in value.chars() {
        if escaped {
            escaped = false;
            if comment == 0 {
                push(&mut segment, &mut angle, in_angle, '\\');
                push(&mut segment, &mut angle, in_angle, c);
            }
            continue;
        }
        match c {
            '\\' if in_quote || comment > 0 => escaped = true,
            '(' if !in_quote => comment += 1,
            ')' if !in_quote && comment > 0 => comment -= 1,
            _ if comment > 0 => {}
            '"' => {
                in_quote = !in_quote;
                push(&mut segment, &mut angle, in_angle, c);
            }
            _ if in_quote => push(&mut segment, &mut angle, in_angle, c),
            '<' if !in_angle => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if in_angle => in_angle = false,
            // A group's display name ends at ':'; the group ends at ';'.
            ':' if !in_angle => segment.clear(),
            ',' | ';' if !in_angle => finish(&mut segment, &mut angle),
            _ => push(&mut segment, &mut angle, in_angle, c),
        }
    }
    finish(&mut segment, &mut angle);
    out
}

/// Adds `c` to the angle address being read, or to the segment.
fn push(segment: &mut String, angle: &mut Option<String>, in_angle: bool, c: char) {
    match (in_angle, angle) {
        (true, Some(a)) => {
            if !c.is_whitespace() {
                a.push(c);
            }
        }
        _ => segment.push(c),
    }
}

/// The first position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_from_values() {
        let cases: &[(&str, &[&str])] = &[
            (" alice@example.org", &["alice@example.org"]),
            (" Alice <alice@example.org>", &["alice@example.org"]),
            (
                " \"Smith, Alice\" <alice@example.org>",
                &["alice@example.org"],
            ),
            (
                " \"a <b@evil.example>\" <alice@example.org>",
                &["alice@example.org"],
            ),
            (
                " alice@example.org (Alice <x@evil.example>)",
                &["alice@example.org"],
            ),
            (
                " (c) Alice (x) <alice@example.org> (y)",
                &["alice@example.org"],
            ),
            (
                " =?utf-8?q?Al=C3=AFce?= <alice@example.org>",
                &["alice@example.org"],
            ),
            (
                " a@example.org, B <b@example.org>",
                &["a@example.org", "b@example.org"],
            ),
            (
                " team: a@example.org, b@example.org;",
                &["a@example.org", "b@example.org"],
            ),
            (
                " \"x@evil.example\"@example.org",
                &["\"x@evil.example\"@example.org"],
            ),
            (" Josë <josé@bücher.example>", &["josé@bücher.example"]),
            (" < alice@example.org >", &["alice@example.org"]),
            ("", &[]),
            (" Undisclosed", &["Undisclosed"]),
        ];
        for (value, want) in cases {
            assert_eq!(from_addresses(value), *want, "input {value:?}");
        }
    }

    #[test]
    fn the_check() {
        let owns = |a: &Address| a.to_string() == "alice@example.org";
        let cases: &[(&str, Result<(), FromProblem>)] = &[
            ("From: alice@example.org\r\n", Ok(())),
            (
                "Subject: x\r\nfrom : Alice\r\n <ALICE@Example.ORG>\r\n",
                Ok(()),
            ),
            ("Subject: x\r\n", Err(FromProblem::Missing)),
            ("", Err(FromProblem::Missing)),
            (
                "From: alice@example.org\r\nFrom: bob@example.org\r\n",
                Err(FromProblem::Repeated),
            ),
            (
                "From: bob@example.org\r\n",
                Err(FromProblem::NotOwned("bob@example.org".into())),
            ),
            (
                "From: alice@example.org, bob@example.org\r\n",
                Err(FromProblem::NotOwned("bob@example.org".into())),
            ),
            (
                "From: \"alice@example.org\" <bob@evil.example>\r\n",
                Err(FromProblem::NotOwned("bob@evil.example".into())),
            ),
            ("From: (nothing)\r\n", Err(FromProblem::Unreadable)),
            (
                "X-From: bob@example.org\r\nFrom: alice@example.org\r\n",
                Ok(()),
            ),
        ];
        for (header, want) in cases {
            assert_eq!(&check(header.as_bytes(), owns), want, "input {header:?}");
        }
    }

    #[test]
    fn collects_the_header_only_whatever_the_split() {
        let message = b"From: a@example.org\r\nSubject: s\r\n\r\nFrom: body@example.org\r\n";
        for split in 0..message.len() {
            let mut c = HeaderCollector::default();
            c.feed(&message[..split]);
            c.feed(&message[split..]);
            assert_eq!(
                c.header(),
                b"From: a@example.org\r\nSubject: s\r\n",
                "split at {split}"
            );
        }
        let mut c = HeaderCollector::default();
        c.feed(b"\r\nFrom: body@example.org\r\n");
        assert_eq!(c.header(), b"");
        let mut c = HeaderCollector::default();
        let big = vec![b'x'; MAX_HEADER * 2];
        c.feed(b"X: ");
        c.feed(&big);
        c.feed(b"\r\n\r\n");
        assert_eq!(c.header().len(), MAX_HEADER);
    }
}

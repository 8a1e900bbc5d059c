//! Trace fields added at delivery, and the mail-loop check.
//!
//! [RFC 5321 section 4.4](https://www.rfc-editor.org/rfc/rfc5321#section-4.4): "When an SMTP
//! server receives a message for delivery or further processing, it MUST insert trace
//! ("time stamp" or "Received") information at the beginning of the message content", and
//! the delivery SMTP server "MUST insert a "Return-Path" line at the beginning of the mail
//! data". `Delivered-To:` names the mailbox, as Postfix and others do, so loops through
//! forwarding can be seen. The protocol in `with` follows [RFC 3848](https://www.rfc-editor.org/rfc/rfc3848)
//! (ESMTP, ESMTPS, ESMTPA, ESMTPSA); the TLS version and cipher go in a comment.
//!
//! Section 6.3: "Simple counting of the number of "Received:" header fields in a message has
//! proven to be an effective, although rarely optimal, method of detecting loops"; more than
//! [`MAX_RECEIVED`] is answered with 554 5.4.6.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use proto_core::TlsInfo;

/// More `Received:` fields than this in a message is a mail loop.
pub const MAX_RECEIVED: usize = 50;

/// What the `Received:` field says about the connection.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The name the client gave in EHLO or HELO.
    pub helo: String,
    /// The client's address, as an address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
    pub client: String,
    /// Our host name.
    pub by: String,
    /// Whether the client used EHLO.
    pub esmtp: bool,
    /// TLS, when active.
    pub tls: Option<TlsInfo>,
    /// Whether the client authenticated.
    pub authenticated: bool,
    /// The message's queue id.
    pub id: String,
}

/// Counts `Received:` fields in a header section that arrives in chunks. Stops at the empty
/// line that ends the header section; holds 9 bytes of state whatever the input.
#[derive(Debug, Default)]
pub struct ReceivedCounter {
    prefix: [u8; 9],
    line_len: usize,
    done: bool,
    count: usize,
}

impl Trace {
    /// The protocol name for the `with` clause (RFC 3848).
    pub fn protocol(&self) -> &'static str {
        match (self.esmtp, self.tls.is_some(), self.authenticated) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    /// The fields prepended to the copy for `recipient`: `Return-Path:`, `Delivered-To:` and
    /// `Received:`, CRLF-terminated, folded to stay within 78 characters where it can.
    pub fn header(&self, from: &str, recipient: &str, now: SystemTime) -> String {
        let mut h = String::new();
        let _ = write!(h, "Return-Path: {}\r\n", clean(from));
        let _ = write!(h, "Delivered-To: {}\r\n", clean(recipient));
        h.push_str(&self.received(Some(recipient), now));
        h
    }

    /// The `Received:` field alone, with a `for` clause when the copy is for one recipient
    /// (for a server that adds `Return-Path:` and `Delivered-To:` itself, as an LMTP server
    /// does).
    pub fn received(&self, recipient: Option<&str>, now: SystemTime) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "Received: from {} ({})\r\n",
            clean(&self.helo),
            self.client
        );
        if let Some(tls) = &self.tls {
            let _ = write!(
                h,
                "\t(using {} with cipher {})\r\n",
                clean(&tls.version),
                clean(&tls.cipher)
            );
        }
        let _ = write!(
            h,
            "\tby {} (postern) with {} id {}",
            self.by,
            self.protocol(),
            self.id,
        );
        // RFC 5322 3.6.7: the tokens, then ";" and the date-time.
        match recipient {
            Some(recipient) => {
                let _ = write!(h, "\r\n\tfor <{}>; ", clean(recipient));
            }
            None => h.push_str(";\r\n\t"),
        }
        let _ = write!(h, "{}\r\n", rfc5322_date(now));
        h
    }

    /// The trace of a queued message, as recorded on reception, for its deliveries.
    pub fn of(envelope: &crate::queue::store::Envelope, id: &str, by: &str) -> Trace {
        let t = &envelope.trace;
        Trace {
            helo: t.helo.clone(),
            client: t.client.clone(),
            by: by.to_string(),
            esmtp: t.esmtp,
            tls: t
                .tls
                .as_ref()
                .map(|(version, cipher)| TlsInfo::new(version.clone(), cipher.clone(), None)),
            authenticated: t.authenticated,
            id: id.to_string(),
        }
    }
}

impl ReceivedCounter {
    /// Scans the next piece of the message.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.done {
                return;
            }
            if self.line_len == 0 && (b == b'\r' || b == b'\n') {
                // The empty line: the header section is over.
                self.done = true;
                return;
            }
            if b == b'\n' {
                self.line_len = 0;
                continue;
            }
            if self.line_len < self.prefix.len() {
                self.prefix[self.line_len] = b.to_ascii_lowercase();
            }
            self.line_len += 1;
            if self.line_len == self.prefix.len() && &self.prefix == b"received:" {
                self.count += 1;
            }
        }
    }

    /// `Received:` fields seen so far.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Header-safe text: controls (CR, LF, tabs...) become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `now` as an RFC 5322 date-time in UTC, e.g. `Thu, 1 Jan 1970 00:00:00 +0000`.
pub fn rfc5322_date(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `now` as RFC 3339 in UTC, for logs, e.g. `1970-01-01T00:00:00Z`.
pub fn rfc3339(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates() {
        let cases = [
            (0, "Thu, 1 Jan 1970 00:00:00 +0000", "1970-01-01T00:00:00Z"),
            (
                951_782_400,
                "Tue, 29 Feb 2000 00:00:00 +0000",
                "2000-02-29T00:00:00Z",
            ),
            (
                1_700_000_000,
                "Tue, 14 Nov 2023 22:13:20 +0000",
                "2023-11-14T22:13:20Z",
            ),
            (
                4_133_980_799,
                "Fri, 31 Dec 2100 23:59:59 +0000",
                "2100-12-31T23:59:59Z",
            ),
        ];
        for (secs, mail, log) in cases {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(rfc5322_date(t), mail, "input {secs}");
            assert_eq!(rfc3339(t), log, "input {secs}");
        }
    }

    /// The date-time follows a ";" with or without a `for` clause (RFC 5322 3.6.7).
    #[test]
    fn received_fields() {
        let trace = Trace {
            helo: "client.test".into(),
            client: "[192.0.2.1]".into(),
            by: "mx.example.org".into(),
            esmtp: true,
            tls: Some(TlsInfo::new("TLSv1.3", "TLS_AES_128_GCM_SHA256", None)),
            authenticated: true,
            id: "ID1".into(),
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let head = "Received: from client.test ([192.0.2.1])\r\n\
                    \t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n\
                    \tby mx.example.org (postern) with ESMTPSA id ID1";
        assert_eq!(
            trace.received(Some("a@example.org"), t),
            format!("{head}\r\n\tfor <a@example.org>; Tue, 14 Nov 2023 22:13:20 +0000\r\n")
        );
        assert_eq!(
            trace.received(None, t),
            format!("{head};\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n")
        );
    }

    #[test]
    fn counts_received_fields_in_the_header_only_whatever_the_split() {
        let msg = b"Received: a\r\nRECEIVED: b\r\nX-Received: c\r\n received: folded\r\n\
                    Subject: x\r\nreceived: d\r\n\r\nReceived: in the body\r\n";
        for split in 0..msg.len() {
            let mut c = ReceivedCounter::default();
            c.feed(&msg[..split]);
            c.feed(&msg[split..]);
            assert_eq!(c.count(), 3, "split at {split}");
        }
    }

    #[test]
    fn header_names_tls_and_protocol() {
        let trace = Trace {
            helo: "client.test\r\nX-Injected: 1".into(),
            client: "[127.0.0.1]".into(),
            by: "mx.test".into(),
            esmtp: true,
            tls: Some(TlsInfo::new("TLSv1.3", "TLS_AES_256_GCM_SHA384", None)),
            authenticated: false,
            id: "0123456789ABCDEF".into(),
        };
        let from = proto_core::ReversePath::parse("<a@client.test>").expect("path");
        let h = trace.header(&from.to_string(), "bob@mx.test", UNIX_EPOCH);
        assert_eq!(
            h,
            "Return-Path: <a@client.test>\r\n\
             Delivered-To: bob@mx.test\r\n\
             Received: from client.test  X-Injected: 1 ([127.0.0.1])\r\n\
             \t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n\
             \tby mx.test (postern) with ESMTPS id 0123456789ABCDEF\r\n\
             \tfor <bob@mx.test>; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}

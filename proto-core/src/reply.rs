//! SMTP replies: a three-digit code, an optional enhanced status code, and text lines.
//!
//! Encoding follows [RFC 5321 section 4.2](https://www.rfc-editor.org/rfc/rfc5321#section-4.2):
//! > "In a multiline reply, the reply code on each of the lines MUST be the same. [...]
//! > the format for multiline replies requires that every line, except the last, begin with the
//! > reply code, followed immediately by a hyphen [...] The last line will begin with the reply
//! > code, followed immediately by \<SP\>, optionally some text, and \<CRLF\>."
//!
//! Enhanced status codes are [RFC 3463](https://www.rfc-editor.org/rfc/rfc3463) values, put at the
//! start of the text of every line as [RFC 2034 section 4](https://www.rfc-editor.org/rfc/rfc2034#section-4)
//! asks ("the status code [...] MUST be [...] preceding the text of every line").
//!
//! Text lines never carry CR or LF: [`Reply::new`] and friends replace control characters with
//! spaces, so an application can never inject a reply line (or a command, on the client side).
//! [`Reply::parse`] reads one complete reply back from bytes; encoding then parsing gives the
//! same reply (a property test checks it).

use std::fmt;

use thiserror::Error;

/// A three-digit SMTP reply code, `200..=599` (RFC 5321 section 4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyCode(u16);

impl ReplyCode {
    /// 211 System status.
    pub const SYSTEM_STATUS: ReplyCode = ReplyCode(211);
    /// 214 Help message.
    pub const HELP: ReplyCode = ReplyCode(214);
    /// 220 Service ready.
    pub const READY: ReplyCode = ReplyCode(220);
    /// 221 Service closing transmission channel.
    pub const CLOSING: ReplyCode = ReplyCode(221);
    /// 235 Authentication succeeded (RFC 4954).
    pub const AUTH_OK: ReplyCode = ReplyCode(235);
    /// 250 Requested mail action okay, completed.
    pub const OK: ReplyCode = ReplyCode(250);
    /// 252 Cannot VRFY user, but will accept message.
    pub const CANNOT_VRFY: ReplyCode = ReplyCode(252);
    /// 334 SASL challenge (RFC 4954).
    pub const AUTH_CHALLENGE: ReplyCode = ReplyCode(334);
    /// 354 Start mail input.
    pub const START_MAIL_INPUT: ReplyCode = ReplyCode(354);
    /// 421 Service not available, closing transmission channel.
    pub const SERVICE_UNAVAILABLE: ReplyCode = ReplyCode(421);
    /// 451 Local error in processing.
    pub const LOCAL_ERROR: ReplyCode = ReplyCode(451);
    /// 452 Insufficient system storage (also: too many recipients).
    pub const INSUFFICIENT_STORAGE: ReplyCode = ReplyCode(452);
    /// 454 Temporary authentication failure (RFC 4954).
    pub const TEMP_AUTH_FAILURE: ReplyCode = ReplyCode(454);
    /// 500 Syntax error, command unrecognized.
    pub const SYNTAX_ERROR: ReplyCode = ReplyCode(500);
    /// 501 Syntax error in parameters or arguments.
    pub const PARAM_SYNTAX_ERROR: ReplyCode = ReplyCode(501);
    /// 502 Command not implemented.
    pub const NOT_IMPLEMENTED: ReplyCode = ReplyCode(502);
    /// 503 Bad sequence of commands.
    pub const BAD_SEQUENCE: ReplyCode = ReplyCode(503);
    /// 504 Command parameter not implemented.
    pub const PARAM_NOT_IMPLEMENTED: ReplyCode = ReplyCode(504);
    /// 530 Authentication required (RFC 4954).
    pub const AUTH_REQUIRED: ReplyCode = ReplyCode(530);
    /// 535 Authentication credentials invalid (RFC 4954).
    pub const AUTH_INVALID: ReplyCode = ReplyCode(535);
    /// 538 Encryption required for requested authentication mechanism (RFC 4954).
    pub const ENCRYPTION_REQUIRED: ReplyCode = ReplyCode(538);
    /// 550 Requested action not taken: mailbox unavailable.
    pub const MAILBOX_UNAVAILABLE: ReplyCode = ReplyCode(550);
    /// 552 Requested mail action aborted: exceeded storage allocation.
    pub const EXCEEDED_STORAGE: ReplyCode = ReplyCode(552);
    /// 553 Requested action not taken: mailbox name not allowed.
    pub const MAILBOX_NAME_NOT_ALLOWED: ReplyCode = ReplyCode(553);
    /// 554 Transaction failed.
    pub const TRANSACTION_FAILED: ReplyCode = ReplyCode(554);
    /// 555 MAIL FROM/RCPT TO parameters not recognized or not implemented.
    pub const PARAMS_NOT_RECOGNIZED: ReplyCode = ReplyCode(555);

    /// A reply code from its number; `None` outside `200..=599`.
    pub const fn new(code: u16) -> Option<ReplyCode> {
        if code >= 200 && code <= 599 {
            Some(ReplyCode(code))
        } else {
            None
        }
    }

    /// The numeric value.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The first digit's meaning.
    pub const fn class(self) -> ReplyClass {
        match self.0 / 100 {
            2 => ReplyClass::PositiveCompletion,
            3 => ReplyClass::PositiveIntermediate,
            4 => ReplyClass::TransientNegative,
            _ => ReplyClass::PermanentNegative,
        }
    }

    /// True for 4xx and 5xx replies.
    pub const fn is_negative(self) -> bool {
        self.0 >= 400
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The class of a reply, from its first digit (RFC 5321 section 4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplyClass {
    /// 2yz: the requested action has been successfully completed.
    PositiveCompletion,
    /// 3yz: the command has been accepted, more information is needed.
    PositiveIntermediate,
    /// 4yz: transient failure; the request may be repeated.
    TransientNegative,
    /// 5yz: permanent failure.
    PermanentNegative,
}

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    class: u8,
    subject: u16,
    detail: u16,
}

impl EnhancedStatus {
    /// Builds a status code. `class` must be 2, 4 or 5 and `subject`, `detail` at most 999
    /// (RFC 3463 section 2); `None` otherwise.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Option<EnhancedStatus> {
        if (class == 2 || class == 4 || class == 5) && subject <= 999 && detail <= 999 {
            Some(EnhancedStatus {
                class,
                subject,
                detail,
            })
        } else {
            None
        }
    }

    /// The class digit: 2 success, 4 persistent transient failure, 5 permanent failure.
    pub const fn class(self) -> u8 {
        self.class
    }

    /// The subject number.
    pub const fn subject(self) -> u16 {
        self.subject
    }

    /// The detail number.
    pub const fn detail(self) -> u16 {
        self.detail
    }

    /// Parses `x.y.z`.
    pub fn parse(s: &str) -> Option<EnhancedStatus> {
        let mut it = s.split('.');
        let class = parse_digits(it.next()?, 1)?;
        let subject = parse_digits(it.next()?, 3)?;
        let detail = parse_digits(it.next()?, 3)?;
        if it.next().is_some() {
            return None;
        }
        EnhancedStatus::new(u8::try_from(class).ok()?, subject, detail)
    }
}

fn parse_digits(s: &str, max_len: usize) -> Option<u16> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A complete SMTP reply: code, optional enhanced status code, one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reply {
    code: ReplyCode,
    enhanced: Option<EnhancedStatus>,
    lines: Vec<String>,
}

impl Reply {
    /// A one-line reply. Control characters in `text` become spaces.
    pub fn new(
        code: ReplyCode,
        enhanced: Option<EnhancedStatus>,
        text: impl Into<String>,
    ) -> Reply {
        Reply::multiline(code, enhanced, [text.into()])
    }

    /// A reply with several lines (an empty iterator gives one empty line).
    /// Control characters in the text become spaces.
    pub fn multiline<I, S>(code: ReplyCode, enhanced: Option<EnhancedStatus>, lines: I) -> Reply
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut lines: Vec<String> = lines.into_iter().map(|l| sanitize(l.into())).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Reply {
            code,
            enhanced,
            lines,
        }
    }

    /// A reply written in code: a named code, the enhanced status as literal numbers (each
    /// caller names its RFC 3463 meaning), and the text:
    /// `Reply::of(ReplyCode::MAILBOX_UNAVAILABLE, (5, 1, 1), "No such user")`.
    ///
    /// An invalid enhanced code is left out (debug builds panic instead, so tests catch it).
    pub fn of(code: ReplyCode, enhanced: (u8, u16, u16), text: impl Into<String>) -> Reply {
        let status = EnhancedStatus::new(enhanced.0, enhanced.1, enhanced.2);
        debug_assert!(status.is_some(), "enhanced status {enhanced:?} invalid");
        Reply::new(code, status, text)
    }

    /// The reply code.
    pub fn code(&self) -> ReplyCode {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn enhanced(&self) -> Option<EnhancedStatus> {
        self.enhanced
    }

    /// The text lines, without code or enhanced status code.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The same reply without its enhanced status code (for peers that did not negotiate it).
    pub fn without_enhanced(mut self) -> Reply {
        self.enhanced = None;
        self
    }

    /// Appends the wire form (every line ending in CRLF) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let last = self.lines.len() - 1;
        for (i, line) in self.lines.iter().enumerate() {
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            if let Some(e) = self.enhanced {
                out.extend_from_slice(e.to_string().as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Parses one complete reply from the start of `input`.
    ///
    /// Returns the reply and the number of bytes it used, `Ok(None)` if `input` holds only part
    /// of a reply, or an error for bytes that are not a reply. An enhanced status code is
    /// recognised when the first line's text starts with one whose class matches the reply
    /// code's first digit (RFC 2034 section 4), and is then stripped from every line that has it.
    pub fn parse(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyParseError> {
        let mut pos = 0;
        let mut code = None;
        let mut raw_lines: Vec<&str> = Vec::new();
        loop {
            let Some(rel) = input[pos..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let line = &input[pos..pos + rel];
            pos += rel + 2;
            if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
                return Err(ReplyParseError::BadCode);
            }
            let n = u16::from(line[0] - b'0') * 100
                + u16::from(line[1] - b'0') * 10
                + u16::from(line[2] - b'0');
            let this = ReplyCode::new(n).ok_or(ReplyParseError::BadCode)?;
            if *code.get_or_insert(this) != this {
                return Err(ReplyParseError::MixedCodes);
            }
            let text = std::str::from_utf8(&line[3..]).map_err(|_| ReplyParseError::NotUtf8)?;
            let (last, text) = match text.as_bytes().first() {
                None => (true, ""),
                Some(b' ') => (true, &text[1..]),
                Some(b'-') => (false, &text[1..]),
                Some(_) => return Err(ReplyParseError::BadSeparator),
            };
            raw_lines.push(text);
            if last {
                break;
            }
        }
        let code = code.ok_or(ReplyParseError::BadCode)?;
        let first_word = raw_lines[0].split(' ').next().unwrap_or("");
        let enhanced =
            EnhancedStatus::parse(first_word).filter(|e| u16::from(e.class()) == code.get() / 100);
        let lines = raw_lines.into_iter().map(|l| match enhanced {
            Some(e) => {
                let prefix = e.to_string();
                match l.strip_prefix(prefix.as_str()) {
                    Some(rest) => rest.strip_prefix(' ').unwrap_or(rest).to_string(),
                    None => l.to_string(),
                }
            }
            None => l.to_string(),
        });
        Ok(Some((Reply::multiline(code, enhanced, lines), pos)))
    }
}

fn sanitize(mut s: String) -> String {
    if s.chars().any(char::is_control) {
        s = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
    }
    s
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// Why bytes could not be read as a reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReplyParseError {
    /// A line does not start with a reply code in 200..=599.
    #[error("reply line does not start with a valid three-digit code")]
    BadCode,
    /// The lines of a multi-line reply carry different codes.
    #[error("multi-line reply mixes reply codes")]
    MixedCodes,
    /// The code is followed by neither a space, a hyphen nor the line end.
    #[error("reply code not followed by space or hyphen")]
    BadSeparator,
    /// The text is not UTF-8.
    #[error("reply text is not UTF-8")]
    NotUtf8,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_single_and_multiline() {
        let cases: Vec<(Reply, &str)> = vec![
            (
                Reply::of(ReplyCode::OK, (2, 0, 0), "OK"),
                "250 2.0.0 OK\r\n",
            ),
            (Reply::new(ReplyCode::OK, None, "a\r\nb"), "250 a  b\r\n"),
            (
                Reply::multiline(ReplyCode::OK, None, ["x.example", "PIPELINING", "SIZE 10"]),
                "250-x.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
            ),
            (
                Reply::multiline(ReplyCode::OK, EnhancedStatus::new(2, 0, 0), ["a", ""]),
                "250-2.0.0 a\r\n250 2.0.0\r\n",
            ),
            (
                Reply::multiline(ReplyCode::AUTH_CHALLENGE, None, Vec::<String>::new()),
                "334 \r\n",
            ),
        ];
        for (reply, wire) in cases {
            assert_eq!(
                String::from_utf8_lossy(&reply.to_bytes()),
                wire,
                "encoding {reply:?}"
            );
        }
    }

    #[test]
    fn parses_replies_and_reports_partial_or_bad_input() {
        let ok: Vec<(&str, u16, Option<&str>, Vec<&str>)> = vec![
            ("250 OK\r\n", 250, None, vec!["OK"]),
            (
                "250 2.1.0 Sender ok\r\n",
                250,
                Some("2.1.0"),
                vec!["Sender ok"],
            ),
            (
                "550-5.1.1 a\r\n550 5.1.1 b\r\n",
                550,
                Some("5.1.1"),
                vec!["a", "b"],
            ),
            ("220\r\n", 220, None, vec![""]),
            (
                "250 5.0.0 class mismatch\r\n",
                250,
                None,
                vec!["5.0.0 class mismatch"],
            ),
            ("250-a\r\n250 b\r\nEXTRA", 250, None, vec!["a", "b"]),
        ];
        for (input, code, enh, lines) in ok {
            let (reply, used) = Reply::parse(input.as_bytes())
                .unwrap_or_else(|e| panic!("{input:?}: {e}"))
                .unwrap_or_else(|| panic!("{input:?}: incomplete"));
            assert_eq!(reply.code().get(), code, "{input:?}");
            assert_eq!(
                reply.enhanced().map(|e| e.to_string()).as_deref(),
                enh,
                "{input:?}"
            );
            assert_eq!(reply.lines(), lines.as_slice(), "{input:?}");
            assert_eq!(
                &input[used..],
                input.strip_prefix(&input[..used]).unwrap_or(""),
                "{input:?}"
            );
        }
        for partial in ["", "250", "250-a\r\n", "250 a\r"] {
            assert_eq!(Reply::parse(partial.as_bytes()), Ok(None), "{partial:?}");
        }
        // Every proper prefix of a complete reply is "incomplete", never an error.
        let full = b"250-mx.example greets you\r\n250-PIPELINING\r\n250 2.0.0 SIZE 10\r\n";
        for cut in 0..full.len() {
            assert_eq!(Reply::parse(&full[..cut]), Ok(None), "prefix {cut}");
        }
        let bad: Vec<(&str, ReplyParseError)> = vec![
            ("abc\r\n", ReplyParseError::BadCode),
            ("150 x\r\n", ReplyParseError::BadCode),
            ("25\r\n", ReplyParseError::BadCode),
            ("250-a\r\n251 b\r\n", ReplyParseError::MixedCodes),
            ("250xa\r\n", ReplyParseError::BadSeparator),
        ];
        for (input, err) in bad {
            assert_eq!(Reply::parse(input.as_bytes()), Err(err), "{input:?}");
        }
    }

    #[test]
    fn enhanced_status_bounds() {
        assert!(EnhancedStatus::new(3, 0, 0).is_none());
        assert!(EnhancedStatus::new(5, 1000, 0).is_none());
        assert_eq!(
            EnhancedStatus::parse("5.7.8")
                .map(|e| e.to_string())
                .as_deref(),
            Some("5.7.8")
        );
        for bad in ["5.7", "5.7.8.1", "x.1.1", "5.1234.1", "", "5..1"] {
            assert_eq!(EnhancedStatus::parse(bad), None, "{bad:?}");
        }
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        (
            200u16..=599,
            proptest::option::of((0usize..3, 0u16..=999, 0u16..=999)),
            proptest::collection::vec("[ -~]{0,40}", 1..5),
        )
            .prop_map(|(code, enh, lines)| {
                let code = ReplyCode::new(code).unwrap_or(ReplyCode::OK);
                // RFC 2034: the enhanced class must agree with the reply class.
                let enhanced = enh.and_then(|(_, s, d)| {
                    let class = (code.get() / 100) as u8;
                    EnhancedStatus::new(class, s, d)
                });
                // A line whose text itself begins like a status code would be ambiguous.
                let lines: Vec<String> = lines
                    .into_iter()
                    .map(|l| {
                        let l = l.trim_start().to_string();
                        if EnhancedStatus::parse(l.split(' ').next().unwrap_or("")).is_some() {
                            format!("x{l}")
                        } else {
                            l
                        }
                    })
                    .collect();
                Reply::multiline(code, enhanced, lines)
            })
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(reply in arb_reply()) {
            let wire = reply.to_bytes();
            let parsed = Reply::parse(&wire);
            let normalized: Vec<String> = reply.lines().to_vec();
            let (got, used) = parsed.expect("parses").expect("complete");
            prop_assert_eq!(used, wire.len());
            prop_assert_eq!(got.code(), reply.code());
            prop_assert_eq!(got.enhanced(), reply.enhanced());
            prop_assert_eq!(got.lines(), normalized.as_slice());
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Reply::parse(&bytes);
        }
    }
}

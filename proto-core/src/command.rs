//! SMTP command lines and their ESMTP parameters, parsed into types.
//!
//! Grammar: [RFC 5321 section 4.1.1](https://www.rfc-editor.org/rfc/rfc5321#section-4.1.1),
//! ESMTP parameters from RFC 1870 (SIZE), RFC 6152 (BODY=8BITMIME), RFC 3030 (BDAT,
//! BODY=BINARYMIME), RFC 6531 (SMTPUTF8), RFC 3461 (RET, ENVID, NOTIFY, ORCPT), RFC 4954 (AUTH,
//! AUTH=) and RFC 8689 (REQUIRETLS).
//!
//! > "Verbs and argument values (e.g., "TO:" or "to:" in the RCPT command and extension name
//! > keywords) are not case sensitive" (RFC 5321 2.4).
//!
//! Deliberate leniency, as deployed servers (Postfix, chasquid) allow: spaces after `FROM:` and
//! `TO:`, and a path without angle brackets (`RCPT TO: user@example.org`). Everything else is
//! strict: an unknown parameter is 555 (RFC 5321 4.1.1.11: "the server [...] MUST return a 555
//! reply"), a repeated one 501.
//!
//! The parser does not know what the session advertised; the session checks that each parameter
//! belongs to an extension it offered.

use std::fmt;

use thiserror::Error;

use crate::address::{AddressError, ForwardPath, ReversePath, split_path};
use crate::reply::{Reply, ReplyCode};

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `EHLO domain-or-literal`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<reverse-path> [params]`.
    Mail {
        /// The reverse path.
        from: ReversePath,
        /// ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:<forward-path> [params]`.
    Rcpt {
        /// The forward path.
        to: ForwardPath,
        /// ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets of message data that follow the command line.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy(String),
    /// `EXPN string`.
    Expn(String),
    /// `HELP [string]`.
    Help(Option<String>),
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The SASL mechanism.
        mechanism: Mechanism,
        /// The initial response, still base64 encoded (`=` for an empty one).
        initial: Option<String>,
    },
}

impl Command {
    /// Parses one command line, without its CRLF.
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let line = std::str::from_utf8(line).map_err(|_| CommandError::NotUtf8)?;
        let line = line.trim_end_matches(' ');
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v, a.trim_start_matches(' ')),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => {
                if arg.is_empty() || arg.contains(' ') {
                    return Err(CommandError::Syntax(
                        "EHLO and HELO take one domain argument",
                    ));
                }
                if verb == "EHLO" {
                    Ok(Command::Ehlo(arg.to_string()))
                } else {
                    Ok(Command::Helo(arg.to_string()))
                }
            }
            "MAIL" => {
                let rest = strip_prefix_ci(arg, "FROM:")
                    .ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?;
                let (path, params) =
                    split_path(rest.trim_start_matches(' ')).map_err(CommandError::Sender)?;
                let from = ReversePath::parse(path).map_err(CommandError::Sender)?;
                let params = MailParams::parse(params)?;
                Ok(Command::Mail { from, params })
            }
            "RCPT" => {
                let rest = strip_prefix_ci(arg, "TO:")
                    .ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?;
                let (path, params) =
                    split_path(rest.trim_start_matches(' ')).map_err(CommandError::Recipient)?;
                let to = ForwardPath::parse(path).map_err(CommandError::Recipient)?;
                let params = RcptParams::parse(params)?;
                Ok(Command::Rcpt { to, params })
            }
            "DATA" => no_arg(arg, Command::Data),
            "RSET" => no_arg(arg, Command::Rset),
            "QUIT" => no_arg(arg, Command::Quit),
            "STARTTLS" => no_arg(arg, Command::StartTls),
            "NOOP" => Ok(Command::Noop),
            "VRFY" | "EXPN" => {
                if arg.is_empty() {
                    return Err(CommandError::Syntax("VRFY and EXPN take an argument"));
                }
                if verb == "VRFY" {
                    Ok(Command::Vrfy(arg.to_string()))
                } else {
                    Ok(Command::Expn(arg.to_string()))
                }
            }
            "HELP" => Ok(Command::Help((!arg.is_empty()).then(|| arg.to_string()))),
            "BDAT" => {
                let mut words = arg.split(' ').filter(|w| !w.is_empty());
                let size = words
                    .next()
                    .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|w| w.parse::<u64>().ok())
                    .ok_or(CommandError::BadChunkSize)?;
                let last = match words.next() {
                    None => false,
                    Some(w) if w.eq_ignore_ascii_case("LAST") => true,
                    Some(_) => return Err(CommandError::Syntax("expected BDAT size [LAST]")),
                };
                if words.next().is_some() {
                    return Err(CommandError::Syntax("expected BDAT size [LAST]"));
                }
                Ok(Command::Bdat { size, last })
            }
            "AUTH" => {
                let mut words = arg.split(' ').filter(|w| !w.is_empty());
                let mech = words
                    .next()
                    .ok_or(CommandError::Syntax("expected AUTH mechanism"))?;
                if mech.len() > 20
                    || !mech
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(CommandError::Syntax("malformed SASL mechanism name"));
                }
                let initial = words.next().map(str::to_string);
                if words.next().is_some() {
                    return Err(CommandError::Syntax(
                        "expected AUTH mechanism [initial-response]",
                    ));
                }
                Ok(Command::Auth {
                    mechanism: Mechanism::from_name(mech),
                    initial,
                })
            }
            _ => Err(CommandError::Unknown),
        }
    }
}

fn no_arg(arg: &str, command: Command) -> Result<Command, CommandError> {
    if arg.is_empty() {
        Ok(command)
    } else {
        Err(CommandError::Syntax("this command takes no arguments"))
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Whether a line looks like the request line of an HTTP request: such a "client" is a
/// cross-protocol attack (a browser made to post to port 25) and the session closes at once.
pub fn looks_like_http(line: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"CONNECT ",
        b"OPTIONS ",
        b"DELETE ",
        b"PATCH ",
        b"TRACE ",
    ];
    let upper = line.to_ascii_uppercase();
    METHODS.iter().any(|m| upper.starts_with(m))
        || upper
            .windows(6)
            .rposition(|w| w == b" HTTP/")
            .is_some_and(|p| upper.len() - p <= 10)
}

/// A SASL mechanism name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mechanism {
    /// PLAIN (RFC 4616).
    Plain,
    /// LOGIN (draft-murchison-sasl-login).
    Login,
    /// Any other mechanism, upper-cased.
    Other(String),
}

impl Mechanism {
    fn from_name(name: &str) -> Mechanism {
        match name.to_ascii_uppercase().as_str() {
            "PLAIN" => Mechanism::Plain,
            "LOGIN" => Mechanism::Login,
            other => Mechanism::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mechanism::Plain => f.write_str("PLAIN"),
            Mechanism::Login => f.write_str("LOGIN"),
            Mechanism::Other(s) => f.write_str(s),
        }
    }
}

/// The BODY parameter of MAIL (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
    /// `BODY=BINARYMIME`: the message may only be sent with BDAT.
    BinaryMime,
}

/// The RET parameter of MAIL (RFC 3461 4.3): how much of the message a DSN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ret {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: the headers only.
    Headers,
}

/// The parameters of a MAIL command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailParams {
    /// `SIZE=n`: the declared message size (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=`: the body type.
    pub body: Option<Body>,
    /// `SMTPUTF8`: the transaction may carry UTF-8 addresses and headers (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461).
    pub ret: Option<Ret>,
    /// `ENVID=`: the envelope identifier, xtext-decoded (RFC 3461 4.4).
    pub envid: Option<String>,
    /// `AUTH=`: the original submitter, xtext-decoded; `Some("")` for `AUTH=<>` (RFC 4954 5).
    pub auth: Option<String>,
    /// `REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
}

impl MailParams {
    fn parse(s: &str) -> Result<MailParams, CommandError> {
        let mut p = MailParams::default();
        let mut seen: Vec<String> = Vec::new();
        for (key, value) in params(s, &mut seen)? {
            match (key.as_str(), value) {
                ("SIZE", Some(v)) => {
                    p.size = Some(
                        digits(v)
                            .and_then(|d| d.parse().ok())
                            .ok_or(CommandError::BadValue("SIZE"))?,
                    )
                }
                ("BODY", Some(v)) => {
                    p.body = Some(match v.to_ascii_uppercase().as_str() {
                        "7BIT" => Body::SevenBit,
                        "8BITMIME" => Body::EightBitMime,
                        "BINARYMIME" => Body::BinaryMime,
                        _ => return Err(CommandError::BadValue("BODY")),
                    })
                }
                ("SMTPUTF8", None) => p.smtputf8 = true,
                ("REQUIRETLS", None) => p.requiretls = true,
                ("RET", Some(v)) => {
                    p.ret = Some(match v.to_ascii_uppercase().as_str() {
                        "FULL" => Ret::Full,
                        "HDRS" => Ret::Headers,
                        _ => return Err(CommandError::BadValue("RET")),
                    })
                }
                ("ENVID", Some(v)) => {
                    // RFC 3461 4.4: "the ENVID MUST NOT exceed 100 characters"
                    let id = xtext_decode(v).ok_or(CommandError::BadValue("ENVID"))?;
                    if id.len() > 100 {
                        return Err(CommandError::BadValue("ENVID"));
                    }
                    p.envid = Some(id)
                }
                ("AUTH", Some(v)) => {
                    p.auth = Some(if v == "<>" {
                        String::new()
                    } else {
                        xtext_decode(v).ok_or(CommandError::BadValue("AUTH"))?
                    })
                }
                ("SIZE" | "BODY" | "RET" | "ENVID" | "AUTH", None)
                | ("SMTPUTF8" | "REQUIRETLS", Some(_)) => {
                    return Err(CommandError::BadValue(static_name(&key)));
                }
                _ => return Err(CommandError::UnknownParameter(key)),
            }
        }
        Ok(p)
    }
}

/// The NOTIFY parameter of RCPT (RFC 3461 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Notify {
    /// `NOTIFY=NEVER`.
    Never,
    /// `NOTIFY=` a list of conditions.
    On {
        /// SUCCESS was listed.
        success: bool,
        /// FAILURE was listed.
        failure: bool,
        /// DELAY was listed.
        delay: bool,
    },
}

/// The ORCPT parameter of RCPT (RFC 3461 4.2): the original recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OriginalRecipient {
    /// The address type, e.g. `rfc822` or `utf-8`.
    pub addr_type: String,
    /// The address, xtext-decoded.
    pub address: String,
}

/// The parameters of a RCPT command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RcptParams {
    /// `NOTIFY=`.
    pub notify: Option<Notify>,
    /// `ORCPT=`.
    pub orcpt: Option<OriginalRecipient>,
}

impl RcptParams {
    fn parse(s: &str) -> Result<RcptParams, CommandError> {
        let mut p = RcptParams::default();
        let mut seen = Vec::new();
        for (key, value) in params(s, &mut seen)? {
            match (key.as_str(), value) {
                ("NOTIFY", Some(v)) => p.notify = Some(parse_notify(v)?),
                ("ORCPT", Some(v)) => {
                    let (t, a) = v.split_once(';').ok_or(CommandError::BadValue("ORCPT"))?;
                    let address = xtext_decode(a).ok_or(CommandError::BadValue("ORCPT"))?;
                    if t.is_empty()
                        || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        || address.is_empty()
                    {
                        return Err(CommandError::BadValue("ORCPT"));
                    }
                    p.orcpt = Some(OriginalRecipient {
                        addr_type: t.to_ascii_lowercase(),
                        address,
                    });
                }
                ("NOTIFY" | "ORCPT", None) => {
                    return Err(CommandError::BadValue(static_name(&key)));
                }
                _ => return Err(CommandError::UnknownParameter(key)),
            }
        }
        Ok(p)
    }
}

fn parse_notify(v: &str) -> Result<Notify, CommandError> {
    if v.eq_ignore_ascii_case("NEVER") {
        return Ok(Notify::Never);
    }
    let (mut success, mut failure, mut delay) = (false, false, false);
    for item in v.split(',') {
        let flag = match item.to_ascii_uppercase().as_str() {
            "SUCCESS" => &mut success,
            "FAILURE" => &mut failure,
            "DELAY" => &mut delay,
            // RFC 3461 4.1: NEVER MUST appear alone.
            _ => return Err(CommandError::BadValue("NOTIFY")),
        };
        if *flag {
            return Err(CommandError::BadValue("NOTIFY"));
        }
        *flag = true;
    }
    Ok(Notify::On {
        success,
        failure,
        delay,
    })
}

fn static_name(key: &str) -> &'static str {
    match key {
        "SIZE" => "SIZE",
        "BODY" => "BODY",
        "RET" => "RET",
        "ENVID" => "ENVID",
        "AUTH" => "AUTH",
        "SMTPUTF8" => "SMTPUTF8",
        "REQUIRETLS" => "REQUIRETLS",
        "NOTIFY" => "NOTIFY",
        "ORCPT" => "ORCPT",
        _ => "parameter",
    }
}

fn digits(v: &str) -> Option<&str> {
    (!v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit())).then_some(v)
}

/// Splits `key[=value]` parameters; keys upper-cased, each key at most once.
/// RFC 5321 4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"),
/// esmtp-value = 1*(%d33-60 / %d62-126) (RFC 6531 adds UTF-8 non-ASCII).
fn params<'a>(
    s: &'a str,
    seen: &mut Vec<String>,
) -> Result<Vec<(String, Option<&'a str>)>, CommandError> {
    let mut out = Vec::new();
    for word in s.split(' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value.is_none_or(|v| {
            !v.is_empty()
                && v.chars().all(|c| {
                    c == '!'
                        || ('#'..='<').contains(&c)
                        || ('>'..='~').contains(&c)
                        || c as u32 >= 0x80
                })
        });
        if !key_ok || !value_ok {
            return Err(CommandError::Syntax("malformed ESMTP parameter"));
        }
        let key = key.to_ascii_uppercase();
        if seen.contains(&key) {
            return Err(CommandError::DuplicateParameter(key));
        }
        seen.push(key.clone());
        out.push((key, value));
    }
    Ok(out)
}

/// Decodes RFC 3461 xtext: `+XX` is the octet with hex value XX; `+` and `=` must not appear
/// otherwise. Returns `None` for malformed xtext or a result that is not UTF-8.
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            c if (33..=126).contains(&c) || c >= 0x80 => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a string as RFC 3461 xtext.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Why a command line was refused. Each carries the reply the peer gets.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The verb is not an SMTP command we know.
    #[error("unknown command")]
    Unknown,
    /// The line is not UTF-8.
    #[error("command line is not UTF-8")]
    NotUtf8,
    /// The arguments do not follow the command's syntax.
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// The MAIL FROM address is malformed.
    #[error("bad sender address: {0}")]
    Sender(AddressError),
    /// The RCPT TO address is malformed.
    #[error("bad recipient address: {0}")]
    Recipient(AddressError),
    /// A parameter nobody defined (or we do not implement).
    #[error("unknown parameter {0}")]
    UnknownParameter(String),
    /// A parameter given twice.
    #[error("parameter {0} given twice")]
    DuplicateParameter(String),
    /// A known parameter with a malformed or missing value.
    #[error("bad value for {0}")]
    BadValue(&'static str),
    /// BDAT without a valid chunk size: the session cannot find the next command and must close.
    #[error("BDAT chunk size missing or malformed")]
    BadChunkSize,
}

impl CommandError {
    /// The reply for the peer.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unknown => {
                Reply::of(ReplyCode::SYNTAX_ERROR, (5, 5, 1), "Unknown command")
            }
            CommandError::NotUtf8 => Reply::of(
                ReplyCode::SYNTAX_ERROR,
                (5, 5, 2),
                "Command is not valid UTF-8",
            ),
            CommandError::Syntax(what) => Reply::of(
                ReplyCode::PARAM_SYNTAX_ERROR,
                (5, 5, 4),
                format!("Syntax error: {what}"),
            ),
            CommandError::Sender(e) => address_reply(e, true),
            CommandError::Recipient(e) => address_reply(e, false),
            CommandError::UnknownParameter(k) => Reply::of(
                ReplyCode::PARAMS_NOT_RECOGNIZED,
                (5, 5, 4),
                format!("Parameter {k} not recognized"),
            ),
            CommandError::DuplicateParameter(k) => Reply::of(
                ReplyCode::PARAM_SYNTAX_ERROR,
                (5, 5, 4),
                format!("Parameter {k} given twice"),
            ),
            CommandError::BadValue(k) => Reply::of(
                ReplyCode::PARAM_SYNTAX_ERROR,
                (5, 5, 4),
                format!("Bad value for {k}"),
            ),
            CommandError::BadChunkSize => Reply::of(
                ReplyCode::PARAM_SYNTAX_ERROR,
                (5, 5, 4),
                "BDAT needs a chunk size; closing to stay in sync",
            ),
        }
    }
}

/// RFC 3463: X.1.7 bad sender mailbox syntax, X.1.3 bad destination mailbox syntax,
/// X.1.8 bad sender system address, X.1.2 bad destination system address.
fn address_reply(e: &AddressError, sender: bool) -> Reply {
    let who = if sender { "sender" } else { "recipient" };
    let detail = match (e.is_idna(), sender) {
        (true, true) => 8,
        (true, false) => 2,
        (false, true) => 7,
        (false, false) => 3,
    };
    Reply::of(
        ReplyCode::PARAM_SYNTAX_ERROR,
        (5, 1, detail),
        format!("Malformed {who} address: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> String {
        match Command::parse(line.as_bytes()) {
            Ok(c) => format!("ok {c:?}"),
            Err(e) => {
                let r = e.reply();
                format!(
                    "{} {}",
                    r.code(),
                    r.enhanced().map(|e| e.to_string()).unwrap_or_default()
                )
            }
        }
    }

    #[test]
    fn simple_commands() {
        let cases: Vec<(&str, Command)> = vec![
            (
                "EHLO client.example",
                Command::Ehlo("client.example".into()),
            ),
            ("ehlo [192.0.2.1]", Command::Ehlo("[192.0.2.1]".into())),
            ("HELO x", Command::Helo("x".into())),
            ("DATA", Command::Data),
            ("data  ", Command::Data),
            ("RSET", Command::Rset),
            ("NOOP", Command::Noop),
            ("NOOP anything at all", Command::Noop),
            ("QUIT", Command::Quit),
            ("VRFY joe", Command::Vrfy("joe".into())),
            ("EXPN staff", Command::Expn("staff".into())),
            ("HELP", Command::Help(None)),
            ("HELP MAIL", Command::Help(Some("MAIL".into()))),
            ("STARTTLS", Command::StartTls),
            (
                "BDAT 10",
                Command::Bdat {
                    size: 10,
                    last: false,
                },
            ),
            (
                "BDAT 0 LAST",
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            (
                "bdat 5 last",
                Command::Bdat {
                    size: 5,
                    last: true,
                },
            ),
            (
                "AUTH PLAIN",
                Command::Auth {
                    mechanism: Mechanism::Plain,
                    initial: None,
                },
            ),
            (
                "auth login dXNlcg==",
                Command::Auth {
                    mechanism: Mechanism::Login,
                    initial: Some("dXNlcg==".into()),
                },
            ),
            (
                "AUTH X-FOO",
                Command::Auth {
                    mechanism: Mechanism::Other("X-FOO".into()),
                    initial: None,
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(Command::parse(line.as_bytes()), Ok(want), "{line:?}");
        }
    }

    #[test]
    fn errors_and_their_replies() {
        let cases: Vec<(&str, &str)> = vec![
            ("XYZZY", "500 5.5.1"),
            ("", "500 5.5.1"),
            ("EHLO", "501 5.5.4"),
            ("HELO a b", "501 5.5.4"),
            ("DATA x", "501 5.5.4"),
            ("STARTTLS foo", "501 5.5.4"),
            ("RSET now", "501 5.5.4"),
            ("QUIT please", "501 5.5.4"),
            ("VRFY", "501 5.5.4"),
            ("MAIL LALA: <>", "501 5.5.4"),
            ("MAIL FROM", "501 5.5.4"),
            ("MAIL FROM:<a@example.org> XFOO=bar", "555 5.5.4"),
            ("MAIL FROM:<a@example.org> SIZE=1 SIZE=2", "501 5.5.4"),
            ("MAIL FROM:<a@example.org> SIZE=abc", "501 5.5.4"),
            (
                "MAIL FROM:<a@example.org> SIZE=999999999999999999999999",
                "501 5.5.4",
            ),
            ("MAIL FROM:<a@example.org> BODY=9BIT", "501 5.5.4"),
            ("MAIL FROM:<a@example.org> SMTPUTF8=yes", "501 5.5.4"),
            ("MAIL FROM:<a@example.org> RET=ALL", "501 5.5.4"),
            ("MAIL FROM:<a@example.org> ENVID=a=b", "501 5.5.4"),
            ("MAIL FROM:<a@example.org> =x", "501 5.5.4"),
            ("RCPT TO:<a@example.org> NOTIFY=NEVER,SUCCESS", "501 5.5.4"),
            (
                "RCPT TO:<a@example.org> NOTIFY=SUCCESS,SUCCESS",
                "501 5.5.4",
            ),
            ("RCPT TO:<a@example.org> ORCPT=nosemicolon", "501 5.5.4"),
            ("RCPT TO:<a@example.org> FOO", "555 5.5.4"),
            ("RCPT LALA: <>", "501 5.5.4"),
            ("BDAT", "501 5.5.4"),
            ("BDAT x", "501 5.5.4"),
            ("BDAT -1", "501 5.5.4"),
            ("BDAT 99999999999999999999999", "501 5.5.4"),
            ("BDAT 1 FIRST", "501 5.5.4"),
            ("AUTH", "501 5.5.4"),
            ("AUTH PL/AIN", "501 5.5.4"),
            ("AUTH PLAIN a b", "501 5.5.4"),
        ];
        for (line, want) in cases {
            assert_eq!(code(line).trim(), want, "{line:?}");
        }
        assert_eq!(Command::parse(b"NOOP \xff"), Err(CommandError::NotUtf8));
    }

    #[test]
    fn mail_and_rcpt_parameters() {
        let Ok(Command::Mail { from, params }) = Command::parse(
            b"MAIL FROM:<a@example.org> size=1000 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2Bx AUTH=<> REQUIRETLS",
        ) else {
            panic!("MAIL with every parameter");
        };
        assert_eq!(from.to_string(), "<a@example.org>");
        assert_eq!(params.size, Some(1000));
        assert_eq!(params.body, Some(Body::EightBitMime));
        assert!(params.smtputf8 && params.requiretls);
        assert_eq!(params.ret, Some(Ret::Headers));
        assert_eq!(params.envid.as_deref(), Some("QQ+x"));
        assert_eq!(params.auth.as_deref(), Some(""));

        let Ok(Command::Mail { from, .. }) = Command::parse(b"MAIL FROM: <>") else {
            panic!("null path with a space")
        };
        assert_eq!(from, ReversePath::Null);

        let Ok(Command::Rcpt { to, params }) = Command::parse(
            b"RCPT TO:<b@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b+40x@example.org",
        ) else {
            panic!("RCPT with DSN parameters");
        };
        assert_eq!(to.to_string(), "<b@example.org>");
        assert_eq!(
            params.notify,
            Some(Notify::On {
                success: false,
                failure: true,
                delay: true
            })
        );
        assert_eq!(
            params.orcpt,
            Some(OriginalRecipient {
                addr_type: "rfc822".into(),
                address: "b@x@example.org".into()
            })
        );
        let Ok(Command::Rcpt { to, .. }) = Command::parse(b"RCPT TO: user@testserver") else {
            panic!("bare recipient");
        };
        assert_eq!(to.to_string(), "<user@testserver>");
        let Ok(Command::Rcpt { to, .. }) = Command::parse(b"RCPT TO:<postMASTER>") else {
            panic!("postmaster");
        };
        assert_eq!(to, ForwardPath::Postmaster);
    }

    #[test]
    fn address_errors_pick_enhanced_codes() {
        assert_eq!(code("MAIL FROM:<pepe>"), "501 5.1.7");
        assert_eq!(code("RCPT TO:<pepe>"), "501 5.1.3");
        assert_eq!(code("MAIL FROM:<a@xn--->"), "501 5.1.8");
        assert_eq!(code("RCPT TO:<a@xn--->"), "501 5.1.2");
        assert_eq!(
            code(&format!("MAIL FROM:<{}@x.example>", "a".repeat(65))),
            "501 5.1.7"
        );
    }

    #[test]
    fn xtext_round_trip_and_rejects() {
        for s in ["", "plain", "a+b=c", "ünï", "sp ace"] {
            assert_eq!(xtext_decode(&xtext_encode(s)).as_deref(), Some(s), "{s:?}");
        }
        for bad in ["+", "+4", "+zz", "a=b", "a b"] {
            assert_eq!(xtext_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn http_request_lines_are_recognised() {
        for line in [
            "GET / HTTP/1.1",
            "POST /evil HTTP/1.0",
            "CONNECT www.evil.com:80 HTTP/1.1",
            "get /x",
            "FOO /x HTTP/1.1",
        ] {
            assert!(looks_like_http(line.as_bytes()), "{line:?}");
        }
        for line in ["EHLO x", "HELO get", "MAIL FROM:<a@b>", "GETX"] {
            assert!(!looks_like_http(line.as_bytes()), "{line:?}");
        }
    }
}

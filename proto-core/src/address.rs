//! Mail addresses: the paths of `MAIL FROM:` and `RCPT TO:`, mailboxes, local parts and domains.
//!
//! # Grammar
//!
//! [RFC 5321 section 4.1.2](https://www.rfc-editor.org/rfc/rfc5321#section-4.1.2), with the
//! address literals of [section 4.1.3](https://www.rfc-editor.org/rfc/rfc5321#section-4.1.3)
//! and the SMTPUTF8 extensions (marked `=/`) of
//! [RFC 6531 section 3.3](https://www.rfc-editor.org/rfc/rfc6531#section-3.3):
//!
//! ```text
//! Reverse-path    = Path / "<>"
//! Forward-path    = Path                  ; RCPT also: "<Postmaster>" (section 4.1.1.3)
//! Path            = "<" [ A-d-l ":" ] Mailbox ">"
//! A-d-l           = At-domain *( "," At-domain )
//! At-domain       = "@" Domain
//! Mailbox         = Local-part "@" ( Domain / address-literal )
//! Local-part      = Dot-string / Quoted-string
//! Dot-string      = Atom *("." Atom)
//! Atom            = 1*atext               ; RFC 5322 atext: ALPHA DIGIT !#$%&'*+-/=?^_`{|}~
//! atext          =/ UTF8-non-ascii
//! Quoted-string   = DQUOTE *QcontentSMTP DQUOTE
//! QcontentSMTP    = qtextSMTP / quoted-pairSMTP
//! quoted-pairSMTP = %d92 %d32-126
//! qtextSMTP       = %d32-33 / %d35-91 / %d93-126
//! qtextSMTP      =/ UTF8-non-ascii
//! Domain          = sub-domain *("." sub-domain)
//! sub-domain      = Let-dig [Ldh-str]
//! sub-domain     =/ U-label
//! Ldh-str         = *( ALPHA / DIGIT / "-" ) Let-dig
//! address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
//!                         General-address-literal ) "]"
//! IPv6-address-literal    = "IPv6:" IPv6-addr
//! General-address-literal = Standardized-tag ":" 1*dcontent
//! Standardized-tag        = Ldh-str
//! dcontent        = %d33-90 / %d94-126
//! ```
//!
//! Section 4.1.2: "Systems MUST NOT define mailboxes in such a way as to require the use in SMTP
//! of non-ASCII characters (octets with the high order bit set to one) or ASCII "control
//! characters" (decimal value 0-31 and 127). These characters MUST NOT be used in MAIL or RCPT
//! commands". RFC 6531 lifts the first half for SMTPUTF8; control characters (including the C1
//! range) are rejected everywhere ([`AddressError::ControlCharacter`]).
//!
//! U-labels and A-labels (`xn--`) are checked with UTS #46 (the `idna` crate, STD3 rules, no
//! hyphen at either end of a label); a name that fails is [`AddressError::Idna`]. UTS #46 maps
//! some characters (case, width) that strict IDNA2008 would reject; we accept what it accepts.
//!
//! # Size limits ([section 4.5.3.1](https://www.rfc-editor.org/rfc/rfc5321#section-4.5.3.1))
//!
//! - 4.5.3.1.1: "The maximum total length of a user name or other local-part is 64 octets."
//!   (measured on the wire form, quotes included)
//! - 4.5.3.1.2: "The maximum total length of a domain name or number is 255 octets." (on the
//!   wire form and on the A-label form; each label is at most 63 octets, RFC 1035)
//! - 4.5.3.1.3: "The maximum total length of a reverse-path or forward-path is 256 octets
//!   (including the punctuation and element separators)."
//!
//! # Source routes and postmaster
//!
//! [Section 3.3](https://www.rfc-editor.org/rfc/rfc5321#section-3.3): "Servers MUST be prepared to
//! encounter a list of source routes in the forward-path, but they SHOULD ignore the routes or MAY
//! decline to support the relaying they imply." (likewise Appendix C). A route is checked for
//! syntax and then dropped: `<@a.example,@b.example:user@c.example>` is `user@c.example`.
//!
//! [Section 4.5.1](https://www.rfc-editor.org/rfc/rfc5321#section-4.5.1): servers "MUST support
//! the reserved mailbox "postmaster" as a case-insensitive local name", including "the special
//! case of "`RCPT TO:<Postmaster>`" (with no domain specification)". Only [`ForwardPath`] has that
//! case; `MAIL FROM:<postmaster>` is an error.
//!
//! # Deliberate leniency
//!
//! - [`split_path`] skips spaces after the colon (`MAIL FROM: <a@b>`, which the grammar forbids
//!   but many clients send), and accepts a bare path without angle brackets (`RCPT TO: a@b`),
//!   which then ends at the first space outside a quoted string.
//! - `"abc"@x` (needless quotes) is accepted and means the same as `abc@x`; a local part is
//!   kept as its value, and written back in the simplest form ([`LocalPart`]'s `Display`).
//! - IPv6 literals are whatever `core::net::Ipv6Addr` parses (it allows `::` for a single zero
//!   group); IPv4 literals with leading zeros (`[01.2.3.4]`) are rejected, as `Ipv4Addr` does.
//!
//! Deliberately strict: an empty local part (`""@x`) is rejected, as is a trailing dot in a
//! domain (`a@x.`), which is not in the grammar.

use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};
use core::str::FromStr;
use std::borrow::Cow;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// RFC 5321 section 4.5.3.1.1.
const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 section 4.5.3.1.2.
const MAX_DOMAIN: usize = 255;
/// RFC 5321 section 4.5.3.1.3, angle brackets included.
const MAX_PATH: usize = 256;
/// RFC 1035 section 2.3.4.
const MAX_LABEL: usize = 63;

/// A domain as given on the wire: a name (ASCII, A-labels, or UTF-8 U-labels) or an address
/// literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Domain {
    /// A domain name, exactly as given (case preserved; compare with [`Domain::to_ascii`]).
    Name(String),
    /// An address literal, `[...]` on the wire.
    Literal(AddressLiteral),
}

/// The content of an address literal (RFC 5321 section 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AddressLiteral {
    /// `[192.0.2.1]`
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]` (the tag is case-insensitive)
    Ipv6(Ipv6Addr),
    /// `[tag:content]`, a General-address-literal with a tag other than `IPv6`.
    General {
        /// The Standardized-tag (an Ldh-str).
        tag: String,
        /// The dcontent after the colon.
        content: String,
    },
}

/// The local part's semantic value (quotes and quoted-pairs removed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalPart(String);

/// `local@domain`: the address part of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local: LocalPart,
    domain: Domain,
}

/// The argument of `MAIL FROM:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReversePath {
    /// `<>`: the null sender of bounces and other notifications.
    Null,
    /// `<local@domain>`
    Mailbox(Mailbox),
}

/// The argument of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain, in any case (RFC 5321 section 4.1.1.3).
    Postmaster,
    /// `<local@domain>`
    Mailbox(Mailbox),
}

/// Why a path, mailbox, local part or domain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Text that fits no rule: characters right after `>`, or a second unquoted `@`.
    #[error("syntax error in address")]
    Syntax,
    /// No address where one is required (nothing after the colon, or `RCPT TO:<>`).
    #[error("empty address")]
    EmptyPath,
    /// `<` without its `>`, or the other way round.
    #[error("unbalanced angle brackets in path")]
    UnbalancedBrackets,
    /// A control character (0-31, 127, or U+0080..U+009F) anywhere in the address.
    #[error("control character in address")]
    ControlCharacter,
    /// Nothing before the `@`, or an empty quoted string.
    #[error("empty local part")]
    EmptyLocalPart,
    /// A dot-string local part with a character outside atext or a misplaced dot.
    #[error("invalid character or misplaced dot in local part")]
    BadLocalPart,
    /// A quoted-string local part that is unterminated, has a bad quoted-pair, or trailing text.
    #[error("invalid quoted local part")]
    BadQuotedString,
    /// Local part over 64 octets (RFC 5321 section 4.5.3.1.1).
    #[error("local part longer than 64 octets")]
    LocalPartTooLong,
    /// No `@domain` where one is required.
    #[error("missing domain")]
    MissingDomain,
    /// Domain over 255 octets (RFC 5321 section 4.5.3.1.2).
    #[error("domain longer than 255 octets")]
    DomainTooLong,
    /// Path over 256 octets, brackets included (RFC 5321 section 4.5.3.1.3).
    #[error("path longer than 256 octets")]
    PathTooLong,
    /// An empty domain label (leading, trailing or double dot).
    #[error("empty domain label")]
    EmptyLabel,
    /// A domain label with a character other than a letter, digit or hyphen.
    #[error("invalid character in domain label")]
    BadLabel,
    /// A domain label that starts or ends with a hyphen.
    #[error("domain label starts or ends with a hyphen")]
    LabelHyphen,
    /// A domain label over 63 octets (in A-label form).
    #[error("domain label longer than 63 octets")]
    LabelTooLong,
    /// A U-label or A-label that fails IDNA (UTS #46) processing.
    #[error("invalid internationalized domain name")]
    Idna,
    /// An address literal that is not `[IPv4]`, `[IPv6:...]` or `[tag:dcontent]`.
    #[error("invalid address literal")]
    BadLiteral,
    /// A malformed source route (`@a,@b:` before the mailbox).
    #[error("invalid source route")]
    BadSourceRoute,
}

/// Splits the argument of `MAIL FROM:`/`RCPT TO:` into the path text and the rest (the ESMTP
/// parameters).
///
/// `arg` is what follows the colon; leading spaces are skipped. A bracketed path ends at the
/// first `>` outside a quoted string or address literal (so `<"a>b"@x>` works); a bare path
/// (leniency) ends at the first space outside them. The path text is returned without its
/// brackets (`""` for `<>`), the rest with its leading spaces trimmed.
pub fn split_path(arg: &str) -> Result<(&str, &str), AddressError> {
    let arg = arg.trim_start_matches(' ');
    let (path, after) = if let Some(body) = arg.strip_prefix('<') {
        let end = find_unquoted(body, '>')?.ok_or(AddressError::UnbalancedBrackets)?;
        let after = &body[end + 1..];
        if !after.is_empty() && !after.starts_with(' ') {
            return Err(AddressError::Syntax);
        }
        (&body[..end], after)
    } else {
        if arg.is_empty() {
            return Err(AddressError::EmptyPath);
        }
        let end = find_unquoted(arg, ' ')?.unwrap_or(arg.len());
        arg.split_at(end)
    };
    check_no_controls(path)?;
    Ok((path, after.trim_start_matches(' ')))
}

impl Domain {
    /// Parses a domain name or a bracketed address literal.
    pub fn parse(s: &str) -> Result<Domain, AddressError> {
        check_no_controls(s)?;
        if s.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(AddressError::BadLiteral)?;
            return AddressLiteral::parse(inner).map(Domain::Literal);
        }
        if s.is_empty() {
            return Err(AddressError::MissingDomain);
        }
        for label in s.split('.') {
            check_label(label)?;
        }
        name_to_ascii(s)?;
        Ok(Domain::Name(s.to_owned()))
    }

    /// Whether the wire form is ASCII (an A-label name, an ASCII name, or a literal).
    pub fn is_ascii(&self) -> bool {
        match self {
            Domain::Name(name) => name.is_ascii(),
            Domain::Literal(_) => true,
        }
    }

    /// The IDNA A-label form, lower-cased; for a literal, its bracketed text.
    pub fn to_ascii(&self) -> Result<String, AddressError> {
        match self {
            Domain::Name(name) => name_to_ascii(name),
            Domain::Literal(literal) => Ok(literal.to_string()),
        }
    }

    /// The U-label form, lower-cased; for a literal, its bracketed text. A name that fails
    /// IDNA processing (only possible if built without [`Domain::parse`]) is lower-cased as is.
    pub fn to_unicode(&self) -> String {
        match self {
            Domain::Name(name) => {
                match Uts46::new().to_unicode(
                    name.as_bytes(),
                    AsciiDenyList::STD3,
                    Hyphens::CheckFirstLast,
                ) {
                    (unicode, Ok(())) => unicode.into_owned(),
                    (_, Err(_)) => name.to_lowercase(),
                }
            }
            Domain::Literal(literal) => literal.to_string(),
        }
    }

    /// The wire form: the name as given, or the literal with brackets in canonical form
    /// (e.g. `[IPv6:::1]`). Borrowed for names; literals are formatted.
    pub fn as_str(&self) -> Cow<'_, str> {
        match self {
            Domain::Name(name) => Cow::Borrowed(name),
            Domain::Literal(literal) => Cow::Owned(literal.to_string()),
        }
    }
}

impl AddressLiteral {
    /// Parses the text between the brackets.
    fn parse(inner: &str) -> Result<Self, AddressError> {
        let Some((tag, content)) = inner.split_once(':') else {
            return inner
                .parse()
                .map(AddressLiteral::Ipv4)
                .map_err(|_| AddressError::BadLiteral);
        };
        if tag.eq_ignore_ascii_case("IPv6") {
            return content
                .parse()
                .map(AddressLiteral::Ipv6)
                .map_err(|_| AddressError::BadLiteral);
        }
        let tag_ok = tag.ends_with(|c: char| c.is_ascii_alphanumeric())
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let content_ok =
            !content.is_empty() && content.bytes().all(|b| matches!(b, 33..=90 | 94..=126));
        if tag_ok && content_ok {
            Ok(AddressLiteral::General {
                tag: tag.to_owned(),
                content: content.to_owned(),
            })
        } else {
            Err(AddressError::BadLiteral)
        }
    }
}

impl LocalPart {
    /// Builds a local part from its value (unquoted), checking that it can be written on the
    /// wire: not empty, no control characters, at most 64 octets once quoted if need be.
    pub fn new(value: &str) -> Result<Self, AddressError> {
        check_no_controls(value)?;
        if value.is_empty() {
            return Err(AddressError::EmptyLocalPart);
        }
        let local = LocalPart(value.to_owned());
        let wire_len = if local.needs_quoting() {
            2 + value.len() + value.matches(['"', '\\']).count()
        } else {
            value.len()
        };
        if wire_len > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong);
        }
        Ok(local)
    }

    /// Parses the wire form: a dot-string, or a quoted-string whose value is kept.
    pub fn parse(wire: &str) -> Result<Self, AddressError> {
        check_no_controls(wire)?;
        if wire.is_empty() {
            return Err(AddressError::EmptyLocalPart);
        }
        if wire.len() > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong);
        }
        let Some(quoted) = wire.strip_prefix('"') else {
            return if is_dot_string(wire) {
                Ok(LocalPart(wire.to_owned()))
            } else {
                Err(AddressError::BadLocalPart)
            };
        };
        let mut value = String::with_capacity(quoted.len());
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped @ ' '..='~') => value.push(escaped),
                    _ => return Err(AddressError::BadQuotedString),
                },
                '"' if chars.as_str().is_empty() && value.is_empty() => {
                    return Err(AddressError::EmptyLocalPart);
                }
                '"' if chars.as_str().is_empty() => return Ok(LocalPart(value)),
                ' ' | '!' | '#'..='[' | ']'..='~' => value.push(c),
                _ if !c.is_ascii() => value.push(c),
                _ => return Err(AddressError::BadQuotedString),
            }
        }
        Err(AddressError::BadQuotedString)
    }

    /// The value, without quotes or escapes.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the wire form must be a quoted-string (the value is not a dot-string).
    pub fn needs_quoting(&self) -> bool {
        !is_dot_string(&self.0)
    }

    /// Whether the value is ASCII (otherwise it needs SMTPUTF8).
    pub fn is_ascii(&self) -> bool {
        self.0.is_ascii()
    }
}

impl Mailbox {
    /// Pairs a local part and a domain.
    pub fn new(local: LocalPart, domain: Domain) -> Self {
        Mailbox { local, domain }
    }

    /// Parses `local@domain` (no brackets, no source route).
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        check_no_controls(s)?;
        let at = find_unquoted(s, '@')?.ok_or(AddressError::MissingDomain)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if domain.is_empty() {
            return Err(AddressError::MissingDomain);
        }
        if !domain.starts_with('[') && domain.contains('@') {
            return Err(AddressError::Syntax);
        }
        Ok(Mailbox {
            local: LocalPart::parse(local)?,
            domain: Domain::parse(domain)?,
        })
    }

    /// The local part.
    pub fn local_part(&self) -> &LocalPart {
        &self.local
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// Whether both parts are ASCII; otherwise the mailbox needs SMTPUTF8 (RFC 6531).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

impl ReversePath {
    /// Parses a path as returned by `split_path` (brackets optional); `""` is
    /// [`ReversePath::Null`].
    pub fn parse(path_text: &str) -> Result<Self, AddressError> {
        let (mailbox, routed) = strip_path(path_text)?;
        match mailbox {
            "" if routed => Err(AddressError::BadSourceRoute),
            "" => Ok(ReversePath::Null),
            _ => Mailbox::parse(mailbox).map(ReversePath::Mailbox),
        }
    }
}

impl ForwardPath {
    /// Parses a path as returned by `split_path` (brackets optional); `Postmaster` in any case
    /// and without a domain is [`ForwardPath::Postmaster`].
    pub fn parse(path_text: &str) -> Result<Self, AddressError> {
        let (mailbox, routed) = strip_path(path_text)?;
        match mailbox {
            "" => Err(AddressError::EmptyPath),
            _ if !routed && mailbox.eq_ignore_ascii_case("postmaster") => {
                Ok(ForwardPath::Postmaster)
            }
            _ => Mailbox::parse(mailbox).map(ForwardPath::Mailbox),
        }
    }
}

impl AddressError {
    /// Whether a domain failed IDNA processing (5.1.8 for a sender, 5.1.2 for a recipient).
    pub fn is_idna(&self) -> bool {
        matches!(self, AddressError::Idna)
    }

    /// Whether a size limit of RFC 5321 section 4.5.3.1 was exceeded ("address too long").
    pub fn is_too_long(&self) -> bool {
        matches!(
            self,
            AddressError::LocalPartTooLong
                | AddressError::DomainTooLong
                | AddressError::PathTooLong
        )
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(name) => f.write_str(name),
            Domain::Literal(literal) => literal.fmt(f),
        }
    }
}

impl FromStr for Domain {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        Domain::parse(s)
    }
}

impl fmt::Display for AddressLiteral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressLiteral::Ipv4(ip) => write!(f, "[{ip}]"),
            AddressLiteral::Ipv6(ip) => write!(f, "[IPv6:{ip}]"),
            AddressLiteral::General { tag, content } => write!(f, "[{tag}:{content}]"),
        }
    }
}

impl fmt::Display for LocalPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.needs_quoting() {
            return f.write_str(&self.0);
        }
        f.write_str("\"")?;
        for c in self.0.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl FromStr for Mailbox {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        Mailbox::parse(s)
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(mailbox) => write!(f, "<{mailbox}>"),
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<Postmaster>"),
            ForwardPath::Mailbox(mailbox) => write!(f, "<{mailbox}>"),
        }
    }
}

/// Rejects C0 controls, DEL and C1 controls (RFC 5321 section 4.1.2).
fn check_no_controls(s: &str) -> Result<(), AddressError> {
    if s.chars().any(char::is_control) {
        Err(AddressError::ControlCharacter)
    } else {
        Ok(())
    }
}

/// Byte index of the first `target` outside a quoted string (where `\` escapes one character)
/// and outside an address literal (whose dcontent may hold `"`, `<`, `>` and `@`); an error if
/// the text ends inside a quoted string.
fn find_unquoted(s: &str, target: char) -> Result<Option<usize>, AddressError> {
    #[derive(PartialEq)]
    enum State {
        Plain,
        Quoted,
        Literal,
    }
    let mut state = State::Plain;
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        state = match (state, c) {
            (State::Quoted, '\\') => {
                chars.next();
                State::Quoted
            }
            (State::Quoted, '"') | (State::Literal, ']') => State::Plain,
            (State::Plain, '"') => State::Quoted,
            (State::Plain, '[') => State::Literal,
            (State::Plain, _) if c == target => return Ok(Some(i)),
            (state, _) => state,
        };
    }
    if state == State::Quoted {
        Err(AddressError::BadQuotedString)
    } else {
        Ok(None)
    }
}

/// RFC 5322 atext, extended by RFC 6531 with UTF8-non-ascii.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

fn is_dot_string(s: &str) -> bool {
    s.split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Checks one label of a domain name in its wire form (ASCII LDH, or a U-label for IDNA).
fn check_label(label: &str) -> Result<(), AddressError> {
    if label.is_empty() {
        return Err(AddressError::EmptyLabel);
    }
    if !label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
    {
        return Err(AddressError::BadLabel);
    }
    if label.starts_with('-') || label.ends_with('-') {
        let a_label = label
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("xn--"));
        return Err(if a_label {
            AddressError::Idna
        } else {
            AddressError::LabelHyphen
        });
    }
    if label.is_ascii() && label.len() > MAX_LABEL {
        return Err(AddressError::LabelTooLong);
    }
    Ok(())
}

/// UTS #46 ToASCII with STD3 rules, then the label and length checks on the A-label form.
fn name_to_ascii(name: &str) -> Result<String, AddressError> {
    let ascii = Uts46::new()
        .to_ascii(
            name.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Ignore,
        )
        .map_err(|_| AddressError::Idna)?;
    // UTS #46 maps dot-like characters (U+3002 ...) to a separator; not in a U-label.
    if ascii.split('.').count() != name.split('.').count() {
        return Err(AddressError::Idna);
    }
    // UTS #46 also drops ignored characters (U+00AD ...): a label may vanish.
    if ascii.split('.').any(str::is_empty) {
        return Err(AddressError::Idna);
    }
    if ascii.split('.').any(|label| label.len() > MAX_LABEL) {
        return Err(AddressError::LabelTooLong);
    }
    if ascii.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    Ok(ascii.into_owned())
}

/// Removes optional brackets and a source route; returns the mailbox text and whether a
/// route was present. Checks the path length and control characters.
fn strip_path(text: &str) -> Result<(&str, bool), AddressError> {
    check_no_controls(text)?;
    let inner = match text.strip_prefix('<') {
        Some(rest) => rest
            .strip_suffix('>')
            .ok_or(AddressError::UnbalancedBrackets)?,
        None if text.ends_with('>') => return Err(AddressError::UnbalancedBrackets),
        None => text,
    };
    if inner.len() + 2 > MAX_PATH {
        return Err(AddressError::PathTooLong);
    }
    if !inner.starts_with('@') {
        return Ok((inner, false));
    }
    let mut rest = inner;
    loop {
        let at_domain = rest.strip_prefix('@').ok_or(AddressError::BadSourceRoute)?;
        let end = if at_domain.starts_with('[') {
            at_domain.find(']').map(|i| i + 1)
        } else {
            at_domain.find([',', ':'])
        }
        .ok_or(AddressError::BadSourceRoute)?;
        let (route_domain, tail) = at_domain.split_at(end);
        Domain::parse(route_domain).map_err(|_| AddressError::BadSourceRoute)?;
        if let Some(mailbox) = tail.strip_prefix(':') {
            return Ok((mailbox, true));
        }
        rest = tail.strip_prefix(',').ok_or(AddressError::BadSourceRoute)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressError as E;
    use proptest::prelude::*;

    fn parse_ok(input: &str) -> Mailbox {
        Mailbox::parse(input).unwrap_or_else(|e| panic!("{input:?}: unexpected error {e:?}"))
    }

    #[test]
    fn mailboxes_accepted() {
        // (input, local-part value, domain Display)
        let cases = [
            ("user@example.com", "user", "example.com"),
            ("First.Last@Example.COM", "First.Last", "Example.COM"),
            ("user%other@local", "user%other", "local"),
            ("other!user@local", "other!user", "local"),
            ("\"user@other\"@local", "user@other", "local"),
            ("\"a b\"@x", "a b", "x"),
            ("\"a\\\"b\\\\c\"@x", "a\"b\\c", "x"),
            ("\"abc\"@x", "abc", "x"),
            ("\"a>b\"@x", "a>b", "x"),
            ("\"\\a\"@x", "a", "x"),
            ("!#$%&'*+-/=?^_`{|}~@x", "!#$%&'*+-/=?^_`{|}~", "x"),
            ("a.b.c@x-y.z9", "a.b.c", "x-y.z9"),
            ("1@2.3", "1", "2.3"),
            ("jörg@bücher.example", "jörg", "bücher.example"),
            ("\"jö rg\"@x", "jö rg", "x"),
            ("a@xn--bcher-kva.example", "a", "xn--bcher-kva.example"),
            ("a@[192.0.2.1]", "a", "[192.0.2.1]"),
            ("a@[IPv6:2001:db8::1]", "a", "[IPv6:2001:db8::1]"),
            ("a@[ipv6:0:0:0:0:0:0:0:1]", "a", "[IPv6:::1]"),
            ("a@[IPv6:::ffff:192.0.2.1]", "a", "[IPv6:::ffff:192.0.2.1]"),
            ("a@[x-tag:any@thing]", "a", "[x-tag:any@thing]"),
        ];
        for (input, local, domain) in cases {
            let m = parse_ok(input);
            assert_eq!(m.local_part().as_str(), local, "{input:?}");
            assert_eq!(m.domain().to_string(), domain, "{input:?}");
            assert_eq!(
                Mailbox::parse(&m.to_string()),
                Ok(m.clone()),
                "round trip of {input:?} via {m}"
            );
        }
    }

    #[test]
    fn mailboxes_rejected() {
        let cases = [
            ("user@other@local", E::Syntax),
            ("a..b@x", E::BadLocalPart),
            (".a@x", E::BadLocalPart),
            ("a.@x", E::BadLocalPart),
            ("a b@x", E::BadLocalPart),
            ("a\"b@x", E::BadQuotedString),
            ("a(b)@x", E::BadLocalPart),
            ("a@", E::MissingDomain),
            ("a", E::MissingDomain),
            ("@x", E::EmptyLocalPart),
            ("\"\"@x", E::EmptyLocalPart),
            ("\"abc@x", E::BadQuotedString),
            ("\"a\"b@x", E::BadQuotedString),
            ("\"a\\é\"@x", E::BadQuotedString),
            ("a@x.", E::EmptyLabel),
            ("a@.x", E::EmptyLabel),
            ("a@x..y", E::EmptyLabel),
            ("a@-x", E::LabelHyphen),
            ("a@x-", E::LabelHyphen),
            ("a@x y", E::BadLabel),
            ("a@x_y", E::BadLabel),
            ("a@xn---", E::Idna),
            ("a@a\u{3002}b", E::Idna),
            ("a@\u{5d0}a.example", E::Idna),
            ("a@[999.1.1.1]", E::BadLiteral),
            ("a@[01.2.3.4]", E::BadLiteral),
            ("a@[IPv6:zz]", E::BadLiteral),
            ("a@[IPv6:1.2.3.4]", E::BadLiteral),
            ("a@[1.2.3.4", E::BadLiteral),
            ("a@[tag:]", E::BadLiteral),
            ("a@[tag-:x]", E::BadLiteral),
            ("a@[tag:a[b]", E::BadLiteral),
            ("a@[]", E::BadLiteral),
            ("a@x\u{7f}", E::ControlCharacter),
            ("a\u{85}@x", E::ControlCharacter),
        ];
        for (input, expected) in cases {
            assert_eq!(Mailbox::parse(input), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn control_characters_rejected_everywhere() {
        let sample = "<\"a b\"@x.example>";
        for c in (0u8..0x20).chain([0x7f]).map(char::from) {
            for (i, _) in sample.char_indices().skip(1) {
                let input = format!("{}{c}{}", &sample[..i], &sample[i..]);
                let inner = &input[1..input.len() - 1];
                assert!(Mailbox::parse(inner).is_err(), "{inner:?}");
                let parsed = split_path(&input).and_then(|(path, _)| ReversePath::parse(path));
                assert!(parsed.is_err(), "{input:?} gave {parsed:?}");
            }
        }
    }

    #[test]
    fn domains() {
        // (input, to_ascii, to_unicode, is_ascii)
        let long_ascii = format!("{}.example", "a".repeat(63));
        #[rustfmt::skip]
        let accepted = [
            ("Example.COM", "example.com", "example.com", true),
            ("BÜCHER.example", "xn--bcher-kva.example", "bücher.example", false),
            ("XN--BCHER-KVA.example", "xn--bcher-kva.example", "bücher.example", true),
            ("faß.de", "xn--fa-hia.de", "faß.de", false),
            ("例え.テスト", "xn--r8jz45g.xn--zckzah", "例え.テスト", false),
            ("ab--cd.example", "ab--cd.example", "ab--cd.example", true),
            ("[IPv6:::1]", "[IPv6:::1]", "[IPv6:::1]", true),
            (&long_ascii, &long_ascii, &long_ascii, true),
        ];
        for (input, ascii, unicode, is_ascii) in accepted {
            let d = Domain::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e:?}"));
            let got = (d.to_ascii(), d.to_unicode(), d.is_ascii(), d.as_str());
            let want = (
                Ok(ascii.to_owned()),
                unicode.to_owned(),
                is_ascii,
                input.into(),
            );
            assert_eq!(got, want, "{input:?}");
        }
        #[rustfmt::skip]
        let rejected = [
            (format!("{}.example", "a".repeat(64)), E::LabelTooLong),
            (format!("{}.example", "ü".repeat(60)), E::LabelTooLong),
            ("".into(), E::MissingDomain),
            ("x.".into(), E::EmptyLabel),
            ("xn---".into(), E::Idna),
            ("xn--ab-".into(), E::Idna),
            ("-bücher.example".into(), E::LabelHyphen),
            ("a.\u{ad}.example".into(), E::Idna),
            ("b\u{2028}.example".into(), E::Idna),
            ("a＠b.example".into(), E::Idna),
        ];
        for (input, expected) in rejected {
            assert_eq!(Domain::parse(&input), Err(expected), "{input:?}");
        }
    }

    #[test]
    fn size_limits() {
        let label = "a".repeat(63);
        let domain_255 = format!("{label}.{label}.{label}.{}", "a".repeat(63));
        let domain_256 = format!("{domain_255}a");
        assert_eq!((domain_255.len(), domain_256.len()), (255, 256));
        let local = |n: usize| "a".repeat(n);
        // (input, parse as a path rather than a mailbox, expected)
        #[rustfmt::skip]
        let cases = [
            (format!("{}@x", local(64)), false, Ok(())),
            (format!("{}@x", local(65)), false, Err(E::LocalPartTooLong)),
            (format!("\"{}\"@x", local(62)), false, Ok(())),
            (format!("\"{}\"@x", local(63)), false, Err(E::LocalPartTooLong)),
            (format!("a@{domain_255}"), false, Ok(())),
            (format!("a@{domain_256}"), false, Err(E::DomainTooLong)),
            // path: "<" + local + "@" + domain + ">" = 256 octets is the maximum
            (format!("{}@{}", local(64), &domain_255[..189]), true, Ok(())),
            (format!("{}@{}", local(64), &domain_255[..190]), true, Err(E::PathTooLong)),
            (format!("<{}@{}>", local(64), &domain_255[..190]), true, Err(E::PathTooLong)),
        ];
        for (input, as_path, expected) in cases {
            let got = if as_path {
                ReversePath::parse(&input).map(|_| ())
            } else {
                Mailbox::parse(&input).map(|_| ())
            };
            assert_eq!(got, expected, "{input:?} ({} octets)", input.len());
        }
        assert!(E::PathTooLong.is_too_long() && !E::Syntax.is_too_long() && E::Idna.is_idna());
        let quotes = |n| LocalPart::new(&"\"".repeat(n)).map(|l| l.to_string().len());
        assert_eq!((quotes(31), quotes(32)), (Ok(64), Err(E::LocalPartTooLong)));
    }

    #[test]
    fn split_paths() {
        // (argument after the colon, Ok((path, rest)) or Err)
        #[rustfmt::skip]
        let cases = [
            ("<a@b>", Ok(("a@b", ""))),
            ("<>", Ok(("", ""))),
            (" <a@b>", Ok(("a@b", ""))),
            (
                "<a@b> SIZE=100 BODY=8BITMIME",
                Ok(("a@b", "SIZE=100 BODY=8BITMIME")),
            ),
            ("<a@b>   SIZE=1", Ok(("a@b", "SIZE=1"))),
            ("<\"a>b\"@x> SIZE=1", Ok(("\"a>b\"@x", "SIZE=1"))),
            ("<\"a\\\">b\"@x>", Ok(("\"a\\\">b\"@x", ""))),
            ("<@a,@b:u@c> X=1", Ok(("@a,@b:u@c", "X=1"))),
            ("user@host", Ok(("user@host", ""))),
            ("  user@host SIZE=1", Ok(("user@host", "SIZE=1"))),
            ("\"a b\"@host SIZE=1", Ok(("\"a b\"@host", "SIZE=1"))),
            ("<a@b", Err(E::UnbalancedBrackets)),
            ("<\"a@b>", Err(E::BadQuotedString)),
            ("<a@b>SIZE=1", Err(E::Syntax)),
            ("", Err(E::EmptyPath)),
            ("   ", Err(E::EmptyPath)),
            ("<a\r@b>", Err(E::ControlCharacter)),
        ];
        for (input, expected) in cases {
            assert_eq!(split_path(input), expected, "{input:?}");
        }
    }

    #[test]
    fn reverse_paths() {
        // (path text, Ok(Display) or Err)
        #[rustfmt::skip]
        let cases = [
            ("", Ok("<>")),
            ("<>", Ok("<>")),
            ("a@b", Ok("<a@b>")),
            ("<a@b>", Ok("<a@b>")),
            (
                "@a.example,@b.example:user@c.example",
                Ok("<user@c.example>"),
            ),
            ("@local:user@other", Ok("<user@other>")),
            ("@[IPv6:::1],@[1.2.3.4]:u@x", Ok("<u@x>")),
            ("\"user@other\"@local", Ok("<\"user@other\"@local>")),
            ("postmaster", Err(E::MissingDomain)),
            ("<a@b", Err(E::UnbalancedBrackets)),
            ("a@b>", Err(E::UnbalancedBrackets)),
            ("<<a@b>>", Err(E::BadLocalPart)),
            ("@a:", Err(E::BadSourceRoute)),
            ("@a", Err(E::BadSourceRoute)),
            ("@a;u@x", Err(E::BadSourceRoute)),
            ("@[1.2.3.4]", Err(E::BadSourceRoute)),
            ("@[1.2.3.4]u@x", Err(E::BadSourceRoute)),
            ("@a,b:u@x", Err(E::BadSourceRoute)),
            ("@-a:u@x", Err(E::BadSourceRoute)),
            ("@a:@b:u@x", Err(E::Syntax)),
            ("a@b c", Err(E::BadLabel)),
        ];
        for (input, expected) in cases {
            let got = ReversePath::parse(input).map(|p| p.to_string());
            assert_eq!(got, expected.map(str::to_owned), "{input:?}");
        }
    }

    #[test]
    fn forward_paths() {
        let cases = [
            ("Postmaster", Ok("<Postmaster>")),
            ("<pOsTmAsTeR>", Ok("<Postmaster>")),
            ("postmaster@x", Ok("<postmaster@x>")),
            ("@a:u@x", Ok("<u@x>")),
            ("", Err(E::EmptyPath)),
            ("<>", Err(E::EmptyPath)),
            ("@a:postmaster", Err(E::MissingDomain)),
            ("postmasters", Err(E::MissingDomain)),
        ];
        for (input, expected) in cases {
            let got = ForwardPath::parse(input).map(|p| p.to_string());
            assert_eq!(got, expected.map(str::to_owned), "{input:?}");
        }
    }

    #[test]
    fn local_part_wire_form_and_ascii() {
        // (value, Display, needs_quoting, is_ascii)
        let cases = [
            ("a.b", "a.b", false, true),
            ("a..b", "\"a..b\"", true, true),
            (".a", "\".a\"", true, true),
            ("a b", "\"a b\"", true, true),
            ("a\"b\\c", "\"a\\\"b\\\\c\"", true, true),
            ("@", "\"@\"", true, true),
            ("jörg", "jörg", false, false),
        ];
        for (value, wire, quoting, ascii) in cases {
            let local = LocalPart::new(value).unwrap_or_else(|e| panic!("{value:?}: {e:?}"));
            let got = (local.to_string(), local.needs_quoting(), local.is_ascii());
            assert_eq!(got, (wire.to_owned(), quoting, ascii), "{value:?}");
            assert_eq!(LocalPart::parse(wire), Ok(local), "{value:?}");
        }
        for value in ["", "a\nb", "a\u{0}"] {
            assert!(LocalPart::new(value).is_err(), "{value:?}");
        }
        let mixed = [
            ("a@b", true),
            ("jörg@b", false),
            ("a@bücher.example", false),
            ("a@xn--bcher-kva.example", true),
        ];
        for (input, ascii) in mixed {
            assert_eq!(parse_ok(input).is_ascii(), ascii, "{input:?}");
        }
    }

    fn domain_strategy() -> impl Strategy<Value = Domain> {
        let label = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?";
        let unicode = prop::sample::select(vec!["bücher", "例え", "faß", "пример", "münchen"]);
        let name = prop::collection::vec(
            prop_oneof![label.prop_map(|s| s), unicode.prop_map(str::to_owned)],
            1..4,
        )
        .prop_map(|labels| labels.join("."));
        prop_oneof![
            name.prop_map(|n| Domain::parse(&n).unwrap_or_else(|e| panic!("{n:?}: {e:?}"))),
            any::<u32>().prop_map(|ip| Domain::Literal(AddressLiteral::Ipv4(Ipv4Addr::from(ip)))),
            any::<u128>().prop_map(|ip| Domain::Literal(AddressLiteral::Ipv6(Ipv6Addr::from(ip)))),
            "[a-z][a-z0-9-]{0,5}[a-z0-9]:[!-Z^-~]{1,10}".prop_map(|s| {
                Domain::parse(&format!("[{s}]")).unwrap_or_else(|e| panic!("{s:?}: {e:?}"))
            }),
        ]
    }

    proptest! {
        #[test]
        fn display_round_trips(value in "[ -~ä€😀]{1,24}", domain in domain_strategy()) {
            let local = LocalPart::new(&value);
            // Up to 24 characters of up to 4 octets each may exceed 64 octets: skip those.
            prop_assume!(local != Err(E::LocalPartTooLong));
            let local = local.unwrap_or_else(|e| panic!("{value:?}: {e:?}"));
            let mailbox = Mailbox::new(local, domain);
            let wire = mailbox.to_string();
            prop_assert_eq!(Mailbox::parse(&wire), Ok(mailbox.clone()), "{}", wire);
            let path = ForwardPath::Mailbox(mailbox).to_string();
            let (text, rest) = split_path(&path).unwrap_or_else(|e| panic!("{path:?}: {e:?}"));
            prop_assert_eq!(rest, "");
            prop_assert_eq!(ForwardPath::parse(text).map(|p| p.to_string()), Ok(path.clone()));
        }

        #[test]
        fn arbitrary_input_never_panics(
            s in any::<String>(),
            smtp in "[<>@\"\\\\ .:,\\[\\]a-zA-Z0-9ü-]{0,40}",
        ) {
            for input in [s.as_str(), smtp.as_str()] {
                if let Ok((path, _)) = split_path(input) {
                    let _ = (ReversePath::parse(path), ForwardPath::parse(path));
                }
                let _ = (ReversePath::parse(input), ForwardPath::parse(input));
                let _ = Mailbox::parse(input);
                if let Ok(domain) = Domain::parse(input) {
                    let _ = (domain.to_ascii(), domain.to_unicode());
                }
            }
        }
    }
}

//! What a server session is allowed to do: advertised extensions, limits and timeouts.
//!
//! Defaults are the RFC values where an RFC gives one:
//! - command line 512 octets including CRLF ([RFC 5321 4.5.3.1.4](https://www.rfc-editor.org/rfc/rfc5321#section-4.5.3.1.4));
//! - text line 1000 octets including CRLF (4.5.3.1.6);
//! - 100 recipients ([4.5.3.1.8](https://www.rfc-editor.org/rfc/rfc5321#section-4.5.3.1.8):
//!   "The minimum total number of recipients that MUST be buffered is 100");
//! - 5 minutes waiting for a command ([4.5.3.2.7](https://www.rfc-editor.org/rfc/rfc5321#section-4.5.3.2.7):
//!   "An SMTP server SHOULD have a timeout of at least 5 minutes while it is awaiting the next
//!   command from the sender");
//! - an AUTH line of 12288 octets ([RFC 4954 section 4](https://www.rfc-editor.org/rfc/rfc4954#section-4)).

use std::time::Duration;

/// The configuration of a server [`Session`](crate::server::Session). Shared between sessions in an `Arc`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Our host name, used in the greeting and the EHLO reply.
    pub hostname: String,
    /// Text after the host name in the 220 greeting.
    pub greeting: String,
    /// Which service extensions the session offers.
    pub extensions: Extensions,
    /// Where AUTH may be used.
    pub auth: AuthPolicy,
    /// Whether MAIL requires a successful AUTH first (submission ports: 530 5.7.0 otherwise).
    pub require_auth: bool,
    /// Buffer and count limits.
    pub limits: Limits,
    /// Timeouts, handed out through [`Session::poll_timeout`](crate::server::Session::poll_timeout).
    pub timeouts: Timeouts,
}

impl Config {
    /// A configuration with RFC defaults for `hostname`.
    pub fn new(hostname: impl Into<String>) -> Config {
        Config {
            hostname: hostname.into(),
            greeting: "ESMTP postern".to_string(),
            extensions: Extensions::default(),
            auth: AuthPolicy::TlsOnly,
            require_auth: false,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
        }
    }
}

/// Service extensions the session may advertise in its EHLO reply.
///
/// STARTTLS is further withheld once TLS is active, AUTH where [`AuthPolicy`] forbids it, and
/// REQUIRETLS outside TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extensions {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870), advertising `Limits::max_message_size`.
    pub size: bool,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034); when off, replies carry no enhanced status codes.
    pub enhanced_status_codes: bool,
    /// CHUNKING (RFC 3030): the BDAT command.
    pub chunking: bool,
    /// BINARYMIME (RFC 3030): `BODY=BINARYMIME`, only together with CHUNKING.
    pub binary_mime: bool,
    /// DSN (RFC 3461): RET, ENVID, NOTIFY and ORCPT.
    pub dsn: bool,
    /// STARTTLS (RFC 3207): set when the driver has a certificate.
    pub starttls: bool,
    /// REQUIRETLS (RFC 8689), offered only under TLS.
    pub requiretls: bool,
}

impl Default for Extensions {
    fn default() -> Self {
        Extensions {
            pipelining: true,
            size: true,
            eight_bit_mime: true,
            smtputf8: true,
            enhanced_status_codes: true,
            chunking: true,
            binary_mime: true,
            dsn: true,
            starttls: false,
            requiretls: true,
        }
    }
}

/// Where the AUTH command is offered and accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthPolicy {
    /// Never: AUTH is not advertised and answers 502 5.5.1.
    Never,
    /// Only once TLS is active (the default); before that AUTH answers 538 5.7.11.
    TlsOnly,
    /// Also over plaintext. Meant for tests on loopback only.
    AllowPlaintext,
}

/// Size and count limits. Every buffer in the session is bounded by one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest command line, CRLF included (RFC 5321: 512).
    pub max_command_line: usize,
    /// Longest line of message text in DATA, CRLF included (RFC 5321: 1000).
    pub max_text_line: usize,
    /// Longest SASL response line during AUTH (RFC 4954: 12288).
    pub max_auth_line: usize,
    /// Most recipients in one transaction; past it RCPT answers 452 4.5.3 (RFC 5321: 100).
    pub max_recipients: usize,
    /// Largest message, in octets after dot-unstuffing; advertised with SIZE.
    pub max_message_size: u64,
    /// Errors in one session before it answers 421 and closes.
    pub max_errors: u32,
    /// Input held while the session waits for a verdict (pipelined commands); past it the
    /// session answers 421 and closes. Drivers should stop reading while
    /// [`Session::wants_input`](crate::server::Session::wants_input) is false.
    pub max_pending_input: usize,
    /// Largest body chunk in one [`Event::MessageData`](crate::server::Event::MessageData).
    pub max_chunk: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_command_line: 512,
            max_text_line: 1000,
            max_auth_line: 12288,
            max_recipients: 100,
            max_message_size: 50 * 1024 * 1024,
            max_errors: 10,
            max_pending_input: 64 * 1024,
            max_chunk: 64 * 1024,
        }
    }
}

/// Timeouts (RFC 5321 section 4.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// A whole command line, from the moment the session is ready to read it (RFC 5321
    /// 4.5.3.2.7: at least 5 minutes). Bytes of a line that has not ended do not extend it.
    pub command: Duration,
    /// Inside DATA or BDAT, the longest wait for more octets (see `min_data_rate`).
    pub data: Duration,
    /// The whole session, however active.
    pub session: Duration,
    /// Inside DATA or BDAT, the slowest the client may send, in octets per second: each
    /// octet earns `1 / min_data_rate` s more, up to `data` from now (see Postfix's
    /// `smtpd_min_data_rate`). 0: none, and `data` restarts on every read.
    pub min_data_rate: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(5 * 60),
            data: Duration::from_secs(5 * 60),
            session: Duration::from_secs(60 * 60),
            min_data_rate: 500,
        }
    }
}

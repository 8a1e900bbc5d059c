//! What an SMTP client session does: its name, TLS and AUTH policy, extensions it may use,
//! and the timeouts of [RFC 5321 section 4.5.3.2](https://www.rfc-editor.org/rfc/rfc5321#section-4.5.3.2).
//!
//! Also the job a session carries out: one [`MailJob`], an envelope plus facts about the body
//! (its declared size and type) that decide which extensions the server must offer.

use std::fmt;
use std::time::Duration;

use crate::address::{ForwardPath, ReversePath};
use crate::command::{Body, Notify, OriginalRecipient, Ret};

/// The configuration of a [`ClientSession`](crate::client::ClientSession). Shared in an `Arc`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The name we give in EHLO/HELO. Control characters and spaces are removed before use,
    /// so a configuration can never inject a command.
    pub hostname: String,
    /// When to use STARTTLS.
    pub tls: TlsPolicy,
    /// Credentials for AUTH (a smarthost); `None`: never authenticate.
    pub auth: Option<ClientCredentials>,
    /// Allow AUTH without TLS. Meant for tests on loopback only.
    pub allow_plaintext_auth: bool,
    /// Use PIPELINING (RFC 2920) when the server offers it.
    pub pipelining: bool,
    /// Use BDAT (RFC 3030 CHUNKING) instead of DATA when the server offers it.
    pub chunking: bool,
    /// Timeouts while waiting for replies.
    pub timeouts: ClientTimeouts,
    /// Most octets of reply text buffered before a reply is complete; past it the server is
    /// broken and the session fails (temporarily).
    pub max_reply_len: usize,
    /// Speak LMTP ([RFC 2033](https://www.rfc-editor.org/rfc/rfc2033)) instead of SMTP: `LHLO`
    /// instead of `EHLO` (with no `HELO` fallback), and after the body one reply per accepted
    /// recipient, each becoming that recipient's result. For a local delivery agent (Dovecot,
    /// Cyrus) on a Unix socket or a local port; RFC 2033 section 1: "it MUST NOT be used on
    /// TCP port 25".
    pub lmtp: bool,
}

impl ClientConfig {
    /// A configuration with RFC defaults, opportunistic TLS, pipelining and chunking on.
    pub fn new(hostname: impl Into<String>) -> ClientConfig {
        ClientConfig {
            hostname: hostname.into(),
            tls: TlsPolicy::Opportunistic,
            auth: None,
            allow_plaintext_auth: false,
            pipelining: true,
            chunking: true,
            timeouts: ClientTimeouts::default(),
            max_reply_len: 64 * 1024,
            lmtp: false,
        }
    }

    /// A configuration for LMTP ([`ClientConfig::lmtp`]): no TLS (the server is local), no
    /// AUTH, pipelining and chunking when offered.
    pub fn new_lmtp(hostname: impl Into<String>) -> ClientConfig {
        ClientConfig {
            tls: TlsPolicy::Never,
            lmtp: true,
            ..ClientConfig::new(hostname)
        }
    }
}

/// When the client upgrades the connection with STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsPolicy {
    /// Never, even when offered.
    Never,
    /// When offered; otherwise (or if the server refuses it) continue in plaintext.
    Opportunistic,
    /// Always: a server that does not offer STARTTLS, or refuses it, fails the delivery
    /// (temporarily).
    Required,
}

/// User name and password for AUTH PLAIN or LOGIN. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The authentication identity.
    pub user: String,
    /// The password.
    pub password: String,
}

impl ClientCredentials {
    /// Credentials from their parts.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> ClientCredentials {
        ClientCredentials {
            user: user.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Client timeouts, RFC 5321 section 4.5.3.2: "An SMTP client MUST provide a timeout
/// mechanism" and "the minimum per-command timeout values SHOULD be as follows" (the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientTimeouts {
    /// 4.5.3.2.1 Initial 220 message: 5 minutes.
    pub greeting: Duration,
    /// EHLO, HELO, STARTTLS, AUTH, RSET and QUIT replies (the RFC names none; 5 minutes as MAIL).
    pub command: Duration,
    /// 4.5.3.2.2 MAIL command: 5 minutes.
    pub mail: Duration,
    /// 4.5.3.2.3 RCPT command: 5 minutes.
    pub rcpt: Duration,
    /// 4.5.3.2.4 DATA initiation (waiting for 354): 2 minutes.
    pub data_init: Duration,
    /// 4.5.3.2.5 Data block: 3 minutes. A sans-IO session cannot see a TCP send complete: the
    /// driver applies this to each write of body data. The session uses it for replies to
    /// non-final BDAT chunks.
    pub data_block: Duration,
    /// 4.5.3.2.6 DATA termination (waiting for the reply to `.` or `BDAT LAST`): 10 minutes.
    pub data_termination: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            greeting: Duration::from_secs(5 * 60),
            command: Duration::from_secs(5 * 60),
            mail: Duration::from_secs(5 * 60),
            rcpt: Duration::from_secs(5 * 60),
            data_init: Duration::from_secs(2 * 60),
            data_block: Duration::from_secs(3 * 60),
            data_termination: Duration::from_secs(10 * 60),
        }
    }
}

/// One recipient of a [`MailJob`], with its DSN parameters (RFC 3461), sent only when the
/// server offers DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobRecipient {
    /// The forward path.
    pub to: ForwardPath,
    /// `NOTIFY=`.
    pub notify: Option<Notify>,
    /// `ORCPT=`.
    pub orcpt: Option<OriginalRecipient>,
}

impl JobRecipient {
    /// A recipient without DSN parameters.
    pub fn new(to: ForwardPath) -> JobRecipient {
        JobRecipient {
            to,
            notify: None,
            orcpt: None,
        }
    }
}

/// What one client session delivers: the envelope and what the body needs from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailJob {
    /// The reverse path.
    pub from: ReversePath,
    /// The recipients, in order; results come back in the same order.
    pub recipients: Vec<JobRecipient>,
    /// The body's size in octets, if known: sent as `SIZE=` and checked against the server's
    /// SIZE before anything is sent (RFC 1870).
    pub size: Option<u64>,
    /// The body type. `EightBitMime` needs 8BITMIME, `BinaryMime` needs BINARYMIME and
    /// CHUNKING; `None` or `SevenBit` needs nothing.
    pub body: Option<Body>,
    /// The message needs SMTPUTF8 (UTF-8 headers). Non-ASCII addresses need it too, whatever
    /// this says.
    pub smtputf8: bool,
    /// REQUIRETLS (RFC 8689): deliver only over TLS to a server that offers REQUIRETLS.
    pub requiretls: bool,
    /// `RET=` (sent when DSN is offered).
    pub ret: Option<Ret>,
    /// `ENVID=` (sent xtext-encoded when DSN is offered).
    pub envid: Option<String>,
}

impl MailJob {
    /// A job for a 7-bit message to these recipients.
    pub fn new(from: ReversePath, recipients: impl IntoIterator<Item = ForwardPath>) -> MailJob {
        MailJob {
            from,
            recipients: recipients.into_iter().map(JobRecipient::new).collect(),
            size: None,
            body: None,
            smtputf8: false,
            requiretls: false,
            ret: None,
            envid: None,
        }
    }

    /// Whether the envelope itself needs SMTPUTF8 (a non-ASCII address) or the job asks for it.
    pub fn needs_smtputf8(&self) -> bool {
        let from = match &self.from {
            ReversePath::Mailbox(m) => !m.is_ascii(),
            ReversePath::Null => false,
        };
        let to = self.recipients.iter().any(|r| match &r.to {
            ForwardPath::Mailbox(m) => !m.is_ascii(),
            ForwardPath::Postmaster => false,
        });
        self.smtputf8 || from || to
    }
}

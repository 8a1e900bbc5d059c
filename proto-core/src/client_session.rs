//! The client side of an SMTP session as a pure state machine: one [`MailJob`] delivered over
//! one connection.
//!
//! Every reply the server sends answers one command; the session keeps the commands it sent
//! and not yet seen answered in a queue (`Expect`), so pipelined replies are matched in order
//! ([RFC 2920 section 3.1](https://www.rfc-editor.org/rfc/rfc2920#section-3.1): "Client SMTP
//! implementations that employ pipelining MUST check ALL statuses associated with each command
//! in a group"). All reply transitions are in `ClientSession::on_reply`, one exhaustive `match`
//! on the answered command; the inputs that are not replies (TLS, body, EOF, timeout) match on
//! `State`.
//!
//! The dialogue:
//! 1. 220 greeting, then `EHLO` ([RFC 5321 3.2](https://www.rfc-editor.org/rfc/rfc5321#section-3.2));
//!    when the server refuses EHLO (500, 501, 502 or 550, the replies RFC 5321 4.1.4 lists for
//!    an unacceptable EHLO), `HELO`.
//! 2. `STARTTLS` ([RFC 3207](https://www.rfc-editor.org/rfc/rfc3207)) as [`TlsPolicy`] says;
//!    after the handshake `EHLO` again (4.2: "The client MUST discard any knowledge obtained
//!    from the server [...] which was not obtained from the TLS negotiation itself" and "SHOULD
//!    send an EHLO command as the first command after a successful TLS negotiation"). Bytes the
//!    server sent after its 220 to STARTTLS and before the handshake are discarded, never read
//!    as replies (the plaintext-injection attack of CVE-2011-0411, mirrored).
//! 3. `AUTH PLAIN` (with an initial response) or `AUTH LOGIN` when the config has credentials,
//!    only under TLS unless `allow_plaintext_auth`.
//! 4. The transaction: requirements are checked first (8BITMIME, SMTPUTF8, BINARYMIME,
//!    REQUIRETLS, SIZE); a message the server cannot take fails permanently without a command
//!    sent (converting 8-bit to 7-bit is out of scope). Then `MAIL`, one `RCPT` per recipient,
//!    and the body with `DATA` or `BDAT`. With PIPELINING, MAIL, the RCPTs and DATA go out as one
//!    group (RFC 2920 3.1: "DATA [...] can only appear as the last command in a group"). With BDAT the chunks go out as the driver hands
//!    them in, pipelined when PIPELINING is offered, one at a time otherwise.
//! 5. `QUIT`, then [`ClientAction::Close`].
//!
//! # The body on the wire
//!
//! The driver hands in the body in chunks of any size ([`ClientSession::handle_body`]); memory
//! is bounded by the chunk size. Chunk boundaries never matter.
//! - **Line endings are normalised.** Every bare CR and every bare LF becomes CRLF, so a body
//!   can never carry `<LF>.<LF>` or `<CR>.<CR>` (or any other terminator a lenient server might
//!   accept) through us. [RFC 5321 2.3.8](https://www.rfc-editor.org/rfc/rfc5321#section-2.3.8):
//!   "SMTP client implementations MUST NOT transmit these characters except when they are
//!   intended as line terminators and then MUST [...] transmit them only as a `<CRLF>` sequence."
//!   A body that does not end with CRLF gets one (RFC 5321 4.1.1.4:
//!   the mail data ends with `<CRLF>.<CRLF>`, the first CRLF being the end of the last line).
//!   Only `BODY=BINARYMIME` bodies are sent unchanged (BDAT counts octets; nothing to smuggle).
//! - **Dot-stuffing** with DATA, [RFC 5321 4.5.2](https://www.rfc-editor.org/rfc/rfc5321#section-4.5.2):
//!   "Before sending a line of mail text, the SMTP client checks the first character of the
//!   line. If it is a period, one additional period is inserted at the beginning of the line."
//!
//! # LMTP
//!
//! With [`ClientConfig::lmtp`] the session speaks LMTP,
//! [RFC 2033](https://www.rfc-editor.org/rfc/rfc2033), to a local delivery agent. Two things
//! change. The greeting is answered with `LHLO` (section 4.1: LMTP replaces EHLO with LHLO, and
//! a server refusing it leaves nothing to fall back to, so a refusal fails the job like a
//! refused greeting). And the end of the body (`.` or `BDAT LAST`) gets one reply per accepted
//! recipient, in RCPT order (section 4.2: "the server returns one reply for each previously
//! successful RCPT command in the mail transaction, in the order that the RCPT commands were
//! issued"); each reply is the final state of its recipient, so one mailbox over quota fails
//! alone. `BDAT LAST` is answered the same way (RFC 3030 allows CHUNKING over LMTP; the
//! per-recipient replies come after the last chunk). Everything else (PIPELINING, SIZE,
//! 8BITMIME, DSN parameters) works as in SMTP. Not handled: a server that refuses a
//! non-final BDAT chunk and then answers a pipelined `BDAT LAST` with fewer replies than
//! there are accepted recipients; the session waits for the rest until the data-termination
//! timeout, and the recipients fail temporarily.
//!
//! Several jobs may share the connection ([`ClientSession::push_job`]): each further
//! transaction starts with `RSET`.
//!
//! Not implemented: line wrapping of lines longer than
//! 1000 octets, 8-bit to 7-bit conversion, IDNA conversion of non-ASCII domains.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;

use crate::address::ForwardPath;
use crate::client_config::{ClientConfig, MailJob, TlsPolicy};
use crate::command::{Body, Mechanism, Notify, Ret, xtext_encode};
use crate::reply::{Reply, ReplyClass, ReplyCode, ReplyParseError};
use crate::session::TlsInfo;

/// The service extensions a server announced in its EHLO reply (RFC 5321 4.1.1.1), typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870), with its limit.
    pub size: Option<SizeLimit>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
    /// CHUNKING (RFC 3030): BDAT.
    pub chunking: bool,
    /// BINARYMIME (RFC 3030).
    pub binary_mime: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// AUTH (RFC 4954) mechanisms; empty when AUTH is not offered.
    pub auth: Vec<Mechanism>,
    /// REQUIRETLS (RFC 8689).
    pub requiretls: bool,
}

/// The SIZE a server announced (RFC 1870 section 4: "a parameter value of 0 [...] indicates
/// that no fixed maximum message size is in force").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SizeLimit {
    /// `SIZE` or `SIZE 0`: SIZE= is understood, no fixed maximum.
    Unlimited,
    /// `SIZE n`: messages larger than n octets are refused.
    Max(u64),
}

impl Capabilities {
    /// Reads the keyword lines of an EHLO reply (its first line is the server's name and is
    /// skipped). Unknown keywords are ignored; keywords are case-insensitive (RFC 5321 2.4).
    pub fn parse(reply: &Reply) -> Capabilities {
        let mut c = Capabilities::default();
        for line in reply.lines().iter().skip(1) {
            let mut words = line.split([' ', '=']).filter(|w| !w.is_empty());
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => c.pipelining = true,
                "SIZE" => {
                    c.size = Some(match words.next().and_then(|n| n.parse::<u64>().ok()) {
                        Some(0) | None => SizeLimit::Unlimited,
                        Some(n) => SizeLimit::Max(n),
                    })
                }
                "8BITMIME" => c.eight_bit_mime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => c.enhanced_status_codes = true,
                "CHUNKING" => c.chunking = true,
                "BINARYMIME" => c.binary_mime = true,
                "DSN" => c.dsn = true,
                "STARTTLS" => c.starttls = true,
                "REQUIRETLS" => c.requiretls = true,
                "AUTH" => {
                    for m in words {
                        let m = match m.to_ascii_uppercase().as_str() {
                            "PLAIN" => Mechanism::Plain,
                            "LOGIN" => Mechanism::Login,
                            other => Mechanism::Other(other.to_string()),
                        };
                        if !c.auth.contains(&m) {
                            c.auth.push(m);
                        }
                    }
                }
                _ => {}
            }
        }
        c
    }
}

/// Something the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAction {
    /// Write these bytes to the server.
    Send(Vec<u8>),
    /// Flush what was sent, run the TLS handshake as client, then call
    /// [`ClientSession::handle_tls_established`] (or [`ClientSession::handle_tls_failed`]).
    StartTls,
    /// Something the application must know.
    Event(ClientEvent),
    /// Flush what was sent and close the connection. Nothing follows.
    Close,
}

/// What the session tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server waits for the body: call [`ClientSession::handle_body`] while
    /// [`ClientSession::wants_body`] is true, until a chunk with `last = true`.
    BodyRequested,
    /// A job is over (delivered, failed, or partly both). Sent exactly once per job.
    Finished(Outcome),
}

/// What happened to the job.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// Which job: 0 for the one given to [`ClientSession::new`], then in
    /// [`ClientSession::push_job`] order.
    pub job: usize,
    /// One result per recipient, in the job's order.
    pub recipients: Vec<RecipientResult>,
    /// The server's reply to the end of the body (`.` or `BDAT LAST`), if it came. With LMTP,
    /// the first of the per-recipient replies (each recipient's is in its status).
    pub data_reply: Option<Reply>,
}

impl Outcome {
    /// Whether every recipient was accepted.
    pub fn all_delivered(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| matches!(r.status, RecipientStatus::Accepted(_)))
    }
}

/// The result for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecipientResult {
    /// The recipient.
    pub to: ForwardPath,
    /// What became of it.
    pub status: RecipientStatus,
}

/// The final state of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecipientStatus {
    /// The server took responsibility: the reply to the end of the body.
    Accepted(Reply),
    /// Failed for now (4xx, or a connection problem): retry later.
    TemporaryFailure(FailureReason),
    /// Failed for good (5xx, or the server cannot take this message): bounce.
    PermanentFailure(FailureReason),
}

impl RecipientStatus {
    /// Whether this is a temporary failure.
    pub fn is_temporary(&self) -> bool {
        matches!(self, RecipientStatus::TemporaryFailure(_))
    }

    /// Whether this is a permanent failure.
    pub fn is_permanent(&self) -> bool {
        matches!(self, RecipientStatus::PermanentFailure(_))
    }
}

/// Why a recipient failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureReason {
    /// The server's reply (to MAIL, RCPT, DATA, the body, or the greeting...).
    Reply(Reply),
    /// A problem found on our side.
    Local(ClientError),
}

/// One line for logs and reports: the reply's lines joined by ` / `, or the problem.
impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureReason::Reply(reply) => {
                let text = reply.to_string();
                let mut lines = text.split(['\r', '\n']).filter(|l| !l.is_empty());
                if let Some(first) = lines.next() {
                    f.write_str(first)?;
                }
                for line in lines {
                    write!(f, " / {line}")?;
                }
                Ok(())
            }
            FailureReason::Local(problem) => problem.fmt(f),
        }
    }
}

/// Failures the client finds itself (not a server reply to a command of the transaction).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// TLS is required but the server did not offer STARTTLS.
    #[error("TLS required but the server does not offer STARTTLS")]
    StartTlsNotOffered,
    /// TLS is required but the server refused STARTTLS.
    #[error("TLS required but the server refused STARTTLS: {0}")]
    StartTlsRefused(Reply),
    /// The TLS handshake failed.
    #[error("TLS handshake failed")]
    TlsHandshakeFailed,
    /// AUTH is configured but the server offers neither PLAIN nor LOGIN.
    #[error("the server offers no AUTH mechanism we can use (PLAIN, LOGIN)")]
    AuthNotOffered,
    /// AUTH is configured but TLS is not active and plaintext AUTH is not allowed.
    #[error("refusing to send credentials without TLS")]
    AuthNeedsTls,
    /// The server refused our credentials (kept temporary: a configuration problem must not
    /// bounce mail).
    #[error("authentication failed: {0}")]
    AuthFailed(Reply),
    /// The message is 8-bit and the server does not offer 8BITMIME (conversion to 7-bit is not
    /// implemented).
    #[error("the message needs 8BITMIME, which the server does not offer (no 7-bit conversion)")]
    EightBitMimeNotOffered,
    /// The message needs SMTPUTF8 and the server does not offer it.
    #[error("the message needs SMTPUTF8, which the server does not offer")]
    SmtpUtf8NotOffered,
    /// The message is BINARYMIME and the server lacks BINARYMIME or CHUNKING (conversion is
    /// not implemented). The fields say which of the two the server does offer.
    #[error(
        "the message is binary (BODY=BINARYMIME) and the server does not offer {}; binary \
         bodies are not converted",
        binary_missing(*binary_mime, *chunking)
    )]
    BinaryMimeNotOffered {
        /// Whether the server offers BINARYMIME.
        binary_mime: bool,
        /// Whether the server offers CHUNKING.
        chunking: bool,
    },
    /// The message asks for REQUIRETLS and the connection is not TLS or the server does not
    /// offer REQUIRETLS (RFC 8689 4.2.1).
    #[error("the message requires TLS (REQUIRETLS), which this connection cannot honour")]
    RequireTlsNotOffered,
    /// The declared size exceeds the server's SIZE (RFC 1870 6).
    #[error("message size {size} exceeds the server's limit {limit}")]
    MessageTooBig {
        /// The declared size.
        size: u64,
        /// The server's SIZE.
        limit: u64,
    },
    /// No reply in time (RFC 5321 4.5.3.2).
    #[error("timeout waiting for the reply to {0}")]
    Timeout(Stage),
    /// The server closed the connection.
    #[error("connection closed by the server while waiting for {0}")]
    ConnectionClosed(Stage),
    /// The server sent something that is not a reply.
    #[error("malformed reply: {0}")]
    BadReply(ReplyParseError),
    /// The server sent a reply longer than `max_reply_len`.
    #[error("reply too long")]
    ReplyTooLong,
    /// The server sent a reply nothing asked for.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(Reply),
}

/// What a server lacks for a BINARYMIME message, given what it offers.
fn binary_missing(binary_mime: bool, chunking: bool) -> &'static str {
    match (binary_mime, chunking) {
        (false, false) => "BINARYMIME or CHUNKING",
        (false, true) => "BINARYMIME (it offers CHUNKING)",
        (true, _) => "CHUNKING (it offers BINARYMIME)",
    }
}

/// What the client was waiting for, for timeout and connection-loss reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// The 220 greeting.
    Greeting,
    /// EHLO or HELO.
    Hello,
    /// STARTTLS or the TLS handshake.
    StartTls,
    /// AUTH.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (the 354).
    DataInit,
    /// The body, or a BDAT chunk.
    Body,
    /// The reply to the end of the body.
    DataEnd,
    /// RSET before a further transaction.
    Reset,
    /// QUIT.
    Quit,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Greeting => "the greeting",
            Stage::Hello => "EHLO/HELO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::DataInit => "DATA",
            Stage::Body => "the message body",
            Stage::DataEnd => "the end of data",
            Stage::Reset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}

/// Misuse of the client API by the driver (never caused by the server).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ClientUsageError {
    /// `handle_tls_established` or `handle_tls_failed` without [`ClientAction::StartTls`].
    #[error("TLS was not requested by the session")]
    TlsNotRequested,
    /// `handle_body` while [`ClientSession::wants_body`] is false.
    #[error("the session does not want body data now")]
    BodyNotWanted,
    /// `push_job` after the session sent QUIT or closed.
    #[error("the session is ending; start a new one")]
    Quitting,
}

/// A command whose reply has not arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    /// Reply to `AUTH PLAIN <initial>` or to the LOGIN password: 235 ends AUTH.
    AuthDone,
    /// Reply to `AUTH LOGIN`: 334 asks for the user name.
    AuthLoginUser,
    /// Reply to the LOGIN user name: 334 asks for the password.
    AuthLoginPassword,
    Mail,
    Rcpt(usize),
    Data,
    /// Reply to a BDAT chunk.
    Bdat {
        last: bool,
    },
    /// Reply to the `.` ending DATA.
    DataEnd,
    /// Reply to a lone `.` sent after a 354 with no accepted recipient (RFC 2920 3.1).
    DataDiscard,
    /// LMTP: the reply for recipient `i` (its index in the job) to the end of the body.
    LmtpDataEnd(usize),
    /// Reply to the RSET that starts a further transaction.
    Rset,
    Quit,
}

impl Expect {
    fn stage(self) -> Stage {
        match self {
            Expect::Greeting => Stage::Greeting,
            Expect::Ehlo | Expect::Helo => Stage::Hello,
            Expect::StartTls => Stage::StartTls,
            Expect::AuthDone | Expect::AuthLoginUser | Expect::AuthLoginPassword => Stage::Auth,
            Expect::Mail => Stage::Mail,
            Expect::Rcpt(_) => Stage::Rcpt,
            Expect::Data => Stage::DataInit,
            Expect::Bdat { last: false } => Stage::Body,
            Expect::Bdat { last: true }
            | Expect::DataEnd
            | Expect::DataDiscard
            | Expect::LmtpDataEnd(_) => Stage::DataEnd,
            Expect::Rset => Stage::Reset,
            Expect::Quit => Stage::Quit,
        }
    }
}

/// What the session waits for besides replies.
#[derive(Debug)]
enum State {
    /// Only replies (those in the expect queue).
    Replies,
    /// After 220 to STARTTLS: the driver runs the handshake.
    TlsHandshake,
    /// The driver hands in the body.
    Body(BodyEncoder),
    /// Closed; nothing more is read.
    Closed,
}

/// Where a recipient stands during the transaction.
#[derive(Debug, Clone)]
enum Slot {
    /// No reply to its RCPT yet.
    Pending,
    /// RCPT accepted; waits for the end of the body.
    Accepted,
    /// Final.
    Done(RecipientStatus),
}

/// How the transaction is being sent.
#[derive(Debug, Clone, Copy)]
struct Mode {
    pipelined: bool,
    bdat: bool,
}

/// The client side of one SMTP connection, delivering one [`MailJob`].
///
/// Call order:
/// 1. [`ClientSession::new`] right after the TCP connection is up (it waits for the greeting).
/// 2. Feed what happens: [`handle_input`](ClientSession::handle_input) with bytes read,
///    [`handle_eof`](ClientSession::handle_eof), [`handle_timeout`](ClientSession::handle_timeout)
///    when [`poll_timeout`](ClientSession::poll_timeout) passes,
///    [`handle_tls_established`](ClientSession::handle_tls_established) after
///    [`ClientAction::StartTls`], and [`handle_body`](ClientSession::handle_body) while
///    [`wants_body`](ClientSession::wants_body) is true after [`ClientEvent::BodyRequested`].
/// 3. After every input, drain [`poll_action`](ClientSession::poll_action) until `None`,
///    carrying out each action in order, then read `poll_timeout` again.
///
/// Each job ends with exactly one [`ClientEvent::Finished`]; the session then ends with
/// [`ClientAction::Close`]. Getters ([`capabilities`](ClientSession::capabilities),
/// [`tls`](ClientSession::tls), [`authenticated`](ClientSession::authenticated)) describe the
/// connection for logs and the TLS policy.
#[derive(Debug)]
pub struct ClientSession {
    config: Arc<ClientConfig>,
    /// The job being delivered, its index (0 for the one given to `new`), and those queued
    /// after it with [`ClientSession::push_job`].
    job: MailJob,
    job_index: usize,
    jobs: VecDeque<MailJob>,
    state: State,
    expect: VecDeque<Expect>,
    actions: VecDeque<ClientAction>,
    input: Vec<u8>,
    /// Bytes of `input` already known to hold only non-final reply lines.
    scanned: usize,
    capabilities: Option<Capabilities>,
    tls: Option<TlsInfo>,
    /// STARTTLS was refused and the policy let us go on in plaintext: do not ask again.
    starttls_refused: bool,
    authenticated: bool,
    mode: Mode,
    /// `None` once the outcome was reported.
    slots: Option<Vec<Slot>>,
    /// MAIL failed: the reply every recipient gets once the pipelined replies are read.
    mail_failure: Option<Reply>,
    /// A BDAT chunk was refused: the reply every accepted recipient gets.
    body_failure: Option<Reply>,
    data_reply: Option<Reply>,
    deadline: Option<Instant>,
}

impl ClientSession {
    /// Starts a session at `now` on a fresh connection, waiting for the 220 greeting.
    pub fn new(config: Arc<ClientConfig>, job: MailJob, now: Instant) -> ClientSession {
        let slots = vec![Slot::Pending; job.recipients.len()];
        let mut s = ClientSession {
            config,
            job,
            job_index: 0,
            jobs: VecDeque::new(),
            state: State::Replies,
            expect: VecDeque::new(),
            actions: VecDeque::new(),
            input: Vec::new(),
            scanned: 0,
            capabilities: None,
            tls: None,
            starttls_refused: false,
            authenticated: false,
            mode: Mode {
                pipelined: false,
                bdat: false,
            },
            slots: Some(slots),
            mail_failure: None,
            body_failure: None,
            data_reply: None,
            deadline: None,
        };
        s.push_expect(now, Expect::Greeting);
        s
    }

    // ----- getters -----

    /// The job being delivered (the last one, once all are done).
    pub fn job(&self) -> &MailJob {
        &self.job
    }

    /// The index of the job being delivered: 0 for the job given to [`ClientSession::new`],
    /// then 1, 2... in the order of [`ClientSession::push_job`]. A [`ClientEvent::BodyRequested`]
    /// asks for this job's body.
    pub fn job_index(&self) -> usize {
        self.job_index
    }

    /// What the server offered in its last EHLO (after STARTTLS: the EHLO under TLS).
    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.capabilities.as_ref()
    }

    /// TLS facts, once TLS is active.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// Whether AUTH succeeded.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether the driver should hand in the next body chunk now. Without PIPELINING, BDAT
    /// waits for each chunk's reply first.
    pub fn wants_body(&self) -> bool {
        match self.state {
            State::Body(_) => self.mode.pipelined || !self.mode.bdat || self.expect.is_empty(),
            _ => false,
        }
    }

    // ----- inputs -----

    /// Bytes from the server.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        match self.state {
            State::Closed | State::TlsHandshake => return,
            State::Replies | State::Body(_) => {}
        }
        self.input.extend_from_slice(bytes);
        self.process(now);
    }

    /// The server closed the connection.
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.is_closed() {
            return;
        }
        let stage = match (&self.state, self.expect.front()) {
            (_, Some(e)) => e.stage(),
            (State::TlsHandshake, None) => Stage::StartTls,
            (_, None) => Stage::Body,
        };
        self.finish_temporary(ClientError::ConnectionClosed(stage));
        self.close();
    }

    /// The time from [`poll_timeout`](ClientSession::poll_timeout) has come. Early calls are
    /// no-ops. RFC 5321 4.5.3.2: the client gives up on the connection (temporarily).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.deadline {
            Some(d) if now >= d => {}
            _ => return,
        }
        let stage = self.expect.front().map_or(Stage::Body, |e| e.stage());
        self.finish_temporary(ClientError::Timeout(stage));
        self.close();
    }

    /// The TLS handshake requested by [`ClientAction::StartTls`] completed: EHLO again.
    pub fn handle_tls_established(
        &mut self,
        now: Instant,
        tls: TlsInfo,
    ) -> Result<(), ClientUsageError> {
        if !matches!(self.state, State::TlsHandshake) {
            return Err(ClientUsageError::TlsNotRequested);
        }
        self.state = State::Replies;
        self.tls = Some(tls);
        // RFC 3207 4.2: discard what the plaintext EHLO told us.
        self.capabilities = None;
        self.send_ehlo(now);
        Ok(())
    }

    /// The TLS handshake failed: the delivery fails temporarily and the session closes.
    pub fn handle_tls_failed(&mut self, _now: Instant) -> Result<(), ClientUsageError> {
        if !matches!(self.state, State::TlsHandshake) {
            return Err(ClientUsageError::TlsNotRequested);
        }
        self.finish_temporary(ClientError::TlsHandshakeFailed);
        self.close();
        Ok(())
    }

    /// Queues another job for this connection: after the current transaction (and any queued
    /// before it) the session sends `RSET` and starts it instead of `QUIT`
    /// ([RFC 5321 3.3](https://www.rfc-editor.org/rfc/rfc5321#section-3.3): several
    /// transactions may share a connection). Each job gets its own [`ClientEvent::Finished`].
    /// Jobs must be pushed before the last queued one finishes: once `QUIT` is sent this fails.
    pub fn push_job(&mut self, job: MailJob) -> Result<(), ClientUsageError> {
        if self.is_closed() || self.expect.contains(&Expect::Quit) {
            return Err(ClientUsageError::Quitting);
        }
        self.jobs.push_back(job);
        Ok(())
    }

    /// The next piece of the body; `last` marks the end (its chunk may be empty).
    /// Bare CR and LF become CRLF; with DATA, lines starting with `.` are dot-stuffed.
    pub fn handle_body(
        &mut self,
        now: Instant,
        chunk: &[u8],
        last: bool,
    ) -> Result<(), ClientUsageError> {
        if !self.wants_body() {
            return Err(ClientUsageError::BodyNotWanted);
        }
        let State::Body(encoder) = &mut self.state else {
            return Err(ClientUsageError::BodyNotWanted);
        };
        let mut data = Vec::with_capacity(chunk.len() + chunk.len() / 8 + 8);
        encoder.encode(chunk, last, &mut data);
        if self.mode.bdat {
            if data.is_empty() && !last {
                return Ok(());
            }
            let mut out =
                format!("BDAT {}{}\r\n", data.len(), if last { " LAST" } else { "" }).into_bytes();
            out.extend_from_slice(&data);
            self.actions.push_back(ClientAction::Send(out));
            if last && self.config.lmtp {
                self.expect_lmtp_replies(now);
            } else {
                self.push_expect(now, Expect::Bdat { last });
            }
        } else {
            if !data.is_empty() {
                self.actions.push_back(ClientAction::Send(data));
            }
            if last {
                self.actions
                    .push_back(ClientAction::Send(b".\r\n".to_vec()));
                if self.config.lmtp {
                    self.expect_lmtp_replies(now);
                } else {
                    self.push_expect(now, Expect::DataEnd);
                }
            }
        }
        if last {
            self.state = State::Replies;
        }
        Ok(())
    }

    // ----- outputs -----

    /// The next thing the driver must do.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<ClientAction> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](ClientSession::handle_timeout) is due: the per-command timeout
    /// of the oldest unanswered command. `None` while only the driver can make progress
    /// (handshake, body) and once closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    // ----- the state machine -----

    /// Reads every complete reply in the input and answers it.
    fn process(&mut self, now: Instant) {
        loop {
            if matches!(self.state, State::Closed | State::TlsHandshake) {
                return;
            }
            let Some(end) = self.reply_end() else {
                if self.input.len() > self.config.max_reply_len {
                    self.finish_temporary(ClientError::ReplyTooLong);
                    self.close();
                }
                return;
            };
            let raw: Vec<u8> = self.input.drain(..end).collect();
            self.scanned = 0;
            match Reply::parse(&crlf_lines(raw)) {
                Ok(Some((reply, _))) => self.dispatch(now, reply),
                Ok(None) => {
                    // Unreachable: `crlf_lines` ends every line with CRLF and the last one is
                    // final. Treated as a malformed reply rather than trusted.
                    self.finish_temporary(ClientError::BadReply(ReplyParseError::BadSeparator));
                    self.close();
                }
                Err(e) => {
                    self.finish_temporary(ClientError::BadReply(e));
                    self.close();
                }
            }
        }
    }

    /// The end of the first complete reply in `input`: after a line whose fourth octet is not
    /// `-`. Resumable: lines already scanned are not scanned again.
    fn reply_end(&mut self) -> Option<usize> {
        while let Some(rel) = self.input[self.scanned..].iter().position(|&b| b == b'\n') {
            let line = &self.input[self.scanned..self.scanned + rel + 1];
            self.scanned += rel + 1;
            if line.get(3) != Some(&b'-') {
                return Some(self.scanned);
            }
        }
        None
    }

    fn dispatch(&mut self, now: Instant, reply: Reply) {
        let expect = self.expect.pop_front();
        self.deadline = None;
        if let Some(&next) = self.expect.front() {
            self.deadline = Some(now + self.timeout_for(next));
        }
        // RFC 5321 3.8: a server shutting down may answer any command, or none, with 421 and
        // close the connection.
        if reply.code() == ReplyCode::SERVICE_UNAVAILABLE && expect != Some(Expect::Quit) {
            self.finish_with(&reply);
            return self.close();
        }
        match expect {
            Some(expect) => self.on_reply(now, expect, reply),
            None => {
                self.finish_temporary(ClientError::UnexpectedReply(reply));
                self.close();
            }
        }
    }

    /// Every transition on a reply: `expect` is the command it answers.
    fn on_reply(&mut self, now: Instant, expect: Expect, reply: Reply) {
        let code = reply.code().get();
        let positive = reply.code().class() == ReplyClass::PositiveCompletion;
        match expect {
            // RFC 5321 3.1: a server greeting with 554 "MUST still wait for the client to send
            // a QUIT": send it.
            Expect::Greeting if code == 220 => self.send_ehlo(now),
            Expect::Greeting => self.fail_and_quit(now, &reply),
            Expect::Ehlo if positive => {
                self.capabilities = Some(Capabilities::parse(&reply));
                self.after_hello(now);
            }
            // RFC 5321 4.1.4: an unacceptable EHLO gets 501, 500, 502 or 550: fall back.
            // LMTP has no HELO to fall back to.
            Expect::Ehlo if matches!(code, 500 | 501 | 502 | 550) && !self.config.lmtp => {
                self.send_line(now, format!("HELO {}", self.hostname()), Expect::Helo)
            }
            Expect::Ehlo => self.fail_and_quit(now, &reply),
            Expect::Helo if positive => {
                self.capabilities = Some(Capabilities::default());
                self.after_hello(now);
            }
            Expect::Helo => self.fail_and_quit(now, &reply),
            Expect::StartTls if code == 220 => {
                // RFC 3207 4.2 / CVE-2011-0411: nothing sent before the handshake is a reply.
                self.input.clear();
                self.scanned = 0;
                self.state = State::TlsHandshake;
                self.actions.push_back(ClientAction::StartTls);
            }
            Expect::StartTls => match self.config.tls {
                TlsPolicy::Required => {
                    self.fail_local_and_quit(now, ClientError::StartTlsRefused(reply))
                }
                TlsPolicy::Never | TlsPolicy::Opportunistic => {
                    self.starttls_refused = true;
                    self.after_hello(now);
                }
            },
            Expect::AuthLoginUser if code == 334 => {
                let user = self
                    .config
                    .auth
                    .as_ref()
                    .map(|c| STANDARD.encode(c.user.as_bytes()))
                    .unwrap_or_default();
                self.send_line(now, user, Expect::AuthLoginPassword);
            }
            Expect::AuthLoginPassword if code == 334 => {
                let password = self
                    .config
                    .auth
                    .as_ref()
                    .map(|c| STANDARD.encode(c.password.as_bytes()))
                    .unwrap_or_default();
                self.send_line(now, password, Expect::AuthDone);
            }
            Expect::AuthDone if code == 235 => {
                self.authenticated = true;
                self.begin_transaction(now, false);
            }
            Expect::AuthLoginUser | Expect::AuthLoginPassword | Expect::AuthDone => {
                if code == 334 {
                    // A challenge where none was expected: cancel (RFC 4954 4: "*").
                    self.send_line(now, "*".into(), Expect::AuthDone);
                } else {
                    self.fail_local_and_quit(now, ClientError::AuthFailed(reply));
                }
            }
            Expect::Mail if positive => {
                if !self.mode.pipelined {
                    self.send_rcpt(now, 0);
                }
            }
            Expect::Mail => {
                self.mail_failure = Some(reply);
                if !self.mode.pipelined {
                    self.end_transaction(now);
                }
            }
            Expect::Rcpt(i) => {
                if self.mail_failure.is_none()
                    && let Some(slot) = self.slots.as_mut().and_then(|s| s.get_mut(i))
                {
                    *slot = if positive {
                        Slot::Accepted
                    } else {
                        Slot::Done(status_of(reply))
                    };
                }
                let last = i + 1 >= self.job.recipients.len();
                match (last, self.mode.pipelined) {
                    (false, false) => self.send_rcpt(now, i + 1),
                    (false, true) => {}
                    (true, _) if self.mail_failure.is_some() && !self.data_in_group() => {
                        self.end_transaction(now)
                    }
                    (true, _) if !self.any_accepted() && !self.data_in_group() => {
                        self.end_transaction(now)
                    }
                    (true, _) if self.mode.bdat => self.start_body(),
                    (true, true) => {} // DATA went with the group; its reply is next.
                    (true, false) => self.send_line(now, "DATA".into(), Expect::Data),
                }
            }
            Expect::Data if code == 354 => {
                if self.mail_failure.is_some() || !self.any_accepted() {
                    // RFC 2920 3.1: "if the DATA command was accepted the client SMTP should
                    // send a single dot".
                    self.actions
                        .push_back(ClientAction::Send(b".\r\n".to_vec()));
                    self.push_expect(now, Expect::DataDiscard);
                } else {
                    self.start_body();
                }
            }
            Expect::Data => {
                if self.mail_failure.is_none() {
                    self.body_failure = Some(reply);
                }
                self.end_transaction(now);
            }
            Expect::Bdat { last: false } => {
                if !positive && self.body_failure.is_none() {
                    // RFC 3030 2: a failed chunk fails the transaction; stop sending.
                    self.body_failure = Some(reply);
                    if matches!(self.state, State::Body(_)) {
                        self.state = State::Replies;
                    }
                }
                if self.expect.is_empty() && !matches!(self.state, State::Body(_)) {
                    self.end_transaction(now);
                }
            }
            Expect::Bdat { last: true } | Expect::DataEnd => {
                self.data_reply = Some(reply);
                if self.expect.is_empty() {
                    self.end_transaction(now);
                }
            }
            Expect::DataDiscard => self.end_transaction(now),
            // RFC 2033 4.2: this recipient's own result.
            Expect::LmtpDataEnd(i) => {
                if self.data_reply.is_none() {
                    self.data_reply = Some(reply.clone());
                }
                if let Some(slot) = self.slots.as_mut().and_then(|s| s.get_mut(i)) {
                    *slot = Slot::Done(status_of(reply));
                }
                if self.expect.is_empty() {
                    self.end_transaction(now);
                }
            }
            // Whatever RSET got, MAIL's reply decides the new transaction.
            Expect::Rset => {
                if !self.mode.pipelined {
                    self.begin_transaction(now, false);
                }
            }
            Expect::Quit => self.close(),
        }
    }

    // ----- steps -----

    /// `EHLO`, or `LHLO` for LMTP.
    fn send_ehlo(&mut self, now: Instant) {
        let verb = if self.config.lmtp { "LHLO" } else { "EHLO" };
        self.send_line(now, format!("{verb} {}", self.hostname()), Expect::Ehlo);
    }

    /// After a successful EHLO/HELO (or a refused optional STARTTLS): TLS, AUTH, or MAIL.
    fn after_hello(&mut self, now: Instant) {
        let offered = self.capabilities.as_ref().is_some_and(|c| c.starttls);
        if self.tls.is_none() && !self.starttls_refused {
            match (self.config.tls, offered) {
                (TlsPolicy::Never, _) => {}
                (TlsPolicy::Opportunistic | TlsPolicy::Required, true) => {
                    return self.send_line(now, "STARTTLS".into(), Expect::StartTls);
                }
                (TlsPolicy::Required, false) => {
                    return self.fail_local_and_quit(now, ClientError::StartTlsNotOffered);
                }
                (TlsPolicy::Opportunistic, false) => {}
            }
        }
        match &self.config.auth {
            Some(creds) if !self.authenticated => {
                if self.tls.is_none() && !self.config.allow_plaintext_auth {
                    return self.fail_local_and_quit(now, ClientError::AuthNeedsTls);
                }
                let mechs = self
                    .capabilities
                    .as_ref()
                    .map(|c| c.auth.clone())
                    .unwrap_or_default();
                if mechs.contains(&Mechanism::Plain) {
                    // RFC 4616 2: message = [authzid] UTF8NUL authcid UTF8NUL passwd.
                    let msg = format!("\0{}\0{}", creds.user, creds.password);
                    let line = format!("AUTH PLAIN {}", STANDARD.encode(msg.as_bytes()));
                    self.send_line(now, line, Expect::AuthDone);
                } else if mechs.contains(&Mechanism::Login) {
                    self.send_line(now, "AUTH LOGIN".into(), Expect::AuthLoginUser);
                } else {
                    self.fail_local_and_quit(now, ClientError::AuthNotOffered);
                }
            }
            _ => self.begin_transaction(now, false),
        }
    }

    /// Checks what the message needs, then sends MAIL (with the RCPTs and DATA when
    /// pipelining), after an RSET when `rset` (a further transaction on this connection).
    fn begin_transaction(&mut self, now: Instant, rset: bool) {
        let caps = self.capabilities.clone().unwrap_or_default();
        if let Some(problem) = self.requirement_problem(&caps) {
            // RFC-wise nothing was sent for this job: it fails alone, the next one goes on.
            self.finish(Some(RecipientStatus::PermanentFailure(
                FailureReason::Local(problem),
            )));
            return self.next_job_or_quit(now);
        }
        if self.job.recipients.is_empty() {
            // Nothing to deliver: an empty outcome, no transaction.
            self.finish(None);
            return self.next_job_or_quit(now);
        }
        self.mode = Mode {
            pipelined: self.config.pipelining && caps.pipelining,
            bdat: caps.chunking
                && (self.config.chunking || self.job.body == Some(Body::BinaryMime)),
        };
        let mut group = Vec::new();
        if rset {
            // RFC 2920 3.1: RSET may appear anywhere in a group.
            if !self.mode.pipelined {
                return self.send_line(now, "RSET".into(), Expect::Rset);
            }
            group.extend_from_slice(b"RSET\r\n");
            self.push_expect(now, Expect::Rset);
        }
        let mail = self.mail_line(&caps);
        if !self.mode.pipelined {
            return self.send_line(now, mail, Expect::Mail);
        }
        group.extend_from_slice(mail.as_bytes());
        group.extend_from_slice(b"\r\n");
        self.push_expect(now, Expect::Mail);
        for i in 0..self.job.recipients.len() {
            group.extend_from_slice(self.rcpt_line(i, &caps).as_bytes());
            group.extend_from_slice(b"\r\n");
            self.push_expect(now, Expect::Rcpt(i));
        }
        if !self.mode.bdat {
            group.extend_from_slice(b"DATA\r\n");
            self.push_expect(now, Expect::Data);
        }
        self.actions.push_back(ClientAction::Send(group));
    }

    /// Why this server cannot take this message, if it cannot.
    fn requirement_problem(&self, caps: &Capabilities) -> Option<ClientError> {
        let job = &self.job;
        match job.body {
            Some(Body::EightBitMime) if !caps.eight_bit_mime => {
                return Some(ClientError::EightBitMimeNotOffered);
            }
            Some(Body::BinaryMime) if !(caps.binary_mime && caps.chunking) => {
                return Some(ClientError::BinaryMimeNotOffered {
                    binary_mime: caps.binary_mime,
                    chunking: caps.chunking,
                });
            }
            _ => {}
        }
        if job.needs_smtputf8() && !caps.smtputf8 {
            return Some(ClientError::SmtpUtf8NotOffered);
        }
        // RFC 8689 4.2.1 (paraphrased): a REQUIRETLS message goes only over TLS to a server
        // that offers REQUIRETLS; otherwise it is not sent and fails.
        if job.requiretls && !(self.tls.is_some() && caps.requiretls) {
            return Some(ClientError::RequireTlsNotOffered);
        }
        // RFC 1870 4: "Any attempt by a client to transfer a message which is larger than this
        // limit will be rejected with a permanent failure (552) reply code": fail it now.
        if let (Some(size), Some(SizeLimit::Max(limit))) = (job.size, caps.size)
            && size > limit
        {
            return Some(ClientError::MessageTooBig { size, limit });
        }
        None
    }

    fn mail_line(&self, caps: &Capabilities) -> String {
        let job = &self.job;
        let mut line = format!("MAIL FROM:{}", job.from);
        if let (Some(size), Some(_)) = (job.size, caps.size) {
            line.push_str(&format!(" SIZE={size}"));
        }
        match job.body {
            Some(Body::EightBitMime) => line.push_str(" BODY=8BITMIME"),
            Some(Body::BinaryMime) => line.push_str(" BODY=BINARYMIME"),
            Some(Body::SevenBit) if caps.eight_bit_mime => line.push_str(" BODY=7BIT"),
            _ => {}
        }
        if job.needs_smtputf8() {
            line.push_str(" SMTPUTF8");
        }
        if caps.dsn {
            match job.ret {
                Some(Ret::Full) => line.push_str(" RET=FULL"),
                Some(Ret::Headers) => line.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &job.envid {
                line.push_str(&format!(" ENVID={}", xtext_encode(envid)));
            }
        }
        if job.requiretls {
            line.push_str(" REQUIRETLS");
        }
        line
    }

    fn rcpt_line(&self, i: usize, caps: &Capabilities) -> String {
        let Some(r) = self.job.recipients.get(i) else {
            return String::new();
        };
        let mut line = format!("RCPT TO:{}", r.to);
        if caps.dsn {
            match r.notify {
                Some(Notify::Never) => line.push_str(" NOTIFY=NEVER"),
                Some(Notify::On {
                    success,
                    failure,
                    delay,
                }) => {
                    let list: Vec<&str> =
                        [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
                            .iter()
                            .filter(|(on, _)| *on)
                            .map(|(_, name)| *name)
                            .collect();
                    if !list.is_empty() {
                        line.push_str(&format!(" NOTIFY={}", list.join(",")));
                    }
                }
                None => {}
            }
            if let Some(o) = &r.orcpt {
                let addr_type: String = o
                    .addr_type
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                line.push_str(&format!(" ORCPT={addr_type};{}", xtext_encode(&o.address)));
            }
        }
        line
    }

    fn send_rcpt(&mut self, now: Instant, i: usize) {
        if i >= self.job.recipients.len() {
            // A job without recipients: nothing to send.
            return self.end_transaction(now);
        }
        let caps = self.capabilities.clone().unwrap_or_default();
        let line = self.rcpt_line(i, &caps);
        self.send_line(now, line, Expect::Rcpt(i));
    }

    fn start_body(&mut self) {
        let binary = self.job.body == Some(Body::BinaryMime);
        self.state = State::Body(BodyEncoder::new(!self.mode.bdat, !binary));
        self.actions
            .push_back(ClientAction::Event(ClientEvent::BodyRequested));
    }

    /// LMTP: after the end of the body, one reply per accepted recipient, in RCPT order
    /// (RFC 2033 4.2).
    fn expect_lmtp_replies(&mut self, now: Instant) {
        let accepted: Vec<usize> = self
            .slots
            .as_ref()
            .map(|s| {
                s.iter()
                    .enumerate()
                    .filter(|(_, x)| matches!(x, Slot::Accepted))
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        for i in accepted {
            self.push_expect(now, Expect::LmtpDataEnd(i));
        }
    }

    /// Whether DATA was sent in the pipelined group (so its reply is still to come).
    fn data_in_group(&self) -> bool {
        self.mode.pipelined && !self.mode.bdat
    }

    fn any_accepted(&self) -> bool {
        self.slots
            .as_ref()
            .is_some_and(|s| s.iter().any(|x| matches!(x, Slot::Accepted)))
    }

    /// Every reply of the transaction is in: report, then the next job or QUIT.
    fn end_transaction(&mut self, now: Instant) {
        if let Some(reply) = self.mail_failure.clone() {
            self.finish(Some(failure_of(reply)));
        } else {
            let end = match (&self.body_failure, &self.data_reply) {
                (Some(failure), _) => Some(failure_of(failure.clone())),
                (None, Some(reply)) => Some(status_of(reply.clone())),
                (None, None) => None,
            };
            self.finish(end);
        }
        self.next_job_or_quit(now);
    }

    fn next_job_or_quit(&mut self, now: Instant) {
        match self.jobs.pop_front() {
            Some(job) => {
                self.start_job(job);
                self.begin_transaction(now, true);
            }
            None => self.quit(now),
        }
    }

    /// Makes `job` the current one, with a fresh transaction.
    fn start_job(&mut self, job: MailJob) {
        self.slots = Some(vec![Slot::Pending; job.recipients.len()]);
        self.job = job;
        self.job_index += 1;
        self.mail_failure = None;
        self.body_failure = None;
        self.data_reply = None;
        self.state = State::Replies;
    }

    fn quit(&mut self, now: Instant) {
        self.state = State::Replies;
        self.send_line(now, "QUIT".into(), Expect::Quit);
    }

    fn fail_and_quit(&mut self, now: Instant, reply: &Reply) {
        self.finish_with(reply);
        self.quit(now);
    }

    /// A problem with the connection (TLS, AUTH): every job fails temporarily; QUIT.
    fn fail_local_and_quit(&mut self, now: Instant, problem: ClientError) {
        self.finish_temporary(problem);
        self.quit(now);
    }

    /// The connection failed with this reply (which refused something, whatever its code
    /// says): every job not yet reported fails with it.
    fn finish_with(&mut self, reply: &Reply) {
        self.abandon(failure_of(reply.clone()));
    }

    /// The connection failed on our side: every job not yet reported fails temporarily.
    fn finish_temporary(&mut self, problem: ClientError) {
        self.abandon(RecipientStatus::TemporaryFailure(FailureReason::Local(
            problem,
        )));
    }

    /// Reports the current job (if not yet reported) and every queued one with `status` for
    /// each recipient not yet final.
    fn abandon(&mut self, status: RecipientStatus) {
        self.finish(Some(status.clone()));
        while let Some(job) = self.jobs.pop_front() {
            self.start_job(job);
            self.finish(Some(status.clone()));
        }
    }

    /// Reports the outcome (once). Recipients without a final state get `rest`; accepted ones
    /// get it too (it is the reply to the body, or a failure).
    fn finish(&mut self, rest: Option<RecipientStatus>) {
        let Some(slots) = self.slots.take() else {
            return;
        };
        let fallback = rest.unwrap_or(RecipientStatus::TemporaryFailure(FailureReason::Local(
            ClientError::ConnectionClosed(Stage::DataEnd),
        )));
        let recipients = slots
            .into_iter()
            .zip(&self.job.recipients)
            .map(|(slot, r)| RecipientResult {
                to: r.to.clone(),
                status: match slot {
                    Slot::Done(status) => status,
                    Slot::Pending | Slot::Accepted => fallback.clone(),
                },
            })
            .collect();
        self.actions
            .push_back(ClientAction::Event(ClientEvent::Finished(Outcome {
                job: self.job_index,
                recipients,
                data_reply: self.data_reply.clone(),
            })));
    }

    fn close(&mut self) {
        if self.is_closed() {
            return;
        }
        self.finish_temporary(ClientError::ConnectionClosed(Stage::Quit));
        self.state = State::Closed;
        self.expect.clear();
        self.input = Vec::new();
        self.deadline = None;
        self.actions.push_back(ClientAction::Close);
    }

    // ----- helpers -----

    /// Our EHLO name without anything that could end or split the command line.
    fn hostname(&self) -> String {
        let name: String = self
            .config
            .hostname
            .chars()
            .filter(|c| !c.is_control() && !c.is_whitespace())
            .collect();
        if name.is_empty() {
            "localhost".into()
        } else {
            name
        }
    }

    fn send_line(&mut self, now: Instant, mut line: String, expect: Expect) {
        line.push_str("\r\n");
        self.actions
            .push_back(ClientAction::Send(line.into_bytes()));
        self.push_expect(now, expect);
    }

    fn push_expect(&mut self, now: Instant, expect: Expect) {
        if self.expect.is_empty() {
            self.deadline = Some(now + self.timeout_for(expect));
        }
        self.expect.push_back(expect);
    }

    fn timeout_for(&self, expect: Expect) -> std::time::Duration {
        let t = &self.config.timeouts;
        match expect {
            Expect::Greeting => t.greeting,
            Expect::Ehlo
            | Expect::Helo
            | Expect::StartTls
            | Expect::AuthDone
            | Expect::AuthLoginUser
            | Expect::AuthLoginPassword
            | Expect::Rset
            | Expect::Quit => t.command,
            Expect::Mail => t.mail,
            Expect::Rcpt(_) => t.rcpt,
            Expect::Data => t.data_init,
            Expect::Bdat { last: false } => t.data_block,
            Expect::Bdat { last: true }
            | Expect::DataEnd
            | Expect::DataDiscard
            | Expect::LmtpDataEnd(_) => t.data_termination,
        }
    }
}

/// One complete reply's lines with every line ending made CRLF. Servers that end reply lines
/// with a bare LF are tolerated (RFC 5321 4.1.1 asks for CRLF, but a reply cannot smuggle
/// anything through us, so leniency costs nothing).
fn crlf_lines(raw: Vec<u8>) -> Vec<u8> {
    let bare = raw
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || raw[i - 1] != b'\r'));
    if !bare {
        return raw;
    }
    let mut out = Vec::with_capacity(raw.len() + 8);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// A reply that refused something, as a failure: 5xx permanent, anything else temporary (a
/// 2xx or 3xx where a refusal was seen is a broken server: try again later).
fn failure_of(reply: Reply) -> RecipientStatus {
    match reply.code().class() {
        ReplyClass::PermanentNegative => {
            RecipientStatus::PermanentFailure(FailureReason::Reply(reply))
        }
        _ => RecipientStatus::TemporaryFailure(FailureReason::Reply(reply)),
    }
}

/// A reply to the end of the body as the final state of a recipient.
fn status_of(reply: Reply) -> RecipientStatus {
    match reply.code().class() {
        ReplyClass::PositiveCompletion => RecipientStatus::Accepted(reply),
        ReplyClass::PermanentNegative => {
            RecipientStatus::PermanentFailure(FailureReason::Reply(reply))
        }
        // 4xx, and a 3xx where a final reply was due (a broken server: try again later).
        _ => RecipientStatus::TemporaryFailure(FailureReason::Reply(reply)),
    }
}

/// Turns body chunks into wire data: line endings normalised to CRLF and, for DATA,
/// dot-stuffed and terminated. State carries over chunk boundaries.
#[derive(Debug)]
pub(crate) struct BodyEncoder {
    stuff: bool,
    normalise: bool,
    at_line_start: bool,
    pending_cr: bool,
}

impl BodyEncoder {
    pub(crate) fn new(stuff: bool, normalise: bool) -> BodyEncoder {
        BodyEncoder {
            stuff,
            normalise,
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the encoding of `chunk` to `out`; after the `last` chunk, the body ends with
    /// CRLF (when normalising). The `.` terminator is not added here.
    pub(crate) fn encode(&mut self, chunk: &[u8], last: bool, out: &mut Vec<u8>) {
        if !self.normalise {
            out.extend_from_slice(chunk);
            return;
        }
        for &b in chunk {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                }
                _ => {
                    if self.at_line_start && self.stuff && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    self.at_line_start = false;
                }
            }
        }
        if last && (self.pending_cr || !self.at_line_start) {
            out.extend_from_slice(b"\r\n");
            self.pending_cr = false;
            self.at_line_start = true;
        }
    }
}

// Drivers hold sessions across awaits in multi-threaded executors.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ClientSession>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_all(stuff: bool, chunks: &[&[u8]]) -> Vec<u8> {
        let mut e = BodyEncoder::new(stuff, true);
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            e.encode(c, i + 1 == chunks.len(), &mut out);
        }
        out
    }

    #[test]
    fn failure_reasons_on_one_line() {
        let reply = Reply::parse(b"550-5.1.1 no such user\r\n550 5.1.1 try another\r\n")
            .expect("parses")
            .expect("complete")
            .0;
        assert_eq!(
            FailureReason::Reply(reply).to_string(),
            "550-5.1.1 no such user / 550 5.1.1 try another"
        );
        assert_eq!(
            FailureReason::Local(ClientError::StartTlsNotOffered).to_string(),
            ClientError::StartTlsNotOffered.to_string()
        );
    }

    #[test]
    fn encoder_table_any_split() {
        // (body, dot-stuffed wire form without the terminator)
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a", b"a\r\n"),
            (b"a\r\n", b"a\r\n"),
            (b".", b"..\r\n"),
            (b".\r\n", b"..\r\n"),
            (b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n"),
            (b"a\n.\nb\n", b"a\r\n..\r\nb\r\n"),
            (b"a\r.\rb", b"a\r\n..\r\nb\r\n"),
            (b"a\r\r\n", b"a\r\n\r\n"),
            (b"\n\n", b"\r\n\r\n"),
            (b"\r", b"\r\n"),
            (b"x.y\r\n..z", b"x.y\r\n...z\r\n"),
            (b"a\r\n.\r\n.\r\n", b"a\r\n..\r\n..\r\n"),
        ];
        for &(body, want) in cases {
            for cut in 0..=body.len() {
                let got = encode_all(true, &[&body[..cut], &body[cut..]]);
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(want),
                    "body {:?} split at {cut}",
                    String::from_utf8_lossy(body)
                );
            }
            let bytewise: Vec<&[u8]> = body.chunks(1).collect();
            let got = encode_all(true, &[bytewise.as_slice(), &[b""]].concat());
            assert_eq!(
                got,
                want,
                "body {:?} byte by byte",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn binary_mime_errors_name_what_is_missing() {
        let text = |binary_mime, chunking| {
            ClientError::BinaryMimeNotOffered {
                binary_mime,
                chunking,
            }
            .to_string()
        };
        assert!(text(false, true).contains("does not offer BINARYMIME (it offers CHUNKING)"));
        assert!(text(true, false).contains("does not offer CHUNKING (it offers BINARYMIME)"));
        assert!(text(false, false).contains("does not offer BINARYMIME or CHUNKING"));
    }

    #[test]
    fn capabilities_parse_table() {
        let reply = Reply::multiline(
            ReplyCode::OK,
            None,
            [
                "mx.example greets you",
                "PIPELINING",
                "size 1000",
                "8BITMIME",
                "SMTPUTF8",
                "ENHANCEDSTATUSCODES",
                "CHUNKING",
                "BINARYMIME",
                "DSN",
                "STARTTLS",
                "AUTH PLAIN LOGIN CRAM-MD5",
                "AUTH=LOGIN",
                "REQUIRETLS",
                "X-UNKNOWN foo",
            ],
        );
        let c = Capabilities::parse(&reply);
        assert!(c.pipelining && c.eight_bit_mime && c.smtputf8 && c.enhanced_status_codes);
        assert!(c.chunking && c.binary_mime && c.dsn && c.starttls && c.requiretls);
        assert_eq!(c.size, Some(SizeLimit::Max(1000)));
        assert_eq!(
            c.auth,
            vec![
                Mechanism::Plain,
                Mechanism::Login,
                Mechanism::Other("CRAM-MD5".into())
            ]
        );
        for (line, want) in [
            ("SIZE", Some(SizeLimit::Unlimited)),
            ("SIZE 0", Some(SizeLimit::Unlimited)),
            ("SIZE x", Some(SizeLimit::Unlimited)),
            ("SIZE 52428800", Some(SizeLimit::Max(52_428_800))),
            ("8BITMIME", None),
        ] {
            let r = Reply::multiline(ReplyCode::OK, None, ["mx", line]);
            assert_eq!(Capabilities::parse(&r).size, want, "{line:?}");
        }
        let bare = Reply::new(ReplyCode::OK, None, "mx.example PIPELINING");
        assert_eq!(
            Capabilities::parse(&bare),
            Capabilities::default(),
            "first line skipped"
        );
    }
}

//! The server side of an SMTP session as a pure state machine.
//!
//! All transitions are in [`Session::process`] (one exhaustive `match` on the state) and the
//! command handlers it calls; everything else here is bookkeeping. The session never blocks and
//! never reads a clock: the driver passes `now` to every input.
//!
//! Sequencing rules follow [RFC 5321 section 4.1.4](https://www.rfc-editor.org/rfc/rfc5321#section-4.1.4)
//! and the reply codes [section 4.3.2](https://www.rfc-editor.org/rfc/rfc5321#section-4.3.2).
//! Commands are processed strictly one at a time: while a decision is with the application
//! (an [`Event`] carrying a [`Ticket`]) the session parses nothing further, so pipelined replies
//! ([RFC 2920](https://www.rfc-editor.org/rfc/rfc2920)) always come out in command order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use core::net::SocketAddr;

use thiserror::Error;

use crate::address::{ForwardPath, ReversePath};
use crate::command::{Body, Command, CommandError, MailParams, RcptParams, looks_like_http};
use crate::config::{AuthPolicy, Config};
use crate::data::{DataProblem, DotReader};
use crate::reply::{Reply, ReplyCode};
use crate::sasl::{self, Credentials, SaslState, SaslStep};

/// Facts about the connection that the driver knows before the session starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// Our address on this connection.
    pub local: Option<SocketAddr>,
    /// Set when the connection is TLS from the start (implicit TLS, port 465).
    pub tls: Option<TlsInfo>,
}

impl PeerInfo {
    /// A peer at `remote` reached on `local`, without TLS.
    pub fn new(remote: Option<SocketAddr>, local: Option<SocketAddr>) -> PeerInfo {
        PeerInfo {
            remote,
            local,
            tls: None,
        }
    }
}

/// What a TLS handshake negotiated, for logs and the `Received:` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite, e.g. `TLS_AES_256_GCM_SHA384` (the IANA name).
    pub cipher: String,
    /// The server name the client asked for (SNI).
    pub sni: Option<String>,
}

impl TlsInfo {
    /// TLS facts from their parts.
    pub fn new(
        version: impl Into<String>,
        cipher: impl Into<String>,
        sni: Option<String>,
    ) -> TlsInfo {
        TlsInfo {
            version: version.into(),
            cipher: cipher.into(),
            sni,
        }
    }
}

/// Identifies a decision the session waits for; pass it back to [`Session::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

/// The application's answer to an [`Event`] that carries a [`Ticket`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Accept with the standard reply (250 for MAIL, RCPT and the message, 235 for AUTH).
    Accept,
    /// Accept with the standard code and this text (e.g. "Ok: queued as 1A2B").
    AcceptWithText(String),
    /// Refuse with this reply, which must be 4xx or 5xx. A 421 closes the session after it.
    Reject(Reply),
}

/// Something the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Write this reply to the peer.
    Send(Reply),
    /// Something the application must know or decide.
    Event(Event),
    /// Flush what was sent, then run the TLS handshake as server and call
    /// [`Session::handle_tls_established`]; read no plaintext before it.
    StartTls,
    /// Flush what was sent and close the connection. Nothing follows.
    Close,
}

/// What the session tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// `MAIL FROM` passed the session's checks: may this sender start a transaction?
    Mail {
        /// Answer with [`Session::resolve`].
        ticket: Ticket,
        /// The reverse path.
        from: ReversePath,
        /// Its parameters.
        params: MailParams,
    },
    /// `RCPT TO` passed the session's checks: is this recipient acceptable?
    Rcpt {
        /// Answer with [`Session::resolve`].
        ticket: Ticket,
        /// The forward path.
        to: ForwardPath,
        /// Its parameters.
        params: RcptParams,
    },
    /// AUTH finished its SASL exchange: are these credentials right?
    Auth {
        /// Answer with [`Session::resolve`].
        ticket: Ticket,
        /// What the client presented.
        credentials: Credentials,
    },
    /// The message body begins (after the 354 to DATA, or with the first BDAT chunk).
    MessageStart,
    /// A piece of the message body, in order, dot-unstuffed, CRLF line endings.
    MessageData(Vec<u8>),
    /// The whole body has arrived. Make it durable, then accept (250) or reject.
    MessageEnd {
        /// Answer with [`Session::resolve`].
        ticket: Ticket,
    },
    /// The transaction begun with an accepted MAIL is abandoned (RSET, a new EHLO, a refused
    /// body, the connection ending...): forget its envelope and any body received.
    TransactionAborted,
}

impl Event {
    /// The ticket to answer with [`Session::resolve`], for the events that wait for a verdict.
    /// Drivers should resolve every event for which this is `Some`, including variants added
    /// in later versions: the session reads nothing more until they do.
    pub fn ticket(&self) -> Option<Ticket> {
        match self {
            Event::Mail { ticket, .. }
            | Event::Rcpt { ticket, .. }
            | Event::Auth { ticket, .. }
            | Event::MessageEnd { ticket } => Some(*ticket),
            Event::MessageStart | Event::MessageData(_) | Event::TransactionAborted => None,
        }
    }
}

/// Misuse of the session API by the driver or application (never caused by the peer).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The ticket is not the one the session is waiting for.
    #[error("no decision is pending for this ticket")]
    UnknownTicket,
    /// A rejection must carry a 4xx or 5xx reply.
    #[error("a rejection needs a 4xx or 5xx reply, got {0}")]
    NotARejection(ReplyCode),
    /// `handle_tls_established` without a preceding [`Action::StartTls`].
    #[error("TLS was not requested by the session")]
    TlsNotRequested,
}

/// What a pending ticket is about.
#[derive(Debug)]
enum Pending {
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt,
    Auth {
        user: String,
    },
    Message,
}

/// How a BDAT chunk is answered once its octets are consumed.
#[derive(Debug)]
enum ChunkEnd {
    /// 250 with the chunk size.
    Ack(u64),
    /// The last chunk: ask the application about the message.
    Last,
    /// Refused: send this error reply (the octets are discarded).
    Refuse(Reply),
}

/// The session's state. Every transition is in [`Session::process`] and the handlers.
#[derive(Debug)]
enum State {
    /// Reading command lines.
    Command,
    /// Reading the next SASL response line.
    Auth(SaslState),
    /// Reading message data after DATA.
    Data(DotReader),
    /// Reading the octets of a BDAT chunk.
    Chunk { remaining: u64, end: ChunkEnd },
    /// Waiting for the application's verdict.
    Pending(Ticket, Pending),
    /// After 220 to STARTTLS, waiting for the handshake.
    TlsHandshake,
    /// Closed; nothing more is read.
    Closed,
}

/// How the client greeted us.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Greeting {
    None,
    Helo(String),
    Ehlo(String),
}

/// How the current message body is arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyMode {
    NotStarted,
    Bdat { received: u64 },
}

/// A transaction opened by an accepted MAIL.
#[derive(Debug)]
struct Transaction {
    params: MailParams,
    utf8: bool,
    recipients: usize,
    body: BodyMode,
}

/// The server side of one SMTP connection.
///
/// Call order:
/// 1. [`Session::new`] queues the 220 greeting.
/// 2. Feed what arrives: [`handle_input`](Session::handle_input), [`handle_eof`](Session::handle_eof),
///    [`handle_timeout`](Session::handle_timeout) when [`poll_timeout`](Session::poll_timeout)
///    passes, [`handle_tls_established`](Session::handle_tls_established) after
///    [`Action::StartTls`], and [`resolve`](Session::resolve) for each [`Event`] with a ticket.
/// 3. After every input, drain [`poll_action`](Session::poll_action) until `None`, carrying out
///    each action in order, then read `poll_timeout` again.
///
/// Getters ([`helo`](Session::helo), [`tls`](Session::tls),
/// [`authenticated`](Session::authenticated), ...) describe the session for logs and headers.
#[derive(Debug)]
pub struct Session {
    config: Arc<Config>,
    peer: PeerInfo,
    state: State,
    actions: VecDeque<Action>,
    input: Vec<u8>,
    /// Bytes of `input` already scanned for a line end without finding one (resumable search).
    scanned: usize,
    /// Set while a too-long line is being skipped up to its LF.
    skipping_line: bool,
    body: Vec<u8>,
    greeting: Greeting,
    tls: Option<TlsInfo>,
    authenticated: Option<String>,
    transaction: Option<Transaction>,
    lines_seen: u64,
    /// Set by [`Session::handle_shutdown`]: close as soon as no transaction is open.
    draining: bool,
    errors: u32,
    next_ticket: u64,
    idle_deadline: Option<Instant>,
    session_deadline: Instant,
}

impl Session {
    /// Starts a session at `now` and queues the 220 greeting.
    pub fn new(config: Arc<Config>, peer: PeerInfo, now: Instant) -> Session {
        let session_deadline = now + config.timeouts.session;
        let greeting = Reply::new(
            ReplyCode::READY,
            None,
            format!("{} {}", config.hostname, config.greeting),
        );
        let tls = peer.tls.clone();
        let mut s = Session {
            config,
            peer,
            state: State::Command,
            actions: VecDeque::new(),
            input: Vec::new(),
            scanned: 0,
            skipping_line: false,
            body: Vec::new(),
            greeting: Greeting::None,
            tls,
            authenticated: None,
            transaction: None,
            lines_seen: 0,
            draining: false,
            errors: 0,
            next_ticket: 0,
            idle_deadline: None,
            session_deadline,
        };
        s.actions.push_back(Action::Send(greeting));
        s.arm_idle(now);
        s
    }

    // ----- getters -----

    /// The configuration the session runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the driver told us about the connection.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The name the client gave in EHLO or HELO.
    pub fn helo(&self) -> Option<&str> {
        match &self.greeting {
            Greeting::None => None,
            Greeting::Helo(n) | Greeting::Ehlo(n) => Some(n),
        }
    }

    /// Whether the client greeted with EHLO (ESMTP).
    pub fn is_esmtp(&self) -> bool {
        matches!(self.greeting, Greeting::Ehlo(_))
    }

    /// TLS facts, once TLS is active.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The user name of a successful AUTH.
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether the driver should read more input now. False while a verdict is pending (input
    /// keeps arriving is buffered up to `Limits::max_pending_input`), during the TLS handshake,
    /// and once closed.
    pub fn wants_input(&self) -> bool {
        !matches!(
            self.state,
            State::Pending(..) | State::TlsHandshake | State::Closed
        )
    }

    /// Bytes of input the session holds: never more than the line limits plus one input.
    pub fn buffered_len(&self) -> usize {
        self.input.len() + self.body.len()
    }

    // ----- inputs -----

    /// Bytes from the peer.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        match self.state {
            State::Closed => return,
            // RFC 3207 4.2: the client must wait for the handshake; anything it pipelined after
            // STARTTLS in plaintext is discarded, never read as commands.
            State::TlsHandshake => return,
            State::Pending(..)
                if self.input.len() + bytes.len() > self.config.limits.max_pending_input =>
            {
                self.input.clear();
                self.fatal(Reply::of(
                    ReplyCode::SERVICE_UNAVAILABLE,
                    (4, 5, 0),
                    format!("{} Too much pipelined input, closing", self.config.hostname),
                ));
                return;
            }
            _ => {}
        }
        self.input.extend_from_slice(bytes);
        self.process(now);
    }

    /// The peer closed its side. The session closes without a reply.
    pub fn handle_eof(&mut self, _now: Instant) {
        if !self.is_closed() {
            self.close();
        }
    }

    /// The time from [`poll_timeout`](Session::poll_timeout) has come. Early calls are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.poll_timeout() {
            Some(deadline) if now >= deadline => {
                // RFC 5321 4.5.3.2: "the server [...] SHOULD [...] close the connection".
                self.fatal(Reply::of(
                    ReplyCode::SERVICE_UNAVAILABLE,
                    (4, 4, 2),
                    format!("{} Timeout, closing connection", self.config.hostname),
                ));
            }
            _ => {}
        }
    }

    /// The server is shutting down: close as soon as no transaction is open, with
    /// `421 4.3.2` (RFC 5321 3.8: "the server [...] MAY [...] send a 421 response [...] and
    /// close"; RFC 3463 X.3.2 "System not accepting network messages"). An idle session closes
    /// at once; one inside a transaction finishes it (its message is answered) first.
    pub fn handle_shutdown(&mut self, now: Instant) {
        if self.is_closed() || self.draining {
            return;
        }
        self.draining = true;
        self.process(now);
    }

    /// The TLS handshake requested by [`Action::StartTls`] completed.
    /// RFC 3207 4.2: "the SMTP protocol is reset to the initial state (the state in SMTP after a
    /// server issues a 220 service ready greeting)"; the client must send EHLO again.
    pub fn handle_tls_established(&mut self, now: Instant, tls: TlsInfo) -> Result<(), UsageError> {
        if !matches!(self.state, State::TlsHandshake) {
            return Err(UsageError::TlsNotRequested);
        }
        self.tls = Some(tls);
        self.greeting = Greeting::None;
        self.authenticated = None;
        self.transaction = None;
        self.input.clear();
        self.scanned = 0;
        self.skipping_line = false;
        self.state = State::Command;
        self.arm_idle(now);
        Ok(())
    }

    /// The application's verdict on the event that carried `ticket`.
    /// After the session closed, verdicts are accepted and ignored.
    pub fn resolve(
        &mut self,
        now: Instant,
        ticket: Ticket,
        verdict: Verdict,
    ) -> Result<(), UsageError> {
        if self.is_closed() {
            return Ok(());
        }
        if let Verdict::Reject(r) = &verdict
            && !r.code().is_negative()
        {
            return Err(UsageError::NotARejection(r.code()));
        }
        let pending = match std::mem::replace(&mut self.state, State::Command) {
            State::Pending(t, p) if t == ticket => p,
            other => {
                self.state = other;
                return Err(UsageError::UnknownTicket);
            }
        };
        let custom = match &verdict {
            Verdict::AcceptWithText(t) => Some(t.clone()),
            _ => None,
        };
        let text = |default: &str| custom.clone().unwrap_or_else(|| default.to_string());
        match (pending, verdict) {
            (_, Verdict::Reject(reply)) if reply.code() == ReplyCode::SERVICE_UNAVAILABLE => {
                self.fatal(reply);
                return Ok(());
            }
            // Failed logins count as errors (a brute-force client gets cut off); refused
            // senders and recipients do not, so a list with stale addresses still gets through.
            (Pending::Auth { .. }, Verdict::Reject(reply)) => self.fail(reply),
            (Pending::Message, Verdict::Reject(reply)) => {
                // A refused message ends its transaction; the application knows why.
                self.transaction = None;
                self.send(reply);
            }
            (Pending::Mail { .. } | Pending::Rcpt, Verdict::Reject(reply)) => self.send(reply),
            (Pending::Mail { from, params }, _) => {
                let utf8 = params.smtputf8;
                let who = from.to_string();
                self.transaction = Some(Transaction {
                    params,
                    utf8,
                    recipients: 0,
                    body: BodyMode::NotStarted,
                });
                self.send(Reply::of(
                    ReplyCode::OK,
                    (2, 1, 0),
                    text(&format!("Sender {who} OK")),
                ));
            }
            (Pending::Rcpt, _) => {
                if let Some(t) = &mut self.transaction {
                    t.recipients += 1;
                }
                self.send(Reply::of(ReplyCode::OK, (2, 1, 5), text("Recipient OK")));
            }
            (Pending::Auth { user }, _) => {
                self.authenticated = Some(user);
                self.send(Reply::of(
                    ReplyCode::AUTH_OK,
                    (2, 7, 0),
                    text("Authentication successful"),
                ));
            }
            (Pending::Message, _) => {
                self.transaction = None;
                self.send(Reply::of(
                    ReplyCode::OK,
                    (2, 0, 0),
                    text("Message accepted"),
                ));
            }
        }
        self.arm_idle(now);
        self.process(now);
        Ok(())
    }

    // ----- outputs -----

    /// The next thing to do, in order.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call [`handle_timeout`](Session::handle_timeout). `None` once closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        Some(match self.idle_deadline {
            Some(idle) => idle.min(self.session_deadline),
            None => self.session_deadline,
        })
    }

    // ----- the state machine -----

    /// Consumes buffered input as far as the state allows. The only place that moves between
    /// reading states.
    fn process(&mut self, now: Instant) {
        let mut at = 0;
        let waiting_before = self.waiting_for();
        // Complete lines taken, and message octets taken: what moves the read deadline.
        let mut lines = false;
        let mut octets: u64 = 0;
        loop {
            match &mut self.state {
                State::Closed | State::Pending(..) | State::TlsHandshake => break,
                State::Command if self.draining && self.transaction.is_none() => {
                    self.fatal(Reply::of(
                        ReplyCode::SERVICE_UNAVAILABLE,
                        (4, 3, 2),
                        format!(
                            "{} Service shutting down, try again later",
                            self.config.hostname
                        ),
                    ));
                }
                State::Command => {
                    let limit = self.command_limit(at);
                    match self.take_line(&mut at, limit) {
                        LineRead::Line(range) => {
                            lines = true;
                            let line = self.input[range].to_vec();
                            self.on_command_line(&line);
                        }
                        LineRead::BareLf => {
                            lines = true;
                            self.fail(bare_lf());
                        }
                        LineRead::TooLong => {
                            lines = true;
                            self.fail(Reply::of(
                                ReplyCode::SYNTAX_ERROR,
                                (5, 5, 2),
                                "Line too long",
                            ));
                        }
                        LineRead::Incomplete => break,
                    }
                }
                State::Auth(_) => {
                    let limit = self.config.limits.max_auth_line;
                    match self.take_line(&mut at, limit) {
                        LineRead::Line(range) => {
                            lines = true;
                            let line = self.input[range].to_vec();
                            let State::Auth(st) =
                                std::mem::replace(&mut self.state, State::Command)
                            else {
                                unreachable!("matched above")
                            };
                            let step = sasl::step(st, &line);
                            self.on_sasl_step(step);
                        }
                        LineRead::BareLf => {
                            lines = true;
                            self.state = State::Command;
                            self.fail(bare_lf());
                        }
                        LineRead::TooLong => {
                            lines = true;
                            self.state = State::Command;
                            self.fail(Reply::of(
                                ReplyCode::SYNTAX_ERROR,
                                (5, 5, 6),
                                "Authentication line too long",
                            ));
                        }
                        LineRead::Incomplete => break,
                    }
                }
                State::Data(reader) => {
                    let limit = self.config.limits.max_chunk;
                    let fed = reader.feed(&self.input[at..], &mut self.body, limit);
                    let problem = reader.problem();
                    at += fed.consumed;
                    octets += fed.consumed as u64;
                    if self.body.len() >= limit {
                        self.flush_body();
                    }
                    if fed.done {
                        self.end_of_data(problem);
                    } else if at == self.input.len() {
                        break;
                    }
                }
                State::Chunk { remaining, .. } => {
                    let available = (self.input.len() - at) as u64;
                    let take = (*remaining)
                        .min(available)
                        .min(self.config.limits.max_chunk as u64);
                    *remaining -= take;
                    octets += take;
                    let done = *remaining == 0;
                    let take = take as usize; // at most max_chunk
                    if self.transaction_accepts_chunk_bytes() {
                        self.body.extend_from_slice(&self.input[at..at + take]);
                    }
                    at += take;
                    if self.body.len() >= self.config.limits.max_chunk {
                        self.flush_body();
                    }
                    if done {
                        let State::Chunk { end, .. } =
                            std::mem::replace(&mut self.state, State::Command)
                        else {
                            unreachable!("matched above")
                        };
                        self.end_of_chunk(end);
                    } else if at == self.input.len() {
                        break;
                    }
                }
            }
        }
        self.flush_body();
        self.input.drain(..at.min(self.input.len()));
        self.scanned = self.scanned.saturating_sub(at);
        if self.input.is_empty() {
            self.scanned = 0;
        }
        if matches!(self.state, State::Pending(..)) {
            self.idle_deadline = None;
        } else if self.is_closed() {
            // Nothing more is read.
        } else if lines || self.idle_deadline.is_none() || self.waiting_for() != waiting_before {
            self.arm_idle(now);
        } else if octets > 0 {
            self.credit_octets(now, octets);
        }
    }

    /// One command line (CRLF removed).
    fn on_command_line(&mut self, line: &[u8]) {
        self.lines_seen += 1;
        if self.lines_seen == 1 && looks_like_http(line) {
            self.fatal(Reply::of(
                ReplyCode::NOT_IMPLEMENTED,
                (5, 7, 0),
                "This is an SMTP server, not a web server; closing",
            ));
            return;
        }
        if line.contains(&b'\r') {
            self.fail(Reply::of(
                ReplyCode::SYNTAX_ERROR,
                (5, 5, 2),
                "Bare CR in command line",
            ));
            return;
        }
        let command = match Command::parse(line) {
            Ok(c) => c,
            Err(CommandError::BadChunkSize) => {
                // Without a size we cannot tell where the chunk ends: stay safe and close.
                self.fatal(CommandError::BadChunkSize.reply());
                return;
            }
            Err(e) => {
                self.fail(e.reply());
                return;
            }
        };
        self.on_command(command);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Ehlo(name) => {
                self.abort_transaction();
                let reply = self.ehlo_reply(&name);
                self.greeting = Greeting::Ehlo(name);
                self.send(reply);
            }
            Command::Helo(name) => {
                self.abort_transaction();
                self.greeting = Greeting::Helo(name);
                self.send(Reply::new(ReplyCode::OK, None, self.config.hostname.clone()));
            }
            Command::Mail { from, params } => self.on_mail(from, params),
            Command::Rcpt { to, params } => self.on_rcpt(to, params),
            Command::Data => self.on_data(),
            Command::Bdat { size, last } => self.on_bdat(size, last),
            Command::Rset => {
                self.abort_transaction();
                self.send(Reply::of(ReplyCode::OK, (2, 0, 0), "Reset OK"));
            }
            Command::Noop => self.send(Reply::of(ReplyCode::OK, (2, 0, 0), "OK")),
            Command::Quit => {
                self.abort_transaction();
                self.send(Reply::of(
                    ReplyCode::CLOSING,
                    (2, 0, 0),
                    format!("{} closing connection", self.config.hostname),
                ));
                self.close();
            }
            // RFC 5321 3.5.3: 252 when the server will not verify.
            Command::Vrfy(_) => self.send(Reply::of(
                ReplyCode::CANNOT_VRFY,
                (2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            // RFC 5321 3.5.2 allows not implementing EXPN; mailing lists are not disclosed.
            Command::Expn(_) => self.send(Reply::of(ReplyCode::NOT_IMPLEMENTED, (5, 5, 1), "EXPN not available")),
            Command::Help(_) => self.send(Reply::multiline(
                ReplyCode::HELP,
                crate::reply::EnhancedStatus::new(2, 0, 0),
                [
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
                    "See RFC 5321",
                ],
            )),
            Command::StartTls => self.on_starttls(),
            Command::Auth { mechanism, initial } => self.on_auth(mechanism, initial),
        }
    }

    fn ehlo_reply(&self, client: &str) -> Reply {
        let ext = &self.config.extensions;
        let mut lines = vec![format!("{} greets {}", self.config.hostname, client)];
        let mut add = |on: bool, s: String| {
            if on {
                lines.push(s)
            }
        };
        add(ext.pipelining, "PIPELINING".into());
        add(
            ext.size,
            format!("SIZE {}", self.config.limits.max_message_size),
        );
        add(ext.eight_bit_mime, "8BITMIME".into());
        add(ext.smtputf8, "SMTPUTF8".into());
        add(ext.enhanced_status_codes, "ENHANCEDSTATUSCODES".into());
        add(ext.chunking, "CHUNKING".into());
        add(ext.chunking && ext.binary_mime, "BINARYMIME".into());
        add(ext.dsn, "DSN".into());
        add(ext.starttls && self.tls.is_none(), "STARTTLS".into());
        add(self.auth_offered(), "AUTH PLAIN LOGIN".into());
        add(ext.requiretls && self.tls.is_some(), "REQUIRETLS".into());
        // RFC 2034 3: no enhanced status code on the EHLO reply.
        Reply::multiline(ReplyCode::OK, None, lines)
    }

    fn auth_offered(&self) -> bool {
        match self.config.auth {
            AuthPolicy::Never => false,
            AuthPolicy::TlsOnly => self.tls.is_some(),
            AuthPolicy::AllowPlaintext => true,
        }
    }

    fn on_mail(&mut self, from: ReversePath, params: MailParams) {
        if matches!(self.greeting, Greeting::None) {
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "Send EHLO or HELO first",
            ));
        }
        if self.transaction.is_some() {
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "Nested MAIL command",
            ));
        }
        if self.config.require_auth && self.authenticated.is_none() {
            return self.fail(Reply::of(
                ReplyCode::AUTH_REQUIRED,
                (5, 7, 0),
                "Authentication required",
            ));
        }
        let ext = self.config.extensions;
        let esmtp = self.is_esmtp();
        let offered = [
            ("SIZE", params.size.is_some(), ext.size),
            (
                "BODY",
                params.body.is_some(),
                match params.body {
                    Some(Body::BinaryMime) => ext.chunking && ext.binary_mime,
                    _ => ext.eight_bit_mime,
                },
            ),
            ("SMTPUTF8", params.smtputf8, ext.smtputf8),
            ("RET", params.ret.is_some(), ext.dsn),
            ("ENVID", params.envid.is_some(), ext.dsn),
            ("AUTH", params.auth.is_some(), self.auth_offered()),
            (
                "REQUIRETLS",
                params.requiretls,
                ext.requiretls && self.tls.is_some(),
            ),
        ];
        if let Some((name, ..)) = offered
            .iter()
            .find(|(_, used, ok)| *used && !(esmtp && *ok))
        {
            return self.fail(Reply::of(
                ReplyCode::PARAMS_NOT_RECOGNIZED,
                (5, 5, 4),
                format!("Parameter {name} not supported here"),
            ));
        }
        // RFC 1870 6: "552 [...] message size exceeds fixed maximum message size".
        if params
            .size
            .is_some_and(|s| s > self.config.limits.max_message_size)
        {
            return self.fail(Reply::of(
                ReplyCode::EXCEEDED_STORAGE,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ));
        }
        // RFC 6531 3.5: a non-ASCII address without SMTPUTF8 -> 553 5.6.7.
        if let ReversePath::Mailbox(m) = &from
            && !m.is_ascii()
            && !params.smtputf8
        {
            return self.fail(Reply::of(
                ReplyCode::MAILBOX_NAME_NOT_ALLOWED,
                (5, 6, 7),
                "Non-ASCII address requires SMTPUTF8",
            ));
        }
        let ticket = self.ticket();
        self.emit(Event::Mail {
            ticket,
            from: from.clone(),
            params: params.clone(),
        });
        self.state = State::Pending(ticket, Pending::Mail { from, params });
    }

    fn on_rcpt(&mut self, to: ForwardPath, params: RcptParams) {
        let Some(t) = &self.transaction else {
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "Need MAIL before RCPT",
            ));
        };
        if self.body_started() {
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "RCPT not allowed during BDAT",
            ));
        }
        // RFC 5321 4.5.3.1.10: "452 Too many recipients" (not counted as a client error).
        if t.recipients >= self.config.limits.max_recipients {
            return self.send(Reply::of(
                ReplyCode::INSUFFICIENT_STORAGE,
                (4, 5, 3),
                "Too many recipients",
            ));
        }
        if (params.notify.is_some() || params.orcpt.is_some())
            && !(self.is_esmtp() && self.config.extensions.dsn)
        {
            return self.fail(Reply::of(
                ReplyCode::PARAMS_NOT_RECOGNIZED,
                (5, 5, 4),
                "DSN parameters not supported here",
            ));
        }
        if let ForwardPath::Mailbox(m) = &to
            && !m.is_ascii()
            && !t.utf8
        {
            return self.fail(Reply::of(
                ReplyCode::MAILBOX_NAME_NOT_ALLOWED,
                (5, 6, 7),
                "Non-ASCII address requires SMTPUTF8",
            ));
        }
        let ticket = self.ticket();
        self.emit(Event::Rcpt { ticket, to, params });
        self.state = State::Pending(ticket, Pending::Rcpt);
    }

    fn on_data(&mut self) {
        let Some(t) = &self.transaction else {
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "Need MAIL and RCPT before DATA",
            ));
        };
        if self.body_started() {
            // RFC 3030 2: DATA after BDAT in the same transaction is a sequence error.
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "DATA not allowed after BDAT",
            ));
        }
        if t.params.body == Some(Body::BinaryMime) {
            // RFC 3030 3: BINARYMIME data can only be sent with BDAT.
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "BODY=BINARYMIME requires BDAT",
            ));
        }
        if t.recipients == 0 {
            // RFC 5321 3.3: "no valid recipients" (554).
            return self.fail(Reply::of(
                ReplyCode::TRANSACTION_FAILED,
                (5, 5, 1),
                "No valid recipients",
            ));
        }
        self.emit(Event::MessageStart);
        self.send(Reply::new(
            ReplyCode::START_MAIL_INPUT,
            None,
            "End data with <CR><LF>.<CR><LF>",
        ));
        let limits = self.config.limits;
        self.state = State::Data(DotReader::new(
            limits.max_message_size,
            limits.max_text_line,
        ));
    }

    fn end_of_data(&mut self, problem: Option<DataProblem>) {
        self.flush_body();
        let refusal = match problem {
            None => {
                let ticket = self.ticket();
                self.emit(Event::MessageEnd { ticket });
                self.state = State::Pending(ticket, Pending::Message);
                return;
            }
            Some(DataProblem::BareLineEnding) => Reply::of(
                ReplyCode::TRANSACTION_FAILED,
                (5, 6, 0),
                "Message refused: bare CR or LF in data (RFC 5321 2.3.8)",
            ),
            Some(DataProblem::LineTooLong) => Reply::of(
                ReplyCode::SYNTAX_ERROR,
                (5, 5, 2),
                "Message refused: line too long",
            ),
            Some(DataProblem::Nul) => Reply::of(
                ReplyCode::TRANSACTION_FAILED,
                (5, 6, 0),
                "Message refused: NUL character in data",
            ),
            Some(DataProblem::TooBig) => Reply::of(
                ReplyCode::EXCEEDED_STORAGE,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ),
        };
        self.state = State::Command;
        self.abort_transaction();
        self.fail(refusal);
    }

    fn on_bdat(&mut self, size: u64, last: bool) {
        if size > self.config.limits.max_message_size {
            // A chunk larger than any message we take. RFC 3030 2 has the server read a
            // refused chunk's octets anyway, to stay in step with the client; reading up to
            // 2^64 octets for nothing is a flood, so the chunk is refused before any of them
            // is read and the session closes (what follows could not be read as commands).
            self.abort_transaction();
            self.fatal(Reply::of(
                ReplyCode::EXCEEDED_STORAGE,
                (5, 3, 4),
                "Chunk exceeds fixed maximum message size; closing",
            ));
            return;
        }
        let refuse =
            |code, e: (u8, u16, u16), text: &str| ChunkEnd::Refuse(Reply::of(code, e, text));
        let end = if !(self.is_esmtp() && self.config.extensions.chunking) {
            refuse(ReplyCode::NOT_IMPLEMENTED, (5, 5, 1), "BDAT not available")
        } else if self.transaction.is_none() {
            refuse(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "Need MAIL and RCPT before BDAT",
            )
        } else if self.transaction.as_ref().is_some_and(|t| t.recipients == 0) {
            refuse(
                ReplyCode::TRANSACTION_FAILED,
                (5, 5, 1),
                "No valid recipients",
            )
        } else {
            let received = match self.transaction.as_ref().map(|t| t.body) {
                Some(BodyMode::Bdat { received }) => received,
                _ => {
                    self.emit(Event::MessageStart);
                    0
                }
            };
            let total = received.saturating_add(size);
            if let Some(t) = &mut self.transaction {
                t.body = BodyMode::Bdat { received: total };
            }
            if total > self.config.limits.max_message_size {
                // RFC 3030 2: the transaction fails; the chunk's octets are still consumed.
                self.abort_transaction();
                refuse(
                    ReplyCode::EXCEEDED_STORAGE,
                    (5, 3, 4),
                    "Message size exceeds fixed maximum message size",
                )
            } else if last {
                ChunkEnd::Last
            } else {
                ChunkEnd::Ack(size)
            }
        };
        self.state = State::Chunk {
            remaining: size,
            end,
        };
    }

    fn end_of_chunk(&mut self, end: ChunkEnd) {
        self.flush_body();
        match end {
            ChunkEnd::Ack(n) => self.send(Reply::of(
                ReplyCode::OK,
                (2, 0, 0),
                format!("{n} octets received"),
            )),
            ChunkEnd::Last => {
                let ticket = self.ticket();
                self.emit(Event::MessageEnd { ticket });
                self.state = State::Pending(ticket, Pending::Message);
            }
            ChunkEnd::Refuse(reply) => self.fail(reply),
        }
    }

    fn on_starttls(&mut self) {
        if !self.config.extensions.starttls {
            return self.fail(Reply::of(
                ReplyCode::NOT_IMPLEMENTED,
                (5, 5, 1),
                "STARTTLS not available",
            ));
        }
        if self.tls.is_some() {
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "TLS already active",
            ));
        }
        if self.transaction.is_some() || self.authenticated.is_some() {
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "STARTTLS not allowed inside a transaction or after AUTH",
            ));
        }
        self.send(Reply::of(ReplyCode::READY, (2, 0, 0), "Ready to start TLS"));
        self.actions.push_back(Action::StartTls);
        self.state = State::TlsHandshake;
    }

    fn on_auth(&mut self, mechanism: crate::command::Mechanism, initial: Option<String>) {
        if self.config.auth == AuthPolicy::Never {
            return self.fail(Reply::of(
                ReplyCode::NOT_IMPLEMENTED,
                (5, 5, 1),
                "AUTH not available",
            ));
        }
        if !self.is_esmtp() {
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "Send EHLO first",
            ));
        }
        if self.authenticated.is_some() {
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "Already authenticated",
            ));
        }
        if self.transaction.is_some() {
            return self.fail(Reply::of(
                ReplyCode::BAD_SEQUENCE,
                (5, 5, 1),
                "AUTH not allowed inside a transaction",
            ));
        }
        if !self.auth_offered() {
            // RFC 4954 6: 538 "Encryption required for requested authentication mechanism".
            return self.fail(Reply::of(
                ReplyCode::ENCRYPTION_REQUIRED,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        let step = sasl::start(&mechanism, initial.as_deref());
        self.on_sasl_step(step);
    }

    fn on_sasl_step(&mut self, step: SaslStep) {
        match step {
            SaslStep::Continue(challenge, st) => {
                self.send(challenge);
                self.state = State::Auth(st);
            }
            SaslStep::Done(credentials) => {
                let ticket = self.ticket();
                let user = credentials
                    .authzid
                    .clone()
                    .unwrap_or_else(|| credentials.authcid.clone());
                self.emit(Event::Auth {
                    ticket,
                    credentials,
                });
                self.state = State::Pending(ticket, Pending::Auth { user });
            }
            SaslStep::Fail(reply) => {
                self.state = State::Command;
                self.fail(reply);
            }
        }
    }

    // ----- helpers -----

    /// The longest command line allowed for what is buffered at `at`: AUTH lines may carry an
    /// initial response as long as a SASL line (RFC 4954 4).
    fn command_limit(&self, at: usize) -> usize {
        let rest = &self.input[at..];
        if rest.len() >= 5 && rest[..5].eq_ignore_ascii_case(b"AUTH ") {
            self.config
                .limits
                .max_auth_line
                .max(self.config.limits.max_command_line)
        } else {
            self.config.limits.max_command_line
        }
    }

    /// Takes one line ending in CRLF (removed) starting at `*at`. A line ending in LF alone
    /// is reported as [`LineRead::BareLf`]. A line longer than `limit` (its line end
    /// included) is skipped to its LF and reported once as too long. The bytes of either are
    /// never interpreted.
    fn take_line(&mut self, at: &mut usize, limit: usize) -> LineRead {
        let start = *at;
        let from = start
            + self
                .scanned
                .saturating_sub(start)
                .min(self.input.len() - start);
        match self.input[from..].iter().position(|&b| b == b'\n') {
            Some(rel) => {
                let lf = from + rel;
                *at = lf + 1;
                self.scanned = 0;
                if self.skipping_line {
                    self.skipping_line = false;
                    return LineRead::TooLong;
                }
                if lf + 1 - start > limit {
                    return LineRead::TooLong;
                }
                if lf > start && self.input[lf - 1] == b'\r' {
                    LineRead::Line(start..lf - 1)
                } else {
                    LineRead::BareLf
                }
            }
            None => {
                if self.skipping_line || self.input.len() - start > limit {
                    // Drop what we have of the long line; keep skipping.
                    self.skipping_line = true;
                    *at = self.input.len();
                    self.scanned = 0;
                } else {
                    self.scanned = self.input.len();
                }
                LineRead::Incomplete
            }
        }
    }

    fn body_started(&self) -> bool {
        matches!(
            self.transaction.as_ref().map(|t| t.body),
            Some(BodyMode::Bdat { .. })
        )
    }

    fn transaction_accepts_chunk_bytes(&self) -> bool {
        matches!(
            &self.state,
            State::Chunk {
                end: ChunkEnd::Ack(_) | ChunkEnd::Last,
                ..
            }
        )
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        Ticket(self.next_ticket)
    }

    fn emit(&mut self, event: Event) {
        self.actions.push_back(Action::Event(event));
    }

    fn flush_body(&mut self) {
        if !self.body.is_empty() {
            let chunk = std::mem::take(&mut self.body);
            self.emit(Event::MessageData(chunk));
        }
    }

    /// Queues a reply, without its enhanced code if the extension is off.
    fn send(&mut self, reply: Reply) {
        let reply = if self.config.extensions.enhanced_status_codes {
            reply
        } else {
            reply.without_enhanced()
        };
        self.actions.push_back(Action::Send(reply));
    }

    /// Queues an error reply and counts it; at `max_errors` answers 421 and closes instead.
    fn fail(&mut self, reply: Reply) {
        self.errors += 1;
        if self.errors >= self.config.limits.max_errors {
            self.fatal(Reply::of(
                ReplyCode::SERVICE_UNAVAILABLE,
                (4, 7, 0),
                format!(
                    "{} Too many errors, closing connection",
                    self.config.hostname
                ),
            ));
        } else {
            self.send(reply);
        }
    }

    /// Sends a last reply and closes. The reply still goes out before [`Action::Close`].
    fn fatal(&mut self, reply: Reply) {
        self.send(reply);
        self.close();
    }

    /// Ends any transaction, telling the application if one was open.
    fn abort_transaction(&mut self) {
        if self.transaction.take().is_some() {
            self.body.clear();
            self.emit(Event::TransactionAborted);
        }
    }

    fn close(&mut self) {
        // The application saw the MAIL event; it learns the transaction never started.
        if matches!(self.state, State::Pending(_, Pending::Mail { .. })) {
            self.emit(Event::TransactionAborted);
        }
        self.abort_transaction();
        self.state = State::Closed;
        self.input = Vec::new();
        self.idle_deadline = None;
        self.actions.push_back(Action::Close);
    }

    /// Starts a fresh wait for what the state reads next: a command line gets
    /// `timeouts.command` in all (bytes of a line that does not end do not extend it), message
    /// data gets `timeouts.data` and then what [`Session::credit_octets`] adds.
    fn arm_idle(&mut self, now: Instant) {
        let t = &self.config.timeouts;
        self.idle_deadline = match self.waiting_for() {
            Waiting::Octets => Some(now + t.data),
            Waiting::Nothing => None,
            Waiting::Line => Some(now + t.command),
        };
    }

    /// Message octets arrived: each earns `1 / min_data_rate` seconds more, up to
    /// `timeouts.data` from now. A client sending slower than the rate runs out of time
    /// however often it sends a byte; one faster never does unless it stalls for
    /// `timeouts.data`. A rate of 0 restarts the full data timeout on every read.
    fn credit_octets(&mut self, now: Instant, octets: u64) {
        let t = &self.config.timeouts;
        let cap = now + t.data;
        let rate = u64::from(t.min_data_rate);
        self.idle_deadline = Some(match self.idle_deadline {
            Some(deadline) if rate > 0 => {
                let earned = Duration::from_nanos(octets.saturating_mul(1_000_000_000) / rate);
                (deadline + earned).min(cap)
            }
            _ => cap,
        });
    }

    /// What the state is reading, for the read deadline.
    fn waiting_for(&self) -> Waiting {
        match self.state {
            State::Data(_) | State::Chunk { .. } => Waiting::Octets,
            State::Pending(..) | State::Closed => Waiting::Nothing,
            State::Command | State::Auth(_) | State::TlsHandshake => Waiting::Line,
        }
    }
}

// Drivers hold `&Session` across awaits in multi-threaded executors.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Session>();
};

enum LineRead {
    Line(std::ops::Range<usize>),
    /// A line ended by LF alone; its bytes are never interpreted.
    BareLf,
    TooLong,
    Incomplete,
}

/// What a read deadline is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Line,
    Octets,
    Nothing,
}

/// RFC 5321 2.3.8: lines end with CRLF. A bare LF is refused rather than read as a line end,
/// so that client and server never disagree about where a command ends.
fn bare_lf() -> Reply {
    Reply::of(
        ReplyCode::SYNTAX_ERROR,
        (5, 5, 2),
        "Line ends with a bare LF; SMTP lines end with CRLF",
    )
}

//! The SMTP protocol core of postern, without I/O.
//!
//! # The contract
//!
//! This crate never touches a socket, a file, a thread, or the clock: it never calls
//! `Instant::now`, and every method that depends on time takes `now` from the caller. It
//! never blocks and never allocates beyond its configured limits plus the input it was handed.
//! That makes it usable from any runtime (postern's own uses smol; a blocking `std::net` loop
//! is in `examples/sink.rs`) and testable on a virtual clock.
//!
//! A server [`Session`] is driven by four inputs and read through two outputs:
//! - inputs: [`Session::handle_input`], [`Session::handle_eof`], [`Session::handle_timeout`],
//!   [`Session::handle_tls_established`], and [`Session::resolve`] to answer an [`Event`];
//! - outputs: [`Session::poll_action`] (drain it after every input) and
//!   [`Session::poll_timeout`].
//!
//! Decisions that need I/O (is this recipient ours? is this password right? is the message
//! safely stored?) leave the session as [`Event`]s carrying a [`Ticket`]. Until the application
//! answers, the session reads no further command, so replies to pipelined commands always come
//! out in order. Message bodies leave as a stream of [`Event::MessageData`] chunks: memory per
//! session does not grow with the message.
//!
//! Errors caused by the peer become replies; errors in how the API is used are [`UsageError`]s.
//!
//! # A complete drive loop
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use proto_core::{Action, Config, Event, PeerInfo, Session, Verdict};
//!
//! let now = Instant::now();
//! let mut session = Session::new(Arc::new(Config::new("mx.example.org")), PeerInfo::default(), now);
//! let mut wire = Vec::new(); // what we would write to the socket
//! let mut body = Vec::new(); // what we would store
//! let input: &[&[u8]] = &[
//!     b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n",
//!     b"RCPT TO:<b@example.org>\r\nDATA\r\n",
//!     b"Subject: hi\r\n\r\n..dot-stuffed\r\n.\r\nQUIT\r\n",
//! ];
//! let mut closed = false;
//! let mut inputs = input.iter();
//! while !closed {
//!     // 1. Drain every action the last input produced.
//!     while let Some(action) = session.poll_action() {
//!         match action {
//!             Action::Send(reply) => reply.encode(&mut wire),
//!             Action::Event(Event::MessageData(chunk)) => body.extend_from_slice(&chunk),
//!             Action::Event(Event::Mail { ticket, .. })
//!             | Action::Event(Event::Rcpt { ticket, .. })
//!             | Action::Event(Event::Auth { ticket, .. }) => {
//!                 session.resolve(now, ticket, Verdict::Accept).unwrap();
//!             }
//!             Action::Event(Event::MessageEnd { ticket }) => {
//!                 // Store `body` durably here, then:
//!                 session.resolve(now, ticket, Verdict::AcceptWithText("queued as 1".into())).unwrap();
//!             }
//!             Action::Event(_) => {}
//!             Action::StartTls => unreachable!("not offered without a certificate"),
//!             Action::Close => closed = true,
//!             _ => {}
//!         }
//!     }
//!     // 2. Feed the next input (a socket read), or wait until `poll_timeout()`.
//!     match inputs.next() {
//!         Some(bytes) => session.handle_input(now, bytes),
//!         None => session.handle_eof(now),
//!     }
//! }
//! let wire = String::from_utf8(wire).unwrap();
//! assert!(wire.starts_with("220 mx.example.org"));
//! assert!(wire.contains("250 2.0.0 queued as 1\r\n"));
//! assert!(wire.ends_with("221 2.0.0 mx.example.org closing connection\r\n"));
//! assert_eq!(body, b"Subject: hi\r\n\r\n.dot-stuffed\r\n");
//! ```
//!
//! # The client side
//!
//! A [`ClientSession`] delivers a [`MailJob`] (more with [`ClientSession::push_job`]) over one
//! connection and mirrors the server's
//! API: inputs [`ClientSession::handle_input`] (server replies), [`ClientSession::handle_eof`],
//! [`ClientSession::handle_timeout`], [`ClientSession::handle_tls_established`] and
//! [`ClientSession::handle_body`] (the body, in chunks, after [`ClientEvent::BodyRequested`]);
//! outputs [`ClientSession::poll_action`] and [`ClientSession::poll_timeout`]. Each job ends
//! with one [`ClientEvent::Finished`] carrying a result per recipient. [`next_attempt`] computes when to
//! try again, and [`compose`] writes the delivery status notification (bounce or delay warning)
//! when a recipient fails for good or waits too long.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use proto_core::{
//!     ClientAction, ClientConfig, ClientEvent, ClientSession, ForwardPath, MailJob,
//!     RecipientStatus, ReversePath,
//! };
//!
//! let now = Instant::now();
//! let job = MailJob::new(
//!     ReversePath::parse("a@example.com").unwrap(),
//!     [ForwardPath::parse("b@example.org").unwrap()],
//! );
//! let mut client = ClientSession::new(Arc::new(ClientConfig::new("out.example.com")), job, now);
//! // What the server says, one read at a time.
//! let mut reads: &[&[u8]] = &[
//!     b"220 mx.example.org ESMTP\r\n",
//!     b"250-mx.example.org\r\n250 PIPELINING\r\n",
//!     b"250 OK\r\n250 OK\r\n354 Go ahead\r\n",
//!     b"250 queued as 1\r\n",
//!     b"221 Bye\r\n",
//! ];
//! let mut body: &[u8] = b"Subject: hi\r\n\r\n.a line with a dot\n";
//! let (mut wire, mut outcome, mut closed) = (Vec::new(), None, false);
//! while !closed {
//!     // 1. Drain every action the last input produced.
//!     while let Some(action) = client.poll_action() {
//!         match action {
//!             ClientAction::Send(bytes) => wire.extend_from_slice(&bytes),
//!             ClientAction::Event(ClientEvent::Finished(o)) => outcome = Some(o),
//!             ClientAction::Close => closed = true,
//!             _ => {}
//!         }
//!     }
//!     // 2. Hand in the body while the session wants it (here in 8-octet chunks)...
//!     if client.wants_body() {
//!         let (chunk, rest) = body.split_at(body.len().min(8));
//!         body = rest;
//!         client.handle_body(now, chunk, body.is_empty()).unwrap();
//!         continue;
//!     }
//!     // 3. ...else feed the next read, or wait until `poll_timeout()`.
//!     match reads.split_first() {
//!         Some((bytes, rest)) => { client.handle_input(now, bytes); reads = rest; }
//!         None => client.handle_eof(now),
//!     }
//! }
//! let wire = String::from_utf8(wire).unwrap();
//! assert!(wire.contains("DATA\r\nSubject: hi\r\n\r\n..a line with a dot\r\n.\r\nQUIT\r\n"));
//! let outcome = outcome.unwrap();
//! assert!(matches!(outcome.recipients[0].status, RecipientStatus::Accepted(_)));
//! ```

mod address;
mod alias;
mod client;
mod client_config;
mod command;
mod config;
mod data;
pub mod dkim;
mod dsn;
mod reply;
mod retry;
mod sasl;
mod session;
mod srs;

pub use address::{
    AddressError, AddressLiteral, Domain, ForwardPath, LocalPart, Mailbox, ReversePath,
};
pub use alias::{
    AliasError, AliasOptions, AliasParseError, AliasTable, AliasTables, AliasWarning, Destination,
    Resolved, Rule, Step, UserExists, resolve,
};
pub use client::{
    Capabilities, ClientAction, ClientError, ClientEvent, ClientSession, ClientUsageError,
    FailureReason, Outcome, RecipientResult, RecipientStatus, SizeLimit, Stage,
};
pub use client_config::{
    ClientConfig, ClientCredentials, ClientTimeouts, JobRecipient, MailJob, TlsPolicy,
};
pub use command::{
    Body, Command, CommandError, MailParams, Mechanism, Notify, OriginalRecipient, RcptParams, Ret,
    looks_like_http, xtext_decode, xtext_encode,
};
pub use config::{AuthPolicy, Config, Extensions, Limits, Timeouts};
pub use dsn::{
    Boundary, DefaultNotify, Dsn, DsnAction, DsnDate, DsnRequest, MessageId, NoDsn,
    OriginalEnvelope, RecipientReport, Returned, ReturnedContent, compose,
};
pub use reply::{EnhancedStatus, Reply, ReplyClass, ReplyCode, ReplyParseError};
pub use retry::{RetryDecision, RetryPolicy, next_attempt};
pub use sasl::Credentials;
pub use session::{Action, Event, PeerInfo, Session, Ticket, TlsInfo, UsageError, Verdict};
pub use srs::{Srs, SrsError, SrsKind, is_srs};

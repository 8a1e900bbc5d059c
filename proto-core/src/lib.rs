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
//! The API comes in groups: [`server`] (the server [`Session`](server::Session) and what it
//! asks of the application), [`client`] (the [`ClientSession`](client::ClientSession) that
//! delivers to another server), [`mail`] (alias resolution, SRS, delivery status notifications,
//! the retry schedule) and [`dkim`] (canonicalization); the vocabulary both sides share
//! (addresses, replies, MAIL and RCPT parameters) is at the crate root.
//!
//! A server [`Session`](server::Session) is driven by six inputs and read through two outputs:
//! - inputs: [`handle_input`](server::Session::handle_input) (bytes read),
//!   [`handle_eof`](server::Session::handle_eof), [`handle_timeout`](server::Session::handle_timeout),
//!   [`handle_shutdown`](server::Session::handle_shutdown) (the server is stopping),
//!   [`handle_tls_established`](server::Session::handle_tls_established), and
//!   [`resolve`](server::Session::resolve) to answer an [`Event`](server::Event);
//! - outputs: [`poll_action`](server::Session::poll_action) (drain it after every input) and
//!   [`poll_timeout`](server::Session::poll_timeout).
//!
//! Decisions that need I/O (is this recipient ours? is this password right? is the message
//! safely stored?) leave the session as [`Event`](server::Event)s carrying a
//! [`Ticket`](server::Ticket). Until the application answers, the session reads no further
//! command, so replies to pipelined commands always come out in order. Message bodies leave as
//! a stream of [`Event::MessageData`](server::Event::MessageData) chunks: memory per session
//! does not grow with the message.
//!
//! Errors caused by the peer become replies; errors in how the API is used are
//! [`UsageError`](server::UsageError)s.
//!
//! # A complete drive loop
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use proto_core::server::{Action, Config, Event, PeerInfo, Session, Verdict};
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
//! A [`ClientSession`](client::ClientSession) delivers a [`MailJob`](client::MailJob) (more with
//! [`push_job`](client::ClientSession::push_job)) over one connection and mirrors the server's
//! API: inputs [`handle_input`](client::ClientSession::handle_input) (server replies),
//! [`handle_eof`](client::ClientSession::handle_eof),
//! [`handle_timeout`](client::ClientSession::handle_timeout),
//! [`handle_tls_established`](client::ClientSession::handle_tls_established),
//! [`handle_tls_failed`](client::ClientSession::handle_tls_failed) and
//! [`handle_body`](client::ClientSession::handle_body) (the body, in chunks, after
//! [`ClientEvent::BodyRequested`](client::ClientEvent::BodyRequested)); outputs
//! [`poll_action`](client::ClientSession::poll_action) and
//! [`poll_timeout`](client::ClientSession::poll_timeout). Each job ends with one
//! [`ClientEvent::Finished`](client::ClientEvent::Finished) carrying a result per recipient.
//! [`mail::next_attempt`] computes when to try again, and [`mail::compose`] writes the delivery
//! status notification (bounce or delay warning)
//! when a recipient fails for good or waits too long.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use proto_core::client::{
//!     ClientAction, ClientConfig, ClientEvent, ClientSession, MailJob, RecipientStatus,
//! };
//! use proto_core::{ForwardPath, ReversePath};
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
mod client_config;
mod client_session;
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

// The vocabulary both sides share: addresses, replies, MAIL and RCPT parameters, TLS facts.
pub use address::{
    AddressError, AddressLiteral, Domain, ForwardPath, LocalPart, Mailbox, ReversePath,
};
pub use command::{
    Body, MailParams, Notify, OriginalRecipient, RcptParams, Ret, xtext_decode, xtext_encode,
};
pub use reply::{EnhancedStatus, Reply, ReplyClass, ReplyCode, ReplyParseError};
pub use session::TlsInfo;

/// The server side: a [`Session`](server::Session) per connection, its configuration, the
/// events it asks the application to decide and the verdicts that answer them.
pub mod server {
    pub use crate::command::{Command, CommandError, Mechanism, looks_like_http};
    pub use crate::config::{AuthPolicy, Config, Extensions, Limits, Timeouts};
    pub use crate::sasl::Credentials;
    pub use crate::session::{Action, Event, PeerInfo, Session, Ticket, UsageError, Verdict};
}

/// The client side: a [`ClientSession`](client::ClientSession) delivers
/// [`MailJob`](client::MailJob)s over one connection and reports a result per recipient.
pub mod client {
    pub use crate::client_config::{
        ClientConfig, ClientCredentials, ClientTimeouts, JobRecipient, MailJob, TlsPolicy,
    };
    pub use crate::client_session::{
        Capabilities, ClientAction, ClientError, ClientEvent, ClientSession, ClientUsageError,
        FailureReason, Outcome, RecipientResult, RecipientStatus, SizeLimit, Stage,
    };
}

/// What a mail server does with a message beyond the protocol: alias resolution, SRS,
/// delivery status notifications and the retry schedule.
pub mod mail {
    pub use crate::alias::{
        AliasError, AliasOptions, AliasParseError, AliasTable, AliasTables, AliasWarning,
        Destination, Resolved, Rule, Step, UserExists, resolve,
    };
    pub use crate::dsn::{
        Boundary, DefaultNotify, Dsn, DsnAction, DsnDate, DsnRequest, MessageId, NoDsn,
        OriginalEnvelope, RecipientReport, Returned, ReturnedContent, compose,
    };
    pub use crate::retry::{RetryDecision, RetryPolicy, next_attempt};
    pub use crate::srs::{Srs, SrsError, SrsKind, is_srs};
}

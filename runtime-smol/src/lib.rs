//! Drives [`proto_core::Session`]s over smol / async-io byte streams, with TLS from
//! futures-rustls and timers from async-io.
//!
//! # The contract
//!
//! The core decides; this crate only moves bytes and time. For one connection,
//! [`Connection::run`] creates the session, then repeats: carry out every
//! [`Action`](proto_core::Action) in order (answering events through your [`Handler`]), write
//! the gathered replies in one batch and flush, then wait for input or the session's deadline.
//! Reads are at most 64 KiB, and there are none while `Session::wants_input` is false.
//! STARTTLS hands the plain stream itself to the TLS acceptor, so no plaintext read before the
//! handshake can leak into the TLS session, and implicit TLS runs the handshake before the
//! session starts.
//!
//! The application is a [`Handler`]: typed calls for MAIL, RCPT, AUTH and the message body,
//! which arrives chunk by chunk so it can go straight to disk. No tokio: any executor that runs
//! async-io futures (smol's) will do; the futures are `Send` when the handler's are.

mod driver;
mod handler;
mod tls;

pub use driver::{Connection, Error, TlsMode};
pub use handler::Handler;

/// The TLS types a caller needs to build a [`TlsMode`] (re-exported from futures-rustls).
pub use futures_rustls::{TlsAcceptor, rustls};

//! Drives [`proto_core::server::Session`]s over smol / async-io byte streams, with TLS from
//! futures-rustls and timers from async-io.
//!
//! # The contract
//!
//! The core decides; this crate only moves bytes and time. For one connection,
//! [`Connection::run`] creates the session, then repeats: carry out every
//! [`Action`](proto_core::server::Action) in order (answering events through your [`Handler`]), write
//! the gathered replies in one batch and flush, then wait for input or the session's deadline.
//! Reads are at most 64 KiB, and there are none while `Session::wants_input` is false.
//! STARTTLS hands the plain stream itself to the TLS acceptor, so no plaintext read before the
//! handshake can leak into the TLS session, and implicit TLS runs the handshake before the
//! session starts.
//!
//! The application is a [`Handler`]: typed calls for MAIL, RCPT, AUTH and the message body,
//! which arrives chunk by chunk so it can go straight to disk. No tokio: any executor that runs
//! async-io futures (smol's) will do; the futures are `Send` when the handler's are.
//!
//! # Serving one connection
//!
//! ```
//! use std::net::{TcpListener, TcpStream};
//! use std::sync::Arc;
//!
//! use async_io::Async;
//! use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
//! use proto_core::server::{Config, Credentials, Session, Verdict};
//! use proto_core::{ForwardPath, MailParams, RcptParams, ReversePath};
//! use runtime_smol::{Connection, Handler, TlsMode};
//!
//! /// Accepts everything and keeps the body in memory (a real handler writes each chunk to
//! /// disk and answers `message_end` once the message is durable).
//! #[derive(Debug, Default)]
//! struct Sink {
//!     body: Vec<u8>,
//! }
//!
//! impl Handler for Sink {
//!     async fn mail(&mut self, _: &Session, _: &ReversePath, _: &MailParams) -> Verdict {
//!         Verdict::Accept
//!     }
//!     async fn rcpt(&mut self, _: &Session, _: &ForwardPath, _: &RcptParams) -> Verdict {
//!         Verdict::Accept
//!     }
//!     async fn auth(&mut self, _: &Session, _: Credentials) -> Verdict {
//!         Verdict::Accept
//!     }
//!     async fn message_start(&mut self, _: &Session) {}
//!     async fn message_data(&mut self, _: &Session, chunk: Vec<u8>) {
//!         self.body.extend_from_slice(&chunk);
//!     }
//!     async fn message_end(&mut self, _: &Session) -> Verdict {
//!         Verdict::AcceptWithText("stored".into())
//!     }
//!     async fn aborted(&mut self, _: &Session) {
//!         self.body.clear();
//!     }
//! }
//!
//! smol::block_on(async {
//!     let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0))?;
//!     let addr = listener.get_ref().local_addr()?;
//!     let connection = Connection::new(Arc::new(Config::new("mx.example.org")), TlsMode::None);
//!     let server = smol::spawn(async move {
//!         let (stream, _) = listener.accept().await?;
//!         let mut sink = Sink::default();
//!         connection.run_tcp(stream, &mut sink).await.map_err(std::io::Error::other)?;
//!         Ok::<_, std::io::Error>(sink.body)
//!     });
//!
//!     let mut client = Async::<TcpStream>::connect(addr).await?;
//!     client
//!         .write_all(
//!             b"EHLO c.example\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<b@mx.example.org>\r\n\
//!               DATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n",
//!         )
//!         .await?;
//!     let mut replies = String::new();
//!     client.read_to_string(&mut replies).await?;
//!     assert!(replies.starts_with("220 mx.example.org"));
//!     assert!(replies.contains("250 2.0.0 stored\r\n"));
//!     assert_eq!(server.await?, b"Subject: hi\r\n\r\nhello\r\n");
//!     Ok::<_, std::io::Error>(())
//! })?;
//! # Ok::<_, std::io::Error>(())
//! ```

pub mod client;
mod driver;
mod handler;
mod tls;

pub use driver::{Connection, Error, Shutdown, TlsMode};
pub use handler::Handler;

/// The TLS types a caller needs to build a [`TlsMode`] (re-exported from futures-rustls).
pub use futures_rustls::{TlsAcceptor, TlsConnector, rustls};

//! The application side of a connection: the [`Handler`] trait.
//!
//! The session decides everything that needs no I/O; the handler decides the rest (is this
//! recipient ours? is the message stored?) and stores the body. The driver calls the handler in
//! protocol order, one call at a time, and awaits each call before the session reads further,
//! so a handler never sees two calls at once and needs no locking of its own state.

use std::future::Future;

use proto_core::{
    ForwardPath, MailParams, RcptParams, ReversePath, server::Credentials, server::Session,
    server::Verdict,
};

/// Answers one connection's questions and stores what it accepts. One value per connection.
///
/// Call order within a transaction:
/// 1. [`mail`](Handler::mail) opens it (a [`Verdict::Reject`] means it never opened);
/// 2. [`rcpt`](Handler::rcpt) once per recipient: the handler keeps the ones it accepted;
/// 3. [`message_start`](Handler::message_start), then [`message_data`](Handler::message_data)
///    for each body chunk (dot-unstuffed, CRLF line endings, at most `Limits::max_chunk`
///    bytes): write them out as they come, nothing obliges the handler to hold the message;
/// 4. [`message_end`](Handler::message_end): make the message durable, then answer. The
///    transaction is over when it returns, whatever the verdict.
///
/// [`aborted`](Handler::aborted) may come at any point after an accepted `mail` (RSET, a new
/// EHLO, a refused body, the connection failing): forget the envelope and any body stored.
/// [`auth`](Handler::auth) comes between transactions. The `session` argument describes the
/// connection (peer, `helo`, `tls`, `authenticated`) for checks, logs and trace headers.
///
/// The returned futures must be `Send`, so a connection can run on a multi-threaded executor.
/// Implementations may use `async fn`.
pub trait Handler {
    /// `MAIL FROM` passed the session's checks: may this sender start a transaction?
    fn mail(
        &mut self,
        session: &Session,
        from: &ReversePath,
        params: &MailParams,
    ) -> impl Future<Output = Verdict> + Send;

    /// `RCPT TO` passed the session's checks: is this recipient acceptable?
    fn rcpt(
        &mut self,
        session: &Session,
        to: &ForwardPath,
        params: &RcptParams,
    ) -> impl Future<Output = Verdict> + Send;

    /// AUTH completed its SASL exchange: are these credentials right? Never log them.
    fn auth(
        &mut self,
        session: &Session,
        credentials: Credentials,
    ) -> impl Future<Output = Verdict> + Send;

    /// The body of the open transaction begins.
    fn message_start(&mut self, session: &Session) -> impl Future<Output = ()> + Send;

    /// The next piece of the body. A handler that fails to store it remembers the failure and
    /// answers [`message_end`](Handler::message_end) with a rejection.
    fn message_data(
        &mut self,
        session: &Session,
        chunk: Vec<u8>,
    ) -> impl Future<Output = ()> + Send;

    /// The whole body has arrived: make it durable, then accept (250) or reject.
    fn message_end(&mut self, session: &Session) -> impl Future<Output = Verdict> + Send;

    /// The open transaction was abandoned: forget it.
    fn aborted(&mut self, session: &Session) -> impl Future<Output = ()> + Send;
}

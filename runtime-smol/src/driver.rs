//! The drive loop: one [`Session`] over one byte stream.
//!
//! Each turn of the loop follows the core's call order: drain every action (answering events
//! through the [`Handler`] and resolving their tickets, which may queue more actions), write
//! the replies gathered in one batch and flush, then wait for whichever comes first, input or
//! the session's deadline. Replies to pipelined commands (RFC 2920) thus leave in one write.
//!
//! STARTTLS ([RFC 3207 section 4](https://www.rfc-editor.org/rfc/rfc3207#section-4)): after
//! the 220 is flushed, the plain stream itself (never a buffer around it) moves into the TLS
//! acceptor. Plaintext that arrived with or after the STARTTLS line was handed to the session,
//! which discards it; nothing read in plaintext reaches TLS and nothing is read in plaintext
//! after the handshake starts.

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsAcceptor;
use proto_core::{
    Reply, server::Action, server::Config, server::Event, server::PeerInfo, server::Session,
    server::UsageError, server::Verdict,
};
use thiserror::Error;

use crate::handler::Handler;
use crate::tls;

/// The largest single read from the socket.
const READ_SIZE: usize = 64 * 1024;

/// The read buffer a session starts with: commands are short, so an idle session keeps only
/// this much. A read that fills the buffer (message data) makes it four times larger, up to
/// [`READ_SIZE`].
const FIRST_READ_SIZE: usize = 1024;

/// How a listener offers TLS.
#[derive(Clone)]
#[non_exhaustive]
pub enum TlsMode {
    /// No TLS. The session's `Config` must not offer STARTTLS.
    None,
    /// STARTTLS (RFC 3207) with this acceptor; the session's `Config` should offer it
    /// (`extensions.starttls = true`).
    StartTls(TlsAcceptor),
    /// TLS from the first byte (implicit TLS, [RFC 8314](https://www.rfc-editor.org/rfc/rfc8314),
    /// port 465): the handshake runs before the session starts.
    Implicit(TlsAcceptor),
}

impl fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::None => "TlsMode::None",
            TlsMode::StartTls(_) => "TlsMode::StartTls",
            TlsMode::Implicit(_) => "TlsMode::Implicit",
        })
    }
}

/// Asks every connection that shares it to finish: idle sessions close at once with 421,
/// sessions inside a transaction finish it first ([`Session::handle_shutdown`]).
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<ShutdownInner>);

#[derive(Debug, Default)]
struct ShutdownInner {
    triggered: AtomicBool,
    event: event_listener::Event,
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Tells every connection using this signal to finish.
    pub fn trigger(&self) {
        self.0.triggered.store(true, Ordering::SeqCst);
        self.0.event.notify(usize::MAX);
    }

    /// Whether [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        self.0.triggered.load(Ordering::SeqCst)
    }

    /// Completes once triggered.
    async fn triggered(&self) {
        while !self.is_triggered() {
            let listener = self.0.event.listen();
            if self.is_triggered() {
                break;
            }
            listener.await;
        }
    }
}

/// Why a connection ended other than by an orderly close. The handler has been told about any
/// open transaction ([`Handler::aborted`]) before this is returned.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the stream failed.
    #[error("connection failed: {0}")]
    Io(#[source] io::Error),
    /// The peer did not read our replies before the session's deadline.
    #[error("peer stopped reading; write timed out")]
    WriteTimeout,
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
    /// The TLS handshake did not finish in time.
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    /// The session asked for STARTTLS but the listener has no TLS acceptor (a configuration
    /// error: `extensions.starttls` set without [`TlsMode::StartTls`]).
    #[error("STARTTLS requested but no TLS acceptor is configured")]
    TlsUnavailable,
    /// The driver misused the session API (a bug).
    #[error("session API misuse: {0}")]
    Usage(#[from] UsageError),
}

/// Drives SMTP server sessions: one [`Connection::run`] (or [`Connection::run_tcp`]) per
/// accepted connection, usually each in its own task. See the crate documentation for a
/// complete example.
#[derive(Debug, Clone)]
pub struct Connection {
    config: Arc<Config>,
    tls: TlsMode,
    handshake_timeout: Duration,
    shutdown: Shutdown,
}

impl Connection {
    /// Sessions with `config`, offering TLS as `tls` says. The TLS handshake may take 60 s.
    pub fn new(config: Arc<Config>, tls: TlsMode) -> Connection {
        Connection {
            config,
            tls,
            handshake_timeout: Duration::from_secs(60),
            shutdown: Shutdown::new(),
        }
    }

    /// Makes sessions finish when `shutdown` is triggered (see [`Shutdown`]).
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Connection {
        self.shutdown = shutdown;
        self
    }

    /// Sets how long a TLS handshake (implicit or after STARTTLS) may take.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Connection {
        self.handshake_timeout = timeout;
        self
    }

    /// The session configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Serves one TCP connection until it closes, filling [`PeerInfo`] from the socket.
    pub async fn run_tcp<H: Handler>(
        &self,
        stream: Async<TcpStream>,
        handler: &mut H,
    ) -> Result<(), Error> {
        let peer = PeerInfo::new(
            stream.get_ref().peer_addr().ok(),
            stream.get_ref().local_addr().ok(),
        );
        self.run(stream, peer, handler).await
    }

    /// Serves one connection over any byte stream until it closes. An orderly end (QUIT, the
    /// peer's EOF, a timeout answered with 421) is `Ok`.
    pub async fn run<S, H>(
        &self,
        mut stream: S,
        mut peer: PeerInfo,
        handler: &mut H,
    ) -> Result<(), Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        H: Handler,
    {
        // The TLS stream, its handshake and the session over it are boxed: this future, which
        // every connection's task holds whole from its start, then keeps only pointers for
        // them, and a plaintext session does not carry TLS's space.
        if let TlsMode::Implicit(acceptor) = &self.tls {
            let mut stream =
                Box::new(Box::pin(tls::handshake(acceptor, stream, self.handshake_timeout)).await?);
            peer.tls = Some(tls::info(&stream));
            let mut session = Session::new(self.config.clone(), peer, Instant::now());
            let driven = Box::pin(drive(&mut stream, &mut session, handler, &self.shutdown));
            return match driven.await? {
                Next::Closed => Ok(()),
                // The session refuses STARTTLS once TLS is active; never reached.
                Next::StartTls => Err(Error::Usage(UsageError::TlsNotRequested)),
            };
        }
        let mut session = Session::new(self.config.clone(), peer, Instant::now());
        match drive(&mut stream, &mut session, handler, &self.shutdown).await? {
            Next::Closed => Ok(()),
            Next::StartTls => {
                let TlsMode::StartTls(acceptor) = &self.tls else {
                    abandon(&mut session, handler).await;
                    return Err(Error::TlsUnavailable);
                };
                let mut stream = match Box::pin(tls::handshake(
                    acceptor,
                    stream,
                    self.handshake_timeout,
                ))
                .await
                {
                    Ok(s) => Box::new(s),
                    Err(e) => {
                        abandon(&mut session, handler).await;
                        return Err(e);
                    }
                };
                session.handle_tls_established(Instant::now(), tls::info(&stream))?;
                let driven = Box::pin(drive(&mut stream, &mut session, handler, &self.shutdown));
                match driven.await? {
                    Next::Closed => Ok(()),
                    Next::StartTls => Err(Error::Usage(UsageError::TlsNotRequested)),
                }
            }
        }
    }
}

/// How [`drive`] ended.
#[derive(Debug)]
enum Next {
    /// The session closed and the stream was closed.
    Closed,
    /// The 220 to STARTTLS is flushed: run the handshake.
    StartTls,
}

/// What ended a wait.
enum Wake {
    Read(io::Result<usize>),
    Deadline,
    Shutdown,
}

/// Runs `session` over `stream` until it closes or asks for TLS.
async fn drive<S, H>(
    stream: &mut S,
    session: &mut Session,
    handler: &mut H,
    shutdown: &Shutdown,
) -> Result<Next, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut out = Vec::new();
    let mut buf = vec![0u8; FIRST_READ_SIZE];
    // Whether the session was told about the shutdown. The signal may come at any moment,
    // also between this check and the wait below: the wait then completes at once.
    let mut told = false;
    loop {
        if !told && shutdown.is_triggered() {
            told = true;
            session.handle_shutdown(Instant::now());
        }
        // 1. Carry out every action, in order.
        while let Some(action) = session.poll_action() {
            match action {
                Action::Send(reply) => reply.encode(&mut out),
                // Boxed: the handler's futures are large and live only while an event is answered,
                // so an idle session's task does not carry their space.
                Action::Event(event) => Box::pin(dispatch(session, handler, event)).await?,
                Action::StartTls => {
                    if let Err(e) = write_batch(stream, &mut out, session.poll_timeout()).await {
                        abandon(session, handler).await;
                        return Err(e);
                    }
                    return Ok(Next::StartTls);
                }
                Action::Close => {
                    // The last reply (221, 421) still goes out; a peer that already left
                    // cannot receive it, which is no error of ours.
                    let deadline = Instant::now() + Duration::from_secs(10);
                    if write_batch(stream, &mut out, Some(deadline)).await.is_ok() {
                        let _ = future::or(stream.close(), async {
                            Timer::at(deadline).await;
                            Ok(())
                        })
                        .await;
                    }
                    // Events queued after Close cannot exist: Close is the session's last action.
                    return Ok(Next::Closed);
                }
                _ => {}
            }
        }
        // 2. Write the batch.
        if let Err(e) = write_batch(stream, &mut out, session.poll_timeout()).await {
            abandon(session, handler).await;
            return Err(e);
        }
        // 3. Wait for input (only while the session wants it) or the deadline.
        let deadline = session.poll_timeout();
        let wants_input = session.wants_input();
        if !wants_input && deadline.is_none() {
            // Closed without a Close action: nothing more can happen.
            return Ok(Next::Closed);
        }
        let read = async {
            if wants_input {
                Wake::Read(stream.read(&mut buf).await)
            } else {
                future::pending().await
            }
        };
        let timer = async {
            match deadline {
                Some(at) => {
                    Timer::at(at).await;
                    Wake::Deadline
                }
                None => future::pending().await,
            }
        };
        let stop = async {
            if told {
                future::pending().await
            } else {
                shutdown.triggered().await;
                Wake::Shutdown
            }
        };
        let wake = future::or(future::or(read, timer), stop).await;
        let now = Instant::now();
        match wake {
            Wake::Read(Ok(0)) => session.handle_eof(now),
            Wake::Read(Ok(n)) => {
                session.handle_input(now, &buf[..n]);
                if n == buf.len() && n < READ_SIZE {
                    buf.resize((n * 4).min(READ_SIZE), 0);
                }
            }
            Wake::Read(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Wake::Read(Err(e)) => {
                abandon(session, handler).await;
                return Err(Error::Io(e));
            }
            Wake::Deadline => session.handle_timeout(now),
            Wake::Shutdown => {
                told = true;
                session.handle_shutdown(now);
            }
        }
    }
}

/// Answers one event through the handler.
async fn dispatch<H: Handler>(
    session: &mut Session,
    handler: &mut H,
    event: Event,
) -> Result<(), Error> {
    let (ticket, verdict) = match event {
        Event::Mail {
            ticket,
            from,
            params,
        } => (ticket, handler.mail(session, &from, &params).await),
        Event::Rcpt { ticket, to, params } => (ticket, handler.rcpt(session, &to, &params).await),
        Event::Auth {
            ticket,
            credentials,
        } => (ticket, handler.auth(session, credentials).await),
        Event::MessageEnd { ticket } => (ticket, handler.message_end(session).await),
        Event::MessageStart => {
            handler.message_start(session).await;
            return Ok(());
        }
        Event::MessageData(chunk) => {
            handler.message_data(session, chunk).await;
            return Ok(());
        }
        Event::TransactionAborted => {
            handler.aborted(session).await;
            return Ok(());
        }
        // An event this driver does not know yet: refuse it rather than stall the session.
        other => match other.ticket() {
            Some(ticket) => (
                ticket,
                Verdict::Reject(Reply::of(
                    proto_core::ReplyCode::LOCAL_ERROR,
                    (4, 3, 0),
                    "Not supported by this server",
                )),
            ),
            None => return Ok(()),
        },
    };
    session.resolve(Instant::now(), ticket, verdict)?;
    Ok(())
}

/// The transport is gone: close the session and let the handler forget any open transaction.
/// Replies are dropped; nobody is there to read them.
async fn abandon<H: Handler>(session: &mut Session, handler: &mut H) {
    session.handle_eof(Instant::now());
    while let Some(action) = session.poll_action() {
        if let Action::Event(event) = action {
            // A closed session accepts and ignores verdicts: no usage error can come back.
            let _ = Box::pin(dispatch(session, handler, event)).await;
        }
    }
}

/// Writes and flushes `out` ([`flush_batch`]), as this driver's error.
async fn write_batch<S>(
    stream: &mut S,
    out: &mut Vec<u8>,
    deadline: Option<Instant>,
) -> Result<(), Error>
where
    S: AsyncWrite + Unpin,
{
    flush_batch(stream, out, deadline).await.map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            Error::WriteTimeout
        } else {
            Error::Io(e)
        }
    })
}

/// Writes and flushes `out`, then clears it; gives up at `deadline` with `TimedOut`. Shared
/// by the server and client drivers.
pub(crate) async fn flush_batch<S>(
    stream: &mut S,
    out: &mut Vec<u8>,
    deadline: Option<Instant>,
) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    if out.is_empty() {
        return Ok(());
    }
    let write = async {
        stream.write_all(out).await?;
        stream.flush().await
    };
    let timer = async {
        match deadline {
            Some(at) => Timer::at(at).await,
            None => future::pending().await,
        };
        Err(io::Error::from(io::ErrorKind::TimedOut))
    };
    future::or(write, timer).await?;
    out.clear();
    Ok(())
}

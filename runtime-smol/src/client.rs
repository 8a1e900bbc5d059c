//! Drives a [`proto_core::client::ClientSession`] over a byte stream: the sending side of SMTP.
//!
//! [`deliver`] carries out the session's actions in order, writes what it asks to send, feeds
//! it replies, runs the STARTTLS handshake when it asks for one (the plain stream itself goes
//! to the TLS connector, so bytes the server sent early are never read as TLS), and hands in
//! each job's body from a [`BodySource`] while the session wants it. Network failures are not
//! errors here: a read or write that fails is the server's end of file for the session, which
//! then finishes its jobs with temporary failures. What comes back is every job's
//! [`Outcome`] and what TLS was negotiated; [`DriveError`] is only for a body that could not
//! be read (a local problem) and for misuse of the session API.

use std::io;
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsConnector;
use futures_rustls::rustls::pki_types::ServerName;
use proto_core::{
    TlsInfo, client::ClientAction, client::ClientEvent, client::ClientSession,
    client::ClientUsageError, client::Outcome,
};
use thiserror::Error;

use crate::driver::flush_batch;
use crate::tls;

/// How much of a body is read and handed to the session at a time.
const BODY_CHUNK: usize = 64 * 1024;

/// How much is read from the server at a time.
const READ_SIZE: usize = 16 * 1024;

/// Where the bodies of a session's jobs come from.
pub trait BodySource {
    /// The reader of one body.
    type Reader: AsyncRead + Unpin;
    /// Opens the body of job `job` (0 for the job the session was created with, then one more
    /// for each [`ClientSession::push_job`]). Called once per transaction that gets as far as
    /// sending data.
    fn open(&mut self, job: usize) -> io::Result<Self::Reader>;
}

impl<F, R> BodySource for F
where
    F: FnMut(usize) -> io::Result<R>,
    R: AsyncRead + Unpin,
{
    type Reader = R;
    fn open(&mut self, job: usize) -> io::Result<R> {
        self(job)
    }
}

/// TLS for STARTTLS: the connector and the name to ask for (SNI) and verify.
#[derive(Clone)]
pub struct ClientTls {
    /// The rustls client configuration, as a connector.
    pub connector: TlsConnector,
    /// The server's name.
    pub server_name: ServerName<'static>,
    /// How long the handshake may take.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// What a session did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// One outcome per job that finished, in order.
    pub outcomes: Vec<Outcome>,
    /// The TLS the connection ended up with, if any.
    pub tls: Option<TlsInfo>,
    /// Why the TLS handshake failed, when it did (the session reports the failure too).
    pub tls_error: Option<String>,
}

/// A problem that is not the server's doing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DriveError {
    /// A body could not be read: the connection was dropped without ending the data, so the
    /// server discards the transaction.
    #[error("cannot read the message body: {0}")]
    Body(#[source] io::Error),
    /// The driver misused the session API (a bug).
    #[error("client session API misuse: {0}")]
    Usage(#[from] ClientUsageError),
}

/// How [`drive`] ended.
enum Next {
    Closed,
    StartTls,
}

/// What ended a wait.
enum Wake {
    Read(io::Result<usize>),
    Deadline,
}

/// Runs `session` over `stream` (a connected socket) until it closes; see the module docs.
/// `tls` is needed when the session's policy may ask for STARTTLS; without it a request for
/// TLS counts as a failed handshake.
pub async fn deliver<S, B>(
    mut stream: S,
    session: &mut ClientSession,
    tls: Option<&ClientTls>,
    bodies: &mut B,
) -> Result<Report, DriveError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: BodySource,
{
    let mut report = Report::default();
    match drive(&mut stream, session, bodies, &mut report).await? {
        Next::Closed => return Ok(report),
        Next::StartTls => {}
    }
    let Some(tls) = tls else {
        report.tls_error = Some("no TLS client configuration".into());
        session.handle_tls_failed(Instant::now())?;
        drain(session, &mut report);
        return Ok(report);
    };
    let handshake = async {
        tls.connector
            .connect(tls.server_name.clone(), stream)
            .await
            .map_err(|e| e.to_string())
    };
    let timer = async {
        Timer::after(tls.handshake_timeout).await;
        Err("TLS handshake timed out".to_string())
    };
    let mut stream = match future::or(handshake, timer).await {
        Ok(s) => s,
        Err(why) => {
            report.tls_error = Some(why);
            session.handle_tls_failed(Instant::now())?;
            drain(session, &mut report);
            return Ok(report);
        }
    };
    let info = tls::client_info(&stream, &tls.server_name);
    report.tls = Some(info.clone());
    session.handle_tls_established(Instant::now(), info)?;
    match drive(&mut stream, session, bodies, &mut report).await? {
        Next::Closed => Ok(report),
        // The session asks for TLS once at most.
        Next::StartTls => Err(DriveError::Usage(ClientUsageError::TlsNotRequested)),
    }
}

/// Collects what a session that can no longer talk still reports (its outcomes).
fn drain(session: &mut ClientSession, report: &mut Report) {
    while let Some(action) = session.poll_action() {
        if let ClientAction::Event(ClientEvent::Finished(outcome)) = action {
            report.outcomes.push(outcome);
        }
    }
}

/// Runs `session` over `stream` until it closes or asks for TLS.
async fn drive<S, B>(
    stream: &mut S,
    session: &mut ClientSession,
    bodies: &mut B,
    report: &mut Report,
) -> Result<Next, DriveError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: BodySource,
{
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; READ_SIZE];
    let mut body: Option<B::Reader> = None;
    let mut chunk = vec![0u8; BODY_CHUNK];
    loop {
        // 1. Carry out every action, in order.
        while let Some(action) = session.poll_action() {
            match action {
                ClientAction::Send(bytes) => out.extend_from_slice(&bytes),
                ClientAction::Event(ClientEvent::BodyRequested) => {
                    body = Some(bodies.open(session.job_index()).map_err(DriveError::Body)?);
                }
                ClientAction::Event(ClientEvent::Finished(outcome)) => {
                    report.outcomes.push(outcome);
                }
                ClientAction::StartTls => {
                    if flush_batch(stream, &mut out, session.poll_timeout())
                        .await
                        .is_err()
                    {
                        session.handle_eof(Instant::now());
                        continue;
                    }
                    return Ok(Next::StartTls);
                }
                ClientAction::Close => {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    if flush_batch(stream, &mut out, Some(deadline)).await.is_ok() {
                        let _ = future::or(stream.close(), async {
                            Timer::at(deadline).await;
                            Ok(())
                        })
                        .await;
                    }
                    drain(session, report);
                    return Ok(Next::Closed);
                }
                _ => {}
            }
        }
        // 2. Write the batch.
        if flush_batch(stream, &mut out, session.poll_timeout())
            .await
            .is_err()
        {
            out.clear();
            session.handle_eof(Instant::now());
            continue;
        }
        if session.is_closed() {
            drain(session, report);
            return Ok(Next::Closed);
        }
        // 3. The body, one chunk per turn while the session wants it: what the chunk produced
        //    is written before the next is read, so memory stays at one chunk.
        if session.wants_body()
            && let Some(reader) = body.as_mut()
        {
            let n = read_full(reader, &mut chunk)
                .await
                .map_err(DriveError::Body)?;
            let last = n < chunk.len();
            session.handle_body(Instant::now(), &chunk[..n], last)?;
            if last {
                body = None;
            }
            continue;
        }
        // 4. Wait for a reply or the deadline.
        let deadline = session.poll_timeout();
        let read = async { Wake::Read(stream.read(&mut buf).await) };
        let timer = async {
            match deadline {
                Some(at) => {
                    Timer::at(at).await;
                    Wake::Deadline
                }
                None => future::pending().await,
            }
        };
        let now_wake = future::or(read, timer).await;
        let now = Instant::now();
        match now_wake {
            Wake::Read(Ok(0)) => session.handle_eof(now),
            Wake::Read(Ok(n)) => session.handle_input(now, &buf[..n]),
            Wake::Read(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Wake::Read(Err(_)) => session.handle_eof(now),
            Wake::Deadline => session.handle_timeout(now),
        }
    }
}

/// Reads until `buf` is full or the reader ends; returns how much was read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

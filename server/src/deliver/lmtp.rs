//! Delivery to an LMTP server ([RFC 2033](https://www.rfc-editor.org/rfc/rfc2033)), such as
//! Dovecot's `lmtp`, on a Unix socket or a TCP address.
//!
//! The recipients of one message that go to one server are sent in one transaction
//! (`LHLO`, `MAIL`, one `RCPT` each, the data); the server answers the end of the data once
//! per accepted recipient, and each answer is that recipient's result: a 2xx delivered it, a
//! 5xx (to RCPT or to the data) fails it for good, and anything else (4xx, no connection, a
//! timeout) defers it. The session is proto-core's [`ClientSession`] with
//! [`ClientConfig::lmtp`], driven by [`runtime_smol::client::deliver`]; no TLS, no AUTH (the
//! server is local).
//!
//! The copy starts with our `Received:` field and the fields added on reception; the LMTP
//! server, as the final delivery agent, adds `Return-Path:` and `Delivered-To:` itself
//! (RFC 5321 4.4), so we do not.

use std::io;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::future;
use futures_lite::io::AsyncRead;
use proto_core::{
    client::ClientConfig, client::ClientSession, client::MailJob, client::RecipientStatus,
};
use runtime_smol::client::deliver as drive;

use super::{Delivery, LmtpTarget};

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Delivers `job` (its recipients all for `target`) with `message` as the data. One result
/// per recipient of the job, in order.
pub async fn deliver<R>(
    target: &LmtpTarget,
    hostname: &str,
    job: MailJob,
    message: R,
) -> Vec<Delivery>
where
    R: AsyncRead + Unpin,
{
    let count = job.recipients.len();
    let all = |d: Delivery| vec![d; count];
    let session = ClientSession::new(
        Arc::new(ClientConfig::new_lmtp(hostname)),
        job,
        Instant::now(),
    );
    let mut message = Some(message);
    let mut bodies = move |_job: usize| {
        message
            .take()
            .ok_or_else(|| io::Error::other("the message was already sent"))
    };
    let report = match target {
        LmtpTarget::Unix(path) => {
            let path = path.clone();
            match with_timeout(Async::<UnixStream>::connect(path)).await {
                Ok(stream) => run(stream, session, &mut bodies).await,
                Err(e) => return all(Delivery::Deferred(format!("lmtp={target}: connect: {e}"))),
            }
        }
        LmtpTarget::Tcp(addr) => match with_timeout(Async::<TcpStream>::connect(*addr)).await {
            Ok(stream) => run(stream, session, &mut bodies).await,
            Err(e) => return all(Delivery::Deferred(format!("lmtp={target}: connect: {e}"))),
        },
    };
    let outcome = match report {
        Ok(mut r) if !r.outcomes.is_empty() => r.outcomes.remove(0),
        Ok(_) => {
            return all(Delivery::Deferred(format!(
                "lmtp={target}: the session ended without a result"
            )));
        }
        Err(e) => return all(Delivery::Deferred(format!("lmtp={target}: {e}"))),
    };
    outcome
        .recipients
        .iter()
        .map(|r| match &r.status {
            RecipientStatus::Accepted(reply) => Delivery::Delivered(
                crate::log::Fields::new()
                    .field("lmtp", target)
                    .text("reply", reply),
            ),
            RecipientStatus::PermanentFailure(why) => {
                Delivery::Failed(format!("lmtp={target}: {}", crate::log::quoted(why)))
            }
            RecipientStatus::TemporaryFailure(why) => {
                Delivery::Deferred(format!("lmtp={target}: {}", crate::log::quoted(why)))
            }
            _ => Delivery::Deferred(format!("lmtp={target}: unknown result")),
        })
        .collect()
}

async fn run<S, F, R>(
    stream: S,
    mut session: ClientSession,
    bodies: &mut F,
) -> Result<runtime_smol::client::Report, runtime_smol::client::DriveError>
where
    S: futures_lite::io::AsyncRead + futures_lite::io::AsyncWrite + Unpin,
    F: FnMut(usize) -> io::Result<R>,
    R: AsyncRead + Unpin,
{
    drive(stream, &mut session, None, bodies).await
}

async fn with_timeout<T>(
    connect: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    future::or(connect, async {
        Timer::after(CONNECT_TIMEOUT).await;
        Err(io::Error::from(io::ErrorKind::TimedOut))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_core::{ForwardPath, ReversePath};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// An LMTP server on a Unix socket that answers from a script and records what it got.
    fn scripted_server(
        path: &std::path::Path,
        rcpt_replies: Vec<&'static str>,
        data_replies: Vec<&'static str>,
    ) -> std::thread::JoinHandle<String> {
        let listener = UnixListener::bind(path).expect("bind");
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let out = stream.try_clone().expect("clone");
            serve_script(stream, out, rcpt_replies, data_replies)
        })
    }

    /// Answers one LMTP session on `input`/`out`; returns what the client sent.
    fn serve_script(
        input: impl std::io::Read,
        mut out: impl Write,
        rcpt_replies: Vec<&'static str>,
        data_replies: Vec<&'static str>,
    ) -> String {
        let mut input = BufReader::new(input);
        let mut seen = String::new();
        let mut rcpts = rcpt_replies.into_iter();
        out.write_all(b"220 lmtp ready\r\n").expect("greet");
        let mut line = String::new();
        loop {
            line.clear();
            if input.read_line(&mut line).expect("read") == 0 {
                break;
            }
            seen.push_str(&line);
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let reply: String = match verb.as_str() {
                "LHLO" => "250-lmtp\r\n250 PIPELINING\r\n".into(),
                "MAIL" => "250 ok\r\n".into(),
                "RCPT" => format!("{}\r\n", rcpts.next().unwrap_or("250 ok")),
                "DATA" => {
                    out.write_all(b"354 go\r\n").expect("354");
                    loop {
                        line.clear();
                        input.read_line(&mut line).expect("data");
                        seen.push_str(&line);
                        if line == ".\r\n" || line.is_empty() {
                            break;
                        }
                    }
                    data_replies.iter().map(|r| format!("{r}\r\n")).collect()
                }
                "QUIT" => {
                    out.write_all(b"221 bye\r\n").expect("221");
                    break;
                }
                _ => "500 what\r\n".into(),
            };
            out.write_all(reply.as_bytes()).expect("reply");
        }
        seen
    }

    #[test]
    fn over_tcp_on_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let out = stream.try_clone().expect("clone");
            serve_script(stream, out, vec![], vec!["250 2.0.0 ok"])
        });
        let job = MailJob::new(
            ReversePath::Null,
            [ForwardPath::parse("<a@example.org>").expect("to")],
        );
        let got = smol::block_on(deliver(
            &LmtpTarget::Tcp(addr),
            "mx",
            job,
            &b"Subject: t\r\n\r\nx\r\n"[..],
        ));
        let seen = server.join().expect("server");
        assert_eq!(
            got,
            vec![Delivery::Delivered(
                crate::log::Fields::new()
                    .field("lmtp", addr)
                    .text("reply", "250 2.0.0 ok")
            )]
        );
        assert!(seen.contains("MAIL FROM:<>\r\n"), "{seen}");
    }

    #[test]
    fn per_recipient_results() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let socket = tmp.path().join("lmtp");
        let server = scripted_server(
            &socket,
            vec!["250 ok", "550 5.1.1 unknown", "250 ok", "250 ok"],
            vec!["250 2.0.0 saved", "552 5.2.2 over quota", "451 4.3.0 later"],
        );
        let job = MailJob::new(
            ReversePath::parse("<s@client.test>").expect("from"),
            ["a", "b", "c", "d"]
                .iter()
                .map(|u| ForwardPath::parse(&format!("<{u}@example.org>")).expect("to")),
        );
        let got = smol::block_on(deliver(
            &LmtpTarget::Unix(socket.clone()),
            "mx.example.org",
            job,
            &b"Received: x\r\nSubject: t\r\n\r\n.hi\r\n"[..],
        ));
        let seen = server.join().expect("server");
        let target = format!("lmtp=unix:{}", socket.display());
        assert_eq!(
            got,
            vec![
                Delivery::Delivered(
                    crate::log::Fields::new()
                        .field("lmtp", format_args!("unix:{}", socket.display()))
                        .text("reply", "250 2.0.0 saved")
                ),
                Delivery::Failed(format!("{target}: 550 5.1.1 unknown")),
                Delivery::Failed(format!("{target}: 552 5.2.2 over quota")),
                Delivery::Deferred(format!("{target}: 451 4.3.0 later")),
            ]
        );
        assert!(seen.starts_with("LHLO mx.example.org\r\n"), "{seen}");
        assert!(seen.contains("\r\n..hi\r\n.\r\n"), "{seen}");
    }

    #[test]
    fn no_server_defers_everyone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let job = MailJob::new(
            ReversePath::Null,
            [ForwardPath::parse("<a@example.org>").expect("to")],
        );
        let got = smol::block_on(deliver(
            &LmtpTarget::Unix(tmp.path().join("missing")),
            "mx",
            job,
            &b"x"[..],
        ));
        assert_eq!(got.len(), 1);
        assert!(
            matches!(&got[0], Delivery::Deferred(why) if why.contains("connect")),
            "{got:?}"
        );
    }
}

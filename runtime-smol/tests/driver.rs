//! The driver over real loopback sockets: pipelining, the body stream, STARTTLS (with
//! plaintext injected after it) and implicit TLS.

mod common;

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use async_io::Async;
use common::{Recorder, acceptor, certificate, connector, serve_one};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::pki_types::ServerName;
use proto_core::server::Config;
use runtime_smol::{Connection, TlsMode};

/// Reads until the received text contains `needle`; returns everything read.
async fn read_until<S: AsyncRead + Unpin>(stream: &mut S, needle: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "EOF before {needle:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &str) {
    stream.write_all(bytes.as_bytes()).await.expect("write");
    stream.flush().await.expect("flush");
}

#[test]
fn pipelined_transaction_streams_the_body() {
    smol::block_on(async {
        let recorder = Recorder::default();
        let connection = Connection::new(Arc::new(Config::new("mx.test")), TlsMode::None);
        let (addr, task) = serve_one(connection, recorder.clone(), true);
        let mut c = Async::<TcpStream>::connect(addr).await.expect("connect");
        read_until(&mut c, "220 mx.test").await;
        send(
            &mut c,
            "EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n",
        )
        .await;
        let replies = read_until(&mut c, "354 ").await;
        assert!(replies.contains("250 2.1.0"), "{replies}");
        assert!(replies.contains("250 2.1.5"), "{replies}");
        send(&mut c, "Subject: x\r\n\r\n..hi\r\n.\r\nQUIT\r\n").await;
        let replies = read_until(&mut c, "221 ").await;
        assert!(replies.contains("250 2.0.0 stored"), "{replies}");
        task.await;
        assert_eq!(
            recorder.calls(),
            [
                "mail <a@c.test> tls=false",
                "rcpt <b@mx.test>",
                "start",
                "data Subject: x\r\n\r\n.hi\r\n",
                "end"
            ]
        );
    });
}

#[test]
fn starttls_discards_pipelined_plaintext() {
    smol::block_on(async {
        let (certs, key) = certificate();
        let recorder = Recorder::default();
        let mut config = Config::new("mx.test");
        config.extensions.starttls = true;
        let connection = Connection::new(
            Arc::new(config),
            TlsMode::StartTls(acceptor(certs.clone(), key)),
        );
        let (addr, task) = serve_one(connection, recorder.clone(), true);
        let mut c = Async::<TcpStream>::connect(addr).await.expect("connect");
        read_until(&mut c, "220 mx.test").await;
        send(&mut c, "EHLO c.test\r\n").await;
        let ehlo = read_until(&mut c, "250 ").await;
        assert!(ehlo.contains("STARTTLS"), "{ehlo}");
        // A command injected after STARTTLS in the same packet must never be executed.
        send(&mut c, "STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n").await;
        read_until(&mut c, "220 2.0.0").await;
        let server_name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector(certs[0].clone())
            .connect(server_name, c)
            .await
            .expect("client handshake");
        send(&mut tls, "EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nQUIT\r\n").await;
        let replies = read_until(&mut tls, "221 ").await;
        assert!(!replies.contains("STARTTLS"), "{replies}");
        task.await;
        assert_eq!(recorder.calls(), ["mail <a@c.test> tls=true", "aborted"]);
    });
}

#[test]
fn implicit_tls_handshakes_first() {
    smol::block_on(async {
        let (certs, key) = certificate();
        let recorder = Recorder::default();
        let connection = Connection::new(
            Arc::new(Config::new("mx.test")),
            TlsMode::Implicit(acceptor(certs.clone(), key)),
        );
        let (addr, task) = serve_one(connection, recorder.clone(), true);
        let c = Async::<TcpStream>::connect(addr).await.expect("connect");
        let server_name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector(certs[0].clone())
            .connect(server_name, c)
            .await
            .expect("client handshake");
        read_until(&mut tls, "220 mx.test").await;
        send(
            &mut tls,
            "EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRSET\r\nQUIT\r\n",
        )
        .await;
        read_until(&mut tls, "221 ").await;
        task.await;
        assert_eq!(recorder.calls(), ["mail <a@c.test> tls=true", "aborted"]);
    });
}

#[test]
fn peer_vanishing_mid_message_aborts_the_transaction() {
    smol::block_on(async {
        let recorder = Recorder::default();
        let connection = Connection::new(Arc::new(Config::new("mx.test")), TlsMode::None);
        let (addr, task) = serve_one(connection, recorder.clone(), true);
        let mut c = Async::<TcpStream>::connect(addr).await.expect("connect");
        read_until(&mut c, "220 ").await;
        send(
            &mut c,
            "EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n",
        )
        .await;
        read_until(&mut c, "354 ").await;
        send(&mut c, "partial line\r\n").await;
        drop(c);
        task.await;
        let calls = recorder.calls();
        assert_eq!(
            calls.last().map(String::as_str),
            Some("aborted"),
            "{calls:?}"
        );
        assert!(!calls.contains(&"end".to_string()), "{calls:?}");
    });
}

#[test]
fn shutdown_lets_the_message_finish_then_closes() {
    smol::block_on(async {
        let recorder = Recorder::default();
        let shutdown = runtime_smol::Shutdown::new();
        let connection = Connection::new(Arc::new(Config::new("mx.test")), TlsMode::None)
            .with_shutdown(shutdown.clone());
        let (addr, task) = serve_one(connection, recorder.clone(), true);
        let mut c = Async::<TcpStream>::connect(addr).await.expect("connect");
        read_until(&mut c, "220 mx.test").await;
        send(
            &mut c,
            "EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n",
        )
        .await;
        read_until(&mut c, "354 ").await;
        send(&mut c, "Subject: x\r\n\r\nhalf").await;
        shutdown.trigger();
        send(&mut c, " of it\r\n.\r\n").await;
        let rest = read_until(&mut c, "421 4.3.2").await;
        assert!(
            rest.contains("250 2.0.0 stored"),
            "the message in flight is accepted: {rest}"
        );
        let mut tail = Vec::new();
        c.read_to_end(&mut tail).await.expect("read to EOF");
        task.await;
        assert!(recorder.calls().contains(&"end".to_string()));

        // An idle session closes at once.
        let shutdown = runtime_smol::Shutdown::new();
        let connection = Connection::new(Arc::new(Config::new("mx.test")), TlsMode::None)
            .with_shutdown(shutdown.clone());
        let (addr, task) = serve_one(connection, Recorder::default(), true);
        let mut c = Async::<TcpStream>::connect(addr).await.expect("connect");
        read_until(&mut c, "220 mx.test").await;
        shutdown.trigger();
        read_until(&mut c, "421 4.3.2").await;
        task.await;
    });
}

/// A stream that triggers the shutdown signal right after its first flush: the moment
/// between the driver's shutdown check and its wait for input, which a signal must not slip
/// through (it used to: the session then sat idle until its command timeout).
struct TriggerOnFlush {
    inner: Async<TcpStream>,
    shutdown: runtime_smol::Shutdown,
}

impl futures_lite::io::AsyncRead for TriggerOnFlush {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl futures_lite::io::AsyncWrite for TriggerOnFlush {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        if r.is_ready() {
            self.shutdown.trigger();
        }
        r
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[test]
fn a_shutdown_right_after_the_greeting_closes_the_idle_session() {
    smol::block_on(async {
        let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
        let addr = listener.get_ref().local_addr().expect("addr");
        let shutdown = runtime_smol::Shutdown::new();
        let mut config = Config::new("mx.test");
        // Were the signal lost, the command timeout would close the session instead.
        config.timeouts.command = std::time::Duration::from_secs(3);
        let connection =
            Connection::new(Arc::new(config), TlsMode::None).with_shutdown(shutdown.clone());
        let server = smol::spawn(async move {
            let (stream, peer) = listener.accept().await.expect("accept");
            let stream = TriggerOnFlush {
                inner: stream,
                shutdown,
            };
            let mut handler = Recorder::default();
            let peer = proto_core::server::PeerInfo::new(Some(peer), None);
            connection
                .run(stream, peer, &mut handler)
                .await
                .expect("session ends cleanly");
        });
        let mut c = Async::<TcpStream>::connect(addr).await.expect("connect");
        let mut all = String::new();
        c.read_to_string(&mut all).await.expect("read to EOF");
        server.await;
        assert!(all.starts_with("220 mx.test"), "{all}");
        assert!(
            all.contains("421 4.3.2"),
            "the shutdown reply, not a timeout: {all}"
        );
    });
}

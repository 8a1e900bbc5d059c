//! The client driver against the server driver over loopback: STARTTLS, a large body in
//! chunks, a failed handshake, a server that vanishes.

mod common;

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::Async;
use futures_lite::io::Cursor;
use futures_rustls::pki_types::ServerName;
use proto_core::{
    ForwardPath, ReversePath, client::ClientConfig, client::MailJob, client::RecipientStatus,
    client::TlsPolicy, server::Config,
};
use runtime_smol::client::{ClientTls, deliver};
use runtime_smol::{Connection, TlsMode};

use common::{Recorder, acceptor, certificate, connector, serve_one};

fn job(size: usize) -> MailJob {
    let from = ReversePath::parse("<a@client.test>").expect("from");
    let to = ForwardPath::parse("<b@server.test>").expect("to");
    let mut job = MailJob::new(from, [to]);
    job.size = Some(size as u64);
    job
}

fn server_config(starttls: bool) -> Arc<Config> {
    let mut config = Config::new("server.test");
    config.extensions.starttls = starttls;
    Arc::new(config)
}

fn client_config(tls: TlsPolicy) -> Arc<ClientConfig> {
    let mut config = ClientConfig::new("client.test");
    config.tls = tls;
    Arc::new(config)
}

/// A body of `size` bytes in lines of varied length, some starting with a dot.
fn body(size: usize) -> Vec<u8> {
    let mut b = b"Subject: big\r\n\r\n".to_vec();
    let mut n = 0u32;
    while b.len() < size {
        n += 1;
        let line = if n.is_multiple_of(7) {
            format!(".line {n}\r\n")
        } else {
            format!("line {n} {}\r\n", "x".repeat((n % 90) as usize))
        };
        b.extend_from_slice(line.as_bytes());
    }
    b
}

#[test]
fn starttls_then_a_large_body_arrives_intact() {
    smol::block_on(async {
        let (certs, key) = certificate();
        let root = certs[0].clone();
        let recorder = Recorder::default();
        let connection =
            Connection::new(server_config(true), TlsMode::StartTls(acceptor(certs, key)));
        let (addr, server) = serve_one(connection, recorder.clone(), false);

        let data = body(1_000_000);
        let stream = Async::<TcpStream>::connect(addr).await.expect("connect");
        let mut session = proto_core::client::ClientSession::new(
            client_config(TlsPolicy::Required),
            job(data.len()),
            Instant::now(),
        );
        let tls = ClientTls {
            connector: connector(root),
            server_name: ServerName::try_from("localhost").expect("name"),
            handshake_timeout: Duration::from_secs(10),
        };
        let mut opened = Vec::new();
        let mut bodies = |job: usize| {
            opened.push(job);
            Ok(Cursor::new(data.clone()))
        };
        let report = deliver(stream, &mut session, Some(&tls), &mut bodies)
            .await
            .expect("delivered");
        server.await;
        assert_eq!(opened, vec![0]);
        let tls_info = report.tls.expect("TLS negotiated");
        assert_eq!(tls_info.sni.as_deref(), Some("localhost"));
        assert_eq!(report.outcomes.len(), 1);
        assert!(report.outcomes[0].all_delivered(), "{:?}", report.outcomes);

        let calls = recorder.calls();
        assert!(
            calls.contains(&"mail <a@client.test> tls=true".to_string()),
            "{calls:?}"
        );
        let received: Vec<u8> = calls
            .iter()
            .filter_map(|c| c.strip_prefix("data "))
            .flat_map(|c| c.as_bytes().to_vec())
            .collect();
        assert_eq!(received.len(), data.len());
        assert!(received == data, "the body arrives byte for byte");
    });
}

#[test]
fn an_untrusted_certificate_fails_the_delivery_temporarily() {
    smol::block_on(async {
        let (certs, key) = certificate();
        // The client trusts a different certificate.
        let (other, _) = certificate();
        let recorder = Recorder::default();
        let connection =
            Connection::new(server_config(true), TlsMode::StartTls(acceptor(certs, key)));
        let (addr, server) = serve_one(connection, recorder.clone(), false);

        let stream = Async::<TcpStream>::connect(addr).await.expect("connect");
        let mut session = proto_core::client::ClientSession::new(
            client_config(TlsPolicy::Required),
            job(10),
            Instant::now(),
        );
        let tls = ClientTls {
            connector: connector(other[0].clone()),
            server_name: ServerName::try_from("localhost").expect("name"),
            handshake_timeout: Duration::from_secs(10),
        };
        let mut bodies = |_: usize| Ok(Cursor::new(b"x\r\n".to_vec()));
        let report = deliver(stream, &mut session, Some(&tls), &mut bodies)
            .await
            .expect("report");
        server.await;
        assert!(report.tls.is_none());
        assert!(report.tls_error.is_some());
        assert_eq!(report.outcomes.len(), 1);
        assert!(
            matches!(
                report.outcomes[0].recipients[0].status,
                RecipientStatus::TemporaryFailure(_)
            ),
            "{:?}",
            report.outcomes
        );
        assert!(
            !recorder.calls().iter().any(|c| c.starts_with("mail")),
            "no MAIL sent"
        );
    });
}

#[test]
fn a_server_that_closes_at_once_is_a_temporary_failure() {
    smol::block_on(async {
        let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
        let addr = listener.get_ref().local_addr().expect("addr");
        let server = smol::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            drop(stream);
        });
        let stream = Async::<TcpStream>::connect(addr).await.expect("connect");
        let mut session = proto_core::client::ClientSession::new(
            client_config(TlsPolicy::Opportunistic),
            job(10),
            Instant::now(),
        );
        let mut bodies = |_: usize| Ok(Cursor::new(Vec::new()));
        let report = deliver(stream, &mut session, None, &mut bodies)
            .await
            .expect("report");
        server.await;
        assert_eq!(report.outcomes.len(), 1);
        assert!(
            report.outcomes[0].recipients[0].status.is_temporary(),
            "{:?}",
            report.outcomes
        );
    });
}

#[test]
fn a_body_that_cannot_be_read_is_a_local_error() {
    smol::block_on(async {
        let recorder = Recorder::default();
        let connection = Connection::new(server_config(false), TlsMode::None);
        let (addr, server) = serve_one(connection, recorder.clone(), false);
        let stream = Async::<TcpStream>::connect(addr).await.expect("connect");
        let mut session = proto_core::client::ClientSession::new(
            client_config(TlsPolicy::Opportunistic),
            job(10),
            Instant::now(),
        );
        let mut bodies =
            |_: usize| -> std::io::Result<Cursor<Vec<u8>>> { Err(std::io::Error::other("gone")) };
        let err = deliver(stream, &mut session, None, &mut bodies)
            .await
            .expect_err("body error");
        assert!(err.to_string().contains("gone"), "{err}");
        server.await;
        let calls = recorder.calls();
        assert!(
            !calls.contains(&"end".to_string()),
            "nothing accepted: {calls:?}"
        );
    });
}

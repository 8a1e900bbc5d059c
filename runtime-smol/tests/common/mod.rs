//! What the driver tests share: a recording handler and TLS material.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use futures_rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use futures_rustls::{TlsAcceptor, TlsConnector};
use proto_core::{
    ForwardPath, MailParams, RcptParams, ReversePath, server::Credentials, server::Session,
    server::Verdict,
};
use runtime_smol::Handler;

/// Records every call, with whether TLS was active.
#[derive(Debug, Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<String>>>);

impl Recorder {
    pub fn push(&self, s: String) {
        self.0.lock().expect("lock").push(s);
    }
    pub fn calls(&self) -> Vec<String> {
        self.0.lock().expect("lock").clone()
    }
}

impl Handler for Recorder {
    async fn mail(&mut self, session: &Session, from: &ReversePath, _: &MailParams) -> Verdict {
        self.push(format!("mail {from} tls={}", session.tls().is_some()));
        Verdict::Accept
    }
    async fn rcpt(&mut self, _: &Session, to: &ForwardPath, _: &RcptParams) -> Verdict {
        self.push(format!("rcpt {to}"));
        Verdict::Accept
    }
    async fn auth(&mut self, _: &Session, _: Credentials) -> Verdict {
        self.push("auth".into());
        Verdict::Accept
    }
    async fn message_start(&mut self, _: &Session) {
        self.push("start".into());
    }
    async fn message_data(&mut self, _: &Session, chunk: Vec<u8>) {
        self.push(format!("data {}", String::from_utf8_lossy(&chunk)));
    }
    async fn message_end(&mut self, _: &Session) -> Verdict {
        self.push("end".into());
        Verdict::AcceptWithText("stored".into())
    }
    async fn aborted(&mut self, _: &Session) {
        self.push("aborted".into());
    }
}

pub fn certificate() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    let key = PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    (vec![ck.cert.der().clone()], key.into())
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn acceptor(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> TlsAcceptor {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    TlsAcceptor::from(Arc::new(config))
}

pub fn connector(cert: CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Accepts one connection on a fresh loopback port and serves it with `connection`. With
/// `clean`, the session must end without an error (a failed TLS handshake is one).
pub fn serve_one(
    connection: runtime_smol::Connection,
    recorder: Recorder,
    clean: bool,
) -> (std::net::SocketAddr, smol::Task<()>) {
    let listener =
        async_io::Async::<std::net::TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
    let addr = listener.get_ref().local_addr().expect("addr");
    let task = smol::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut handler = recorder;
        let result = connection.run_tcp(stream, &mut handler).await;
        if clean {
            result.expect("session ends cleanly");
        }
    });
    (addr, task)
}

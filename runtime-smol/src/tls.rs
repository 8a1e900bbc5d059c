//! The TLS handshake as server, and what it negotiated.

use std::time::Duration;

use async_io::Timer;
use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::TlsAcceptor;
use futures_rustls::rustls::ProtocolVersion;
use futures_rustls::rustls::pki_types::ServerName;
use futures_rustls::server::TlsStream;
use proto_core::TlsInfo;

use crate::driver::Error;

/// Runs the server handshake on `stream`, giving up after `timeout`.
pub(crate) async fn handshake<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    timeout: Duration,
) -> Result<TlsStream<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let accept = async { acceptor.accept(stream).await.map_err(Error::Handshake) };
    let timer = async {
        Timer::after(timeout).await;
        Err(Error::HandshakeTimeout)
    };
    future::or(accept, timer).await
}

/// What the handshake negotiated, for the session, logs and the `Received:` header.
pub(crate) fn info<S>(stream: &TlsStream<S>) -> TlsInfo {
    let (_, conn) = stream.get_ref();
    let (version, cipher) = negotiated(conn);
    TlsInfo::new(version, cipher, conn.server_name().map(str::to_string))
}

/// What a client handshake negotiated; `name` is the name we asked for.
pub(crate) fn client_info<S>(
    stream: &futures_rustls::client::TlsStream<S>,
    name: &ServerName<'_>,
) -> TlsInfo {
    let (_, conn) = stream.get_ref();
    let (version, cipher) = negotiated(conn);
    let sni = match name {
        ServerName::DnsName(n) => Some(n.as_ref().to_string()),
        _ => None,
    };
    TlsInfo::new(version, cipher, sni)
}

/// The protocol version and cipher suite of a connection, as text.
fn negotiated<D>(conn: &futures_rustls::rustls::ConnectionCommon<D>) -> (String, String) {
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_string(),
    };
    let cipher = match conn.negotiated_cipher_suite() {
        Some(suite) => {
            let suite = suite.suite();
            suite
                .as_str()
                .map_or_else(|| format!("{suite:?}"), iana_name)
        }
        None => "unknown".to_string(),
    };
    (version, cipher)
}

/// The IANA name of a cipher suite from rustls's: the same for TLS 1.2 suites
/// (`TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`); rustls writes TLS 1.3 ones `TLS13_...`, IANA
/// (RFC 8446 appendix B.4) `TLS_AES_256_GCM_SHA384`.
fn iana_name(rustls: &str) -> String {
    match rustls.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => rustls.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::iana_name;
    use futures_rustls::rustls::CipherSuite;

    #[test]
    fn cipher_suites_get_their_iana_names() {
        let name = |suite: CipherSuite| iana_name(suite.as_str().expect("a known suite"));
        assert_eq!(
            name(CipherSuite::TLS13_AES_256_GCM_SHA384),
            "TLS_AES_256_GCM_SHA384"
        );
        assert_eq!(
            name(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
            "TLS_CHACHA20_POLY1305_SHA256"
        );
        assert_eq!(
            name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
    }
}

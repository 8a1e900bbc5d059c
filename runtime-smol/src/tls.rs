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
                .map_or_else(|| format!("{suite:?}"), str::to_string)
        }
        None => "unknown".to_string(),
    };
    (version, cipher)
}

//! TLS client configurations for outbound delivery.
//!
//! Two kinds: *strict* ones refuse a certificate that does not verify for the host name
//! against the trusted roots (the web PKI roots plus `[delivery] tls_roots`); *lenient* ones
//! accept any certificate, since unverified TLS still beats plaintext against a passive
//! listener, but record whether it verified, so that the delivery can learn the level the
//! domain offers (see `tls_memory`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use runtime_smol::TlsConnector;
use runtime_smol::rustls::client::WebPkiServerVerifier;
use runtime_smol::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use runtime_smol::rustls::crypto::CryptoProvider;
use runtime_smol::rustls::pki_types::pem::PemObject;
use runtime_smol::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use runtime_smol::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Builds client TLS configurations sharing one root store.
#[derive(Debug, Clone)]
pub struct ClientTlsFactory {
    provider: Arc<CryptoProvider>,
    verifier: Arc<WebPkiServerVerifier>,
    strict: Arc<ClientConfig>,
}

/// A connector for one connection, and whether its certificate verified (known after the
/// handshake).
#[derive(Clone)]
pub struct Connector {
    /// The connector.
    pub connector: TlsConnector,
    /// Set once the server's certificate verified for the name asked for.
    pub verified: Arc<AtomicBool>,
    /// A strict connector completes only handshakes whose certificate verified.
    pub strict: bool,
}

/// Why the client TLS configuration could not be built (a roots file, or rustls itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsSetupError(String);

impl ClientTlsFactory {
    /// The web PKI roots plus `extra` ones (from [`load_roots`]).
    pub fn new(extra: &[CertificateDer<'static>]) -> Result<ClientTlsFactory, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra {
            roots
                .add(cert.clone())
                .map_err(|e| TlsSetupError(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsSetupError(e.to_string()))?;
        let strict = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError(e.to_string()))?
            .with_webpki_verifier(verifier.clone())
            .with_no_client_auth();
        Ok(ClientTlsFactory {
            provider,
            verifier,
            strict: Arc::new(strict),
        })
    }

    /// A connector that refuses certificates that do not verify.
    pub fn strict(&self) -> Connector {
        Connector {
            connector: TlsConnector::from(self.strict.clone()),
            verified: Arc::new(AtomicBool::new(false)),
            strict: true,
        }
    }

    /// A connector that accepts any certificate and records whether it verified.
    pub fn lenient(&self) -> Connector {
        let verified = Arc::new(AtomicBool::new(false));
        let recorder = Recording {
            inner: self.verifier.clone(),
            verified: verified.clone(),
        };
        // The builder cannot fail with the provider's own protocol versions; should it ever,
        // the strict configuration is the safe fallback.
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| {
                Arc::new(
                    b.dangerous()
                        .with_custom_certificate_verifier(Arc::new(recorder))
                        .with_no_client_auth(),
                )
            })
            .unwrap_or_else(|_| self.strict.clone());
        Connector {
            connector: TlsConnector::from(config),
            verified,
            strict: false,
        }
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("verified", &self.verified())
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Whether the certificate verified, once a handshake completed (strict connectors only
    /// complete a handshake when it did).
    pub fn verified(&self) -> bool {
        self.strict || self.verified.load(Ordering::SeqCst)
    }
}

/// Accepts every certificate; notes whether the web PKI verifier would have.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    verified: Arc<AtomicBool>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .is_ok();
        self.verified.store(ok, Ordering::SeqCst);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The certificates in PEM files (`[delivery] tls_roots`); each file must hold at least one.
pub fn load_roots(paths: &[PathBuf]) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let mut all = Vec::new();
    for path in paths {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsSetupError(format!("{}: {e}", path.display())))?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsSetupError(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(TlsSetupError(format!(
                "{}: no certificate in it",
                path.display()
            )));
        }
        all.extend(certs);
    }
    Ok(all)
}

/// The `ServerName` for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.to_string()).ok()
}

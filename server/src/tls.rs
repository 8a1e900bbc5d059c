//! Certificates: loading `certs/` (certbot layout) into a rustls server configuration.
//!
//! `certs/<name>/fullchain.pem` and `certs/<name>/privkey.pem` make one certificate, served
//! when the client asks for `<name>` with SNI; `certs/<hostname>/` is also the default, served
//! to clients that send no SNI or a name we do not have. TLS 1.2 and 1.3, ring provider.
//! (Reload on change, the acme.sh layout and wildcard names are later steps.)

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{ConfigError, Settings};

/// Picks a certificate by SNI, falling back to the host name's.
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

/// Builds the TLS configuration from `certs/`. The host name's certificate must be there.
pub fn load(settings: &Settings) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs_dir = settings.certs_dir();
    let mut by_name = HashMap::new();
    if let Ok(entries) = std::fs::read_dir(&certs_dir) {
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(name) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_ascii_lowercase)
            else {
                continue;
            };
            if !dir.join("fullchain.pem").exists() {
                continue;
            }
            by_name.insert(name, load_pair(&dir, &provider)?);
        }
    }
    let Some(default) = by_name.get(&settings.hostname).cloned() else {
        let dir = certs_dir.join(&settings.hostname);
        return Err(ConfigError {
            file: dir.join("fullchain.pem"),
            line: None,
            message: format!("no certificate for the host name {}", settings.hostname),
            fix: format!(
                "put fullchain.pem and privkey.pem for {0} in {1} (the certbot layout: a symlink to \
                 /etc/letsencrypt/live/{0} works), or change hostname in postern.toml",
                settings.hostname,
                dir.display()
            ),
        });
    };
    let resolver = SniResolver { by_name, default };
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError {
            file: certs_dir.clone(),
            line: None,
            message: format!("TLS setup failed: {e}"),
            fix: "this is a bug in postern; please report it".into(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(Arc::new(config))
}

/// Loads `fullchain.pem` and `privkey.pem` from `dir`.
fn load_pair(dir: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, ConfigError> {
    let chain_file = dir.join("fullchain.pem");
    let key_file = dir.join("privkey.pem");
    let bad = |file: &Path, message: String| ConfigError {
        file: file.to_path_buf(),
        line: None,
        message,
        fix: "put a PEM certificate chain in fullchain.pem and its PEM private key in privkey.pem"
            .into(),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&chain_file)
        .and_then(|certs| certs.collect())
        .map_err(|e| {
            bad(
                &chain_file,
                format!("cannot read the certificate chain: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(bad(&chain_file, "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| bad(&key_file, format!("cannot read the private key: {e}")))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        bad(
            &key_file,
            format!("the key does not fit the certificate: {e}"),
        )
    })?;
    Ok(Arc::new(certified))
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|name| self.by_name.get(&name.to_ascii_lowercase()))
            .unwrap_or(&self.default);
        Some(chosen.clone())
    }
}

//! Certificates: loading `certs/` into a rustls server configuration, SNI, and live reload.
//!
//! Two layouts are read, so `certs/` can be (or hold symlinks to) what an ACME client already
//! maintains; symlinks are followed:
//! - certbot: `certs/<name>/fullchain.pem` and `certs/<name>/privkey.pem` (certbot's
//!   `/etc/letsencrypt/live/` may be `certs/` itself);
//! - acme.sh: `certs/<domain>_ecc/fullchain.cer` and `certs/<domain>_ecc/<domain>.key`, and the
//!   same without `_ecc` (RSA).
//!
//! A certificate is served for the DNS names it holds (its subjectAltName entries; the
//! subject's common name when it has none), not for its directory's name. A wildcard
//! `*.example.org` matches exactly one more label: `a.example.org`, but neither
//! `a.b.example.org` nor `example.org` ([RFC 6125 section 6.4.3]). The certificate holding the
//! host name is the default, served when the client sends no SNI or a name we have no
//! certificate for. When several certificates hold a name (acme.sh keeps an RSA and an ECDSA
//! one side by side), the first whose key can sign with a scheme the client offers is served.
//! TLS 1.2 and 1.3 only, ring provider.
//!
//! [`Certificates`] is the rustls certificate resolver. Reloading ([`reload`]) builds a whole
//! new [`CertStore`] and swaps it in: handshakes that start afterwards see the new
//! certificates, connections already established keep theirs (rustls holds what it sent). At
//! startup every pair must load. On reload a pair that fails (a half-written renewal, a key
//! that does not fit) keeps its previous certificate, or is left out if it is new, and the
//! problem is reported with the file and the reason, so one broken directory does not hold
//! back the renewal of the others; a reload that would leave the host name without a
//! certificate is refused as a whole. [`Snapshot`] records every file's size and modification time, so a
//! poll can tell that something under `certs/` changed.
//!
//! [RFC 6125 section 6.4.3]: https://www.rfc-editor.org/rfc/rfc6125#section-6.4.3

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use crate::config::{ConfigError, Settings};

/// Every certificate found in `certs/`, indexed by the names they hold.
pub struct CertStore {
    /// Exact names (lower case, no trailing dot) and their certificates, in load order.
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// Wildcards: `*.example.org` is stored under `example.org`.
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// The host name's certificates.
    default: Vec<Arc<CertifiedKey>>,
    /// What was loaded, file by file.
    loaded: Vec<Loaded>,
}

/// One certificate as loaded: its chain file, its names, the certificate and key.
#[derive(Clone)]
struct Loaded {
    chain: PathBuf,
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// The certificate resolver: the current [`CertStore`], replaceable while the server runs.
pub struct Certificates {
    store: RwLock<Arc<CertStore>>,
}

/// Sizes, modification times and link targets of everything under `certs/` (one level of
/// directories), to notice renewals by polling.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot(Vec<(PathBuf, Option<PathBuf>, Option<SystemTime>, u64)>);

/// One certificate's files.
#[derive(Debug)]
struct Pair {
    chain: PathBuf,
    key: PathBuf,
}

/// Loads every certificate in `settings.certs_dir()`. Every pair must load, and the host name
/// must be covered by one.
pub fn load(settings: &Settings) -> Result<CertStore, ConfigError> {
    build(settings, None).map(|(store, _)| store)
}

/// Loads `certs/` again. A pair that fails keeps its certificate from `previous` (or is left
/// out); its problem is returned alongside the new store. Fails only when the host name would
/// have no certificate.
pub fn reload(
    settings: &Settings,
    previous: &CertStore,
) -> Result<(CertStore, Vec<ConfigError>), ConfigError> {
    build(settings, Some(previous))
}

fn build(
    settings: &Settings,
    previous: Option<&CertStore>,
) -> Result<(CertStore, Vec<ConfigError>), ConfigError> {
    let provider = provider();
    let certs_dir = settings.certs_dir();
    let mut store = CertStore {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default: Vec::new(),
        loaded: Vec::new(),
    };
    let mut problems = Vec::new();
    for pair in discover(&certs_dir) {
        let loaded = match load_pair(&pair, &provider) {
            Ok((key, names)) => Loaded {
                chain: pair.chain,
                names,
                key,
            },
            Err(e) => {
                let Some(previous) = previous else {
                    return Err(e);
                };
                let old = previous.loaded.iter().find(|l| l.chain == pair.chain);
                problems.push(e);
                match old {
                    Some(old) => old.clone(),
                    None => continue,
                }
            }
        };
        for name in &loaded.names {
            let index = match name.strip_prefix("*.") {
                Some(parent) => store.wildcard.entry(parent.to_string()),
                None => store.exact.entry(name.clone()),
            };
            index.or_default().push(loaded.key.clone());
        }
        store.loaded.push(loaded);
    }
    store.default = store.candidates(&settings.hostname).to_vec();
    if store.default.is_empty() {
        let dir = certs_dir.join(&settings.hostname);
        let mut message = format!("no certificate for the host name {}", settings.hostname);
        for problem in &problems {
            message.push_str(&format!(
                " ({}: {})",
                problem.file.display(),
                problem.message
            ));
        }
        return Err(ConfigError {
            file: dir.join("fullchain.pem"),
            line: None,
            message,
            fix: format!(
                "put fullchain.pem and privkey.pem for {0} in {1} (the certbot layout: a symlink to \
                 /etc/letsencrypt/live/{0} works; or the acme.sh layout, {2}_ecc/fullchain.cer and \
                 {0}.key), or change hostname in postern.toml",
                settings.hostname,
                dir.display(),
                certs_dir.join(&settings.hostname).display()
            ),
        });
    }
    Ok((store, problems))
}

/// The crypto provider postern uses everywhere: ring.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate directories under `certs_dir`, in name order. Entries of neither layout
/// (certbot's README, stray files) are skipped.
fn discover(certs_dir: &Path) -> Vec<Pair> {
    let Ok(entries) = std::fs::read_dir(certs_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .filter_map(|dir| {
            let name = dir.file_name()?.to_str()?.to_string();
            if dir.join("fullchain.pem").exists() {
                Some(Pair {
                    chain: dir.join("fullchain.pem"),
                    key: dir.join("privkey.pem"),
                })
            } else if dir.join("fullchain.cer").exists() {
                let domain = name.strip_suffix("_ecc").unwrap_or(&name);
                Some(Pair {
                    chain: dir.join("fullchain.cer"),
                    key: dir.join(format!("{domain}.key")),
                })
            } else {
                None
            }
        })
        .collect()
}

/// Loads one chain and its key, and the DNS names of its first certificate.
fn load_pair(
    pair: &Pair,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), ConfigError> {
    let bad = |file: &Path, message: String| ConfigError {
        file: file.to_path_buf(),
        line: None,
        message,
        fix: format!(
            "put the PEM certificate chain (server certificate first) in {} and its PEM private \
             key in {}",
            pair.chain.display(),
            pair.key.display()
        ),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.chain)
        .and_then(|certs| certs.collect())
        .map_err(|e| {
            bad(
                &pair.chain,
                format!("cannot read the certificate chain: {e}"),
            )
        })?;
    let Some(leaf) = chain.first() else {
        return Err(bad(&pair.chain, "no certificate in it".into()));
    };
    let names = dns_names(leaf).map_err(|reason| bad(&pair.chain, reason))?;
    let key = PrivateKeyDer::from_pem_file(&pair.key)
        .map_err(|e| bad(&pair.key, format!("cannot read the private key: {e}")))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        bad(
            &pair.key,
            format!(
                "the key does not fit the certificate in {}: {e}",
                pair.chain.display()
            ),
        )
    })?;
    Ok((Arc::new(certified), names))
}

/// The DNS names a certificate is valid for, lower case: its subjectAltName DNS entries, or
/// its subject's common name when it has no subjectAltName.
fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("the first certificate cannot be parsed: {e}"))?;
    let mut names = Vec::new();
    match cert.subject_alternative_name() {
        Ok(Some(san)) => {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    names.push(normalise(dns));
                }
            }
        }
        Ok(None) => {
            for cn in cert.subject().iter_common_name() {
                if let Ok(cn) = cn.as_str() {
                    names.push(normalise(cn));
                }
            }
        }
        Err(e) => return Err(format!("its subjectAltName cannot be parsed: {e}")),
    }
    if names.is_empty() {
        return Err("the certificate holds no DNS name (no subjectAltName DNS entry)".into());
    }
    Ok(names)
}

/// A name as compared: lower case, without a trailing dot.
fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl CertStore {
    /// The certificates valid for `name`: exact names first, then a wildcard one label up.
    fn candidates(&self, name: &str) -> &[Arc<CertifiedKey>] {
        let name = normalise(name);
        if let Some(found) = self.exact.get(&name) {
            return found;
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(found) = self.wildcard.get(parent)
        {
            return found;
        }
        &[]
    }

    /// What was loaded, for a log line: `file (name, name) file (name)`.
    /// The chain file of the default certificate (the one holding the host name) and when
    /// it expires (its first certificate's notAfter).
    pub fn default_expiry(&self) -> Option<(PathBuf, SystemTime)> {
        let key = self.default.first()?;
        let loaded = self.loaded.iter().find(|l| Arc::ptr_eq(&l.key, key))?;
        let der = key.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
        Some((
            loaded.chain.clone(),
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        ))
    }

    pub fn summary(&self) -> String {
        self.loaded
            .iter()
            .map(|l| format!("{} ({})", l.chain.display(), l.names.join(", ")))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Certificates {
    /// A resolver serving `store`.
    pub fn new(store: CertStore) -> Arc<Certificates> {
        Arc::new(Certificates {
            store: RwLock::new(Arc::new(store)),
        })
    }

    /// Serves `store` to every handshake from now on.
    pub fn replace(&self, store: CertStore) {
        let store = Arc::new(store);
        match self.store.write() {
            Ok(mut current) => *current = store,
            Err(poisoned) => *poisoned.into_inner() = store,
        }
    }

    /// The certificates served now.
    pub fn current(&self) -> Arc<CertStore> {
        match self.store.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The rustls configuration resolving through `self`: TLS 1.2 and 1.3, no client auth.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, ConfigError> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ConfigError {
                file: PathBuf::from("certs"),
                line: None,
                message: format!("TLS setup failed: {e}"),
                fix: "this is a bug in postern; please report it".into(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }
}

impl Snapshot {
    /// Records everything under `certs_dir` and one level of directories below it.
    pub fn take(certs_dir: &Path) -> Snapshot {
        let mut entries = Vec::new();
        let mut record = |path: PathBuf| {
            let link = std::fs::read_link(&path).ok();
            let meta = std::fs::metadata(&path).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.as_ref().map_or(0, |m| m.len());
            entries.push((path, link, modified, len));
        };
        if let Ok(top) = std::fs::read_dir(certs_dir) {
            for entry in top.flatten() {
                let path = entry.path();
                if path.is_dir()
                    && let Ok(inner) = std::fs::read_dir(&path)
                {
                    for file in inner.flatten() {
                        record(file.path());
                    }
                }
                record(path);
            }
        }
        entries.sort();
        Snapshot(entries)
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("loaded", &self.summary())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("store", &self.current())
            .finish()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let store = self.current();
        let by_name = hello
            .server_name()
            .map(|name| store.candidates(name))
            .filter(|found| !found.is_empty())
            .unwrap_or(&store.default);
        let schemes = hello.signature_schemes();
        by_name
            .iter()
            .find(|c| c.key.choose_scheme(schemes).is_some())
            .or_else(|| by_name.first())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(names: &[&[&str]]) -> CertStore {
        let provider = provider();
        let mut store = CertStore {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: Vec::new(),
            loaded: Vec::new(),
        };
        for list in names {
            let ck = rcgen::generate_simple_self_signed(
                list.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .expect("rcgen");
            let der = ck.cert.der().clone();
            let found = dns_names(&der).expect("names");
            assert_eq!(found, *list);
            let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).expect("key");
            let certified =
                Arc::new(CertifiedKey::from_der(vec![der], key, &provider).expect("pair"));
            for name in found {
                match name.strip_prefix("*.") {
                    Some(p) => store
                        .wildcard
                        .entry(p.into())
                        .or_default()
                        .push(certified.clone()),
                    None => store.exact.entry(name).or_default().push(certified.clone()),
                }
            }
        }
        store
    }

    #[test]
    fn wildcards_match_one_label() {
        let store = store_with(&[&["mx.example.org"], &["*.example.org"]]);
        let cases = [
            ("mx.example.org", true),
            ("MX.Example.Org.", true),
            ("a.example.org", true),
            ("a.b.example.org", false),
            ("example.org", false),
            ("example.com", false),
        ];
        for (name, found) in cases {
            assert_eq!(!store.candidates(name).is_empty(), found, "name {name:?}");
        }
    }
}

//! DKIM for the local domains: keys on disk, the DNS records to publish, signing, and
//! verifying by hand.
//!
//! # Keys
//!
//! A local domain's keys are the files `domains/<domain>/dkim/<selector>.pem`: the file stem
//! is the selector (RFC 6376 3.1: one or more labels of letters, digits and inner hyphens).
//! Ed25519 keys are PKCS#8 (`BEGIN PRIVATE KEY`, what `openssl genpkey -algorithm ed25519`
//! writes); RSA keys are PKCS#8 or PKCS#1 (`BEGIN RSA PRIVATE KEY`), 2048 bits at least
//! (RFC 8301 3.2: "Signers MUST use RSA keys of at least 1024 bits for all keys. Signers
//! SHOULD use RSA keys of at least 2048 bits."; postern makes the SHOULD a must). Every key
//! of a domain signs each message, so a domain can sign with Ed25519 (RFC 8463) and RSA
//! together, and keys can be rotated by adding the new selector, publishing it, then
//! removing the old file. Other files in `dkim/` are ignored; a `.pem` that cannot be used
//! is an error naming the file, so it is never skipped silently.
//!
//! `postern dkim keygen` writes keys in PKCS#8, mode 0600, never over an existing file.
//!
//! # Records
//!
//! [`DkimKey::dns_record`] gives `<selector>._domainkey.<domain>` TXT
//! `v=DKIM1; k=rsa|ed25519; p=<key>` (RFC 6376 3.6.1): for RSA the SubjectPublicKeyInfo
//! (what `openssl rsa -pubout` gives, and what most published records carry; the key
//! generator's PKCS#1 form is converted), for Ed25519 the raw 32-octet key (RFC 8463 4.2).
//! The value is cut into strings of at most 255 octets, the limit of one TXT string
//! (RFC 1035 3.3.14); verifiers join them (RFC 6376 3.6.2.2).
//!
//! # Signing
//!
//! [`Signer`] signs with every key of a domain: relaxed/relaxed (the canonicalization that
//! survives the usual rewrapping by relays), SHA-256, over [`SIGNED_FIELDS`] and every
//! `List-*` field present, with [`OVERSIGNED_FIELDS`] listed once more than they occur so that
//! none can be added after signing (RFC 6376 5.4.2, 8.15). The body streams through
//! [`proto_core::dkim::BodyHasher`]; only the header block is kept, up to
//! [`MAX_HEADER_BLOCK`]. The header hash input is computed by proto-core and signed with
//! mail-auth's keys (RSA PKCS#1 v1.5 over SHA-256; Ed25519 over the SHA-256 of the input,
//! RFC 8463 3).
//!
//! # Verifying
//!
//! [`verify`] checks the signatures of a message with mail-auth, the DNS answers coming from
//! our own stub resolver ([`crate::dns`]) through mail-auth's cache ([`crate::mailauth::dns`];
//! mail-auth's resolver is built without servers and never reaches the network).

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::mailauth::authdns::{AuthDns, TxtKind};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey as _};
use mail_auth::{AuthenticatedMessage, DkimResult};
use proto_core::Domain;
use proto_core::dkim::{BodyHasher, Canonicalization, HashAlgorithm, HeaderFields, HeaderSection};
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};

use crate::dns::Resolver;
use crate::mailauth::dns::Fetched;

/// The directory of a domain's keys, inside `domains/<domain>/`.
pub const KEY_DIR: &str = "dkim";

/// The smallest RSA key loaded or generated, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// The largest header block a [`Signer`] keeps; a longer one fails to sign.
pub const MAX_HEADER_BLOCK: usize = 1024 * 1024;

/// The fields signed when present, in `h=` order.
pub const SIGNED_FIELDS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// The fields listed once more in `h=` than they occur (once if absent): adding one after
/// signing breaks the signature.
pub const OVERSIGNED_FIELDS: &[&str] = &["From", "Subject", "Date", "To", "Cc", "Message-ID"];

/// The longest line of a `DKIM-Signature` field written (RFC 5322 2.1.1 "SHOULD be no more
/// than 78 characters").
const LINE_WIDTH: usize = 78;

/// What the DKIM functions fail with. Each names the file or the domain concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DkimError {
    /// Not a domain name.
    #[error("{0:?} is not a domain name")]
    BadDomain(String),
    /// The domain has no directory.
    #[error("unknown domain {domain}: there is no directory {}; create it to make the domain local", dir.display())]
    UnknownDomain {
        /// The domain.
        domain: String,
        /// The directory that would make it local.
        dir: PathBuf,
    },
    /// Not a usable selector.
    #[error(
        "{0:?} is not a valid selector: use letters, digits, inner hyphens and dots (e.g. ed-202601)"
    )]
    BadSelector(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
    /// A key file that cannot be used.
    #[error("{}: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `keygen` would overwrite a key.
    #[error("{} already exists: choose another selector with --selector (a key is never overwritten)", .0.display())]
    Exists(PathBuf),
    /// Key generation failed.
    #[error("cannot generate the key: {0}")]
    Generate(String),
    /// The message has no From field (RFC 6376 5.4: "The From header field MUST be signed").
    #[error("the message has no From field")]
    NoFrom,
    /// The header block is longer than [`MAX_HEADER_BLOCK`].
    #[error("the header block is longer than {MAX_HEADER_BLOCK} octets")]
    HeaderTooLong,
    /// The public-key operation failed.
    #[error("cannot sign with selector {selector}: {reason}")]
    Sign {
        /// The key's selector.
        selector: String,
        /// mail-auth's message.
        reason: String,
    },
    /// The message could not be parsed for verifying.
    #[error("cannot parse the message")]
    Unparsable,
}

/// The kind of key `keygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// Ed25519 (RFC 8463): short records, fast; not every verifier knows it yet.
    Ed25519,
    /// RSA, 2048 bits: verified everywhere, fits a record of two TXT strings.
    Rsa2048,
    /// RSA, 3072 bits.
    Rsa3072,
}

/// One signing key of a domain.
pub struct DkimKey {
    selector: String,
    path: PathBuf,
    kind: KeyKind,
}

enum KeyKind {
    Ed25519(Ed25519Key),
    Rsa {
        key: RsaKey<Sha256>,
        bits: usize,
        /// SubjectPublicKeyInfo, DER.
        spki: Vec<u8>,
    },
}

/// A DNS record to publish: a TXT record at `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// `<selector>._domainkey.<domain>` in A-label form, without the final dot.
    pub name: String,
    /// The record's text, `v=DKIM1; k=...; p=...`, as one string.
    pub value: String,
}

/// The keys of one local domain.
#[derive(Debug)]
pub struct DkimKeys {
    /// The domain in A-label form (the `d=` tag).
    domain: String,
    keys: Vec<DkimKey>,
}

/// Signs one message with every key of a domain: see the module doc.
///
/// Call order: [`Signer::new`]; [`Signer::update`] with the message (header block, empty
/// line and body, as stored: CRLF line ends, no dot-stuffing) in consecutive chunks of any
/// size; then [`Signer::finish`] once, with the keys of the From domain. The keys are needed
/// only at the end (every key hashes the body the same way), so the From domain can be read
/// from [`Signer::header`] once the header block is complete.
#[derive(Debug)]
pub struct Signer {
    state: SignerState,
    body: BodyHasher,
    /// Header fields that go on top of the message, signed with its own ([`Signer::prepend`]).
    prefix: Vec<u8>,
}

#[derive(Debug)]
enum SignerState {
    /// Collecting the header block.
    Header(HeaderSection),
    /// The header block is complete (its final CRLF included); the body streams.
    Body { header: Vec<u8> },
    /// Failed for good (the header block was too long).
    Failed,
}

/// The outcome of one signature, from [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The `d=` tag.
    pub domain: String,
    /// The `s=` tag.
    pub selector: String,
    /// `pass`, or why not (mail-auth's words).
    pub result: String,
    /// Whether it passed.
    pub pass: bool,
}

impl DkimKey {
    /// Reads a key from a PEM file; the selector is the file stem.
    pub fn load(path: &Path) -> Result<DkimKey, DkimError> {
        let selector = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| valid_selector(s))
            .ok_or_else(|| DkimError::BadKey {
                path: path.to_path_buf(),
                reason: "the file name is not <selector>.pem with a valid selector".into(),
            })?
            .to_string();
        let pem = fs::read(path).map_err(|source| DkimError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        DkimKey::from_pem(selector, path, &pem)
    }

    /// A key from PEM text (PKCS#8 Ed25519 or RSA, or PKCS#1 RSA); `path` is for messages.
    pub fn from_pem(selector: String, path: &Path, pem: &[u8]) -> Result<DkimKey, DkimError> {
        let bad = |reason: String| DkimError::BadKey {
            path: path.to_path_buf(),
            reason,
        };
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| bad(format!("no private key in PEM form ({e})")))?;
        let rsa = match &der {
            PrivateKeyDer::Pkcs8(p8) => {
                if let Ok(key) = Ed25519Key::from_pkcs8_der(p8.secret_pkcs8_der()) {
                    return Ok(DkimKey {
                        selector,
                        path: path.to_path_buf(),
                        kind: KeyKind::Ed25519(key),
                    });
                }
                rsa::RsaPrivateKey::from_pkcs8_der(p8.secret_pkcs8_der()).map_err(|e| {
                    bad(format!(
                        "a PKCS#8 key that is neither Ed25519 nor RSA ({e})"
                    ))
                })?
            }
            PrivateKeyDer::Pkcs1(p1) => rsa::RsaPrivateKey::from_pkcs1_der(p1.secret_pkcs1_der())
                .map_err(|e| bad(format!("not an RSA key ({e})")))?,
            _ => {
                return Err(bad(
                    "an EC (SEC1) key: DKIM uses Ed25519 or RSA (postern dkim keygen)".into(),
                ));
            }
        };
        let bits = rsa.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(bad(format!(
                "an RSA key of {bits} bits: at least {MIN_RSA_BITS} are needed"
            )));
        }
        let spki = rsa::RsaPublicKey::from(&rsa)
            .to_public_key_der()
            .map_err(|e| bad(e.to_string()))?
            .as_bytes()
            .to_vec();
        let pkcs1 = rsa.to_pkcs1_der().map_err(|e| bad(e.to_string()))?;
        let key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(
            pkcs1.as_bytes().to_vec(),
        )))
        .map_err(|e| bad(e.to_string()))?;
        Ok(DkimKey {
            selector,
            path: path.to_path_buf(),
            kind: KeyKind::Rsa { key, bits, spki },
        })
    }

    /// An Ed25519 key from its 32-octet seed (RFC 8032 private key), e.g. a test vector's.
    #[cfg(test)]
    pub fn ed25519_from_seed(selector: &str, seed: &[u8]) -> Result<DkimKey, DkimError> {
        let bad = |reason: String| DkimError::BadKey {
            path: PathBuf::from(format!("<seed of {selector}>")),
            reason,
        };
        let seed: &[u8; 32] = seed
            .try_into()
            .map_err(|_| bad(format!("a seed is 32 octets, not {}", seed.len())))?;
        let key =
            Ed25519Key::from_pkcs8_der(&ed25519_pkcs8(seed)).map_err(|e| bad(e.to_string()))?;
        Ok(DkimKey {
            selector: selector.to_string(),
            path: PathBuf::new(),
            kind: KeyKind::Ed25519(key),
        })
    }

    /// The selector (`s=`).
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The file it was read from (empty for keys not read from a file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The signature algorithm (`a=`): `ed25519-sha256` or `rsa-sha256`.
    pub fn algorithm(&self) -> &'static str {
        match self.kind {
            KeyKind::Ed25519(_) => "ed25519-sha256",
            KeyKind::Rsa { .. } => "rsa-sha256",
        }
    }

    /// A short description: `ed25519` or `rsa 2048 bits`.
    pub fn describe(&self) -> String {
        match &self.kind {
            KeyKind::Ed25519(_) => "ed25519".into(),
            KeyKind::Rsa { bits, .. } => format!("rsa {bits} bits"),
        }
    }

    /// The record to publish for this key under `domain` (A-label form).
    pub fn dns_record(&self, domain: &str) -> DnsRecord {
        let (k, p) = match &self.kind {
            KeyKind::Ed25519(key) => ("ed25519", BASE64.encode(key.public_key())),
            KeyKind::Rsa { spki, .. } => ("rsa", BASE64.encode(spki)),
        };
        DnsRecord {
            name: format!("{}._domainkey.{domain}", self.selector),
            value: format!("v=DKIM1; k={k}; p={p}"),
        }
    }

    /// Signs the header hash input (RSA: PKCS#1 v1.5 over its SHA-256; Ed25519: over its
    /// SHA-256, RFC 8463 3).
    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, DkimError> {
        let result = match &self.kind {
            KeyKind::Ed25519(key) => key.sign(input),
            KeyKind::Rsa { key, .. } => key.sign(input),
        };
        result.map_err(|e| DkimError::Sign {
            selector: self.selector.clone(),
            reason: e.to_string(),
        })
    }
}

/// One of our keys through mail-auth's signing trait, borrowed: for mail-auth's ARC sealer.
#[derive(Debug, Clone, Copy)]
pub struct SealingKey<'a>(pub &'a DkimKey);

impl mail_auth::common::crypto::SigningKey for SealingKey<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl mail_auth::common::headers::Writable) -> mail_auth::Result<Vec<u8>> {
        match &self.0.kind {
            KeyKind::Ed25519(key) => key.sign(input),
            KeyKind::Rsa { key, .. } => key.sign(input),
        }
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        match &self.0.kind {
            KeyKind::Ed25519(key) => key.algorithm(),
            KeyKind::Rsa { key, .. } => key.algorithm(),
        }
    }
}

impl Default for Signer {
    fn default() -> Self {
        Signer::new()
    }
}

impl fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("selector", &self.selector)
            .field("path", &self.path)
            .field("kind", &self.describe())
            .finish_non_exhaustive()
    }
}

impl DnsRecord {
    /// The value cut into strings of at most 255 octets (RFC 1035 3.3.14), in order.
    pub fn strings(&self) -> Vec<&str> {
        // The value is ASCII (base64 and tags), so any cut is on a character boundary.
        let mut rest = self.value.as_str();
        let mut out = Vec::new();
        while rest.len() > 255 {
            let (head, tail) = rest.split_at(255);
            out.push(head);
            rest = tail;
        }
        out.push(rest);
        out
    }

    /// The record as a zone-file line: `name. IN TXT "..." "..."`.
    pub fn zone_line(&self) -> String {
        let strings: Vec<String> = self.strings().iter().map(|s| format!("\"{s}\"")).collect();
        format!("{}. IN TXT {}", self.name, strings.join(" "))
    }
}

/// The keys of each local domain, read again only when its `dkim/` directory changes (a file
/// added, removed or rewritten): signing and ARC sealing ask for them at every message, and
/// parsing an RSA key is far costlier than the few `stat`s that tell whether it changed.
#[derive(Debug)]
pub struct KeyCache {
    config_dir: PathBuf,
    entries:
        std::sync::Mutex<std::collections::HashMap<String, (KeyStamp, std::sync::Arc<DkimKeys>)>>,
}

/// What the key files of a domain looked like: (path, modification time, size) of each.
type KeyStamp = Vec<(PathBuf, Option<SystemTime>, u64)>;

impl KeyCache {
    /// Keys under `config_dir` (`domains/<domain>/dkim/`).
    pub fn new(config_dir: PathBuf) -> KeyCache {
        KeyCache {
            config_dir,
            entries: std::sync::Mutex::default(),
        }
    }

    /// The keys of `domain`, as [`DkimKeys::load`] reads them. Blocking (file system).
    pub fn get(&self, domain: &str) -> Result<std::sync::Arc<DkimKeys>, DkimError> {
        let (ascii, dir) = domain_dir(&self.config_dir, domain)?;
        let stamp: KeyStamp = match fs::read_dir(dir.join(KEY_DIR)) {
            Ok(entries) => {
                let mut stamp: KeyStamp = entries
                    .flatten()
                    .filter_map(|e| {
                        let meta = e.metadata().ok()?;
                        Some((e.path(), meta.modified().ok(), meta.len()))
                    })
                    .collect();
                stamp.sort();
                stamp
            }
            Err(_) => Vec::new(),
        };
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seen, keys)) = entries.get(&ascii)
            && *seen == stamp
        {
            return Ok(keys.clone());
        }
        let keys = std::sync::Arc::new(DkimKeys::load(&self.config_dir, domain)?);
        entries.insert(ascii, (stamp, keys.clone()));
        Ok(keys)
    }
}

impl DkimKeys {
    /// The keys of the local domain `domain` (Unicode or A-label, any case) under
    /// `config_dir`: every `domains/<domain>/dkim/*.pem`, sorted by selector. No `dkim/`
    /// directory means no keys (the domain's mail goes out unsigned); an unknown domain or
    /// an unusable key file is an error.
    pub fn load(config_dir: &Path, domain: &str) -> Result<DkimKeys, DkimError> {
        let (ascii, dir) = domain_dir(config_dir, domain)?;
        let key_dir = dir.join(KEY_DIR);
        let entries = match fs::read_dir(&key_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DkimKeys {
                    domain: ascii,
                    keys: Vec::new(),
                });
            }
            Err(source) => {
                return Err(DkimError::Io {
                    path: key_dir,
                    source,
                });
            }
        };
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| DkimError::Io {
                path: key_dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pem")
                && !entry.file_name().to_string_lossy().starts_with('.')
            {
                paths.push(path);
            }
        }
        paths.sort();
        let keys = paths
            .iter()
            .map(|p| DkimKey::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DkimKeys {
            domain: ascii,
            keys,
        })
    }

    /// Keys given directly; `domain` in A-label form.
    #[cfg(test)]
    pub fn new(domain: &str, keys: Vec<DkimKey>) -> DkimKeys {
        DkimKeys {
            domain: domain.to_ascii_lowercase(),
            keys,
        }
    }

    /// The domain (`d=`), in A-label form.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The keys, sorted by selector when loaded from disk.
    pub fn keys(&self) -> &[DkimKey] {
        &self.keys
    }

    /// Whether the domain has no key (its mail goes out unsigned).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Signs a whole message in memory: [`Signer`] in one call.
    #[cfg(test)]
    pub fn sign(&self, message: &[u8], now: SystemTime) -> Result<Vec<String>, DkimError> {
        let mut signer = Signer::new();
        signer.update(message);
        signer.finish(self, now)
    }
}

impl Signer {
    /// A signer at the start of a message.
    pub fn new() -> Signer {
        Signer {
            state: SignerState::Header(HeaderSection::new(MAX_HEADER_BLOCK)),
            body: BodyHasher::new(Canonicalization::Relaxed, HashAlgorithm::Sha256),
            prefix: Vec::new(),
        }
    }

    /// Signs `fields` (complete header fields, each ending in CRLF) as part of the header
    /// block, above the message's own fields: for fields added on top before it goes out
    /// (the `Date` and `Message-ID` an MSA supplies).
    pub fn prepend(&mut self, fields: &str) {
        let mut prefix = fields.as_bytes().to_vec();
        prefix.append(&mut self.prefix);
        self.prefix = prefix;
    }

    /// The header block (its final CRLF included, not the empty line), once the empty line
    /// after it has been fed; `None` before, or if it was longer than [`MAX_HEADER_BLOCK`].
    pub fn header(&self) -> Option<&[u8]> {
        match &self.state {
            SignerState::Body { header } => Some(header),
            SignerState::Header { .. } | SignerState::Failed => None,
        }
    }

    /// Feeds the next piece of the message.
    pub fn update(&mut self, chunk: &[u8]) {
        match &mut self.state {
            SignerState::Header(section) => {
                if let Some(body) = section.feed(chunk) {
                    self.body.update(body);
                    self.state = SignerState::Body {
                        header: section.take(),
                    };
                } else if section.is_too_long() {
                    self.state = SignerState::Failed;
                }
            }
            SignerState::Body { .. } => self.body.update(chunk),
            SignerState::Failed => {}
        }
    }

    /// Ends the message: one `DKIM-Signature` field per key of `keys`, in key order, each a
    /// complete folded field ending with CRLF, to be put at the top of the message (no field
    /// for a domain without keys). `now` is the signing time (`t=`). An error means the
    /// message must not go out unsigned: the submission answers 451.
    pub fn finish(self, keys: &DkimKeys, now: SystemTime) -> Result<Vec<String>, DkimError> {
        let header = match self.state {
            SignerState::Body { header } => header,
            // No empty line: all header, no body.
            SignerState::Header(mut section) => section.take(),
            SignerState::Failed => return Err(DkimError::HeaderTooLong),
        };
        let header = if self.prefix.is_empty() {
            header
        } else {
            let mut whole = self.prefix;
            whole.extend_from_slice(&header);
            whole
        };
        let body_hash = self.body.finish().to_base64();
        let names = signed_names(&header)?;
        let t = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        keys.keys
            .iter()
            .map(|key| {
                let mut field = Folder::new("DKIM-Signature:");
                for tag in [
                    "v=1;".to_string(),
                    format!("a={};", key.algorithm()),
                    "c=relaxed/relaxed;".to_string(),
                    format!("d={};", keys.domain),
                    format!("s={};", key.selector),
                    format!("t={t};"),
                ] {
                    field.push(&tag, true);
                }
                // Folded after a colon, never inside a name.
                for (i, name) in names.iter().enumerate() {
                    let prefix = if i == 0 { "h=" } else { "" };
                    let suffix = if i + 1 == names.len() { ";" } else { ":" };
                    field.push(&format!("{prefix}{name}{suffix}"), i == 0);
                }
                field.push(&format!("bh={body_hash};"), true);
                field.push("b=", true);
                sign_field(key, &header, &names, field)
            })
            .collect()
    }
}

/// Completes `field` (which ends with `b=`) with the signature of `key`: what the header hash
/// covers is the header block's fields named by `names` and the field itself, relaxed.
fn sign_field(
    key: &DkimKey,
    header: &[u8],
    names: &[String],
    mut field: Folder,
) -> Result<String, DkimError> {
    let b = BASE64.encode(sign_header(key, header, names, field.text.as_bytes())?);
    let mut rest = b.as_str();
    while !rest.is_empty() {
        let room = LINE_WIDTH
            .saturating_sub(field.line)
            .max(16)
            .min(rest.len());
        let (piece, tail) = rest.split_at(room);
        field.push(piece, false);
        rest = tail;
    }
    field.text.push_str("\r\n");
    Ok(field.text)
}

/// The signature (`b=`, decoded) of the relaxed header hash input for `signature_field`
/// (a `DKIM-Signature` field whose `b=` is empty) with `key`.
pub fn sign_header<N: AsRef<[u8]>>(
    key: &DkimKey,
    header: &[u8],
    names: &[N],
    signature_field: &[u8],
) -> Result<Vec<u8>, DkimError> {
    let mut input = Vec::new();
    proto_core::dkim::header_hash_input(
        Canonicalization::Relaxed,
        header,
        names,
        signature_field,
        &mut input,
    );
    key.sign(&input)
}

/// The `h=` list for a header block: see [`SIGNED_FIELDS`], [`OVERSIGNED_FIELDS`].
fn signed_names(header: &[u8]) -> Result<Vec<String>, DkimError> {
    let fields: Vec<_> = HeaderFields::new(header).collect();
    let count = |name: &str| {
        fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
            .count()
    };
    if count("From") == 0 {
        return Err(DkimError::NoFrom);
    }
    let mut names = Vec::new();
    for name in SIGNED_FIELDS {
        let extra = usize::from(OVERSIGNED_FIELDS.contains(name));
        names.extend(std::iter::repeat_n(name.to_string(), count(name) + extra));
    }
    for field in &fields {
        if field.name.len() > 5 && field.name[..5].eq_ignore_ascii_case(b"List-") {
            // Names are tokens of printable ASCII (RFC 5322 2.2): anything else is left out.
            if let Ok(name) = std::str::from_utf8(field.name)
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b':' && b != b';')
            {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

/// Builds a folded field: pieces are appended on the current line while it stays within
/// [`LINE_WIDTH`], else after CRLF SP.
#[derive(Debug)]
struct Folder {
    text: String,
    /// The length of the current line.
    line: usize,
}

impl Folder {
    fn new(start: &str) -> Folder {
        Folder {
            text: start.to_string(),
            line: start.len(),
        }
    }

    /// Appends `piece`, after a space if `space` (folding also separates).
    fn push(&mut self, piece: &str, space: bool) {
        let width = self.line + usize::from(space) + piece.len();
        if width > LINE_WIDTH && self.line > 1 {
            self.text.push_str("\r\n ");
            self.line = 1;
        } else if space {
            self.text.push(' ');
            self.line += 1;
        }
        self.text.push_str(piece);
        self.line += piece.len();
    }
}

/// The A-label form of a local domain and its directory, or why not.
fn domain_dir(config_dir: &Path, domain: &str) -> Result<(String, PathBuf), DkimError> {
    let bad = || DkimError::BadDomain(domain.to_string());
    let parsed = Domain::parse(domain.trim_end_matches('.')).map_err(|_| bad())?;
    if matches!(parsed, Domain::Literal(_)) {
        return Err(bad());
    }
    let ascii = parsed.to_ascii().map_err(|_| bad())?;
    let unicode = parsed.to_unicode();
    let domains = config_dir.join("domains");
    [&unicode, &ascii]
        .into_iter()
        .map(|name| domains.join(name))
        .find(|dir| dir.is_dir())
        .map(|dir| (ascii.clone(), dir))
        .ok_or_else(|| DkimError::UnknownDomain {
            domain: unicode.clone(),
            dir: domains.join(&unicode),
        })
}

/// RFC 6376 3.1: `selector = sub-domain *( "." sub-domain )`, sub-domain as in RFC 5321.
pub fn valid_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The default selector of a new key: `ed-YYYYMM` or `rsa-YYYYMM` (the month of `now`), so
/// one key of each kind can be made a month and rotated keys get new names.
pub fn default_selector(algorithm: KeyAlgorithm, now: SystemTime) -> String {
    let date = crate::reception::trace::rfc3339(now);
    let prefix = match algorithm {
        KeyAlgorithm::Ed25519 => "ed",
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => "rsa",
    };
    format!("{prefix}-{}{}", &date[..4], &date[5..7])
}

/// Generates a key for the local domain `domain` and writes it to
/// `domains/<domain>/dkim/<selector>.pem` (PKCS#8, mode 0600); refuses to replace a file.
/// Returns the key as loaded back from the file, and the domain's A-label form.
pub fn generate(
    config_dir: &Path,
    domain: &str,
    selector: &str,
    algorithm: KeyAlgorithm,
) -> Result<(DkimKey, String), DkimError> {
    let (ascii, dir) = domain_dir(config_dir, domain)?;
    if !valid_selector(selector) {
        return Err(DkimError::BadSelector(selector.to_string()));
    }
    let key_dir = dir.join(KEY_DIR);
    let path = key_dir.join(format!("{selector}.pem"));
    if path.exists() {
        return Err(DkimError::Exists(path));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DkimError::Io { path, source }
    };
    let generate = |e: mail_auth::Error| DkimError::Generate(e.to_string());
    let pem: String = match algorithm {
        KeyAlgorithm::Ed25519 => {
            // Not mail-auth's generator: it writes PKCS#8 v2 (with the public key), which
            // OpenSSL 3.0 cannot read; v1 is what `openssl genpkey` writes.
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| DkimError::Generate(e.to_string()))?;
            let pem = pem_encode("PRIVATE KEY", &ed25519_pkcs8(&seed));
            seed.fill(0);
            pem
        }
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => {
            let bits = if algorithm == KeyAlgorithm::Rsa2048 {
                2048
            } else {
                3072
            };
            let pair =
                mail_auth::dkim::generate::DkimKeyPair::generate_rsa(bits).map_err(generate)?;
            // mail-auth writes PKCS#1: store PKCS#8, like the Ed25519 keys.
            let key = rsa::RsaPrivateKey::from_pkcs1_der(pair.private_key())
                .map_err(|e| DkimError::Generate(e.to_string()))?;
            key.to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| DkimError::Generate(e.to_string()))?
                .to_string()
        }
    };
    let new_dir = !key_dir.exists();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&key_dir)
        .map_err(io(&key_dir))?;
    // New files get the owner of the directory they go into: `keygen` run as root for a
    // server that runs as another user must leave keys that server can read. Only root may
    // give files away; for anyone else this changes nothing.
    let owner_of = |p: &Path| fs::metadata(p).ok().map(|m| (m.uid(), m.gid()));
    if new_dir && let Some((uid, gid)) = owner_of(&dir) {
        let _ = std::os::unix::fs::chown(&key_dir, Some(uid), Some(gid));
    }
    // Written under a temporary name, then linked into place: the link fails if the name was
    // taken meanwhile, and a crash never leaves a half-written key under the real name.
    let tmp = key_dir.join(format!(".{selector}.pem.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    if let Some((uid, gid)) = owner_of(&key_dir) {
        let _ = std::os::unix::fs::fchown(&file, Some(uid), Some(gid));
    }
    file.write_all(pem.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(DkimError::Exists(path));
        }
        Err(source) => return Err(DkimError::Io { path, source }),
    }
    Ok((DkimKey::load(&path)?, ascii))
}

/// The PKCS#8 v1 form of an Ed25519 private key (RFC 8410 7): a fixed prefix, then the
/// 32-octet seed as an OCTET STRING inside the privateKey OCTET STRING.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    [&PREFIX[..], seed].concat()
}

/// PEM text of DER data under `label`, 64 columns (RFC 7468).
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Ok(KeyAlgorithm::Ed25519),
            "rsa2048" | "rsa" => Ok(KeyAlgorithm::Rsa2048),
            "rsa3072" => Ok(KeyAlgorithm::Rsa3072),
            _ => Err(format!(
                "unknown algorithm {s:?}: use ed25519, rsa2048 or rsa3072"
            )),
        }
    }
}

/// Verifies every DKIM signature of `message` with mail-auth, fetching the keys with
/// `resolver` (through [`crate::mailauth::dns`], as the checks on reception do). An empty list
/// means the message has no signature.
pub async fn verify(message: &[u8], resolver: &Resolver) -> Result<Vec<Verdict>, DkimError> {
    let parsed = AuthenticatedMessage::parse(message).ok_or(DkimError::Unparsable)?;
    let fetched = Fetched::default();
    let keys = AuthDns::new(&fetched, TxtKind::DomainKey);
    // mail-auth's own resolver, without servers: every key comes through `fetched`.
    let authenticator = crate::mailauth::authdns::offline_authenticator();
    let outputs = crate::mailauth::dns::run(resolver, &fetched, &keys, |dns| {
        authenticator.verify_dkim(dns.parameters(&parsed))
    })
    .await;
    Ok(outputs
        .iter()
        .map(|output| {
            let (domain, selector) = output
                .signature()
                .map(|s| (s.d.clone(), s.s.clone()))
                .unwrap_or_default();
            Verdict {
                domain,
                selector,
                result: output.result().to_string(),
                pass: matches!(output.result(), DkimResult::Pass),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::mailauth::authdns::Answer;

    use super::*;

    const RFC8463: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../conformance/suites/dkim/rfc/rfc8463"
    );

    fn read(name: &str) -> Vec<u8> {
        let path = Path::new(RFC8463).join(name);
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn rfc_key() -> DkimKey {
        let seed = BASE64
            .decode(String::from_utf8_lossy(&read("ed25519-private-seed.b64")).trim())
            .expect("seed base64");
        DkimKey::ed25519_from_seed("brisbane", &seed).expect("seed key")
    }

    /// The header block (final CRLF included) and the body of a message.
    fn split(message: &[u8]) -> (&[u8], &[u8]) {
        let at = message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an empty line");
        (&message[..at + 2], &message[at + 4..])
    }

    /// The TXT records of `records`, as a DNS source (every other name does not exist).
    struct Records(Vec<DnsRecord>);

    impl crate::mailauth::authdns::DnsSource for Records {
        fn txt(&self, name: &str) -> Answer<Vec<u8>> {
            match self.0.iter().find(|r| format!("{}.", r.name) == name) {
                Some(r) => Answer::Records(vec![r.value.clone().into_bytes()]),
                None => Answer::NxDomain,
            }
        }
        fn a(&self, _: &str) -> Answer<std::net::Ipv4Addr> {
            Answer::NxDomain
        }
        fn aaaa(&self, _: &str) -> Answer<std::net::Ipv6Addr> {
            Answer::NxDomain
        }
        fn mx(&self, _: &str) -> Answer<(u16, String)> {
            Answer::NxDomain
        }
        fn ptr(&self, _: std::net::IpAddr) -> Answer<String> {
            Answer::NxDomain
        }
    }

    /// mail-auth's verdicts on `message`, the keys of `records` its only DNS.
    fn mail_auth_verdicts(message: &[u8], records: &[DnsRecord]) -> Vec<DkimResult> {
        let source = Records(records.to_vec());
        let keys = AuthDns::new(&source, TxtKind::DomainKey);
        let parsed = AuthenticatedMessage::parse(message).expect("message parses");
        let authenticator = crate::mailauth::authdns::offline_authenticator();
        smol::block_on(authenticator.verify_dkim(keys.parameters(&parsed)))
            .iter()
            .map(|o| o.result().clone())
            .collect()
    }

    /// RFC 8463 A.3: the same key, tags and time reproduce the published Ed25519 `b=`.
    #[test]
    fn rfc8463_ed25519_signature_reproduced() {
        let key = rfc_key();
        assert_eq!(
            key.dns_record("football.example.com").value,
            "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
        );
        let unsigned = read("unsigned.eml");
        let (header, body) = split(&unsigned);
        let mut bh = BodyHasher::new(Canonicalization::Relaxed, HashAlgorithm::Sha256);
        bh.update(body);
        assert_eq!(
            bh.finish().to_base64(),
            "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="
        );
        let field = "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n \
            d=football.example.com; i=@football.example.com;\r\n \
            q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n \
            subject : date : message-id : from : subject : date;\r\n \
            bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n b=";
        let names: Vec<&str> = proto_core::dkim::split_h_tag(
            "from : to : subject : date : message-id : from : subject : date",
        )
        .collect();
        let b = sign_header(&key, header, &names, field.as_bytes()).expect("sign");
        assert_eq!(
            BASE64.encode(&b),
            "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw=="
        );

        // The same from the signed file: its first field with b= emptied.
        let signed = read("signed-relaxed.eml");
        let (signed_header, _) = split(&signed);
        let first = HeaderFields::new(signed_header).next().expect("a field");
        let stripped = proto_core::dkim::strip_b_value(first.raw).expect("b=");
        let published: String = String::from_utf8_lossy(first.raw)
            .split("b=")
            .last()
            .expect("b= value")
            .split_whitespace()
            .collect();
        assert_eq!(
            BASE64.encode(sign_header(&key, header, &names, &stripped).expect("sign")),
            published
        );
    }

    /// The RFC's RSA key is 1024 bits: refused for signing.
    #[test]
    fn short_rsa_keys_refused() {
        let err = DkimKey::from_pem(
            "test".into(),
            Path::new("test.pem"),
            &read("rsa-private.pem"),
        )
        .expect_err("1024 bits");
        assert!(
            err.to_string().contains("1024 bits: at least 2048"),
            "{err}"
        );
    }

    fn message() -> Vec<u8> {
        b"Received: from x\r\n\
          From: Alice <alice@example.org>\r\n\
          To: bob@example.net,\r\n  carol@example.net\r\n\
          Subject: hello  there\r\n\
          Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n\
          Message-ID: <1@example.org>\r\n\
          List-Unsubscribe: <mailto:u@example.org>\r\n\
          MIME-Version: 1.0\r\n\
          Content-Type: text/plain\r\n\
          \r\n\
          Hello,  \r\n\r\n  world.\r\n\r\n\r\n"
            .to_vec()
    }

    /// Signing gives the same fields however the message is cut, and mail-auth verifies them;
    /// adding an over-signed field afterwards breaks them.
    #[test]
    fn signer_streams_and_mail_auth_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("domains/example.org")).expect("mkdir");
        generate(dir.path(), "example.org", "ed", KeyAlgorithm::Ed25519).expect("ed key");
        generate(dir.path(), "Example.ORG", "rsa", KeyAlgorithm::Rsa2048).expect("rsa key");
        let keys = DkimKeys::load(dir.path(), "example.org").expect("load");
        assert_eq!(
            keys.keys()
                .iter()
                .map(DkimKey::selector)
                .collect::<Vec<_>>(),
            ["ed", "rsa"]
        );
        let records: Vec<DnsRecord> = keys
            .keys()
            .iter()
            .map(|k| k.dns_record("example.org"))
            .collect();
        let now = UNIX_EPOCH + Duration::from_secs(1_764_324_000);
        let message = message();
        let whole = keys.sign(&message, now).expect("sign");
        assert_eq!(whole.len(), 2);
        assert!(whole[0].contains("t=1764324000;"), "{}", whole[0]);
        let h: String = whole[0]
            .split("h=")
            .nth(1)
            .expect("h=")
            .split(';')
            .next()
            .expect("h value")
            .split_whitespace()
            .collect();
        assert_eq!(
            h,
            "From:From:To:To:Cc:Subject:Subject:Date:Date:Message-ID:Message-ID:\
             MIME-Version:Content-Type:List-Unsubscribe"
        );
        for field in &whole {
            assert!(field.ends_with("\r\n"), "{field}");
            assert!(
                field.split("\r\n").all(|l| l.len() <= LINE_WIDTH),
                "{field}"
            );
        }
        for step in [1, 2, 3, 7, 64, 1000] {
            let mut signer = Signer::new();
            for chunk in message.chunks(step) {
                signer.update(chunk);
            }
            let (header, _) = split(&message);
            assert_eq!(signer.header(), Some(header));
            let fields = signer.finish(&keys, now).expect("sign");
            // Ed25519 and RSA PKCS#1 v1.5 are deterministic: byte for byte the same.
            assert_eq!(fields, whole, "chunks of {step}");
        }
        let signed = [whole.concat().into_bytes(), message.clone()].concat();
        assert_eq!(
            mail_auth_verdicts(&signed, &records),
            vec![DkimResult::Pass, DkimResult::Pass]
        );
        // Whitespace changes in the body survive relaxed canonicalization.
        let rewrapped = [
            whole.concat().into_bytes(),
            String::from_utf8_lossy(&message)
                .replace("Hello,  ", "Hello,")
                .into_bytes(),
        ]
        .concat();
        assert_eq!(
            mail_auth_verdicts(&rewrapped, &records),
            vec![DkimResult::Pass, DkimResult::Pass]
        );
        for extra in [
            "Cc: eve@example.net\r\n",
            "Subject: two\r\n",
            "From: x@y\r\n",
        ] {
            let added = [extra.as_bytes(), &signed].concat();
            let verdicts = mail_auth_verdicts(&added, &records);
            assert!(
                verdicts.iter().all(|v| *v != DkimResult::Pass),
                "{extra:?}: {verdicts:?}"
            );
        }
    }

    #[test]
    fn signing_needs_a_from_and_a_bounded_header() {
        let keys = DkimKeys::new("example.org", vec![rfc_key()]);
        let now = UNIX_EPOCH;
        assert!(matches!(
            keys.sign(b"To: x@y\r\n\r\nbody\r\n", now),
            Err(DkimError::NoFrom)
        ));
        // No body at all is fine.
        assert_eq!(
            keys.sign(b"From: a@example.org\r\n", now)
                .expect("sign")
                .len(),
            1
        );
        let mut signer = Signer::new();
        signer.update(b"From: a@example.org\r\nX-Long: ");
        for _ in 0..(MAX_HEADER_BLOCK / 1000 + 1) {
            signer.update(&[b'x'; 1000]);
        }
        signer.update(b"\r\n\r\nbody\r\n");
        assert_eq!(signer.header(), None);
        assert!(matches!(
            signer.finish(&keys, now),
            Err(DkimError::HeaderTooLong)
        ));
    }

    #[test]
    fn records_split_at_255() {
        let record = DnsRecord {
            name: "s._domainkey.example.org".into(),
            value: "x".repeat(600),
        };
        assert_eq!(
            record.strings().iter().map(|s| s.len()).collect::<Vec<_>>(),
            [255, 255, 90]
        );
        assert!(
            record
                .zone_line()
                .starts_with("s._domainkey.example.org. IN TXT \"xxx")
        );
        assert_eq!(record.zone_line().matches('"').count(), 6);
    }

    /// The cache reads a domain's keys again when a key file is added, and only then.
    #[test]
    fn key_cache_follows_the_key_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dkim = tmp.path().join("domains/example.org/dkim");
        fs::create_dir_all(&dkim).expect("mkdir");
        let cache = KeyCache::new(tmp.path().to_path_buf());
        let none = cache.get("example.org").expect("no keys");
        assert!(none.is_empty());
        assert!(std::sync::Arc::ptr_eq(
            &none,
            &cache.get("EXAMPLE.org").expect("again")
        ));
        let pem = pem_encode("PRIVATE KEY", &ed25519_pkcs8(&[7u8; 32]));
        fs::write(dkim.join("s1.pem"), pem).expect("write key");
        let one = cache.get("example.org").expect("one key");
        assert_eq!(one.keys().len(), 1);
        assert!(std::sync::Arc::ptr_eq(
            &one,
            &cache.get("example.org").expect("cached")
        ));
        assert!(matches!(
            cache.get("unknown.example"),
            Err(DkimError::UnknownDomain { .. })
        ));
    }

    #[test]
    fn selectors() {
        for ok in ["ed", "rsa-202611", "a.b", "2026"] {
            assert!(valid_selector(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a_b", "a/b", ".a", "é"] {
            assert!(!valid_selector(bad), "{bad}");
        }
        let now = UNIX_EPOCH + Duration::from_secs(1_764_324_000); // 2025-11-28
        assert_eq!(default_selector(KeyAlgorithm::Ed25519, now), "ed-202511");
        assert_eq!(default_selector(KeyAlgorithm::Rsa3072, now), "rsa-202511");
    }
}

//! `postern dkim ...`: keys, DNS records and signatures from the command line.
//!
//! - `keygen DOMAIN [--selector S] [--algo rsa2048|rsa3072|ed25519]` writes
//!   `domains/<domain>/dkim/<selector>.pem` and prints the record to publish. The default
//!   selector is `rsa-YYYYMM` or `ed-YYYYMM` (this month, UTC): a new name for each rotation,
//!   and room for one key of each kind, since every key of a domain signs.
//! - `dns DOMAIN` prints the record of every key on disk.
//! - `sign FILE [--domain D]` prints the message with its signatures on top.
//! - `verify FILE` checks its signatures, keys fetched by postern's own resolver.
//!
//! Records are printed as zone-file lines, `name. IN TXT "..." "..."`, each string at most 255
//! octets, after a `;` comment naming the key. Errors name the file or the domain at fault.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cli::DkimCommand;
use crate::config::{ConfigError, FILE_NAME, Settings};
use crate::directory::header_from::from_addresses;
use crate::directory::users::Address;
use crate::dns::{Resolver, ResolverConfig};
use crate::mailauth::dkim::{self, DkimError, DkimKey, DkimKeys, Signer};

/// What a DKIM command can fail with; each names the file or the domain at fault.
#[derive(Debug, thiserror::Error)]
pub enum DkimCmdError {
    /// A key that cannot be made, read or written (the error names its file).
    #[error("{0}")]
    Key(#[from] DkimError),
    /// A domain without a key.
    #[error(
        "{domain} has no DKIM key in {}: make one with postern dkim keygen {domain}",
        dir.display()
    )]
    NoKeys {
        /// The domain.
        domain: String,
        /// Where its keys would be.
        dir: PathBuf,
    },
    /// A message file that cannot be read.
    #[error("{}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `sign` without `--domain` on a message without a From address.
    #[error("{}: no From address to take the domain from; give --domain", file.display())]
    NoFrom {
        /// The message file.
        file: PathBuf,
    },
    /// Signing or verifying the message failed.
    #[error("{}: {source}", file.display())]
    Message {
        /// The message file.
        file: PathBuf,
        /// Why.
        source: DkimError,
    },
    /// `verify` on a message without a signature.
    #[error("{}: no DKIM signature", file.display())]
    NoSignature {
        /// The message file.
        file: PathBuf,
    },
    /// `verify` found signatures that do not verify (each is printed above).
    #[error("{}: {failed} of {total} signatures did not verify", file.display())]
    NotVerified {
        /// The message file.
        file: PathBuf,
        /// How many did not verify.
        failed: usize,
        /// How many there are.
        total: usize,
    },
    /// postern.toml does not load.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// No name servers to ask.
    #[error("/etc/resolv.conf: {0}")]
    Resolver(io::Error),
    /// Standard output closed.
    #[error("cannot write the message: {0}")]
    Write(io::Error),
}

/// Runs a DKIM command against the configuration directory `dir`.
pub fn run(dir: &Path, command: DkimCommand) -> Result<(), DkimCmdError> {
    match command {
        DkimCommand::Keygen(c) => {
            let now = SystemTime::now();
            let selector = c
                .selector
                .unwrap_or_else(|| dkim::default_selector(c.algo, now));
            let (key, domain) = dkim::generate(dir, &c.domain, &selector, c.algo)?;
            print_record(&key, &domain);
        }
        DkimCommand::Dns(c) => {
            let keys = DkimKeys::load(dir, &c.domain)?;
            if keys.is_empty() {
                return Err(no_keys(dir, &c.domain));
            }
            for key in keys.keys() {
                print_record(key, keys.domain());
            }
        }
        DkimCommand::Sign(c) => {
            let message = read_message(&c.file)?;
            // The path the submission takes: the message streams through a Signer, the keys
            // come in at the end.
            let mut signer = Signer::new();
            signer.update(&message);
            let domain =
                match c.domain {
                    Some(domain) => domain,
                    None => signer.header().and_then(from_domain).ok_or_else(|| {
                        DkimCmdError::NoFrom {
                            file: c.file.clone(),
                        }
                    })?,
                };
            let keys = DkimKeys::load(dir, &domain)?;
            if keys.is_empty() {
                return Err(no_keys(dir, &domain));
            }
            let fields = signer.finish(&keys, SystemTime::now()).map_err(|source| {
                DkimCmdError::Message {
                    file: c.file.clone(),
                    source,
                }
            })?;
            let mut out = fields.concat().into_bytes();
            out.extend_from_slice(&message);
            write_stdout(&out)?;
        }
        DkimCommand::Verify(c) => {
            let message = read_message(&c.file)?;
            let config = resolver_config(dir)?;
            let resolver = Resolver::new(config);
            let verdicts = smol::block_on(dkim::verify(&message, &resolver)).map_err(|source| {
                DkimCmdError::Message {
                    file: c.file.clone(),
                    source,
                }
            })?;
            if verdicts.is_empty() {
                return Err(DkimCmdError::NoSignature { file: c.file });
            }
            for v in &verdicts {
                println!("d={} s={}: {}", v.domain, v.selector, v.result);
            }
            let failed = verdicts.iter().filter(|v| !v.pass).count();
            if failed > 0 {
                return Err(DkimCmdError::NotVerified {
                    file: c.file,
                    failed,
                    total: verdicts.len(),
                });
            }
        }
    }
    Ok(())
}

/// Prints a key's record as a comment line and a zone-file line.
fn print_record(key: &DkimKey, domain: &str) {
    let record = key.dns_record(domain);
    println!(
        "; {domain}, selector {} ({}, {}), key {}",
        key.selector(),
        key.algorithm(),
        key.describe(),
        key.path().display()
    );
    println!("{}", record.zone_line());
}

fn no_keys(dir: &Path, domain: &str) -> DkimCmdError {
    DkimCmdError::NoKeys {
        domain: domain.to_string(),
        dir: dir.join("domains").join(domain).join(dkim::KEY_DIR),
    }
}

/// The message in a file, with every bare LF read as CRLF (files saved on Unix).
fn read_message(path: &Path) -> Result<Vec<u8>, DkimCmdError> {
    let bytes = std::fs::read(path).map_err(|source| DkimCmdError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut previous = 0u8;
    for &b in &bytes {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    Ok(out)
}

/// The domain of the first address of the From field of a header block.
fn from_domain(header: &[u8]) -> Option<String> {
    let field = proto_core::dkim::HeaderFields::new(header)
        .find(|f| f.name.eq_ignore_ascii_case(b"From"))?;
    let text = String::from_utf8_lossy(field.raw);
    let value = text.split_once(':')?.1;
    let first = from_addresses(value).into_iter().next()?;
    Address::parse(&first).ok().map(|a| a.domain().to_string())
}

/// `[dns] nameservers` of postern.toml when it exists, else /etc/resolv.conf.
fn resolver_config(dir: &Path) -> Result<ResolverConfig, DkimCmdError> {
    if dir.join(FILE_NAME).exists() {
        let settings = Settings::load(dir)?;
        ResolverConfig::for_server(&settings).map_err(DkimCmdError::Resolver)
    } else {
        ResolverConfig::system().map_err(DkimCmdError::Resolver)
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), DkimCmdError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(DkimCmdError::Write)
}

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

use std::path::Path;
use std::time::SystemTime;

use crate::cli::DkimCommand;
use crate::config::{FILE_NAME, Settings};
use crate::directory::header_from::from_addresses;
use crate::directory::users::Address;
use crate::dns::{Resolver, ResolverConfig};
use crate::mailauth::dkim::{self, DkimKey, DkimKeys, Signer};

/// Runs a DKIM command against the configuration directory `dir`.
pub fn run(dir: &Path, command: DkimCommand) -> Result<(), String> {
    match command {
        DkimCommand::Keygen(c) => {
            let now = SystemTime::now();
            let selector = c
                .selector
                .unwrap_or_else(|| dkim::default_selector(c.algo, now));
            let (key, domain) =
                dkim::generate(dir, &c.domain, &selector, c.algo).map_err(|e| e.to_string())?;
            print_record(&key, &domain);
        }
        DkimCommand::Dns(c) => {
            let keys = DkimKeys::load(dir, &c.domain).map_err(|e| e.to_string())?;
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
            let domain = match c.domain {
                Some(domain) => domain,
                None => signer.header().and_then(from_domain).ok_or_else(|| {
                    format!(
                        "{}: no From address to take the domain from; give --domain",
                        c.file.display()
                    )
                })?,
            };
            let keys = DkimKeys::load(dir, &domain).map_err(|e| e.to_string())?;
            if keys.is_empty() {
                return Err(no_keys(dir, &domain));
            }
            let fields = signer
                .finish(&keys, SystemTime::now())
                .map_err(|e| format!("{}: {e}", c.file.display()))?;
            let mut out = fields.concat().into_bytes();
            out.extend_from_slice(&message);
            write_stdout(&out)?;
        }
        DkimCommand::Verify(c) => {
            let message = read_message(&c.file)?;
            let config = resolver_config(dir)?;
            let resolver = Resolver::new(config);
            let verdicts = smol::block_on(dkim::verify(&message, &resolver))
                .map_err(|e| format!("{}: {e}", c.file.display()))?;
            if verdicts.is_empty() {
                return Err(format!("{}: no DKIM signature", c.file.display()));
            }
            for v in &verdicts {
                println!("d={} s={}: {}", v.domain, v.selector, v.result);
            }
            let failed = verdicts.iter().filter(|v| !v.pass).count();
            if failed > 0 {
                return Err(format!(
                    "{}: {failed} of {} signatures did not verify",
                    c.file.display(),
                    verdicts.len()
                ));
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

fn no_keys(dir: &Path, domain: &str) -> String {
    format!(
        "{domain} has no DKIM key in {}: make one with postern dkim keygen {domain}",
        dir.join("domains")
            .join(domain)
            .join(dkim::KEY_DIR)
            .display()
    )
}

/// The message in a file, with every bare LF read as CRLF (files saved on Unix).
fn read_message(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
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
fn resolver_config(dir: &Path) -> Result<ResolverConfig, String> {
    if dir.join(FILE_NAME).exists() {
        let settings = Settings::load(dir).map_err(|e| e.to_string())?;
        ResolverConfig::for_server(&settings).map_err(|e| format!("/etc/resolv.conf: {e}"))
    } else {
        ResolverConfig::system().map_err(|e| format!("/etc/resolv.conf: {e}"))
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the message: {e}"))
}

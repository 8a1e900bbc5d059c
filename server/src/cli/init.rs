//! `postern init DOMAIN`: from nothing to a configuration directory for a real domain, and
//! the DNS records that go with it.
//!
//! Writes, in the configuration directory (`-C`, e.g. `/etc/postern`), which must not hold a
//! `postern.toml` yet: `postern.toml` ([`crate::config::init::production_config`]: the
//! hostname, ports 25, 587 and 465 on every IPv4 and IPv6 address), `domains/DOMAIN/` with an
//! aliases file to fill, an RSA 2048 and an Ed25519 DKIM key, and the `.gitignore`. State goes
//! where `data_dir`'s default says (`/var/lib/postern` for `/etc/postern`). Then it prints, as
//! zone-file lines: MX, A/AAAA (with `--ipv4`/`--ipv6`), SPF, both DKIM records, DMARC with a
//! report address, TLS-RPT; the PTR to ask the provider for; and what is left to do.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use crate::cli::Init;
use crate::config::init::{GITIGNORE, production_config};
use crate::config::{ConfigError, FILE_NAME, Settings};
use crate::mailauth::dkim::{self, DkimError, KeyAlgorithm};

/// What `init` can fail with. Nothing is overwritten; what was written before a failure
/// stays (the message says what).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The directory is set up already.
    #[error("{} exists: this directory is set up already (nothing written)", .0.display())]
    Exists(std::path::PathBuf),
    /// Not a domain name.
    #[error("{name:?} is not a domain name: {reason}")]
    BadName {
        /// What was given.
        name: String,
        /// Why.
        reason: String,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A DKIM key could not be made.
    #[error("{0}")]
    Dkim(#[from] DkimError),
    /// The written configuration does not load (a bug).
    #[error("{0}")]
    Config(#[from] ConfigError),
}

/// Runs `postern init` in the configuration directory `dir`.
pub fn run(dir: &Path, c: Init) -> Result<(), InitError> {
    let file = dir.join(FILE_NAME);
    if file.exists() {
        return Err(InitError::Exists(file));
    }
    let name = |n: &str| {
        proto_core::Domain::parse(n)
            .map(|d| d.to_string().to_ascii_lowercase())
            .map_err(|e| InitError::BadName {
                name: n.to_string(),
                reason: e.to_string(),
            })
    };
    let domain = name(&c.domain)?;
    let hostname = name(&c.hostname.clone().unwrap_or_else(|| format!("mx.{domain}")))?;
    let write = |path: &Path, text: &str| {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| InitError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(path, text).map_err(|source| InitError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    let domain_dir = dir.join("domains").join(&domain);
    // A domain restored from git keeps its aliases.
    let aliases = domain_dir.join("aliases");
    if !aliases.exists() {
        write(
            &aliases,
            &format!(
                "# Aliases of {domain} (chasquid's format; see README, Aliases). Examples:\n\
             #   postmaster: you\n\
             #   *: you@gmail.example\n"
            ),
        )?;
    }
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        write(&ignore, GITIGNORE)?;
    }
    let now = SystemTime::now();
    let mut keys = Vec::new();
    for algo in [KeyAlgorithm::Rsa2048, KeyAlgorithm::Ed25519] {
        let selector = dkim::default_selector(algo, now);
        let (key, ascii) = dkim::generate(dir, &domain, &selector, algo)?;
        keys.push(key.dns_record(&ascii).zone_line());
    }
    // The configuration last: its presence marks the directory as set up.
    write(&file, &production_config(&hostname))?;
    let settings = Settings::load(dir)?;
    print!("{}", records(&domain, &hostname, &c, &keys, &settings));
    Ok(())
}

/// What to publish and do, for the operator.
fn records(domain: &str, host: &str, c: &Init, dkim: &[String], settings: &Settings) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "; postern is set up in {}.", settings.dir.display());
    let _ = writeln!(
        t,
        "; Its state (queue, Maildirs) will be in {}.",
        settings.data_dir.display()
    );
    let _ = writeln!(t, ";\n; Publish these DNS records (zone-file lines):");
    let _ = writeln!(t, "{domain}. IN MX 10 {host}.");
    match c.ipv4 {
        Some(ip) => {
            let _ = writeln!(t, "{host}. IN A {ip}");
        }
        None => {
            let _ = writeln!(t, "; {host}. IN A <this server's IPv4 address> (or --ipv4)");
        }
    }
    match c.ipv6 {
        Some(ip) => {
            let _ = writeln!(t, "{host}. IN AAAA {ip}");
        }
        None => {
            let _ = writeln!(
                t,
                "; {host}. IN AAAA <this server's IPv6 address> (or --ipv6)"
            );
        }
    }
    let _ = writeln!(t, "{domain}. IN TXT \"v=spf1 mx -all\"");
    for line in dkim {
        let _ = writeln!(t, "{line}");
    }
    let _ = writeln!(
        t,
        "_dmarc.{domain}. IN TXT \"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}\""
    );
    let _ = writeln!(
        t,
        "_smtp._tls.{domain}. IN TXT \"v=TLSRPTv1; rua=mailto:postmaster@{domain}\""
    );
    let _ = writeln!(
        t,
        ";\n; Ask your provider to set the reverse name (PTR) of {} to {host}.",
        match (c.ipv4, c.ipv6) {
            (Some(v4), Some(v6)) => format!("{v4} and {v6}"),
            (Some(v4), None) => v4.to_string(),
            (None, Some(v6)) => v6.to_string(),
            (None, None) => "each of this server's addresses".to_string(),
        }
    );
    let _ = writeln!(
        t,
        ";\n; Then:\n\
         ;   a certificate for {host} in {certs}/{host}/ (certbot: `certbot certonly --standalone \
         -d {host}`, then link {certs} to /etc/letsencrypt/live)\n\
         ;   postern user add you@{domain}\n\
         ;   postern config check, then postern serve (or the systemd units in contrib/)",
        certs = settings.certs_dir().display()
    );
    t
}

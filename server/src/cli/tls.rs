//! `postern tls ...`: the TLS level each recipient domain has shown
//! ([`crate::tls::memory`], `<data_dir>/tls-domains`).
//!
//! `postern tls list` prints one `<domain> <level>` line per remembered domain, in name order.
//! `postern tls forget DOMAIN` removes a domain, for one that really lost its TLS (outbound
//! delivery defers its mail, saying "tls-domains requires it"); the running server follows
//! within a second. Exit status 0; 1 when the configuration or the file cannot be read, or
//! when the domain was not remembered.

use std::path::{Path, PathBuf};

use crate::cli::TlsCommand;
use crate::config::ConfigError;
use crate::tls::memory::{self, TlsMemory};

/// What a tls command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TlsCmdError {
    /// postern.toml does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The file cannot be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `forget` of a domain that is not remembered.
    #[error("{domain} is not remembered in {}", path.display())]
    NotRemembered {
        /// The domain.
        domain: String,
        /// The file.
        path: PathBuf,
    },
}

/// Runs a tls command against the configuration directory `dir`.
pub fn run(dir: &Path, command: TlsCommand) -> Result<(), TlsCmdError> {
    let settings = crate::cli::settings_or_defaults(dir)?;
    let path = settings.data_dir.join(memory::FILE_NAME);
    let file_error = |source| TlsCmdError::File {
        path: path.clone(),
        source,
    };
    match command {
        TlsCommand::List(_) => {
            let (known, bad) = TlsMemory::open(&path).map_err(file_error)?;
            for line in bad {
                eprintln!("postern: warning: {line}; line skipped");
            }
            let levels = known.levels();
            if levels.is_empty() {
                println!("no domain remembered ({})", path.display());
            }
            for (domain, level) in levels {
                println!("{domain} {level}");
            }
        }
        TlsCommand::Forget(c) => match memory::forget(&path, &c.domain).map_err(file_error)? {
            Some(level) => println!(
                "forgot {} (was {level}); the next delivery takes the TLS it offers",
                c.domain
            ),
            None => {
                return Err(TlsCmdError::NotRemembered {
                    domain: c.domain,
                    path,
                });
            }
        },
    }
    Ok(())
}

//! `postern config check`: everything `serve` reads at startup, read the same way, without
//! starting anything: postern.toml, every domain's users, aliases and DKIM key files, and the
//! certificates. Every problem is printed with its file and line and a fix; warnings (which
//! `serve` only logs) follow. The exit status is 0 when `serve` would start, 1 when not.
//!
//! ```text
//! /etc/postern/domains/example.org/aliases, line 3: missing ':'
//!   fix: correct the line or remove it, then start again (...)
//! postern: 1 problem: serve would not start
//! ```

use std::path::Path;

use crate::cli::ConfigCommand;
use crate::config::{ConfigError, Settings};

/// What a config command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigCmdError {
    /// postern.toml itself does not load (nothing else is checked: its settings say where
    /// the rest is).
    #[error(transparent)]
    File(#[from] ConfigError),
    /// Problems in the other files (printed already).
    #[error(
        "{count} problem{}: serve would not start",
        if *count == 1 { "" } else { "s" }
    )]
    Problems {
        /// How many.
        count: usize,
    },
}

/// Runs a config command against the configuration directory `dir`.
pub fn run(dir: &Path, command: ConfigCommand) -> Result<(), ConfigCmdError> {
    match command {
        ConfigCommand::Check(_) => {
            let settings = Settings::load(dir)?;
            let mut found = crate::config::check::problems(&settings);
            let certificates = match crate::tls::certs::load(&settings) {
                Ok(store) => Some(store.summary()),
                Err(e) => {
                    found.errors.push(e);
                    None
                }
            };
            for e in &found.errors {
                eprintln!("{e}");
            }
            for w in &found.warnings {
                eprintln!("warning: {w}");
            }
            if !found.errors.is_empty() {
                return Err(ConfigCmdError::Problems {
                    count: found.errors.len(),
                });
            }
            println!(
                "{}: ok (hostname {}, data in {}); certificates: {}",
                settings.file.display(),
                settings.hostname,
                settings.data_dir.display(),
                certificates.unwrap_or_default()
            );
            Ok(())
        }
    }
}

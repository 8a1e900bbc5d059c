//! `postern config show` prints postern.toml as `serve` reads it ([`crate::config::show`]).
//!
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
    /// A mode could not be changed.
    #[error("cannot fix the modes under {}: {source}", dir.display())]
    FixModes {
        /// The configuration directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
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
        ConfigCommand::Check(c) => {
            let settings = Settings::load(dir)?;
            let mut found = crate::config::check::problems(&settings);
            let loose = crate::config::check::loose_modes(&settings);
            if c.fix_modes {
                let fixed = crate::config::check::fix_modes(&loose).map_err(|source| {
                    ConfigCmdError::FixModes {
                        dir: settings.dir.clone(),
                        source,
                    }
                })?;
                for path in &fixed {
                    println!("fixed the mode of {}", path.display());
                }
                found.warnings.extend(
                    loose
                        .iter()
                        .filter(|l| !fixed.contains(&l.path))
                        .map(|l| format!("{l} (a symbolic link: fix its target)")),
                );
            } else {
                found.warnings.extend(loose.iter().map(|l| l.to_string()));
            }
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
        ConfigCommand::Show(_) => {
            let settings = Settings::load(dir)?;
            // Loaded just now: a read or TOML error here means the file changed meanwhile.
            let shown = std::fs::read_to_string(&settings.file)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    crate::config::show::render(&settings, &text).map_err(|e| e.to_string())
                })
                .map_err(|message| ConfigError {
                    file: settings.file.clone(),
                    line: None,
                    message,
                    fix: "run it again once the file is written".into(),
                })?;
            print!("{shown}");
            Ok(())
        }
    }
}

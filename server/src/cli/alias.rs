//! `postern alias ...`: the aliases files from the command line.
//!
//! `postern alias resolve ADDRESS` prints where a message to ADDRESS would go: one line per
//! destination (`local`, `remote`, `forward`, `pipe`, or `unknown` for a local address that
//! would be refused), each followed by the steps that lead to it, indented, with the file and
//! line of every alias used:
//!
//! ```text
//! local alice@example.org
//!   sales+eu@example.org: alias "sales" once suffix and drop characters are removed (/etc/postern/domains/example.org/aliases:3)
//!   alice@example.org: existing user "alice"
//! ```
//!
//! Users are those the server knows: listed in a users file, or with a Maildir under
//! `<data_dir>/mail` (postern.toml's `data_dir`). `postmaster` goes to an alias, a user or
//! the catch-all of that name first, and to its own mailbox only when none takes it. The exit status is 0 when the
//! message can go somewhere, 1 when it cannot (every destination unknown), when resolution
//! fails (a loop, too deep), or when an aliases file cannot be parsed: the error names the
//! file and the line, since the server would ignore that version of the file.

use std::path::Path;
use std::sync::Arc;

use proto_core::{Mailbox, mail::AliasError, mail::AliasOptions, mail::Rule};

use crate::cli::AliasCommand;
use crate::config::ConfigError;
use crate::directory::aliases::Aliases;
use crate::directory::recipients::Recipients;
use crate::directory::users::UserDb;

/// What an alias command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AliasCmdError {
    /// Not an address.
    #[error("malformed address {input:?}: {reason}")]
    BadAddress {
        /// What was given.
        input: String,
        /// Why it is refused.
        reason: String,
    },
    /// postern.toml cannot be read or is wrong (the server would not start either).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Aliases files that cannot be parsed, one per line.
    #[error("{0}\n(the server keeps the previous version of a broken file until it is fixed)")]
    BrokenFiles(String),
    /// A loop, too deep, too many destinations, or the users file unreadable.
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: AliasError,
    },
    /// Every destination is unknown: a message would be refused.
    #[error("{0}: no deliverable destination; a message to it would be refused")]
    Undeliverable(String),
}

/// Runs an alias command against the configuration directory `dir`.
pub fn run(dir: &Path, command: AliasCommand) -> Result<(), AliasCmdError> {
    match command {
        AliasCommand::Resolve(c) => {
            let input = c.address.trim();
            let bare = input
                .strip_prefix('<')
                .and_then(|s| s.strip_suffix('>'))
                .unwrap_or(input);
            let address = Mailbox::parse(bare).map_err(|e| AliasCmdError::BadAddress {
                input: c.address.clone(),
                reason: e.to_string(),
            })?;
            // postern.toml as the server reads it (no file: the defaults); the flags win.
            let settings = crate::cli::settings_or_defaults(dir)?;
            let configured = settings.alias_options.clone();
            let options = AliasOptions {
                drop_characters: c.drop_characters.unwrap_or(configured.drop_characters),
                suffix_separators: c.suffix_separators.unwrap_or(configured.suffix_separators),
                ..configured
            };
            let domains = dir.join("domains");
            let aliases = Aliases::new(domains.clone(), options);
            let mut broken = Vec::new();
            for problem in aliases.load_quietly() {
                if problem.refused {
                    broken.push(problem.to_string());
                } else {
                    eprintln!("postern: warning: {problem}");
                }
            }
            if !broken.is_empty() {
                return Err(AliasCmdError::BrokenFiles(broken.join("\n")));
            }
            // Users as the server knows them: the users files and the Maildirs.
            let recipients = Recipients::new(
                Arc::new(UserDb::new(domains)),
                settings.mail_dir(),
                settings.hostname.clone(),
            );
            let exists = |domain: &str, user: &str| recipients.user_exists(domain, user);
            let resolved =
                aliases
                    .resolve(&address, &exists)
                    .map_err(|source| AliasCmdError::Resolve {
                        address: address.to_string(),
                        source,
                    })?;
            for r in &resolved {
                println!("{}", r.destination);
                for step in &r.trail {
                    let file = match step.rule {
                        Rule::Alias { .. } | Rule::CatchAll { .. } => step
                            .domain()
                            .and_then(|d| aliases.file_of(d))
                            .map(|p| p.display().to_string()),
                        _ => None,
                    };
                    println!("  {}", step.describe(file.as_deref()));
                }
            }
            if !resolved.iter().any(|r| r.destination.is_deliverable()) {
                return Err(AliasCmdError::Undeliverable(address.to_string()));
            }
        }
    }
    Ok(())
}

//! How local mail is put into a mailbox: the `[mailboxes]` table of `postern.toml`.
//!
//! By default a local recipient's copy goes into its Maildir ([`crate::deliver::maildir`]). The table
//! chooses another method for a whole domain or for one address, the address winning:
//!
//! ```toml
//! [mailboxes]
//! "example.org" = { lmtp = "unix:/run/dovecot/lmtp" }
//! "other.org" = { lmtp = "127.0.0.1:24" }
//! "bob@example.org" = { command = "/usr/bin/procmail -d %to_user%", timeout = 60 }
//! "carol@example.org" = { maildir = true }
//! ```
//!
//! - `lmtp`: hand the message to an LMTP server ([RFC 2033](https://www.rfc-editor.org/rfc/rfc2033),
//!   e.g. Dovecot's `lmtp`) on a Unix socket (`unix:/path`, or a path starting with `/`) or a
//!   TCP address (`ip:port`). The recipients of one message for one server go in one
//!   transaction; each gets the server's own reply ([`lmtp`]).
//! - `command`: pipe the message into a command ([`command`]), with `timeout` seconds to finish
//!   (default [`DEFAULT_COMMAND_TIMEOUT`]).
//! - `maildir = true`: the default, to exempt an address from its domain's method.
//!
//! Pipe aliases (`user: | command` in an aliases file) run the same way as `command`.
//!
//! Every method ends in one of three results for each recipient ([`Delivery`]): delivered,
//! deferred (tried again later, with the local backoff) or failed (bounced at once): an LMTP
//! 5xx reply or a command's exit status other than 0 and 75 (EX_TEMPFAIL) is final, while a
//! 4xx, a connection problem, a timeout or a command killed by a signal is temporary.

pub mod command;
pub mod lmtp;
pub mod local;
pub mod maildir;
pub mod smtp;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::ConfigError;
use crate::directory::users::Address;

pub use command::CommandLine;

/// The time a command gets when `timeout` is not given, and for pipe aliases.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// How one mailbox is delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `<data_dir>/mail/<domain>/<user>/`, batched (see [`crate::deliver::local`]).
    Maildir,
    /// An LMTP server.
    Lmtp(LmtpTarget),
    /// A command reading the message on its standard input.
    Command {
        /// The parsed command line, substitutions still in it.
        line: CommandLine,
        /// How long it may run.
        timeout: Duration,
    },
}

/// Where an LMTP server listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LmtpTarget {
    /// A Unix stream socket.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::fmt::Display for LmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmtpTarget::Unix(path) => write!(f, "unix:{}", path.display()),
            LmtpTarget::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// In the mailbox; the log fields say where, or what the server answered.
    Delivered(crate::log::Fields),
    /// Not now: try again later.
    Deferred(String),
    /// Never: bounce.
    Failed(String),
}

/// The `[mailboxes]` table, checked: which method each local recipient gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mailboxes {
    /// Keyed by A-label domain.
    domains: BTreeMap<String, Method>,
    /// Keyed by (normalised local part, A-label domain).
    addresses: BTreeMap<(String, String), Method>,
}

impl Mailboxes {
    /// The method for `user@domain` (as queued: lower-case user, A-label domain).
    pub fn method_for(&self, user: &str, domain: &str) -> &Method {
        self.addresses
            .get(&(user.to_string(), domain.to_string()))
            .or_else(|| self.domains.get(domain))
            .unwrap_or(&Method::Maildir)
    }
}

/// One entry of `[mailboxes]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMailbox {
    lmtp: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    timeout: Option<Spanned<u64>>,
    maildir: Option<Spanned<bool>>,
}

/// Checks `[mailboxes]`. `src` names the file and its lines; `dir` is the
/// configuration directory (relative socket paths are resolved against it).
pub(crate) fn parse(
    raw: BTreeMap<Spanned<String>, Spanned<RawMailbox>>,
    dir: &Path,
    src: &crate::config::Source<'_>,
) -> Result<Mailboxes, ConfigError> {
    let error =
        |span: Range<usize>, message: String, fix: &str| src.error(Some(span), message, fix);
    let mut mailboxes = Mailboxes::default();
    for (key, value) in raw {
        let key_span = key.span();
        let key = key.into_inner();
        let value_span = value.span();
        let m = value.into_inner();
        let method = match (&m.lmtp, &m.command, &m.maildir) {
            (Some(target), None, None) => {
                if let Some(t) = &m.timeout {
                    return Err(error(
                        t.span(),
                        format!("[mailboxes] {key:?}: timeout applies to commands only"),
                        "remove timeout (the LMTP server's replies have their own timeouts)",
                    ));
                }
                let target = parse_target(target.get_ref(), dir).ok_or_else(|| {
                    error(
                        target.span(),
                        format!(
                            "[mailboxes] {key:?}: {:?} is not an LMTP address",
                            target.get_ref()
                        ),
                        "write \"unix:/path/to/socket\" or \"ip:port\", e.g. \"unix:/run/dovecot/lmtp\" or \"127.0.0.1:24\"",
                    )
                })?;
                Method::Lmtp(target)
            }
            (None, Some(text), None) => {
                let line_ = CommandLine::parse(text.get_ref()).map_err(|why| {
                    error(
                        text.span(),
                        format!("[mailboxes] {key:?}: command: {why}"),
                        "write the program's absolute path and its arguments, e.g. \"/usr/bin/procmail -d %to_user%\"",
                    )
                })?;
                let timeout = match &m.timeout {
                    Some(t) if *t.get_ref() == 0 => {
                        return Err(error(
                            t.span(),
                            format!("[mailboxes] {key:?}: timeout = 0 leaves no time to run"),
                            "give the time limit in seconds, e.g. timeout = 60",
                        ));
                    }
                    Some(t) => Duration::from_secs(*t.get_ref()),
                    None => DEFAULT_COMMAND_TIMEOUT,
                };
                Method::Command {
                    line: line_,
                    timeout,
                }
            }
            (None, None, Some(on)) if *on.get_ref() && m.timeout.is_none() => Method::Maildir,
            _ => {
                return Err(error(
                    value_span,
                    format!(
                        "[mailboxes] {key:?}: give exactly one of lmtp, command or maildir = true"
                    ),
                    "write e.g. { lmtp = \"unix:/run/dovecot/lmtp\" }, { command = \"/usr/bin/procmail\", timeout = 60 } or { maildir = true }",
                ));
            }
        };
        let bad_key = || {
            error(
                key_span.clone(),
                format!("[mailboxes] {key:?} is neither a domain nor an address"),
                "key each entry by a domain (\"example.org\") or an address (\"bob@example.org\")",
            )
        };
        if key.contains('@') {
            let a = Address::parse(&key).map_err(|_| bad_key())?;
            mailboxes.addresses.insert(
                (a.local().to_string(), a.ascii_domain().to_string()),
                method,
            );
        } else {
            let a = Address::parse(&format!("postmaster@{key}")).map_err(|_| bad_key())?;
            mailboxes
                .domains
                .insert(a.ascii_domain().to_string(), method);
        }
    }
    Ok(mailboxes)
}

/// `unix:/path`, `/path` or `ip:port`.
fn parse_target(text: &str, dir: &Path) -> Option<LmtpTarget> {
    let path = text.strip_prefix("unix:").unwrap_or(text);
    if path.starts_with('/') || text.starts_with("unix:") {
        if path.is_empty() {
            return None;
        }
        return Some(LmtpTarget::Unix(dir.join(path)));
    }
    text.parse().ok().map(LmtpTarget::Tcp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn parse_config(text: &str) -> Result<Settings, ConfigError> {
        let text = format!("{text}\n[listeners]\nsmtp = [\"127.0.0.1:25\"]\n");
        Settings::parse(Path::new("/c"), Path::new("/c/postern.toml"), &text)
    }

    #[test]
    fn methods_by_domain_and_by_address() {
        let s = parse_config(
            "[mailboxes]\n\
             \"Example.ORG\" = { lmtp = \"unix:/run/dovecot/lmtp\" }\n\
             \"other.org\" = { lmtp = \"127.0.0.1:24\" }\n\
             \"rel.org\" = { lmtp = \"unix:sockets/lmtp\" }\n\
             \"Bob@example.org\" = { command = \"/usr/bin/procmail -d %to_user%\", timeout = 60 }\n\
             \"carol@example.org\" = { maildir = true }\n\
             \"bücher.example\" = { lmtp = \"/run/lmtp\" }\n",
        )
        .expect("parses");
        let m = &s.mailboxes;
        assert_eq!(
            m.method_for("alice", "example.org"),
            &Method::Lmtp(LmtpTarget::Unix("/run/dovecot/lmtp".into()))
        );
        assert_eq!(
            m.method_for("alice", "other.org"),
            &Method::Lmtp(LmtpTarget::Tcp("127.0.0.1:24".parse().expect("addr")))
        );
        assert_eq!(
            m.method_for("x", "rel.org"),
            &Method::Lmtp(LmtpTarget::Unix("/c/sockets/lmtp".into()))
        );
        assert_eq!(
            m.method_for("x", "xn--bcher-kva.example"),
            &Method::Lmtp(LmtpTarget::Unix("/run/lmtp".into()))
        );
        match m.method_for("bob", "example.org") {
            Method::Command { line, timeout } => {
                assert_eq!(*timeout, Duration::from_secs(60));
                assert_eq!(line.words(), ["/usr/bin/procmail", "-d", "%to_user%"]);
            }
            other => panic!("bob: {other:?}"),
        }
        assert_eq!(m.method_for("carol", "example.org"), &Method::Maildir);
        assert_eq!(m.method_for("alice", "elsewhere.org"), &Method::Maildir);
        let d = Settings::parse(
            Path::new("/c"),
            Path::new("/c/postern.toml"),
            crate::config::init::DEFAULT_CONFIG,
        )
        .expect("default");
        assert_eq!(d.mailboxes, Mailboxes::default());
    }

    #[test]
    fn errors_name_the_line_and_the_fix() {
        let cases = [
            (
                "[mailboxes]\n\"a.org\" = { lmtp = \"dovecot\" }",
                2,
                "not an LMTP address",
                "unix:",
            ),
            (
                "[mailboxes]\n\"a.org\" = { lmtp = \"/x\", command = \"/bin/true\" }",
                2,
                "exactly one",
                "maildir = true",
            ),
            ("[mailboxes]\n\n\"a.org\" = { }", 3, "exactly one", "lmtp"),
            (
                "[mailboxes]\n\"a.org\" = { command = \"/bin/x 'open\" }",
                2,
                "unclosed quote",
                "absolute path",
            ),
            (
                "[mailboxes]\n\"a.org\" = { command = \"/bin/true\", timeout = 0 }",
                2,
                "timeout = 0",
                "seconds",
            ),
            (
                "[mailboxes]\n\"a.org\" = { lmtp = \"/x\", timeout = 5 }",
                2,
                "commands only",
                "remove timeout",
            ),
            (
                "[mailboxes]\n\"a b\" = { lmtp = \"/x\" }",
                2,
                "neither a domain nor an address",
                "key each",
            ),
            (
                "[mailboxes]\n\"a.org\" = { lmtp = \"/x\", socket = \"/y\" }",
                2,
                "unknown field",
                "spelling",
            ),
            (
                "[mailboxes]\n\"a.org\" = { command = \"./procmail\" }",
                2,
                "relative path",
                "absolute path",
            ),
        ];
        for (text, line, message, fix) in cases {
            let e = parse_config(text).expect_err(text);
            assert_eq!(e.line, Some(line), "input {text:?}: {e}");
            assert!(e.message.contains(message), "input {text:?}: {e}");
            assert!(e.fix.contains(fix), "input {text:?}: {e}");
            assert!(
                e.to_string().starts_with("/c/postern.toml, line "),
                "input {text:?}: {e}"
            );
        }
    }
}

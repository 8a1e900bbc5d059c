//! Local recipients: which domains are ours and which users exist in them.
//!
//! A domain is local when `domains/<domain>/` exists in the configuration directory. In a
//! local domain, `postmaster` always exists ([RFC 5321 section 4.5.1](https://www.rfc-editor.org/rfc/rfc5321#section-4.5.1):
//! "Any system that includes an SMTP server supporting mail relaying or delivery MUST support
//! the reserved mailbox "postmaster" as a case-insensitive local name"); any other user exists
//! when `<data_dir>/mail/<domain>/<user>/` exists, or when `domains/<domain>/users` lists it,
//! one per line (`alice` or `alice@<domain>`, `#` starts a comment). Everything is read at
//! each lookup, so adding a user or a domain needs no restart. (Real users, aliases and
//! passwords come with the user database.)
//!
//! Lookups compare lower-cased names. A local part that could not be a safe directory name
//! (anything beyond letters, digits and `.-_+`, or starting with a dot) is no user of ours.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use proto_core::{Domain, ForwardPath};

/// The reserved mailbox every local domain has.
const POSTMASTER: &str = "postmaster";

/// A mailbox in a local domain, in lower case: `<user>@<domain>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalMailbox {
    /// The domain (IDNA A-label form).
    pub domain: String,
    /// The user.
    pub user: String,
}

/// What a forward path is to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A mailbox we deliver to.
    Local(LocalMailbox),
    /// A local domain, but no such user.
    UnknownUser,
    /// Not one of our domains.
    NotLocal,
}

/// Answers recipient lookups from the configuration and data directories.
#[derive(Debug, Clone)]
pub struct Recipients {
    domains_dir: PathBuf,
    mail_dir: PathBuf,
    hostname: String,
}

impl Recipients {
    /// Lookups against `domains_dir` (`<config>/domains`) and `mail_dir` (`<data_dir>/mail`).
    /// `<Postmaster>` without a domain goes to `postmaster@<hostname>`.
    pub fn new(domains_dir: PathBuf, mail_dir: PathBuf, hostname: String) -> Recipients {
        Recipients {
            domains_dir,
            mail_dir,
            hostname,
        }
    }

    /// What `to` is to us. Reads the file system (a few `stat`s and maybe the users file).
    pub fn lookup(&self, to: &ForwardPath) -> io::Result<Lookup> {
        let (user, domain) = match to {
            // RFC 5321 4.1.1.3: "<Postmaster>" without a domain must be accepted.
            ForwardPath::Postmaster => {
                return Ok(Lookup::Local(LocalMailbox {
                    domain: self.hostname.clone(),
                    user: POSTMASTER.into(),
                }));
            }
            ForwardPath::Mailbox(m) => (m.local_part().as_str().to_lowercase(), m.domain()),
            _ => return Ok(Lookup::NotLocal),
        };
        let domain = match domain {
            Domain::Name(_) => match domain.to_ascii() {
                Ok(d) => d,
                Err(_) => return Ok(Lookup::NotLocal),
            },
            _ => return Ok(Lookup::NotLocal),
        };
        if !safe_name(&domain) || !self.domains_dir.join(&domain).is_dir() {
            return Ok(Lookup::NotLocal);
        }
        if !safe_name(&user) {
            return Ok(Lookup::UnknownUser);
        }
        let exists = user == POSTMASTER
            || self.mail_dir.join(&domain).join(&user).is_dir()
            || listed(
                &self.domains_dir.join(&domain).join("users"),
                &user,
                &domain,
            )?;
        Ok(if exists {
            Lookup::Local(LocalMailbox { domain, user })
        } else {
            Lookup::UnknownUser
        })
    }
}

impl fmt::Display for LocalMailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.domain)
    }
}

/// Whether `name` is usable as one path component: not empty, at most 255 bytes, only
/// ASCII letters, digits and `.-_+`, and not starting with a dot (no `.`, `..` or hidden files).
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
}

/// Whether the users file at `path` lists `user` (as `user` or `user@domain`). A missing file
/// lists nobody.
fn listed(path: &Path, user: &str, domain: &str) -> io::Result<bool> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(text.lines().map(str::trim).any(|line| {
        if line.starts_with('#') {
            return false;
        }
        let line = line.to_lowercase();
        match line.rsplit_once('@') {
            Some((u, d)) => u == user && d == domain,
            None => line == user,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let domains = tmp.path().join("domains");
        let mail = tmp.path().join("mail");
        fs::create_dir_all(domains.join("example.org")).expect("mkdir");
        fs::create_dir_all(mail.join("example.org/carol")).expect("mkdir");
        fs::write(
            domains.join("example.org/users"),
            "# users\nalice\nBob@example.org\neve@other.org\n",
        )
        .expect("write");
        let r = Recipients::new(domains, mail, "mx.example.org".into());
        let local = |u: &str| {
            Lookup::Local(LocalMailbox {
                domain: "example.org".into(),
                user: u.into(),
            })
        };
        let cases = [
            ("<alice@example.org>", local("alice")),
            ("<ALICE@Example.ORG>", local("alice")),
            ("<bob@example.org>", local("bob")),
            ("<carol@example.org>", local("carol")),
            ("<PostMaster@example.org>", local("postmaster")),
            ("<eve@example.org>", Lookup::UnknownUser),
            ("<\"../x\"@example.org>", Lookup::UnknownUser),
            ("<\".hidden\"@example.org>", Lookup::UnknownUser),
            ("<alice@other.org>", Lookup::NotLocal),
            ("<alice@[127.0.0.1]>", Lookup::NotLocal),
            (
                "<Postmaster>",
                Lookup::Local(LocalMailbox {
                    domain: "mx.example.org".into(),
                    user: "postmaster".into(),
                }),
            ),
        ];
        for (path, want) in cases {
            let to = ForwardPath::parse(path).expect(path);
            assert_eq!(r.lookup(&to).expect("lookup"), want, "input {path}");
        }
    }
}

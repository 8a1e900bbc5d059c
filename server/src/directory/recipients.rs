//! Local recipients: which domains are ours and which users exist in them.
//!
//! A domain is local when `domains/<domain>/` exists in the configuration directory (its
//! Unicode or its A-label name). In a local domain, `postmaster` always exists
//! ([RFC 5321 section 4.5.1](https://www.rfc-editor.org/rfc/rfc5321#section-4.5.1): "Any system
//! that includes an SMTP server supporting mail relaying or delivery MUST support the reserved
//! mailbox "postmaster" as a case-insensitive local name"); any other user exists when the
//! user database ([`UserDb`], `domains/<domain>/users`) lists it, or when its Maildir
//! `<data_dir>/mail/<domain>/<user>/` exists. The users file is re-read whenever it changes,
//! so adding a user or a domain needs no restart.
//!
//! A subaddress (`alice+news@`, [RFC 5233](https://www.rfc-editor.org/rfc/rfc5233)) is
//! delivered to its base user when it is not a user itself.
//!
//! Addresses are normalised by [`Address::from_mailbox`], the same function the CLI and AUTH
//! use. A local part that cannot name a user of ours (see [`crate::directory::users`]) is an unknown user.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto_core::ForwardPath;

use crate::directory::users::{Address, UserDb, UserDbError};

/// The reserved mailbox every local domain has.
const POSTMASTER: &str = "postmaster";

/// A mailbox in a local domain, normalised: `<user>@<domain>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalMailbox {
    /// The domain (IDNA A-label form).
    pub domain: String,
    /// The user (lower case, NFC).
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

/// Answers recipient lookups from the user database and the data directory.
#[derive(Debug, Clone)]
pub struct Recipients {
    users: Arc<UserDb>,
    mail_dir: PathBuf,
    hostname: String,
}

impl Recipients {
    /// Lookups against the user database and `mail_dir` (`<data_dir>/mail`).
    /// `<Postmaster>` without a domain goes to `postmaster@<hostname>`.
    pub fn new(users: Arc<UserDb>, mail_dir: PathBuf, hostname: String) -> Recipients {
        Recipients {
            users,
            mail_dir,
            hostname,
        }
    }

    /// `postmaster@<hostname>`: where `<Postmaster>` without a domain goes.
    pub fn host_postmaster(&self) -> Option<proto_core::Mailbox> {
        proto_core::Mailbox::parse(&format!("{POSTMASTER}@{}", self.hostname)).ok()
    }

    /// Whether `domain` is one of ours.
    pub fn is_local_domain(&self, domain: &proto_core::Domain) -> bool {
        self.users.is_local_domain(domain)
    }

    /// What `to` is to us. Reads the file system (a few `stat`s and maybe the users file).
    pub fn lookup(&self, to: &ForwardPath) -> Result<Lookup, UserDbError> {
        let mailbox = match to {
            // RFC 5321 4.1.1.3: "<Postmaster>" without a domain must be accepted.
            ForwardPath::Postmaster => {
                return Ok(Lookup::Local(LocalMailbox {
                    domain: self.hostname.clone(),
                    user: POSTMASTER.into(),
                }));
            }
            ForwardPath::Mailbox(m) => m,
            _ => return Ok(Lookup::NotLocal),
        };
        if !self.users.is_local_domain(mailbox.domain()) {
            return Ok(Lookup::NotLocal);
        }
        let Ok(address) = Address::from_mailbox(mailbox) else {
            return Ok(Lookup::UnknownUser);
        };
        // The address itself, else its base without the +subaddress (RFC 5233).
        for candidate in std::iter::once(address.clone()).chain(address.base()) {
            let local = LocalMailbox {
                domain: candidate.ascii_domain().to_string(),
                user: candidate.local().to_string(),
            };
            if local.user == POSTMASTER
                || self.users.get(&candidate)?.is_some()
                || local.maildir(&self.mail_dir).is_dir()
            {
                return Ok(Lookup::Local(local));
            }
        }
        Ok(Lookup::UnknownUser)
    }
}

impl Recipients {
    /// Whether `user` (normalised: lower case, NFC) exists in the local `domain` (Unicode or
    /// A-label): a user of the users file, or a user with a Maildir. No suffix handling: the
    /// alias resolution tries the forms it wants. `postmaster` is no exception here: the alias
    /// resolution gives it to an alias or the catch-all first, and to its own mailbox only
    /// when neither takes it (see `proto_core::mail::resolve`). The server and
    /// `postern alias resolve` both ask this, so they agree.
    pub fn user_exists(&self, domain: &str, user: &str) -> Result<bool, String> {
        let Ok(address) = Address::parse(&format!("{user}@{domain}")) else {
            return Ok(false);
        };
        if self
            .users
            .get(&address)
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(true);
        }
        // postmaster's Maildir is made by the deliveries nothing else took: it is no reason to
        // pass over the catch-all, so only the users file makes postmaster a user.
        if address.local() == POSTMASTER {
            return Ok(false);
        }
        let local = LocalMailbox {
            domain: address.ascii_domain().to_string(),
            user: address.local().to_string(),
        };
        Ok(local.maildir(&self.mail_dir).is_dir())
    }
}

impl LocalMailbox {
    /// Its Maildir under `mail_dir`.
    pub fn maildir(&self, mail_dir: &Path) -> PathBuf {
        mail_dir.join(&self.domain).join(&self.user)
    }
}

impl fmt::Display for LocalMailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

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
        let r = Recipients::new(
            Arc::new(UserDb::new(domains)),
            mail,
            "mx.example.org".into(),
        );
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
            ("<alice+news@example.org>", local("alice")),
            ("<Alice+News+x@example.org>", local("alice")),
            ("<eve+news@example.org>", Lookup::UnknownUser),
            ("<+news@example.org>", Lookup::UnknownUser),
            ("<\"../x\"@example.org>", Lookup::UnknownUser),
            ("<\".hidden\"@example.org>", Lookup::UnknownUser),
            ("<alice@other.org>", Lookup::NotLocal),
            ("<alice@[127.0.0.1]>", Lookup::NotLocal),
            ("<alice@example.org.example>", Lookup::NotLocal),
            ("<user%other@example.org>", Lookup::UnknownUser),
            ("<\"user@other\"@example.org>", Lookup::UnknownUser),
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

    #[test]
    fn users_exist_in_the_users_file_or_with_a_maildir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let domains = tmp.path().join("domains");
        let mail = tmp.path().join("mail");
        fs::create_dir_all(domains.join("example.org")).expect("mkdir");
        fs::create_dir_all(mail.join("example.org/carol")).expect("mkdir");
        fs::write(domains.join("example.org/users"), "alice\n").expect("write");
        let r = Recipients::new(
            Arc::new(UserDb::new(domains)),
            mail,
            "mx.example.org".into(),
        );
        assert_eq!(r.user_exists("example.org", "alice"), Ok(true));
        assert_eq!(r.user_exists("EXAMPLE.org", "alice"), Ok(true));
        assert_eq!(r.user_exists("example.org", "carol"), Ok(true));
        // postmaster is the alias resolution's to place (aliases and catch-all first), even
        // once its own Maildir exists.
        fs::create_dir_all(tmp.path().join("mail/example.org/postmaster")).expect("mkdir");
        assert_eq!(r.user_exists("example.org", "postmaster"), Ok(false));
        assert_eq!(r.user_exists("example.org", "bob"), Ok(false));
        assert_eq!(r.user_exists("example.org", "a b"), Ok(false));
        assert_eq!(r.user_exists("example.org", "../carol"), Ok(false));
    }
}

//! Where a recipient of one of our domains goes: SRS bounces, aliases, users.
//!
//! At RCPT, for an address in a local domain:
//! 1. An SRS address (`SRS0=...` / `SRS1=...`, see `proto_core::mail::Srs`) is a bounce (or reply)
//!    to mail we forwarded: its hash and age are checked and it goes back to the original
//!    sender, through outbound delivery. A forged or expired one is refused (550 5.7.1): SRS
//!    addresses are never looked up as aliases, so a catch-all cannot swallow them.
//! 2. Otherwise the aliases of the domain decide (`crate::directory::aliases`; users are known from the
//!    users file and the Maildirs, as [`Recipients`] knows them): each destination becomes a
//!    queued recipient. A mailbox of ours is delivered locally; a command (`| command`) is
//!    piped to locally; an address elsewhere is forwarded through outbound delivery with the
//!    sender rewritten by SRS (so that the next hop's SPF check sees our domain), unless the
//!    sender is null or ours already.
//!
//! Forwarding is what the alias files say and nothing else: an address of ours that is no
//! alias and no user is refused (550 5.1.1), and nothing here relays for anyone.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use proto_core::{
    Domain, ForwardPath, Reply, ReversePath, mail::AliasError, mail::Destination, mail::Srs,
};

use crate::directory::aliases::Aliases;
use crate::directory::recipients::Recipients;
use crate::directory::relay::{Locality, locality};
use crate::directory::users::Address as UserAddress;
use crate::queue::store::Address;

/// One queued recipient an address turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Where it goes.
    pub address: Address,
    /// The reverse path for it, when not the message's own (SRS).
    pub sender: Option<ReversePath>,
}

/// What RCPT should do with an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Accept: queue these recipients.
    Accept(Vec<Queued>),
    /// Not one of our domains: the relay policy decides.
    NotLocal,
    /// Refuse with this reply.
    Refuse(Reply),
}

/// The alias tables and the SRS in force, shared by the sessions and the bouncer (so that a
/// DSN goes where a message to its recipient would); replaced on SIGHUP.
#[derive(Debug, Clone)]
pub struct AliasCell(Arc<RwLock<(Arc<Aliases>, Arc<Srs>)>>);

impl AliasCell {
    /// A cell holding `aliases` and `srs`.
    pub fn new(aliases: Arc<Aliases>, srs: Arc<Srs>) -> AliasCell {
        AliasCell(Arc::new(RwLock::new((aliases, srs))))
    }

    /// What is in force now.
    pub fn get(&self) -> (Arc<Aliases>, Arc<Srs>) {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `aliases` and `srs` in force.
    pub fn set(&self, aliases: Arc<Aliases>, srs: Arc<Srs>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = (aliases, srs);
    }
}

/// What deciding needs.
#[derive(Debug)]
pub struct Destinations<'a> {
    /// Local domains and users.
    pub recipients: &'a Recipients,
    /// The alias tables.
    pub aliases: &'a Aliases,
    /// SRS (the secret is the server's).
    pub srs: &'a Srs,
}

impl Destinations<'_> {
    /// Decides for `to`, in a transaction from `from`. Blocking (reads files).
    pub fn decide(&self, to: &ForwardPath, from: &ReversePath, now: SystemTime) -> Resolution {
        match locality(to, |d| self.recipients.is_local_domain(d)) {
            Locality::Local => {}
            Locality::Remote => return Resolution::NotLocal,
            // RFC 3463 5.7.1: delivery not authorized.
            Locality::RoutedLocalPart => {
                return Resolution::Refuse(Reply::of(
                    proto_core::ReplyCode::MAILBOX_UNAVAILABLE,
                    (5, 7, 1),
                    "Routing in the local part is not accepted here",
                ));
            }
        }
        let host_postmaster;
        let mailbox = match to {
            ForwardPath::Mailbox(m) => m,
            // <Postmaster> without a domain: postmaster@<hostname>, through its aliases when
            // the hostname is one of our domains; else the host's own postmaster mailbox.
            _ => match self.recipients.host_postmaster() {
                Some(m) if self.recipients.is_local_domain(m.domain()) => {
                    host_postmaster = m;
                    &host_postmaster
                }
                _ => return self.plain_lookup(to),
            },
        };
        let local = mailbox.local_part().as_str();
        if proto_core::mail::is_srs(local) {
            return match self.srs.reverse(mailbox, now) {
                Ok(original) => Resolution::Accept(vec![Queued {
                    address: Address::Remote(original),
                    sender: None,
                }]),
                // RFC 3463 5.7.1: delivery not authorized.
                Err(e) => Resolution::Refuse(Reply::of(
                    proto_core::ReplyCode::MAILBOX_UNAVAILABLE,
                    (5, 7, 1),
                    format!("Not a valid bounce address here: {e}"),
                )),
            };
        }
        let exists = |domain: &str, user: &str| self.recipients.user_exists(domain, user);
        let resolved = match self.aliases.resolve(mailbox, &exists) {
            Ok(r) => r,
            Err(e @ AliasError::Lookup { .. }) => {
                crate::log::line(crate::log::Event::Failed)
                    .field("to", format_args!("<{mailbox}>"))
                    .text("reason", &e)
                    .write();
                return Resolution::Refuse(Reply::of(
                    proto_core::ReplyCode::LOCAL_ERROR,
                    (4, 3, 0),
                    "Temporary local problem, try again later",
                ));
            }
            // RFC 3463 5.4.6: routing loop detected.
            Err(e) => {
                return Resolution::Refuse(Reply::of(
                    proto_core::ReplyCode::MAILBOX_UNAVAILABLE,
                    (5, 4, 6),
                    format!("Alias problem: {e}"),
                ));
            }
        };
        let mut targets = Vec::new();
        for r in resolved {
            let target = match r.destination {
                Destination::Local { user, domain } => {
                    match UserAddress::parse(&format!("{user}@{domain}")) {
                        Ok(a) => Queued {
                            address: Address::Local {
                                domain: a.ascii_domain().to_string(),
                                user: a.local().to_string(),
                            },
                            sender: None,
                        },
                        Err(_) => continue,
                    }
                }
                Destination::Remote(address) | Destination::Forward { address, .. } => Queued {
                    address: Address::Remote(address),
                    sender: self.forward_sender(from, mailbox.domain(), now),
                },
                Destination::Pipe { command, alias } => Queued {
                    address: Address::Pipe { command, alias },
                    sender: None,
                },
                _ => continue,
            };
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        if targets.is_empty() {
            // RFC 5321 3.4.2 / RFC 3463 5.1.1: bad destination mailbox address.
            return Resolution::Refuse(Reply::of(
                proto_core::ReplyCode::MAILBOX_UNAVAILABLE,
                (5, 1, 1),
                "No such user here",
            ));
        }
        Resolution::Accept(targets)
    }

    /// The reverse path for a copy forwarded out of `domain`: `from` rewritten by SRS. Null
    /// stays null; an address that cannot be rewritten (too long) stays as it is.
    fn forward_sender(
        &self,
        from: &ReversePath,
        domain: &Domain,
        now: SystemTime,
    ) -> Option<ReversePath> {
        let ReversePath::Mailbox(sender) = from else {
            return None;
        };
        match self.srs.forward(sender, domain, now) {
            Ok(rewritten) if rewritten != *sender => Some(ReversePath::Mailbox(rewritten)),
            Ok(_) => None,
            Err(e) => {
                crate::log::line(crate::log::Event::Srs)
                    .field("from", format_args!("<{sender}>"))
                    .text(
                        "problem",
                        format_args!("{e}; forwarding with the original sender"),
                    )
                    .write();
                None
            }
        }
    }

    /// `<Postmaster>`: the plain recipient lookup.
    fn plain_lookup(&self, to: &ForwardPath) -> Resolution {
        match self.recipients.lookup(to) {
            Ok(crate::directory::recipients::Lookup::Local(m)) => {
                Resolution::Accept(vec![Queued {
                    address: Address::Local {
                        domain: m.domain,
                        user: m.user,
                    },
                    sender: None,
                }])
            }
            Ok(_) => Resolution::Refuse(Reply::of(
                proto_core::ReplyCode::MAILBOX_UNAVAILABLE,
                (5, 1, 1),
                "No such user here",
            )),
            Err(_) => Resolution::Refuse(Reply::of(
                proto_core::ReplyCode::LOCAL_ERROR,
                (4, 3, 0),
                "Temporary local problem, try again later",
            )),
        }
    }
}

/// The SRS key's file name in the data directory.
pub const SRS_KEY_FILE: &str = "srs.key";

/// Reads the SRS key at `path` (hex), or makes one (32 random bytes, mode 0600) when there is
/// none. Keep the file: with a new key, bounces to mail forwarded before are refused.
pub fn load_or_create_key(path: &Path) -> io::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim();
            let bytes: Option<Vec<u8>> = (0..text.len())
                .step_by(2)
                .map(|i| {
                    text.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect();
            match bytes {
                Some(b) if b.len() >= 16 => Ok(b),
                _ => Err(io::Error::other("not a key of at least 16 bytes in hex")),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| io::Error::other(e.to_string()))?;
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            crate::files::replace(path, format!("{hex}\n").as_bytes(), 0o600, None)?;
            Ok(key.to_vec())
        }
        Err(e) => Err(e),
    }
}

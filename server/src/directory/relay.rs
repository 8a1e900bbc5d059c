//! Relay policy: who may send where, and as whom. Pure functions, no I/O.
//!
//! # Recipients ([`locality`])
//!
//! Without AUTH (and outside the trusted networks), mail is accepted only for local domains;
//! everything else is "Relaying denied" (550 5.7.1). Forms that tried to trick servers into
//! relaying, and what they are here:
//!
//! | form | what it is |
//! |---|---|
//! | `user%other@local`, `other!user@local`, `"user@other"@local` | refused, 550 5.7.1: a local part holding a route is never forwarded, and no user of ours has one |
//! | `@local:user@other` | the source route is dropped (RFC 5321 section 3.3, done by proto-core): `user@other`, not local |
//! | `user@other@local`, `user@local.` | not an address: the session refuses it (501) |
//! | `user@[192.0.2.1]`, `user@[IPv6:...]` | an address literal is never a local domain: relaying |
//! | `user@LOCAL`, `user@xn--...` (IDNA form of a local domain), full-width letters | the local domain (UTS #46 folds them); then the user must exist |
//!
//! [RFC 5321 section 3.6.1](https://www.rfc-editor.org/rfc/rfc5321#section-3.6.1): "the local-part
//! of a mailbox MUST BE treated as case sensitive" by others, and only the receiving host
//! interprets it; we interpret `%`, `!` and `@` in it as "not a mailbox of ours".
//!
//! With AUTH (or from a trusted network) any recipient is acceptable as far as policy goes; a
//! recipient elsewhere is a [`Locality::Remote`], queued for outbound delivery. The locality is
//! decided once per RCPT, by [`crate::directory::destinations::Destinations::decide`].
//!
//! # Senders ([`Grants::may_send_as`])
//!
//! An authenticated user may use as MAIL FROM (and as header From, see [`HeaderFromCheck`]):
//! their own address; their own address with a `+suffix` (`alice+lists@example.org`); any
//! address or domain the configuration grants them in `[senders]`; and the null path `<>`
//! (RFC 8098 asks MDNs to use it; it impersonates nobody). Anything else is 553 5.7.1.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use toml::Spanned;

use ipnet::IpNet;
use proto_core::{ForwardPath, Mailbox, ReversePath};

use crate::directory::users::Address;

/// Where a recipient is, for the relay decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locality {
    /// In a local domain (or `<Postmaster>`): look the user up.
    Local,
    /// Elsewhere: relaying.
    Remote,
    /// In a local domain, with a route in the local part: never accepted.
    RoutedLocalPart,
}

/// What an authenticated user may send as, beyond their own address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    by_user: HashMap<Address, Vec<Grant>>,
}

/// One thing a user may send as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Any address in this domain (Unicode form, lower case).
    Domain(String),
    /// This address.
    Address(Address),
    /// The null reverse path, `MAIL FROM:<>` (written `"<>"`): for a user whose software sends
    /// bounces or auto-replies. Nobody has it unless granted.
    NullSender,
}

/// What to do when the header From of an authenticated user's message is not theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderFromCheck {
    /// Refuse the message (550 5.7.1).
    #[default]
    Reject,
    /// Accept it anyway.
    Allow,
}

/// Networks whose clients may relay without AUTH. Empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedNetworks(pub Vec<IpNet>);

/// The relay policy of a server, from postern.toml.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `[senders]`.
    pub grants: Grants,
    /// `[relay] trusted_networks`.
    pub trusted_networks: TrustedNetworks,
    /// `[relay] header_from`.
    pub header_from: HeaderFromCheck,
}

/// Classifies a recipient. `is_local` tells whether a domain is ours (any case, either IDNA
/// form; never an address literal).
pub fn locality(to: &ForwardPath, is_local: impl Fn(&proto_core::Domain) -> bool) -> Locality {
    let mailbox = match to {
        ForwardPath::Mailbox(m) => m,
        // <Postmaster> and anything a future proto-core adds without a domain is ours.
        _ => return Locality::Local,
    };
    if !is_local(mailbox.domain()) {
        return Locality::Remote;
    }
    if has_route(mailbox) {
        return Locality::RoutedLocalPart;
    }
    Locality::Local
}

/// Whether the local part holds a `%`, `!` or `@` route.
fn has_route(mailbox: &Mailbox) -> bool {
    mailbox.local_part().as_str().contains(['%', '!', '@'])
}

impl Grants {
    /// Grants `to` to `user`.
    pub fn grant(&mut self, user: Address, to: Grant) {
        self.by_user.entry(user).or_default().push(to);
    }

    /// Whether `user` may send as `from`.
    pub fn may_send_as(&self, user: &Address, from: &ReversePath) -> bool {
        match from {
            ReversePath::Null => self
                .by_user
                .get(user)
                .is_some_and(|grants| grants.contains(&Grant::NullSender)),
            ReversePath::Mailbox(m) => match Address::from_mailbox(m) {
                Ok(a) => self.owns(user, &a),
                // Not an address a user of ours can have (a literal, a route...): only a domain
                // grant could cover it, and domains are names.
                Err(_) => false,
            },
            _ => false,
        }
    }

    /// Whether `user` owns the (normalised) address `a`.
    pub fn owns(&self, user: &Address, a: &Address) -> bool {
        if a == user || a.base().as_ref() == Some(user) {
            return true;
        }
        self.by_user.get(user).is_some_and(|grants| {
            grants.iter().any(|g| match g {
                Grant::Domain(d) => a.domain() == d,
                Grant::Address(g) => g == a,
                Grant::NullSender => false,
            })
        })
    }
}

impl TrustedNetworks {
    /// Whether `ip` is in one of the networks (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// `[relay]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    #[serde(default)]
    pub(crate) trusted_networks: Vec<Spanned<String>>,
    pub(crate) header_from: Option<Spanned<String>>,
}

/// `[relay]` and `[senders]` of postern.toml.
pub(crate) fn parse_settings(
    raw: RawRelay,
    senders: std::collections::BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    src: &crate::config::Source<'_>,
) -> Result<(TrustedNetworks, HeaderFromCheck, Grants), crate::config::ConfigError> {
    let mut trusted_networks = TrustedNetworks::default();
    for net in raw.trusted_networks {
        let line = Some(net.span());
        let text = net.into_inner();
        match text.parse() {
            Ok(n) => trusted_networks.0.push(n),
            Err(_) => {
                return Err(src.error(
                    line,
                    format!("{text:?} is not a network"),
                    "write networks in CIDR notation, e.g. \"192.0.2.0/24\" or \"2001:db8::/32\"",
                ));
            }
        }
    }
    let header_from = match raw.header_from {
        None => HeaderFromCheck::default(),
        Some(h) => match h.get_ref().as_str() {
            "reject" => HeaderFromCheck::Reject,
            "allow" => HeaderFromCheck::Allow,
            other => {
                return Err(src.error(
                    Some(h.span()),
                    format!("header_from = {other:?} is neither \"reject\" nor \"allow\""),
                    "write header_from = \"reject\" or header_from = \"allow\"",
                ));
            }
        },
    };
    let mut grants = Grants::default();
    for (user, granted) in senders {
        let line = Some(user.span());
        let user = Address::parse(user.get_ref()).map_err(|e| {
            src.error(line,
                format!("[senders]: {e}"),
                "key each entry by a user's address, e.g. \"alice@example.org\" = [\"example.org\"]",
            )
        })?;
        for g in granted {
            let line = Some(g.span());
            let text = g.into_inner();
            let grant = if text == "<>" {
                Some(Grant::NullSender)
            } else if text.contains('@') {
                Address::parse(&text).map(Grant::Address).ok()
            } else {
                Address::parse(&format!("postmaster@{text}"))
                    .map(|a| Grant::Domain(a.domain().to_string()))
                    .ok()
            };
            let Some(grant) = grant else {
                return Err(src.error(
                    line,
                    format!("[senders]: {text:?} is neither an address nor a domain"),
                    "grant addresses (\"bob@example.org\"), domains (\"example.org\") or the \
                     null sender (\"<>\")",
                ));
            };
            grants.grant(user.clone(), grant);
        }
    }
    Ok((trusted_networks, header_from, grants))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_local(d: &proto_core::Domain) -> bool {
        // The real check goes through userdb's normalisation; so does this one.
        let probe = format!("postmaster@{}", d.as_str());
        Address::parse(&probe)
            .is_ok_and(|a| a.domain() == "example.org" || a.domain() == "bücher.example")
    }

    #[test]
    fn recipients_locality() {
        let cases = [
            ("<alice@example.org>", Locality::Local),
            ("<Alice@EXAMPLE.ORG>", Locality::Local),
            ("<alice@ｅｘａｍｐｌｅ.org>", Locality::Local),
            ("<alice@xn--bcher-kva.example>", Locality::Local),
            ("<alice@BÜCHER.example>", Locality::Local),
            ("<Postmaster>", Locality::Local),
            (
                "<user%other.example@example.org>",
                Locality::RoutedLocalPart,
            ),
            (
                "<other.example!user@example.org>",
                Locality::RoutedLocalPart,
            ),
            (
                "<\"user@other.example\"@example.org>",
                Locality::RoutedLocalPart,
            ),
            ("<\"user%other\"@EXAMPLE.org>", Locality::RoutedLocalPart),
            ("<@example.org:user@other.example>", Locality::Remote),
            (
                "<@example.org,@example.org:user@other.example>",
                Locality::Remote,
            ),
            ("<user@other.example>", Locality::Remote),
            ("<user%example.org@other.example>", Locality::Remote),
            ("<user@example.org.other.example>", Locality::Remote),
            ("<user@[127.0.0.1]>", Locality::Remote),
            ("<user@[IPv6:::1]>", Locality::Remote),
            ("<user@[ipv6:0:0:0:0:0:0:0:1]>", Locality::Remote),
        ];
        for (path, want) in cases {
            let to = ForwardPath::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(locality(&to, is_local), want, "input {path}");
        }
        // These never get as far as the policy: the session refuses them as syntax errors.
        for bad in [
            "<user@other.example@example.org>",
            "<user@example.org.>",
            "<user@>",
        ] {
            assert!(ForwardPath::parse(bad).is_err(), "input {bad}");
        }
    }

    #[test]
    fn senders_own_their_addresses() {
        let alice = Address::parse("alice@example.org").expect("alice");
        let mut grants = Grants::default();
        grants.grant(alice.clone(), Grant::Domain("lists.example".into()));
        grants.grant(
            alice.clone(),
            Grant::Address(Address::parse("bob@example.org").expect("bob")),
        );
        let cases = [
            ("<>", false),
            ("<alice@example.org>", true),
            ("<ALICE@Example.Org>", true),
            ("<alice+news@example.org>", true),
            ("<bob@example.org>", true),
            ("<anyone@lists.example>", true),
            ("<anyone@LISTS.example>", true),
            ("<carol@example.org>", false),
            ("<bob+x@example.org>", false),
            ("<alicex@example.org>", false),
            ("<alice@other.example>", false),
            ("<alice@example.org.evil.example>", false),
            ("<anyone@sub.lists.example>", false),
            ("<alice@[127.0.0.1]>", false),
            ("<\"alice@example.org\"@evil.example>", false),
        ];
        for (path, want) in cases {
            let from = ReversePath::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(grants.may_send_as(&alice, &from), want, "input {path}");
        }
        let bob = Address::parse("bob@example.org").expect("bob");
        let from = ReversePath::parse("<alice@example.org>").expect("path");
        assert!(!grants.may_send_as(&bob, &from), "grants are one-way");
        // The null sender is one more grant, given by name.
        grants.grant(alice.clone(), Grant::NullSender);
        assert!(grants.may_send_as(&alice, &ReversePath::Null));
        assert!(!grants.may_send_as(&bob, &ReversePath::Null));
    }

    #[test]
    fn trusted_networks() {
        let nets = TrustedNetworks(vec![
            "192.0.2.0/24".parse().expect("net"),
            "2001:db8::/32".parse().expect("net"),
        ]);
        let cases = [
            ("192.0.2.7", true),
            ("::ffff:192.0.2.7", true),
            ("192.0.3.1", false),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
            ("127.0.0.1", false),
        ];
        for (ip, want) in cases {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(nets.contains(ip), want, "input {ip}");
        }
        assert!(!TrustedNetworks::default().contains("127.0.0.1".parse().expect("ip")));
    }
}

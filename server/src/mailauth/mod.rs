//! Mail authentication on reception: DKIM signing of what authenticated users send, and the
//! SPF, DKIM, ARC and DMARC checks of what arrives from other servers.
//!
//! # Signing ([`sign`])
//!
//! A message from an authenticated user is signed with every key of the domain of its header
//! From, when that domain is local and has keys ([`crate::mailauth::dkim`]: relaxed/relaxed, the
//! signed and over-signed fields chosen there). The [`crate::mailauth::dkim::Signer`] is fed the body
//! chunks as they arrive; at the end of data its `DKIM-Signature` fields go into
//! [`crate::queue::store::Envelope::headers`]. A domain without keys sends unsigned; a signing
//! failure (an unreadable key, a header section over [`crate::mailauth::dkim::MAX_HEADER_BLOCK`]) is
//! answered 451 4.3.0, never sent unsigned.
//!
//! # Checks ([`Inbound`])
//!
//! Mail arriving on a `smtp` listener without AUTH, from a client outside
//! `[relay] trusted_networks`, is checked when `[checks] enabled` (the default):
//!
//! - SPF ([RFC 7208](https://www.rfc-editor.org/rfc/rfc7208)) at MAIL, for the HELO identity
//!   and the MAIL FROM identity (for a null reverse-path, `postmaster@<HELO>`, 2.4). A `fail`
//!   of the MAIL FROM identity is refused `550 5.7.23` ([RFC 7372](https://www.rfc-editor.org/rfc/rfc7372#section-3.2),
//!   as RFC 7208 8.4 suggests; `spf_fail = "mark"` accepts it).
//! - DKIM ([RFC 6376](https://www.rfc-editor.org/rfc/rfc6376)) of every signature, and ARC
//!   ([RFC 8617](https://www.rfc-editor.org/rfc/rfc8617)) chain validation, at the end of data:
//!   the bodies are hashed as they stream past ([`verify::Verifier`]), the header section is
//!   kept (at most [`verify::MAX_HEADER`]); the signatures themselves are checked by
//!   mail-auth on the header section, given the body hashes computed here.
//! - DMARC ([RFC 7489](https://www.rfc-editor.org/rfc/rfc7489); mail-auth implements its
//!   successor's tree walk) on the header From domain with the DKIM and SPF results and
//!   their alignment. A failure under `p=reject` is refused `550 5.7.1` (`dmarc_reject`);
//!   under `p=quarantine` it is accepted and marked (`dmarc_quarantine`).
//! - A DNS temporary error never becomes a permanent refusal: `temperror = "accept"` (the
//!   default) accepts and records `temperror` in the results, `"defer"` answers `451 4.4.3`
//!   (SPF at MAIL, DMARC at the end of data).
//!
//! The results go into one `Authentication-Results` field
//! ([RFC 8601](https://www.rfc-editor.org/rfc/rfc8601)) whose authserv-id is our hostname,
//! and a `Received-SPF` field (RFC 7208 9.1), both in the envelope's added header fields;
//! `Authentication-Results` fields of the message that claim our authserv-id are forgeries
//! and are removed from the stored copy ([`forged`]).
//!
//! DNS comes from our own resolver through mail-auth's caches ([`dns`]); mail-auth's own
//! resolver has no servers and never touches the network, and no tokio runtime is started.
//!
//! The `[checks]` section of postern.toml is read here too ([`RawChecks`]). DMARC, TLS and
//! failure reports that other receivers mail to `[reports] addresses` are read and kept by
//! [`reports`].

pub mod authdns;
pub mod dkim;
pub mod dns;
pub mod forged;
pub mod reports;
pub mod sign;
pub mod verify;

use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use toml::Spanned;

pub use crate::mailauth::authdns::spf_word;
use crate::mailauth::authdns::{AuthDns, TxtKind};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfOutput, SpfResult};
use proto_core::Reply;

use crate::dns::Resolver;

/// What to do with a message that fails a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFail {
    /// Refuse it (5xx).
    Reject,
    /// Accept it; the results say what failed.
    Mark,
}

/// What to do when a check meets a DNS temporary error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnTempError {
    /// Accept the message; the results say `temperror`.
    Accept,
    /// Answer 451 4.4.3: the client tries again later.
    Defer,
}

/// `[checks]` in `postern.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSettings {
    /// Whether mail arriving on the smtp listeners is checked at all.
    pub enabled: bool,
    /// An SPF `fail` of the MAIL FROM identity.
    pub spf_fail: OnFail,
    /// A DMARC failure under `p=reject`.
    pub dmarc_reject: OnFail,
    /// A DMARC failure under `p=quarantine`.
    pub dmarc_quarantine: OnFail,
    /// DNS temporary errors in SPF and DMARC.
    pub temperror: OnTempError,
}

impl Default for CheckSettings {
    fn default() -> Self {
        CheckSettings {
            enabled: true,
            spf_fail: OnFail::Reject,
            dmarc_reject: OnFail::Reject,
            dmarc_quarantine: OnFail::Mark,
            temperror: OnTempError::Accept,
        }
    }
}

/// What every connection's signing and checks share.
pub struct Inbound {
    /// The signing keys (`domains/<domain>/dkim/` of the configuration directory).
    pub keys: Arc<crate::mailauth::dkim::KeyCache>,
    /// `[checks]`.
    pub settings: CheckSettings,
    /// Our hostname: the authserv-id of `Authentication-Results` (RFC 8601 2.5).
    pub hostname: String,
    /// Our resolver.
    pub resolver: Arc<Resolver>,
    /// mail-auth, with an offline resolver: every answer comes through [`dns::Fetched`].
    pub authenticator: MessageAuthenticator,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("settings", &self.settings)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// The SPF results of a transaction, from MAIL.
#[derive(Debug, Clone)]
pub struct SpfResults {
    /// The client's address.
    pub ip: IpAddr,
    /// The HELO/EHLO name.
    pub helo: String,
    /// The reverse-path (`local@domain`), empty for the null path.
    pub sender: String,
    /// The HELO identity's result.
    pub helo_result: SpfOutput,
    /// The MAIL FROM identity's result (the HELO one's for a null reverse-path).
    pub mail_from: SpfOutput,
}

/// What a check says about the transaction or message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Disposition {
    /// Go on.
    Accept,
    /// Refuse with this reply (5xx or 4xx).
    Refuse(Reply),
}

impl Inbound {
    /// Signing with the keys under `config_dir`, checks answered from `resolver`.
    pub fn new(
        config_dir: PathBuf,
        settings: CheckSettings,
        hostname: String,
        resolver: Arc<Resolver>,
    ) -> Inbound {
        Inbound {
            keys: Arc::new(crate::mailauth::dkim::KeyCache::new(config_dir)),
            settings,
            hostname,
            resolver,
            authenticator: crate::mailauth::authdns::offline_authenticator(),
        }
    }

    /// SPF at MAIL (RFC 7208 2.3, 2.4): the HELO identity, then the MAIL FROM identity
    /// (`sender` is `local@domain`, or empty for the null reverse-path), and the decision.
    pub async fn spf(&self, ip: IpAddr, helo: &str, sender: &str) -> (SpfResults, Disposition) {
        let fetched = dns::Fetched::default();
        let helo_result = self
            .spf_identity(&fetched, ip, || {
                SpfParameters::verify_ehlo(ip, helo, &self.hostname)
            })
            .await;
        let mail_from = if sender.is_empty() {
            helo_result.clone()
        } else {
            self.spf_identity(&fetched, ip, || {
                SpfParameters::verify_mail_from(ip, helo, &self.hostname, sender)
            })
            .await
        };
        let decision = match mail_from.result() {
            // RFC 7208 8.4: "the checking software can choose to mark the mail [...] or to
            // reject the mail outright"; RFC 7372 3.2: 5.7.23 "SPF validation failed".
            SpfResult::Fail if self.settings.spf_fail == OnFail::Reject => {
                Disposition::Refuse(Reply::of(
                    proto_core::ReplyCode::MAILBOX_UNAVAILABLE,
                    (5, 7, 23),
                    format!(
                        "SPF: {} does not designate {ip} as a permitted sender",
                        mail_from.domain()
                    ),
                ))
            }
            // RFC 7208 8.6: temperror "the SMTP server MAY return a 451 4.4.3 reply code".
            SpfResult::TempError if self.settings.temperror == OnTempError::Defer => {
                Disposition::Refuse(Reply::of(
                    proto_core::ReplyCode::LOCAL_ERROR,
                    (4, 4, 3),
                    "SPF: temporary DNS failure, try again later",
                ))
            }
            _ => Disposition::Accept,
        };
        let results = SpfResults {
            ip,
            helo: helo.to_string(),
            sender: sender.to_string(),
            helo_result,
            mail_from,
        };
        (results, decision)
    }

    /// One SPF identity, its parameters made by `params` for each run.
    async fn spf_identity<'p>(
        &self,
        fetched: &dns::Fetched,
        ip: IpAddr,
        params: impl Fn() -> SpfParameters<'p>,
    ) -> SpfOutput {
        let addresses = [ip];
        let dns = AuthDns::new(fetched, TxtKind::Spf).with_addresses(&addresses);
        dns::run(&self.resolver, fetched, &dns, |dns| {
            self.authenticator.verify_spf(dns.parameters(params()))
        })
        .await
    }
}

/// `[checks]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChecks {
    pub(crate) enabled: Option<bool>,
    pub(crate) spf_fail: Option<Spanned<String>>,
    pub(crate) dmarc_reject: Option<Spanned<String>>,
    pub(crate) dmarc_quarantine: Option<Spanned<String>>,
    pub(crate) temperror: Option<Spanned<String>>,
}

/// `[checks]` of postern.toml.
pub(crate) fn parse_settings(
    raw: RawChecks,
    src: &crate::config::Source<'_>,
) -> Result<CheckSettings, crate::config::ConfigError> {
    let defaults = CheckSettings::default();
    let on_fail = |value: Option<Spanned<String>>, key: &str, default: OnFail| {
        let Some(v) = value else {
            return Ok(default);
        };
        match v.get_ref().as_str() {
            "reject" => Ok(OnFail::Reject),
            "mark" => Ok(OnFail::Mark),
            other => Err(src.error(
                Some(v.span()),
                format!("[checks] {key} = {other:?} is neither \"reject\" nor \"mark\""),
                &format!("write {key} = \"reject\" or {key} = \"mark\""),
            )),
        }
    };
    let temperror = match raw.temperror {
        None => defaults.temperror,
        Some(v) => match v.get_ref().as_str() {
            "accept" => OnTempError::Accept,
            "defer" => OnTempError::Defer,
            other => {
                return Err(src.error(
                    Some(v.span()),
                    format!("[checks] temperror = {other:?} is neither \"accept\" nor \"defer\""),
                    "write temperror = \"accept\" or temperror = \"defer\"",
                ));
            }
        },
    };
    Ok(CheckSettings {
        enabled: raw.enabled.unwrap_or(defaults.enabled),
        spf_fail: on_fail(raw.spf_fail, "spf_fail", defaults.spf_fail)?,
        dmarc_reject: on_fail(raw.dmarc_reject, "dmarc_reject", defaults.dmarc_reject)?,
        dmarc_quarantine: on_fail(
            raw.dmarc_quarantine,
            "dmarc_quarantine",
            defaults.dmarc_quarantine,
        )?,
        temperror,
    })
}

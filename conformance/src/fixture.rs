//! The fixture application: what a real server decides with I/O (is this recipient ours? is
//! this password right? is the message stored?), answered from a small table in memory.
//!
//! Rules, the same for every suite:
//! - MAIL: accepted.
//! - RCPT: `<Postmaster>` and `postmaster@<local domain>` are accepted (RFC 5321 4.5.1), as are
//!   the fixture's mailboxes; another local part of a local domain is refused with
//!   `550 5.1.1`; a foreign domain is refused with `550 5.7.1` (no relaying) unless the session
//!   has authenticated.
//! - AUTH: `235` for a known user with the right password (and no authorization identity other
//!   than the user itself), else `535 5.7.8`.
//! - End of message: accepted with a queue id.

use std::sync::Arc;

use proto_core::{
    EnhancedStatus, ForwardPath, Reply, ReplyCode, TlsInfo, server::AuthPolicy, server::Config,
    server::Event, server::PeerInfo, server::Ticket, server::Verdict,
};

/// A server configuration plus the data its application answers from.
#[derive(Debug, Clone)]
pub(crate) struct Fixture {
    /// The session configuration.
    pub config: Arc<Config>,
    /// Domains we receive mail for, lower case.
    pub local_domains: Vec<String>,
    /// Mailboxes that exist, `local@domain` in lower case.
    pub mailboxes: Vec<String>,
    /// AUTH users (`authcid`) and their passwords.
    pub users: Vec<(String, String)>,
}

impl Fixture {
    /// A fixture for `hostname` with STARTTLS offered and the given AUTH policy; callers adjust
    /// limits through [`Fixture::config_mut`].
    pub fn new(hostname: &str, auth: AuthPolicy) -> Fixture {
        let mut config = Config::new(hostname);
        config.extensions.starttls = true;
        config.auth = auth;
        Fixture {
            config: Arc::new(config),
            local_domains: Vec::new(),
            mailboxes: Vec::new(),
            users: Vec::new(),
        }
    }

    /// The configuration, for setting limits while the fixture is being built.
    pub fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Adds a local domain.
    pub fn domain(mut self, domain: &str) -> Fixture {
        self.local_domains.push(domain.to_ascii_lowercase());
        self
    }

    /// Adds a mailbox, and an AUTH user of the same name when `password` is given.
    pub fn mailbox(mut self, address: &str, password: Option<&str>) -> Fixture {
        self.mailboxes.push(address.to_lowercase());
        if let Some(p) = password {
            self.users.push((address.to_string(), p.to_string()));
        }
        self
    }

    /// What the driver knows about a new connection: TLS from the start, or not.
    pub fn peer(&self, implicit_tls: bool) -> PeerInfo {
        let mut peer = PeerInfo::default();
        if implicit_tls {
            peer.tls = Some(tls_info());
        }
        peer
    }

    /// The application's verdict on `event`, with the ticket to pass it back with; `None` for
    /// events that need no answer. `authenticated` is the session's state at the event.
    pub fn decide(
        &self,
        event: &Event,
        authenticated: bool,
        queue_id: &str,
    ) -> Option<(Ticket, Verdict)> {
        match event {
            Event::Mail { ticket, .. } => Some((*ticket, Verdict::Accept)),
            Event::Rcpt { ticket, to, .. } => Some((*ticket, self.rcpt(to, authenticated))),
            Event::Auth {
                ticket,
                credentials,
            } => {
                let known = self.users.iter().any(|(user, password)| {
                    user.eq_ignore_ascii_case(&credentials.authcid)
                        && *password == credentials.password
                });
                let acting_as_self = credentials
                    .authzid
                    .as_ref()
                    .is_none_or(|z| z.eq_ignore_ascii_case(&credentials.authcid));
                let verdict = if known && acting_as_self {
                    Verdict::Accept
                } else {
                    reject(
                        ReplyCode::AUTH_INVALID,
                        (5, 7, 8),
                        "Authentication credentials invalid",
                    )
                };
                Some((*ticket, verdict))
            }
            Event::MessageEnd { ticket } => Some((
                *ticket,
                Verdict::AcceptWithText(format!("queued as {queue_id}")),
            )),
            _ => None,
        }
    }

    fn rcpt(&self, to: &ForwardPath, authenticated: bool) -> Verdict {
        let mailbox = match to {
            ForwardPath::Postmaster => return Verdict::Accept,
            ForwardPath::Mailbox(m) => m,
            _ => {
                return reject(
                    ReplyCode::MAILBOX_UNAVAILABLE,
                    (5, 1, 1),
                    "No such user here",
                );
            }
        };
        let domain = mailbox
            .domain()
            .to_ascii()
            .map(|d| d.to_ascii_lowercase())
            .unwrap_or_default();
        if !self.local_domains.contains(&domain) {
            return if authenticated {
                Verdict::Accept
            } else {
                reject(
                    ReplyCode::MAILBOX_UNAVAILABLE,
                    (5, 7, 1),
                    "Relaying not permitted",
                )
            };
        }
        let local = mailbox.local_part().as_str().to_lowercase();
        if local == "postmaster" || self.mailboxes.contains(&format!("{local}@{domain}")) {
            Verdict::Accept
        } else {
            reject(
                ReplyCode::MAILBOX_UNAVAILABLE,
                (5, 1, 1),
                "No such user here",
            )
        }
    }
}

/// What the fixture's TLS handshakes negotiate.
pub(crate) fn tls_info() -> TlsInfo {
    TlsInfo::new("TLSv1.3", "TLS13_AES_128_GCM_SHA256", None)
}

fn reject(code: ReplyCode, enhanced: (u8, u16, u16), text: &str) -> Verdict {
    let (class, subject, detail) = enhanced;
    Verdict::Reject(Reply::new(
        code,
        EnhancedStatus::new(class, subject, detail),
        text,
    ))
}

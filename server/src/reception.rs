//! Receiving mail: the [`Handler`] that answers a session's questions.
//!
//! One [`Reception`] per connection. MAIL opens a transaction with a fresh queue id; RCPT
//! looks the recipient up ([`Recipients`]): a local mailbox is accepted, an unknown user in a
//! local domain gets 550 5.1.1, any other domain 550 5.7.1 unless the client may relay. The
//! body is streamed into the spool; at the end of data the message is delivered to every
//! recipient's Maildir, each copy fsynced, and only then answered 250, so a 250 always means
//! the mail is on disk.
//!
//! AUTH is checked by [`Authenticator`] (user database, brute-force limits). The relay policy
//! is [`crate::relay`]'s: without AUTH (or a trusted network) only local recipients; with it,
//! MAIL FROM, and the header From at the end of data, must be the user's own. Recipients
//! elsewhere are refused with 451 4.3.0 even when relaying is allowed, because outbound
//! delivery does not exist yet: the client keeps the message and can retry once it does,
//! rather than being told 250 for mail that would sit here.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use proto_core::{
    Credentials, ForwardPath, MailParams, RcptParams, Reply, ReversePath, Session, Verdict,
};
use runtime_smol::Handler;

use crate::auth::Authenticator;
use crate::config::Role;
use crate::delivery;
use crate::header_from::{self, HeaderCollector};
use crate::log;
use crate::queue::{QueueId, Spool};
use crate::recipients::{LocalMailbox, Lookup, Recipients};
use crate::relay::{self, HeaderFromCheck, Policy, Target};
use crate::trace::{MAX_RECEIVED, ReceivedCounter, Trace};
use crate::userdb::Address;

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// Our host name.
    pub hostname: String,
    /// Recipient lookups.
    pub recipients: Recipients,
    /// `<data_dir>/mail`.
    pub mail_dir: PathBuf,
    /// `<data_dir>/queue/tmp`.
    pub spool_dir: PathBuf,
    /// Checks logins.
    pub auth: Arc<Authenticator>,
    /// Who may relay and send as whom.
    pub policy: Policy,
    /// `[auth] allow_plaintext_on_loopback`.
    pub allow_plaintext_on_loopback: bool,
}

/// The handler of one connection.
#[derive(Debug)]
pub struct Reception {
    shared: Arc<Shared>,
    role: Role,
    transaction: Option<Transaction>,
    /// Who logged in, once AUTH succeeded (the session forgets it on STARTTLS; so do we, by
    /// asking the session too: see [`Reception::user`]).
    user: Option<Address>,
}

/// The open transaction.
#[derive(Debug)]
struct Transaction {
    id: QueueId,
    from: ReversePath,
    recipients: Vec<LocalMailbox>,
    spool: Option<Spool>,
    received: ReceivedCounter,
    /// The header section, for the header From check of authenticated users.
    header: HeaderCollector,
}

impl Reception {
    /// A handler for a connection on a listener with `role`.
    pub fn new(shared: Arc<Shared>, role: Role) -> Reception {
        Reception {
            shared,
            role,
            transaction: None,
            user: None,
        }
    }

    /// The authenticated user, if the session is authenticated.
    fn user(&self, session: &Session) -> Option<&Address> {
        session.authenticated().and(self.user.as_ref())
    }

    /// Whether this client may send to other domains: authenticated, or in a trusted network.
    fn may_relay(&self, session: &Session) -> bool {
        self.user(session).is_some()
            || session
                .peer()
                .remote
                .is_some_and(|a| self.shared.policy.trusted_networks.contains(a.ip()))
    }

    /// Logs a refusal of `what` in transaction `id` and returns it as a verdict.
    fn refuse(&self, session: &Session, id: &str, what: &str, reply: Reply) -> Verdict {
        log::event(
            "rejected",
            format_args!(
                "id={id} {what} client={} role={} reply=\"{}\"",
                client_ip(session),
                self.role.name(),
                reply.to_string().trim_end()
            ),
        );
        Verdict::Reject(reply)
    }

    /// For an authenticated user under `header_from = "reject"`: the refusal when the header
    /// From is not one the user may send as ([`header_from::check`]).
    fn check_header_from(&self, session: &Session, t: &Transaction) -> Option<Verdict> {
        let user = self.user(session)?;
        if self.shared.policy.header_from != HeaderFromCheck::Reject {
            return None;
        }
        let problem = header_from::check(t.header.header(), |a| {
            self.shared.policy.grants.owns(user, a)
        })
        .err()?;
        let what = format!("from={} header_from=\"{problem}\"", t.from);
        // RFC 3463 5.7.1: delivery not authorized, message refused.
        Some(self.refuse(
            session,
            t.id.as_str(),
            &what,
            reply(550, (5, 7, 1), &format!("Message refused: {problem}")),
        ))
    }

    /// Delivers the finished transaction; the verdict for its end of data.
    async fn deliver(&self, session: &Session, mut t: Transaction) -> Verdict {
        let stored = t.spool.as_mut().map_or(Err("no body".to_string()), |s| {
            s.finish().map(|p| p.to_path_buf())
        });
        let body = match stored {
            Ok(path) => path,
            Err(why) => {
                log::event("failed", format_args!("id={} reason=\"{why}\"", t.id));
                discard(t.spool).await;
                return Verdict::Reject(reply(
                    451,
                    (4, 3, 0),
                    "Local error in processing, try again later",
                ));
            }
        };
        let size = t.spool.as_ref().map_or(0, Spool::size);
        let trace = Trace {
            helo: session.helo().unwrap_or("unknown").to_string(),
            client: client_literal(session),
            by: self.shared.hostname.clone(),
            esmtp: session.is_esmtp(),
            tls: session.tls().cloned(),
            authenticated: session.authenticated().is_some(),
            id: t.id.to_string(),
        };
        log::event(
            "received",
            format_args!(
                "id={} from={} size={size} rcpts={} client={} role={} helo={:?}{}",
                t.id,
                t.from,
                t.recipients.len(),
                client_ip(session),
                self.role.name(),
                trace.helo,
                session
                    .tls()
                    .map(|tls| format!(" tls={} cipher={}", tls.version, tls.cipher))
                    .unwrap_or_default()
            ),
        );

        let mail_dir = self.shared.mail_dir.clone();
        let host = self.shared.hostname.clone();
        let from = t.from.clone();
        let recipients = t.recipients.clone();
        let results = smol::unblock(move || {
            let now = SystemTime::now();
            recipients
                .into_iter()
                .map(|mailbox| {
                    let header = trace.header(&from, &mailbox.to_string(), now);
                    let result = delivery::deliver(
                        &mailbox.maildir(&mail_dir),
                        &host,
                        header.as_bytes(),
                        &body,
                    );
                    (mailbox, result)
                })
                .collect::<Vec<_>>()
        })
        .await;
        discard(t.spool).await;

        let mut failed = false;
        for (mailbox, result) in results {
            match result {
                Ok(path) => log::event(
                    "delivered",
                    format_args!("id={} to=<{mailbox}> path={}", t.id, path.display()),
                ),
                Err(e) => {
                    failed = true;
                    log::event(
                        "failed",
                        format_args!("id={} to=<{mailbox}> reason=\"{e}\"", t.id),
                    );
                }
            }
        }
        if failed {
            // Copies already delivered stay; the client's retry may duplicate them, never lose.
            return Verdict::Reject(reply(
                451,
                (4, 3, 0),
                "Local delivery failed, try again later",
            ));
        }
        Verdict::AcceptWithText(format!("Ok: delivered as {}", t.id))
    }
}

impl Handler for Reception {
    async fn mail(
        &mut self,
        session: &Session,
        from: &ReversePath,
        _params: &MailParams,
    ) -> Verdict {
        if let Some(user) = self.user(session)
            && !self.shared.policy.grants.may_send_as(user, from)
        {
            // RFC 3463 5.7.1 "Delivery not authorized, message refused": not their address.
            return self.refuse(
                session,
                "-",
                &format!("from={from}"),
                reply(
                    553,
                    (5, 7, 1),
                    "Sender address not owned by the authenticated user",
                ),
            );
        }
        self.transaction = Some(Transaction {
            id: QueueId::new(),
            from: from.clone(),
            recipients: Vec::new(),
            spool: None,
            received: ReceivedCounter::default(),
            header: HeaderCollector::default(),
        });
        Verdict::Accept
    }

    async fn rcpt(&mut self, session: &Session, to: &ForwardPath, _params: &RcptParams) -> Verdict {
        let (id, from) = match &self.transaction {
            Some(t) => (t.id.to_string(), t.from.to_string()),
            None => ("-".to_string(), String::new()),
        };
        let what = format!("from={from} to={to}");
        let shared = self.shared.clone();
        let path = to.clone();
        let relay_ok = self.may_relay(session);
        let (target, lookup) = smol::unblock(move || {
            let target = relay::route(&path, |d| shared.recipients.is_local_domain(d));
            (target, shared.recipients.lookup(&path))
        })
        .await;
        if target == Target::RoutedLocalPart {
            return self.refuse(
                session,
                &id,
                &what,
                reply(
                    550,
                    (5, 7, 1),
                    "Routing in the local part is not accepted here",
                ),
            );
        }
        match lookup {
            Ok(Lookup::Local(mailbox)) => {
                if let Some(t) = &mut self.transaction
                    && !t.recipients.contains(&mailbox)
                {
                    t.recipients.push(mailbox);
                }
                Verdict::Accept
            }
            // RFC 5321 3.4.2 / RFC 3463: 5.1.1 "Bad destination mailbox address".
            Ok(Lookup::UnknownUser) => self.refuse(
                session,
                &id,
                &what,
                reply(550, (5, 1, 1), "No such user here"),
            ),
            // Allowed to relay, but there is no outbound delivery yet (see the module doc).
            Ok(Lookup::NotLocal) if relay_ok => self.refuse(
                session,
                &id,
                &what,
                reply(
                    451,
                    (4, 3, 0),
                    "Outbound delivery is not available yet on this server; local recipients only",
                ),
            ),
            // RFC 3463: 5.7.1 "Delivery not authorized"; relaying needs an authenticated user.
            Ok(Lookup::NotLocal) => self.refuse(
                session,
                &id,
                &what,
                reply(550, (5, 7, 1), "Relaying denied"),
            ),
            Err(e) => {
                log::event(
                    "failed",
                    format_args!("{what} reason=\"recipient lookup: {e}\""),
                );
                self.refuse(
                    session,
                    &id,
                    &what,
                    reply(451, (4, 3, 0), "Temporary local problem, try again later"),
                )
            }
        }
    }

    async fn auth(&mut self, session: &Session, credentials: Credentials) -> Verdict {
        let ip = session.peer().remote.map(|a| a.ip().to_canonical());
        let plaintext_ok =
            self.shared.allow_plaintext_on_loopback && ip.is_some_and(|ip| ip.is_loopback());
        if session.tls().is_none() && !plaintext_ok {
            // The session's policy already withholds AUTH here; this is a second lock.
            // RFC 4954 section 6: 538 5.7.11 "Encryption required for requested authentication
            // mechanism".
            return Verdict::Reject(reply(538, (5, 7, 11), "Encryption required for AUTH"));
        }
        match self
            .shared
            .auth
            .login(ip, credentials, self.role.name())
            .await
        {
            Ok(user) => {
                self.user = Some(user);
                Verdict::Accept
            }
            Err(reply) => Verdict::Reject(reply),
        }
    }

    async fn message_start(&mut self, _session: &Session) {
        if let Some(t) = &mut self.transaction {
            t.spool = Some(Spool::create(&self.shared.spool_dir, &t.id).await);
        }
    }

    async fn message_data(&mut self, _session: &Session, chunk: Vec<u8>) {
        if let Some(t) = &mut self.transaction
            && let Some(spool) = &mut t.spool
        {
            t.received.feed(&chunk);
            t.header.feed(&chunk);
            spool.write(chunk).await;
        }
    }

    async fn message_end(&mut self, session: &Session) -> Verdict {
        let Some(t) = self.transaction.take() else {
            return Verdict::Reject(reply(451, (4, 3, 0), "Local error: no transaction"));
        };
        if t.received.count() > MAX_RECEIVED {
            let what = format!(
                "from={} size={}",
                t.from,
                t.spool.as_ref().map_or(0, Spool::size)
            );
            let verdict = self.refuse(
                session,
                t.id.as_str(),
                &what,
                reply(
                    554,
                    (5, 4, 6),
                    "Too many Received: header fields, mail loop suspected",
                ),
            );
            discard(t.spool).await;
            return verdict;
        }
        if let Some(verdict) = self.check_header_from(session, &t) {
            discard(t.spool).await;
            return verdict;
        }
        self.deliver(session, t).await
    }

    async fn aborted(&mut self, _session: &Session) {
        if let Some(t) = self.transaction.take() {
            discard(t.spool).await;
        }
    }
}

/// Removes a spool file, if there is one.
async fn discard(spool: Option<Spool>) {
    if let Some(s) = spool {
        s.discard().await;
    }
}

/// A reply from literal numbers (constants in this file, so never invalid).
fn reply(code: u16, enhanced: (u8, u16, u16), text: &str) -> Reply {
    Reply::of(code, enhanced, text)
}

/// The client's IP for logs.
fn client_ip(session: &Session) -> String {
    session.peer().remote.map_or_else(
        || "unknown".to_string(),
        |a| a.ip().to_canonical().to_string(),
    )
}

/// The client's address as an RFC 5321 address literal, for `Received:`.
fn client_literal(session: &Session) -> String {
    match session.peer().remote.map(|a| a.ip().to_canonical()) {
        Some(IpAddr::V4(ip)) => format!("[{ip}]"),
        Some(IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
        None => "unknown".to_string(),
    }
}

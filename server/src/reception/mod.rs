//! Receiving mail: the [`Handler`] that answers a session's questions.
//!
//! One [`Reception`] per connection. MAIL opens a transaction with a fresh queue id; RCPT
//! looks the recipient up ([`Recipients`]): a local mailbox is accepted, an unknown user in a
//! local domain gets 550 5.1.1, any other domain 550 5.7.1 unless the client may relay. The
//! body is streamed into the queue store ([`crate::queue::store`]) in chunks of at most
//! [`CHUNK_SIZE`] bytes as it arrives, unsynced; at the end of data the envelope is written
//! after the last chunk, the committer ([`crate::queue::commit`]) makes both durable with one group
//! fsync, and only then is the message answered 250 and handed to the delivery workers
//! ([`crate::deliver::local`]). A transaction that is abandoned (RSET, a dropped connection, a refused
//! message) has its chunks removed; chunks a crash leaves behind are swept at startup.
//!
//! AUTH is checked by [`Authenticator`] (user database, brute-force limits). The relay policy
//! is [`crate::directory::relay`]'s: without AUTH (or a trusted network) only local recipients; with it,
//! MAIL FROM, and the header From at the end of data, must be the user's own; recipients
//! elsewhere are then queued for outbound delivery ([`crate::deliver::smtp`]). Recipients of our
//! domains go through the aliases ([`crate::directory::destinations`]): users, pipes, and forwarding
//! with an SRS sender.
//!
//! Mail authentication ([`crate::mailauth`]): an authenticated user's message is DKIM-signed
//! as it streams in; on the smtp listeners, other servers' mail gets SPF at MAIL and DKIM,
//! ARC and DMARC at the end of data, and the results are added on top of the stored message
//! (`Envelope::headers`). `Authentication-Results` fields claiming our hostname are dropped
//! from every message before it is stored.
//!
//! A message to one of `[reports] addresses` is also copied as it arrives (at most
//! [`reports::MAX_REPORT_MESSAGE`] bytes) and handed to [`reports::receive`] after its 250;
//! with `deliver = false`, a message only for such addresses is kept as a report before the
//! reply and never queued.

pub mod trace;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use proto_core::{
    ForwardPath, MailParams, RcptParams, Reply, ReplyCode, ReversePath, server::Credentials,
    server::Session, server::Verdict,
};
use runtime_smol::Handler;

use crate::config::Role;
use crate::directory::aliases::Aliases;
use crate::directory::destinations::{self, Resolution};
use crate::directory::header_from::{self, HeaderCollector};
use crate::directory::logins::Authenticator;
use crate::directory::recipients::Recipients;
use crate::directory::relay::{HeaderFromCheck, Policy};
use crate::directory::users::Address;
use crate::log::{self, Event, Fields};
use crate::mailauth::forged::ForgedFilter;
use crate::mailauth::reports;
use crate::mailauth::sign::Signing;
use crate::mailauth::verify::Verifier;
use crate::mailauth::{Disposition, Inbound, SpfResults, spf_word};
use crate::queue::QueueId;
use crate::queue::commit::{CommitError, Committer};
use crate::queue::dispatch::Dispatch;
use crate::queue::space::Reserve;
use crate::queue::store::{
    self, CHUNK_SIZE, Envelope, Recipient, RecipientState, Store, StoreError, TraceRecord,
};
use crate::reception::trace::{MAX_RECEIVED, ReceivedCounter};

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// Recipient lookups.
    pub recipients: Recipients,
    /// The alias tables of the local domains.
    pub aliases: Arc<Aliases>,
    /// SRS for forwarded mail and its bounces.
    pub srs: Arc<proto_core::mail::Srs>,
    /// Checks logins.
    pub auth: Arc<Authenticator>,
    /// Who may relay and send as whom.
    pub policy: Policy,
    /// `[auth] allow_plaintext_on_loopback`.
    pub allow_plaintext_on_loopback: bool,
    /// The queue store.
    pub store: Store,
    /// The free-space reserve of the data directory: below it, new mail is refused.
    pub reserve: Reserve,
    /// Group commit.
    pub committer: Committer,
    /// Where queued messages go for delivery.
    pub dispatch: Dispatch,
    /// DKIM signing and the SPF, DKIM, ARC and DMARC checks ([`crate::mailauth`]).
    pub inbound: Arc<Inbound>,
    /// `[reports] addresses` (lower case): a message to one of them is also read as a DMARC
    /// or TLS report ([`crate::mailauth::reports`]).
    pub report_addresses: Vec<String>,
    /// `[reports] deliver`: false keeps reports without delivering them.
    pub report_deliver: bool,
    /// The data directory, where reports are kept.
    pub data_dir: std::path::PathBuf,
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
    /// Names the session in the log (`session=`): its logins, messages and refusals. Made
    /// like a queue id, so it does not repeat across restarts.
    session_id: QueueId,
    /// The client's forward-confirmed reverse name, once looked up (checked sessions only:
    /// the first MAIL asks, alongside SPF).
    client_name: Option<Option<String>>,
}

/// The open transaction.
#[derive(Debug)]
struct Transaction {
    id: QueueId,
    from: ReversePath,
    params: MailParams,
    /// Each recipient: where it goes, its own reverse path (SRS) if any, its parameters.
    recipients: Vec<(store::Address, Option<ReversePath>, RcptParams)>,
    received: ReceivedCounter,
    /// The header section, for the header From check of authenticated users.
    header: HeaderCollector,
    /// Body bytes not yet written: less than [`CHUNK_SIZE`].
    buffer: Vec<u8>,
    /// Chunks written to the store so far.
    chunks: u32,
    /// Body bytes received so far.
    size: u64,
    /// Why the body could not be stored, once it could not, and whether the disk was full.
    failure: Option<(String, bool)>,
    /// The DKIM signing of an authenticated user's message.
    signing: Option<Signing>,
    /// The checks of a message from another server.
    checks: Option<Checks>,
    /// Drops `Authentication-Results` fields claiming our hostname from what is stored.
    forged: ForgedFilter,
    /// Header fields to add on top of the message (`Envelope::headers`).
    headers: String,
    /// The check results, for the log.
    auth_summary: Option<String>,
    /// The store's generation when the transaction began: if the store is opened again
    /// before the commit, the chunks written so far may be lost, and the message is refused.
    generation: u64,
    /// The client's verified reverse name, for the `Received:` field.
    client_name: Option<String>,
    /// The message as received, when a recipient is a report address (at most
    /// [`reports::MAX_REPORT_MESSAGE`] bytes; `None` past that).
    report: Option<Vec<u8>>,
    /// A report address was accepted without being delivered to (`[reports] deliver =
    /// false`).
    report_only: bool,
}

/// The checks of one transaction: SPF from MAIL, what the message needs for the rest.
#[derive(Debug)]
struct Checks {
    spf: SpfResults,
    verifier: Verifier,
}

impl Reception {
    /// A handler for a connection on a listener with `role`.
    pub fn new(shared: Arc<Shared>, role: Role) -> Reception {
        Reception {
            shared,
            role,
            transaction: None,
            user: None,
            session_id: QueueId::new(),
            client_name: None,
        }
    }

    /// The session's id in the log.
    pub fn session_id(&self) -> &QueueId {
        &self.session_id
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

    /// Whether mail in this session is checked ([`crate::mailauth`]): on the smtp listeners,
    /// without AUTH, from outside the trusted networks, when `[checks] enabled`.
    fn checked_ip(&self, session: &Session) -> Option<IpAddr> {
        let ip = session.peer().remote?.ip().to_canonical();
        let checked = self.role == Role::Smtp
            && self.shared.inbound.settings.enabled
            && !self.may_relay(session);
        checked.then_some(ip)
    }

    /// Signs and checks the finished message: the fields to add, or the refusal.
    async fn check_and_sign(&self, session: &Session, t: &mut Transaction) -> Result<(), Verdict> {
        // The end of a header section without an empty line, unless it is a forgery.
        let forged = std::mem::replace(&mut t.forged, ForgedFilter::new(""));
        let mut rest = Vec::new();
        let removed = forged.finish(&mut rest);
        if let Some(signing) = &mut t.signing {
            signing.update(&rest);
        }
        t.size += rest.len() as u64;
        t.buffer.extend_from_slice(&rest);
        if removed > 0 {
            // In the `received` log line, with the check results if any.
            t.auth_summary = Some(format!("forged_results_removed={removed}"));
        }
        // As an MSA (RFC 6409 8.2, 8.3): the Date and Message-ID a user's message lacks, added
        // before signing, so that the signature covers them and no later hop adds its own.
        if self.user(session).is_some() {
            let added = msa_fields(
                t.header.header(),
                &t.id,
                &self.shared.inbound.hostname,
                SystemTime::now(),
            );
            if !added.is_empty() {
                if let Some(signing) = &mut t.signing {
                    signing.prepend(&added);
                }
                t.headers.push_str(&added);
            }
        }
        if let Some(signing) = t.signing.take() {
            let keys = self.shared.inbound.keys.clone();
            match signing
                .finish(keys, t.header.header(), SystemTime::now())
                .await
            {
                Ok(fields) => t.headers.extend(fields),
                Err(e) => {
                    log::line(Event::Failed)
                        .field("id", &t.id)
                        .text("reason", format_args!("dkim signing: {e}"))
                        .write();
                    return Err(Verdict::Reject(Reply::of(
                        ReplyCode::LOCAL_ERROR,
                        (4, 3, 0),
                        "Local error in processing (DKIM signing), try again later",
                    )));
                }
            }
        }
        if let Some(checks) = t.checks.take() {
            let seal = self.forwarding_keys(t).await;
            let report = self
                .shared
                .inbound
                .check_message(checks.verifier, &checks.spf, seal.as_deref())
                .await;
            let mut summary = report.summary;
            if let Some(forged) = t.auth_summary.take() {
                summary.push(' ');
                summary.push_str(&forged);
            }
            if let Disposition::Refuse(r) = report.decision {
                let what = Fields::new().field("from", &t.from).text("auth", &summary);
                return Err(self.refuse(session, t.id.as_str(), what, r));
            }
            t.headers.push_str(&report.headers);
            t.auth_summary = Some(summary);
        }
        Ok(())
    }

    /// The DKIM keys of the domain that forwards this message (the domain of the SRS sender
    /// of its first forwarded recipient), to ARC-seal it with; `None` when nothing is
    /// forwarded or the domain has no usable key.
    async fn forwarding_keys(
        &self,
        t: &Transaction,
    ) -> Option<std::sync::Arc<crate::mailauth::dkim::DkimKeys>> {
        let domain = t
            .recipients
            .iter()
            .find_map(|(_, sender, _)| match sender {
                Some(ReversePath::Mailbox(m)) => Some(m.domain().as_str().into_owned()),
                _ => None,
            })?;
        let keys = self.shared.inbound.keys.clone();
        let id = t.id.clone();
        smol::unblock(move || match keys.get(&domain) {
            Ok(keys) if !keys.is_empty() => Some(keys),
            Ok(_) => None,
            Err(e) => {
                log::line(Event::Arc)
                    .field("id", &id)
                    .text("problem", format_args!("no sealing key: {e}"))
                    .write();
                None
            }
        })
        .await
    }

    /// Logs a refusal of `what` in transaction `id` and returns it as a verdict.
    fn refuse(&self, session: &Session, id: &str, what: Fields, reply: Reply) -> Verdict {
        log::line(Event::Rejected)
            .field("id", id)
            .field("session", &self.session_id)
            .and(&what)
            .field("client", client_ip(session))
            .field("role", self.role.name())
            .text("reply", reply.to_string().trim_end())
            .write();
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
        let what = Fields::new()
            .field("from", &t.from)
            .text("header_from", &problem);
        // RFC 3463 5.7.1: delivery not authorized, message refused.
        Some(self.refuse(
            session,
            t.id.as_str(),
            what,
            Reply::of(
                ReplyCode::MAILBOX_UNAVAILABLE,
                (5, 7, 1),
                format!("Message refused: {problem}"),
            ),
        ))
    }

    /// Makes the finished transaction durable; the verdict for its end of data.
    async fn queue(&self, session: &Session, mut t: Transaction) -> Verdict {
        if let Some((why, disk_full)) = t.failure.take() {
            log::line(Event::Failed)
                .field("id", &t.id)
                .text("reason", &why)
                .write();
            discard(&self.shared.store, &t.id, t.chunks, false).await;
            return Verdict::Reject(self.store_failure_reply(disk_full));
        }
        // The last piece of the body is written by the committer with the envelope (one trip
        // to its thread for both).
        let last = (!t.buffer.is_empty()).then(|| (t.chunks, std::mem::take(&mut t.buffer)));
        t.chunks += u32::from(last.is_some());
        let envelope = envelope(session, &t);
        let tls = session.tls();
        let mut line = log::line(Event::Received)
            .field("id", &t.id)
            .field("session", &self.session_id)
            .field_opt("user", self.user(session))
            .field("from", &t.from)
            .field("size", t.size)
            .field("rcpts", t.recipients.len())
            .field("client", client_ip(session))
            .field_opt("client_name", t.client_name.as_ref())
            .field("role", self.role.name())
            .text("helo", &envelope.trace.helo)
            .field_opt("tls", tls.map(|tls| &tls.version))
            .field_opt("cipher", tls.map(|tls| &tls.cipher));
        if let Some(a) = &t.auth_summary {
            line = line.text("auth", a);
        }
        line.write();
        // From here on the work runs as its own task: if this session's future is dropped
        // (the connection goes away), a message that becomes durable still reaches the
        // workers instead of waiting in the store for the next start.
        let (done, outcome) = async_channel::bounded(1);
        let shared = self.shared.clone();
        let id = t.id.clone();
        let (size, chunks) = (t.size, t.chunks);
        let queued = envelope.clone();
        let generation = t.generation;
        smol::spawn(async move {
            let result = commit(&shared, &id, last, envelope, generation).await;
            match &result {
                Ok(()) => {
                    log::line(Event::Queued)
                        .field("id", &id)
                        .field("size", size)
                        .field("chunks", chunks)
                        .write();
                    shared.dispatch.queued(&id, &queued);
                }
                Err(why) => {
                    log::line(Event::Failed)
                        .field("id", &id)
                        .text("reason", why)
                        .write();
                    discard(&shared.store, &id, chunks, true).await;
                }
            }
            let _ = done.try_send(result);
        })
        .detach();
        match outcome.recv().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Verdict::Reject(self.store_failure_reply(e.is_disk_full())),
            Err(_) => return Verdict::Reject(self.store_failure_reply(false)),
        }
        Verdict::AcceptWithText(format!("Ok: queued as {}", t.id))
    }
}

impl Reception {
    /// Adds a recipient to the open transaction, once. A recipient that an alias expanded
    /// `to` into keeps `to` as its original recipient (ORCPT, for DSNs) unless the client
    /// gave one.
    fn add_recipient(
        &mut self,
        address: store::Address,
        sender: Option<ReversePath>,
        to: &ForwardPath,
        params: &RcptParams,
    ) {
        let Some(t) = &mut self.transaction else {
            return;
        };
        if t.recipients.iter().any(|(a, _, _)| *a == address) {
            return;
        }
        let mut params = params.clone();
        if params.orcpt.is_none()
            && let ForwardPath::Mailbox(m) = to
            && address != store::Address::Remote(m.clone())
            && m.is_ascii()
        {
            params.orcpt = Some(proto_core::OriginalRecipient {
                addr_type: "rfc822".into(),
                address: m.to_string(),
            });
        }
        t.recipients.push((address, sender, params));
    }
}

impl Handler for Reception {
    async fn mail(
        &mut self,
        session: &Session,
        from: &ReversePath,
        params: &MailParams,
    ) -> Verdict {
        if let Some(user) = self.user(session)
            && !self.shared.policy.grants.may_send_as(user, from)
        {
            // RFC 3463 5.7.1 "Delivery not authorized, message refused": not their address.
            let text = match from {
                ReversePath::Null => {
                    "Null sender not allowed for this user ([senders] grants \"<>\")"
                }
                _ => "Sender address not owned by the authenticated user",
            };
            return self.refuse(
                session,
                "-",
                Fields::new().field("from", from),
                Reply::of(ReplyCode::MAILBOX_NAME_NOT_ALLOWED, (5, 7, 1), text),
            );
        }
        if let Some(old) = self.transaction.take() {
            discard(&self.shared.store, &old.id, old.chunks, false).await;
        }
        if let Err(short) = self.shared.reserve.check(params.size.unwrap_or(0)) {
            return self.refuse(
                session,
                "-",
                Fields::new().field("from", from).text("reason", short),
                full_reply(),
            );
        }
        let id = QueueId::new();
        let mut checks = None;
        if let Some(ip) = self.checked_ip(session) {
            let helo = session.helo().unwrap_or_default();
            let sender = match from {
                ReversePath::Mailbox(m) => m.to_string(),
                _ => String::new(),
            };
            let known = self.client_name.clone();
            let name = async {
                match known {
                    Some(name) => name,
                    None => {
                        let lookup = self.shared.inbound.resolver.verified_name(ip);
                        let limit = async {
                            async_io::Timer::after(REVERSE_NAME_TIMEOUT).await;
                            None
                        };
                        futures_lite::future::or(lookup, limit).await
                    }
                }
            };
            let ((spf, decision), name) =
                futures_lite::future::zip(self.shared.inbound.spf(ip, helo, &sender), name).await;
            self.client_name = Some(name);
            if let Disposition::Refuse(r) = decision {
                let what = Fields::new()
                    .field("from", from)
                    .field("spf", spf_word(spf.mail_from.result()))
                    .field("helo_spf", spf_word(spf.helo_result.result()));
                return self.refuse(session, id.as_str(), what, r);
            }
            checks = Some(Checks {
                spf,
                verifier: Verifier::default(),
            });
        }
        let signing = self.user(session).map(|_| Signing::default());
        let client_name = self.client_name.clone().flatten();
        self.transaction = Some(Transaction {
            id,
            from: from.clone(),
            params: params.clone(),
            recipients: Vec::new(),
            received: ReceivedCounter::default(),
            header: HeaderCollector::default(),
            buffer: Vec::new(),
            chunks: 0,
            size: 0,
            failure: None,
            signing,
            checks,
            forged: ForgedFilter::new(&self.shared.inbound.hostname),
            headers: String::new(),
            auth_summary: None,
            generation: self.shared.store.generation(),
            client_name,
            report: None,
            report_only: false,
        });
        Verdict::Accept
    }

    async fn rcpt(&mut self, session: &Session, to: &ForwardPath, params: &RcptParams) -> Verdict {
        let (id, from, sender) = match &self.transaction {
            Some(t) => (t.id.to_string(), t.from.to_string(), t.from.clone()),
            None => ("-".to_string(), String::new(), ReversePath::Null),
        };
        let what = Fields::new().field("from", &from).field("to", to);
        let relay_ok = self.may_relay(session);
        // Nothing to compare (nor to allocate) unless report addresses are configured.
        let report = !self.shared.report_addresses.is_empty()
            && matches!(to, ForwardPath::Mailbox(m)
                if self.shared.report_addresses.contains(&m.to_string().to_ascii_lowercase()));
        // Kept, not delivered: the address needs no user or alias of its own.
        if report
            && !self.shared.report_deliver
            && let Some(t) = &mut self.transaction
        {
            if t.report.is_none() && !t.report_only {
                t.report = Some(Vec::new());
            }
            t.report_only = true;
            return Verdict::Accept;
        }
        // On the session's own thread, not the blocking pool: the decision reads tables kept
        // in memory and checks their files' stamps (a stat each), re-reading a small file only
        // after it changed. The hop to a pool thread and back cost more than that (two
        // context switches per recipient; bench/RESULTS.md).
        let resolution = {
            let destinations = destinations::Destinations {
                recipients: &self.shared.recipients,
                aliases: &self.shared.aliases,
                srs: &self.shared.srs,
            };
            destinations.decide(to, &sender, SystemTime::now())
        };
        match resolution {
            Resolution::Accept(queued) => {
                if report
                    && let Some(t) = &mut self.transaction
                    && t.report.is_none()
                {
                    t.report = Some(Vec::new());
                }
                for q in queued {
                    self.add_recipient(q.address, q.sender, to, params);
                }
                Verdict::Accept
            }
            Resolution::Refuse(reply) => self.refuse(session, &id, what, reply),
            // An authenticated user (or a trusted network) sending elsewhere: outbound.
            Resolution::NotLocal if relay_ok => match to {
                ForwardPath::Mailbox(m) => {
                    self.add_recipient(store::Address::Remote(m.clone()), None, to, params);
                    Verdict::Accept
                }
                _ => self.refuse(
                    session,
                    &id,
                    what,
                    Reply::of(
                        ReplyCode::MAILBOX_UNAVAILABLE,
                        (5, 1, 1),
                        "No such user here",
                    ),
                ),
            },
            // RFC 3463: 5.7.1 "Delivery not authorized"; relaying needs an authenticated user.
            Resolution::NotLocal => self.refuse(
                session,
                &id,
                what,
                Reply::of(ReplyCode::MAILBOX_UNAVAILABLE, (5, 7, 1), "Relaying denied"),
            ),
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
            return Verdict::Reject(Reply::of(
                ReplyCode::ENCRYPTION_REQUIRED,
                (5, 7, 11),
                "Encryption required for AUTH",
            ));
        }
        match self
            .shared
            .auth
            .login(
                ip,
                credentials,
                &Fields::new()
                    .field("session", &self.session_id)
                    .field("client", client_ip(session))
                    .field("role", self.role.name()),
            )
            .await
        {
            Ok(user) => {
                self.user = Some(user);
                Verdict::Accept
            }
            Err(reply) => Verdict::Reject(reply),
        }
    }

    async fn message_start(&mut self, _session: &Session) {}

    async fn message_data(&mut self, _session: &Session, chunk: Vec<u8>) {
        let Some(t) = &mut self.transaction else {
            return;
        };
        t.received.feed(&chunk);
        t.header.feed(&chunk);
        if let Some(copy) = &mut t.report {
            if copy.len() + chunk.len() <= reports::MAX_REPORT_MESSAGE {
                copy.extend_from_slice(&chunk);
            } else {
                t.report = None;
            }
        }
        // The checks see the message as received; what is stored (and signed) is the
        // message less the Authentication-Results fields that claim our hostname.
        if let Some(checks) = &mut t.checks {
            checks.verifier.update(&chunk);
        }
        let mut kept = Vec::with_capacity(chunk.len());
        t.forged.feed(&chunk, &mut kept);
        let chunk = kept;
        if let Some(signing) = &mut t.signing {
            signing.update(&chunk);
        }
        t.size += chunk.len() as u64;
        if t.failure.is_some() {
            return;
        }
        t.buffer.extend_from_slice(&chunk);
        while t.failure.is_none() && t.buffer.len() >= CHUNK_SIZE {
            let rest = t.buffer.split_off(CHUNK_SIZE);
            let full = std::mem::replace(&mut t.buffer, rest);
            write_chunk(&self.shared.store, t, full).await;
        }
    }

    async fn message_end(&mut self, session: &Session) -> Verdict {
        let Some(mut t) = self.transaction.take() else {
            return Verdict::Reject(Reply::of(
                ReplyCode::LOCAL_ERROR,
                (4, 3, 0),
                "Local error: no transaction",
            ));
        };
        if t.received.count() > MAX_RECEIVED {
            let what = Fields::new().field("from", &t.from).field("size", t.size);
            let verdict = self.refuse(
                session,
                t.id.as_str(),
                what,
                Reply::of(
                    ReplyCode::TRANSACTION_FAILED,
                    (5, 4, 6),
                    "Too many Received: header fields, mail loop suspected",
                ),
            );
            discard(&self.shared.store, &t.id, t.chunks, false).await;
            return verdict;
        }
        if let Some(verdict) = self.check_header_from(session, &t) {
            discard(&self.shared.store, &t.id, t.chunks, false).await;
            return verdict;
        }
        if let Err(verdict) = self.check_and_sign(session, &mut t).await {
            discard(&self.shared.store, &t.id, t.chunks, false).await;
            return verdict;
        }
        if t.recipients.is_empty() && t.report_only {
            return self.keep_report_only(t).await;
        }
        let report = t.report.take().map(|copy| (t.id.clone(), copy));
        let verdict = self.queue(session, t).await;
        if let Some((id, copy)) = report
            && !matches!(verdict, Verdict::Reject(_))
        {
            // Once the message is ours: reading the report never holds up the 250.
            let data_dir = self.shared.data_dir.clone();
            smol::spawn(smol::unblock(move || {
                let _ = reports::receive(&data_dir, &id, &copy);
            }))
            .detach();
        }
        verdict
    }

    async fn aborted(&mut self, _session: &Session) {
        if let Some(t) = self.transaction.take() {
            discard(&self.shared.store, &t.id, t.chunks, false).await;
        }
    }
}

impl Reception {
    /// The reply when the store could not take a message: 452 4.3.1 (RFC 3463 "mail system
    /// full") when the write found the disk full or the disk is short of space, else 451
    /// 4.3.0.
    fn store_failure_reply(&self, disk_full: bool) -> Reply {
        if disk_full || self.shared.store.disk_full() || self.shared.reserve.check(0).is_err() {
            full_reply()
        } else {
            Reply::of(
                ReplyCode::LOCAL_ERROR,
                (4, 3, 0),
                "Local error in processing, try again later",
            )
        }
    }
}

impl Reception {
    /// A message only for report addresses that are not delivered to (`[reports] deliver =
    /// false`): kept as a report before the reply, never queued. Not a report: 550 5.6.0; too
    /// big to read: 552 5.3.4; not written: 451 4.3.0 (the sender tries again).
    async fn keep_report_only(&self, t: Transaction) -> Verdict {
        discard(&self.shared.store, &t.id, t.chunks, false).await;
        let Some(copy) = t.report else {
            return Verdict::Reject(Reply::of(
                ReplyCode::EXCEEDED_STORAGE,
                (5, 3, 4),
                "Message too big for a report address",
            ));
        };
        let (data_dir, id) = (self.shared.data_dir.clone(), t.id.clone());
        match smol::unblock(move || reports::receive(&data_dir, &id, &copy)).await {
            Ok(n) => Verdict::AcceptWithText(format!("Ok: report kept ({n} records) as {}", t.id)),
            // RFC 3463 5.6.0: other or undefined media error.
            Err(reports::NotKept::NotAReport) => Verdict::Reject(Reply::of(
                ReplyCode::TRANSACTION_FAILED,
                (5, 6, 0),
                "This address takes only DMARC, TLS and failure reports",
            )),
            Err(reports::NotKept::Write) => Verdict::Reject(Reply::of(
                ReplyCode::LOCAL_ERROR,
                (4, 3, 0),
                "Local error keeping the report, try again later",
            )),
        }
    }
}

/// 452 4.3.1: no room for the message now.
/// The `Date` and `Message-ID` fields (each ending in CRLF) that the header section `header`
/// lacks: the date is `now`, the id `<queue id@hostname>`, unique to this server.
fn msa_fields(header: &[u8], id: &QueueId, hostname: &str, now: SystemTime) -> String {
    let has = |name: &str| {
        proto_core::dkim::HeaderFields::new(header)
            .any(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
    };
    let mut fields = String::new();
    if !has("Date") {
        fields.push_str(&format!("Date: {}\r\n", trace::rfc5322_date(now)));
    }
    if !has("Message-ID") {
        fields.push_str(&format!("Message-ID: <{id}@{hostname}>\r\n"));
    }
    fields
}

fn full_reply() -> Reply {
    Reply::of(
        ReplyCode::INSUFFICIENT_STORAGE,
        (4, 3, 1),
        "Insufficient system storage, try again later",
    )
}

/// Writes the `last` chunk of `id`'s body (index and bytes), if any, then its envelope, and
/// waits for the group commit to make the message durable. `generation`: the store's when
/// the first chunk was written; a store opened again since then refuses the commit.
async fn commit(
    shared: &Shared,
    id: &QueueId,
    last: Option<(u32, Vec<u8>)>,
    envelope: Envelope,
    generation: u64,
) -> Result<(), CommitError> {
    let id = id.clone();
    shared
        .committer
        .write_and_sync(move |store| {
            if store.generation() != generation {
                return Err(StoreError::Reopened);
            }
            if let Some((index, chunk)) = last {
                store.put_chunk(&id, index, &chunk)?;
            }
            store.put_envelope(&id, &envelope)
        })
        .await
}

/// Writes one chunk of `t`'s body; a failure is remembered and ends the storing.
async fn write_chunk(store: &Store, t: &mut Transaction, chunk: Vec<u8>) {
    let store = store.clone();
    let id = t.id.clone();
    let index = t.chunks;
    match smol::unblock(move || store.put_chunk(&id, index, &chunk)).await {
        Ok(()) => t.chunks += 1,
        Err(e) => t.failure = Some((e.to_string(), e.is_disk_full())),
    }
}

/// Removes what an abandoned transaction stored: its chunks, and its envelope if `envelope`.
/// A failure only leaves work for the startup sweep.
async fn discard(store: &Store, id: &QueueId, chunks: u32, envelope: bool) {
    if chunks == 0 && !envelope {
        return;
    }
    let store = store.clone();
    let id = id.clone();
    let _ = smol::unblock(move || {
        if envelope {
            store.remove(&id, chunks)
        } else {
            store.discard_chunks(&id, chunks)
        }
    })
    .await;
}

/// The envelope to store for a finished transaction.
fn envelope(session: &Session, t: &Transaction) -> Envelope {
    // On the queue's clock, which the retry schedule compares against.
    let now = crate::queue::timers::unix_now();
    Envelope {
        from: t.from.clone(),
        smtputf8: t.params.smtputf8,
        body: t.params.body,
        ret: t.params.ret,
        envid: t.params.envid.clone(),
        requiretls: t.params.requiretls,
        headers: t.headers.clone(),
        received_at: now,
        trace: TraceRecord {
            helo: session.helo().unwrap_or("unknown").to_string(),
            // "name [address]" when the name is confirmed, as Postfix writes it.
            client: match &t.client_name {
                Some(name) => format!("{name} {}", client_literal(session)),
                None => client_literal(session),
            },
            esmtp: session.is_esmtp(),
            tls: session
                .tls()
                .map(|tls| (tls.version.clone(), tls.cipher.clone())),
            authenticated: session.authenticated().is_some(),
        },
        size: t.size,
        chunks: t.chunks,
        recipients: t
            .recipients
            .iter()
            .map(|(address, sender, params)| Recipient {
                address: address.clone(),
                orcpt: params
                    .orcpt
                    .as_ref()
                    .map(|o| (o.addr_type.clone(), o.address.clone())),
                notify: params.notify,
                state: RecipientState::Pending,
                attempts: 0,
                next_attempt: 0,
                last_error: None,
                sender: sender.clone(),
                delay_warned: false,
            })
            .collect(),
    }
}

impl Drop for Reception {
    /// A connection that ends without `aborted` (an I/O error, shutdown) leaves no chunks.
    fn drop(&mut self) {
        if let Some(t) = self.transaction.take()
            && t.chunks > 0
        {
            let store = self.shared.store.clone();
            smol::unblock(move || store.discard_chunks(&t.id, t.chunks)).detach();
        }
    }
}

/// The client's IP for logs.
fn client_ip(session: &Session) -> String {
    session.peer().remote.map_or_else(
        || "unknown".to_string(),
        |a| a.ip().to_canonical().to_string(),
    )
}

/// The client's address as an RFC 5321 address literal, for `Received:`.
/// How long the reverse name of a client may take to look up and confirm.
const REVERSE_NAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn client_literal(session: &Session) -> String {
    match session.peer().remote.map(|a| a.ip().to_canonical()) {
        Some(IpAddr::V4(ip)) => format!("[{ip}]"),
        Some(IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
        None => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_missing_date_and_message_id_are_added() {
        let id = QueueId::parse("0661B74C39181402").expect("id");
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        let date = "Date: Fri, 2 Jan 1970 00:00:00 +0000\r\n";
        let mid = "Message-ID: <0661B74C39181402@mx.example.org>\r\n";
        let cases: [(&[u8], String); 4] = [
            (
                b"From: a@example.org\r\nSubject: s\r\n",
                format!("{date}{mid}"),
            ),
            (
                b"From: a@example.org\r\ndate: Thu, 1 Jan 1970 +0000\r\n",
                mid.to_string(),
            ),
            (
                b"MESSAGE-ID: <x@y>\r\nFrom: a@example.org\r\n",
                date.to_string(),
            ),
            (
                b"Date: Thu, 1 Jan 1970 +0000\r\nMessage-Id: <x@y>\r\n",
                String::new(),
            ),
        ];
        for (header, want) in cases {
            assert_eq!(
                msa_fields(header, &id, "mx.example.org", now),
                want,
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }

    use super::{QueueId, SystemTime, msa_fields};
    use crate::config::Role;
    use crate::testkit::{Client, TestServer};

    /// A server with the user alice@example.org, and a client on its port 25 that has sent
    /// EHLO and `MAIL FROM:<s@client.test>` (both accepted).
    fn alice_and_a_transaction() -> (TestServer, Client) {
        let server = TestServer::builder()
            .user("alice@example.org", "pw")
            .start();
        let (mut c, greeting) = Client::connect(server.addr(Role::Smtp));
        assert!(greeting.starts_with("220 localhost "), "{greeting}");
        assert!(c.send("EHLO client.test").starts_with("250 "));
        assert!(c.send("MAIL FROM:<s@client.test>").starts_with("250 "));
        (server, c)
    }

    /// What RCPT answers on port 25, decided once per recipient by the directory: users and
    /// postmaster accepted, unknown users, routed local parts and other domains refused,
    /// each with its enhanced code.
    #[test]
    fn rcpt_on_port_25() {
        let (_server, mut c) = alice_and_a_transaction();
        let cases = [
            ("<alice@example.org>", "250 "),
            ("<Alice@EXAMPLE.org>", "250 "),
            ("<alice+news@example.org>", "250 "),
            ("<Postmaster>", "250 "),
            ("<bob@example.org>", "550 5.1.1 "),
            ("<alice%elsewhere.test@example.org>", "550 5.7.1 Routing"),
            ("<someone@elsewhere.test>", "550 5.7.1 Relaying denied"),
        ];
        for (to, want) in cases {
            let got = c.send(&format!("RCPT TO:{to}"));
            assert!(got.starts_with(want), "RCPT TO:{to}: {got}");
        }
    }

    /// A message accepted on port 25 is in the Maildir with its trace fields.
    #[test]
    fn an_accepted_message_reaches_the_maildir() {
        let (server, mut c) = alice_and_a_transaction();
        assert!(c.send("RCPT TO:<alice@example.org>").starts_with("250 "));
        assert!(c.send("DATA").starts_with("354 "));
        let queued = c.send("Subject: hello\r\n\r\nbody line\r\n.");
        assert!(queued.starts_with("250 2.0.0 "), "{queued}");
        assert!(c.send("QUIT").starts_with("221 "));
        let inbox = server.wait_inbox("example.org", "alice", 1, 20);
        let text = &inbox[0];
        assert!(
            text.starts_with("Return-Path: <s@client.test>\r\nDelivered-To: alice@example.org\r\nReceived: from client.test"),
            "{text}"
        );
        assert!(
            text.ends_with("Subject: hello\r\n\r\nbody line\r\n"),
            "{text}"
        );
    }

    /// A NUL in DATA refuses the message (554 5.6.0): `<CRLF><NUL>.<CRLF>` is neither an end
    /// of data here nor a way to smuggle a second message past a next hop that drops NULs.
    #[test]
    fn a_nul_in_data_refuses_the_message() {
        let (server, mut c) = alice_and_a_transaction();
        c.send("RCPT TO:<alice@example.org>");
        assert!(c.send("DATA").starts_with("354 "));
        c.write_raw(b"Subject: one\r\n\r\nhello\r\n\0.\r\nMAIL FROM:<x@evil.test>\r\n");
        let refused = c.send(".");
        assert!(refused.starts_with("554 5.6.0 "), "{refused}");
        // The session is in sync: the smuggled MAIL was data, the next command is a command.
        assert!(c.send("NOOP").starts_with("250 "));
        // A clean message afterwards is delivered; the refused one never is.
        c.send("MAIL FROM:<s@client.test>");
        c.send("RCPT TO:<alice@example.org>");
        c.send("DATA");
        assert!(c.send("Subject: two\r\n\r\nclean\r\n.").starts_with("250 "));
        // The refused message was never queued, so the first to arrive is the clean one.
        let inbox = server.wait_inbox("example.org", "alice", 1, 20);
        assert_eq!(inbox.len(), 1, "{inbox:?}");
        assert!(inbox[0].contains("Subject: two"), "{}", inbox[0]);
    }

    /// Submission wants AUTH before MAIL (RFC 6409): 530 5.7.0 without it.
    #[test]
    fn submission_needs_a_login() {
        let server = TestServer::builder()
            .user("alice@example.org", "pw")
            .start();
        let (mut c, _) = Client::connect(server.addr(Role::Submission));
        c.send("EHLO client.test");
        let refused = c.send("MAIL FROM:<alice@example.org>");
        assert!(refused.starts_with("530 5.7.0 "), "{refused}");
    }
}

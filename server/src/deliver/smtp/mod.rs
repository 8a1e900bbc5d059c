//! Outbound delivery: queued recipients of other domains, sent over SMTP to their mail
//! exchangers (or a static route), with retries and bounces.
//!
//! Queue ids arrive on a channel (from sessions once a message is durable, from the startup
//! scan, from retry timers). For each message, the pending remote recipients that are due are
//! grouped by domain; each group is one delivery: find the route ([`route`]), then try its
//! hosts and their addresses in order until one answers for the recipients. A delivery holds
//! one of [`DeliverySettings::max_connections`] permits, and one of
//! [`DeliverySettings::max_connections_per_domain`] for its domain, while it runs, so a slow
//! remote only ever holds its own domain's permits.
//!
//! Each recipient's result is a [`Fate`], handed to the queue's one tail
//! ([`crate::queue::settle`]), as local delivery's are: delivered; failed for good (a 5xx, a
//! null MX, a domain that does not exist), bounced in the same batch; or deferred, with its
//! next attempt from [`proto_core::mail::next_attempt`] under `[delivery]`'s schedule (exponential
//! backoff with jitter; once the message is older than `give_up_after`, it fails and bounces).
//! Marks are made durable by the group commit before the id is scheduled again
//! ([`crate::queue::timers`]), so a crash repeats at most a delivery (a duplicate), never
//! loses one.
//!
//! TLS: STARTTLS whenever offered (see [`tls`]). What the connection must reach comes from
//! the route (`tls = "required" | "verified"`), the message (REQUIRETLS, RFC 8689: verified
//! TLS on every hop), the domain's MTA-STS policy in enforce mode (verified TLS to an MX
//! the policy lists), and the best level the domain has shown before (never downgrade).

pub mod route;
pub mod settings;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_channel::Receiver;
use async_io::{Async, Timer};
use futures_lite::AsyncReadExt;
use futures_lite::io::Cursor;
use proto_core::{
    ForwardPath, TlsInfo, client::ClientConfig, client::ClientCredentials, client::ClientError,
    client::ClientSession, client::FailureReason, client::MailJob, client::RecipientStatus,
    client::TlsPolicy, mail::DsnAction, mail::RecipientReport,
};
use runtime_smol::client::{ClientTls, deliver};
use smol::lock::Semaphore;

use crate::dns::Resolver;
use crate::log::{self, Event};
use crate::queue::QueueId;
use crate::queue::bounce::Bouncer;
use crate::queue::commit::Committer;
use crate::queue::dispatch::Dispatch;
use crate::queue::settle::{self, Fate, Recorder};
use crate::queue::store::{Address, Applied, Envelope, Owner, RecipientState, Store, ascii_domain};
use crate::queue::timers::{Timers, unix_now};
use crate::reception::trace::Trace;
use crate::tls::memory::{Level, TlsMemory};
use crate::tls::mta_sts::{self, MtaSts};

use crate::tls::client::{self as tls, ClientTlsFactory, Connector};
use route::{Hop, Route, RouteError};
use settings::{DeliverySettings, RouteTls};

/// The most connection attempts (addresses tried) for one delivery.
const MAX_CONNECTS: usize = 6;

/// What the delivery tasks share.
#[derive(Debug)]
pub struct Outbound {
    /// The queue store.
    pub store: Store,
    /// Group commit for the marks.
    pub committer: Committer,
    /// DNS.
    pub resolver: Arc<Resolver>,
    /// `[delivery]` and `[routes]`; replaced by a reload ([`Outbound::reload`]).
    settings: RwLock<Arc<DeliverySettings>>,
    /// Our host name (EHLO, `Received:`).
    pub hostname: crate::config::HostName,
    /// TLS client configurations; replaced by a reload.
    tls: RwLock<ClientTlsFactory>,
    /// Bounces.
    pub bouncer: Bouncer,
    /// The best TLS each domain has shown (never downgrade).
    pub tls_memory: TlsMemory,
    /// MTA-STS policies (`None` when `[delivery] mta_sts = false`).
    pub mta_sts: Option<MtaSts>,
    /// The workers' channels (retry timers, bounces).
    pub dispatch: Dispatch,
    /// Connection permits, overall.
    connections: Semaphore,
    /// Connection permits per destination domain.
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Retry timers, sending on the outbound workers' channel.
    timers: Timers,
    /// Passes whose outcome could not be recorded yet: while any wait, nothing is delivered.
    backlog: settle::Backlog,
}

impl Outbound {
    /// The shared state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        committer: Committer,
        resolver: Arc<Resolver>,
        settings: DeliverySettings,
        hostname: crate::config::HostName,
        tls: ClientTlsFactory,
        bouncer: Bouncer,
        dispatch: Dispatch,
        tls_memory: TlsMemory,
        mta_sts: Option<MtaSts>,
    ) -> Outbound {
        let connections = Semaphore::new(settings.max_connections);
        let dispatch_remote = dispatch.remote.clone();
        Outbound {
            store,
            committer,
            resolver,
            settings: RwLock::new(Arc::new(settings)),
            hostname,
            tls: RwLock::new(tls),
            bouncer,
            dispatch,
            tls_memory,
            mta_sts,
            connections,
            per_domain: Mutex::new(HashMap::new()),
            timers: Timers::new(dispatch_remote),
            backlog: settle::Backlog::default(),
        }
    }
}

impl Outbound {
    /// The recorder of this worker's passes.
    fn recorder(&self) -> Recorder<'_> {
        Recorder {
            store: &self.store,
            committer: &self.committer,
            bouncer: &self.bouncer,
            dispatch: &self.dispatch,
            backlog: &self.backlog,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<DeliverySettings> {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The TLS client configurations in force.
    fn tls(&self) -> ClientTlsFactory {
        self.tls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// New settings and trusted roots (SIGHUP), for deliveries that start from now on. The
    /// connection limits keep their startup values (they size the permits).
    pub fn reload(&self, settings: DeliverySettings, tls: ClientTlsFactory) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(settings);
        *self
            .tls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tls;
    }
}

/// Starts the scheduler on the executor: every id from `ids` is looked at.
pub fn start(outbound: Arc<Outbound>, ids: Receiver<QueueId>) {
    smol::spawn(async move {
        while let Ok(id) = ids.recv().await {
            // Held by another task (or being removed): handed out again when it is free.
            if !outbound.dispatch.flights.begin(&id, Owner::Remote) {
                continue;
            }
            let o = outbound.clone();
            smol::spawn(async move {
                loop {
                    process(&o, &id).await;
                    let flights = &o.dispatch.flights;
                    if !flights.end(&id, Owner::Remote) || !flights.begin(&id, Owner::Remote) {
                        break;
                    }
                }
            })
            .detach();
        }
    })
    .detach();
}

/// Locks a mutex, ignoring poisoning (the data are plain maps, valid after any panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One look at a message: deliver its due remote recipients, record, schedule the rest.
async fn process(o: &Arc<Outbound>, id: &QueueId) {
    // Earlier outcomes not recorded yet: record them first, or deliver nothing (a copy
    // delivered now could not be recorded either).
    if o.backlog.is_waiting() {
        let o2 = o.clone();
        if smol::unblock(move || o2.recorder().flush(Owner::Remote))
            .await
            .is_err()
        {
            o.timers.at(id, unix_now() + settle::BACKLOG_RETRY);
            return;
        }
    }
    let store = o.store.clone();
    let lookup_id = id.clone();
    let envelope = match smol::unblock(move || store.envelope(&lookup_id)).await {
        Ok(Some(e)) => e,
        Ok(None) => return,
        Err(e) => {
            o.timers.at(id, settle::unreadable(id, &e, unix_now()));
            return;
        }
    };
    if !envelope.pending_for(Owner::Remote) {
        return;
    }
    let now = unix_now();
    // Due recipients, grouped by domain and reverse path (a forwarded copy has its own).
    let mut groups: BTreeMap<(String, Option<String>), Vec<usize>> = BTreeMap::new();
    for (i, r) in envelope.recipients.iter().enumerate() {
        if r.state != RecipientState::Pending || r.next_attempt > now {
            continue;
        }
        if let Address::Remote(address) = &r.address {
            groups
                .entry((
                    ascii_domain(address),
                    r.sender.as_ref().map(ToString::to_string),
                ))
                .or_default()
                .push(i);
        }
    }
    if groups.is_empty() {
        if let Some(at) = envelope.next_attempt(Owner::Remote) {
            o.timers.at(id, at);
        }
        return;
    }
    let envelope = Arc::new(envelope);
    let tasks: Vec<_> = groups
        .into_iter()
        .map(|((domain, _), indexes)| {
            let o = o.clone();
            let id = id.clone();
            let envelope = envelope.clone();
            smol::spawn(async move {
                let results = deliver_group(&o, &id, &envelope, &domain, &indexes).await;
                indexes.into_iter().zip(results).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await);
    }
    let o2 = o.clone();
    let id2 = id.clone();
    let applied = smol::unblock(move || {
        let schedule = o2.settings().schedule();
        let settled = settle::settle(
            &id2,
            &envelope,
            results,
            unix_now(),
            &mut settle::random_fraction,
            &schedule,
        );
        o2.recorder().record(Owner::Remote, vec![settled])
    })
    .await;
    match applied.map(|a| a.into_iter().next().flatten()) {
        Ok(Some(Applied::Pending(Some(at)))) => o.timers.at(id, at),
        Ok(Some(_)) => {}
        // The bounce could not be written: the recipients stay pending, tried again.
        Ok(None) => o.timers.at(id, unix_now() + settle::RECORD_RETRY),
        // Kept in the backlog, recorded before anything else is delivered.
        Err(why) => {
            log::line(Event::Deferred)
                .field("id", id)
                .text("reason", &why)
                .write();
            o.timers.at(id, unix_now() + settle::BACKLOG_RETRY);
        }
    }
}

/// What TLS a delivery must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    /// Plaintext is acceptable (STARTTLS is still used when offered).
    Nothing,
    /// TLS, certificate unchecked.
    Tls,
    /// TLS with a certificate that verifies for the host.
    Verified,
}

/// Delivers message `id` to the recipients `indexes` of `envelope`, all of `domain`: one
/// result per index.
async fn deliver_group(
    o: &Arc<Outbound>,
    id: &QueueId,
    envelope: &Arc<Envelope>,
    domain: &str,
    indexes: &[usize],
) -> Vec<Fate> {
    let job = match envelope.mail_job(indexes) {
        Ok(job) => job,
        Err(why) => {
            // RFC 3463 5.1.3: bad destination mailbox address syntax.
            return indexes
                .iter()
                .map(|&i| {
                    let to = envelope.recipients[i]
                        .address
                        .forward_path()
                        .unwrap_or(ForwardPath::Postmaster);
                    Fate::found(to, DsnAction::Failed, (5, 1, 3), &why.to_string())
                })
                .collect();
        }
    };
    let all = |action: DsnAction, status: (u8, u16, u16), why: &str| -> Vec<Fate> {
        job.recipients
            .iter()
            .map(|r| Fate::found(r.to.clone(), action, status, why))
            .collect()
    };

    let settings = o.settings();
    // Permits: one overall, one for the domain.
    let domain_permits = {
        let mut map = lock(&o.per_domain);
        map.entry(domain.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(settings.max_connections_per_domain)))
            .clone()
    };
    let _domain_permit = domain_permits.acquire().await;
    let _permit = o.connections.acquire().await;

    let mut shuffle = |hosts: &mut [String]| shuffle(hosts);
    let route = match route::find(domain, &settings, &o.resolver, &mut shuffle).await {
        Ok(r) => r,
        Err(e @ RouteError::NullMx(_)) => {
            // RFC 7505 4.3: 556 5.1.10 for a domain with a null MX.
            return all(DsnAction::Failed, (5, 1, 10), &e.to_string());
        }
        Err(e @ RouteError::NoSuchDomain(_)) => {
            return all(DsnAction::Failed, (5, 1, 2), &e.to_string());
        }
        Err(e) => {
            return all(DsnAction::Delayed, (4, 4, 3), &e.to_string());
        }
    };
    // What TLS the delivery needs, and why (for the log and the DSN when it is not met).
    let (mut need, mut because) = match route.tls() {
        RouteTls::Opportunistic => (Need::Nothing, String::new()),
        RouteTls::Required => (Need::Tls, format!("[routes] requires TLS for {domain}")),
        RouteTls::Verified | RouteTls::Implicit => (
            Need::Verified,
            format!("[routes] requires verified TLS for {domain}"),
        ),
    };
    if envelope.requiretls && need < Need::Verified {
        need = Need::Verified;
        because = "the message asks for REQUIRETLS (verified TLS)".into();
    }
    let mut route = route;
    if route.static_route.is_none() {
        // Never below what the domain has shown before.
        let shown = match o.tls_memory.required(domain) {
            Level::Verified => Need::Verified,
            Level::Tls => Need::Tls,
            _ => Need::Nothing,
        };
        if shown > need {
            need = shown;
            let level = if shown == Need::Verified {
                "verified TLS"
            } else {
                "TLS"
            };
            because = format!(
                "{domain} has offered {level} before, so tls-domains requires it (if it \
                 really lost it: postern tls forget {domain})"
            );
        }
        // MTA-STS (RFC 8461 5): in enforce mode, only the MX hosts the policy lists, and
        // only over TLS that verifies for them.
        if let Some(sts) = &o.mta_sts {
            let lookup = sts.lookup(domain, SystemTime::now()).await;
            if let Some(problem) = &lookup.problem {
                log::line(Event::MtaSts)
                    .field("id", id)
                    .field("domain", domain)
                    .text("problem", problem)
                    .write();
            }
            if let Some(policy) = lookup.policy
                && policy.mode == mta_sts::Mode::Enforce
            {
                if need < Need::Verified {
                    because = format!(
                        "the MTA-STS policy of {domain} (enforce, id {}) requires verified TLS",
                        policy.id
                    );
                }
                need = Need::Verified;
                let before = route.hops.len();
                route.hops.retain(|h| policy.allows_mx(&h.host));
                if route.hops.is_empty() {
                    let why = format!(
                        "MTA-STS: none of the {before} MX hosts of {domain} is allowed by its policy (id {})",
                        policy.id
                    );
                    // RFC 8461 5.1 / RFC 3463 4.7.5: a policy problem, retried.
                    return all(DsnAction::Delayed, (4, 7, 5), &why);
                }
            }
        }
    }

    let mut attempts = 0;
    let mut last: Option<Vec<Fate>> = None;
    let mut problems: Vec<String> = route.skipped.clone();
    'hops: for hop in &route.hops {
        for addr in &hop.addrs {
            if attempts == MAX_CONNECTS {
                break 'hops;
            }
            attempts += 1;
            let group = Group {
                o,
                id,
                envelope,
                route: &route,
                because: &because,
            };
            let mut result = attempt(&group, hop, *addr, need, job.clone(), false).await;
            if let Attempt::TlsFailed(why) = &result {
                // Postfix and chasquid do the same: a broken STARTTLS is no reason to keep
                // mail from a domain that never required TLS; try again without it.
                log::line(Event::TlsFallback)
                    .field("id", id)
                    .field(
                        "relay",
                        format_args!("{}[{}]:{}", hop.host, addr.ip(), addr.port()),
                    )
                    .text("reason", why)
                    .write();
                result = attempt(&group, hop, *addr, need, job.clone(), true).await;
            }
            match result {
                Attempt::TlsFailed(why) | Attempt::Refused(why) => {
                    problems.push(format!(
                        "{}[{}]:{}: {why}",
                        hop.host,
                        addr.ip(),
                        addr.port()
                    ));
                }
                Attempt::Done(results, level) => {
                    let all_deferred = results.iter().all(|r| matches!(r, Fate::Deferred { .. }));
                    if !all_deferred {
                        if route.static_route.is_none() {
                            remember(o, domain, level).await;
                        }
                        return results;
                    }
                    // Every recipient deferred (greeting refused, TLS failed, 4xx): the next
                    // host may do better.
                    if let Some(Fate::Deferred { why, .. }) = results.first() {
                        problems.push(why.clone());
                    }
                    last = Some(results);
                    continue 'hops;
                }
            }
        }
    }
    if let Some(results) = last {
        return results;
    }
    let why = if problems.is_empty() {
        "no mail exchanger could be reached".to_string()
    } else {
        format!(
            "no mail exchanger could be reached: {}",
            problems.join("; ")
        )
    };
    // RFC 3463 4.4.1: no answer from host.
    all(DsnAction::Delayed, (4, 4, 1), &why)
}

/// How one connection went.
enum Attempt {
    /// No SMTP conversation (the connection failed): try the next address.
    Refused(String),
    /// STARTTLS was offered but the handshake failed, with nothing required of TLS.
    TlsFailed(String),
    /// The server answered; one result per recipient, and the TLS the connection had.
    Done(Vec<Fate>, Level),
}

/// What stays the same across the connection attempts of one delivery.
struct Group<'a> {
    o: &'a Arc<Outbound>,
    id: &'a QueueId,
    envelope: &'a Arc<Envelope>,
    route: &'a Route,
    /// Why TLS is required, when it is.
    because: &'a str,
}

/// One connection to `addr` of `hop`, delivering `job`; in plaintext when `plaintext`.
async fn attempt(
    g: &Group<'_>,
    hop: &Hop,
    addr: SocketAddr,
    need: Need,
    job: MailJob,
    plaintext: bool,
) -> Attempt {
    let Group {
        o,
        id,
        envelope,
        route,
        because,
    } = *g;
    let stream = match connect(o, addr).await {
        Ok(s) => s,
        Err(e) => return Attempt::Refused(format!("connect: {e}")),
    };
    let mut config = ClientConfig::new(o.hostname.get().to_string());
    config.tls = match need {
        Need::Nothing if plaintext => TlsPolicy::Never,
        Need::Nothing => TlsPolicy::Opportunistic,
        Need::Tls | Need::Verified => TlsPolicy::Required,
    };
    if let Some((user, password)) = route.static_route.as_ref().and_then(|r| r.auth.clone()) {
        config.auth = Some(ClientCredentials::new(user, password));
    }
    let connector: Connector = if need == Need::Verified {
        o.tls().strict()
    } else {
        o.tls().lenient()
    };
    let Some(server_name) = tls::server_name(&hop.host) else {
        return Attempt::Refused(format!("{} is not a usable TLS server name", hop.host));
    };
    let client_tls = ClientTls {
        connector: connector.connector.clone(),
        server_name,
        handshake_timeout: Duration::from_secs(60),
    };
    let mut session = ClientSession::new(Arc::new(config), job, Instant::now());
    let header = received_header(o, id, envelope);
    let store = o.store.clone();
    let (body_id, chunks) = (id.clone(), envelope.chunks);
    let mut bodies = move |_job: usize| -> io::Result<_> {
        let reader = smol::Unblock::new(store.body(&body_id, chunks));
        Ok(Cursor::new(header.clone().into_bytes()).chain(reader))
    };
    let implicit = route
        .static_route
        .as_ref()
        .is_some_and(|r| r.tls == RouteTls::Implicit);
    let report = if implicit {
        let handshake = client_tls
            .connector
            .connect(client_tls.server_name.clone(), stream);
        let tls_stream = match futures_lite::future::or(handshake, async {
            Timer::after(Duration::from_secs(60)).await;
            Err(io::Error::from(io::ErrorKind::TimedOut))
        })
        .await
        {
            Ok(s) => s,
            Err(e) if because.is_empty() => {
                return Attempt::Refused(format!("TLS handshake: {e}"));
            }
            Err(e) => {
                return Attempt::Refused(format!("TLS handshake: {e} (TLS required: {because})"));
            }
        };
        deliver(tls_stream, &mut session, None, &mut bodies).await
    } else {
        deliver(stream, &mut session, Some(&client_tls), &mut bodies).await
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => return Attempt::Refused(e.to_string()),
    };
    let remote_dsn = session.capabilities().is_some_and(|c| c.dsn);
    if let Some(why) = &report.tls_error
        && need == Need::Nothing
    {
        // Opportunistic TLS that failed: the caller may try this address in plaintext.
        return Attempt::TlsFailed(why.clone());
    }
    let relay = format!("{}[{}]:{}", hop.host, addr.ip(), addr.port());
    let tls = tls_fields(
        report.tls.as_ref(),
        implicit || report.tls.is_some(),
        connector.verified(),
    );
    let hop_text = format!("{relay} {}", tls.as_str());
    // Implicit TLS always uses the strict connector.
    let level = match (report.tls.is_some() || implicit, connector.verified()) {
        (true, true) => Level::Verified,
        (true, false) => Level::Tls,
        (false, _) => Level::Plaintext,
    };
    let report_tls_error = report.tls_error.clone();
    let Some(outcome) = report.outcomes.into_iter().next() else {
        return Attempt::Refused("the session ended without a result".into());
    };
    let remote = proto_core::Domain::parse(&hop.host).ok();
    let results = outcome
        .recipients
        .iter()
        .map(|r| {
            let report = RecipientReport::from_result(r, remote.clone());
            match &r.status {
                // RFC 3461 5.2.2: a next hop with DSN takes NOTIFY=SUCCESS over; without
                // it, the success is ours to report ("relayed").
                RecipientStatus::Accepted(reply) => Fate::Delivered {
                    detail: log::Fields::new()
                        .field("relay", &relay)
                        .and(&tls)
                        .text("reply", reply),
                    report: (!remote_dsn).then_some(report),
                },
                RecipientStatus::TemporaryFailure(reason) => Fate::Deferred {
                    why: failure_text(&hop_text, reason, report_tls_error.as_deref(), because),
                    report,
                },
                RecipientStatus::PermanentFailure(reason) => Fate::Failed {
                    why: failure_text(&hop_text, reason, report_tls_error.as_deref(), because),
                    report,
                },
                _ => Fate::Deferred {
                    why: format!("{hop_text}: unknown result"),
                    report,
                },
            }
        })
        .collect();
    Attempt::Done(results, level)
}

/// Why a recipient failed at `hop_text`: the reason, and for a TLS problem the handshake's
/// error (`tls_error`) and why TLS was required (`because`).
fn failure_text(
    hop_text: &str,
    reason: &FailureReason,
    tls_error: Option<&str>,
    because: &str,
) -> String {
    let tls_problem = matches!(
        reason,
        FailureReason::Local(
            ClientError::StartTlsNotOffered
                | ClientError::StartTlsRefused(_)
                | ClientError::TlsHandshakeFailed
        )
    );
    let mut why = format!("{hop_text}: {reason}");
    if tls_problem {
        if let Some(e) = tls_error {
            why.push_str(&format!(": {e}"));
        }
        if !because.is_empty() {
            why.push_str(&format!(" (TLS required: {because})"));
        }
    }
    why
}

/// Records the TLS level a domain has shown (it only ever rises).
async fn remember(o: &Arc<Outbound>, domain: &str, level: Level) {
    if o.tls_memory.required(domain) >= level {
        return;
    }
    let o2 = o.clone();
    let d = domain.to_string();
    match smol::unblock(move || o2.tls_memory.record(&d, level)).await {
        Ok(true) => log::line(Event::TlsPolicy)
            .field("domain", domain)
            .field("level", level)
            .write(),
        Ok(false) => {}
        Err(e) => log::line(Event::TlsPolicy)
            .field("domain", domain)
            .text("problem", e)
            .write(),
    }
}

/// The TLS of a hop as log fields: `tls=TLSv1.3 cert=verified` (or `unverified`),
/// `tls=implicit` (no details), `tls=none`.
fn tls_fields(info: Option<&TlsInfo>, tls: bool, verified: bool) -> log::Fields {
    let fields = log::Fields::new();
    match info {
        Some(i) => fields
            .field("tls", &i.version)
            .field("cert", if verified { "verified" } else { "unverified" }),
        None if tls => fields.field("tls", "implicit"),
        None => fields.field("tls", "none"),
    }
}

/// Opens a TCP connection to `addr`, from the configured source address of its family.
async fn connect(o: &Outbound, addr: SocketAddr) -> io::Result<Async<TcpStream>> {
    let settings = o.settings();
    let source: Option<IpAddr> = match addr {
        SocketAddr::V4(_) => settings.source_ipv4.map(IpAddr::V4),
        SocketAddr::V6(_) => settings.source_ipv6.map(IpAddr::V6),
    };
    let timeout = settings.connect_timeout;
    match source {
        None => {
            let connect = Async::<TcpStream>::connect(addr);
            futures_lite::future::or(connect, async {
                Timer::after(timeout).await;
                Err(io::Error::from(io::ErrorKind::TimedOut))
            })
            .await
        }
        Some(source) => {
            // socket2 binds the source address; the blocking connect runs off the executor.
            let stream = smol::unblock(move || -> io::Result<TcpStream> {
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                socket.bind(&SocketAddr::new(source, 0).into())?;
                socket.connect_timeout(&addr.into(), timeout)?;
                Ok(socket.into())
            })
            .await?;
            Async::new(stream)
        }
    }
}

/// Our `Received:` field for the hop from the client to us, then the fields added on
/// reception.
fn received_header(o: &Outbound, id: &QueueId, envelope: &Envelope) -> String {
    let mut h = Trace::of(envelope, id.as_str(), &o.hostname.get())
        .received(None, envelope.received_time());
    h.push_str(&envelope.headers);
    h
}

/// Fisher-Yates with getrandom (RFC 5321 5.1: equal preferences in random order).
fn shuffle(items: &mut [String]) {
    for i in (1..items.len()).rev() {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        let j = (u32::from_le_bytes(b) as usize) % (i + 1);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::testkit::{Client, TestServer};

    /// From a trusted network to another server by a static route: the next hop gets the
    /// message with our Received field, and a recipient it refuses bounces back to the
    /// sender's mailbox with its reply quoted.
    #[test]
    fn a_static_route_delivers_and_a_refusal_bounces() {
        let b = TestServer::builder().user("bob@b.test", "pw").start();
        let a = TestServer::builder()
            .user("alice@a.test", "pw")
            .config(&format!(
                "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
                 [routes]\n\"b.test\" = \"{}\"\n",
                b.addr(Role::Smtp)
            ))
            .start();
        let (mut c, _) = Client::connect(a.addr(Role::Smtp));
        c.send("EHLO client.test");
        assert!(c.send("MAIL FROM:<alice@a.test>").starts_with("250 "));
        assert!(c.send("RCPT TO:<bob@b.test>").starts_with("250 "));
        assert!(c.send("RCPT TO:<nobody@b.test>").starts_with("250 "));
        c.send("DATA");
        let queued = c.send("Subject: across\r\n\r\nover the route\r\n.");
        assert!(queued.starts_with("250 "), "{queued}");
        let got = b.wait_inbox("b.test", "bob", 1, 30);
        assert!(got[0].contains("Received: from client.test"), "{}", got[0]);
        assert!(got[0].contains("by localhost"), "{}", got[0]);
        assert!(
            got[0].ends_with("Subject: across\r\n\r\nover the route\r\n"),
            "{}",
            got[0]
        );
        let bounce = a.wait_inbox("a.test", "alice", 1, 30);
        assert!(
            bounce[0].contains("Final-Recipient: rfc822; nobody@b.test\r\nAction: failed"),
            "{}",
            bounce[0]
        );
        assert!(bounce[0].contains("550 5.1.1"), "{}", bounce[0]);
    }

    #[test]
    fn domains_are_compared_in_a_label_form() {
        let m: proto_core::Mailbox = "x@BÜCHER.example".parse().expect("mailbox");
        assert_eq!(ascii_domain(&m), "xn--bcher-kva.example");
        let literal: proto_core::Mailbox = "x@[127.0.0.1]".parse().expect("mailbox");
        assert_eq!(ascii_domain(&literal), "[127.0.0.1]");
    }

    #[test]
    fn the_log_names_the_tls_of_each_hop() {
        assert_eq!(tls_fields(None, false, false).as_str(), "tls=none");
        assert_eq!(tls_fields(None, true, true).as_str(), "tls=implicit");
    }
}

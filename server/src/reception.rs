//! Receiving mail: the [`Handler`] that answers a session's questions.
//!
//! One [`Reception`] per connection. MAIL opens a transaction with a fresh queue id; RCPT
//! looks the recipient up ([`Recipients`]): a local mailbox is accepted, an unknown user in a
//! local domain gets 550 5.1.1, any other domain 550 5.7.1 (no relaying: authenticated relay
//! comes with users). The body is streamed into the queue store ([`crate::store`]) in chunks
//! of at most [`CHUNK_SIZE`] bytes as it arrives, unsynced; at the end of data the envelope is
//! written after the last chunk, the committer ([`crate::commit`]) makes both durable with one
//! group fsync, and only then is the message answered 250 and handed to the delivery workers
//! ([`crate::local`]). A transaction that is abandoned (RSET, a dropped connection, a refused
//! message) has its chunks removed; chunks a crash leaves behind are swept at startup.
//! AUTH is refused (535 5.7.8) until the user database exists, which makes the submission
//! ports refuse MAIL (530) for now.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_channel::Sender;
use proto_core::{
    Credentials, ForwardPath, MailParams, RcptParams, Reply, ReversePath, Session, Verdict,
};
use runtime_smol::Handler;

use crate::commit::Committer;
use crate::config::Role;
use crate::log;
use crate::queue::QueueId;
use crate::recipients::{LocalMailbox, Lookup, Recipients};
use crate::store::{Address, CHUNK_SIZE, Envelope, Recipient, RecipientState, Store, TraceRecord};
use crate::trace::{MAX_RECEIVED, ReceivedCounter};

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// Recipient lookups.
    pub recipients: Recipients,
    /// The queue store.
    pub store: Store,
    /// Group commit.
    pub committer: Committer,
    /// Where queued messages go for delivery.
    pub queue: Sender<QueueId>,
}

/// The handler of one connection.
#[derive(Debug)]
pub struct Reception {
    shared: Arc<Shared>,
    role: Role,
    transaction: Option<Transaction>,
}

/// The open transaction.
#[derive(Debug)]
struct Transaction {
    id: QueueId,
    from: ReversePath,
    params: MailParams,
    recipients: Vec<(LocalMailbox, RcptParams)>,
    received: ReceivedCounter,
    /// Body bytes not yet written: less than [`CHUNK_SIZE`].
    buffer: Vec<u8>,
    /// Chunks written to the store so far.
    chunks: u32,
    /// Body bytes received so far.
    size: u64,
    /// Why the body could not be stored, once it could not.
    failure: Option<String>,
}

impl Reception {
    /// A handler for a connection on a listener with `role`.
    pub fn new(shared: Arc<Shared>, role: Role) -> Reception {
        Reception {
            shared,
            role,
            transaction: None,
        }
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

    /// Makes the finished transaction durable; the verdict for its end of data.
    async fn queue(&self, session: &Session, mut t: Transaction) -> Verdict {
        if t.failure.is_none() && !t.buffer.is_empty() {
            let chunk = std::mem::take(&mut t.buffer);
            write_chunk(&self.shared.store, &mut t, chunk).await;
        }
        if let Some(why) = t.failure.take() {
            log::event("failed", format_args!("id={} reason=\"{why}\"", t.id));
            discard(&self.shared.store, &t.id, t.chunks, false).await;
            return Verdict::Reject(reply(
                451,
                (4, 3, 0),
                "Local error in processing, try again later",
            ));
        }
        let envelope = envelope(session, &t);
        log::event(
            "received",
            format_args!(
                "id={} from={} size={} rcpts={} client={} role={} helo={:?}{}",
                t.id,
                t.from,
                t.size,
                t.recipients.len(),
                client_ip(session),
                self.role.name(),
                envelope.trace.helo,
                session
                    .tls()
                    .map(|tls| format!(" tls={} cipher={}", tls.version, tls.cipher))
                    .unwrap_or_default()
            ),
        );
        // From here on the work runs as its own task: if this session's future is dropped
        // (the connection goes away), a message that becomes durable still reaches the
        // workers instead of waiting in the store for the next start.
        let (done, outcome) = async_channel::bounded(1);
        let shared = self.shared.clone();
        let id = t.id.clone();
        let (size, chunks) = (t.size, t.chunks);
        smol::spawn(async move {
            let result = commit(&shared, &id, envelope).await;
            match &result {
                Ok(()) => {
                    log::event(
                        "queued",
                        format_args!("id={id} size={size} chunks={chunks}"),
                    );
                    // Unbounded: fails only if the workers' channel is closed (shutting
                    // down); the message is durable and resumes at the next start.
                    let _ = shared.queue.try_send(id);
                }
                Err(why) => {
                    log::event("failed", format_args!("id={id} reason=\"{why}\""));
                    discard(&shared.store, &id, chunks, true).await;
                }
            }
            let _ = done.try_send(result);
        })
        .detach();
        if !matches!(outcome.recv().await, Ok(Ok(()))) {
            return Verdict::Reject(reply(
                451,
                (4, 3, 0),
                "Local error in processing, try again later",
            ));
        }
        Verdict::AcceptWithText(format!("Ok: queued as {}", t.id))
    }
}

impl Handler for Reception {
    async fn mail(
        &mut self,
        _session: &Session,
        from: &ReversePath,
        params: &MailParams,
    ) -> Verdict {
        if let Some(old) = self.transaction.take() {
            discard(&self.shared.store, &old.id, old.chunks, false).await;
        }
        self.transaction = Some(Transaction {
            id: QueueId::new(),
            from: from.clone(),
            params: params.clone(),
            recipients: Vec::new(),
            received: ReceivedCounter::default(),
            buffer: Vec::new(),
            chunks: 0,
            size: 0,
            failure: None,
        });
        Verdict::Accept
    }

    async fn rcpt(&mut self, session: &Session, to: &ForwardPath, params: &RcptParams) -> Verdict {
        let (id, from) = match &self.transaction {
            Some(t) => (t.id.to_string(), t.from.to_string()),
            None => ("-".to_string(), String::new()),
        };
        let what = format!("from={from} to={to}");
        let shared = self.shared.clone();
        let path = to.clone();
        let lookup = smol::unblock(move || shared.recipients.lookup(&path)).await;
        match lookup {
            Ok(Lookup::Local(mailbox)) => {
                if let Some(t) = &mut self.transaction
                    && !t.recipients.iter().any(|(m, _)| *m == mailbox)
                {
                    t.recipients.push((mailbox, params.clone()));
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

    async fn auth(&mut self, session: &Session, _credentials: Credentials) -> Verdict {
        // No user database yet: every login fails. The credentials are not logged.
        log::event(
            "rejected",
            format_args!(
                "id=- auth client={} role={} reason=\"no user database\"",
                client_ip(session),
                self.role.name()
            ),
        );
        Verdict::Reject(reply(535, (5, 7, 8), "Authentication credentials invalid"))
    }

    async fn message_start(&mut self, _session: &Session) {}

    async fn message_data(&mut self, _session: &Session, chunk: Vec<u8>) {
        let Some(t) = &mut self.transaction else {
            return;
        };
        t.received.feed(&chunk);
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
        let Some(t) = self.transaction.take() else {
            return Verdict::Reject(reply(451, (4, 3, 0), "Local error: no transaction"));
        };
        if t.received.count() > MAX_RECEIVED {
            let what = format!("from={} size={}", t.from, t.size);
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
            discard(&self.shared.store, &t.id, t.chunks, false).await;
            return verdict;
        }
        self.queue(session, t).await
    }

    async fn aborted(&mut self, _session: &Session) {
        if let Some(t) = self.transaction.take() {
            discard(&self.shared.store, &t.id, t.chunks, false).await;
        }
    }
}

/// Writes `id`'s envelope after its body and waits for the group commit to make both durable.
async fn commit(shared: &Shared, id: &QueueId, envelope: Envelope) -> Result<(), String> {
    let store = shared.store.clone();
    let i = id.clone();
    smol::unblock(move || store.put_envelope(&i, &envelope))
        .await
        .map_err(|e| e.to_string())?;
    shared.committer.sync().await
}

/// Writes one chunk of `t`'s body; a failure is remembered and ends the storing.
async fn write_chunk(store: &Store, t: &mut Transaction, chunk: Vec<u8>) {
    let store = store.clone();
    let id = t.id.clone();
    let index = t.chunks;
    match smol::unblock(move || store.put_chunk(&id, index, &chunk)).await {
        Ok(()) => t.chunks += 1,
        Err(e) => t.failure = Some(e.to_string()),
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Envelope {
        from: t.from.to_string(),
        smtputf8: t.params.smtputf8,
        body: t.params.body,
        ret: t.params.ret,
        envid: t.params.envid.clone(),
        received_at: now,
        trace: TraceRecord {
            helo: session.helo().unwrap_or("unknown").to_string(),
            client: client_literal(session),
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
            .map(|(mailbox, params)| Recipient {
                address: Address::Local {
                    domain: mailbox.domain.clone(),
                    user: mailbox.user.clone(),
                },
                orcpt: params
                    .orcpt
                    .as_ref()
                    .map(|o| (o.addr_type.clone(), o.address.clone())),
                notify: params.notify,
                state: RecipientState::Pending,
                attempts: 0,
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

//! Bounces: a delivery status notification (RFC 3464, composed by [`proto_core::mail::compose`]) to the
//! sender of a message whose recipients failed for good, queued like any other message.
//!
//! The DSN goes into the store (chunks now, envelope with the caller's [`Store::apply`]
//! batch), so a recipient is never marked failed without its bounce being durable at the
//! same moment. Where the bounce goes is decided as RCPT decides for a message from `<>`
//! ([`Destinations::decide`]): a sender of one of our domains gets it wherever mail to them
//! goes (their mailbox, or the aliases and the catch-all: forwarded elsewhere, piped), with
//! the sender's address as its ORCPT; an address RCPT would refuse gets none (logged); anyone
//! else gets it through outbound delivery. A null reverse path never gets one (`compose`
//! refuses).

use std::time::{SystemTime, UNIX_EPOCH};

use proto_core::{
    ForwardPath, OriginalRecipient, ReversePath, mail::Boundary, mail::DsnDate, mail::DsnRequest,
    mail::MessageId, mail::OriginalEnvelope, mail::RecipientReport, mail::compose,
};

use crate::directory::destinations::{AliasCell, Destinations, Queued, Resolution};
use crate::directory::recipients::Recipients;
use crate::log::{self, Event};
use crate::queue::QueueId;
use crate::queue::store::{
    Address, CHUNK_SIZE, Envelope, Recipient, Store, StoreError, TraceRecord,
};

/// Why a DSN could not be written (the recipients it is about stay pending).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BounceError {
    /// The boundary or Message-ID could not be made.
    #[error("cannot build the DSN's identifiers")]
    Identifiers,
    /// Where the sender's mail goes could not be told now (the users or aliases could not be
    /// read): the reply RCPT would give.
    #[error("looking up the sender {0}: {1}")]
    Lookup(String, String),
    /// The original message could not be read back.
    #[error("reading the original: {0}")]
    Original(#[source] std::io::Error),
    /// The DSN's body could not be stored.
    #[error("storing the DSN: {0}")]
    Store(#[source] StoreError),
}

/// What bounces need: the store, our name, and the recipient lookup.
#[derive(Debug, Clone)]
pub struct Bouncer {
    /// The queue store.
    pub store: Store,
    /// Our host name (Reporting-MTA, MAILER-DAEMON's domain).
    pub hostname: crate::config::HostName,
    /// Decides whether the sender is one of our mailboxes.
    pub recipients: Recipients,
    /// The aliases and SRS the sessions use: a DSN follows them as incoming mail does.
    pub aliases: AliasCell,
}

impl Bouncer {
    /// Composes the DSN about `reports` (recipients of message `id`, described by
    /// `envelope`) and writes its body to the store. Returns the new message to queue (in the
    /// caller's batch), or `None` when no DSN is due (null sender, NOTIFY, unknown local
    /// sender). Blocking.
    pub fn bounce(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        reports: Vec<RecipientReport>,
        now: SystemTime,
    ) -> Result<Option<(QueueId, Envelope)>, BounceError> {
        let mut original = OriginalEnvelope::new(
            envelope.from.clone(),
            DsnDate::from_unix(envelope.received_at as i64),
        );
        original.envid.clone_from(&envelope.envid);
        original.ret = envelope.ret;
        original.body = envelope.body;
        original.smtputf8 = envelope.smtputf8;
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let token = random_token();
        let (Some(message_id), Some(boundary), Some(reporting)) = (
            MessageId::new(&format!("{token}.{id}@{}", self.hostname.get())),
            Boundary::new(&format!("=_postern_{token}")),
            proto_core::Domain::parse(&self.hostname.get()).ok(),
        ) else {
            return Err(BounceError::Identifiers);
        };
        let request = DsnRequest::new(
            reporting,
            original,
            reports,
            DsnDate::from_unix(secs as i64),
            message_id,
            boundary,
        );
        let dsn = match compose(&request) {
            Ok(d) => d,
            Err(why) => {
                log::line(Event::Dsn)
                    .field("id", id)
                    .text("none", why)
                    .write();
                return Ok(None);
            }
        };
        let to = ForwardPath::Mailbox(dsn.envelope_to().clone());
        let Some(recipients) = self.recipients_of(id, &to, now)? else {
            return Ok(None);
        };

        // The DSN's body: prefix, the returned part of the original, suffix; in chunks.
        let bounce_id = QueueId::new();
        let mut writer = ChunkWriter {
            store: &self.store,
            id: &bounce_id,
            buffer: Vec::with_capacity(CHUNK_SIZE),
            chunks: 0,
            size: 0,
        };
        writer.write(dsn.prefix())?;
        let mut content = dsn.returned_content();
        let mut original = self.store.body(id, envelope.chunks);
        let mut piece = vec![0u8; CHUNK_SIZE];
        let mut out = Vec::with_capacity(CHUNK_SIZE + 1024);
        // The original as it went out: the fields added at reception (the MSA's Date and
        // Message-ID, signatures, results) on top of the stored body.
        content.feed(envelope.headers.as_bytes(), &mut out);
        writer.write(&out)?;
        out.clear();
        while !content.is_done() {
            let n =
                std::io::Read::read(&mut original, &mut piece).map_err(BounceError::Original)?;
            if n == 0 {
                break;
            }
            content.feed(&piece[..n], &mut out);
            writer.write(&out)?;
            out.clear();
        }
        content.finish(&mut out);
        writer.write(&out)?;
        writer.write(dsn.suffix())?;
        let (chunks, size) = writer.finish()?;

        let bounce = Envelope {
            from: ReversePath::Null,
            smtputf8: dsn.smtputf8(),
            body: Some(dsn.body()),
            ret: None,
            envid: None,
            requiretls: false,
            headers: String::new(),
            received_at: secs,
            trace: TraceRecord {
                helo: self.hostname.get().to_string(),
                client: "localhost".into(),
                esmtp: true,
                tls: None,
                authenticated: false,
            },
            size,
            chunks,
            recipients,
        };
        log::line(Event::Dsn)
            .field("id", id)
            .field("dsn", &bounce_id)
            .field("to", &to)
            .field("size", size)
            .write();
        Ok(Some((bounce_id, bounce)))
    }

    /// Where a DSN to `to` goes: where a message to `to` from `<>` would go, through the
    /// aliases, the catch-all and the users (a local sender forwarding everything to another
    /// mailbox gets the bounce there), or outbound for an address elsewhere. `None` (logged)
    /// when RCPT would refuse it for good.
    fn recipients_of(
        &self,
        id: &QueueId,
        to: &ForwardPath,
        now: SystemTime,
    ) -> Result<Option<Vec<Recipient>>, BounceError> {
        let (aliases, srs) = self.aliases.get();
        let destinations = Destinations {
            recipients: &self.recipients,
            aliases: &aliases,
            srs: &srs,
        };
        let queued = match destinations.decide(to, &ReversePath::Null, now) {
            Resolution::Accept(queued) => queued,
            Resolution::NotLocal => match to {
                ForwardPath::Mailbox(m) => vec![Queued {
                    address: Address::Remote(m.clone()),
                    sender: None,
                }],
                _ => Vec::new(),
            },
            Resolution::Refuse(reply)
                if reply.code().class() == proto_core::ReplyClass::TransientNegative =>
            {
                return Err(BounceError::Lookup(to.to_string(), reply.to_string()));
            }
            Resolution::Refuse(reply) => {
                log::line(Event::Dsn)
                    .field("id", id)
                    .text(
                        "none",
                        format_args!("the sender {to} is refused here: {reply}"),
                    )
                    .write();
                return Ok(None);
            }
        };
        let orcpt = match to {
            ForwardPath::Mailbox(m) if m.is_ascii() => Some(m),
            _ => None,
        };
        let recipients = queued
            .into_iter()
            .map(|q| {
                let mut recipient = Recipient::new(q.address);
                recipient.notify = Some(proto_core::Notify::Never);
                recipient.sender = q.sender;
                // The sender's own address, when the DSN goes elsewhere (an alias).
                recipient.orcpt = orcpt
                    .filter(|m| recipient.address != Address::Remote((*m).clone()))
                    .map(|m| ("rfc822".to_string(), m.to_string()));
                recipient
            })
            .collect();
        Ok(Some(recipients))
    }
}

/// A report on `address` for the DSN, with its ORCPT and NOTIFY.
pub fn report_for(recipient: &Recipient, mut report: RecipientReport) -> RecipientReport {
    report.orcpt = recipient
        .orcpt
        .as_ref()
        .map(|(addr_type, address)| OriginalRecipient {
            addr_type: addr_type.clone(),
            address: address.clone(),
        });
    report.notify = recipient.notify;
    report
}

/// 16 random hex digits (unguessable boundaries and Message-IDs).
fn random_token() -> String {
    let mut bytes = [0u8; 8];
    // A failed getrandom leaves zeros; the queue id in the Message-ID keeps it unique.
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a body into the store in chunks of [`CHUNK_SIZE`].
struct ChunkWriter<'a> {
    store: &'a Store,
    id: &'a QueueId,
    buffer: Vec<u8>,
    chunks: u32,
    size: u64,
}

impl ChunkWriter<'_> {
    fn write(&mut self, mut bytes: &[u8]) -> Result<(), BounceError> {
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = CHUNK_SIZE - self.buffer.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = rest;
            if self.buffer.len() == CHUNK_SIZE {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BounceError> {
        self.store
            .put_chunk(self.id, self.chunks, &self.buffer)
            .map_err(BounceError::Store)?;
        self.chunks += 1;
        self.buffer.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(u32, u64), BounceError> {
        if !self.buffer.is_empty() {
            self.flush()?;
        }
        Ok((self.chunks, self.size))
    }
}

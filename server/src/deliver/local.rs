//! Local delivery workers: from the queue store into Maildirs, LMTP servers and commands.
//!
//! Queue ids arrive on a channel: from sessions once a message is durable, from the startup
//! scan for everything a previous run left pending, and from retry timers. A fixed number of
//! workers ([`WORKERS`]) take ids from it, so deliveries run concurrently with a bound. Each
//! worker pass takes every id waiting (at most [`BATCH`]) and, on a blocking thread, reads the
//! envelopes and, for each recipient still pending, streams the body from the store chunk by
//! chunk into the Maildir ([`crate::deliver::maildir`]: `tmp/`, fsync, rename into `new/`); then it
//! fsyncs each Maildir's `new/` once for the whole pass, and only then marks those recipients
//! delivered, or removes the messages with no recipient left pending (envelope and body), in
//! one store batch made durable by one group commit. A crash between a rename and that commit
//! delivers the copy again after the restart: a duplicate, never a loss.
//!
//! A Maildir write that fails defers the recipient: its attempt count goes up and the message
//! comes back after [`backoff`] (a simple doubling from 15 s: a local problem, a full disk
//! say, is usually fixed sooner than a remote one; outbound delivery has its own schedule). After [`MAX_ATTEMPTS`] the recipient is marked failed and bounces.
//!
//! Recipients whose `[mailboxes]` entry names another method ([`crate::deliver`]) leave the
//! batched Maildir path: the recipients of one message for one LMTP server go in one LMTP
//! transaction, a command runs once per recipient, and so does the command of a pipe alias
//! ([`Address::Pipe`], where `%to%` is the alias). They run in the same pass, on the same
//! blocking thread, and their results are recorded in the same batch as the Maildir marks:
//! delivered, deferred (as a failed Maildir write), or failed at once for a permanent failure
//! (an LMTP 5xx reply, a command's exit status other than 0 and 75), which bounces without
//! waiting for [`MAX_ATTEMPTS`]. A crash before the marks are committed delivers again: a
//! duplicate, never a loss.
//!
//! For tests, the environment variable `POSTERN_DELIVERY_PAUSED=1` keeps the workers from
//! starting: messages are accepted and queued but stay pending until a run without it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use async_io::Timer;

use crate::deliver::command::{self, Substitutions};
use crate::deliver::maildir;
use crate::deliver::{self, CommandLine, Delivery, LmtpTarget, Mailboxes, Method};
use crate::log;
use crate::queue::QueueId;
use crate::queue::bounce::{self, Bouncer};
use crate::queue::commit::Committer;
use crate::queue::dispatch::Dispatch;
use crate::queue::store::{Address, Applied, Envelope, Owner, RecipientState, Store};
use crate::reception::trace::Trace;

/// How many messages are delivered at the same time.
pub const WORKERS: usize = 2;

/// The most messages one worker delivers in one pass (one fsync of each Maildir's `new/`, one
/// group commit for the marks).
pub const BATCH: usize = 64;

/// After this many failed attempts a recipient is marked failed.
pub const MAX_ATTEMPTS: u32 = 20;

/// The environment variable that pauses delivery (for tests).
pub const PAUSE_VARIABLE: &str = "POSTERN_DELIVERY_PAUSED";

/// What the workers share.
#[derive(Debug)]
pub struct Local {
    /// The queue store.
    pub store: Store,
    /// Group commit for the delivery marks.
    pub committer: Committer,
    /// `<data_dir>/mail`.
    pub mail_dir: std::path::PathBuf,
    /// Our host name (Maildir file names, `Received:`).
    pub hostname: String,
    /// Where ids to deliver are sent (also used by retry timers).
    pub queue: Sender<QueueId>,
    /// Bounces for recipients that fail for good.
    pub bouncer: Bouncer,
    /// Where bounces go for delivery.
    pub dispatch: Dispatch,
    /// `[mailboxes]`: the delivery method of each local recipient.
    pub mailboxes: Mailboxes,
}

/// What one pass over a message leaves to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Nothing: delivered, failed, or removed.
    Done,
    /// Try again after this long.
    Retry(Duration),
}

/// Whether the environment asks for delivery to be paused.
pub fn paused() -> bool {
    std::env::var_os(PAUSE_VARIABLE).is_some_and(|v| v == "1")
}

/// Starts [`WORKERS`] workers on the executor, taking ids from `ids`.
pub fn start(local: Arc<Local>, ids: Receiver<QueueId>) {
    for _ in 0..WORKERS {
        smol::spawn(work(local.clone(), ids.clone())).detach();
    }
}

/// One worker: deliver messages until the channel closes. Each pass takes what is waiting (up
/// to [`BATCH`] ids) and delivers it with [`deliver_batch`].
async fn work(local: Arc<Local>, ids: Receiver<QueueId>) {
    while let Ok(first) = ids.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match ids.try_recv() {
                // The same id twice in one pass would be delivered twice.
                Ok(id) if batch.contains(&id) => {}
                Ok(id) => batch.push(id),
                Err(_) => break,
            }
        }
        let l = local.clone();
        let outcomes = smol::unblock(move || {
            let outcomes = deliver_batch(&l, &batch);
            batch.into_iter().zip(outcomes).collect::<Vec<_>>()
        })
        .await;
        for (id, outcome) in outcomes {
            if let Outcome::Retry(after) = outcome {
                let queue = local.queue.clone();
                smol::spawn(async move {
                    Timer::after(after).await;
                    let _ = queue.send(id).await;
                })
                .detach();
            }
        }
    }
}

/// The wait before the next attempt after `attempts` failures: 15 s, doubling, at most 1 h.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs((15u64 << attempts.saturating_sub(1).min(10)).min(3600))
}

/// One message in a delivery pass.
struct Pass {
    id: QueueId,
    envelope: Envelope,
    /// The earliest retry a deferred recipient asks for.
    retry: Option<Duration>,
    /// Copies written into `new/` (recipient index, file, Maildir), waiting for its fsync.
    written: Vec<(usize, PathBuf, PathBuf)>,
    /// Copies delivered (recipient index, where: `path=...` or the LMTP server's reply),
    /// logged once the mark is durable.
    delivered: Vec<(usize, String)>,
    /// Recipients that failed for good in this pass (index, why): they bounce.
    failed: Vec<(usize, String)>,
}

impl Pass {
    /// Records the result of a delivery by LMTP or a command for recipient `i`.
    fn record(&mut self, i: usize, result: Delivery) {
        match result {
            Delivery::Delivered(detail) => {
                self.envelope.recipients[i].state = RecipientState::Delivered;
                self.delivered.push((i, detail));
            }
            Delivery::Deferred(why) => self.attempt_failed(i, &why),
            Delivery::Failed(why) => self.failed_for_good(i, &why),
        }
    }

    /// Recipient `i` failed permanently: marked failed now, whatever its attempts.
    fn failed_for_good(&mut self, i: usize, why: &str) {
        let id = &self.id;
        let r = &mut self.envelope.recipients[i];
        r.attempts += 1;
        r.last_error = Some(why.to_string());
        r.state = RecipientState::Failed;
        self.failed.push((i, why.to_string()));
        log::event(
            "failed",
            format_args!(
                "id={id} to=<{}> attempts={} reason=\"{why}\"",
                r.address, r.attempts
            ),
        );
    }

    /// Records a failed attempt for recipient `i`: deferred, or failed after [`MAX_ATTEMPTS`].
    fn attempt_failed(&mut self, i: usize, why: &str) {
        let id = &self.id;
        let r = &mut self.envelope.recipients[i];
        let address = &r.address;
        r.attempts += 1;
        r.last_error = Some(why.to_string());
        if r.attempts >= MAX_ATTEMPTS {
            r.state = RecipientState::Failed;
            self.failed.push((i, why.to_string()));
            log::event(
                "failed",
                format_args!(
                    "id={id} to=<{address}> attempts={} reason=\"{why}\"",
                    r.attempts
                ),
            );
        } else {
            let after = backoff(r.attempts);
            self.retry = Some(self.retry.map_or(after, |d| d.min(after)));
            log::event(
                "deferred",
                format_args!(
                    "id={id} to=<{address}> attempts={} retry_in={}s reason=\"{why}\"",
                    r.attempts,
                    after.as_secs()
                ),
            );
        }
    }
}

/// Delivers every pending recipient of every message in `ids` (blocking); one outcome per id.
///
/// The order keeps the guarantees: each copy is written to `tmp/`, fsynced and renamed into
/// `new/`; then each Maildir's `new/` is fsynced once for all its copies; only then are the
/// recipients marked delivered (or the finished messages removed), all in one store batch made
/// durable by one group commit. A crash anywhere before that commit delivers the pass's copies
/// again after the restart: duplicates, never a loss.
fn deliver_batch(local: &Local, ids: &[QueueId]) -> Vec<Outcome> {
    let mut outcomes = vec![Outcome::Done; ids.len()];
    let mut passes: Vec<(usize, Pass)> = Vec::new();
    for (slot, id) in ids.iter().enumerate() {
        match local.store.envelope(id) {
            Ok(Some(envelope)) => passes.push((
                slot,
                Pass {
                    id: id.clone(),
                    envelope,
                    retry: None,
                    written: Vec::new(),
                    delivered: Vec::new(),
                    failed: Vec::new(),
                },
            )),
            // Gone: delivered by an earlier pass.
            Ok(None) => {}
            Err(e) => {
                log::event("failed", format_args!("id={id} reason=\"{e}\""));
                outcomes[slot] = Outcome::Retry(backoff(MAX_ATTEMPTS));
            }
        }
    }

    // Write every pending copy into its Maildir's new/; deliver the others by their method.
    let mut maildirs: Vec<PathBuf> = Vec::new();
    for (_, p) in &mut passes {
        // The recipients of this message for each LMTP server (and reverse path), delivered
        // together below.
        let mut lmtp: Vec<((LmtpTarget, String), Vec<usize>)> = Vec::new();
        for i in 0..p.envelope.recipients.len() {
            let r = &p.envelope.recipients[i];
            if r.state != RecipientState::Pending || !Owner::Local.owns(&r.address) {
                continue;
            }
            let address = p.envelope.recipients[i].address.clone();
            let result = match &address {
                Address::Local { domain, user } => match local.mailboxes.method_for(user, domain) {
                    Method::Maildir => {
                        let header = trace_header(&p.envelope, &p.id, &address, &local.hostname);
                        let mut body = local.store.body(&p.id, p.envelope.chunks);
                        let maildir = local.mail_dir.join(domain).join(user);
                        maildir::deliver_unsynced(
                            &maildir,
                            &local.hostname,
                            header.as_bytes(),
                            &mut body,
                        )
                        .map(|path| (path, maildir))
                        .map_err(|e| e.to_string())
                    }
                    Method::Lmtp(target) => {
                        let key = (target.clone(), sender_of(&p.envelope, i).to_string());
                        match lmtp.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, group)) => group.push(i),
                            None => lmtp.push((key, vec![i])),
                        }
                        continue;
                    }
                    Method::Command { line, timeout } => {
                        let result = run_command(local, p, i, line, user, domain, *timeout);
                        p.record(i, result);
                        continue;
                    }
                },
                // Skipped above: outbound delivery's.
                Address::Remote(_) => continue,
                Address::Pipe { command, alias } => {
                    let (user, domain) = alias.rsplit_once('@').unwrap_or((alias, ""));
                    let result = match CommandLine::parse(command) {
                        Ok(line) => run_command(
                            local,
                            p,
                            i,
                            &line,
                            user,
                            domain,
                            deliver::DEFAULT_COMMAND_TIMEOUT,
                        ),
                        Err(why) => Delivery::Failed(format!("pipe alias {alias}: {why}")),
                    };
                    p.record(i, result);
                    continue;
                }
            };
            match result {
                Ok((path, maildir)) => {
                    if !maildirs.contains(&maildir) {
                        maildirs.push(maildir.clone());
                    }
                    p.written.push((i, path, maildir));
                }
                Err(why) => p.attempt_failed(i, &why),
            }
        }
        for ((target, _), group) in lmtp {
            for (i, result) in group.iter().zip(deliver_lmtp(local, p, &target, &group)) {
                p.record(*i, result);
            }
        }
    }

    // One fsync of new/ per Maildir; a copy is delivered once its name is durable.
    let broken: Vec<(PathBuf, String)> = maildirs
        .into_iter()
        .filter_map(|m| {
            maildir::sync_new(&m)
                .err()
                .map(|e| (m, format!("fsync of new/: {e}")))
        })
        .collect();
    for (_, p) in &mut passes {
        for (i, path, maildir) in std::mem::take(&mut p.written) {
            match broken.iter().find(|(m, _)| *m == maildir) {
                Some((_, why)) => p.attempt_failed(i, why),
                None => {
                    p.envelope.recipients[i].state = RecipientState::Delivered;
                    p.delivered.push((i, format!("path={}", path.display())));
                }
            }
        }
    }

    // Bounces for what failed for good, written before the marks that fail the recipients.
    let mut bounces = Vec::new();
    for (_, p) in &passes {
        // RFC 3461 5.2.2: a recipient with NOTIFY=SUCCESS hears about the delivery too.
        let successes: Vec<proto_core::RecipientReport> = p
            .delivered
            .iter()
            .filter_map(|(i, _)| {
                let r = &p.envelope.recipients[*i];
                if !matches!(r.notify, Some(proto_core::Notify::On { success: true, .. })) {
                    return None;
                }
                let report = proto_core::RecipientReport::new(
                    r.address.forward_path()?,
                    proto_core::DsnAction::Delivered,
                    proto_core::EnhancedStatus::new(2, 0, 0)?,
                );
                Some(bounce::report_for(r, report))
            })
            .collect();
        if p.failed.is_empty() && successes.is_empty() {
            continue;
        }
        let reports = successes
            .into_iter()
            .chain(p.failed.iter().filter_map(|(i, why)| {
                let r = &p.envelope.recipients[*i];
                let to = r.address.forward_path()?;
                let mut report = proto_core::RecipientReport::new(
                    to,
                    proto_core::DsnAction::Failed,
                    // RFC 3463 5.2.0: other or undefined mailbox status.
                    proto_core::EnhancedStatus::new(5, 2, 0)?,
                );
                report.problem = Some(why.clone());
                Some(bounce::report_for(r, report))
            }))
            .collect();
        match local
            .bouncer
            .bounce(&p.id, &p.envelope, reports, std::time::SystemTime::now())
        {
            Ok(Some(b)) => bounces.push(b),
            Ok(None) => {}
            Err(why) => log::event(
                "failed",
                format_args!("id={} reason=\"cannot write the bounce: {why}\"", p.id),
            ),
        }
    }

    // Record the new states (the finished messages go), with one durable commit.
    let changes: Vec<(QueueId, Envelope)> = passes
        .iter()
        .map(|(_, p)| (p.id.clone(), p.envelope.clone()))
        .collect();
    let marked = local
        .store
        .apply(&changes, Owner::Local, &bounces)
        .map_err(|e| e.to_string())
        .and_then(|applied| local.committer.sync_blocking().map(|()| applied));
    let applied = match marked {
        Ok(a) => a,
        Err(why) => {
            for (slot, p) in &passes {
                log::event(
                    "deferred",
                    format_args!("id={} reason=\"cannot record the delivery: {why}\"", p.id),
                );
                outcomes[*slot] = Outcome::Retry(backoff(1));
            }
            return outcomes;
        }
    };
    for (bounce_id, bounce) in &bounces {
        local.dispatch.queued(bounce_id, bounce);
    }
    for ((slot, p), applied) in passes.iter().zip(applied) {
        for (i, detail) in &p.delivered {
            log::event(
                "delivered",
                format_args!(
                    "id={} to=<{}> {detail}",
                    p.id, p.envelope.recipients[*i].address,
                ),
            );
        }
        match applied {
            Applied::Removed => log::event("removed", format_args!("id={}", p.id)),
            Applied::Pending(_) if p.envelope.pending_for(Owner::Local) => {
                outcomes[*slot] = Outcome::Retry(p.retry.unwrap_or_else(|| backoff(1)));
            }
            Applied::Pending(_) | Applied::Gone => {}
        }
    }
    outcomes
}

/// The `Return-Path:`, `Delivered-To:` and `Received:` fields for one recipient, then the
/// fields added on reception.
fn trace_header(envelope: &Envelope, id: &QueueId, to: &Address, by: &str) -> String {
    let mut header = Trace::of(envelope, id.as_str(), by).header(
        &envelope.from.to_string(),
        &to.to_string(),
        envelope.received_time(),
    );
    header.push_str(&envelope.headers);
    header
}

/// The reverse path a recipient's copy carries: its own (SRS) or the message's.
fn sender_of(envelope: &Envelope, i: usize) -> &proto_core::ReversePath {
    envelope.recipients[i]
        .sender
        .as_ref()
        .unwrap_or(&envelope.from)
}

/// Pipes the copy for recipient `i` (a local user or a pipe alias: `user@domain`) into `line`.
fn run_command(
    local: &Local,
    p: &Pass,
    i: usize,
    line: &CommandLine,
    user: &str,
    domain: &str,
    timeout: Duration,
) -> Delivery {
    let to = format!("{user}@{domain}");
    let from = sender_of(&p.envelope, i);
    let mut header = Trace::of(&p.envelope, p.id.as_str(), &local.hostname).header(
        &from.to_string(),
        &to,
        p.envelope.received_time(),
    );
    header.push_str(&p.envelope.headers);
    let message = command::ToLf::new(std::io::Read::chain(
        std::io::Cursor::new(header.into_bytes()),
        local.store.body(&p.id, p.envelope.chunks),
    ));
    let subs = Substitutions::new(from, user, domain);
    // On this blocking thread: the command's pipes and timer are driven here.
    smol::block_on(command::deliver(
        line,
        &subs,
        futures_lite::io::AssertAsync::new(message),
        timeout,
    ))
}

/// Delivers the recipients `group` of one message to the LMTP server `target`, in one
/// transaction; one result per recipient of the group.
fn deliver_lmtp(local: &Local, p: &Pass, target: &LmtpTarget, group: &[usize]) -> Vec<Delivery> {
    let env = &p.envelope;
    let mut job = match env.mail_job(group) {
        Ok(job) => job,
        Err(why) => return vec![Delivery::Failed(why); group.len()],
    };
    // REQUIRETLS (RFC 8689) governs relaying; handing the message to the mailbox server is
    // final delivery.
    job.requiretls = false;
    // One copy for all: our Received: (with a `for` clause when it is for one recipient) and
    // the reception fields; the LMTP server adds Return-Path: and Delivered-To:.
    let one = (group.len() == 1).then(|| env.recipients[group[0]].address.to_string());
    let mut header = Trace::of(env, p.id.as_str(), &local.hostname)
        .received(one.as_deref(), env.received_time());
    header.push_str(&env.headers);
    let message = std::io::Read::chain(
        std::io::Cursor::new(header.into_bytes()),
        local.store.body(&p.id, env.chunks),
    );
    smol::block_on(deliver::lmtp::deliver(
        target,
        &local.hostname,
        job,
        futures_lite::io::AssertAsync::new(message),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::store::{Recipient, TraceRecord};

    /// One message through [`deliver_batch`].
    fn deliver_message(local: &Local, id: &QueueId) -> Outcome {
        deliver_batch(local, std::slice::from_ref(id))[0]
    }

    /// A store under `dir`, with its committer and delivery workers writing to `dir/mail`.
    fn workers_in(dir: &std::path::Path) -> (Store, Local, std::path::PathBuf) {
        let store = Store::open(&dir.join("queue")).expect("open");
        let committer = Committer::start(store.clone()).expect("committer");
        let mail_dir = dir.join("mail");
        let (queue, _ids) = async_channel::unbounded();
        let (remote, _remote_ids) = async_channel::unbounded();
        let domains = dir.join("domains");
        std::fs::create_dir_all(domains.join("example.org")).expect("domains");
        let bouncer = Bouncer {
            store: store.clone(),
            hostname: "mx.example.org".into(),
            recipients: crate::directory::recipients::Recipients::new(
                std::sync::Arc::new(crate::directory::users::UserDb::new(domains)),
                mail_dir.clone(),
                "mx.example.org".into(),
            ),
        };
        let local = Local {
            store: store.clone(),
            committer,
            mail_dir: mail_dir.clone(),
            hostname: "mx.example.org".into(),
            queue: queue.clone(),
            bouncer,
            dispatch: Dispatch {
                local: queue,
                remote,
            },
            mailboxes: Mailboxes::default(),
        };
        (store, local, mail_dir)
    }

    fn local_recipient(user: &str) -> Recipient {
        Recipient::new(Address::Local {
            domain: "example.org".into(),
            user: user.into(),
        })
    }

    #[test]
    fn a_failed_write_defers_only_that_recipient_then_delivery_completes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (store, local, mail_dir) = workers_in(tmp.path());
        let id = QueueId::new();
        let body = b"Subject: t\r\n\r\nhello\r\n";
        store.put_chunk(&id, 0, body).expect("chunk");
        let mut envelope = Envelope::plain(
            "<s@client.test>",
            body.len() as u64,
            1,
            vec![local_recipient("alice"), local_recipient("bob")],
        );
        envelope.trace = TraceRecord {
            helo: "client.test".into(),
            client: "[127.0.0.1]".into(),
            esmtp: true,
            tls: None,
            authenticated: false,
        };
        store.put_envelope(&id, &envelope).expect("envelope");
        // bob's Maildir cannot be created: a file is in the way.
        std::fs::create_dir_all(mail_dir.join("example.org")).expect("mkdir");
        std::fs::write(mail_dir.join("example.org/bob"), b"in the way").expect("write");

        assert_eq!(deliver_message(&local, &id), Outcome::Retry(backoff(1)));
        let after = store.envelope(&id).expect("read").expect("still queued");
        assert_eq!(after.recipients[0].state, RecipientState::Delivered);
        assert_eq!(after.recipients[1].state, RecipientState::Pending);
        assert_eq!(after.recipients[1].attempts, 1);

        std::fs::remove_file(mail_dir.join("example.org/bob")).expect("unblock");
        assert_eq!(deliver_message(&local, &id), Outcome::Done);
        assert_eq!(store.envelope(&id).expect("read"), None, "removed");
        for user in ["alice", "bob"] {
            let new = mail_dir.join("example.org").join(user).join("new");
            let files: Vec<_> = std::fs::read_dir(&new).expect("new/").collect();
            assert_eq!(files.len(), 1, "{user} gets exactly one copy");
            let path = files
                .into_iter()
                .next()
                .expect("one")
                .expect("entry")
                .path();
            let text = std::fs::read_to_string(path).expect("read");
            assert!(
                text.starts_with(&format!(
                    "Return-Path: <s@client.test>\r\nDelivered-To: {user}@example.org\r\n"
                )),
                "{text}"
            );
            assert!(text.ends_with("Subject: t\r\n\r\nhello\r\n"), "{text}");
        }
        // A message that is gone (delivered by an earlier pass) is nothing to do.
        assert_eq!(deliver_message(&local, &id), Outcome::Done);
    }

    /// A recipient that fails for good and one that asked for NOTIFY=SUCCESS: the sender gets
    /// one DSN reporting both, queued in the same commit that fails the first.
    #[test]
    fn failures_and_requested_successes_are_reported_to_the_sender() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (store, local, mail_dir) = workers_in(tmp.path());
        let id = QueueId::new();
        let body = b"Subject: report me\r\n\r\nhello\r\n";
        store.put_chunk(&id, 0, body).expect("chunk");
        let mut alice = local_recipient("alice");
        alice.notify = Some(proto_core::Notify::On {
            success: true,
            failure: true,
            delay: false,
        });
        let mut bob = local_recipient("bob");
        bob.attempts = MAX_ATTEMPTS - 1;
        let envelope = Envelope::plain("<s@client.test>", body.len() as u64, 1, vec![alice, bob]);
        store.put_envelope(&id, &envelope).expect("envelope");
        std::fs::create_dir_all(mail_dir.join("example.org")).expect("mkdir");
        std::fs::write(mail_dir.join("example.org/bob"), b"in the way").expect("write");

        assert_eq!(deliver_message(&local, &id), Outcome::Done);
        assert_eq!(
            store.envelope(&id).expect("read"),
            None,
            "nothing left pending"
        );
        let ids = store.ids().expect("ids");
        assert_eq!(ids.len(), 1, "one DSN queued");
        let dsn = store.envelope(&ids[0]).expect("read").expect("dsn");
        assert_eq!(dsn.from, proto_core::ReversePath::Null);
        assert_eq!(
            dsn.recipients[0].address,
            Address::Remote("s@client.test".parse().expect("mailbox"))
        );
        let mut text = String::new();
        std::io::Read::read_to_string(&mut store.body(&ids[0], dsn.chunks), &mut text)
            .expect("dsn body");
        assert_eq!(text.len() as u64, dsn.size);
        assert!(
            text.contains("Final-Recipient: rfc822; alice@example.org\r\nAction: delivered"),
            "{text}"
        );
        assert!(
            text.contains("Final-Recipient: rfc822; bob@example.org\r\nAction: failed"),
            "{text}"
        );
        assert!(text.contains("Subject: report me"), "{text}");
    }

    #[test]
    fn one_pass_delivers_many_messages_and_removes_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (store, local, mail_dir) = workers_in(tmp.path());
        let mut ids = Vec::new();
        for n in 0..5 {
            let id = QueueId::new();
            let body = format!("Subject: {n}\r\n\r\nbody {n}\r\n");
            store.put_chunk(&id, 0, body.as_bytes()).expect("chunk");
            // Two messages for alice and carol, the rest for alice alone.
            let recipients = if n < 2 {
                vec![local_recipient("alice"), local_recipient("carol")]
            } else {
                vec![local_recipient("alice")]
            };
            let envelope = Envelope::plain("<s@client.test>", body.len() as u64, 1, recipients);
            store.put_envelope(&id, &envelope).expect("envelope");
            ids.push(id);
        }
        assert_eq!(deliver_batch(&local, &ids), vec![Outcome::Done; 5]);
        assert!(store.ids().expect("ids").is_empty(), "all removed");
        for (user, want) in [("alice", 5), ("carol", 2)] {
            let new = mail_dir.join("example.org").join(user).join("new");
            let texts: Vec<String> = std::fs::read_dir(&new)
                .expect("new/")
                .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
                .collect();
            assert_eq!(texts.len(), want, "{user}");
            for n in 0..want {
                let ending = format!("body {n}\r\n");
                let copies = texts.iter().filter(|t| t.ends_with(&ending)).count();
                assert_eq!(copies, 1, "{user}: message {n}");
            }
        }
        // Delivered messages are gone: a second pass has nothing to do.
        assert_eq!(deliver_batch(&local, &ids), vec![Outcome::Done; 5]);
    }

    fn pipe_recipient(command: String) -> Recipient {
        Recipient::new(Address::Pipe {
            command,
            alias: "bob@example.org".into(),
        })
    }

    /// A pipe alias gets the message with the trace fields on stdin, with LF line ends;
    /// `%to%` is the alias.
    #[test]
    fn a_pipe_alias_runs_its_command() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (store, local, _) = workers_in(tmp.path());
        let out = tmp.path().join("piped");
        let id = QueueId::new();
        let body = b"Subject: piped\r\n\r\nhello\r\n";
        store.put_chunk(&id, 0, body).expect("chunk");
        let command = format!(
            "/bin/sh -c 'echo \"$1 $2\" > {0}.args; cat > {0}' sh %to% %from%",
            out.display()
        );
        let mut envelope = Envelope::plain(
            "<s@client.test>",
            body.len() as u64,
            1,
            vec![pipe_recipient(command)],
        );
        envelope.headers = "Authentication-Results: mx.example.org; none\r\n".into();
        store.put_envelope(&id, &envelope).expect("envelope");

        assert_eq!(deliver_message(&local, &id), Outcome::Done);
        assert_eq!(store.envelope(&id).expect("read"), None, "removed");
        let text = std::fs::read_to_string(&out).expect("the command wrote the message");
        assert!(
            text.starts_with(
                "Return-Path: <s@client.test>\nDelivered-To: bob@example.org\nReceived: "
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "Authentication-Results: mx.example.org; none\nSubject: piped\n\nhello\n"
            ),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("piped.args")).expect("args"),
            "bob@example.org s@client.test\n"
        );
    }

    /// Exit 75 defers (the message comes back); any other failure bounces at once.
    #[test]
    fn command_failures_defer_or_bounce_at_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (store, mut local, mail_dir) = workers_in(tmp.path());
        let mut text =
            "[mailboxes]\n\"carol@example.org\" = { command = \"/bin/sh -c 'exit 75'\" }\n"
                .to_string();
        text.push_str("[listeners]\nsmtp = [\"127.0.0.1:25\"]\n");
        let settings =
            crate::config::Settings::parse(tmp.path(), &tmp.path().join("postern.toml"), &text)
                .expect("config");
        local.mailboxes = settings.mailboxes;
        let id = QueueId::new();
        let body = b"Subject: t\r\n\r\nhello\r\n";
        store.put_chunk(&id, 0, body).expect("chunk");
        let envelope = Envelope::plain(
            "<s@client.test>",
            body.len() as u64,
            1,
            vec![
                pipe_recipient("/bin/sh -c 'echo unknown user >&2; exit 67'".into()),
                local_recipient("carol"),
                local_recipient("alice"),
            ],
        );
        store.put_envelope(&id, &envelope).expect("envelope");

        assert_eq!(deliver_message(&local, &id), Outcome::Retry(backoff(1)));
        let after = store
            .envelope(&id)
            .expect("read")
            .expect("carol is pending");
        assert_eq!(after.recipients[0].state, RecipientState::Failed);
        assert_eq!(
            after.recipients[0].attempts, 1,
            "failed at the first attempt"
        );
        assert_eq!(
            after.recipients[0].last_error.as_deref(),
            Some("exit status 67: unknown user")
        );
        assert_eq!(after.recipients[1].state, RecipientState::Pending);
        assert_eq!(after.recipients[1].attempts, 1);
        assert_eq!(after.recipients[2].state, RecipientState::Delivered);
        assert_eq!(
            std::fs::read_dir(mail_dir.join("example.org/alice/new"))
                .expect("alice's Maildir")
                .count(),
            1
        );
        assert!(
            !mail_dir.join("example.org/carol").exists(),
            "carol is not a Maildir"
        );
        let dsns: Vec<_> = store
            .ids()
            .expect("ids")
            .into_iter()
            .filter(|i| *i != id)
            .collect();
        assert_eq!(dsns.len(), 1, "the pipe's failure bounced");
        let dsn = store.envelope(&dsns[0]).expect("read").expect("dsn");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut store.body(&dsns[0], dsn.chunks), &mut text)
            .expect("dsn body");
        assert!(text.contains("exit status 67: unknown user"), "{text}");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cases = [
            (0, 15),
            (1, 15),
            (2, 30),
            (3, 60),
            (8, 1920),
            (9, 3600),
            (50, 3600),
        ];
        for (attempts, secs) in cases {
            assert_eq!(backoff(attempts).as_secs(), secs, "input {attempts}");
        }
    }
}

//! Local delivery workers: from the queue store into Maildirs, LMTP servers and commands.
//!
//! Queue ids arrive on a channel: from sessions once a message is durable, from the startup
//! scan for everything a previous run left pending, and from retry timers. A fixed number of
//! workers ([`WORKERS`]) take ids from it, so deliveries run concurrently with a bound. Each
//! worker pass takes every id waiting (at most [`BATCH`]) and, on a blocking thread, reads the
//! envelopes and, for each recipient still pending and due, streams the body from the store
//! chunk by chunk into the Maildir's `tmp/` ([`crate::deliver::maildir`]); then, for the whole
//! pass, one syncfs per file system makes the copies durable, each is renamed into `new/`, and
//! one more syncfs makes the names durable; only then does it hand
//! every recipient's [`Fate`] to the queue's one tail ([`crate::queue::settle`]), which records
//! them for the whole pass in one store batch made durable by one group commit. A crash
//! between a rename and that commit delivers the copy again after the restart: a duplicate,
//! never a loss.
//!
//! A Maildir write that fails defers the recipient. Its next attempt comes from proto-core's
//! schedule with [`schedule`]'s shorter delays (15 s, doubling, at most an hour: a local
//! problem, a full disk say, is usually fixed sooner than a remote one), and the recipient
//! fails and bounces once the message is older than `[delivery] give_up_after`, as outbound
//! delivery does.
//!
//! Recipients whose `[mailboxes]` entry names another method ([`crate::deliver`]) leave the
//! batched Maildir path: the recipients of one message for one LMTP server go in one LMTP
//! transaction, a command runs once per recipient, and so does the command of a pipe alias
//! ([`Address::Pipe`], where `%to%` is the alias). They run in the same pass, on the same
//! blocking thread, and their fates are recorded in the same batch as the Maildir ones:
//! delivered, deferred (as a failed Maildir write), or failed at once for a permanent failure
//! (an LMTP 5xx reply, a command's exit status other than 0 and 75), which bounces at once.
//!
//! For tests, the environment variable `POSTERN_DELIVERY_PAUSED=1` keeps the workers from
//! starting: messages are accepted and queued but stay pending until a run without it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_channel::Receiver;
use proto_core::{
    EnhancedStatus, ForwardPath, mail::DsnAction, mail::RecipientReport, mail::RetryPolicy,
};

use crate::deliver::command::{self, Substitutions};
use crate::deliver::maildir;
use crate::deliver::{self, CommandLine, Delivery, LmtpTarget, Mailboxes, Method};
use crate::log::{self, Event};
use crate::queue::QueueId;
use crate::queue::bounce::Bouncer;
use crate::queue::commit::Committer;
use crate::queue::dispatch::Dispatch;
use crate::queue::settle::{self, Fate, Recorder, Schedule};
use crate::queue::store::{Address, Applied, Envelope, Owner, RecipientState, Store};
use crate::queue::timers::{Timers, unix_now};
use crate::reception::trace::Trace;

/// How many messages are delivered at the same time.
pub const WORKERS: usize = 2;

/// The most messages one worker delivers in one pass (one fsync of each Maildir's `new/`, one
/// group commit for the marks).
pub const BATCH: usize = 64;

/// The environment variable that pauses delivery (tests): `1` pauses.
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
    pub hostname: crate::config::HostName,
    /// Retry timers, sending on the local workers' channel.
    pub timers: Timers,
    /// Bounces for recipients that fail for good.
    pub bouncer: Bouncer,
    /// Where bounces go for delivery.
    pub dispatch: Dispatch,
    /// `[mailboxes]`: the delivery method of each local recipient.
    pub mailboxes: Mailboxes,
    /// When to retry, and when to give up ([`schedule`]); replaced by a reload.
    pub schedule: std::sync::RwLock<Schedule>,
    /// Passes whose outcome could not be recorded yet: while any wait, nothing is delivered.
    pub backlog: settle::Backlog,
}

impl Local {
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

    /// The schedule in force.
    fn schedule(&self) -> Schedule {
        *self
            .schedule
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a new schedule (a reload of `[delivery] give_up_after`).
    pub fn set_schedule(&self, schedule: Schedule) {
        *self
            .schedule
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = schedule;
    }
}

/// The local retry schedule: proto-core's, from 15 s doubling to at most an hour, giving up
/// after `max_lifetime` seconds in the queue (`[delivery] give_up_after`). No delay warnings.
pub fn schedule(max_lifetime: u64) -> Schedule {
    let mut retry = RetryPolicy::default();
    retry.initial_delay = 15;
    retry.multiplier = 2;
    retry.max_delay = 3600;
    retry.max_lifetime = max_lifetime;
    Schedule {
        retry,
        delay_warning: None,
    }
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
        // An id another worker holds (or one being removed) is left out; it comes back on
        // the channel once that worker is done, so nothing is delivered twice.
        let flights = &local.dispatch.flights;
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(id) = next {
            if flights.begin(&id, Owner::Local) {
                batch.push(id);
            }
            if batch.len() == BATCH {
                break;
            }
            next = ids.try_recv().ok();
        }
        if batch.is_empty() {
            continue;
        }
        let l = local.clone();
        let next = smol::unblock(move || {
            let next = deliver_batch(&l, &batch, unix_now());
            batch.into_iter().zip(next).collect::<Vec<_>>()
        })
        .await;
        for (id, at) in next {
            if let Some(at) = at {
                local.timers.at(&id, at);
            }
            if local.dispatch.flights.end(&id, Owner::Local) {
                let _ = local.dispatch.local.try_send(id);
            }
        }
    }
}

/// Makes the copies written into `tmp/` durable and visible: one syncfs per file system
/// holding `maildirs` for their data, the renames into `new/`, one more syncfs for the names.
/// Returns each copy's outcome, in order: `Err` (why) defers it; a copy whose data could not
/// be synced is removed from `tmp/`.
fn sync_and_publish<'a>(
    maildirs: &[PathBuf],
    copies: impl Iterator<Item = (&'a maildir::Staged, &'a PathBuf)>,
) -> Vec<Result<(), String>> {
    // One Maildir per file system stands for all of them.
    let mut device: Vec<(&PathBuf, Result<u64, String>)> = Vec::new();
    let mut systems: Vec<(u64, &PathBuf)> = Vec::new();
    for m in maildirs {
        let dev = maildir::device_of(m).map_err(|e| format!("stat of the Maildir: {e}"));
        if let Ok(d) = dev
            && !systems.iter().any(|(seen, _)| *seen == d)
        {
            systems.push((d, m));
        }
        device.push((m, dev));
    }
    let sync = |what: &str| -> Vec<(u64, String)> {
        systems
            .iter()
            .filter_map(|(d, m)| {
                maildir::sync_fs(m)
                    .err()
                    .map(|e| (*d, format!("syncfs ({what}): {e}")))
            })
            .collect()
    };
    let problem = |m: &PathBuf, failed: &[(u64, String)]| -> Option<String> {
        match device.iter().find(|(d, _)| *d == m).map(|(_, r)| r) {
            Some(Ok(dev)) => failed
                .iter()
                .find(|(d, _)| d == dev)
                .map(|(_, w)| w.clone()),
            Some(Err(why)) => Some(why.clone()),
            None => Some("not synced".into()),
        }
    };
    let copies: Vec<_> = copies.collect();
    let data = sync("data");
    let mut outcomes: Vec<Result<(), String>> = copies
        .iter()
        .map(|(staged, m)| match problem(m, &data) {
            Some(why) => {
                let _ = std::fs::remove_file(&staged.tmp);
                Err(why)
            }
            None => maildir::publish(staged).map_err(|e| {
                let _ = std::fs::remove_file(&staged.tmp);
                format!("rename into new/: {e}")
            }),
        })
        .collect();
    let names = sync("names");
    for (outcome, (_, m)) in outcomes.iter_mut().zip(&copies) {
        if outcome.is_ok()
            && let Some(why) = problem(m, &names)
        {
            *outcome = Err(why);
        }
    }
    outcomes
}

/// One message in a delivery pass.
struct Pass {
    id: QueueId,
    envelope: Envelope,
    /// Copies written into `tmp/` (recipient index, copy, Maildir), waiting for the syncs.
    written: Vec<(usize, maildir::Staged, PathBuf)>,
    /// What happened to each recipient tried.
    fates: Vec<(usize, Fate)>,
}

impl Pass {
    /// Records the result of a delivery for recipient `i`.
    fn record(&mut self, i: usize, result: Delivery) {
        let to = self.envelope.recipients[i]
            .address
            .forward_path()
            .unwrap_or(ForwardPath::Postmaster);
        let fate = match result {
            // RFC 3463 2.0.0, for a NOTIFY=SUCCESS report.
            Delivery::Delivered(detail) => Fate::Delivered {
                detail,
                report: EnhancedStatus::new(2, 0, 0)
                    .map(|s| RecipientReport::new(to, DsnAction::Delivered, s)),
            },
            // RFC 3463 4.2.0 / 5.2.0: other or undefined mailbox status.
            Delivery::Deferred(why) => Fate::found(to, DsnAction::Delayed, (4, 2, 0), &why),
            Delivery::Failed(why) => Fate::found(to, DsnAction::Failed, (5, 2, 0), &why),
        };
        self.fates.push((i, fate));
    }
}

/// Delivers every due pending recipient of every message in `ids` (blocking) at time `now`
/// (Unix seconds). Returns, per id, when to look at it again (`None`: nothing left for us).
///
/// The order keeps the guarantees: each copy is written to `tmp/`; one syncfs per file
/// system makes all of them durable; each is renamed into `new/`; one more syncfs per file
/// system makes the names durable ([`sync_and_publish`]); only then are the fates recorded (the finished messages removed), all in one store batch made durable by one
/// group commit. A crash anywhere before that commit delivers the pass's copies again after
/// the restart: duplicates, never a loss.
fn deliver_batch(local: &Local, ids: &[QueueId], now: u64) -> Vec<Option<u64>> {
    // Earlier outcomes not recorded yet: record them first, or deliver nothing (a copy
    // delivered now could not be recorded either).
    if local.recorder().flush(Owner::Local).is_err() {
        return vec![Some(now + settle::BACKLOG_RETRY); ids.len()];
    }
    let mut next = vec![None; ids.len()];
    let mut passes: Vec<(usize, Pass)> = Vec::new();
    for (slot, id) in ids.iter().enumerate() {
        match local.store.envelope(id) {
            Ok(Some(envelope)) => passes.push((
                slot,
                Pass {
                    id: id.clone(),
                    envelope,
                    written: Vec::new(),
                    fates: Vec::new(),
                },
            )),
            // Gone: delivered by an earlier pass.
            Ok(None) => {}
            // Damaged (kept) or unreadable for now: looked at again later.
            Err(e) => next[slot] = Some(settle::unreadable(id, &e, now)),
        }
    }

    // Write every due copy into its Maildir's new/; deliver the others by their method.
    let mut maildirs: Vec<PathBuf> = Vec::new();
    for (_, p) in &mut passes {
        // The recipients of this message for each LMTP server (and reverse path), delivered
        // together below.
        let mut lmtp: Vec<((LmtpTarget, String), Vec<usize>)> = Vec::new();
        for i in 0..p.envelope.recipients.len() {
            let r = &p.envelope.recipients[i];
            let due = r.state == RecipientState::Pending && r.next_attempt <= now;
            if !due || !Owner::Local.owns(&r.address) {
                continue;
            }
            let address = p.envelope.recipients[i].address.clone();
            let result = match &address {
                Address::Local { domain, user } => match local.mailboxes.method_for(user, domain) {
                    Method::Maildir => {
                        let header =
                            trace_header(&p.envelope, &p.id, &address, &local.hostname.get());
                        let mut body = local.store.body(&p.id, p.envelope.chunks);
                        let maildir = local.mail_dir.join(domain).join(user);
                        maildir::write_tmp(
                            &maildir,
                            &local.hostname.get(),
                            header.as_bytes(),
                            &mut body,
                        )
                        .map(|staged| (staged, maildir))
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
                Ok((staged, maildir)) => {
                    if !maildirs.contains(&maildir) {
                        maildirs.push(maildir.clone());
                    }
                    p.written.push((i, staged, maildir));
                }
                Err(why) => p.record(i, Delivery::Deferred(why)),
            }
        }
        for ((target, _), group) in lmtp {
            for (i, result) in group.iter().zip(deliver_lmtp(local, p, &target, &group)) {
                p.record(*i, result);
            }
        }
    }

    // The copies' data durable, their names in new/, the names durable: a copy is delivered
    // once its name is.
    let staged: Vec<(usize, usize, &maildir::Staged, &PathBuf)> = passes
        .iter()
        .enumerate()
        .flat_map(|(n, (_, p))| p.written.iter().map(move |(i, s, m)| (n, *i, s, m)))
        .collect();
    let outcomes = sync_and_publish(&maildirs, staged.iter().map(|(_, _, s, m)| (*s, *m)));
    let results: Vec<(usize, usize, Delivery)> = staged
        .iter()
        .zip(outcomes)
        .map(|((n, i, s, _), outcome)| {
            let result = match outcome {
                Ok(()) => Delivery::Delivered(log::Fields::new().field("path", s.new.display())),
                Err(why) => Delivery::Deferred(why),
            };
            (*n, *i, result)
        })
        .collect();
    for (n, i, result) in results {
        passes[n].1.record(i, result);
    }
    for (_, p) in &mut passes {
        p.written.clear();
    }

    // The one tail: new states, bounces, one durable commit, then the log. A message with
    // nothing due comes back when its earliest recipient is.
    let mut tried: Vec<(usize, Pass)> = Vec::new();
    for (slot, p) in passes {
        if p.fates.is_empty() {
            next[slot] = p.envelope.next_attempt(Owner::Local);
        } else {
            tried.push((slot, p));
        }
    }
    let schedule = local.schedule();
    let settled = tried
        .iter_mut()
        .map(|(_, p)| {
            settle::settle(
                &p.id,
                &p.envelope,
                std::mem::take(&mut p.fates),
                now,
                &mut settle::random_fraction,
                &schedule,
            )
        })
        .collect();
    match local.recorder().record(Owner::Local, settled) {
        Ok(applied) => {
            for ((slot, _), applied) in tried.iter().zip(applied) {
                next[*slot] = match applied {
                    Some(Applied::Pending(at)) => at,
                    Some(Applied::Removed | Applied::Gone) => None,
                    // Its bounce could not be written: tried again as stored.
                    None => Some(now + settle::RECORD_RETRY),
                };
            }
        }
        // Kept in the backlog, recorded before anything else is delivered.
        Err(why) => {
            for (slot, p) in &tried {
                log::line(Event::Deferred)
                    .field("id", &p.id)
                    .text("reason", &why)
                    .write();
                next[*slot] = Some(now + settle::BACKLOG_RETRY);
            }
        }
    }
    next
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
    let mut header = Trace::of(&p.envelope, p.id.as_str(), &local.hostname.get()).header(
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
        Err(why) => return vec![Delivery::Failed(why.to_string()); group.len()],
    };
    // REQUIRETLS (RFC 8689) governs relaying; handing the message to the mailbox server is
    // final delivery.
    job.requiretls = false;
    // One copy for all: our Received: (with a `for` clause when it is for one recipient) and
    // the reception fields; the LMTP server adds Return-Path: and Delivered-To:.
    let one = (group.len() == 1).then(|| env.recipients[group[0]].address.to_string());
    let mut header = Trace::of(env, p.id.as_str(), &local.hostname.get())
        .received(one.as_deref(), env.received_time());
    header.push_str(&env.headers);
    let message = std::io::Read::chain(
        std::io::Cursor::new(header.into_bytes()),
        local.store.body(&p.id, env.chunks),
    );
    smol::block_on(deliver::lmtp::deliver(
        target,
        &local.hostname.get(),
        job,
        futures_lite::io::AssertAsync::new(message),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::store::{Recipient, TraceRecord};

    /// A fixed "now" for the passes (Unix seconds).
    const NOW: u64 = 1_780_000_000;

    /// One message through [`deliver_batch`] at `now`: when to look at it again.
    fn deliver_message(local: &Local, id: &QueueId, now: u64) -> Option<u64> {
        deliver_batch(local, std::slice::from_ref(id), now)[0]
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
        let aliases = crate::directory::destinations::AliasCell::new(
            std::sync::Arc::new(crate::directory::aliases::Aliases::new(
                domains.clone(),
                Default::default(),
            )),
            std::sync::Arc::new(proto_core::mail::Srs::new(&[7; 32])),
        );
        let bouncer = Bouncer {
            store: store.clone(),
            hostname: crate::config::HostName::new("mx.example.org"),
            recipients: crate::directory::recipients::Recipients::new(
                std::sync::Arc::new(crate::directory::users::UserDb::new(domains)),
                mail_dir.clone(),
                "mx.example.org".into(),
            ),
            aliases,
        };
        let local = Local {
            store: store.clone(),
            committer,
            mail_dir: mail_dir.clone(),
            hostname: crate::config::HostName::new("mx.example.org"),
            timers: Timers::new(queue.clone()),
            bouncer,
            dispatch: Dispatch::new(queue, remote),
            mailboxes: Mailboxes::default(),
            schedule: std::sync::RwLock::new(schedule(5 * 24 * 3600)),
            backlog: settle::Backlog::default(),
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
        envelope.received_at = NOW;
        store.put_envelope(&id, &envelope).expect("envelope");
        // bob's Maildir cannot be created: a file is in the way.
        std::fs::create_dir_all(mail_dir.join("example.org")).expect("mkdir");
        std::fs::write(mail_dir.join("example.org/bob"), b"in the way").expect("write");

        // The first retry: 15 s later, less at most a tenth of jitter.
        let at = deliver_message(&local, &id, NOW).expect("bob is tried again");
        assert!((NOW + 13..=NOW + 15).contains(&at), "{at}");
        let after = store.envelope(&id).expect("read").expect("still queued");
        assert_eq!(after.recipients[0].state, RecipientState::Delivered);
        assert_eq!(after.recipients[1].state, RecipientState::Pending);
        assert_eq!(after.recipients[1].attempts, 1);
        assert_eq!(after.recipients[1].next_attempt, at);

        std::fs::remove_file(mail_dir.join("example.org/bob")).expect("unblock");
        // Not due yet: nothing is tried, the same time comes back.
        assert_eq!(deliver_message(&local, &id, at - 1), Some(at));
        assert_eq!(deliver_message(&local, &id, at), None);
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
        assert_eq!(deliver_message(&local, &id, at), None);
    }

    /// The copies of alice's Maildir.
    fn copies(mail_dir: &std::path::Path, user: &str) -> usize {
        std::fs::read_dir(mail_dir.join("example.org").join(user).join("new"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// While the store cannot record (every write fails as on a full disk), copies written
    /// once are never written again: the outcomes wait in memory, nothing more is delivered,
    /// and once the store takes writes the outcomes are recorded and the messages leave.
    #[test]
    fn deliveries_that_cannot_be_recorded_are_not_made_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (store, local, mail_dir) = workers_in(tmp.path());
        let body = b"Subject: once\r\n\r\nhello\r\n";
        let ids: Vec<QueueId> = (0..3)
            .map(|_| {
                let id = QueueId::new();
                store.put_chunk(&id, 0, body).expect("chunk");
                let mut e = Envelope::plain(
                    "<s@client.test>",
                    body.len() as u64,
                    1,
                    vec![local_recipient("alice")],
                );
                e.received_at = NOW;
                store.put_envelope(&id, &e).expect("envelope");
                id
            })
            .collect();
        store.sync().expect("sync");

        store.fail_writes(true);
        let next = deliver_batch(&local, &ids, NOW);
        assert_eq!(copies(&mail_dir, "alice"), 3, "delivered once each");
        assert!(local.backlog.is_waiting());
        assert_eq!(next, vec![Some(NOW + settle::BACKLOG_RETRY); 3]);
        // The retries while the store still fails: nothing is delivered again, and a new
        // message waits too.
        let late = QueueId::new();
        for at in [NOW + 5, NOW + 10, NOW + 60, NOW + 3600] {
            let mut all = ids.clone();
            all.push(late.clone());
            let next = deliver_batch(&local, &all, at);
            assert_eq!(next, vec![Some(at + settle::BACKLOG_RETRY); 4]);
            assert_eq!(copies(&mail_dir, "alice"), 3, "at {at}");
        }
        for id in &ids {
            let stored = store.envelope(id).expect("read").expect("still stored");
            assert_eq!(stored.recipients[0].state, RecipientState::Pending);
        }

        store.fail_writes(false);
        let next = deliver_batch(&local, &ids, NOW + 3605);
        assert_eq!(next, vec![None; 3]);
        assert!(!local.backlog.is_waiting());
        assert!(store.ids().expect("ids").is_empty(), "recorded and removed");
        assert_eq!(copies(&mail_dir, "alice"), 3, "no copy more");
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
        let bob = local_recipient("bob");
        let mut envelope =
            Envelope::plain("<s@client.test>", body.len() as u64, 1, vec![alice, bob]);
        // Queued longer than the lifetime: bob's failed write is the last attempt.
        envelope.received_at = NOW - 5 * 24 * 3600;
        store.put_envelope(&id, &envelope).expect("envelope");
        std::fs::create_dir_all(mail_dir.join("example.org")).expect("mkdir");
        std::fs::write(mail_dir.join("example.org/bob"), b"in the way").expect("write");

        assert_eq!(deliver_message(&local, &id, NOW), None);
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
        // RFC 3463 5.4.7: delivery time expired, with what the last attempt ran into.
        assert!(text.contains("Status: 5.4.7"), "{text}");
        assert!(
            text.contains("gave up after 1 attempts over 5 days"),
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
        assert_eq!(deliver_batch(&local, &ids, NOW), vec![None; 5]);
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
        assert_eq!(deliver_batch(&local, &ids, NOW), vec![None; 5]);
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

        assert_eq!(deliver_message(&local, &id, NOW), None);
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
        let mut envelope = Envelope::plain(
            "<s@client.test>",
            body.len() as u64,
            1,
            vec![
                pipe_recipient("/bin/sh -c 'echo unknown user >&2; exit 67'".into()),
                local_recipient("carol"),
                local_recipient("alice"),
            ],
        );
        envelope.received_at = NOW;
        store.put_envelope(&id, &envelope).expect("envelope");

        assert!(
            deliver_message(&local, &id, NOW).is_some(),
            "carol is retried"
        );
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

    /// The local schedule: 15 s doubling up to an hour, through proto-core's function.
    #[test]
    fn the_local_schedule_doubles_from_15_s_to_an_hour() {
        let schedule = schedule(5 * 24 * 3600);
        let cases = [(1, 15), (2, 30), (3, 60), (8, 1920), (9, 3600), (50, 3600)];
        for (attempts, secs) in cases {
            let at = proto_core::mail::next_attempt(NOW, NOW, attempts, 0.0, &schedule.retry);
            assert_eq!(
                at,
                proto_core::mail::RetryDecision::RetryAt(NOW + secs),
                "attempts {attempts}"
            );
        }
        assert_eq!(
            proto_core::mail::next_attempt(NOW, NOW - 5 * 24 * 3600, 3, 0.0, &schedule.retry),
            proto_core::mail::RetryDecision::GiveUp
        );
    }
}

//! The tail every delivery shares: what happened to each recipient ([`Fate`]) becomes the
//! recipient's new state, its next attempt, the sender's DSN and the log lines, recorded in
//! one place for every delivery method.
//!
//! A delivery method (Maildir, LMTP, a command, SMTP) only says, per recipient, delivered,
//! deferred or failed. Then:
//!
//! 1. [`settle`] (pure: the time and the jitter are arguments) applies the fates to a copy of
//!    the envelope: a deferred recipient gets its next attempt from proto-core's schedule
//!    ([`proto_core::mail::next_attempt`]), or fails for good (RFC 3463 4.4.7, reported as 5.4.7)
//!    once the message is older than the policy's lifetime; a delay warning goes out once;
//!    successes are reported when NOTIFY=SUCCESS asks for it (RFC 3461 section 5.2.2).
//! 2. [`Recorder::record`] writes the DSNs, applies the new states in one store batch, makes
//!    it durable with one group commit, hands the DSNs to their workers, and only then logs
//!    what happened (`delivered`, `deferred`, `failed`, `removed`): a line never claims what
//!    the queue does not hold.
//!
//! A message whose DSN cannot be written is left out of the batch: its recipients stay as
//! stored and are tried again (at worst a copy is delivered twice, never lost or failed
//! without its bounce).
//!
//! When the store cannot record at all (a full disk, a failed fsync), the settled passes are
//! kept in memory ([`Backlog`]) and recorded before anything else, and no delivery starts
//! while any wait: a copy delivered now could not be recorded either, and every retry of the
//! stored envelope would deliver it once more. The `store` log line says when delivery stops
//! and when it resumes. (A crash while passes wait delivers their copies again after the
//! restart: duplicates, never a loss.)

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use proto_core::{
    EnhancedStatus, ForwardPath, mail::DsnAction, mail::DsnDate, mail::RecipientReport,
    mail::RetryDecision, mail::RetryPolicy,
};

use crate::log::{self, Event};
use crate::queue::QueueId;
use crate::queue::bounce::{self, Bouncer};
use crate::queue::commit::Committer;
use crate::queue::dispatch::Dispatch;
use crate::queue::store::{Applied, Envelope, Owner, Recipient, RecipientState, Store, StoreError};

/// What happened to one recipient in one delivery attempt.
#[derive(Debug, Clone)]
pub enum Fate {
    /// Delivered. `detail` is the log's account of where (`path=...`, `relay=... reply=...`);
    /// `report` is the success report to send when the recipient asked for one, `None` when
    /// the next hop takes that job over (it announced DSN).
    Delivered {
        /// Where it went, as log fields.
        detail: log::Fields,
        /// The report for NOTIFY=SUCCESS, if it is ours to send.
        report: Option<RecipientReport>,
    },
    /// Not now: tried again later, or failed once the message is too old.
    Deferred {
        /// What went wrong.
        why: String,
        /// The report, used if a delay warning or the final failure is sent.
        report: RecipientReport,
    },
    /// Failed for good: bounced now.
    Failed {
        /// What went wrong.
        why: String,
        /// The report for the DSN.
        report: RecipientReport,
    },
}

impl Fate {
    /// A result found on our side, with no reply to quote (no route, a local mailbox that
    /// cannot be written, a command's exit status): `Failed` for [`DsnAction::Failed`], else
    /// `Deferred`. `status` is its RFC 3463 code (4.0.0 or 5.0.0 if it is not a valid one).
    pub fn found(to: ForwardPath, action: DsnAction, status: (u8, u16, u16), why: &str) -> Fate {
        let failed = action == DsnAction::Failed;
        let status = EnhancedStatus::new(status.0, status.1, status.2).unwrap_or(if failed {
            PERMANENT
        } else {
            TEMPORARY
        });
        let mut report = RecipientReport::new(to, action, status);
        report.problem = Some(why.to_string());
        let why = why.to_string();
        if failed {
            Fate::Failed { why, report }
        } else {
            Fate::Deferred { why, report }
        }
    }
}

/// 4.0.0: a temporary failure of no more precise kind.
const TEMPORARY: EnhancedStatus = match EnhancedStatus::new(4, 0, 0) {
    Some(s) => s,
    None => panic!("4.0.0 is a valid status"),
};

/// 5.0.0: a permanent failure of no more precise kind.
const PERMANENT: EnhancedStatus = match EnhancedStatus::new(5, 0, 0) {
    Some(s) => s,
    None => panic!("5.0.0 is a valid status"),
};

/// How long a worker waits before looking again at a message whose pass could not be
/// recorded, or whose envelope could not be read for a passing reason (I/O).
pub const RECORD_RETRY: u64 = 60;

/// How often a worker tries again to record the passes waiting in its [`Backlog`] (nothing
/// is delivered meanwhile, so trying costs one store write).
pub const BACKLOG_RETRY: u64 = 5;

/// How long a worker waits before looking again at a damaged envelope (kept as it is).
pub const DAMAGED_RETRY: u64 = 3600;

/// A message whose envelope could not be read at `now`: logged (`damaged` for a record that
/// does not decode, `deferred` for a store error), and when to look at it again.
pub fn unreadable(id: &QueueId, error: &StoreError, now: u64) -> u64 {
    match error {
        StoreError::Corrupt { .. } => {
            log::line(Event::Damaged)
                .field("id", id)
                .text("reason", error)
                .write();
            now + DAMAGED_RETRY
        }
        _ => {
            log::line(Event::Deferred)
                .field("id", id)
                .text("reason", error)
                .write();
            now + RECORD_RETRY
        }
    }
}

/// When to try again and when to warn: one schedule per kind of delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The retry schedule (proto-core's).
    pub retry: RetryPolicy,
    /// Warn the sender once a message has waited this long (`None`: never).
    pub delay_warning: Option<Duration>,
}

/// One message's settled pass: its new envelope, the reports for the sender, and the log
/// lines to write once it is recorded.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The message.
    pub id: QueueId,
    /// The envelope with the new recipient states (the message-level fields a DSN describes
    /// are never changed here).
    pub envelope: Envelope,
    /// What the sender is told.
    reports: Vec<RecipientReport>,
    /// Its log lines, written when it is first recorded ([`first_lines`]).
    events: Vec<log::Line>,
}

/// Who a log line is about: `to=<address>`; `orig_to=` the address the message was sent to
/// when an alias or the catch-all led here (its ORCPT); `sender=` the reverse path used for
/// this recipient when it is not the message's own (the SRS address of a forwarded copy).
fn recipient_fields(r: &Recipient) -> log::Fields {
    let orig = r
        .orcpt
        .as_ref()
        .map(|(_, address)| address)
        .filter(|address| !address.eq_ignore_ascii_case(&r.address.to_string()));
    log::Fields::new()
        .field("to", format_args!("<{}>", r.address))
        .field_opt("orig_to", orig.map(|a| format!("<{a}>")))
        .field_opt("sender", r.sender.as_ref())
}

/// Applies `fates` (recipient index, fate) to a copy of `envelope`. `now` is in seconds
/// since the Unix epoch; `jitter` gives a number in `0.0..1.0` for each retry.
pub fn settle(
    id: &QueueId,
    envelope: &Envelope,
    fates: Vec<(usize, Fate)>,
    now: u64,
    jitter: &mut dyn FnMut() -> f64,
    schedule: &Schedule,
) -> Settled {
    let mut changed = envelope.clone();
    let mut reports = Vec::new();
    let mut events = Vec::new();
    for (i, fate) in fates {
        let r = &mut changed.recipients[i];
        match fate {
            Fate::Delivered { detail, report } => {
                r.state = RecipientState::Delivered;
                let asked = matches!(r.notify, Some(proto_core::Notify::On { success: true, .. }));
                if let Some(report) = report.filter(|_| asked) {
                    reports.push(bounce::report_for(r, report));
                }
                events.push(
                    log::line(Event::Delivered)
                        .field("id", id)
                        .and(&recipient_fields(r))
                        .and(&detail),
                );
            }
            Fate::Failed { why, report } => {
                r.attempts += 1;
                r.state = RecipientState::Failed;
                r.last_error = Some(why.clone());
                events.push(
                    log::line(Event::Failed)
                        .field("id", id)
                        .and(&recipient_fields(r))
                        .field("attempts", r.attempts)
                        .text("reason", &why),
                );
                reports.push(bounce::report_for(r, report));
            }
            Fate::Deferred { why, mut report } => {
                r.attempts += 1;
                r.last_error = Some(why.clone());
                let decision = proto_core::mail::next_attempt(
                    now,
                    envelope.received_at,
                    r.attempts,
                    jitter(),
                    &schedule.retry,
                );
                match decision {
                    RetryDecision::RetryAt(at) => {
                        r.next_attempt = at;
                        // A delay warning, once, when the message has waited long enough.
                        if let Some(after) = schedule.delay_warning
                            && !r.delay_warned
                            && now >= envelope.received_at.saturating_add(after.as_secs())
                        {
                            r.delay_warned = true;
                            report.action = DsnAction::Delayed;
                            report.last_attempt = Some(DsnDate::from_unix(now as i64));
                            report.will_retry_until = Some(DsnDate::from_unix(
                                envelope
                                    .received_at
                                    .saturating_add(schedule.retry.max_lifetime)
                                    as i64,
                            ));
                            reports.push(bounce::report_for(r, report));
                        }
                        events.push(
                            log::line(Event::Deferred)
                                .field("id", id)
                                .and(&recipient_fields(r))
                                .field("attempts", r.attempts)
                                .field("retry_in", format_args!("{}s", at.saturating_sub(now)))
                                .text("reason", &why),
                        );
                    }
                    _ => {
                        r.state = RecipientState::Failed;
                        events.push(
                            log::line(Event::Failed)
                                .field("id", id)
                                .and(&recipient_fields(r))
                                .field("attempts", r.attempts)
                                .text("reason", format_args!("gave up: {why}")),
                        );
                        // RFC 3463 4.4.7: delivery time expired; reported as a failure.
                        report.action = DsnAction::Failed;
                        report.status = EnhancedStatus::new(5, 4, 7).unwrap_or(report.status);
                        report.problem = Some(format!(
                            "gave up after {} attempts over {}: {why}",
                            r.attempts,
                            human_duration(now.saturating_sub(envelope.received_at))
                        ));
                        reports.push(bounce::report_for(r, report));
                    }
                }
            }
        }
    }
    Settled {
        id: id.clone(),
        envelope: changed,
        reports,
        events,
    }
}

/// Settled passes that could not be recorded yet, oldest first (see the module doc). One per
/// kind of worker.
#[derive(Debug, Default)]
pub struct Backlog {
    passes: Mutex<Vec<Settled>>,
}

impl Backlog {
    /// Whether any pass waits to be recorded.
    pub fn is_waiting(&self) -> bool {
        !self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Settled>> {
        self.passes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What recording needs: the store, its committer, the bouncer and the dispatcher.
#[derive(Debug)]
pub struct Recorder<'a> {
    /// The queue store.
    pub store: &'a Store,
    /// Group commit.
    pub committer: &'a Committer,
    /// DSNs.
    pub bouncer: &'a Bouncer,
    /// Where DSNs go once durable.
    pub dispatch: &'a Dispatch,
    /// This worker kind's passes not recorded yet.
    pub backlog: &'a Backlog,
}

/// Why a pass could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("cannot record the delivery: {0}")]
pub struct RecordError(String);

impl Recorder<'_> {
    /// Records settled passes of `owner`'s recipients (blocking): first those waiting in the
    /// backlog, then `passes`: their log lines (the first time), DSNs, one store batch, one
    /// durable commit, then the DSNs dispatched and the `removed` lines written. Returns, per pass of `passes` in order, what the
    /// store kept of the message (`None`: left out, because its DSN could not be written; it
    /// is tried again as stored). On an error nothing is recorded and every pass waits in the
    /// backlog: the caller must not deliver its messages again before [`Recorder::flush`]
    /// succeeds.
    pub fn record(
        &self,
        owner: Owner,
        passes: Vec<Settled>,
    ) -> Result<Vec<Option<Applied>>, RecordError> {
        let mut waiting = self.backlog.lock();
        let earlier = waiting.len();
        let mut all = std::mem::take(&mut *waiting);
        all.extend(passes);
        for p in &mut all {
            for line in first_lines(p) {
                line.write();
            }
        }
        match self.record_all(owner, &all) {
            Ok(mut applied) => {
                if earlier > 0 {
                    log::line(Event::Store)
                        .text(
                            "msg",
                            format_args!(
                                "delivery resumed: the outcomes of {earlier} earlier deliveries \
                                 are recorded"
                            ),
                        )
                        .write();
                }
                Ok(applied.split_off(earlier))
            }
            Err(why) => {
                if earlier == 0 {
                    log::line(Event::Store)
                        .text(
                            "problem",
                            format_args!(
                                "delivery stopped: {why}; {} outcomes are kept in memory \
                                 and recorded once the store takes writes again",
                                all.len()
                            ),
                        )
                        .write();
                }
                *waiting = all;
                Err(why)
            }
        }
    }

    /// Records what waits in the backlog, if anything: `Ok` when nothing waits any more and
    /// deliveries may start.
    pub fn flush(&self, owner: Owner) -> Result<(), RecordError> {
        if !self.backlog.is_waiting() {
            return Ok(());
        }
        self.record(owner, Vec::new()).map(drop)
    }

    /// [`Recorder::record`] without the backlog.
    fn record_all(
        &self,
        owner: Owner,
        passes: &[Settled],
    ) -> Result<Vec<Option<Applied>>, RecordError> {
        let generation = self.store.generation();
        let mut bounces = Vec::new();
        let mut kept = Vec::with_capacity(passes.len());
        for p in passes {
            if p.reports.is_empty() {
                kept.push(Some(p));
                continue;
            }
            match self
                .bouncer
                .bounce(&p.id, &p.envelope, p.reports.clone(), SystemTime::now())
            {
                Ok(Some(b)) => bounces.push(b),
                Ok(None) => {}
                Err(why) => {
                    log::line(Event::Deferred)
                        .field("id", &p.id)
                        .text(
                            "reason",
                            format_args!("cannot write the bounce: {why}; tried again"),
                        )
                        .write();
                    kept.push(None);
                    continue;
                }
            }
            kept.push(Some(p));
        }
        let changes: Vec<(QueueId, Envelope)> = kept
            .iter()
            .flatten()
            .map(|p| (p.id.clone(), p.envelope.clone()))
            .collect();
        let durable = self
            .store
            .apply(&changes, owner, &bounces)
            .map_err(|e| RecordError(e.to_string()))
            .and_then(|applied| {
                self.committer
                    .sync_blocking()
                    .map_err(|e| RecordError(e.to_string()))?;
                // Applied to an opening of the store that a failed write has since closed.
                if self.store.generation() != generation {
                    return Err(RecordError(StoreError::Reopened.to_string()));
                }
                Ok(applied)
            });
        let applied = match durable {
            Ok(applied) => applied,
            Err(why) => {
                // The bounces' bodies are written again with the next try.
                for (bounce_id, bounce) in &bounces {
                    let _ = self.store.discard_chunks(bounce_id, bounce.chunks);
                }
                return Err(why);
            }
        };
        for (bounce_id, bounce) in &bounces {
            self.dispatch.queued(bounce_id, bounce);
        }
        let mut applied = applied.into_iter();
        let mut out = Vec::with_capacity(kept.len());
        for p in kept {
            let Some(p) = p else {
                out.push(None);
                continue;
            };
            let a = applied.next().unwrap_or(Applied::Gone);
            if let Some(line) = removed_line(p, &a) {
                line.write();
            }
            out.push(Some(a));
        }
        Ok(out)
    }
}

/// A pass's log lines (`delivered`, `deferred`, `failed`), the first time only. They tell
/// what the delivery did, so they are written before the pass's store write, whatever becomes
/// of it: a crash during the write (the fsync is the long part) leaves lines for a delivery
/// that happened rather than a delivery without lines, a message the store already lost
/// (an earlier write that reported a failure reached the journal before the store was opened
/// again) still has its lines, and a pass recorded again from the backlog is not logged twice.
fn first_lines(p: &mut Settled) -> Vec<log::Line> {
    std::mem::take(&mut p.events)
}

/// The `removed` line, once the store write that removed the message is durable.
fn removed_line(p: &Settled, applied: &Applied) -> Option<log::Line> {
    (*applied == Applied::Removed).then(|| log::line(Event::Removed).field("id", &p.id))
}

/// A random number in `0.0..1.0`, for retry jitter.
pub fn random_fraction() -> f64 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// `secs` for a person: `2 days 3 h`, `4 h 5 min`, `6 min`, `7 s`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{} days {} h", s / 86_400, (s % 86_400) / 3600),
        s if s >= 3600 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use proto_core::{ForwardPath, Notify};

    use super::*;
    use crate::queue::store::{Address, Recipient};

    const NOW: u64 = 1_780_000_000;

    fn envelope(recipients: usize) -> Envelope {
        let rs = (0..recipients)
            .map(|n| {
                Recipient::new(Address::Remote(
                    format!("r{n}@remote.test").parse().expect("mailbox"),
                ))
            })
            .collect();
        let mut e = Envelope::plain("<s@client.test>", 10, 1, rs);
        e.received_at = NOW - 100;
        e
    }

    fn report(
        e: &Envelope,
        i: usize,
        action: DsnAction,
        status: (u8, u16, u16),
    ) -> RecipientReport {
        let to = e.recipients[i]
            .address
            .forward_path()
            .unwrap_or(ForwardPath::Postmaster);
        let status = EnhancedStatus::new(status.0, status.1, status.2).expect("status");
        RecipientReport::new(to, action, status)
    }

    fn schedule() -> Schedule {
        let mut retry = RetryPolicy::default();
        retry.max_lifetime = 1000;
        Schedule {
            retry,
            delay_warning: Some(Duration::from_secs(50)),
        }
    }

    #[test]
    fn each_fate_sets_the_state_the_schedule_and_the_reports() {
        let mut e = envelope(4);
        e.recipients[0].notify = Some(Notify::On {
            success: true,
            failure: true,
            delay: true,
        });
        let fates = vec![
            (
                0,
                Fate::Delivered {
                    detail: log::Fields::new().field("path", "/x"),
                    report: Some(report(&e, 0, DsnAction::Delivered, (2, 0, 0))),
                },
            ),
            (
                1,
                Fate::Delivered {
                    detail: log::Fields::new().field("path", "/y"),
                    report: Some(report(&e, 1, DsnAction::Delivered, (2, 0, 0))),
                },
            ),
            (
                2,
                Fate::Failed {
                    why: "550 no such user".into(),
                    report: report(&e, 2, DsnAction::Failed, (5, 1, 1)),
                },
            ),
            (
                3,
                Fate::Deferred {
                    why: "451 try later".into(),
                    report: report(&e, 3, DsnAction::Delayed, (4, 0, 0)),
                },
            ),
        ];
        let id = QueueId::new();
        let s = settle(&id, &e, fates, NOW, &mut || 0.0, &schedule());
        let states: Vec<_> = s.envelope.recipients.iter().map(|r| r.state).collect();
        assert_eq!(
            states,
            [
                RecipientState::Delivered,
                RecipientState::Delivered,
                RecipientState::Failed,
                RecipientState::Pending
            ]
        );
        // The deferred one: 300 s (the default first delay), a delay warning (waited 100 s,
        // more than the 50 s asked), its attempt counted.
        let r3 = &s.envelope.recipients[3];
        assert_eq!((r3.attempts, r3.next_attempt), (1, NOW + 300));
        assert!(r3.delay_warned);
        // Reported: r0's success (it asked), r2's failure, r3's delay; not r1's success.
        let reported: Vec<_> = s
            .reports
            .iter()
            .map(|r| (r.recipient.to_string(), r.action))
            .collect();
        assert_eq!(
            reported,
            [
                ("<r0@remote.test>".to_string(), DsnAction::Delivered),
                ("<r2@remote.test>".to_string(), DsnAction::Failed),
                ("<r3@remote.test>".to_string(), DsnAction::Delayed),
            ]
        );
        let events: Vec<_> = s.events.iter().map(|l| l.event().name()).collect();
        assert_eq!(events, ["delivered", "delivered", "failed", "deferred"]);
        assert!(
            s.events[3]
                .text_without_time()
                .contains("attempts=1 retry_in=300s"),
            "{:?}",
            s.events
        );
        // Only recipients change: the message-level fields the DSN describes are the original's.
        let mut rest = s.envelope.clone();
        rest.recipients.clone_from(&e.recipients);
        assert_eq!(rest, e);
    }

    /// A pass's lines come once, whatever the store write does (a pass recorded again from
    /// the backlog, or whose message is already gone, is not logged twice or skipped); only
    /// a removal adds `removed`.
    #[test]
    fn a_pass_is_logged_once_and_removed_only_when_removed() {
        let e = envelope(1);
        let id = QueueId::new();
        let fates = vec![(
            0,
            Fate::Delivered {
                detail: log::Fields::new().field("path", "/x"),
                report: None,
            },
        )];
        let mut s = settle(&id, &e, fates, NOW, &mut || 0.5, &schedule());
        let text = |lines: Vec<log::Line>| -> Vec<String> {
            lines.iter().map(|l| l.text_without_time()).collect()
        };
        let delivered = format!("delivered id={id} to=<{}> path=/x", e.recipients[0].address);
        assert_eq!(text(first_lines(&mut s)), [delivered]);
        assert!(first_lines(&mut s).is_empty(), "logged once");
        assert!(removed_line(&s, &Applied::Gone).is_none());
        assert_eq!(
            removed_line(&s, &Applied::Removed).map(|l| l.text_without_time()),
            Some(format!("removed id={id}"))
        );
    }

    #[test]
    fn a_deferral_past_the_lifetime_fails_with_5_4_7() {
        let mut e = envelope(1);
        e.received_at = NOW - 1000;
        e.recipients[0].delay_warned = true;
        let fates = vec![(
            0,
            Fate::Deferred {
                why: "451 try later".into(),
                report: report(&e, 0, DsnAction::Delayed, (4, 0, 0)),
            },
        )];
        let s = settle(&QueueId::new(), &e, fates, NOW, &mut || 0.5, &schedule());
        assert_eq!(s.envelope.recipients[0].state, RecipientState::Failed);
        assert_eq!(s.reports.len(), 1);
        assert_eq!(s.reports[0].action, DsnAction::Failed);
        assert_eq!(s.reports[0].status.to_string(), "5.4.7");
        assert_eq!(
            s.reports[0].problem.as_deref(),
            Some("gave up after 1 attempts over 16 min: 451 try later")
        );
        assert!(
            s.events[0]
                .text_without_time()
                .contains("reason=\"gave up: 451 try later\"")
        );
    }

    #[test]
    fn a_delay_warning_goes_out_once() {
        let mut e = envelope(1);
        e.recipients[0].delay_warned = true;
        let fates = vec![(
            0,
            Fate::Deferred {
                why: "451".into(),
                report: report(&e, 0, DsnAction::Delayed, (4, 0, 0)),
            },
        )];
        let s = settle(&QueueId::new(), &e, fates, NOW, &mut || 0.0, &schedule());
        assert!(s.reports.is_empty(), "already warned");
        assert_eq!(s.envelope.recipients[0].state, RecipientState::Pending);
    }
}

//! Delivery status notifications: composing the bounce (or delay warning, or success report)
//! that goes back to a message's sender. Pure: no clock, no randomness, no I/O.
//!
//! A DSN is a `multipart/report; report-type=delivery-status` message
//! ([RFC 3464](https://www.rfc-editor.org/rfc/rfc3464), [RFC 6522](https://www.rfc-editor.org/rfc/rfc6522))
//! with three parts: a `text/plain` explanation for people, a `message/delivery-status`
//! part for programs, and the returned content: `text/rfc822-headers` (the original headers,
//! the default and `RET=HDRS`) or `message/rfc822` (the whole original, `RET=FULL`).
//! Which recipients are reported follows the DSN SMTP extension
//! ([RFC 3461](https://www.rfc-editor.org/rfc/rfc3461)): NOTIFY per recipient, RET and ENVID
//! per message.
//!
//! # Use
//!
//! 1. Build a [`DsnRequest`]: our host name, the [`OriginalEnvelope`], one
//!    [`RecipientReport`] per recipient whose fate is being reported, the date, a
//!    [`MessageId`] and a MIME [`Boundary`] (the caller makes these unique: this module has
//!    no randomness).
//! 2. [`compose`] it. It returns [`NoDsn`] when nothing may be sent (null reverse path, or
//!    NOTIFY rules out every recipient), otherwise a [`Dsn`] with the envelope to send it
//!    with (null sender, the original sender as recipient).
//! 3. Write [`Dsn::prefix`], then the original message through a [`ReturnedContent`]
//!    (from [`Dsn::returned_content`]), chunk by chunk, until it is
//!    [done](ReturnedContent::is_done) or the message ends; then
//!    [`ReturnedContent::finish`], then [`Dsn::suffix`]. With `RET=HDRS` the copier stops at
//!    the end of the header section, so the caller can stop reading: a 50 MB original is never
//!    held in memory either way.
//!
//! ```
//! use proto_core::mail::{
//!     Boundary, DsnAction, DsnDate, DsnRequest, MessageId, OriginalEnvelope, RecipientReport,
//!     compose,
//! };
//! use proto_core::{Domain, EnhancedStatus, ForwardPath, Reply, ReplyCode, ReversePath};
//!
//! let envelope = OriginalEnvelope::new(
//!     ReversePath::parse("alice@example.com").unwrap(),
//!     DsnDate::from_unix(1_700_000_000),
//! );
//! let mut bob = RecipientReport::new(
//!     ForwardPath::parse("bob@example.org").unwrap(),
//!     DsnAction::Failed,
//!     EnhancedStatus::new(5, 1, 1).unwrap(),
//! );
//! bob.diagnostic = Some(Reply::of(ReplyCode::MAILBOX_UNAVAILABLE, (5, 1, 1), "No such user"));
//! let request = DsnRequest::new(
//!     Domain::parse("mx.example.com").unwrap(),
//!     envelope,
//!     vec![bob],
//!     DsnDate::from_unix(1_700_000_600),
//!     MessageId::new("dsn.1@mx.example.com").unwrap(),
//!     Boundary::new("b0undary").unwrap(),
//! );
//! let dsn = compose(&request).unwrap();
//! let original: &[u8] = b"Subject: hi\r\n\r\nthe body\r\n";
//! let mut out = dsn.prefix().to_vec();
//! let mut copier = dsn.returned_content();
//! for chunk in original.chunks(4) {
//!     if copier.is_done() {
//!         break; // RET=HDRS: the rest of the original is not needed
//!     }
//!     copier.feed(chunk, &mut out);
//! }
//! copier.finish(&mut out);
//! out.extend_from_slice(dsn.suffix());
//! let text = String::from_utf8(out).unwrap();
//! assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user\r\n"));
//! assert!(text.ends_with("Subject: hi\r\n\r\n--b0undary--\r\n"));
//! assert!(!text.contains("the body"));
//! ```

use std::fmt::Write as _;

use crate::address::{Domain, ForwardPath, Mailbox, ReversePath};
use crate::client_session::{ClientError, FailureReason, RecipientResult, RecipientStatus};
use crate::command::{Body, Notify, OriginalRecipient, Ret};
use crate::reply::{EnhancedStatus, Reply, ReplyClass};

/// The longest line a message may carry, without its CRLF (RFC 5322 section 2.1.1:
/// "Each line of characters MUST be no more than 998 characters ... excluding the CRLF").
const MAX_LINE: usize = 998;
/// Where header fields are folded when whitespace allows (RFC 5322 section 2.1.1:
/// "each line of characters SHOULD be no more than 78 characters").
const FOLD_AT: usize = 78;

/// The Action field of a per-recipient block (RFC 3464 section 2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DsnAction {
    /// `failed`: the message could not be delivered and will not be retried.
    Failed,
    /// `delayed`: not delivered yet, still being retried (a delay warning).
    Delayed,
    /// `delivered`: delivered to the recipient's mailbox.
    Delivered,
    /// `relayed`: handed to a next hop that does not do DSNs; no further notice will come.
    Relayed,
    /// `expanded`: delivered to an alias or list and resent to its members.
    Expanded,
}

/// Which conditions are reported for a recipient that gave no NOTIFY parameter.
///
/// RFC 3461 section 4.1 leaves the choice between acting as NOTIFY=FAILURE and as
/// NOTIFY=FAILURE,DELAY to the MTA (paraphrased).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum DefaultNotify {
    /// Act as `NOTIFY=FAILURE`: no delay warnings unless asked for.
    Failure,
    /// Act as `NOTIFY=FAILURE,DELAY` (Postfix's behaviour when delay warnings are enabled).
    #[default]
    FailureAndDelay,
}

/// A date for a header or DSN field, already in RFC 5322 section 3.3 `date-time` form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DsnDate(String);

/// A Message-ID (without angle brackets), made unique by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageId(String);

/// A MIME multipart boundary (RFC 2046 section 5.1.1), chosen by the caller: make it
/// unguessable (random per DSN), as the original's author should not be able to predict it;
/// [`ReturnedContent`] breaks it up anyway if the original contains it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Boundary(String);

/// What is known of the message being reported on, from its SMTP transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OriginalEnvelope {
    /// `MAIL FROM`: the DSN goes here. Null means no DSN, ever.
    pub reverse_path: ReversePath,
    /// `ENVID=` (xtext-decoded), echoed as Original-Envelope-Id.
    pub envid: Option<String>,
    /// `RET=`: how much of the original to return; `None` returns the headers.
    pub ret: Option<Ret>,
    /// When we received the message (Arrival-Date).
    pub arrival_date: DsnDate,
    /// `BODY=` of the original: with 8BITMIME or BINARYMIME the returned content may carry
    /// 8-bit octets, so its part is labelled `8bit` and the DSN is sent with `BODY=8BITMIME`.
    pub body: Option<Body>,
    /// `SMTPUTF8` on the original: its headers may carry UTF-8.
    pub smtputf8: bool,
}

/// The fate of one recipient, as reported in the DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecipientReport {
    /// The recipient as we tried it (Final-Recipient).
    pub recipient: ForwardPath,
    /// `ORCPT=` from the RCPT command (Original-Recipient).
    pub orcpt: Option<OriginalRecipient>,
    /// `NOTIFY=` from the RCPT command.
    pub notify: Option<Notify>,
    /// What happened.
    pub action: DsnAction,
    /// The RFC 3463 status (e.g. 5.1.1; 4.4.7 for a message that expired in the queue).
    pub status: EnhancedStatus,
    /// The server that gave the diagnostic (Remote-MTA).
    pub remote_mta: Option<Domain>,
    /// That server's reply (Diagnostic-Code: smtp).
    pub diagnostic: Option<Reply>,
    /// A problem found on our side (no reply to quote), in words, for the text part.
    pub problem: Option<String>,
    /// When delivery was last tried (Last-Attempt-Date).
    pub last_attempt: Option<DsnDate>,
    /// For [`DsnAction::Delayed`]: when we give up (Will-Retry-Until). Ignored otherwise.
    pub will_retry_until: Option<DsnDate>,
}

/// Everything [`compose`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DsnRequest {
    /// Our host name: Reporting-MTA, and the domain of MAILER-DAEMON in From.
    pub reporting_mta: Domain,
    /// The original message's envelope.
    pub envelope: OriginalEnvelope,
    /// The recipients whose fate may be reported; NOTIFY decides which are.
    pub recipients: Vec<RecipientReport>,
    /// What NOTIFY means when a recipient gave none.
    pub default_notify: DefaultNotify,
    /// The Date of the DSN.
    pub date: DsnDate,
    /// The Message-ID of the DSN.
    pub message_id: MessageId,
    /// The multipart boundary. It must not occur in the returned content.
    pub boundary: Boundary,
}

/// Why no DSN is to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum NoDsn {
    /// The original's reverse path is null: never bounce a bounce.
    #[error("the reverse path is null: no DSN is ever sent for it")]
    NullReversePath,
    /// NOTIFY (or the default) rules out every recipient given.
    #[error("no recipient asked to be notified of this outcome")]
    NothingToReport,
}

/// How much of the original goes back with the DSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Returned {
    /// The header section only, as `text/rfc822-headers`.
    Headers,
    /// The whole message, as `message/rfc822`.
    Full,
}

/// A composed DSN: its envelope, and its text around the returned content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    recipient: Mailbox,
    reported: Vec<usize>,
    body: Body,
    smtputf8: bool,
    returned: Returned,
    boundary: Boundary,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

/// Copies the original message into the DSN's last part, chunk by chunk.
///
/// Line ends become CRLF (a bare CR or LF in the stored original does not leak into the
/// DSN). For [`Returned::Headers`] it stops at the empty line that ends the header section
/// and reports [`is_done`](ReturnedContent::is_done); further input is ignored. When the DSN
/// is 7-bit ([`Dsn::body`] is `7BIT`), an octet over 127 becomes `?`, so the DSN stays what its
/// headers say.
///
/// RFC 2046 section 5.1.1: "the boundary delimiter MUST NOT appear inside any of the
/// encapsulated parts". The caller picks an unguessable boundary; should the original still
/// contain it, anywhere (lenient parsers such as mail-parser find delimiters in mid-line),
/// a space goes in before its last character: a deliberate change to the returned copy, so
/// no original can end the DSN's parts early.
#[derive(Debug, Clone)]
pub struct ReturnedContent {
    returned: Returned,
    seven_bit: bool,
    /// The boundary text.
    boundary: Vec<u8>,
    /// Output held back because it is a prefix of the boundary.
    held: Vec<u8>,
    at_line_start: bool,
    pending_cr: bool,
    done: bool,
}

/// Sends a DSN only when allowed, and reports the recipients NOTIFY selects.
///
/// - [RFC 5321 section 6.1](https://www.rfc-editor.org/rfc/rfc5321#section-6.1): the failure
///   notification "MUST be sent using a null ("<>") reverse-path in the envelope"; and, since
///   RFC 2821 section 3.7, "SMTP servers MUST NOT send notification messages about problems
///   transporting notification messages": no DSN for a message whose reverse path is null.
/// - [RFC 3461 section 4.1](https://www.rfc-editor.org/rfc/rfc3461#section-4.1): NOTIFY=NEVER
///   asks for no DSN under any condition; FAILURE, DELAY and SUCCESS each ask for one
///   condition; without NOTIFY an MTA may act as for FAILURE or FAILURE,DELAY
///   ([`DefaultNotify`]). (Paraphrased: the RFC text was not at hand to quote.)
pub fn compose(request: &DsnRequest) -> Result<Dsn, NoDsn> {
    let sender = match &request.envelope.reverse_path {
        ReversePath::Mailbox(mailbox) => mailbox.clone(),
        _ => return Err(NoDsn::NullReversePath),
    };
    let reported: Vec<usize> = request
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| wants(r, request.default_notify))
        .map(|(i, _)| i)
        .collect();
    if reported.is_empty() {
        return Err(NoDsn::NothingToReport);
    }
    let recipients: Vec<&RecipientReport> =
        reported.iter().map(|&i| &request.recipients[i]).collect();
    let env = &request.envelope;
    // Deviation: a BINARYMIME original is returned as headers even with RET=FULL. Its body
    // may hold any octets, which neither a line-based copy nor a DATA-sent DSN can carry.
    let returned = match (env.ret, env.body) {
        (Some(Ret::Full), Some(Body::BinaryMime)) => Returned::Headers,
        (Some(Ret::Full), _) => Returned::Full,
        _ => Returned::Headers,
    };
    // RFC 2046 5.2.1: message/rfc822 may be 7bit, 8bit or binary; we never re-encode, so an
    // original that came as 8BITMIME (or SMTPUTF8) is labelled 8bit and the DSN is sent with
    // BODY=8BITMIME. An original declared 7-bit is returned 7-bit: a stray 8-bit octet in it
    // becomes `?` (see [`ReturnedContent`]).
    let eight_bit = env.smtputf8 || matches!(env.body, Some(Body::EightBitMime | Body::BinaryMime));
    let smtputf8 = env.smtputf8 || !sender.is_ascii();
    let b = &request.boundary.0;

    let mut p = String::with_capacity(4096);
    // The header section (RFC 5322 3.6; RFC 3834 5: "Auto-Submitted: auto-replied").
    let host = domain_ascii(&request.reporting_mta);
    let subject = subject(&recipients);
    header(
        &mut p,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    header(&mut p, "To", &format!("<{sender}>"));
    header(&mut p, "Subject", subject);
    header(&mut p, "Date", &request.date.0);
    header(&mut p, "Message-ID", &format!("<{}>", request.message_id.0));
    header(&mut p, "Auto-Submitted", "auto-replied");
    header(&mut p, "MIME-Version", "1.0");
    // RFC 6522 3: "The Multipart/Report Media Type ... report-type ... boundary".
    header(
        &mut p,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{b}\""),
    );
    header(
        &mut p,
        "Content-Transfer-Encoding",
        if eight_bit { "8bit" } else { "7bit" },
    );
    p.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    // Part 1: for people.
    let _ = write!(p, "--{b}\r\n");
    header(&mut p, "Content-Description", "Notification");
    let text = human_text(&host, &recipients, returned);
    if text.is_ascii() {
        header(&mut p, "Content-Type", "text/plain; charset=us-ascii");
        header(&mut p, "Content-Transfer-Encoding", "7bit");
        p.push_str("\r\n");
        p.push_str(&text);
    } else {
        header(&mut p, "Content-Type", "text/plain; charset=utf-8");
        header(&mut p, "Content-Transfer-Encoding", "quoted-printable");
        p.push_str("\r\n");
        p.push_str(&quoted_printable(&text));
    }

    // Part 2: for programs (RFC 3464 2.1: "per-message-fields *( CRLF per-recipient-fields )").
    let _ = write!(p, "\r\n--{b}\r\n");
    header(&mut p, "Content-Description", "Delivery report");
    header(&mut p, "Content-Type", "message/delivery-status");
    p.push_str("\r\n");
    // RFC 3464 2.2.2: Reporting-MTA, MTA-name-type `dns` and our host name.
    header(&mut p, "Reporting-MTA", &format!("dns; {host}"));
    // RFC 3461 6.3 / RFC 3464 2.2.1 (paraphrased): an ENVID given with MAIL is returned,
    // decoded, in Original-Envelope-Id. Non-ASCII (impossible from a valid ENVID) becomes `?`.
    if let Some(envid) = &env.envid {
        header(&mut p, "Original-Envelope-Id", &seven_bit(envid));
    }
    header(&mut p, "Arrival-Date", &env.arrival_date.0);
    for r in &recipients {
        p.push_str("\r\n");
        // RFC 3464 2.3.1 / 2.3.2 (paraphrased): Original-Recipient when ORCPT was given;
        // Final-Recipient always.
        if let Some(orcpt) = &r.orcpt {
            header(&mut p, "Original-Recipient", &original_recipient(orcpt));
        }
        header(&mut p, "Final-Recipient", &final_recipient(&r.recipient));
        header(&mut p, "Action", action_name(r.action));
        header(&mut p, "Status", &r.status.to_string());
        if let Some(mta) = &r.remote_mta {
            header(&mut p, "Remote-MTA", &format!("dns; {}", domain_ascii(mta)));
        }
        if let Some(reply) = &r.diagnostic {
            header(
                &mut p,
                "Diagnostic-Code",
                &format!("smtp; {}", reply_text(reply)),
            );
        }
        if let Some(date) = &r.last_attempt {
            header(&mut p, "Last-Attempt-Date", &date.0);
        }
        // RFC 3464 2.3.9: Will-Retry-Until belongs to delay reports only (paraphrased).
        if let (DsnAction::Delayed, Some(until)) = (r.action, &r.will_retry_until) {
            header(&mut p, "Will-Retry-Until", &until.0);
        }
    }

    // Part 3: the original (RFC 3462/6522: text/rfc822-headers; RFC 2046: message/rfc822).
    let _ = write!(p, "\r\n--{b}\r\n");
    let (description, content_type) = match returned {
        Returned::Headers => ("Undelivered Message Headers", "text/rfc822-headers"),
        Returned::Full => ("Undelivered Message", "message/rfc822"),
    };
    header(&mut p, "Content-Description", description);
    header(&mut p, "Content-Type", content_type);
    if eight_bit {
        header(&mut p, "Content-Transfer-Encoding", "8bit");
    }
    p.push_str("\r\n");

    Ok(Dsn {
        recipient: sender,
        reported,
        body: if eight_bit {
            Body::EightBitMime
        } else {
            Body::SevenBit
        },
        smtputf8,
        returned,
        boundary: request.boundary.clone(),
        prefix: p.into_bytes(),
        suffix: format!("\r\n--{b}--\r\n").into_bytes(),
    })
}

/// Formats a Unix time as an RFC 5322 date in UTC; used by [`DsnDate::from_unix`].
fn format_unix(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {} {} {:04} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl DsnDate {
    /// A date already formatted by the caller (RFC 5322 `date-time`). `None` if it is empty,
    /// not ASCII, or contains a control character.
    pub fn new(formatted: &str) -> Option<DsnDate> {
        (!formatted.is_empty() && formatted.bytes().all(|b| (b' '..=b'~').contains(&b)))
            .then(|| DsnDate(formatted.to_owned()))
    }

    /// A Unix time (seconds since 1970-01-01 UTC), formatted in UTC, e.g.
    /// `Tue, 14 Nov 2023 22:13:20 +0000` for 1 700 000 000.
    pub fn from_unix(secs: i64) -> DsnDate {
        DsnDate(format_unix(secs))
    }

    /// The formatted date.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl MessageId {
    /// `id` is `left@right` without brackets: printable ASCII, no space, `<`, `>` or `"`,
    /// exactly one `@` with text on both sides (RFC 5322 section 3.6.4 `msg-id`, simplified).
    pub fn new(id: &str) -> Option<MessageId> {
        let ok_chars = id
            .bytes()
            .all(|b| (b'!'..=b'~').contains(&b) && !matches!(b, b'<' | b'>' | b'"'));
        let ok_shape = matches!(id.split_once('@'), Some((l, r)) if !l.is_empty() && !r.is_empty() && !r.contains('@'));
        (ok_chars && ok_shape && id.len() <= 250).then(|| MessageId(id.to_owned()))
    }

    /// The id, without brackets.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Boundary {
    /// RFC 2046 section 5.1.1: `boundary := 0*69<bchars> bcharsnospace`; bchars are digits,
    /// letters and `'()+_,-./:=?` and space. We also refuse space (no quoting surprises).
    pub fn new(boundary: &str) -> Option<Boundary> {
        let ok = !boundary.is_empty()
            && boundary.len() <= 70
            && boundary
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=?".contains(&b));
        ok.then(|| Boundary(boundary.to_owned()))
    }

    /// The boundary text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl OriginalEnvelope {
    /// An envelope with no ENVID, RET, BODY or SMTPUTF8; set the fields that apply.
    pub fn new(reverse_path: ReversePath, arrival_date: DsnDate) -> OriginalEnvelope {
        OriginalEnvelope {
            reverse_path,
            envid: None,
            ret: None,
            arrival_date,
            body: None,
            smtputf8: false,
        }
    }
}

impl RecipientReport {
    /// A report with no ORCPT, NOTIFY, remote MTA, diagnostic or dates; set those that apply.
    pub fn new(recipient: ForwardPath, action: DsnAction, status: EnhancedStatus) -> Self {
        RecipientReport {
            recipient,
            orcpt: None,
            notify: None,
            action,
            status,
            remote_mta: None,
            diagnostic: None,
            problem: None,
            last_attempt: None,
            will_retry_until: None,
        }
    }
}

impl RecipientReport {
    /// The report for what a delivery attempt said about one recipient: accepted is
    /// [`DsnAction::Relayed`] (the next hop took it; we do not know that it reports further),
    /// a temporary failure [`DsnAction::Delayed`], a permanent one [`DsnAction::Failed`].
    /// The status is the reply's enhanced code when it agrees with the reply's class, else
    /// `class.0.0`; for a problem on our side, a code from RFC 3463 / the IANA registry.
    ///
    /// The queue turns a delayed recipient that ran out of time into `Failed` with 4.4.7 itself.
    pub fn from_result(result: &RecipientResult, remote_mta: Option<Domain>) -> RecipientReport {
        let (action, class, reason) = match &result.status {
            RecipientStatus::Accepted(_) => (DsnAction::Relayed, 2, None),
            RecipientStatus::TemporaryFailure(reason) => (DsnAction::Delayed, 4, Some(reason)),
            RecipientStatus::PermanentFailure(reason) => (DsnAction::Failed, 5, Some(reason)),
        };
        let reply = match (&result.status, reason) {
            (RecipientStatus::Accepted(reply), _) | (_, Some(FailureReason::Reply(reply))) => {
                Some(reply.clone())
            }
            _ => None,
        };
        let status = match (&reply, reason) {
            (Some(reply), _) => status_of_reply(reply, class),
            (None, Some(FailureReason::Local(problem))) => status_of_problem(problem, class),
            _ => EnhancedStatus::new(class, 0, 0),
        };
        let mut report =
            RecipientReport::new(result.to.clone(), action, status.unwrap_or(FALLBACK_STATUS));
        report.remote_mta = remote_mta;
        report.diagnostic = reply;
        if let Some(FailureReason::Local(problem)) = reason {
            report.problem = Some(problem.to_string());
        }
        report
    }
}

/// Only reached if a constant below were invalid.
const FALLBACK_STATUS: EnhancedStatus = match EnhancedStatus::new(4, 0, 0) {
    Some(s) => s,
    None => panic!("4.0.0 is valid"),
};

/// The reply's enhanced code if its class matches `class`, else `class.0.0`.
fn status_of_reply(reply: &Reply, class: u8) -> Option<EnhancedStatus> {
    let reply_class = match reply.code().class() {
        ReplyClass::PositiveCompletion => 2,
        ReplyClass::TransientNegative => 4,
        ReplyClass::PermanentNegative => 5,
        _ => class,
    };
    match reply.enhanced() {
        Some(e) if e.class() == class && reply_class == class => Some(e),
        _ => EnhancedStatus::new(class, 0, 0),
    }
}

/// RFC 3463 codes (and the IANA "SMTP Enhanced Status Codes" registry) for our own findings.
fn status_of_problem(problem: &ClientError, class: u8) -> Option<EnhancedStatus> {
    let (subject, detail) = match problem {
        // X.4.2 "Bad connection"; X.4.7 "Delivery time expired" is the queue's to give.
        ClientError::Timeout(_) | ClientError::ConnectionClosed(_) => (4, 2),
        // X.5.0 "Other or undefined protocol status".
        ClientError::BadReply(_) | ClientError::ReplyTooLong | ClientError::UnexpectedReply(_) => {
            (5, 0)
        }
        // X.3.4 "Message too big for system".
        ClientError::MessageTooBig { .. } => (3, 4),
        // X.6.3 "Conversion required but not supported".
        ClientError::EightBitMimeNotOffered | ClientError::BinaryMimeNotOffered { .. } => (6, 3),
        // X.6.7 (RFC 6531): non-ASCII addresses not permitted for that recipient.
        ClientError::SmtpUtf8NotOffered => (6, 7),
        // X.7.30 (RFC 8689 5): "REQUIRETLS support required".
        ClientError::RequireTlsNotOffered => (7, 30),
        // X.7.10 (RFC 5248 registry): "Encryption Needed".
        ClientError::StartTlsNotOffered
        | ClientError::StartTlsRefused(_)
        | ClientError::TlsHandshakeFailed => (7, 10),
        // X.7.0 "Other or undefined security status".
        ClientError::AuthNotOffered | ClientError::AuthNeedsTls | ClientError::AuthFailed(_) => {
            (7, 0)
        }
    };
    EnhancedStatus::new(class, subject, detail)
}

impl DsnRequest {
    /// A request with [`DefaultNotify::FailureAndDelay`].
    pub fn new(
        reporting_mta: Domain,
        envelope: OriginalEnvelope,
        recipients: Vec<RecipientReport>,
        date: DsnDate,
        message_id: MessageId,
        boundary: Boundary,
    ) -> DsnRequest {
        DsnRequest {
            reporting_mta,
            envelope,
            recipients,
            default_notify: DefaultNotify::default(),
            date,
            message_id,
            boundary,
        }
    }
}

impl Dsn {
    /// The DSN's envelope sender: always null (RFC 5321 section 6.1, RFC 3461 section 6.2).
    pub fn envelope_from(&self) -> ReversePath {
        ReversePath::Null
    }

    /// The DSN's envelope recipient: the original reverse path.
    pub fn envelope_to(&self) -> &Mailbox {
        &self.recipient
    }

    /// The `BODY=` to send the DSN with: 8BITMIME when the returned content may be 8-bit.
    pub fn body(&self) -> Body {
        self.body
    }

    /// Whether the DSN must be sent with `SMTPUTF8` (the sender's address or the returned
    /// headers are UTF-8).
    pub fn smtputf8(&self) -> bool {
        self.smtputf8
    }

    /// Indices into [`DsnRequest::recipients`] of the recipients this DSN reports.
    pub fn reported(&self) -> &[usize] {
        &self.reported
    }

    /// How much of the original the caller must copy through [`Dsn::returned_content`].
    pub fn returned(&self) -> Returned {
        self.returned
    }

    /// Everything before the returned content: the header section, the two report parts,
    /// and the header of the last part.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// A copier for the original message, to run between [`Dsn::prefix`] and
    /// [`Dsn::suffix`].
    pub fn returned_content(&self) -> ReturnedContent {
        ReturnedContent {
            returned: self.returned,
            seven_bit: self.body == Body::SevenBit,
            boundary: self.boundary.0.clone().into_bytes(),
            held: Vec::new(),
            at_line_start: true,
            pending_cr: false,
            done: false,
        }
    }

    /// Everything after the returned content: the closing boundary.
    pub fn suffix(&self) -> &[u8] {
        &self.suffix
    }

    /// The whole DSN in memory, for an original already in memory (tests, small messages).
    pub fn to_bytes(&self, original: &[u8]) -> Vec<u8> {
        let mut out = self.prefix.clone();
        let mut copier = self.returned_content();
        copier.feed(original, &mut out);
        copier.finish(&mut out);
        out.extend_from_slice(&self.suffix);
        out
    }
}

impl ReturnedContent {
    /// Copies `chunk` of the original (any split) to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        while !self.done && !chunk.is_empty() {
            if self.pending_cr {
                self.pending_cr = false;
                self.line_end(out);
                if chunk[0] == b'\n' {
                    chunk = &chunk[1..];
                }
                continue;
            }
            let b = chunk[0];
            if b == b'\r' || b == b'\n' {
                // No boundary spans a line end (CR and LF are not bchars).
                self.release(out);
                if b == b'\r' {
                    self.pending_cr = true;
                } else {
                    self.line_end(out);
                }
                chunk = &chunk[1..];
                continue;
            }
            if self.held.is_empty() {
                // Fast path: copy up to a line end or a byte that could start the boundary.
                let run = chunk
                    .iter()
                    .position(|&c| c == b'\r' || c == b'\n' || self.map(c) == self.boundary[0])
                    .unwrap_or(chunk.len());
                if run > 0 {
                    out.extend(chunk[..run].iter().map(|&c| self.map(c)));
                    self.at_line_start = false;
                    chunk = &chunk[run..];
                    continue;
                }
            }
            // Slow path: one byte through the boundary matcher.
            self.held.push(self.map(b));
            self.at_line_start = false;
            chunk = &chunk[1..];
            if self.held == self.boundary {
                let (head, last) = self.boundary.split_at(self.boundary.len() - 1);
                out.extend_from_slice(head);
                out.push(b' ');
                out.extend_from_slice(last);
                self.held.clear();
            } else {
                while !self.boundary.starts_with(&self.held) {
                    out.push(self.held.remove(0));
                }
            }
        }
    }

    /// Whether no more input is wanted (headers only, and their end was seen).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Ends the copy: completes an unterminated last line so the closing boundary starts a
    /// line of its own.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if !self.done {
            self.release(out);
        }
        if self.pending_cr {
            self.pending_cr = false;
            self.line_end(out);
        }
        if !self.done && !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
    }

    /// An octet as written: over 127 becomes `?` in a 7-bit DSN.
    fn map(&self, b: u8) -> u8 {
        if self.seven_bit && b > 127 { b'?' } else { b }
    }

    /// Writes held-back output that can no longer become the boundary.
    fn release(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
    }

    fn line_end(&mut self, out: &mut Vec<u8>) {
        if self.returned == Returned::Headers && self.at_line_start {
            // The empty line that ends the header section: not part of the headers.
            self.done = true;
            return;
        }
        out.extend_from_slice(b"\r\n");
        self.at_line_start = true;
    }
}

/// Whether NOTIFY (or the default) asks for this recipient's outcome.
fn wants(r: &RecipientReport, default: DefaultNotify) -> bool {
    let (success, failure, delay) = match r.notify {
        Some(Notify::Never) => return false,
        Some(Notify::On {
            success,
            failure,
            delay,
        }) => (success, failure, delay),
        None => (false, true, default == DefaultNotify::FailureAndDelay),
    };
    match r.action {
        DsnAction::Failed => failure,
        DsnAction::Delayed => delay,
        DsnAction::Delivered | DsnAction::Relayed | DsnAction::Expanded => success,
    }
}

fn subject(recipients: &[&RecipientReport]) -> &'static str {
    if recipients.iter().any(|r| r.action == DsnAction::Failed) {
        "Undelivered Mail Returned to Sender"
    } else if recipients.iter().any(|r| r.action == DsnAction::Delayed) {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    }
}

fn action_name(action: DsnAction) -> &'static str {
    match action {
        DsnAction::Failed => "failed",
        DsnAction::Delayed => "delayed",
        DsnAction::Delivered => "delivered",
        DsnAction::Relayed => "relayed",
        DsnAction::Expanded => "expanded",
    }
}

/// The plain-English part.
fn human_text(host: &str, recipients: &[&RecipientReport], returned: Returned) -> String {
    let mut t = format!("This report comes from the mail system at {host}.\r\n\r\n");
    let any = |a: DsnAction| recipients.iter().any(|r| r.action == a);
    if any(DsnAction::Failed) {
        t.push_str(match returned {
            Returned::Headers => {
                "Your message could not be delivered to some or all of its recipients,\r\n\
                 and no further attempt will be made for them. The headers of your\r\n\
                 message are attached.\r\n\r\n"
            }
            Returned::Full => {
                "Your message could not be delivered to some or all of its recipients,\r\n\
                 and no further attempt will be made for them. Your message is\r\n\
                 attached.\r\n\r\n"
            }
        });
    }
    if any(DsnAction::Delayed) {
        t.push_str(
            "Your message has not reached some of its recipients yet. Delivery will\r\n\
             be tried again; you do not need to send it again.\r\n\r\n",
        );
    }
    if any(DsnAction::Delivered) || any(DsnAction::Relayed) || any(DsnAction::Expanded) {
        t.push_str("You asked to be told when your message was delivered.\r\n\r\n");
    }
    for r in recipients {
        let who = match &r.recipient {
            ForwardPath::Mailbox(m) => format!("<{m}>"),
            _ => "<Postmaster>".to_owned(),
        };
        let what = match r.action {
            DsnAction::Failed => "delivery failed permanently".to_owned(),
            DsnAction::Delayed => match &r.will_retry_until {
                Some(until) => format!("delivery is delayed; it will be retried until {}", until.0),
                None => "delivery is delayed; it will be retried".to_owned(),
            },
            DsnAction::Delivered => "delivered".to_owned(),
            DsnAction::Relayed => {
                "handed to a server that does not send delivery notifications".to_owned()
            }
            DsnAction::Expanded => {
                "delivered to a list or alias, which sent it on to its members".to_owned()
            }
        };
        for line in wrap(&format!("{who}: {what} (status {}).", r.status), 72, "") {
            t.push_str(&line);
            t.push_str("\r\n");
        }
        if let Some(reply) = &r.diagnostic {
            let mta = r
                .remote_mta
                .as_ref()
                .map_or_else(|| "The remote server".to_owned(), domain_ascii);
            let said = format!("{mta} said: {}", reply_text(reply));
            for line in wrap(&said, 72, "    ") {
                t.push_str(&line);
                t.push_str("\r\n");
            }
        }
        if let Some(problem) = &r.problem {
            for line in wrap(problem, 72, "    ") {
                t.push_str(&line);
                t.push_str("\r\n");
            }
        }
        t.push_str("\r\n");
    }
    // The delimiter's own CRLF follows: no blank line after the last recipient.
    t.truncate(t.len() - 2);
    t
}

/// Splits `text` into lines of at most `width` characters at spaces, each prefixed with
/// `indent`; a word longer than the room is cut so no line exceeds [`MAX_LINE`].
fn wrap(text: &str, width: usize, indent: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::from(indent);
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let fresh = line.len() == indent.len();
        if !fresh && line.len() + 1 + word.len() > width {
            lines.push(std::mem::replace(&mut line, String::from(indent)));
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        for c in word.chars() {
            if line.len() + c.len_utf8() > MAX_LINE - 2 {
                lines.push(std::mem::replace(&mut line, String::from(indent)));
            }
            line.push(c);
        }
    }
    if line.len() > indent.len() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// Appends `name: value` CRLF, folded (RFC 5322 section 3.2.2: folding inserts CRLF before
/// whitespace) at spaces to stay within [`FOLD_AT`] columns where the value allows, and
/// within [`MAX_LINE`] always.
///
/// Deviation: a run without whitespace longer than [`MAX_LINE`] (which cannot be folded) is
/// broken by inserting a fold; unfolding then shows a space there.
fn header(out: &mut String, name: &str, value: &str) {
    let mut col = name.len() + 1;
    out.push_str(name);
    out.push(':');
    for (i, word) in value.split(' ').filter(|w| !w.is_empty()).enumerate() {
        if i > 0 && col + 1 + word.len() > FOLD_AT {
            out.push_str("\r\n");
            col = 0;
        }
        out.push(' ');
        col += 1;
        for c in word.chars() {
            if col + c.len_utf8() > MAX_LINE {
                out.push_str("\r\n ");
                col = 1;
            }
            out.push(c);
            col += c.len_utf8();
        }
    }
    out.push_str("\r\n");
}

/// A domain in the ASCII (A-label) form fields require.
fn domain_ascii(domain: &Domain) -> String {
    domain
        .to_ascii()
        .unwrap_or_else(|_| seven_bit(&domain.as_str()))
}

/// The reply on one line: `550-5.1.1 first 550 5.1.1 last`, as Postfix writes it; text that
/// is not ASCII becomes `?` (the delivery-status part is 7-bit).
fn reply_text(reply: &Reply) -> String {
    let bytes = reply.to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    seven_bit(
        &text
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Printable ASCII only: anything else becomes `?`.
fn seven_bit(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// `Final-Recipient: rfc822; addr` for an ASCII local part (an internationalized domain in
/// its A-label form); `utf-8; ...` with RFC 6533 `utf-8-addr-xtext` encoding otherwise.
fn final_recipient(path: &ForwardPath) -> String {
    let mailbox = match path {
        ForwardPath::Mailbox(m) => m,
        _ => return "rfc822; postmaster".to_owned(),
    };
    if let (true, Ok(domain)) = (mailbox.local_part().is_ascii(), mailbox.domain().to_ascii()) {
        return format!("rfc822; {}@{domain}", mailbox.local_part());
    }
    format!("utf-8; {}", utf8_addr_xtext(&mailbox.to_string()))
}

/// `Original-Recipient: type; address` from ORCPT (RFC 3461 4.2, RFC 3464 2.3.1). An ASCII
/// address is copied as given; a non-ASCII one is written as `utf-8` with RFC 6533
/// `utf-8-addr-xtext`, the form allowed in `message/delivery-status`.
fn original_recipient(orcpt: &OriginalRecipient) -> String {
    if orcpt.address.is_ascii() && !orcpt.address.bytes().any(|b| b.is_ascii_control()) {
        format!("{}; {}", orcpt.addr_type, orcpt.address)
    } else {
        format!("utf-8; {}", utf8_addr_xtext(&orcpt.address))
    }
}

/// RFC 6533 section 3: `utf-8-addr-xtext = 1*(QCHAR / EmbeddedUnicodeChar)`, where QCHAR is
/// printable ASCII except `+`, `=` and `\`, and EmbeddedUnicodeChar is `\x{HEXPOINT}`
/// (upper-case hex, no leading zeros, at least two digits). Written from memory of the
/// grammar, not checked against the RFC text.
fn utf8_addr_xtext(address: &str) -> String {
    let mut out = String::with_capacity(address.len());
    for c in address.chars() {
        if ('!'..='~').contains(&c) && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{{{:02X}}}", u32::from(c));
        }
    }
    out
}

/// RFC 2045 section 6.7 quoted-printable for CRLF-delimited text, lines of at most 76.
fn quoted_printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.split("\r\n") {
        let mut col = 0;
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let plain = (b'!'..=b'~').contains(&b) && b != b'=' || (b == b' ' && !last);
            let width = if plain { 1 } else { 3 };
            if col + width > 75 {
                out.push_str("=\r\n");
                col = 0;
            }
            if plain {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "={b:02X}");
            }
            col += width;
        }
        out.push_str("\r\n");
    }
    // `split` gives one empty piece after the final CRLF: drop its CRLF.
    out.truncate(out.len() - 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::ReplyCode;

    fn fp(s: &str) -> ForwardPath {
        ForwardPath::parse(s).expect("test address")
    }

    fn st(s: &str) -> EnhancedStatus {
        EnhancedStatus::parse(s).expect("test status")
    }

    fn notify(s: &str) -> Option<Notify> {
        let on = |w: &str| s.split(',').any(|x| x == w);
        match s {
            "" => None,
            "NEVER" => Some(Notify::Never),
            _ => Some(Notify::On {
                success: on("SUCCESS"),
                failure: on("FAILURE"),
                delay: on("DELAY"),
            }),
        }
    }

    fn request(sender: &str, recipients: Vec<RecipientReport>) -> DsnRequest {
        let rp = ReversePath::parse(sender).expect("test sender");
        DsnRequest::new(
            Domain::parse("mx.example.com").expect("host"),
            OriginalEnvelope::new(rp, DsnDate::from_unix(1_700_000_000)),
            recipients,
            DsnDate::from_unix(1_700_003_600),
            MessageId::new("20231114.1@mx.example.com").expect("id"),
            Boundary::new("=_postern_b1").expect("boundary"),
        )
    }

    fn failed(addr: &str) -> RecipientReport {
        let mut r = RecipientReport::new(fp(addr), DsnAction::Failed, st("5.1.1"));
        r.remote_mta = Some(Domain::parse("mx.example.org").expect("mta"));
        r.diagnostic = Some(Reply::of(
            ReplyCode::MAILBOX_UNAVAILABLE,
            (5, 1, 1),
            "No such user",
        ));
        r.last_attempt = Some(DsnDate::from_unix(1_700_003_500));
        r
    }

    fn delayed(addr: &str) -> RecipientReport {
        let mut r = RecipientReport::new(fp(addr), DsnAction::Delayed, st("4.4.1"));
        r.will_retry_until = Some(DsnDate::from_unix(1_700_432_000));
        r
    }

    const ORIGINAL: &[u8] = b"From: alice@example.com\r\nSubject: hello\r\n\r\nbody line\r\n";

    /// The lines of the delivery-status part.
    fn status_part(dsn: &str) -> &str {
        let start = dsn
            .find("Content-Type: message/delivery-status\r\n\r\n")
            .expect("status part")
            + "Content-Type: message/delivery-status\r\n\r\n".len();
        let end = start + dsn[start..].find("\r\n\r\n--=_postern_b1").expect("end");
        &dsn[start..end]
    }

    fn check_lines(name: &str, out: &[u8]) {
        let mut start = 0;
        for (i, w) in out.windows(2).enumerate() {
            if w == b"\r\n" {
                assert!(i - start <= MAX_LINE, "{name}: line over 998 octets");
                start = i + 2;
            }
        }
        for (i, &b) in out.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r', "{name}: bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'), "{name}: bare CR at {i}");
            }
        }
    }

    #[test]
    fn formats_unix_times() {
        let cases = [
            (0, "Thu, 1 Jan 1970 00:00:00 +0000"),
            (1_700_000_000, "Tue, 14 Nov 2023 22:13:20 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (4_107_542_399, "Sun, 28 Feb 2100 23:59:59 +0000"),
            (4_133_980_799, "Fri, 31 Dec 2100 23:59:59 +0000"),
            (-1, "Wed, 31 Dec 1969 23:59:59 +0000"),
        ];
        for (secs, want) in cases {
            assert_eq!(DsnDate::from_unix(secs).as_str(), want, "input {secs}");
        }
    }

    #[test]
    fn typed_inputs_refuse_bad_text() {
        for bad in ["", "a b", "a\r\nb", "ümlaut"] {
            assert!(Boundary::new(bad).is_none(), "boundary {bad:?}");
        }
        assert!(Boundary::new(&"x".repeat(71)).is_none());
        for bad in ["", "no-at", "@x", "x@", "a b@c", "<a@b>", "a@b@c"] {
            assert!(MessageId::new(bad).is_none(), "message id {bad:?}");
        }
        for bad in ["", "Tue\r\n", "Dienstag, 14. Nov 2023 ü"] {
            assert!(DsnDate::new(bad).is_none(), "date {bad:?}");
        }
    }

    /// NOTIFY selection: (actions with NOTIFY values, default, expected outcome).
    #[test]
    fn notify_selects_recipients() {
        use DsnAction::*;
        type Case = (
            &'static [(DsnAction, &'static str)],
            DefaultNotify,
            Result<&'static [usize], NoDsn>,
        );
        let cases: &[Case] = &[
            (&[(Failed, "")], DefaultNotify::Failure, Ok(&[0])),
            (
                &[(Delayed, "")],
                DefaultNotify::Failure,
                Err(NoDsn::NothingToReport),
            ),
            (&[(Delayed, "")], DefaultNotify::FailureAndDelay, Ok(&[0])),
            (
                &[(Delivered, "")],
                DefaultNotify::FailureAndDelay,
                Err(NoDsn::NothingToReport),
            ),
            (
                &[(Failed, "NEVER")],
                DefaultNotify::FailureAndDelay,
                Err(NoDsn::NothingToReport),
            ),
            (
                &[(Failed, "SUCCESS")],
                DefaultNotify::Failure,
                Err(NoDsn::NothingToReport),
            ),
            (&[(Delivered, "SUCCESS")], DefaultNotify::Failure, Ok(&[0])),
            (
                &[(Relayed, "SUCCESS,FAILURE")],
                DefaultNotify::Failure,
                Ok(&[0]),
            ),
            (&[(Expanded, "SUCCESS")], DefaultNotify::Failure, Ok(&[0])),
            (
                &[(Delayed, "FAILURE")],
                DefaultNotify::FailureAndDelay,
                Err(NoDsn::NothingToReport),
            ),
            (&[(Delayed, "DELAY")], DefaultNotify::Failure, Ok(&[0])),
            (
                &[(Failed, "DELAY")],
                DefaultNotify::Failure,
                Err(NoDsn::NothingToReport),
            ),
            (
                &[
                    (Failed, "NEVER"),
                    (Failed, ""),
                    (Delivered, "SUCCESS"),
                    (Delayed, "FAILURE"),
                ],
                DefaultNotify::Failure,
                Ok(&[1, 2]),
            ),
            (
                &[
                    (Failed, "FAILURE,DELAY"),
                    (Delayed, "FAILURE,DELAY"),
                    (Delivered, ""),
                ],
                DefaultNotify::Failure,
                Ok(&[0, 1]),
            ),
        ];
        for (input, default, want) in cases {
            let recipients = input
                .iter()
                .enumerate()
                .map(|(i, (action, n))| {
                    let mut r = RecipientReport::new(
                        fp(&format!("r{i}@example.org")),
                        *action,
                        st("5.0.0"),
                    );
                    r.notify = notify(n);
                    r
                })
                .collect();
            let mut req = request("alice@example.com", recipients);
            req.default_notify = *default;
            let got = compose(&req).map(|d| d.reported().to_vec());
            assert_eq!(
                got,
                want.map(<[usize]>::to_vec),
                "input {input:?} default {default:?}"
            );
        }
    }

    #[test]
    fn never_bounces_a_bounce() {
        for notify_value in ["", "FAILURE", "SUCCESS,FAILURE,DELAY"] {
            let mut r = failed("bob@example.org");
            r.notify = notify(notify_value);
            let req = request("<>", vec![r]);
            assert_eq!(
                compose(&req),
                Err(NoDsn::NullReversePath),
                "NOTIFY={notify_value}"
            );
        }
    }

    #[test]
    fn dsn_envelope_is_null_to_the_sender() {
        let dsn = compose(&request(
            "alice@example.com",
            vec![failed("bob@example.org")],
        ))
        .expect("dsn");
        assert_eq!(dsn.envelope_from(), ReversePath::Null);
        assert_eq!(dsn.envelope_to().to_string(), "alice@example.com");
        assert_eq!(dsn.body(), Body::SevenBit);
        assert!(!dsn.smtputf8());
    }

    /// The exact output for one failed recipient, RET absent (headers returned).
    #[test]
    fn failed_recipient_exact_output() {
        let dsn = compose(&request(
            "alice@example.com",
            vec![failed("bob@example.org")],
        ))
        .expect("dsn");
        let out = String::from_utf8(dsn.to_bytes(ORIGINAL)).expect("utf-8");
        let want = "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\n\
To: <alice@example.com>\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
Date: Tue, 14 Nov 2023 23:13:20 +0000\r\n\
Message-ID: <20231114.1@mx.example.com>\r\n\
Auto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n boundary=\"=_postern_b1\"\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
This is a MIME-encapsulated message.\r\n\
\r\n\
--=_postern_b1\r\n\
Content-Description: Notification\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
This report comes from the mail system at mx.example.com.\r\n\
\r\n\
Your message could not be delivered to some or all of its recipients,\r\n\
and no further attempt will be made for them. The headers of your\r\n\
message are attached.\r\n\
\r\n\
<bob@example.org>: delivery failed permanently (status 5.1.1).\r\n    mx.example.org said: 550 5.1.1 No such user\r\n\
\r\n\
--=_postern_b1\r\n\
Content-Description: Delivery report\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.com\r\n\
Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
\r\n\
Final-Recipient: rfc822; bob@example.org\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Remote-MTA: dns; mx.example.org\r\n\
Diagnostic-Code: smtp; 550 5.1.1 No such user\r\n\
Last-Attempt-Date: Tue, 14 Nov 2023 23:11:40 +0000\r\n\
\r\n\
--=_postern_b1\r\n\
Content-Description: Undelivered Message Headers\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: alice@example.com\r\n\
Subject: hello\r\n\
\r\n\
--=_postern_b1--\r\n";
        assert_eq!(out, want);
    }

    /// Per-recipient fields for table cases: (name, request tweak, exact status part).
    #[test]
    fn delivery_status_fields() {
        type Tweak = fn(&mut DsnRequest);
        let cases: &[(&str, Tweak, &str)] = &[
            (
                "delayed, no remote reply",
                |r| r.recipients = vec![delayed("carol@example.net")],
                "Reporting-MTA: dns; mx.example.com\r\n\
                 Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\n\
                 Final-Recipient: rfc822; carol@example.net\r\n\
                 Action: delayed\r\n\
                 Status: 4.4.1\r\n\
                 Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000",
            ),
            (
                "expired after retries: failed 4.4.7, Will-Retry-Until dropped",
                |r| {
                    let mut x = delayed("carol@example.net");
                    x.action = DsnAction::Failed;
                    x.status = st("4.4.7");
                    r.recipients = vec![x];
                },
                "Reporting-MTA: dns; mx.example.com\r\n\
                 Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\n\
                 Final-Recipient: rfc822; carol@example.net\r\n\
                 Action: failed\r\n\
                 Status: 4.4.7",
            ),
            (
                "ENVID and ORCPT present",
                |r| {
                    r.envelope.envid = Some("QQ314159".into());
                    let mut x = failed("bob@example.org");
                    x.orcpt = Some(OriginalRecipient {
                        addr_type: "rfc822".into(),
                        address: "Bob+list@example.org".into(),
                    });
                    x.remote_mta = None;
                    x.last_attempt = None;
                    r.recipients = vec![x];
                },
                "Reporting-MTA: dns; mx.example.com\r\n\
                 Original-Envelope-Id: QQ314159\r\n\
                 Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\n\
                 Original-Recipient: rfc822; Bob+list@example.org\r\n\
                 Final-Recipient: rfc822; bob@example.org\r\n\
                 Action: failed\r\n\
                 Status: 5.1.1\r\n\
                 Diagnostic-Code: smtp; 550 5.1.1 No such user",
            ),
            (
                "mixed: failed, delayed, delivered (SUCCESS) with a multi-line reply",
                |r| {
                    let mut ok = RecipientReport::new(
                        fp("dan@example.org"),
                        DsnAction::Delivered,
                        st("2.0.0"),
                    );
                    ok.notify = notify("SUCCESS");
                    let mut bad = failed("bob@example.org");
                    bad.diagnostic = Some(Reply::multiline(
                        crate::ReplyCode::MAILBOX_UNAVAILABLE,
                        EnhancedStatus::new(5, 7, 1),
                        ["Rejected", "see https://example.org/why"],
                    ));
                    r.recipients = vec![bad, delayed("carol@example.net"), ok];
                },
                "Reporting-MTA: dns; mx.example.com\r\n\
                 Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\n\
                 Final-Recipient: rfc822; bob@example.org\r\n\
                 Action: failed\r\n\
                 Status: 5.1.1\r\n\
                 Remote-MTA: dns; mx.example.org\r\n\
                 Diagnostic-Code: smtp; 550-5.7.1 Rejected 550 5.7.1 see\r\n https://example.org/why\r\n\
                 Last-Attempt-Date: Tue, 14 Nov 2023 23:11:40 +0000\r\n\r\n\
                 Final-Recipient: rfc822; carol@example.net\r\n\
                 Action: delayed\r\n\
                 Status: 4.4.1\r\n\
                 Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000\r\n\r\n\
                 Final-Recipient: rfc822; dan@example.org\r\n\
                 Action: delivered\r\n\
                 Status: 2.0.0",
            ),
            (
                "non-ASCII recipient and ORCPT: utf-8 type, 7-bit",
                |r| {
                    let mut x = RecipientReport::new(
                        fp("jöran@bücher.example"),
                        DsnAction::Failed,
                        st("5.1.1"),
                    );
                    x.orcpt = Some(OriginalRecipient {
                        addr_type: "utf-8".into(),
                        address: "Jöran@bücher.example".into(),
                    });
                    r.recipients = vec![x];
                },
                "Reporting-MTA: dns; mx.example.com\r\n\
                 Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\n\
                 Original-Recipient: utf-8; J\\x{F6}ran@b\\x{FC}cher.example\r\n\
                 Final-Recipient: utf-8; j\\x{F6}ran@b\\x{FC}cher.example\r\n\
                 Action: failed\r\n\
                 Status: 5.1.1",
            ),
            (
                "IDN domain with ASCII local part: rfc822 with A-label",
                |r| {
                    r.recipients = vec![RecipientReport::new(
                        fp("bob@bücher.example"),
                        DsnAction::Failed,
                        st("5.1.2"),
                    )]
                },
                "Reporting-MTA: dns; mx.example.com\r\n\
                 Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\n\
                 Final-Recipient: rfc822; bob@xn--bcher-kva.example\r\n\
                 Action: failed\r\n\
                 Status: 5.1.2",
            ),
        ];
        for (name, tweak, want) in cases {
            let mut req = request("alice@example.com", vec![]);
            tweak(&mut req);
            let dsn = compose(&req).expect(name);
            let out = dsn.to_bytes(ORIGINAL);
            check_lines(name, &out);
            assert!(out.is_ascii(), "{name}: not 7-bit");
            let text = String::from_utf8(out).expect("utf-8");
            assert_eq!(status_part(&text), *want, "case {name}");
        }
    }

    #[test]
    fn subjects_follow_the_worst_outcome() {
        let mut ok = RecipientReport::new(fp("d@example.org"), DsnAction::Delivered, st("2.0.0"));
        ok.notify = notify("SUCCESS");
        let cases = [
            (
                vec![failed("b@example.org"), delayed("c@example.org")],
                "Undelivered Mail Returned to Sender",
            ),
            (
                vec![delayed("c@example.org"), ok.clone()],
                "Delayed Mail (still being retried)",
            ),
            (vec![ok], "Successful Mail Delivery Report"),
        ];
        for (recipients, want) in cases {
            let names: Vec<_> = recipients.iter().map(|r| r.action).collect();
            let dsn = compose(&request("a@example.com", recipients)).expect("dsn");
            let text = String::from_utf8(dsn.prefix().to_vec()).expect("utf-8");
            assert!(
                text.contains(&format!("\r\nSubject: {want}\r\n")),
                "{names:?}"
            );
        }
    }

    #[test]
    fn long_diagnostic_is_folded() {
        let word = "x".repeat(1500);
        let long = format!("{} {word} end", "blah ".repeat(60));
        let mut r = failed("bob@example.org");
        r.diagnostic = Some(Reply::of(ReplyCode::MAILBOX_UNAVAILABLE, (5, 7, 1), long));
        let dsn = compose(&request("alice@example.com", vec![r])).expect("dsn");
        let out = dsn.to_bytes(ORIGINAL);
        check_lines("long diagnostic", &out);
        let text = String::from_utf8(out).expect("utf-8");
        let part = status_part(&text);
        let field = part
            .split("\r\nDiagnostic-Code:")
            .nth(1)
            .expect("field")
            .split("\r\nLast-Attempt-Date")
            .next()
            .expect("field end");
        // Unfolded (CRLF removed), only the fold forced inside the 1500-char word adds a space.
        let unfolded = field.replace("\r\n", "");
        let want = format!(
            " smtp; 550 5.7.1 {} {word} end",
            "blah ".repeat(60).trim_end()
        );
        assert_eq!(unfolded.replace(' ', ""), want.replace(' ', ""));
        assert!(field.lines().count() > 3, "{field}");
        assert!(field.lines().take(5).all(|l| l.len() <= FOLD_AT), "{field}");
    }

    #[test]
    fn non_ascii_text_part_is_quoted_printable() {
        let dsn = compose(&request(
            "alice@example.com",
            vec![RecipientReport::new(
                fp("jöran@bücher.example"),
                DsnAction::Failed,
                st("5.1.1"),
            )],
        ))
        .expect("dsn");
        let out = dsn.to_bytes(ORIGINAL);
        assert!(out.is_ascii());
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.contains("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"));
        assert!(
            text.contains("<j=C3=B6ran@b=C3=BCcher.example>: delivery failed"),
            "{text}"
        );
    }

    /// The quoted-printable text part decodes (with mail-parser) to the UTF-8 address.
    #[test]
    fn quoted_printable_round_trips() {
        let long = format!("{}jöran@bücher.example", "ü".repeat(40));
        for addr in ["jöran@bücher.example", long.as_str()] {
            let mut r = RecipientReport::new(fp("x@example.org"), DsnAction::Failed, st("5.1.1"));
            r.problem = Some(format!("mailbox {addr} = gone"));
            let dsn = compose(&request("alice@example.com", vec![r])).expect("dsn");
            let bytes = dsn.to_bytes(ORIGINAL);
            check_lines(addr, &bytes);
            let msg = mail_parser::MessageParser::default()
                .parse(&bytes)
                .expect("parses");
            let text = msg.body_text(0).expect("text part");
            let unwrapped = text.replace("\r\n    ", " ");
            assert!(
                unwrapped.contains(&format!("mailbox {addr} = gone")),
                "{addr}: {text}"
            );
        }
    }

    #[test]
    fn utf8_sender_needs_smtputf8() {
        let dsn = compose(&request(
            "jöran@bücher.example",
            vec![failed("bob@example.org")],
        ))
        .expect("dsn");
        assert!(dsn.smtputf8());
        assert_eq!(dsn.envelope_to().to_string(), "jöran@bücher.example");
    }

    /// RET=FULL vs HDRS (and absent), BODY=8BITMIME: (name, ret, body, content type, CTE, want returned).
    #[test]
    fn returned_content_by_ret() {
        let orig: &[u8] = b"Subject: caf\xc3\xa9\r\nX: y\r\n\r\nline 1\r\nline 2\r\n";
        type Case = (
            &'static str,
            Option<Ret>,
            Option<Body>,
            &'static str,
            Option<&'static str>,
            &'static [u8],
        );
        let cases: &[Case] = &[
            (
                "no RET, 7-bit original with a stray 8-bit header",
                None,
                None,
                "text/rfc822-headers",
                None,
                b"Subject: caf??\r\nX: y\r\n",
            ),
            (
                "HDRS 8BITMIME",
                Some(Ret::Headers),
                Some(Body::EightBitMime),
                "text/rfc822-headers",
                Some("8bit"),
                b"Subject: caf\xc3\xa9\r\nX: y\r\n",
            ),
            (
                "FULL 7BIT",
                Some(Ret::Full),
                Some(Body::SevenBit),
                "message/rfc822",
                None,
                b"Subject: caf??\r\nX: y\r\n\r\nline 1\r\nline 2\r\n",
            ),
            (
                "FULL BINARYMIME: headers only",
                Some(Ret::Full),
                Some(Body::BinaryMime),
                "text/rfc822-headers",
                Some("8bit"),
                b"Subject: caf\xc3\xa9\r\nX: y\r\n",
            ),
            (
                "FULL 8BITMIME",
                Some(Ret::Full),
                Some(Body::EightBitMime),
                "message/rfc822",
                Some("8bit"),
                orig,
            ),
        ];
        for (name, ret, body, ctype, cte, want) in cases {
            let mut req = request("alice@example.com", vec![failed("bob@example.org")]);
            req.envelope.ret = *ret;
            req.envelope.body = *body;
            let dsn = compose(&req).expect(name);
            let out = dsn.to_bytes(orig);
            let prefix = dsn.prefix();
            let tail = &out[prefix.len()..];
            assert_eq!(
                &tail[..tail.len() - dsn.suffix().len()],
                *want,
                "case {name}"
            );
            let text = String::from_utf8_lossy(prefix);
            assert!(
                text.ends_with(&format!(
                    "Content-Type: {ctype}\r\n{}\r\n",
                    cte.map_or(String::new(), |c| format!(
                        "Content-Transfer-Encoding: {c}\r\n"
                    ))
                )),
                "case {name}: {text}"
            );
            assert_eq!(
                dsn.body() == Body::EightBitMime,
                cte.is_some(),
                "case {name}"
            );
        }
    }

    /// Any split of the input, and bare CR or LF line ends, give the same copy.
    #[test]
    fn copier_is_chunk_invariant_and_fixes_line_ends() {
        let cases: &[(&[u8], Returned, &[u8])] = &[
            (
                b"A: 1\r\nB: 2\r\n\r\nbody\r\n",
                Returned::Headers,
                b"A: 1\r\nB: 2\r\n",
            ),
            (
                b"A: 1\nB: 2\n\nbody\n",
                Returned::Headers,
                b"A: 1\r\nB: 2\r\n",
            ),
            (
                b"A: 1\rB: 2\r\rbody",
                Returned::Headers,
                b"A: 1\r\nB: 2\r\n",
            ),
            (b"A: 1\r\nB: 2", Returned::Headers, b"A: 1\r\nB: 2\r\n"),
            (
                b"A: 1\r\n\r\nx\ny\r",
                Returned::Full,
                b"A: 1\r\n\r\nx\r\ny\r\n",
            ),
            (b"A: 1\r\n\r\n\r\n", Returned::Full, b"A: 1\r\n\r\n\r\n"),
            (b"", Returned::Full, b""),
            // The boundary (here `b1`) is broken wherever it occurs; partial matches are kept.
            (
                b"--b1\r\n\r\n--b1--\r\nx --b1\r\n--b\r\n--b",
                Returned::Full,
                b"--b 1\r\n\r\n--b 1--\r\nx --b 1\r\n--b\r\n--b\r\n",
            ),
            (
                b"X: 1\n--b1: 2\n-\n\n--b1\n",
                Returned::Headers,
                b"X: 1\r\n--b 1: 2\r\n-\r\n",
            ),
            (b"--b1", Returned::Full, b"--b 1\r\n"),
            (b"bb1b1bb\rb", Returned::Full, b"bb 1b 1bb\r\nb\r\n"),
            (b"--", Returned::Full, b"--\r\n"),
            (b"-\r\n\r\n", Returned::Headers, b"-\r\n"),
        ];
        for (input, returned, want) in cases {
            for split in 1..=input.len().max(1) {
                let mut copier = ReturnedContent {
                    returned: *returned,
                    seven_bit: false,
                    boundary: b"b1".to_vec(),
                    held: Vec::new(),
                    at_line_start: true,
                    pending_cr: false,
                    done: false,
                };
                let mut out = Vec::new();
                for chunk in input.chunks(split) {
                    copier.feed(chunk, &mut out);
                }
                copier.finish(&mut out);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(want),
                    "input {:?} {returned:?} chunk {split}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    /// A delivery attempt's result, as the client reports it: (name, status, want action,
    /// status, diagnostic kept, problem text).
    #[test]
    fn reports_from_client_results() {
        use crate::{client::ClientError, client::Stage};
        let reply = |code, e: (u8, u16, u16), text: &str| Reply::of(code, e, text);
        type Case = (
            &'static str,
            RecipientStatus,
            DsnAction,
            &'static str,
            bool,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "accepted",
                RecipientStatus::Accepted(reply(ReplyCode::OK, (2, 0, 0), "ok")),
                DsnAction::Relayed,
                "2.0.0",
                true,
                None,
            ),
            (
                "550 5.1.1",
                RecipientStatus::PermanentFailure(FailureReason::Reply(reply(
                    ReplyCode::MAILBOX_UNAVAILABLE,
                    (5, 1, 1),
                    "no",
                ))),
                DsnAction::Failed,
                "5.1.1",
                true,
                None,
            ),
            (
                "550 without enhanced",
                RecipientStatus::PermanentFailure(FailureReason::Reply(Reply::new(
                    crate::ReplyCode::MAILBOX_UNAVAILABLE,
                    None,
                    "no",
                ))),
                DsnAction::Failed,
                "5.0.0",
                true,
                None,
            ),
            (
                "451 4.3.0",
                RecipientStatus::TemporaryFailure(FailureReason::Reply(reply(
                    ReplyCode::LOCAL_ERROR,
                    (4, 3, 0),
                    "later",
                ))),
                DsnAction::Delayed,
                "4.3.0",
                true,
                None,
            ),
            (
                "451 with a mismatched 5.x.x",
                RecipientStatus::TemporaryFailure(FailureReason::Reply(reply(
                    ReplyCode::LOCAL_ERROR,
                    (5, 1, 1),
                    "odd",
                ))),
                DsnAction::Delayed,
                "4.0.0",
                true,
                None,
            ),
            (
                "timeout",
                RecipientStatus::TemporaryFailure(FailureReason::Local(ClientError::Timeout(
                    Stage::DataEnd,
                ))),
                DsnAction::Delayed,
                "4.4.2",
                false,
                Some("timeout waiting for the reply to"),
            ),
            (
                "too big",
                RecipientStatus::PermanentFailure(FailureReason::Local(
                    ClientError::MessageTooBig { size: 10, limit: 5 },
                )),
                DsnAction::Failed,
                "5.3.4",
                false,
                Some("message size 10 exceeds"),
            ),
        ];
        for (name, status, action, code, diag, problem) in cases {
            let result = RecipientResult {
                to: fp("bob@example.org"),
                status,
            };
            let r = RecipientReport::from_result(&result, Domain::parse("mx.example.org").ok());
            assert_eq!(r.action, action, "case {name}");
            assert_eq!(r.status.to_string(), code, "case {name}");
            assert_eq!(r.diagnostic.is_some(), diag, "case {name}");
            match (problem, &r.problem) {
                (Some(want), Some(got)) => assert!(got.starts_with(want), "case {name}: {got}"),
                (None, None) => {}
                (want, got) => panic!("case {name}: problem {got:?}, want {want:?}"),
            }
            // And it composes: a local problem shows in the text part.
            let mut r = r;
            r.notify = notify("SUCCESS,FAILURE,DELAY");
            let dsn = compose(&request("alice@example.com", vec![r])).expect(name);
            let text = String::from_utf8(dsn.to_bytes(ORIGINAL)).expect("utf-8");
            if let Some(want) = problem {
                assert!(
                    text.contains(&format!("\r\n    {want}")),
                    "case {name}: {text}"
                );
            }
        }
    }

    /// A large original in 64 KiB chunks: HDRS stops early, FULL copies it all.
    #[test]
    fn streams_a_large_original() {
        let mut original = b"Subject: big\r\nX-Big: yes\r\n\r\n".to_vec();
        let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
        while original.len() < 8 << 20 {
            original.extend_from_slice(line);
        }
        for ret in [Ret::Headers, Ret::Full] {
            let mut req = request("alice@example.com", vec![failed("bob@example.org")]);
            req.envelope.ret = Some(ret);
            let dsn = compose(&req).expect("dsn");
            let mut copier = dsn.returned_content();
            let (mut copied, mut read) = (Vec::new(), 0);
            for chunk in original.chunks(64 << 10) {
                if copier.is_done() {
                    break;
                }
                read += chunk.len();
                copier.feed(chunk, &mut copied);
            }
            copier.finish(&mut copied);
            match ret {
                Ret::Headers => {
                    assert_eq!(read, 64 << 10, "HDRS read only the first chunk");
                    assert_eq!(copied, b"Subject: big\r\nX-Big: yes\r\n");
                }
                _ => {
                    assert_eq!(read, original.len());
                    assert!(copied == original, "FULL copies the original unchanged");
                }
            }
        }
    }

    /// The DSN parses as MIME with mail-parser (the version mail-auth uses).
    #[test]
    fn parses_as_mime() {
        use mail_parser::{MessageParser, MimeHeaders, PartType};
        let mut r2 = failed("carol@example.net");
        r2.orcpt = Some(OriginalRecipient {
            addr_type: "rfc822".into(),
            address: "carol@example.net".into(),
        });
        for ret in [None, Some(Ret::Full)] {
            let mut req = request(
                "alice@example.com",
                vec![failed("bob@example.org"), r2.clone()],
            );
            req.envelope.ret = ret;
            req.envelope.envid = Some("ENV-1".into());
            let dsn = compose(&req).expect("dsn");
            // An original that tries to close the DSN's multipart early.
            let original = b"Subject: hello\r\n\r\nhi\r\n--=_postern_b1--\r\n\r\n--=_postern_b1\r\nContent-Type: text/plain\r\n\r\nfake part\r\n";
            let bytes = dsn.to_bytes(original);
            let msg = MessageParser::default().parse(&bytes).expect("parses");
            assert_eq!(
                msg.subject(),
                Some("Undelivered Mail Returned to Sender"),
                "{ret:?}"
            );
            assert_eq!(msg.message_id(), Some("20231114.1@mx.example.com"));
            let ct = msg.content_type().expect("content type");
            assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
            assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
            let root = &msg.parts[0];
            let PartType::Multipart(children) = &root.body else {
                panic!("{ret:?}: root is not multipart: {:?}", root.body)
            };
            assert_eq!(children.len(), 3, "{ret:?}");
            let types: Vec<String> = children
                .iter()
                .map(|&i| {
                    let ct = msg.parts[i as usize].content_type().expect("part type");
                    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
                })
                .collect();
            let last = if ret == Some(Ret::Full) {
                "message/rfc822"
            } else {
                "text/rfc822-headers"
            };
            assert_eq!(
                types,
                ["text/plain", "message/delivery-status", last],
                "{ret:?}"
            );
            let status = String::from_utf8_lossy(msg.parts[children[1] as usize].contents());
            assert!(
                status.contains("Original-Envelope-Id: ENV-1\r\n"),
                "{status}"
            );
            assert_eq!(status.matches("Final-Recipient:").count(), 2, "{status}");
            if ret == Some(Ret::Full) {
                let PartType::Message(inner) = &msg.parts[children[2] as usize].body else {
                    panic!("returned part is not a message")
                };
                assert_eq!(inner.subject(), Some("hello"));
                assert!(
                    inner
                        .body_text(0)
                        .expect("inner text")
                        .contains("fake part")
                );
            }
        }
    }
}

//! Log lines: one per mail event, to standard error.
//!
//! Each line is `<RFC 3339 time> <event> id=<queue id> key=value...`, so `grep <id>` follows a
//! message; a line about no message has no `id`, and one that only says something has its
//! words in `msg="..."`. Values are bare tokens, or quoted (`key="free text"`) when they could
//! hold a space; [`line()`] builds every line and quotes what needs it, so a value from the
//! network never breaks the format (see [`Fields`]). Events are `received` (end of data), `queued` (durable, answered 250), `delivered`
//! (one per recipient), `deferred` (will be retried), `failed` (given up, or could not be
//! queued), `removed` (left the queue), `damaged` (a queued record that cannot be read: kept,
//! looked at again later), `rejected`; connection-level problems are `connection`,
//! startup work (swept partial bodies, resumed messages) is `startup`, the queue store's
//! health (a failed write, a full disk, delivery stopped and resumed) is `store`, a queue
//! recovered at startup (damaged or with lost messages) is `recovery`, and logins are `auth`
//! (the user when it is one of ours, else `user=unknown`, the session, client and outcome);
//! [`Event`] lists every event. Passwords, other AUTH data, names that are not our users and
//! message bodies are never logged.
//!
//! Every line also feeds two bounded in-memory views: [`history`], the lines of each recent
//! message by queue id (for `postern queue show` and `send-test`), and [`stats`], the counts
//! of the last hour and since the start (for `postern status` and the metrics).

use std::fmt;
use std::io::Write;
use std::time::SystemTime;

use crate::reception::trace::rfc3339;

/// What a log line is about: every event the server logs, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// End of data: the message is complete (not yet durable).
    Received,
    /// Durable, answered 250.
    Queued,
    /// One recipient delivered.
    Delivered,
    /// One recipient (or a whole pass) will be tried again.
    Deferred,
    /// Given up, or could not be queued.
    Failed,
    /// The message left the queue.
    Removed,
    /// A queued record that cannot be read: kept, looked at again later.
    Damaged,
    /// A command or message refused.
    Rejected,
    /// A delivery status notification queued, or not due.
    Dsn,
    /// A connection-level problem.
    Connection,
    /// Startup work: swept partial bodies, resumed messages.
    Startup,
    /// A login: client IP and outcome only.
    Auth,
    /// Certificates loaded or reloaded.
    Tls,
    /// A domain's remembered TLS level rose (or could not be saved).
    TlsPolicy,
    /// Opportunistic TLS failed; the delivery is tried again in plaintext.
    TlsFallback,
    /// An MTA-STS policy problem.
    MtaSts,
    /// ARC sealing.
    Arc,
    /// SRS rewriting.
    Srs,
    /// A configuration reload.
    Reload,
    /// Stopping.
    Shutdown,
    /// A configuration problem found while running (a skipped line, a bad alias file).
    Config,
    /// systemd integration.
    Systemd,
    /// The queue store: a failed write, the store opened again, a full disk, delivery
    /// stopped or resumed while outcomes cannot be recorded.
    Store,
    /// A queue recovery at startup: recovered and lost messages, where a damaged store went.
    Recovery,
    /// A DMARC or TLS report received at a report address, and what was kept of it.
    Report,
}

impl Event {
    /// The event's name in the log line.
    pub fn name(self) -> &'static str {
        match self {
            Event::Received => "received",
            Event::Queued => "queued",
            Event::Delivered => "delivered",
            Event::Deferred => "deferred",
            Event::Failed => "failed",
            Event::Removed => "removed",
            Event::Damaged => "damaged",
            Event::Rejected => "rejected",
            Event::Dsn => "dsn",
            Event::Connection => "connection",
            Event::Startup => "startup",
            Event::Auth => "auth",
            Event::Tls => "tls",
            Event::TlsPolicy => "tls-policy",
            Event::TlsFallback => "tls-fallback",
            Event::MtaSts => "mta-sts",
            Event::Arc => "arc",
            Event::Srs => "srs",
            Event::Reload => "reload",
            Event::Shutdown => "shutdown",
            Event::Config => "config",
            Event::Systemd => "systemd",
            Event::Store => "store",
            Event::Recovery => "recovery",
            Event::Report => "report",
        }
    }
}

/// The fields of a log line, `key=value` separated by spaces, built in order. A value is
/// written bare when it is one token ([`Fields::field`]) and quoted when it is free text
/// ([`Fields::text`]) or holds a space, a quote or a control character, so that every line
/// splits back into its fields whatever the values hold (many come from the network).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(String);

impl Fields {
    /// No fields yet.
    pub fn new() -> Fields {
        Fields(String::new())
    }

    /// Adds `key=value`, `value` bare if it is a token (not empty, no space, quote or control
    /// character), quoted as by [`Fields::text`] otherwise.
    pub fn field(mut self, key: &'static str, value: impl fmt::Display) -> Fields {
        let value = value.to_string();
        if is_token(&value) {
            self.key(key);
            self.0.push_str(&value);
        } else {
            self.quoted(key, &value);
        }
        self
    }

    /// Adds `key="value"` for free text (a reason, a reply, an error): see [`quoted`].
    pub fn text(mut self, key: &'static str, value: impl fmt::Display) -> Fields {
        self.quoted(key, &value.to_string());
        self
    }

    /// Adds `key=value` if there is a value.
    pub fn field_opt(self, key: &'static str, value: Option<impl fmt::Display>) -> Fields {
        match value {
            Some(v) => self.field(key, v),
            None => self,
        }
    }

    /// Adds the fields of `more` after these.
    pub fn and(mut self, more: &Fields) -> Fields {
        if !more.0.is_empty() {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(&more.0);
        }
        self
    }

    /// The fields as they are written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn key(&mut self, key: &'static str) {
        debug_assert!(
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "log field key {key:?}"
        );
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(key);
        self.0.push('=');
    }

    fn quoted(&mut self, key: &'static str, value: &str) {
        self.key(key);
        self.0.push('"');
        self.0.push_str(&quoted(&value));
        self.0.push('"');
    }
}

/// Whether `value` can be written without quotes.
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && !value
            .chars()
            .any(|c| c == '"' || c.is_whitespace() || c.is_control())
}

/// One log line: an event and its fields; written by [`Line::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a log line is written by `write`"]
pub struct Line {
    event: Event,
    fields: Fields,
}

/// Starts a log line about `event`.
pub fn line(event: Event) -> Line {
    Line {
        event,
        fields: Fields::new(),
    }
}

impl Line {
    /// Adds a token field: see [`Fields::field`].
    pub fn field(mut self, key: &'static str, value: impl fmt::Display) -> Line {
        self.fields = self.fields.field(key, value);
        self
    }

    /// Adds a free-text field: see [`Fields::text`].
    pub fn text(mut self, key: &'static str, value: impl fmt::Display) -> Line {
        self.fields = self.fields.text(key, value);
        self
    }

    /// Adds a token field if there is a value.
    pub fn field_opt(mut self, key: &'static str, value: Option<impl fmt::Display>) -> Line {
        self.fields = self.fields.field_opt(key, value);
        self
    }

    /// Adds fields built elsewhere.
    pub fn and(mut self, more: &Fields) -> Line {
        self.fields = self.fields.and(more);
        self
    }

    /// The event.
    pub fn event(&self) -> Event {
        self.event
    }

    /// The line as written, without its time: `<event> <fields>`.
    pub fn text_without_time(&self) -> String {
        if self.fields.0.is_empty() {
            self.event.name().to_string()
        } else {
            format!("{} {}", self.event.name(), self.fields.0)
        }
    }

    /// Writes the line: the time, then the event and its fields. The line is formatted first
    /// and written in one call, so lines from concurrent sessions never interleave; a closed
    /// or full standard error loses the line instead of stopping the server (`eprintln!`
    /// would panic).
    pub fn write(self) {
        let line = format!(
            "{} {}\n",
            rfc3339(SystemTime::now()),
            self.text_without_time()
        );
        stats::count(self.event, &self.fields.0);
        if let Some(id) = self
            .fields
            .0
            .strip_prefix("id=")
            .and_then(|rest| rest.split(' ').next())
            .filter(|id| *id != "-")
            // Refusals (any peer can cause them) would push real messages out.
            .filter(|_| self.event != Event::Rejected)
        {
            history::record(id, line.trim_end());
        }
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// The value of `key=` in the fields of a log line (a bare token, or quoted text up to the
/// next quote): how `postern status`, the metrics and `send-test` read lines back.
pub fn value<'a>(fields: &'a str, key: &str) -> Option<&'a str> {
    // No allocation: this runs for every counted line.
    let start = fields
        .match_indices(key)
        .find(|(i, _)| {
            (*i == 0 || fields.as_bytes()[i - 1] == b' ')
                && fields.as_bytes().get(i + key.len()) == Some(&b'=')
        })
        .map(|(i, _)| i + key.len() + 1)?;
    let rest = &fields[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split(' ').next(),
    }
}

/// The recent log lines of each message, by queue id, kept in memory for `postern queue show`
/// and `postern send-test` (through the control socket): the lines of the last
/// [`history::IDS`] ids, at most [`history::LINES`] each (the first and the newest), so memory
/// stays bounded whatever the traffic (20 MiB at the very most), and nothing at all while idle.
pub mod history {
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Mutex, PoisonError};

    /// How many messages' lines are kept.
    pub const IDS: usize = 1000;
    /// How many lines of one message: the first half and the newest (the end matters most).
    pub const LINES: usize = 40;
    /// The longest line kept (longer ones are cut): at most IDS × LINES × LINE = 20 MiB.
    const LINE: usize = 512;

    #[derive(Default)]
    struct Kept {
        order: VecDeque<String>,
        lines: HashMap<String, Vec<String>>,
    }

    static KEPT: Mutex<Option<Kept>> = Mutex::new(None);

    /// Keeps `line` under `id`.
    pub(super) fn record(id: &str, line: &str) {
        let mut guard = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = guard.get_or_insert_with(Kept::default);
        if !kept.lines.contains_key(id) {
            if kept.order.len() == IDS
                && let Some(old) = kept.order.pop_front()
            {
                kept.lines.remove(&old);
            }
            kept.order.push_back(id.to_string());
        }
        let lines = kept.lines.entry(id.to_string()).or_default();
        if lines.len() == LINES {
            lines.remove(LINES / 2);
        }
        {
            let mut end = line.len().min(LINE);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            lines.push(line[..end].to_string());
        }
    }

    /// The lines kept for `id`, oldest first.
    pub fn of(id: &str) -> Vec<String> {
        let guard = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        guard
            .as_ref()
            .and_then(|k| k.lines.get(id).cloned())
            .unwrap_or_default()
    }
}

/// Counts of the events of the last hour, by minute, for `postern status`: what was received,
/// refused, delivered, deferred, failed and bounced, and how many outbound deliveries had TLS.
pub mod stats {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, PoisonError};
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::Event;

    /// What is counted.
    const KINDS: usize = 11;
    /// The names of the counts, in order.
    pub const NAMES: [&str; KINDS] = [
        "received",
        "rejected",
        "delivered",
        "deferred",
        "failed",
        "dsn",
        "relayed_tls",
        "relayed_plaintext",
        "auth_ok",
        "auth_failed",
        "auth_locked",
    ];

    /// The counts since the start, for the metrics.
    static TOTALS: [AtomicU64; KINDS] = [const { AtomicU64::new(0) }; KINDS];

    /// One minute's counts.
    #[derive(Clone, Copy, Default)]
    struct Minute {
        at: u64,
        counts: [u64; KINDS],
    }

    static MINUTES: Mutex<[Minute; 60]> = Mutex::new(
        [Minute {
            at: 0,
            counts: [0; KINDS],
        }; 60],
    );

    fn minute_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60)
    }

    /// Counts a line about `event` with `fields`.
    pub(super) fn count(event: Event, fields: &str) {
        let mut kinds = Vec::with_capacity(2);
        match event {
            Event::Received => kinds.push(0),
            Event::Rejected => kinds.push(1),
            Event::Delivered => {
                kinds.push(2);
                if fields.contains(" relay=") {
                    let tls = value(fields, "tls").is_some_and(|v| v != "none");
                    kinds.push(if tls { 6 } else { 7 });
                }
            }
            Event::Deferred => kinds.push(3),
            Event::Failed => kinds.push(4),
            Event::Dsn if fields.contains(" dsn=") => kinds.push(5),
            Event::Auth if fields.contains(" result=ok") => kinds.push(8),
            Event::Auth if fields.contains(" result=failed") => kinds.push(9),
            Event::Auth if fields.contains(" result=locked") => kinds.push(10),
            _ => return,
        }
        for k in &kinds {
            TOTALS[*k].fetch_add(1, Ordering::Relaxed);
        }
        labelled(event, fields);
        let now = minute_now();
        let mut minutes = MINUTES.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut minutes[(now % 60) as usize];
        if slot.at != now {
            *slot = Minute {
                at: now,
                counts: [0; KINDS],
            };
        }
        for k in kinds {
            slot.counts[k] += 1;
        }
    }

    /// Counts by label, since the start: (metric, label, value) → count. The values come from
    /// bounded sets (enhanced status codes, methods, TLS versions, result words), so the map
    /// stays small; a value outside them counts as "other".
    type Labelled = std::collections::BTreeMap<(&'static str, &'static str, String), u64>;

    static LABELLED: Mutex<Option<Labelled>> = Mutex::new(None);

    use super::value;

    /// A label value kept only when it is a short token of letters, digits, `.`, `-`, `_`.
    fn bounded(v: &str) -> String {
        if !v.is_empty()
            && v.len() <= 16
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            v.to_string()
        } else {
            "other".into()
        }
    }

    fn labelled(event: Event, fields: &str) {
        let mut found: Vec<(&'static str, &'static str, String)> = Vec::new();
        match event {
            Event::Rejected => {
                // The enhanced status code of the reply (`550 5.7.1 ...`).
                let code = value(fields, "reply")
                    .and_then(|r| r.split(' ').nth(1))
                    .unwrap_or("none");
                found.push(("rejected", "status", bounded(code)));
            }
            Event::Received => {
                found.push((
                    "received_tls",
                    "version",
                    value(fields, "tls").map_or("none".into(), bounded),
                ));
                if let Some(auth) = value(fields, "auth") {
                    for check in ["spf", "dkim", "dmarc"] {
                        let word = auth
                            .split(' ')
                            .find_map(|w| w.strip_prefix(check)?.strip_prefix('='))
                            .map(|w| w.split([':', ',']).next().unwrap_or(w));
                        if let Some(word) = word {
                            found.push(("checks", check, bounded(word)));
                        }
                    }
                }
            }
            Event::Delivered => {
                let method = if fields.contains(" relay=") {
                    "smtp"
                } else if fields.contains(" lmtp=") {
                    "lmtp"
                } else if fields.contains(" command=") {
                    "command"
                } else {
                    "maildir"
                };
                found.push(("delivered_method", "method", method.into()));
                if method == "smtp" {
                    found.push((
                        "relayed_tls",
                        "version",
                        value(fields, "tls").map_or("none".into(), bounded),
                    ));
                }
            }
            _ => {}
        }
        if found.is_empty() {
            return;
        }
        let mut guard = LABELLED.lock().unwrap_or_else(PoisonError::into_inner);
        let map = guard.get_or_insert_with(Default::default);
        for key in found {
            *map.entry(key).or_default() += 1;
        }
    }

    /// The labelled counts since the start: (metric, label, value, count).
    pub fn labelled_totals() -> Vec<(&'static str, &'static str, String, u64)> {
        let guard = LABELLED.lock().unwrap_or_else(PoisonError::into_inner);
        guard
            .iter()
            .flatten()
            .map(|((m, l, v), n)| (*m, *l, v.clone(), *n))
            .collect()
    }

    /// The counts since the process started, by [`NAMES`].
    pub fn totals() -> Vec<(&'static str, u64)> {
        NAMES
            .iter()
            .copied()
            .zip(TOTALS.iter().map(|t| t.load(Ordering::Relaxed)))
            .collect()
    }

    /// The counts of the last 60 minutes, by [`NAMES`].
    pub fn last_hour() -> Vec<(&'static str, u64)> {
        let now = minute_now();
        let minutes = MINUTES.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sums = [0u64; KINDS];
        for m in minutes.iter().filter(|m| m.at + 60 > now && m.at <= now) {
            for (sum, c) in sums.iter_mut().zip(m.counts) {
                *sum += c;
            }
        }
        NAMES.iter().copied().zip(sums).collect()
    }
}

/// Prints a status line for the operator on standard output (what `serve` listens on, that
/// it stops). Like the log lines, a closed standard output is not an error worth dying for.
pub fn status(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
}

/// `text` as the value of a quoted field: its lines joined by ` / `, double quotes turned
/// into single ones, other control characters escaped (`\t`, `\u{1b}`), so a reply or an
/// error never breaks the line format.
pub fn quoted(text: &impl fmt::Display) -> String {
    let joined = text
        .to_string()
        .split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    let mut out = String::with_capacity(joined.len());
    for c in joined.chars() {
        match c {
            '"' => out.push('\''),
            // A terminal escape or a tab from the network is shown, never obeyed.
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Splits `event key=value key="text"...` back into the event and its fields, the way a
    /// reader of the log (or a script) would: a value is a token up to the next space, or
    /// what lies between a `="` and the next `"`.
    fn split(line: &str) -> (String, Vec<(String, String)>) {
        let (event, mut rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut fields = Vec::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=').expect("a key=");
            let (value, next) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let end = quoted.find('"').expect("a closing quote");
                    let next = &quoted[end + 1..];
                    assert!(next.is_empty() || next.starts_with(' '), "{line:?}");
                    (&quoted[..end], next)
                }
                None => after.split_once(' ').map_or((after, ""), |(v, n)| (v, n)),
            };
            fields.push((key.to_string(), value.to_string()));
            rest = next.strip_prefix(' ').unwrap_or(next);
        }
        (event.to_string(), fields)
    }

    #[test]
    fn outbound_deliveries_are_counted_by_whether_they_had_tls() {
        let count = |name: &str| {
            stats::totals()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, c)| c)
        };
        let (tls, plain) = (count("relayed_tls"), count("relayed_plaintext"));
        stats::count(
            Event::Delivered,
            "id=1 to=<a@b.test> relay=mx.b.test[192.0.2.1]:25 tls=none cert=none reply=\"250\"",
        );
        stats::count(
            Event::Delivered,
            "id=2 to=<a@b.test> relay=mx.b.test[192.0.2.1]:25 tls=TLSv1.3 cert=verified",
        );
        // Other tests count too (the counts are the process's): at least these two.
        assert!(count("relayed_plaintext") > plain);
        assert!(count("relayed_tls") > tls);
    }

    #[test]
    fn tokens_stay_bare_and_text_is_quoted() {
        let line = line(Event::Delivered)
            .field("id", "0000000000000001")
            .field("to", "<a@b.test>")
            .field("empty", "")
            .field("spaced", "a b")
            .text("reply", "250 2.0.0 \"ok\"\r\n250 more")
            .field_opt("absent", None::<&str>)
            .and(&Fields::new().field("tls", "none"));
        assert_eq!(
            line.text_without_time(),
            "delivered id=0000000000000001 to=<a@b.test> empty=\"\" spaced=\"a b\" \
             reply=\"250 2.0.0 'ok' / 250 more\" tls=none"
        );
        assert_eq!(quoted(&"a\tb\u{1b}[31m"), "a\\tb\\u{1b}[31m");
    }

    proptest! {
        /// Whatever a value holds (it often comes from the network), the line splits back
        /// into the same keys, in order, and a token value comes back unchanged; text comes
        /// back as `quoted` made it.
        #[test]
        fn every_line_splits_back_into_its_fields(
            values in proptest::collection::vec((any::<bool>(), any::<String>()), 0..6)
        ) {
            const KEYS: [&str; 6] = ["id", "to", "reason", "reply", "client", "msg"];
            let mut l = line(Event::Rejected);
            for (i, (as_text, v)) in values.iter().enumerate() {
                l = if *as_text { l.text(KEYS[i], v) } else { l.field(KEYS[i], v) };
            }
            let text = l.text_without_time();
            prop_assert!(!text.contains(['\n', '\r']), "{text:?}");
            let (event, fields) = split(&text);
            prop_assert_eq!(event, "rejected");
            prop_assert_eq!(fields.len(), values.len());
            for (i, ((key, got), (as_text, v))) in fields.iter().zip(&values).enumerate() {
                prop_assert_eq!(key, KEYS[i]);
                if !*as_text && is_token(v) {
                    prop_assert_eq!(got, v);
                } else {
                    prop_assert_eq!(got, &quoted(v));
                }
            }
        }
    }
}

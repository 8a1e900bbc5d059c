//! Log lines: one per mail event, to standard error.
//!
//! Each line is `<RFC 3339 time> <event> id=<queue id> key=value...`, so `grep <id>` follows a
//! message. Events: `received` (end of data), `queued` (durable, answered 250), `delivered`
//! (one per recipient), `deferred` (will be retried), `failed` (given up, or could not be
//! queued), `removed` (left the queue), `damaged` (a queued record that cannot be read: kept,
//! looked at again later), `rejected`; connection-level problems are `connection`,
//! startup work (swept partial bodies, resumed messages) is `startup`, the queue store's
//! health (a failed write, a full disk, delivery stopped and resumed) is `store`, a queue
//! recovered at startup (damaged or with lost messages) is `recovery`, and logins are `auth`
//! (client IP and outcome only); [`Event`] lists every event. AUTH data (user names, passwords)
//! and message bodies are never logged.

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
        }
    }
}

/// Writes one log line: the time, `event`'s name, then `fields`. The line is formatted first
/// and written in one call, so lines from concurrent sessions never interleave; a closed or
/// full standard error loses the line instead of stopping the server (`eprintln!` would panic).
pub fn event(event: Event, fields: fmt::Arguments<'_>) {
    let event = event.name();
    let line = format!("{} {event} {fields}\n", rfc3339(SystemTime::now()));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Prints a status line for the operator on standard output (what `serve` listens on, that
/// it stops). Like [`event`], a closed standard output is not an error worth dying for.
pub fn status(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
}

/// `text` as the value of a quoted field: its lines joined by ` / `, double quotes turned
/// into single ones, so a reply or an error never breaks the line format.
pub fn quoted(text: &impl fmt::Display) -> String {
    text.to_string()
        .split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
        .replace('"', "'")
}

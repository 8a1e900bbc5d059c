//! Log lines: one per mail event, to standard error.
//!
//! Each line is `<RFC 3339 time> <event> id=<queue id> key=value...`, so `grep <id>` follows a
//! message. Events: `received` (end of data), `queued` (durable, answered 250), `delivered`
//! (one per recipient), `deferred` (will be retried), `failed` (given up, or could not be
//! queued), `removed` (left the queue), `damaged` (a queued record that cannot be read: kept,
//! looked at again later), `rejected`; connection-level problems are `connection`,
//! startup work (swept partial bodies, resumed messages) is `startup`, and logins are `auth`
//! (client IP and outcome only). AUTH data (user names, passwords) and message bodies are never
//! logged.

use std::fmt;
use std::io::Write;
use std::time::SystemTime;

use crate::reception::trace::rfc3339;

/// Writes one log line: the time, `event`, then `fields`. The line is formatted first and
/// written in one call, so lines from concurrent sessions never interleave; a closed or full
/// standard error loses the line instead of stopping the server (`eprintln!` would panic).
pub fn event(event: &str, fields: fmt::Arguments<'_>) {
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

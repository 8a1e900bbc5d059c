//! Log lines: one per mail event, to standard error.
//!
//! Each line is `<RFC 3339 time> <event> id=<queue id> key=value...`, so `grep <id>` follows a
//! message. Events: `received` (end of data), `queued` (durable, answered 250), `delivered`
//! (one per recipient), `deferred` (will be retried), `failed` (given up, or could not be
//! queued), `removed` (left the queue), `rejected`; connection-level problems are `connection`,
//! startup work (swept partial bodies, resumed messages) is `startup`, and logins are `auth`
//! (client IP and outcome only). AUTH data (user names, passwords) and message bodies are never
//! logged.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::SystemTime;

use crate::trace::rfc3339;

/// Writes one log line: the time, `event`, then `fields`.
///
/// The line is formatted first and written with one `write` (standard error is unbuffered:
/// `eprintln!` makes a system call per formatted piece, a dozen per line), so lines from
/// several threads never interleave either. A failed write is ignored, like `eprintln!`'s
/// panic would not be: a full disk or closed stderr must not stop mail.
pub fn event(event: &str, fields: fmt::Arguments<'_>) {
    let mut line = String::with_capacity(160);
    let _ = writeln!(line, "{} {event} {fields}", rfc3339(SystemTime::now()));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

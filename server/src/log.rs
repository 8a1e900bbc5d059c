//! Log lines: one per mail event, to standard error.
//!
//! Each line is `<RFC 3339 time> <event> id=<queue id> key=value...`, so `grep <id>` follows a
//! message. Events: `received` (end of data), `queued` (durable, answered 250), `delivered`
//! (one per recipient), `deferred` (will be retried), `failed` (given up, or could not be
//! queued), `removed` (left the queue), `rejected`; connection-level problems are `connection`,
//! startup work (swept partial bodies, resumed messages) is `startup`, and logins are `auth`
//! (client IP and outcome only). AUTH data (user names, passwords) and message bodies are never
//! logged.

use std::fmt;
use std::time::SystemTime;

use crate::trace::rfc3339;

/// Writes one log line: the time, `event`, then `fields`.
pub fn event(event: &str, fields: fmt::Arguments<'_>) {
    eprintln!("{} {event} {fields}", rfc3339(SystemTime::now()));
}

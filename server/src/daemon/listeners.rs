//! `[listeners]`: the addresses to serve and what each is for, and the connection slots of
//! each kind of listener. The section's raw type and its parser live here, with the daemon
//! that binds the sockets; [`crate::config::Settings::parse`] hands the section over.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Source};

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Port 25: mail for local domains from anyone; STARTTLS offered, AUTH only under TLS.
    Smtp,
    /// Port 587 (RFC 6409): STARTTLS, AUTH required before MAIL.
    Submission,
    /// Port 465 (RFC 8314): implicit TLS, AUTH required before MAIL.
    Submissions,
}

impl Role {
    /// The role's name, as in `[listeners]`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Smtp => "smtp",
            Role::Submission => "submission",
            Role::Submissions => "submissions",
        }
    }

    /// The role's place in per-role tables (`smtp` 0, `submission` 1, `submissions` 2).
    pub fn index(self) -> usize {
        match self {
            Role::Smtp => 0,
            Role::Submission => 1,
            Role::Submissions => 2,
        }
    }

    /// Whether MAIL needs a successful AUTH first.
    pub fn requires_auth(self) -> bool {
        matches!(self, Role::Submission | Role::Submissions)
    }
}

/// A listener: an address and its role, with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// What it is for.
    pub role: Role,
    /// Where to listen.
    pub addr: SocketAddr,
    /// The line of `postern.toml` that asked for it.
    pub line: usize,
}

/// `[listeners]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListeners {
    #[serde(default)]
    smtp: Vec<Spanned<SocketAddr>>,
    #[serde(default)]
    submission: Vec<Spanned<SocketAddr>>,
    #[serde(default)]
    submissions: Vec<Spanned<SocketAddr>>,
    /// Per kind of listener, in place of the top-level `max_connections`.
    #[serde(default)]
    max_connections: RawRoleCounts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoleCounts {
    smtp: Option<Spanned<u64>>,
    submission: Option<Spanned<u64>>,
    submissions: Option<Spanned<u64>>,
}

/// Checks `[listeners]`: the listeners, and each role's connection slots (`every_role`, the
/// top-level `max_connections`, unless the section sets the role's own).
pub(crate) fn parse_settings(
    raw: RawListeners,
    every_role: usize,
    src: &Source<'_>,
) -> Result<(Vec<Listener>, [usize; 3]), ConfigError> {
    let count = |role: Role, value: Option<Spanned<u64>>| match value {
        None => Ok(every_role),
        Some(v) => match usize::try_from(*v.get_ref()) {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(src.error(
                Some(v.span()),
                format!(
                    "[listeners] max_connections.{} = {} is out of range",
                    role.name(),
                    v.get_ref()
                ),
                "give a number of connections of at least 1, e.g. 100",
            )),
        },
    };
    let per_role = raw.max_connections;
    let max_connections = [
        count(Role::Smtp, per_role.smtp)?,
        count(Role::Submission, per_role.submission)?,
        count(Role::Submissions, per_role.submissions)?,
    ];

    let mut listeners: Vec<Listener> = Vec::new();
    for (role, addrs) in [
        (Role::Smtp, raw.smtp),
        (Role::Submission, raw.submission),
        (Role::Submissions, raw.submissions),
    ] {
        for a in addrs {
            let line = src.line(a.span());
            listeners.push(Listener {
                role,
                addr: a.into_inner(),
                line,
            });
        }
    }
    for (i, l) in listeners.iter().enumerate() {
        if l.addr.port() != 0
            && let Some(first) = listeners[..i].iter().find(|o| o.addr == l.addr)
        {
            return Err(src.error_on(
                Some(l.line),
                format!("{} is listed twice (also on line {})", l.addr, first.line),
                "give each address to one role only",
            ));
        }
    }
    if listeners.is_empty() {
        return Err(src.error_on(
            None,
            "no listeners: there is nothing to serve".into(),
            "add addresses under [listeners], e.g. smtp = [\"0.0.0.0:25\"]",
        ));
    }
    Ok((listeners, max_connections))
}

//! `postern.toml`: parsing, validation and the settings derived from it.
//!
//! The file format is documented in the generated default (see [`crate::config::init`]), which is the
//! reference: every key appears there with a comment. Unknown keys are errors, so a typo never
//! silently falls back to a default. Every problem found at startup is a [`ConfigError`] that
//! names the file, the line when there is one, and the fix.
//!
//! [`Settings::parse`] reads the top-level keys itself and hands every section, with a
//! [`Source`] to name file and line, to the subsystem that owns it: `[listeners]` to
//! [`crate::daemon::listeners`], `[auth]` to [`crate::directory::logins`], `[relay]` and
//! `[senders]` to [`crate::directory::relay`], `[aliases]` to [`crate::directory::aliases`],
//! `[checks]` to [`crate::mailauth`], `[delivery]` and `[routes]` to
//! [`crate::deliver::smtp::settings`], `[mailboxes]` to [`crate::deliver`]. `[dns]` and
//! `[metrics]` (loopback only) are read here. Without `data_dir`, state goes outside the
//! directory ([`default_data_dir`]).
//!
//! [`check`] reads the rest of the configuration directory (users, aliases, DKIM keys, file
//! modes) as `serve` does, for startup and `postern config check`; [`init`] writes the
//! embedded default and `postern init`'s production file.

pub mod check;
pub mod init;
pub mod show;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto_core::{Domain, server::Timeouts};
use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::directory::logins::AuthSettings;
use crate::directory::relay::{Grants, HeaderFromCheck, TrustedNetworks};
use crate::mailauth::CheckSettings;

/// The configuration file's name inside the configuration directory.
pub const FILE_NAME: &str = "postern.toml";

/// The default largest message: 50 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50 * 1024 * 1024;

/// The default limit on connections open at once, on each kind of listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;

/// The default limit on connections open at once from one client IP address, on each kind
/// of listener (Postfix's `smtpd_client_connection_count_limit` is 50 too: a big sender's
/// several connections fit in it).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 50;

/// The default slowest rate of message data, in octets per second (Postfix's
/// `smtpd_min_data_rate`).
pub const DEFAULT_MIN_DATA_RATE: u32 = 500;

/// The default time a TLS handshake may take, in seconds.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: u64 = 20;

/// The default time sessions in flight get to finish after SIGTERM, in seconds.
pub const DEFAULT_SHUTDOWN_GRACE: u64 = 30;

/// The default interval between checks of `certs/` for renewed certificates, in seconds.
pub const DEFAULT_TLS_RELOAD_INTERVAL: u64 = 5;

/// How long the bounce address of a forwarded message (SRS) stays valid, in days.
pub const DEFAULT_SRS_MAX_AGE_DAYS: u16 = 21;

pub use crate::daemon::listeners::{Listener, Role};

/// `hostname` for the parts that outlive a reload (local and outbound delivery, bounces):
/// one shared cell that a reload sets and every use reads, so that after SIGHUP a delivered
/// message's `Received` field, an EHLO and a DSN name the host as new sessions do.
#[derive(Debug, Clone)]
pub struct HostName(std::sync::Arc<std::sync::RwLock<std::sync::Arc<str>>>);

impl HostName {
    /// A cell holding `name`.
    pub fn new(name: &str) -> HostName {
        HostName(std::sync::Arc::new(std::sync::RwLock::new(name.into())))
    }

    /// The current name.
    pub fn get(&self) -> std::sync::Arc<str> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sets the name every later [`HostName::get`] of any clone returns.
    pub fn set(&self, name: &str) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = name.into();
    }
}

/// Everything `serve` needs, resolved: paths are absolute or relative to the working directory.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration directory.
    pub dir: PathBuf,
    /// The configuration file.
    pub file: PathBuf,
    /// Our host name.
    pub hostname: String,
    /// Where mail and the queue live.
    pub data_dir: PathBuf,
    /// The line of `data_dir` in the file, when it is there.
    pub data_dir_line: Option<usize>,
    /// The largest message accepted.
    pub max_message_size: u64,
    /// Bytes to keep free on the data directory's file system ([`crate::queue::space`]).
    pub min_free_space: u64,
    /// Where to listen.
    pub listeners: Vec<Listener>,
    /// The most connections open at once on each kind of listener ([`Role::index`]); more
    /// get 421.
    pub max_connections: [usize; 3],
    /// The most connections open at once from one IP address on one kind of listener; more
    /// get 421.
    pub max_connections_per_ip: usize,
    /// Addresses `max_connections_per_ip` does not apply to (beside `trusted_networks`).
    pub per_ip_exempt: Vec<ipnet::IpNet>,
    /// How long a TLS handshake (port 465, or after STARTTLS) may take.
    pub tls_handshake_timeout: Duration,
    /// How long sessions in flight may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Session timeouts: waiting for a command, for message data, and the whole session.
    pub timeouts: Timeouts,
    /// How often `certs/` is checked for changes; `None` turns the check off (SIGHUP still
    /// reloads).
    pub tls_reload_interval: Option<Duration>,
    /// `[auth]`: where AUTH is offered, and the brute-force limits.
    pub auth: AuthSettings,
    /// `[senders]`: what authenticated users may send as, beyond their own address.
    pub grants: Grants,
    /// `[relay] trusted_networks`.
    pub trusted_networks: TrustedNetworks,
    /// `[relay] header_from`.
    pub header_from: HeaderFromCheck,
    /// `[dns] nameservers`: the recursive resolvers to ask; empty: those of /etc/resolv.conf.
    pub dns_nameservers: Vec<SocketAddr>,
    /// `[metrics] listen`: where the OpenMetrics page is served (loopback only); `None`: off.
    pub metrics_listen: Option<SocketAddr>,
    /// `[delivery]` and `[routes]`: outbound delivery.
    pub delivery: crate::deliver::smtp::settings::DeliverySettings,
    /// `[aliases]`: how alias lookups clean local parts.
    pub alias_options: proto_core::mail::AliasOptions,
    /// `[aliases] srs_max_age_days`: how long a forwarded message's bounce address is valid.
    pub srs_max_age_days: u16,
    /// `[mailboxes]`: how local mailboxes are delivered to (Maildir, LMTP, a command).
    pub mailboxes: crate::deliver::Mailboxes,
    /// `[checks]`: SPF, DKIM, ARC and DMARC on the smtp listeners.
    pub checks: CheckSettings,
    /// `[reports] addresses`: where DMARC and TLS reports arrive, lower case
    /// ([`crate::mailauth::reports`]).
    pub report_addresses: Vec<String>,
    /// `[reports] deliver`: whether mail to them is also delivered (default true).
    pub report_deliver: bool,
}

/// A problem that keeps postern from starting: where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file at fault (or the directory).
    pub file: PathBuf,
    /// The line in it, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

/// Where a section of `postern.toml` came from: what its parser needs to name the file and
/// line of a bad value.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The file.
    pub file: &'a Path,
    /// Its text.
    pub text: &'a str,
}

impl Source<'_> {
    /// The line of `span` (1-based).
    pub fn line(&self, span: Range<usize>) -> usize {
        line_of(self.text, &span)
    }

    /// An error at `span` (or about the whole file), with what to do about it.
    pub fn error(&self, span: Option<Range<usize>>, message: String, fix: &str) -> ConfigError {
        self.error_on(span.map(|s| self.line(s)), message, fix)
    }

    /// An error on `line` (or about the whole file), with what to do about it.
    pub fn error_on(&self, line: Option<usize>, message: String, fix: &str) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            message,
            fix: fix.to_string(),
        }
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    hostname: Option<Spanned<String>>,
    data_dir: Option<Spanned<PathBuf>>,
    max_message_size: Option<Spanned<u64>>,
    min_free_space: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    max_connections_per_ip: Option<Spanned<u64>>,
    max_connections_per_ip_exempt: Option<Vec<Spanned<String>>>,
    min_data_rate: Option<Spanned<u64>>,
    tls_handshake_timeout: Option<Spanned<u64>>,
    shutdown_grace: Option<Spanned<u64>>,
    tls_reload_interval: Option<Spanned<u64>>,
    command_timeout: Option<Spanned<u64>>,
    data_timeout: Option<Spanned<u64>>,
    session_timeout: Option<Spanned<u64>>,
    #[serde(default)]
    listeners: crate::daemon::listeners::RawListeners,
    #[serde(default)]
    auth: crate::directory::logins::RawAuth,
    #[serde(default)]
    relay: crate::directory::relay::RawRelay,
    #[serde(default)]
    senders: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    aliases: crate::directory::aliases::RawAliases,
    #[serde(default)]
    delivery: crate::deliver::smtp::settings::RawDelivery,
    #[serde(default)]
    routes: BTreeMap<Spanned<String>, Spanned<crate::deliver::smtp::settings::RawRoute>>,
    #[serde(default)]
    mailboxes: BTreeMap<Spanned<String>, Spanned<crate::deliver::RawMailbox>>,
    #[serde(default)]
    checks: crate::mailauth::RawChecks,
    #[serde(default)]
    reports: RawReports,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReports {
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    deliver: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<SocketAddr>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<SocketAddr>,
}

impl Settings {
    /// Reads and checks `<dir>/postern.toml`.
    pub fn load(dir: &Path) -> Result<Settings, ConfigError> {
        let file = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&file).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            message: format!("cannot read it: {e}"),
            fix: "make it readable by the user running postern, or point -C at another directory"
                .into(),
        })?;
        Settings::parse(dir, &file, &text)
    }

    /// Checks the text of a configuration file read from `file` in `dir`.
    pub fn parse(dir: &Path, file: &Path, text: &str) -> Result<Settings, ConfigError> {
        let misplaced = |line: usize, key: String, table: String| ConfigError {
            file: file.to_path_buf(),
            line: Some(line),
            message: format!(
                "`{key}` is a top-level key, but this line is inside [{table}]: a key belongs \
                 to the table whose header is above it"
            ),
            fix: "move the line above the first [table] header".into(),
        };
        // In the tables whose keys are names (addresses, domains), a top-level key parses
        // as one of them: say so instead of taking it.
        if let Some((line, key, table)) = misplaced_keys(text)
            .into_iter()
            .find(|(_, _, table)| MAP_TABLES.contains(&table.as_str()))
        {
            return Err(misplaced(line, key, table));
        }
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, &s));
            if let Some(line) = line
                && let Some((_, key, table)) = misplaced_keys(text)
                    .into_iter()
                    .find(|(l, _, _)| *l == line)
            {
                return misplaced(line, key, table);
            }
            ConfigError {
                file: file.to_path_buf(),
                line,
                message: e.message().trim().to_string(),
                fix: fix_for(e.message()),
            }
        })?;
        let source = Source { file, text };
        let at = |span: Range<usize>| Some(source.line(span));
        let error = |line, message: String, fix: &str| source.error_on(line, message, fix);

        let hostname = match raw.hostname {
            Some(h) => {
                let line = at(h.span());
                let name = h.into_inner();
                match Domain::parse(&name) {
                    Ok(Domain::Name(_)) => name.to_ascii_lowercase(),
                    _ => {
                        return Err(error(
                            line,
                            format!("hostname {name:?} is not a domain name"),
                            "write this server's fully qualified name, e.g. hostname = \"mx.example.org\"",
                        ));
                    }
                }
            }
            None => "localhost".to_string(),
        };

        let (data_dir, data_dir_line) = match raw.data_dir {
            // Joined, with `.` components dropped (`postern-data/.` is `postern-data`).
            Some(d) => {
                let line = at(d.span());
                (dir.join(d.into_inner()).components().collect(), line)
            }
            None => (default_data_dir(dir), None),
        };

        let max_message_size = match raw.max_message_size {
            Some(m) if *m.get_ref() < 1024 => {
                return Err(error(
                    at(m.span()),
                    format!(
                        "max_message_size = {} is too small to carry any message",
                        m.get_ref()
                    ),
                    "give the size in bytes, e.g. max_message_size = 52428800 (50 MiB)",
                ));
            }
            Some(m) => m.into_inner(),
            None => DEFAULT_MAX_MESSAGE_SIZE,
        };
        let min_free_space = raw
            .min_free_space
            .map_or(max_message_size.saturating_mul(2), Spanned::into_inner);

        let count = |key: &str, value: Option<Spanned<u64>>, default: usize| match value {
            None => Ok(default),
            Some(v) => match usize::try_from(*v.get_ref()) {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(error(
                    at(v.span()),
                    format!("{key} = {} is out of range", v.get_ref()),
                    "give a number of connections of at least 1, e.g. 100",
                )),
            },
        };
        let every_listener = count(
            "max_connections",
            raw.max_connections,
            DEFAULT_MAX_CONNECTIONS,
        )?;
        let max_connections_per_ip = count(
            "max_connections_per_ip",
            raw.max_connections_per_ip,
            DEFAULT_MAX_CONNECTIONS_PER_IP,
        )?;
        let per_ip_exempt = match raw.max_connections_per_ip_exempt {
            None => vec![
                "127.0.0.0/8".parse().expect("a network"),
                "::1/128".parse().expect("a network"),
            ],
            Some(nets) => {
                let mut parsed = Vec::with_capacity(nets.len());
                for net in nets {
                    let line = at(net.span());
                    let text = net.into_inner();
                    match text.parse() {
                        Ok(n) => parsed.push(n),
                        Err(_) => {
                            return Err(error(
                                line,
                                format!("max_connections_per_ip_exempt: {text:?} is not a network"),
                                "write networks in CIDR notation, e.g. \"127.0.0.0/8\" or \"::1/128\"",
                            ));
                        }
                    }
                }
                parsed
            }
        };
        let tls_handshake_timeout = match raw.tls_handshake_timeout {
            Some(v) if *v.get_ref() == 0 => {
                return Err(error(
                    at(v.span()),
                    "tls_handshake_timeout = 0 would fail every TLS handshake".into(),
                    "give the timeout in seconds, e.g. 20",
                ));
            }
            Some(v) => Duration::from_secs(v.into_inner()),
            None => Duration::from_secs(DEFAULT_TLS_HANDSHAKE_TIMEOUT),
        };
        let shutdown_grace = Duration::from_secs(
            raw.shutdown_grace
                .map_or(DEFAULT_SHUTDOWN_GRACE, Spanned::into_inner),
        );
        let tls_reload_interval = match raw.tls_reload_interval.map(Spanned::into_inner) {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => Some(Duration::from_secs(DEFAULT_TLS_RELOAD_INTERVAL)),
        };

        let mut timeouts = Timeouts::default();
        for (key, value, slot) in [
            (
                "command_timeout",
                raw.command_timeout,
                &mut timeouts.command,
            ),
            ("data_timeout", raw.data_timeout, &mut timeouts.data),
            (
                "session_timeout",
                raw.session_timeout,
                &mut timeouts.session,
            ),
        ] {
            if let Some(v) = value {
                if *v.get_ref() == 0 {
                    return Err(error(
                        at(v.span()),
                        format!("{key} = 0 would close every session at once"),
                        "give the timeout in seconds, e.g. 300 (RFC 5321 asks for at least 5 minutes)",
                    ));
                }
                *slot = Duration::from_secs(v.into_inner());
            }
        }
        timeouts.min_data_rate = match raw.min_data_rate {
            None => DEFAULT_MIN_DATA_RATE,
            Some(v) => u32::try_from(*v.get_ref()).map_err(|_| {
                error(
                    at(v.span()),
                    format!("min_data_rate = {} is out of range", v.get_ref()),
                    "give octets per second, e.g. 500 (0: no minimum)",
                )
            })?,
        };

        let metrics_listen = match raw.metrics.listen {
            Some(addr) if !addr.get_ref().ip().is_loopback() => {
                return Err(error(
                    at(addr.span()),
                    format!(
                        "[metrics] listen = \"{}\" is not a loopback address",
                        addr.get_ref()
                    ),
                    "metrics are served on loopback only, e.g. listen = \"127.0.0.1:9925\"; \
                     reach them from elsewhere through a proxy or an SSH tunnel",
                ));
            }
            Some(addr) => Some(addr.into_inner()),
            None => None,
        };
        let (listeners, max_connections) =
            crate::daemon::listeners::parse_settings(raw.listeners, every_listener, &source)?;
        let auth = crate::directory::logins::parse_settings(raw.auth, &source)?;
        let (trusted_networks, header_from, grants) =
            crate::directory::relay::parse_settings(raw.relay, raw.senders, &source)?;
        let (alias_options, srs_max_age_days) =
            crate::directory::aliases::parse_settings(raw.aliases, &source)?;
        let checks = crate::mailauth::parse_settings(raw.checks, &source)?;
        let report_deliver = raw.reports.deliver.unwrap_or(true);
        let mut report_addresses = Vec::new();
        for a in raw.reports.addresses {
            let line = at(a.span());
            let text = a.into_inner();
            match proto_core::Mailbox::parse(&text) {
                Ok(m) => report_addresses.push(m.to_string().to_ascii_lowercase()),
                Err(e) => {
                    return Err(error(
                        line,
                        format!("[reports] addresses: {text:?} is not an address: {e}"),
                        "write addresses of your own domains, e.g. addresses = [\"dmarc@example.org\"]",
                    ));
                }
            }
        }

        let delivery =
            crate::deliver::smtp::settings::parse(raw.delivery, raw.routes, dir, &source)?;
        let mailboxes = crate::deliver::parse(raw.mailboxes, dir, &source)?;

        Ok(Settings {
            dir: dir.to_path_buf(),
            file: file.to_path_buf(),
            hostname,
            data_dir,
            data_dir_line,
            max_message_size,
            min_free_space,
            listeners,
            max_connections,
            max_connections_per_ip,
            per_ip_exempt,
            tls_handshake_timeout,
            shutdown_grace,
            tls_reload_interval,
            timeouts,
            auth,
            grants,
            trusted_networks,
            header_from,
            dns_nameservers: raw.dns.nameservers,
            metrics_listen,
            delivery,
            alias_options,
            srs_max_age_days,
            mailboxes,
            checks,
            report_addresses,
            report_deliver,
        })
    }

    /// Where Maildirs live: `<data_dir>/mail`.
    pub fn mail_dir(&self) -> PathBuf {
        self.data_dir.join("mail")
    }

    /// The queue store (a fjall database): `<data_dir>/queue`.
    pub fn queue_dir(&self) -> PathBuf {
        self.data_dir.join("queue")
    }

    /// Where local domains are declared: `<dir>/domains`.
    pub fn domains_dir(&self) -> PathBuf {
        self.dir.join("domains")
    }

    /// Where certificates are: `<dir>/certs`.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// Whether `max_connections_per_ip` leaves `ip` alone: one of ours (loopback by default,
    /// `max_connections_per_ip_exempt`, `[relay] trusted_networks`).
    pub fn exempt_from_per_ip(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.per_ip_exempt.iter().any(|n| n.contains(&ip)) || self.trusted_networks.contains(ip)
    }

    /// A problem with the data directory, pointing at the `data_dir` line.
    pub fn data_dir_error(&self, message: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.data_dir_line,
            message,
            fix: "make data_dir writable by the user running postern, or set data_dir to another directory".into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        write!(f, ": {}\n  fix: {}", self.message, self.fix)
    }
}

impl std::error::Error for ConfigError {}

/// The 1-based line holding the start of `span`.
/// Where state lives without a `data_dir` key: outside the configuration directory `dir`, so
/// that it can be kept in git without the queue, the Maildirs and the secrets the server
/// makes. `/var/lib/postern` for `/etc/postern`, else the sibling `<name>-state`
/// (`postern-data` → `postern-data-state`). A directory that already holds a queue (`queue/`,
/// from when state lived beside the configuration) keeps it there: moving it silently would
/// strand the mail in it.
pub fn default_data_dir(dir: &Path) -> PathBuf {
    if dir.join("queue").is_dir() {
        return dir.components().collect();
    }
    if dir == Path::new(SYSTEM_CONFIG_DIR) {
        return PathBuf::from(SYSTEM_STATE_DIR);
    }
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => parent.join(format!("{}-state", name.to_string_lossy())),
        _ => dir.join("postern-state"),
    }
}

/// The system configuration directory.
pub const SYSTEM_CONFIG_DIR: &str = "/etc/postern";
/// The state directory of the system configuration.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/postern";

/// The keys of the file's top level (before any table header).
const TOP_LEVEL_KEYS: &[&str] = &[
    "hostname",
    "data_dir",
    "max_message_size",
    "min_free_space",
    "max_connections",
    "max_connections_per_ip",
    "max_connections_per_ip_exempt",
    "min_data_rate",
    "tls_handshake_timeout",
    "shutdown_grace",
    "tls_reload_interval",
    "command_timeout",
    "data_timeout",
    "session_timeout",
];

/// The tables whose keys are names chosen by the operator.
const MAP_TABLES: &[&str] = &["senders", "routes", "mailboxes"];

/// The lines below a table header whose key is a top-level key: (line, key, table). A
/// top-level key that the table also has (`max_connections` of `[listeners]`) is listed too;
/// callers decide.
fn misplaced_keys(text: &str) -> Vec<(usize, String, String)> {
    let mut table: Option<String> = None;
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let name = header.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or("").trim();
            table = Some(name.to_string());
            continue;
        }
        let (Some(t), Some((key, _))) = (&table, line.split_once('=')) else {
            continue;
        };
        let key = key.trim().trim_matches('"');
        if TOP_LEVEL_KEYS.contains(&key) {
            found.push((i + 1, key.to_string(), t.clone()));
        }
    }
    found
}

fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A fix for a TOML or schema error, from its message.
fn fix_for(message: &str) -> String {
    if message.contains("unknown field") {
        "remove the key or correct its spelling; every key is described in the comments of the default postern.toml".into()
    } else if message.contains("socket address") {
        "write an address with a port, e.g. \"0.0.0.0:25\" or \"[::]:25\"".into()
    } else if message.contains("invalid type") {
        "give the value the type shown in the default postern.toml (strings in quotes, sizes as plain numbers, listeners as lists)".into()
    } else {
        "correct the TOML syntax at that line (https://toml.io)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::users::Address;
    use crate::mailauth::{OnFail, OnTempError};

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(Path::new("/c"), Path::new("/c/postern.toml"), text)
    }

    /// The list used to explain misplaced keys names the top level's keys, each accepted.
    #[test]
    fn top_level_keys_are_top_level() {
        for key in TOP_LEVEL_KEYS {
            let value = match *key {
                "hostname" | "data_dir" => "\"x\"",
                "max_connections_per_ip_exempt" => "[]",
                _ => "10",
            };
            let text = format!("{key} = {value}\n");
            let raw: Result<RawFile, _> = toml::from_str(&text);
            assert!(raw.is_ok(), "{key}: {raw:?}");
        }
    }

    #[test]
    fn state_lives_beside_the_configuration_unless_a_queue_is_already_inside() {
        assert_eq!(
            default_data_dir(Path::new("/etc/postern")),
            Path::new("/var/lib/postern")
        );
        assert_eq!(
            default_data_dir(Path::new("/srv/mail/conf")),
            Path::new("/srv/mail/conf-state")
        );
        assert_eq!(
            default_data_dir(Path::new("postern-data")),
            Path::new("postern-data-state")
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("queue")).expect("queue");
        assert_eq!(default_data_dir(tmp.path()), tmp.path());
    }

    #[test]
    fn the_default_file_parses() {
        let s = parse(crate::config::init::DEFAULT_CONFIG).expect("default parses");
        assert_eq!(s.hostname, "localhost");
        // No data_dir in the default: the state directory beside the configuration.
        assert_eq!(s.data_dir, Path::new("/c-state"));
        assert_eq!(s.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
        assert_eq!(s.min_free_space, 2 * DEFAULT_MAX_MESSAGE_SIZE);
        assert_eq!(s.timeouts, Timeouts::default());
        assert_eq!(s.max_connections, [DEFAULT_MAX_CONNECTIONS; 3]);
        assert!(s.exempt_from_per_ip("127.0.0.9".parse().expect("ip")));
        assert!(s.exempt_from_per_ip("::1".parse().expect("ip")));
        assert!(!s.exempt_from_per_ip("192.0.2.1".parse().expect("ip")));
        assert_eq!(s.timeouts.min_data_rate, DEFAULT_MIN_DATA_RATE);
        assert_eq!(
            s.tls_handshake_timeout,
            Duration::from_secs(DEFAULT_TLS_HANDSHAKE_TIMEOUT)
        );
        assert_eq!(s.max_connections_per_ip, DEFAULT_MAX_CONNECTIONS_PER_IP);
        assert_eq!(
            s.shutdown_grace,
            Duration::from_secs(DEFAULT_SHUTDOWN_GRACE)
        );
        assert_eq!(
            s.tls_reload_interval,
            Some(Duration::from_secs(DEFAULT_TLS_RELOAD_INTERVAL))
        );
        let roles: Vec<_> = s
            .listeners
            .iter()
            .map(|l| (l.role, l.addr.to_string()))
            .collect();
        assert_eq!(
            roles,
            [
                (Role::Smtp, "127.0.0.1:2525".to_string()),
                (Role::Submission, "127.0.0.1:2587".to_string()),
                (Role::Submissions, "127.0.0.1:2465".to_string()),
            ]
        );
    }

    #[test]
    fn connection_limits_per_listener() {
        let s = parse(
            "max_connections = 300\nmax_connections_per_ip = 7\nmin_data_rate = 0\n\
             max_connections_per_ip_exempt = [\"192.0.2.0/24\"]\ntls_handshake_timeout = 5\n\
             [relay]\ntrusted_networks = [\"2001:db8::/32\"]\n\
             [listeners]\nsmtp = [\"[::1]:25\"]\nmax_connections = { smtp = 900, submissions = 40 }\n",
        )
        .expect("parses");
        assert_eq!(s.max_connections, [900, 300, 40]);
        assert_eq!(s.max_connections_per_ip, 7);
        assert_eq!(s.timeouts.min_data_rate, 0);
        assert_eq!(s.tls_handshake_timeout, Duration::from_secs(5));
        for (ip, exempt) in [
            ("192.0.2.200", true),
            ("::ffff:192.0.2.1", true),
            ("2001:db8::5", true),
            ("127.0.0.1", false),
            ("198.51.100.1", false),
        ] {
            assert_eq!(
                s.exempt_from_per_ip(ip.parse().expect("ip")),
                exempt,
                "{ip}"
            );
        }
    }

    #[test]
    fn delivery_settings_and_routes() {
        let s = parse(
            "[delivery]\nip_preference = \"ipv4-only\"\nsource_ipv6 = \"2001:db8::10\"\n\
             first_retry = 60\ngive_up_after = 3600\n\
             [routes]\n\"Example.COM.\" = \"[192.0.2.1]:2525\"\n\
             \"*\" = { host = \"smart.example.net:465\", tls = \"implicit\" }\n\
             [listeners]\nsmtp = [\"[::1]:25\"]\n",
        )
        .expect("parses");
        let d = &s.delivery;
        assert_eq!(
            d.ip_preference,
            crate::deliver::smtp::settings::IpPreference::Ipv4Only
        );
        assert_eq!(d.source_ipv6, Some("2001:db8::10".parse().expect("ip")));
        assert_eq!((d.retry.initial_delay, d.retry.max_lifetime), (60, 3600));
        let route = d.route_for("example.com").expect("route");
        assert_eq!((route.host.as_str(), route.port), ("192.0.2.1", 2525));
        let smarthost = d.route_for("other.org").expect("smarthost");
        assert_eq!(
            (smarthost.host.as_str(), smarthost.port),
            ("smart.example.net", 465)
        );
        assert_eq!(
            smarthost.tls,
            crate::deliver::smtp::settings::RouteTls::Implicit
        );
    }

    #[test]
    fn errors_name_the_line_and_the_fix() {
        let cases = [
            (
                "hostname = \"a\"\nsmtp = [\"127.0.0.1:25\"]\n",
                2,
                "unknown field",
                "spelling",
            ),
            (
                "[listeners]\n\nsmtp = [\"127.0.0.1\"]\n",
                3,
                "socket address",
                "with a port",
            ),
            (
                "hostname = \"not a host\"\n[listeners]\nsmtp = [\"[::1]:25\"]\n",
                1,
                "not a domain",
                "hostname =",
            ),
            ("max_message_size = \"big\"\n", 1, "invalid type", "type"),
            (
                "[listeners]\nsmtp = [\"[::1]:25\"]\nsubmission = [\"[::1]:25\"]\n",
                3,
                "listed twice",
                "one role",
            ),
            ("hostname = [\n", 1, "unclosed array", "TOML syntax"),
            (
                "hostname = \"a.b\"\n\ndata_timeout = 0\n",
                3,
                "close every session",
                "in seconds",
            ),
            (
                "hostname = \"a.b\"\nmax_connections_per_ip = 0\n",
                2,
                "out of range",
                "at least 1",
            ),
            (
                "[listeners]\nsmtp = [\"[::1]:25\"]\n[auth]\nsmtp_listener = false\nhostname = \"mx.b\"\n",
                5,
                "`hostname` is a top-level key, but this line is inside [auth]",
                "above the first [table]",
            ),
            (
                "[listeners]\nsmtp = [\"[::1]:25\"]\n[routes]\n\"b.example\" = \"mx.b\"\ndata_dir = \"/x\"\n",
                5,
                "`data_dir` is a top-level key, but this line is inside [routes]",
                "above the first [table]",
            ),
            (
                "[listeners]\nsmtp = [\"[::1]:25\"]\n[metrics]\nlisten = \"0.0.0.0:9925\"\n",
                4,
                "[metrics] listen = \"0.0.0.0:9925\" is not a loopback address",
                "loopback only",
            ),
            (
                "[listeners]\nsmtp = [\"[::1]:25\"]\n[auth]\n\nmin_password_length = 0\n",
                5,
                "min_password_length = 0 is not a length",
                "in characters",
            ),
            (
                "[listeners]\nsmtp = [\"[::1]:25\"]\nmax_connections = { submission = 0 }\n",
                3,
                "max_connections.submission = 0 is out of range",
                "at least 1",
            ),
            (
                "hostname = \"a.b\"\n[listeners]\nsmtp = [\"[::1]:25\"]\n[reports]\naddresses = [\"dmarc@a.b\",\n  \"not an address\"]\n",
                6,
                "[reports] addresses: \"not an address\" is not an address",
                "addresses of your own domains",
            ),
            (
                "hostname = \"a.b\"\nmax_connections_per_ip_exempt = [\"127.0.0.1/40\"]\n",
                2,
                "not a network",
                "CIDR",
            ),
            (
                "hostname = \"a.b\"\n\n\ntls_handshake_timeout = 0\n",
                4,
                "every TLS handshake",
                "in seconds",
            ),
            (
                "hostname = \"a.b\"\nmin_data_rate = 99999999999\n",
                2,
                "out of range",
                "octets per second",
            ),
            (
                "[delivery]\nip_preference = \"ipv5\"\n[listeners]\nsmtp = [\"[::1]:25\"]\n",
                2,
                "not a known preference",
                "ipv4-only",
            ),
            (
                "[delivery]\n\nmx_port = 0\n[listeners]\nsmtp = [\"[::1]:25\"]\n",
                3,
                "not a port",
                "TCP port",
            ),
            (
                "[routes]\n\"example.com\" = \"mx.example.net\"\n[listeners]\nsmtp = [\"[::1]:25\"]\n",
                2,
                "is not host:port",
                "host:port",
            ),
            (
                "[routes]\n\"ex ample\" = \"mx.example.net:25\"\n[listeners]\nsmtp = [\"[::1]:25\"]\n",
                2,
                "is not a domain",
                "\"*\"",
            ),
            (
                "[routes]\n\n\"*\" = { host = \"h:587\", tls = \"maybe\" }\n[listeners]\nsmtp = [\"[::1]:25\"]\n",
                3,
                "not a TLS mode",
                "verified",
            ),
            (
                "[routes]\n\"*\" = { host = \"h:587\", user = \"me\" }\n[listeners]\nsmtp = [\"[::1]:25\"]\n",
                2,
                "go together",
                "password_file",
            ),
        ];
        for (text, line, message, fix) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, Some(line), "input {text:?}: {e}");
            assert!(e.message.contains(message), "input {text:?}: {e}");
            assert!(e.fix.contains(fix), "input {text:?}: {e}");
            assert!(
                e.to_string().starts_with("/c/postern.toml, line "),
                "input {text:?}: {e}"
            );
        }
    }

    #[test]
    fn policy_errors_name_the_line_and_the_fix() {
        let cases = [
            (
                "[relay]\ntrusted_networks = [\"10.0.0.0/8\", \"10.1\"]\n",
                2,
                "not a network",
                "CIDR",
            ),
            ("[relay]\nheader_from = \"maybe\"\n", 2, "neither", "reject"),
            (
                "[senders]\n\"alice@x.example\" = [\"not an address@\"]\n",
                2,
                "neither an address nor a domain",
                "grant",
            ),
            (
                "[senders]\n\"alice\" = []\n",
                2,
                "malformed address",
                "key each",
            ),
            (
                "[auth]\nlockout_after_failures = 0\n",
                2,
                "every login",
                "number",
            ),
            ("[auth]\nlockout = 3\n", 2, "unknown field", "spelling"),
        ];
        for (text, line, message, fix) in cases {
            let text = format!("{text}[listeners]\nsmtp = [\"127.0.0.1:25\"]\n");
            let e = parse(&text).expect_err(&text);
            assert_eq!(e.line, Some(line), "input {text:?}: {e}");
            assert!(e.message.contains(message), "input {text:?}: {e}");
            assert!(e.fix.contains(fix), "input {text:?}: {e}");
        }
    }

    #[test]
    fn policy_settings_parse() {
        let s = parse(
            "[auth]\nallow_plaintext_on_loopback = true\nlockout_after_failures = 3\nlockout_seconds = 2\n\
             [relay]\ntrusted_networks = [\"192.0.2.0/24\"]\nheader_from = \"allow\"\n\
             [senders]\n\"Alice@Example.org\" = [\"example.net\", \"bob@example.org\"]\n\
             [listeners]\nsmtp = [\"127.0.0.1:25\"]\n",
        )
        .expect("parses");
        assert!(s.auth.allow_plaintext_on_loopback);
        assert_eq!(s.auth.lockout_after, 3);
        assert_eq!(s.auth.lockout, Duration::from_secs(2));
        assert_eq!(s.header_from, HeaderFromCheck::Allow);
        assert!(
            s.trusted_networks
                .contains("192.0.2.1".parse().expect("ip"))
        );
        let alice = Address::parse("alice@example.org").expect("alice");
        let from = |p: &str| proto_core::ReversePath::parse(p).expect("path");
        assert!(s.grants.may_send_as(&alice, &from("<x@EXAMPLE.net>")));
        assert!(s.grants.may_send_as(&alice, &from("<bob@example.org>")));
        assert!(!s.grants.may_send_as(&alice, &from("<carol@example.org>")));
        let d = parse(crate::config::init::DEFAULT_CONFIG).expect("default");
        assert!(!d.auth.allow_plaintext_on_loopback && !d.auth.smtp_listener);
        assert_eq!(d.header_from, HeaderFromCheck::Reject);
        assert!(d.trusted_networks.0.is_empty());
    }

    #[test]
    fn dns_nameservers_parse() {
        let d = parse(crate::config::init::DEFAULT_CONFIG).expect("default");
        assert!(d.dns_nameservers.is_empty(), "default: /etc/resolv.conf");
        let s = parse(
            "[dns]\nnameservers = [\"127.0.0.1:5353\", \"[::1]:53\"]\n\
             [listeners]\nsmtp = [\"127.0.0.1:25\"]\n",
        )
        .expect("dns");
        assert_eq!(
            s.dns_nameservers,
            vec![
                "127.0.0.1:5353".parse::<SocketAddr>().expect("v4"),
                "[::1]:53".parse::<SocketAddr>().expect("v6"),
            ]
        );
        let e = parse("[dns]\nnameservers = [\"127.0.0.1\"]\n").expect_err("no port");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.fix.contains("with a port"), "{e}");
    }

    #[test]
    fn checks_parse() {
        let d = parse(crate::config::init::DEFAULT_CONFIG).expect("default");
        assert_eq!(d.checks, CheckSettings::default());
        assert!(d.checks.enabled);
        assert_eq!(d.checks.spf_fail, OnFail::Reject);
        assert_eq!(d.checks.dmarc_reject, OnFail::Reject);
        assert_eq!(d.checks.dmarc_quarantine, OnFail::Mark);
        assert_eq!(d.checks.temperror, OnTempError::Accept);
        let s = parse(
            "[checks]\nenabled = false\nspf_fail = \"mark\"\ndmarc_reject = \"mark\"\n\
             dmarc_quarantine = \"reject\"\ntemperror = \"defer\"\n\
             [listeners]\nsmtp = [\"127.0.0.1:25\"]\n",
        )
        .expect("checks");
        assert_eq!(
            s.checks,
            CheckSettings {
                enabled: false,
                spf_fail: OnFail::Mark,
                dmarc_reject: OnFail::Mark,
                dmarc_quarantine: OnFail::Reject,
                temperror: OnTempError::Defer,
            }
        );
        for (text, line, message, fix) in [
            (
                "[checks]\nspf_fail = \"drop\"\n",
                2,
                "neither",
                "spf_fail = \"reject\"",
            ),
            (
                "[checks]\n\ndmarc_reject = \"no\"\n",
                3,
                "neither",
                "dmarc_reject =",
            ),
            (
                "[checks]\ntemperror = \"retry\"\n",
                2,
                "neither",
                "\"defer\"",
            ),
            ("[checks]\nspf = true\n", 2, "unknown field", "spelling"),
        ] {
            let text = format!("{text}[listeners]\nsmtp = [\"127.0.0.1:25\"]\n");
            let e = parse(&text).expect_err(&text);
            assert_eq!(e.line, Some(line), "input {text:?}: {e}");
            assert!(e.message.contains(message), "input {text:?}: {e}");
            assert!(e.fix.contains(fix), "input {text:?}: {e}");
            assert!(e.to_string().starts_with("/c/postern.toml, line "), "{e}");
        }
    }

    #[test]
    fn no_listener_is_an_error() {
        let e = parse("hostname = \"mx.example.org\"\n").expect_err("no listeners");
        assert!(e.message.contains("no listeners"), "{e}");
    }
}

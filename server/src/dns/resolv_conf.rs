//! [`ResolverConfig`]: the resolver's settings, given explicitly or read from
//! `/etc/resolv.conf` (resolv.conf(5)).
//!
//! Read from resolv.conf: `nameserver ADDRESS` lines (IPv4 or IPv6, port 53; an IPv6 zone
//! suffix `%ifname` is dropped), `options timeout:N attempts:N` (clamped to 30 and 5 as glibc
//! does). Everything else (`search`, `domain`, `ndots`, `rotate`, ...) is ignored: postern
//! only looks up fully qualified names. With no nameserver line, the local resolver
//! (127.0.0.1 and ::1) is used, as glibc does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// The resolver's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// The recursive nameservers, tried in order.
    pub nameservers: Vec<SocketAddr>,
    /// How long one try on one server may take.
    pub timeout: Duration,
    /// How many rounds over all the servers.
    pub attempts: u32,
    /// The EDNS0 UDP payload size advertised (RFC 6891), or `None` to send no OPT record
    /// (answers are then at most 512 bytes over UDP).
    pub edns_payload: Option<u16>,
    /// How many answers the cache holds at most (0: no cache).
    pub cache_capacity: usize,
    /// The longest time a positive answer is kept, whatever its TTL.
    pub max_ttl: Duration,
    /// The longest time a negative answer is kept (RFC 2308 5 suggests one to three hours).
    pub max_negative_ttl: Duration,
}

/// glibc's RES_TIMEOUT.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// glibc's RES_DFLRETRY.
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// The DNS Flag Day 2020 recommendation: no IP fragmentation.
pub const DEFAULT_EDNS_PAYLOAD: u16 = 1232;

impl ResolverConfig {
    /// Settings with these servers and the defaults for everything else.
    pub fn new(nameservers: Vec<SocketAddr>) -> Self {
        ResolverConfig {
            nameservers,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            edns_payload: Some(DEFAULT_EDNS_PAYLOAD),
            cache_capacity: 10_000,
            max_ttl: Duration::from_secs(24 * 3600),
            max_negative_ttl: Duration::from_secs(3600),
        }
    }

    /// Settings from the text of a resolv.conf file.
    pub fn from_resolv_conf(text: &str) -> Self {
        let mut config = ResolverConfig::new(Vec::new());
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let Some(addr) = words.next() else { continue };
                    let addr = addr.split('%').next().unwrap_or(addr);
                    if let Ok(ip) = addr.parse::<IpAddr>() {
                        config.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("options") => {
                    for option in words {
                        let number = |prefix: &str| {
                            option
                                .strip_prefix(prefix)
                                .and_then(|n| n.parse::<u32>().ok())
                        };
                        if let Some(n) = number("timeout:") {
                            config.timeout = Duration::from_secs(n.clamp(1, 30).into());
                        } else if let Some(n) = number("attempts:") {
                            config.attempts = n.clamp(1, 5);
                        }
                    }
                }
                _ => {}
            }
        }
        if config.nameservers.is_empty() {
            config.nameservers = vec![
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 53),
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 53),
            ];
        }
        config
    }

    /// The settings for the server: `[dns] nameservers` from postern.toml when given
    /// (`Settings::dns_nameservers`), else `/etc/resolv.conf`.
    pub fn for_server(settings: &crate::config::Settings) -> std::io::Result<Self> {
        if settings.dns_nameservers.is_empty() {
            Self::system()
        } else {
            Ok(Self::new(settings.dns_nameservers.clone()))
        }
    }

    /// Settings from `/etc/resolv.conf` (never read by tests).
    pub fn system() -> std::io::Result<Self> {
        Self::from_file(Path::new("/etc/resolv.conf"))
    }

    /// Settings from a resolv.conf file at `path`.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        Ok(Self::from_resolv_conf(&std::fs::read_to_string(path)?))
    }
}

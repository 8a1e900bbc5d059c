//! `[delivery]` and `[routes]` in postern.toml: how mail leaves.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto_core::mail::RetryPolicy;
use serde::Deserialize;
use toml::Spanned;

use crate::config::ConfigError;

/// The default limit on outbound connections open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20;
/// The default limit on outbound connections open at once to one destination domain.
pub const DEFAULT_MAX_CONNECTIONS_PER_DOMAIN: usize = 4;
/// How long a connection attempt to one address may take, by default.
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 30;

/// Which address family is tried first, or only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IpPreference {
    /// IPv6 addresses first, then IPv4.
    #[default]
    Ipv6First,
    /// IPv4 addresses first, then IPv6.
    Ipv4First,
    /// IPv6 only.
    Ipv6Only,
    /// IPv4 only.
    Ipv4Only,
}

/// How a static route uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteTls {
    /// STARTTLS when offered (and what the domain has shown before, see `tls_memory`).
    #[default]
    Opportunistic,
    /// STARTTLS required; the certificate need not verify.
    Required,
    /// STARTTLS required with a certificate that verifies for the host name.
    Verified,
    /// Implicit TLS (port 465 style), verified certificate.
    Implicit,
}

/// Where mail for a domain (or for every domain) goes instead of its MX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    /// The host: a name (resolved with A/AAAA, no MX) or an IP address.
    pub host: String,
    /// The port.
    pub port: u16,
    /// TLS.
    pub tls: RouteTls,
    /// AUTH credentials (user, password), when the route needs them.
    pub auth: Option<(String, String)>,
}

/// Everything about outbound delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySettings {
    /// Address family order.
    pub ip_preference: IpPreference,
    /// Source address for IPv4 connections.
    pub source_ipv4: Option<Ipv4Addr>,
    /// Source address for IPv6 connections.
    pub source_ipv6: Option<Ipv6Addr>,
    /// The port MX hosts are contacted on (25; tests and odd setups change it).
    pub mx_port: u16,
    /// Connections open at once, overall.
    pub max_connections: usize,
    /// Connections open at once to one destination domain.
    pub max_connections_per_domain: usize,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// Retries and give-up time.
    pub retry: RetryPolicy,
    /// After how long a delay warning (a DSN with action `delayed`) is sent; `None`: never.
    pub delay_warning: Option<Duration>,
    /// Extra CA certificates trusted for outbound TLS and MTA-STS (PEM files).
    pub extra_roots: Vec<PathBuf>,
    /// Whether MTA-STS policies are looked up and enforced.
    pub mta_sts: bool,
    /// The HTTPS port MTA-STS policies are fetched from (443; tests change it).
    pub mta_sts_port: u16,
    /// Static routes by domain (lower case, A-labels); `*` is the smarthost for the rest.
    pub routes: BTreeMap<String, StaticRoute>,
}

impl DeliverySettings {
    /// Outbound delivery's retry schedule and delay warning.
    pub fn schedule(&self) -> crate::queue::settle::Schedule {
        crate::queue::settle::Schedule {
            retry: self.retry,
            delay_warning: self.delay_warning,
        }
    }
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            ip_preference: IpPreference::default(),
            source_ipv4: None,
            source_ipv6: None,
            mx_port: 25,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_domain: DEFAULT_MAX_CONNECTIONS_PER_DOMAIN,
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT),
            retry: RetryPolicy::default(),
            delay_warning: None,
            extra_roots: Vec::new(),
            mta_sts: true,
            mta_sts_port: 443,
            routes: BTreeMap::new(),
        }
    }
}

impl DeliverySettings {
    /// The static route for `domain` (A-label, lower case), if any: its own, else `*`.
    pub fn route_for(&self, domain: &str) -> Option<&StaticRoute> {
        self.routes.get(domain).or_else(|| self.routes.get("*"))
    }
}

/// `[delivery]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDelivery {
    ip_preference: Option<Spanned<String>>,
    source_ipv4: Option<Spanned<String>>,
    source_ipv6: Option<Spanned<String>>,
    mx_port: Option<Spanned<u16>>,
    max_connections: Option<Spanned<u64>>,
    max_connections_per_domain: Option<Spanned<u64>>,
    connect_timeout: Option<Spanned<u64>>,
    first_retry: Option<Spanned<u64>>,
    max_retry_interval: Option<Spanned<u64>>,
    give_up_after: Option<Spanned<u64>>,
    delay_warning_after: Option<Spanned<u64>>,
    #[serde(default)]
    tls_roots: Vec<Spanned<PathBuf>>,
    mta_sts: Option<bool>,
    mta_sts_port: Option<Spanned<u16>>,
}

/// One `[routes]` entry as written: `"host:port"` or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawRoute {
    Host(String),
    Table(RawRouteTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteTable {
    host: String,
    tls: Option<String>,
    user: Option<String>,
    password_file: Option<PathBuf>,
}

/// Checks `[delivery]` and `[routes]`. `src` names the file and its lines; `dir` is
/// the configuration directory (for relative paths).
pub(crate) fn parse(
    raw: RawDelivery,
    routes: BTreeMap<Spanned<String>, Spanned<RawRoute>>,
    dir: &Path,
    src: &crate::config::Source<'_>,
) -> Result<DeliverySettings, ConfigError> {
    let error =
        |span: Range<usize>, message: String, fix: &str| src.error(Some(span), message, fix);
    let mut s = DeliverySettings::default();
    if let Some(p) = raw.ip_preference {
        s.ip_preference = match p.get_ref().as_str() {
            "ipv6" => IpPreference::Ipv6First,
            "ipv4" => IpPreference::Ipv4First,
            "ipv6-only" => IpPreference::Ipv6Only,
            "ipv4-only" => IpPreference::Ipv4Only,
            other => {
                return Err(error(
                    p.span(),
                    format!("ip_preference = {other:?} is not a known preference"),
                    "write \"ipv6\", \"ipv4\", \"ipv6-only\" or \"ipv4-only\"",
                ));
            }
        };
    }
    if let Some(a) = raw.source_ipv4 {
        match a.get_ref().parse::<Ipv4Addr>() {
            Ok(ip) => s.source_ipv4 = Some(ip),
            Err(_) => {
                return Err(error(
                    a.span(),
                    format!("source_ipv4 = {:?} is not an IPv4 address", a.get_ref()),
                    "write an address of this machine, e.g. source_ipv4 = \"192.0.2.10\"",
                ));
            }
        }
    }
    if let Some(a) = raw.source_ipv6 {
        match a.get_ref().parse::<Ipv6Addr>() {
            Ok(ip) => s.source_ipv6 = Some(ip),
            Err(_) => {
                return Err(error(
                    a.span(),
                    format!("source_ipv6 = {:?} is not an IPv6 address", a.get_ref()),
                    "write an address of this machine, e.g. source_ipv6 = \"2001:db8::10\"",
                ));
            }
        }
    }
    for (key, value, slot) in [
        ("mx_port", raw.mx_port, &mut s.mx_port),
        ("mta_sts_port", raw.mta_sts_port, &mut s.mta_sts_port),
    ] {
        if let Some(v) = value {
            if *v.get_ref() == 0 {
                return Err(error(
                    v.span(),
                    format!("{key} = 0 is not a port"),
                    "give a TCP port, e.g. 25",
                ));
            }
            *slot = v.into_inner();
        }
    }
    for (key, value, slot) in [
        (
            "max_connections",
            raw.max_connections,
            &mut s.max_connections,
        ),
        (
            "max_connections_per_domain",
            raw.max_connections_per_domain,
            &mut s.max_connections_per_domain,
        ),
    ] {
        if let Some(v) = value {
            match usize::try_from(*v.get_ref()) {
                Ok(n) if n >= 1 => *slot = n,
                _ => {
                    return Err(error(
                        v.span(),
                        format!("{key} = {} is out of range", v.get_ref()),
                        "give a number of connections of at least 1",
                    ));
                }
            }
        }
    }
    let seconds = |v: Option<Spanned<u64>>, key: &str| -> Result<Option<u64>, ConfigError> {
        match v {
            Some(v) if *v.get_ref() == 0 => Err(error(
                v.span(),
                format!("{key} = 0 is not a usable time"),
                "give a number of seconds of at least 1",
            )),
            Some(v) => Ok(Some(v.into_inner())),
            None => Ok(None),
        }
    };
    if let Some(t) = seconds(raw.connect_timeout, "connect_timeout")? {
        s.connect_timeout = Duration::from_secs(t);
    }
    if let Some(t) = seconds(raw.first_retry, "first_retry")? {
        s.retry.initial_delay = t;
    }
    if let Some(t) = seconds(raw.max_retry_interval, "max_retry_interval")? {
        s.retry.max_delay = t;
    }
    if let Some(t) = seconds(raw.give_up_after, "give_up_after")? {
        s.retry.max_lifetime = t;
    }
    s.delay_warning =
        seconds(raw.delay_warning_after, "delay_warning_after")?.map(Duration::from_secs);
    for root in raw.tls_roots {
        let path = dir.join(root.get_ref());
        if !path.is_file() {
            return Err(error(
                root.span(),
                format!("tls_roots: {} is not a readable file", path.display()),
                "give PEM files of CA certificates, relative to the configuration directory",
            ));
        }
        s.extra_roots.push(path);
    }
    s.mta_sts = raw.mta_sts.unwrap_or(true);

    for (domain, route) in routes {
        let span = domain.span();
        let key = domain
            .into_inner()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let domain = if key == "*" {
            key
        } else {
            let valid = matches!(
                proto_core::Domain::parse(&key),
                Ok(proto_core::Domain::Name(_))
            );
            match idna::domain_to_ascii(&key) {
                Ok(d) if valid && !d.is_empty() => d,
                _ => {
                    return Err(error(
                        span,
                        format!("[routes]: {key:?} is not a domain"),
                        "key routes by domain, e.g. \"example.com\" = \"mx.example.net:25\", or \"*\" for every domain",
                    ));
                }
            }
        };
        let route_span = route.span();
        let (host, tls, user, password_file) = match route.into_inner() {
            RawRoute::Host(h) => (h, None, None, None),
            RawRoute::Table(t) => (t.host, t.tls, t.user, t.password_file),
        };
        let Some((host, port)) = split_host_port(&host) else {
            return Err(error(
                route_span,
                format!("[routes]: {host:?} is not host:port"),
                "write the next hop as \"host:port\", \"[192.0.2.1]:25\" or \"[2001:db8::1]:587\"",
            ));
        };
        let tls = match tls.as_deref() {
            None | Some("opportunistic") => RouteTls::Opportunistic,
            Some("required") => RouteTls::Required,
            Some("verified") => RouteTls::Verified,
            Some("implicit") => RouteTls::Implicit,
            Some(other) => {
                return Err(error(
                    route_span,
                    format!("[routes]: tls = {other:?} is not a TLS mode"),
                    "write tls = \"opportunistic\", \"required\", \"verified\" or \"implicit\"",
                ));
            }
        };
        let auth = match (user, password_file) {
            (None, None) => None,
            (Some(user), Some(file)) => {
                let path = dir.join(&file);
                let password = std::fs::read_to_string(&path).map_err(|e| {
                    error(
                        route_span.clone(),
                        format!("[routes]: cannot read {}: {e}", path.display()),
                        "put the password alone in that file (readable by postern only)",
                    )
                })?;
                Some((user, password.trim_end_matches(['\r', '\n']).to_string()))
            }
            _ => {
                return Err(error(
                    route_span,
                    "[routes]: user and password_file go together".into(),
                    "give both user = \"...\" and password_file = \"...\", or neither",
                ));
            }
        };
        s.routes.insert(
            domain,
            StaticRoute {
                host,
                port,
                tls,
                auth,
            },
        );
    }
    Ok(s)
}

/// `host:port`, `[v4]:port` or `[v6]:port`; the host comes back without brackets.
fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        host.parse::<IpAddr>().ok()?;
        (host.to_string(), port)
    } else {
        let (host, port) = text.rsplit_once(':')?;
        if host.is_empty() || host.contains(':') {
            return None;
        }
        (host.to_ascii_lowercase(), port)
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        let cases = [
            ("mx.example.net:25", Some(("mx.example.net", 25))),
            ("MX.Example.NET:587", Some(("mx.example.net", 587))),
            ("[192.0.2.1]:25", Some(("192.0.2.1", 25))),
            ("[::1]:2525", Some(("::1", 2525))),
            ("mx.example.net", None),
            ("::1:25", None),
            ("[mx.example.net]:25", None),
            ("mx.example.net:0", None),
            ("mx.example.net:99999", None),
            (":25", None),
        ];
        for (input, want) in cases {
            let got = split_host_port(input);
            assert_eq!(
                got.as_ref().map(|(h, p)| (h.as_str(), *p)),
                want,
                "input {input}"
            );
        }
    }
}

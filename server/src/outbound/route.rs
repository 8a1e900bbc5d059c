//! Where mail for a domain goes: static routes, else its MX hosts (RFC 5321 section 5.1).
//!
//! - MX records in preference order, hosts of equal preference shuffled (5.1: "the sender
//!   MUST randomize them to spread the load"), each host's addresses in the configured family
//!   order.
//! - No MX records (the name exists but has none): the domain itself, its A/AAAA records, is
//!   the implicit MX (5.1: "the domain name [...] is treated as if it was associated with an
//!   implicit MX RR, with a preference of 0").
//! - A null MX (RFC 7505): the domain accepts no mail, a permanent failure (556 5.1.10).
//! - A domain that does not exist: a permanent failure (5.1.2).
//! - DNS trouble: a temporary failure, tried again later.

use std::net::{IpAddr, SocketAddr};

use crate::dns::{DnsError, Mx, Resolver};

use super::settings::{DeliverySettings, IpPreference, RouteTls, StaticRoute};

/// One host to try, with its addresses in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The host's name (for TLS: SNI and certificate checks), or the IP address as text.
    pub host: String,
    /// Its addresses, with port.
    pub addrs: Vec<SocketAddr>,
}

/// Where to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The hosts, most preferred first.
    pub hops: Vec<Hop>,
    /// The static route this comes from, if any (its TLS mode and credentials apply).
    pub static_route: Option<StaticRoute>,
    /// Why some hosts were left out (no addresses, DNS errors), for the log and the bounce.
    pub skipped: Vec<String>,
}

/// Why there is nowhere to deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The domain declared it accepts no mail.
    #[error("{0} does not accept mail (null MX, RFC 7505)")]
    NullMx(String),
    /// The domain does not exist, or has neither MX nor address records.
    #[error("{0}")]
    NoSuchDomain(String),
    /// No host had a usable address; or DNS failed: try again later.
    #[error("{0}")]
    Temporary(String),
}

/// Finds the route for `domain` (A-label, lower case). `shuffle` gets a slice of hosts of
/// equal preference to put in random order (tests pass a fixed order).
pub async fn find(
    domain: &str,
    settings: &DeliverySettings,
    resolver: &Resolver,
    shuffle: &mut (dyn FnMut(&mut [String]) + Send),
) -> Result<Route, RouteError> {
    if let Some(route) = settings.route_for(domain) {
        let mut skipped = Vec::new();
        let hop = hop(&route.host, route.port, settings, resolver, &mut skipped).await;
        return match hop {
            Some(hop) => Ok(Route {
                hops: vec![hop],
                static_route: Some(route.clone()),
                skipped,
            }),
            None => Err(RouteError::Temporary(format!(
                "static route {}:{}: {}",
                route.host,
                route.port,
                skipped.join("; ")
            ))),
        };
    }
    let names: Vec<String> = match resolver.mx(domain).await {
        Ok(Mx::Null) => return Err(RouteError::NullMx(domain.to_string())),
        Ok(Mx::Hosts(hosts)) if !hosts.is_empty() => {
            let mut names = Vec::new();
            let mut i = 0;
            while i < hosts.len() {
                let pref = hosts[i].preference;
                let mut group: Vec<String> = hosts[i..]
                    .iter()
                    .take_while(|h| h.preference == pref)
                    .map(|h| {
                        h.exchange
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_ascii_lowercase()
                    })
                    .collect();
                i += group.len();
                shuffle(&mut group);
                names.extend(group);
            }
            names
        }
        // NODATA (or an answer with no usable host): the implicit MX.
        Ok(Mx::Hosts(_)) | Err(DnsError::NoData { .. }) => vec![domain.to_string()],
        Err(e @ DnsError::NxDomain { .. }) => {
            return Err(RouteError::NoSuchDomain(format!("{domain}: {e}")));
        }
        Err(e) => return Err(RouteError::Temporary(e.to_string())),
    };
    let implicit = names.len() == 1 && names[0] == domain;
    let mut hops = Vec::new();
    let mut skipped = Vec::new();
    for name in names {
        if let Some(h) = hop(&name, settings.mx_port, settings, resolver, &mut skipped).await {
            hops.push(h);
        }
    }
    if hops.is_empty() {
        let why = skipped.join("; ");
        // The implicit MX of a name with no address records: nothing to deliver to, ever
        // (the domain exists, but is not a mail domain).
        if implicit && !why.contains("temporary") {
            return Err(RouteError::NoSuchDomain(format!(
                "{domain} has no MX and no address records"
            )));
        }
        return Err(RouteError::Temporary(format!(
            "no usable mail exchanger: {why}"
        )));
    }
    Ok(Route {
        hops,
        static_route: None,
        skipped,
    })
}

/// The addresses of `host` (a name or an IP literal) on `port`, ordered by preference;
/// `None` (with a note in `skipped`) when it has none usable.
async fn hop(
    host: &str,
    port: u16,
    settings: &DeliverySettings,
    resolver: &Resolver,
    skipped: &mut Vec<String>,
) -> Option<Hop> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return family_allowed(settings.ip_preference, ip).then(|| Hop {
            host: host.to_string(),
            addrs: vec![SocketAddr::new(ip, port)],
        });
    }
    let (want6, want4) = match settings.ip_preference {
        IpPreference::Ipv6Only => (true, false),
        IpPreference::Ipv4Only => (false, true),
        _ => (true, true),
    };
    let v6 = if want6 {
        resolver.aaaa(host).await
    } else {
        Ok(Vec::new())
    };
    let v4 = if want4 {
        resolver.a(host).await
    } else {
        Ok(Vec::new())
    };
    let mut six: Vec<IpAddr> = Vec::new();
    let mut four: Vec<IpAddr> = Vec::new();
    let mut problems = Vec::new();
    match v6 {
        Ok(a) => six.extend(a.into_iter().map(IpAddr::V6)),
        Err(e) if e.is_not_found() => {}
        Err(e) => problems.push(format!("AAAA: {e}")),
    }
    match v4 {
        Ok(a) => four.extend(a.into_iter().map(IpAddr::V4)),
        Err(e) if e.is_not_found() => {}
        Err(e) => problems.push(format!("A: {e}")),
    }
    let ordered: Vec<IpAddr> = match settings.ip_preference {
        IpPreference::Ipv4First => four.into_iter().chain(six).collect(),
        _ => six.into_iter().chain(four).collect(),
    };
    if ordered.is_empty() {
        skipped.push(if problems.is_empty() {
            format!("{host} has no address records")
        } else {
            format!("{host}: temporary DNS failure ({})", problems.join(", "))
        });
        return None;
    }
    Some(Hop {
        host: host.to_string(),
        addrs: ordered
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
    })
}

/// Whether the preference allows connecting to `ip`.
fn family_allowed(preference: IpPreference, ip: IpAddr) -> bool {
    match preference {
        IpPreference::Ipv6Only => ip.is_ipv6(),
        IpPreference::Ipv4Only => ip.is_ipv4(),
        _ => true,
    }
}

impl Route {
    /// The TLS mode of the route: a static route's own, else opportunistic.
    pub fn tls(&self) -> RouteTls {
        self.static_route
            .as_ref()
            .map_or(RouteTls::Opportunistic, |r| r.tls)
    }
}

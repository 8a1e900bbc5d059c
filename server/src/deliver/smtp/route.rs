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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;
    use crate::dns::ResolverConfig;
    use crate::dns::test_server::TestServer;

    const ZONE: &str = "\
test. 3600 SOA ns.test. hostmaster.test. 1 7200 900 1209600 300
pref.test. 300 MX 20 c.pref.test.
pref.test. 300 MX 10 a.pref.test.
pref.test. 300 MX 10 b.pref.test.
a.pref.test. 300 A 192.0.2.1
a.pref.test. 300 AAAA 2001:db8::1
b.pref.test. 300 A 192.0.2.2
c.pref.test. 300 AAAA 2001:db8::3
implicit.test. 300 A 192.0.2.9
null.test. 300 MX 0 .
noaddr.test. 300 MX 10 nowhere.noaddr.test.
noaddr.test. 300 TXT \"v=spf1 -all\"
broken.test. 300 MX 10 mx.broken.test.
mx.broken.test. 300 SERVFAIL -
";

    fn resolver(dir: &std::path::Path) -> (TestServer, Resolver) {
        let path = dir.join("zone");
        std::fs::write(&path, ZONE).expect("zone");
        let server = TestServer::start(Ipv4Addr::LOCALHOST.into(), &path).expect("dns");
        let mut config = ResolverConfig::new(vec![server.addr]);
        config.timeout = Duration::from_millis(300);
        config.attempts = 1;
        (server, Resolver::new(config))
    }

    fn find_with(
        domain: &str,
        settings: &DeliverySettings,
        resolver: &Resolver,
        reverse: bool,
    ) -> Result<Route, RouteError> {
        // A deterministic "shuffle": reverse each group of equal preference (or keep it).
        let mut shuffle = |hosts: &mut [String]| {
            if reverse {
                hosts.reverse();
            }
        };
        smol::block_on(find(domain, settings, resolver, &mut shuffle))
    }

    fn plan(route: &Route) -> Vec<(String, Vec<String>)> {
        route
            .hops
            .iter()
            .map(|h| {
                (
                    h.host.clone(),
                    h.addrs.iter().map(|a| a.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn mx_order_families_and_equal_preferences() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_server, resolver) = resolver(tmp.path());
        let mut settings = DeliverySettings {
            mx_port: 2525,
            ..DeliverySettings::default()
        };
        let route = find_with("pref.test", &settings, &resolver, false).expect("route");
        let want = |first: &str, second: &str| {
            let host = |h: &str| -> (String, Vec<String>) {
                match h {
                    "a" => (
                        "a.pref.test".into(),
                        vec!["[2001:db8::1]:2525".into(), "192.0.2.1:2525".into()],
                    ),
                    "b" => ("b.pref.test".into(), vec!["192.0.2.2:2525".into()]),
                    _ => unreachable!(),
                }
            };
            vec![
                host(first),
                host(second),
                ("c.pref.test".into(), vec!["[2001:db8::3]:2525".into()]),
            ]
        };
        assert_eq!(plan(&route), want("a", "b"));
        // The equal-preference group goes through the shuffle; the 20 stays last.
        let route = find_with("pref.test", &settings, &resolver, true).expect("route");
        assert_eq!(plan(&route), want("b", "a"));

        settings.ip_preference = IpPreference::Ipv4First;
        let route = find_with("pref.test", &settings, &resolver, false).expect("route");
        assert_eq!(
            route.hops[0]
                .addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>(),
            vec!["192.0.2.1:2525", "[2001:db8::1]:2525"]
        );
        settings.ip_preference = IpPreference::Ipv4Only;
        let route = find_with("pref.test", &settings, &resolver, false).expect("route");
        assert_eq!(
            plan(&route)
                .iter()
                .map(|(h, _)| h.as_str())
                .collect::<Vec<_>>(),
            vec!["a.pref.test", "b.pref.test"],
            "c has only IPv6"
        );
        assert!(
            route.skipped[0].contains("c.pref.test has no address"),
            "{:?}",
            route.skipped
        );
    }

    #[test]
    fn implicit_null_missing_and_broken() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_server, resolver) = resolver(tmp.path());
        let settings = DeliverySettings::default();
        let route = find_with("implicit.test", &settings, &resolver, false).expect("implicit");
        assert_eq!(
            plan(&route),
            vec![(
                "implicit.test".to_string(),
                vec!["192.0.2.9:25".to_string()]
            )]
        );
        assert!(matches!(
            find_with("null.test", &settings, &resolver, false),
            Err(RouteError::NullMx(_))
        ));
        assert!(matches!(
            find_with("absent.test", &settings, &resolver, false),
            Err(RouteError::NoSuchDomain(_))
        ));
        // An MX whose host has no address: nothing to try now, maybe later.
        assert!(matches!(
            find_with("noaddr.test", &settings, &resolver, false),
            Err(RouteError::Temporary(_))
        ));
        // A server failure is temporary.
        assert!(matches!(
            find_with("broken.test", &settings, &resolver, false),
            Err(RouteError::Temporary(_))
        ));
    }

    #[test]
    fn static_routes_win_over_mx() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_server, resolver) = resolver(tmp.path());
        let mut settings = DeliverySettings::default();
        settings.routes.insert(
            "pref.test".into(),
            StaticRoute {
                host: "192.0.2.50".into(),
                port: 587,
                tls: RouteTls::Required,
                auth: None,
            },
        );
        settings.routes.insert(
            "*".into(),
            StaticRoute {
                host: "b.pref.test".into(),
                port: 2525,
                tls: RouteTls::Opportunistic,
                auth: None,
            },
        );
        let route = find_with("pref.test", &settings, &resolver, false).expect("route");
        assert_eq!(
            plan(&route),
            vec![("192.0.2.50".to_string(), vec!["192.0.2.50:587".to_string()])]
        );
        assert_eq!(route.tls(), RouteTls::Required);
        // The smarthost takes every other domain, even one without MX or address.
        let route = find_with("null.test", &settings, &resolver, false).expect("smarthost");
        assert_eq!(
            plan(&route),
            vec![(
                "b.pref.test".to_string(),
                vec!["192.0.2.2:2525".to_string()]
            )]
        );
    }
}

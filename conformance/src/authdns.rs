//! The mock DNS of the suites: a [`Zone`] built from a suite's data, answering mail-auth
//! through the server's cache adapter, [`postern::mailauth::authdns`] (re-exported here), so
//! the suites and the server feed mail-auth the same way.
//!
//! How answers reach mail-auth, and what its caches cannot hold, is documented there
//! (server/src/mailauth/authdns.rs).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use postern::mailauth::authdns::{
    Answer, AuthDns, AuthParameters, DnsSource, TxtKind, fqdn, offline_authenticator, reverse_name,
};

/// One record of a [`Zone`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZoneRecord {
    /// A TXT record, its character-strings joined.
    Txt(Vec<u8>),
    /// An A record.
    A(Ipv4Addr),
    /// An AAAA record.
    Aaaa(Ipv6Addr),
    /// An MX record: preference, exchange.
    Mx(u16, String),
    /// A PTR record (on an `in-addr.arpa` / `ip6.arpa` name).
    Ptr(String),
    /// A CNAME record: the name is an alias of this one.
    Cname(String),
}

/// An in-memory zone: the mock DNS of the suites.
///
/// A name in the zone answers the records of the asked type it has (following a CNAME when
/// it has none), else NODATA, or a time-out if the name is marked so; a name not in the
/// zone is NXDOMAIN.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    nodes: HashMap<Box<str>, Node>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    records: Vec<ZoneRecord>,
    timeout: bool,
}

impl Zone {
    /// An empty zone: every name is NXDOMAIN.
    pub fn new() -> Zone {
        Zone::default()
    }

    /// Adds a record to `name`.
    pub fn add(&mut self, name: &str, record: ZoneRecord) {
        self.nodes
            .entry(fqdn(name))
            .or_default()
            .records
            .push(record);
    }

    /// Makes `name` exist (with no records yet).
    pub fn add_name(&mut self, name: &str) {
        self.nodes.entry(fqdn(name)).or_default();
    }

    /// Questions about `name` for a type it has no record of time out.
    pub fn set_timeout(&mut self, name: &str) {
        self.nodes.entry(fqdn(name)).or_default().timeout = true;
    }

    /// Whether `name` has records of a type `pick` selects.
    pub fn has<T>(&self, name: &str, pick: impl Fn(&ZoneRecord) -> Option<T>) -> bool {
        self.nodes
            .get(&fqdn(name))
            .is_some_and(|n| n.records.iter().any(|r| pick(r).is_some()))
    }

    fn answer<T>(&self, name: &str, pick: impl Fn(&ZoneRecord) -> Option<T>) -> Answer<T> {
        let mut name = fqdn(name);
        // A CNAME chain longer than this is a loop: the server would fail.
        for _ in 0..8 {
            let Some(node) = self.nodes.get(&name) else {
                return Answer::NxDomain;
            };
            let records: Vec<T> = node.records.iter().filter_map(&pick).collect();
            if !records.is_empty() {
                return Answer::Records(records);
            }
            let cname = node.records.iter().find_map(|r| match r {
                ZoneRecord::Cname(target) => Some(fqdn(target)),
                _ => None,
            });
            match cname {
                Some(target) => name = target,
                None if node.timeout => return Answer::TempError,
                None => return Answer::NoData,
            }
        }
        Answer::TempError
    }
}

impl DnsSource for Zone {
    fn txt(&self, name: &str) -> Answer<Vec<u8>> {
        self.answer(name, |r| match r {
            ZoneRecord::Txt(t) => Some(t.clone()),
            _ => None,
        })
    }

    fn a(&self, name: &str) -> Answer<Ipv4Addr> {
        self.answer(name, |r| match r {
            ZoneRecord::A(a) => Some(*a),
            _ => None,
        })
    }

    fn aaaa(&self, name: &str) -> Answer<Ipv6Addr> {
        self.answer(name, |r| match r {
            ZoneRecord::Aaaa(a) => Some(*a),
            _ => None,
        })
    }

    fn mx(&self, name: &str) -> Answer<(u16, String)> {
        self.answer(name, |r| match r {
            ZoneRecord::Mx(p, x) => Some((*p, x.clone())),
            _ => None,
        })
    }

    fn ptr(&self, addr: IpAddr) -> Answer<String> {
        self.answer(&reverse_name(addr), |r| match r {
            ZoneRecord::Ptr(p) => Some(p.clone()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spf(source: &dyn DnsSource, domain: &str, ip: &str) -> mail_auth::SpfResult {
        let ip: IpAddr = ip.parse().expect("address");
        let dns = AuthDns::new(source, TxtKind::Spf).with_addresses(&[ip]);
        let sender = format!("user@{domain}");
        let params = mail_auth::spf::verify::SpfParameters::verify_mail_from(
            ip,
            "helo.example",
            "receiver.example",
            &sender,
        );
        futures_lite::future::block_on(offline_authenticator().verify_spf(dns.parameters(params)))
            .result()
    }

    #[test]
    fn answers_reach_mail_auth() {
        use mail_auth::SpfResult;
        let mut zone = Zone::new();
        zone.add(
            "pass.example",
            ZoneRecord::Txt(b"v=spf1 a:host.example -all".to_vec()),
        );
        zone.add("host.example", ZoneRecord::A(Ipv4Addr::new(192, 0, 2, 1)));
        zone.add("nodata.example", ZoneRecord::A(Ipv4Addr::new(192, 0, 2, 1)));
        zone.add(
            "slow.example",
            ZoneRecord::Txt(b"v=spf1 a:down.example -all".to_vec()),
        );
        zone.set_timeout("down.example");
        zone.add_name("down.example");
        let cases = [
            ("pass.example", "192.0.2.1", SpfResult::Pass),
            ("pass.example", "192.0.2.2", SpfResult::Fail),
            ("nxdomain.example", "192.0.2.1", SpfResult::None),
            ("nodata.example", "192.0.2.1", SpfResult::None),
            ("slow.example", "192.0.2.1", SpfResult::TempError),
        ];
        for (domain, ip, want) in cases {
            assert_eq!(spf(&zone, domain, ip), want, "{domain} from {ip}");
        }
    }

    #[test]
    fn zone_answers() {
        let mut zone = Zone::new();
        zone.add("a.example", ZoneRecord::A(Ipv4Addr::new(192, 0, 2, 1)));
        zone.add("alias.example", ZoneRecord::Cname("a.example".into()));
        zone.set_timeout("slow.example");
        zone.add("slow.example", ZoneRecord::Txt(b"x".to_vec()));
        assert_eq!(
            zone.a("alias.example."),
            Answer::Records(vec![Ipv4Addr::new(192, 0, 2, 1)])
        );
        assert_eq!(zone.txt("a.example."), Answer::NoData);
        assert_eq!(zone.txt("b.example."), Answer::NxDomain);
        assert_eq!(zone.a("slow.example."), Answer::TempError);
        assert_eq!(
            zone.txt("slow.example."),
            Answer::Records(vec![b"x".to_vec()])
        );
    }
}

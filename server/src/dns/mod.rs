//! A DNS stub resolver: `hickory-proto` as the codec, async-io sockets as the transport.
//!
//! Its callers are outbound routing ([`crate::deliver::smtp::route`]), MTA-STS and the mail-auth
//! checks ([`crate::mailauth`]). The API is shaped for them:
//!
//! - [`Resolver::mx`] gives [`Mx::Hosts`] sorted by preference, or [`Mx::Null`] for a null MX
//!   (RFC 7505), or [`DnsError::NoData`] when routing must fall back to the implicit MX
//!   (RFC 5321 5.1: the domain's own A/AAAA).
//! - [`Resolver::a`], [`Resolver::aaaa`], [`Resolver::txt`] (the strings of each record joined,
//!   as RFC 7208 3.3 and RFC 6376 3.6.2.2 read them), [`Resolver::ptr`].
//! - [`Resolver::lookup`] for any type, returning an [`Answer`] with its `valid_until`: what
//!   mail-auth's caches need.
//! - Errors say whether a name is absent for good ([`DnsError::NxDomain`],
//!   [`DnsError::NoData`]) or the answer is only unavailable now ([`DnsError::Temporary`]):
//!   4xx versus 5xx for the SMTP side.
//!
//! # Feeding mail-auth ([`crate::mailauth::dns`] does this)
//!
//! mail-auth 0.13.3 has no resolver trait (its source has none; its own docs say so); its injection
//! point is its DNS caches (`Parameters::new(x).with_cache(&caches)`, one cache type each for
//! TXT, MX, IPv4, IPv6 and PTR). The plan: build the authenticator with no nameservers, run a
//! check, collect the names it missed, fetch them here with [`Resolver::lookup`] (TXT parsed
//! with mail-auth's `TxtRecordParser`, keyed by the lower-case FQDN with its trailing dot, as
//! [`Name::to_ascii`] of a lower-cased name gives; PTR keyed by the IP address), insert each
//! with [`Answer::valid_until`] as its expiry, store [`DnsError::NxDomain`] / [`DnsError::NoData`]
//! as negative entries, and run the check again (a bounded number of rounds).
//!
//! # Transport (RFC 1035 4.2, RFC 7766, RFC 5452)
//!
//! Each try sends over UDP from a fresh socket bound to port 0 (a random source port) with a
//! random 16-bit id, and accepts only a response whose id and question match (RFC 5452 9.1);
//! anything else is ignored until the try's timeout. A truncated answer (TC) is asked again
//! over TCP, on the same server. Servers are tried in order, `attempts` rounds, each try
//! bounded by `timeout`; SERVFAIL, REFUSED and similar move to the next server.
//! EDNS0 (RFC 6891) is sent when [`ResolverConfig::edns_payload`] is set.

// Not called from the server yet: outbound routing and mail-auth will be its callers.

mod cache;
mod resolv_conf;
mod transport;

#[cfg(any(test, feature = "testkit"))]
pub mod test_server;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
pub use hickory_proto::rr::{Name, RData, RecordType};

use cache::Cache;
pub use cache::{Clock, SystemClock};
pub use resolv_conf::ResolverConfig;

/// What lookups ended in, since the start ([`outcomes`]), as the metrics show them.
static OUTCOMES: [std::sync::atomic::AtomicU64; OUTCOME_NAMES.len()] =
    [const { std::sync::atomic::AtomicU64::new(0) }; OUTCOME_NAMES.len()];

/// The outcomes counted, in [`outcomes`]'s order: an answer from the servers, NXDOMAIN,
/// NODATA, a temporary failure (timeouts, SERVFAIL, network errors), a CNAME chain too
/// long or looping, and an answer (positive or negative) from the cache.
pub const OUTCOME_NAMES: [&str; 6] = [
    "answer",
    "nxdomain",
    "nodata",
    "temporary",
    "cname_loop",
    "cached",
];

/// How many lookups of this process ended in each of [`OUTCOME_NAMES`].
pub fn outcomes() -> [(&'static str, u64); OUTCOME_NAMES.len()] {
    std::array::from_fn(|i| {
        (
            OUTCOME_NAMES[i],
            OUTCOMES[i].load(std::sync::atomic::Ordering::Relaxed),
        )
    })
}

/// Counts one lookup's outcome.
fn count(outcome: &str) {
    if let Some(i) = OUTCOME_NAMES.iter().position(|n| *n == outcome) {
        OUTCOMES[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The longest CNAME chain followed before giving up (BIND and Unbound use similar bounds).
pub const MAX_CNAME_CHAIN: usize = 8;

/// The most PTR names [`Resolver::verified_name`] looks at (RFC 7208 5.5 stops at 10 too).
pub const MAX_PTR_NAMES: usize = 10;

/// A stub resolver: sends queries to the configured recursive nameservers and caches answers.
///
/// Cheap to share behind an `Arc`; lookups may run concurrently.
#[derive(Debug)]
pub struct Resolver {
    config: ResolverConfig,
    clock: Arc<dyn Clock>,
    cache: Mutex<Cache>,
}

/// The answer to one question, CNAMEs followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The name the records belong to: the question's name, or the end of its CNAME chain.
    pub name: Name,
    /// The records of the asked type, in the order the server gave them.
    pub records: Vec<RData>,
    /// When this answer stops being valid: fetch time plus the smallest TTL met (CNAMEs too),
    /// capped by [`ResolverConfig::max_ttl`].
    pub valid_until: Instant,
}

/// The mail exchangers of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mx {
    /// Hosts sorted by preference, lowest (most preferred) first; equal preferences keep the
    /// server's order (shuffling equals is routing's job, RFC 5321 5.1).
    Hosts(Vec<MxHost>),
    /// A null MX (RFC 7505 3: a single MX with preference 0 and exchange "."): the domain
    /// accepts no mail, a permanent failure.
    Null,
}

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The preference: lower is tried first.
    pub preference: u16,
    /// The host's name.
    pub exchange: Name,
}

/// Why a lookup has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// The name does not exist (RCODE 3, NXDOMAIN): permanent.
    #[error("{name}: no such domain")]
    NxDomain {
        /// The name that does not exist (the end of the CNAME chain, if any).
        name: Name,
    },
    /// The name exists, but has no record of this type (NODATA, RFC 2308 2.2): permanent.
    #[error("{name}: no {rtype} record")]
    NoData {
        /// The name asked about (the end of the CNAME chain, if any).
        name: Name,
        /// The type asked for.
        rtype: RecordType,
    },
    /// No server gave a usable answer (timeouts, SERVFAIL, network errors): try again later.
    #[error("{name}: temporary DNS failure: {reason}")]
    Temporary {
        /// The name asked about.
        name: Name,
        /// The last problem met.
        reason: TempReason,
    },
    /// The CNAME chain loops or is longer than [`MAX_CNAME_CHAIN`]: treated as temporary,
    /// as resolvers answer SERVFAIL for it.
    #[error("{name}: CNAME chain loops or is too long")]
    CnameChain {
        /// The name asked about.
        name: Name,
    },
    /// The text is not a domain name.
    #[error("{0:?} is not a valid domain name")]
    InvalidName(String),
}

/// Why a query failed for now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TempReason {
    /// No answer within the timeout, from any server, in any round.
    #[error("no answer in time")]
    Timeout,
    /// A server answered with this error code (SERVFAIL, REFUSED, NOTIMP, ...).
    #[error("server answered {0}")]
    Server(ResponseCode),
    /// A socket error (refused, unreachable, reset).
    #[error("network error: {0}")]
    Io(String),
    /// A TCP answer that does not parse or does not match the question.
    #[error("malformed answer")]
    Malformed,
    /// No nameserver is configured.
    #[error("no nameserver configured")]
    NoServers,
}

impl Resolver {
    /// A resolver reading the system clock.
    pub fn new(config: ResolverConfig) -> Self {
        Resolver::with_clock(config, Arc::new(SystemClock))
    }

    /// A resolver reading `clock` for cache expiry (tests pass a manual clock).
    pub fn with_clock(config: ResolverConfig, clock: Arc<dyn Clock>) -> Self {
        let cache = Mutex::new(Cache::new(config.cache_capacity));
        Resolver {
            config,
            clock,
            cache,
        }
    }

    /// The MX records of `domain` (RFC 5321 5.1).
    pub async fn mx(&self, domain: &str) -> Result<Mx, DnsError> {
        let answer = self.lookup(&parse_name(domain)?, RecordType::MX).await?;
        let mut hosts: Vec<MxHost> = answer
            .records
            .iter()
            .filter_map(|r| match r {
                RData::MX(mx) => Some(MxHost {
                    preference: mx.preference,
                    exchange: mx.exchange.clone(),
                }),
                _ => None,
            })
            .collect();
        // RFC 7505 3: "The interpretation of a null MX RR is that the domain does not accept
        // email." Deviation: a null MX mixed with real hosts (which 3 forbids) is ignored and
        // the real hosts are used, as Postfix does.
        if hosts.iter().all(|h| h.exchange.is_root()) {
            return Ok(Mx::Null);
        }
        hosts.retain(|h| !h.exchange.is_root());
        hosts.sort_by_key(|h| h.preference);
        Ok(Mx::Hosts(hosts))
    }

    /// The IPv4 addresses of `name`.
    pub async fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        let answer = self.lookup(&parse_name(name)?, RecordType::A).await?;
        Ok(answer
            .records
            .iter()
            .filter_map(|r| match r {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    /// The IPv6 addresses of `name`.
    pub async fn aaaa(&self, name: &str) -> Result<Vec<Ipv6Addr>, DnsError> {
        let answer = self.lookup(&parse_name(name)?, RecordType::AAAA).await?;
        Ok(answer
            .records
            .iter()
            .filter_map(|r| match r {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })
            .collect())
    }

    /// The TXT records of `name`, each one's strings joined without separator (RFC 7208 3.3,
    /// RFC 6376 3.6.2.2). Bytes, not text: the record parsers decide what they accept.
    pub async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        let answer = self.lookup(&parse_name(name)?, RecordType::TXT).await?;
        Ok(answer
            .records
            .iter()
            .filter_map(|r| match r {
                RData::TXT(t) => Some(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
                _ => None,
            })
            .collect())
    }

    /// The names of `ip` (its `in-addr.arpa` / `ip6.arpa` PTR records): for SPF's `ptr`
    /// mechanism and `%{p}` macro ([`crate::mailauth::dns`]).
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<Name>, DnsError> {
        let answer = self.lookup(&Name::from(ip), RecordType::PTR).await?;
        Ok(answer
            .records
            .iter()
            .filter_map(|r| match r {
                RData::PTR(p) => Some(p.0.clone()),
                _ => None,
            })
            .collect())
    }

    /// The verified reverse name of `ip` (forward-confirmed reverse DNS, RFC 8601 3's
    /// "iprev"): the first of its PTR names (at most [`MAX_PTR_NAMES`] looked at) whose own
    /// A or AAAA records hold `ip`, lower case and without the final dot. `None` when there
    /// is none or DNS fails: a name is only shown when it is confirmed. Only plain host names
    /// (letters, digits, `-`, `_`, `.`) are taken, so the name can go into a header as it is.
    pub async fn verified_name(&self, ip: IpAddr) -> Option<String> {
        let names = self.ptr(ip).await.ok()?;
        for name in names.iter().take(MAX_PTR_NAMES) {
            let text = name.to_ascii().to_ascii_lowercase();
            let plain = text.len() <= 254
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !plain {
                continue;
            }
            let confirmed = match ip {
                IpAddr::V4(v4) => self.a(&text).await.is_ok_and(|a| a.contains(&v4)),
                IpAddr::V6(v6) => self.aaaa(&text).await.is_ok_and(|a| a.contains(&v6)),
            };
            if confirmed {
                return Some(text.trim_end_matches('.').to_string());
            }
        }
        None
    }

    /// The records of type `rtype` at `name` (a fully qualified name), CNAMEs followed, from
    /// the cache when it has them. Negative answers (NXDOMAIN, NODATA) are cached too.
    pub async fn lookup(&self, name: &Name, rtype: RecordType) -> Result<Answer, DnsError> {
        let key = (name.to_lowercase(), rtype);
        let now = self.clock.now();
        if let Some(hit) = self.lock_cache().get(&key, now) {
            count("cached");
            return hit;
        }
        let (result, ttl) = self.resolve(name, rtype).await;
        count(match &result {
            Ok(_) => "answer",
            Err(DnsError::NxDomain { .. }) => "nxdomain",
            Err(DnsError::NoData { .. }) => "nodata",
            Err(DnsError::CnameChain { .. }) => "cname_loop",
            Err(_) => "temporary",
        });
        let now = self.clock.now();
        let (result, ttl) = match result {
            Ok(mut answer) => {
                let ttl = Duration::from_secs(ttl.unwrap_or(0).into()).min(self.config.max_ttl);
                answer.valid_until = now + ttl;
                (Ok(answer), ttl)
            }
            Err(e) => {
                let ttl =
                    Duration::from_secs(ttl.unwrap_or(0).into()).min(self.config.max_negative_ttl);
                (Err(e), ttl)
            }
        };
        let cacheable = matches!(
            result,
            Ok(_) | Err(DnsError::NxDomain { .. } | DnsError::NoData { .. })
        );
        if cacheable && !ttl.is_zero() {
            self.lock_cache()
                .insert(key, result.clone(), now + ttl, now);
        }
        result
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queries the servers, following CNAMEs across responses. Returns the result and the TTL
    /// it may be cached for (`None`: not cacheable).
    async fn resolve(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> (Result<Answer, DnsError>, Option<u32>) {
        let mut seen: HashSet<Name> = HashSet::new();
        let mut current = name.clone();
        let mut min_ttl = u32::MAX;
        seen.insert(current.clone());
        loop {
            let query = Query::query(current.clone(), rtype);
            let response = match transport::exchange(&self.config, &query).await {
                Ok(r) => r,
                Err(reason) => {
                    return (
                        Err(DnsError::Temporary {
                            name: name.clone(),
                            reason,
                        }),
                        None,
                    );
                }
            };
            match follow(&response, &mut current, &mut seen, &mut min_ttl, rtype) {
                Step::Answer(records) => {
                    let answer = Answer {
                        name: current,
                        records,
                        valid_until: self.clock.now(),
                    };
                    return (Ok(answer), Some(min_ttl));
                }
                Step::Loop => return (Err(DnsError::CnameChain { name: name.clone() }), None),
                Step::Negative { nxdomain, ttl } => {
                    let error = if nxdomain {
                        DnsError::NxDomain { name: current }
                    } else {
                        DnsError::NoData {
                            name: current,
                            rtype,
                        }
                    };
                    return (Err(error), ttl.map(|t| t.min(min_ttl)));
                }
                // The chain left the response's data: ask about its end.
                Step::Requery => continue,
            }
        }
    }
}

/// What one response says about the question, CNAMEs followed within it.
enum Step {
    Answer(Vec<RData>),
    Negative { nxdomain: bool, ttl: Option<u32> },
    Requery,
    Loop,
}

/// Follows `current` through the CNAMEs of `response` (RFC 1034 3.6.2, 5.2.2).
fn follow(
    response: &Message,
    current: &mut Name,
    seen: &mut HashSet<Name>,
    min_ttl: &mut u32,
    rtype: RecordType,
) -> Step {
    let mut moved = false;
    loop {
        let records: Vec<&hickory_proto::rr::Record> = response
            .answers
            .iter()
            .filter(|r| r.name == *current && r.record_type() == rtype)
            .collect();
        if !records.is_empty() {
            for r in &records {
                *min_ttl = (*min_ttl).min(r.ttl);
            }
            return Step::Answer(records.into_iter().map(|r| r.data.clone()).collect());
        }
        let cname = response.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if r.name == *current && rtype != RecordType::CNAME => {
                Some((c.0.clone(), r.ttl))
            }
            _ => None,
        });
        match cname {
            Some((target, ttl)) => {
                if seen.len() > MAX_CNAME_CHAIN || !seen.insert(target.clone()) {
                    return Step::Loop;
                }
                *min_ttl = (*min_ttl).min(ttl);
                *current = target;
                moved = true;
            }
            None => break,
        }
    }
    // RFC 2308 5: a negative answer may be cached for the smaller of the SOA's TTL and its
    // MINIMUM field; without an SOA in the authority section, it must not be cached.
    let soa_ttl = response.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
        _ => None,
    });
    let nxdomain = response.metadata.response_code == ResponseCode::NXDomain;
    if moved && !nxdomain && soa_ttl.is_none() {
        return Step::Requery;
    }
    Step::Negative {
        nxdomain,
        ttl: soa_ttl,
    }
}

/// Turns a domain as written (ASCII, with or without the final dot) into a fully qualified name.
fn parse_name(domain: &str) -> Result<Name, DnsError> {
    let invalid = || DnsError::InvalidName(domain.to_string());
    if domain.is_empty() || !domain.is_ascii() {
        return Err(invalid());
    }
    let mut name = Name::from_ascii(domain).map_err(|_| invalid())?;
    name.set_fqdn(true);
    Ok(name)
}

impl DnsError {
    /// Whether asking again later may give an answer (4xx rather than 5xx).
    #[cfg(test)]
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            DnsError::Temporary { .. } | DnsError::CnameChain { .. }
        )
    }

    /// Whether the name or the records are known not to exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DnsError::NxDomain { .. } | DnsError::NoData { .. })
    }
}

//! Our stub resolver ([`crate::dns::Resolver`]) as the DNS of mail-auth's checks.
//!
//! mail-auth 0.13.3 can only be given DNS answers through its caches; the adapter that
//! answers them from any source is [`crate::mailauth::authdns::AuthDns`] (shared with the conformance
//! suites). [`Fetched`] is the server's source: the answers fetched so far for one message.
//! A check runs against it with mail-auth's resolver offline
//! ([`crate::mailauth::authdns::offline_authenticator`]), so a name not fetched yet fails as a DNS
//! temporary error and is listed by [`AuthDns::misses`]; [`Fetched::fetch`] asks our resolver
//! for those names and the check runs again, at most [`MAX_ROUNDS`] times ([`run`]). Which
//! names an SPF check needs depends on the records it meets, so this is the only way to feed
//! it without a resolver trait.
//!
//! Known limits, from mail-auth's cache design (see server/src/mailauth/authdns.rs and
//! conformance/DEVIATIONS.md A8, A24): address answers are cached as record sets without an
//! error form, so SPF's `exists:` is handed over as an equivalent `a` term (for an IPv6 client
//! it then asks for AAAA rather than A records), and DMARC's `np=` cannot be told apart from
//! `sp=`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_io::Timer;
use futures_lite::future;

use crate::mailauth::authdns::{Answer, AuthDns, DnsSource};

use crate::dns::{DnsError, Name, RData, RecordType, Resolver};

/// How many times a check runs at most: each run can discover names to fetch (an SPF record
/// with 10 includes needs about 11).
pub const MAX_ROUNDS: usize = 24;

/// How many names one check stage may fetch in all.
pub const MAX_FETCHES: usize = 64;

/// How long the lookups of one check stage (SPF at MAIL; DKIM, ARC and DMARC at the end of
/// data) may take in all: a name not fetched by then is a DNS temporary error in the results,
/// so a slow or silent name server cannot hold a session past the client's patience (RFC 5321
/// 4.5.3.2 gives clients 5 minutes for MAIL and for the end of data).
pub const CHECK_TIME: Duration = Duration::from_secs(60);

/// The answers fetched for one check stage, by question (`TYPE name`, as in
/// [`AuthDns::misses`]), within [`CHECK_TIME`] of its creation.
#[derive(Debug)]
pub struct Fetched {
    /// When fetching stops.
    deadline: Instant,
    txt: Mutex<HashMap<String, Answer<Vec<u8>>>>,
    a: Mutex<HashMap<String, Answer<Ipv4Addr>>>,
    aaaa: Mutex<HashMap<String, Answer<Ipv6Addr>>>,
    mx: Mutex<HashMap<String, Answer<(u16, String)>>>,
    ptr: Mutex<HashMap<IpAddr, Answer<String>>>,
    /// Questions fetched so far.
    fetched: Mutex<usize>,
}

impl Default for Fetched {
    fn default() -> Self {
        Fetched {
            deadline: Instant::now() + CHECK_TIME,
            txt: Mutex::default(),
            a: Mutex::default(),
            aaaa: Mutex::default(),
            mx: Mutex::default(),
            ptr: Mutex::default(),
            fetched: Mutex::default(),
        }
    }
}

impl Fetched {
    /// Fetches the answers to `misses` (`TYPE name` strings) with `resolver`; returns whether
    /// anything new was learnt (if not, running the check again would not help).
    pub async fn fetch(&self, resolver: &Resolver, misses: &[String]) -> bool {
        let mut learnt = false;
        for miss in misses {
            {
                let mut count = self.fetched.lock().unwrap_or_else(PoisonError::into_inner);
                if *count >= MAX_FETCHES {
                    return learnt;
                }
                *count += 1;
            }
            let Some((rtype, name)) = miss.split_once(' ') else {
                continue;
            };
            let name = name.to_string();
            let fetch = self.fetch_one(resolver, rtype, name);
            let out_of_time = async {
                Timer::at(self.deadline).await;
                false
            };
            learnt |= future::or(fetch, out_of_time).await;
            if Instant::now() >= self.deadline {
                return learnt;
            }
        }
        learnt
    }

    /// Fetches one question; whether it was new.
    async fn fetch_one(&self, resolver: &Resolver, rtype: &str, name: String) -> bool {
        match rtype {
            "TXT" => {
                let answer = answer(resolver.txt(&name).await);
                insert(&self.txt, name, answer)
            }
            "A" => {
                let answer = answer(resolver.a(&name).await);
                insert(&self.a, name, answer)
            }
            "AAAA" => {
                let answer = answer(resolver.aaaa(&name).await);
                insert(&self.aaaa, name, answer)
            }
            "MX" => {
                let answer = answer(mx(resolver, &name).await);
                insert(&self.mx, name, answer)
            }
            "PTR" => {
                match name.parse::<IpAddr>() {
                    Ok(ip) => {
                        let answer =
                            answer(resolver.ptr(ip).await.map(|names| {
                                names.iter().map(|n| n.to_ascii()).collect::<Vec<_>>()
                            }));
                        insert(&self.ptr, ip, answer)
                    }
                    Err(_) => false,
                }
            }
            _ => false,
        }
    }
}

/// Runs `check` against `dns` (whose source is `fetched`), fetching what it missed and
/// running it again, until it misses nothing, learns nothing new, or [`MAX_ROUNDS`] runs.
/// The last run's output is returned: a name still missing then is a DNS temporary error in
/// it, which is what a resolver failure would have given.
pub async fn run<'d, T, F, Fut>(
    resolver: &Resolver,
    fetched: &Fetched,
    dns: &'d AuthDns<'d>,
    mut check: F,
) -> T
where
    F: FnMut(&'d AuthDns<'d>) -> Fut,
    Fut: Future<Output = T>,
{
    // Misses of earlier checks on the same `dns` were fetched already.
    let mut seen = dns.misses().len();
    let mut round = 1;
    loop {
        let output = check(dns).await;
        let misses = dns.misses();
        let new = &misses[seen.min(misses.len())..];
        if new.is_empty() || round >= MAX_ROUNDS || !fetched.fetch(resolver, new).await {
            return output;
        }
        seen = misses.len();
        round += 1;
    }
}

/// The MX records of `name` as (preference, exchange), as the server sent them.
async fn mx(resolver: &Resolver, name: &str) -> Result<Vec<(u16, String)>, DnsError> {
    let fqdn = Name::from_ascii(name).map_err(|_| DnsError::InvalidName(name.to_string()))?;
    let answer = resolver.lookup(&fqdn, RecordType::MX).await?;
    Ok(answer
        .records
        .iter()
        .filter_map(|r| match r {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect())
}

/// A resolver result as an [`Answer`]: absent names and types are permanent, the rest
/// temporary.
fn answer<T>(result: Result<Vec<T>, DnsError>) -> Answer<T> {
    match result {
        Ok(records) if records.is_empty() => Answer::NoData,
        Ok(records) => Answer::Records(records),
        Err(DnsError::NxDomain { .. } | DnsError::InvalidName(_)) => Answer::NxDomain,
        Err(DnsError::NoData { .. }) => Answer::NoData,
        Err(_) => Answer::TempError,
    }
}

/// Stores an answer; whether the question was new.
fn insert<K: std::hash::Hash + Eq, T>(
    map: &Mutex<HashMap<K, Answer<T>>>,
    key: K,
    answer: Answer<T>,
) -> bool {
    map.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, answer)
        .is_none()
}

/// The stored answer to a question, or [`Answer::Unknown`].
fn get<K, Q, T>(map: &Mutex<HashMap<K, Answer<T>>>, key: &Q) -> Answer<T>
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
    T: Clone,
{
    map.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(key)
        .cloned()
        .unwrap_or(Answer::Unknown)
}

impl DnsSource for Fetched {
    fn txt(&self, name: &str) -> Answer<Vec<u8>> {
        get(&self.txt, name)
    }

    fn a(&self, name: &str) -> Answer<Ipv4Addr> {
        get(&self.a, name)
    }

    fn aaaa(&self, name: &str) -> Answer<Ipv6Addr> {
        get(&self.aaaa, name)
    }

    fn mx(&self, name: &str) -> Answer<(u16, String)> {
        get(&self.mx, name)
    }

    fn ptr(&self, addr: IpAddr) -> Answer<String> {
        get(&self.ptr, &addr)
    }
}

//! DNS answers for mail-auth, given through its cache traits: shared by postern's server (its
//! stub resolver's answers) and its conformance suites (a mock zone; the conformance crate
//! compiles this same file as its `authdns_shared` module).
//!
//! mail-auth 0.13.3 has no resolver trait: its only injection point is the DNS cache that
//! `Parameters::new(..).with_txt_cache(..)` (and `with_mx_cache`, `with_ipv4_cache`,
//! `with_ipv6_cache`, `with_ptr_cache`) hands to `verify_spf`, `verify_dkim`, `verify_arc` and
//! `verify_dmarc`. A cache hit never reaches mail-auth's own resolver. [`AuthDns`] implements
//! all five cache traits on top of a [`DnsSource`], which answers a name and a record type:
//! the conformance suites answer from a zone built from a suite's data, the server from what
//! its own resolver fetched. Pair it with [`offline_authenticator`], which has no name
//! servers: whatever the source cannot answer fails at once as a DNS temporary error, and
//! nothing ever goes to the network.
//!
//! # How answers are stored, and what cannot be
//!
//! - TXT answers are cached *parsed*, as mail-auth's `Txt` enum: the records of a name are
//!   parsed with mail-auth's `TxtRecordParser` exactly as its resolver does (each record in
//!   turn, the first that parses wins, else the last error; no record at all is
//!   `InvalidRecordType`). The cache key is the name alone, so the caller must say which record
//!   type mail-auth will ask for ([`TxtKind`]): a wrong variant reads as an I/O error there.
//!   Negative answers are `Txt::Error`: NXDOMAIN and NODATA are `RecordNotFound` with the
//!   response code hickory would report (NXDomain, NoError); a time-out is a `Resolver` error.
//! - A, AAAA, MX and PTR are cached as `RecordSet`s, which have no error form. A negative
//!   answer is stored as an empty set, which mail-auth reads as NODATA: the `a`, `mx` and `ptr`
//!   mechanisms treat it as no match, but `exists:` (which only asks whether the cache has the
//!   name) and DMARC's `np=` test (NXDOMAIN versus NODATA) cannot tell. SPF records are
//!   therefore handed over with `exists:` rewritten as an `a` term that tests the same thing
//!   (`exists_as_a`); `np=` stays out of reach. A time-out is left out
//!   of the cache, so mail-auth falls through to its resolver, which fails as a temporary error.
//! - A name that is not a valid DNS name (a label over 63 octets, an empty label) is left out
//!   too: mail-auth's resolver path then refuses it as a parse error, as it would on a real
//!   network.
//! - [`AuthDns::misses`] lists the questions the source could not answer: a server runs a
//!   check, fetches those names with its own resolver, fills its source and runs the check
//!   again (a bounded number of rounds), since which names an SPF check needs depends on the
//!   records themselves.
//! - Keys are lower-case names with the trailing dot (mail-auth's `ToFqdn`); PTR is keyed by
//!   the address. MX exchanges and PTR targets are lower-case with the trailing dot, MX grouped
//!   by preference, lowest first, as mail-auth's resolver returns them.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::proto::rr::Name;
use mail_auth::spf::{Mechanism, Spf};
use mail_auth::{
    DnsError, DnssecStatus, Error, MX, MessageAuthenticator, Parameters, RecordSet, ResolverCache,
    Txt,
};

/// The answer to one question (name, type).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer<T> {
    /// The records of that type (after following CNAMEs).
    Records(Vec<T>),
    /// The name exists but has no record of that type (NODATA).
    NoData,
    /// The name does not exist (NXDOMAIN).
    NxDomain,
    /// The query timed out or the server failed.
    TempError,
    /// Not known: a cache miss, left to mail-auth's (offline) resolver.
    Unknown,
}

/// Where [`AuthDns`] gets its answers: a mock zone in the suites, a resolver's results in a
/// server.
/// `Sync`, so that a check's future can move between threads.
pub trait DnsSource: Sync {
    /// The TXT records of `name` (lower case, trailing dot), each with its strings joined.
    fn txt(&self, name: &str) -> Answer<Vec<u8>>;
    /// The A records of `name`.
    fn a(&self, name: &str) -> Answer<Ipv4Addr>;
    /// The AAAA records of `name`.
    fn aaaa(&self, name: &str) -> Answer<Ipv6Addr>;
    /// The MX records of `name`: (preference, exchange).
    fn mx(&self, name: &str) -> Answer<(u16, String)>;
    /// The PTR records of the reverse name of `addr`.
    fn ptr(&self, addr: IpAddr) -> Answer<String>;
}

/// Which of mail-auth's TXT record types the names of a check are parsed into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxtKind {
    /// SPF policies (`verify_spf`; its `exp=` explanations are then not available).
    Spf,
    /// DKIM (and ARC) public keys.
    DomainKey,
    /// DMARC policies.
    Dmarc,
}

/// mail-auth's five DNS caches, answered from a [`DnsSource`]; see the module doc.
pub struct AuthDns<'s> {
    source: &'s dyn DnsSource,
    kind: TxtKind,
    /// The addresses whose PTR records can be asked for.
    addresses: Vec<IpAddr>,
    /// Entries mail-auth inserted itself (after its own resolver answered; never offline).
    inserted_txt: Mutex<HashMap<Box<str>, Txt>>,
    /// Every question mail-auth asked, in order: `TXT name`, `A name`, ...
    queries: Mutex<Vec<String>>,
    /// The questions the source could not answer ([`Answer::Unknown`]), in order.
    misses: Mutex<Vec<String>>,
}

impl std::fmt::Debug for AuthDns<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthDns")
            .field("kind", &self.kind)
            .field("queries", &self.queries())
            .finish_non_exhaustive()
    }
}

/// The type of the `Parameters` that [`AuthDns::parameters`] builds.
pub type AuthParameters<'x, P> =
    Parameters<'x, P, AuthDns<'x>, AuthDns<'x>, AuthDns<'x>, AuthDns<'x>, AuthDns<'x>>;

impl<'s> AuthDns<'s> {
    /// Caches answered from `source`, TXT records parsed as `kind`.
    pub fn new(source: &'s dyn DnsSource, kind: TxtKind) -> AuthDns<'s> {
        AuthDns {
            source,
            kind,
            addresses: Vec::new(),
            inserted_txt: Mutex::new(HashMap::new()),
            queries: Mutex::new(Vec::new()),
            misses: Mutex::new(Vec::new()),
        }
    }

    /// Also answers PTR questions about these addresses (the SMTP client's, typically): the
    /// PTR cache is keyed by address, which cannot be recovered from the key the way a name
    /// can, so the addresses must be known up front.
    pub fn with_addresses(mut self, addresses: &[IpAddr]) -> AuthDns<'s> {
        self.addresses.extend_from_slice(addresses);
        self
    }

    /// `Parameters` for one of mail-auth's `verify_*` calls, with all five caches set.
    pub fn parameters<'x, P>(&'x self, params: P) -> AuthParameters<'x, P>
    where
        's: 'x,
    {
        Parameters::new(params)
            .with_txt_cache(self)
            .with_mx_cache(self)
            .with_ipv4_cache(self)
            .with_ipv6_cache(self)
            .with_ptr_cache(self)
    }

    /// The questions mail-auth asked so far, in order (for failure reports).
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().map(|q| q.clone()).unwrap_or_default()
    }

    /// The questions the source could not answer, in order, as `TYPE name`: what a caller
    /// filling the source from a resolver fetches before running the check again.
    pub fn misses(&self) -> Vec<String> {
        self.misses.lock().map(|q| q.clone()).unwrap_or_default()
    }

    fn log(&self, rtype: &str, name: &str) {
        if let Ok(mut q) = self.queries.lock() {
            q.push(format!("{rtype} {name}"));
        }
    }

    /// `answer`, noting it as a miss when the source did not know.
    fn noted<T>(&self, rtype: &str, name: &str, answer: Answer<T>) -> Answer<T> {
        if matches!(answer, Answer::Unknown)
            && let Ok(mut m) = self.misses.lock()
        {
            m.push(format!("{rtype} {name}"));
        }
        answer
    }

    fn txt_answer(&self, name: &str) -> Option<Txt> {
        if !is_valid_name(name) {
            return None;
        }
        let answer = self.noted("TXT", name, self.source.txt(name));
        match self.kind {
            TxtKind::Spf => parse_txt::<Spf>(answer).map(exists_as_a),
            TxtKind::DomainKey => parse_txt::<DomainKey>(answer),
            TxtKind::Dmarc => parse_txt::<Dmarc>(answer),
        }
    }
}

/// An authenticator whose resolver has no name servers and does not read the hosts file: a
/// lookup that misses the caches fails as a DNS temporary error without touching the network
/// or the system's resolver configuration (and without a tokio runtime).
pub fn offline_authenticator() -> MessageAuthenticator {
    let mut options = ResolverOpts::default();
    options.use_hosts_file = ResolveHosts::Never;
    MessageAuthenticator::new(ResolverConfig::from_parts(None, vec![], vec![]), options)
        .expect("a resolver without name servers builds")
}

/// Whether hickory would accept `name` (lower case, trailing dot) as a query name.
fn is_valid_name(name: &str) -> bool {
    Name::from_str_relaxed(name).is_ok()
}

/// TXT records parsed the way mail-auth's resolver parses them (`txt_lookup`).
fn parse_txt<T: TxtRecordParser + Into<Txt>>(answer: Answer<Vec<u8>>) -> Option<Txt> {
    let not_found = |code| Some(Txt::Error(Error::Dns(DnsError::RecordNotFound(code))));
    match answer {
        Answer::Records(records) => {
            let mut result = Err(Error::Dns(DnsError::InvalidRecordType));
            for record in &records {
                result = T::parse(record);
                if result.is_ok() {
                    break;
                }
            }
            Some(result.into())
        }
        Answer::NoData => not_found(ResponseCode::NoError),
        Answer::NxDomain => not_found(ResponseCode::NXDomain),
        Answer::TempError => Some(Txt::Error(Error::Dns(DnsError::Resolver(
            "temporary DNS failure".into(),
        )))),
        Answer::Unknown => None,
    }
}

/// An SPF record with each `exists:<name>` given to mail-auth as `a:<name>/0//0`.
///
/// mail-auth's `exists` (without its test feature) only asks whether the A cache *holds* the
/// name, and a negative answer is held as an empty set (see the module doc): through the
/// caches `exists:` would match every name, existing or not, and a policy such as
/// `+exists:%{i}._spf.example.com` would pass any client. `a:<name>` with every mask bit
/// cleared matches exactly when the lookup returns an address, and an empty set is no match:
/// RFC 7208 5.7's test ("if any A record is returned, this mechanism matches"), with the same
/// DNS lookup counted. Deviation: for an IPv6 client mail-auth's `a` asks for AAAA records
/// where RFC 7208 5.7 asks for A records whatever the connection.
fn exists_as_a(txt: Txt) -> Txt {
    let Txt::Spf(spf) = &txt else {
        return txt;
    };
    if !spf
        .directives
        .iter()
        .any(|d| matches!(d.mechanism, Mechanism::Exists { .. }))
    {
        return txt;
    }
    let mut spf = Spf::clone(spf);
    for directive in spf.directives.iter_mut() {
        if let Mechanism::Exists { macro_string } = &directive.mechanism {
            directive.mechanism = Mechanism::A {
                macro_string: macro_string.clone(),
                ip4_mask: 0,
                ip6_mask: 0,
            };
        }
    }
    Txt::Spf(Arc::new(spf))
}

/// An address-type answer as a `RecordSet`: negatives are empty sets, failures misses.
fn record_set<T, U>(answer: Answer<T>, map: impl FnMut(T) -> U) -> Option<RecordSet<U>> {
    let rrset: Arc<[U]> = match answer {
        Answer::Records(records) => records.into_iter().map(map).collect(),
        Answer::NoData | Answer::NxDomain => Arc::from(Vec::new()),
        Answer::TempError | Answer::Unknown => return None,
    };
    Some(RecordSet {
        rrset,
        dnssec_status: DnssecStatus::Indeterminate,
    })
}

/// A name as mail-auth's resolver returns it: lower case, trailing dot.
pub fn fqdn(name: &str) -> Box<str> {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name.into_boxed_str()
}

/// Collects what a key writes into a hasher.
struct KeyBytes(Vec<u8>);

impl Hasher for KeyBytes {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// The name mail-auth asked for.
///
/// `ResolverCache::get` is generic over the borrowed key type `Q`, so a cache that answers
/// names it was never filled with has to recover the name from `Q`: a `str` hashes as its
/// bytes followed by `0xff`, so a hasher that records what it is fed gives the bytes back,
/// and the result is checked by comparing it with the key through `Borrow`.
fn borrowed_name<Q>(key: &Q) -> Option<Box<str>>
where
    Box<str>: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    let mut recorder = KeyBytes(Vec::new());
    key.hash(&mut recorder);
    let mut bytes = recorder.0;
    if bytes.pop() != Some(0xff) {
        return None;
    }
    let name = String::from_utf8(bytes).ok()?.into_boxed_str();
    (Borrow::<Q>::borrow(&name) == key).then_some(name)
}

impl ResolverCache<Box<str>, Txt> for AuthDns<'_> {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let name = borrowed_name(name)?;
        self.log("TXT", &name);
        if let Some(hit) = self.inserted_txt.lock().ok()?.get::<str>(&name) {
            return Some(hit.clone());
        }
        self.txt_answer(&name)
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let name = borrowed_name(name)?;
        self.inserted_txt.lock().ok()?.remove::<str>(&name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _valid_until: Instant) {
        if let Ok(mut map) = self.inserted_txt.lock() {
            map.insert(key, value);
        }
    }
}

impl ResolverCache<Box<str>, RecordSet<MX>> for AuthDns<'_> {
    fn get<Q>(&self, name: &Q) -> Option<RecordSet<MX>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let name = borrowed_name(name)?;
        self.log("MX", &name);
        if !is_valid_name(&name) {
            return None;
        }
        let answer = match self.noted("MX", &name, self.source.mx(&name)) {
            Answer::Records(mut records) => {
                records.sort_by_key(|(preference, _)| *preference);
                let mut grouped: Vec<(u16, Vec<Box<str>>)> = Vec::new();
                for (preference, exchange) in records {
                    match grouped.last_mut() {
                        Some((p, exchanges)) if *p == preference => exchanges.push(fqdn(&exchange)),
                        _ => grouped.push((preference, vec![fqdn(&exchange)])),
                    }
                }
                Answer::Records(grouped)
            }
            Answer::NoData => Answer::NoData,
            Answer::NxDomain => Answer::NxDomain,
            Answer::TempError => Answer::TempError,
            Answer::Unknown => Answer::Unknown,
        };
        record_set(answer, |(preference, exchanges)| MX {
            preference,
            exchanges: exchanges.into_boxed_slice(),
        })
    }

    fn remove<Q>(&self, _name: &Q) -> Option<RecordSet<MX>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _key: Box<str>, _value: RecordSet<MX>, _valid_until: Instant) {}
}

impl ResolverCache<Box<str>, RecordSet<Ipv4Addr>> for AuthDns<'_> {
    fn get<Q>(&self, name: &Q) -> Option<RecordSet<Ipv4Addr>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let name = borrowed_name(name)?;
        self.log("A", &name);
        if !is_valid_name(&name) {
            return None;
        }
        record_set(self.noted("A", &name, self.source.a(&name)), |a| a)
    }

    fn remove<Q>(&self, _name: &Q) -> Option<RecordSet<Ipv4Addr>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _key: Box<str>, _value: RecordSet<Ipv4Addr>, _valid_until: Instant) {}
}

impl ResolverCache<Box<str>, RecordSet<Ipv6Addr>> for AuthDns<'_> {
    fn get<Q>(&self, name: &Q) -> Option<RecordSet<Ipv6Addr>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let name = borrowed_name(name)?;
        self.log("AAAA", &name);
        if !is_valid_name(&name) {
            return None;
        }
        record_set(self.noted("AAAA", &name, self.source.aaaa(&name)), |a| a)
    }

    fn remove<Q>(&self, _name: &Q) -> Option<RecordSet<Ipv6Addr>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _key: Box<str>, _value: RecordSet<Ipv6Addr>, _valid_until: Instant) {}
}

impl ResolverCache<IpAddr, RecordSet<Box<str>>> for AuthDns<'_> {
    fn get<Q>(&self, addr: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Only the addresses named up front can be answered (see `with_addresses`).
        let addr = *self
            .addresses
            .iter()
            .find(|candidate| Borrow::<Q>::borrow(*candidate) == addr)?;
        let shown = addr.to_string();
        self.log("PTR", &shown);
        record_set(self.noted("PTR", &shown, self.source.ptr(addr)), |name| {
            fqdn(&name)
        })
    }

    fn remove<Q>(&self, _addr: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _key: IpAddr, _value: RecordSet<Box<str>>, _valid_until: Instant) {}
}

/// An SPF result by its RFC 7208 2.6 name (`pass`, `softfail`, `temperror`, ...), as
/// `Received-SPF` and `Authentication-Results` write it (mail-auth's `Display` capitalises).
pub fn spf_word(result: mail_auth::SpfResult) -> &'static str {
    use mail_auth::SpfResult;
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// The `in-addr.arpa` / `ip6.arpa` name of an address (the conformance suites' mock zone
/// keys PTR records by it; the server asks its resolver by address instead).
#[allow(dead_code)]
pub fn reverse_name(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut name = String::with_capacity(73);
            for byte in a.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name.push_str("ip6.arpa.");
            name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_the_asked_name() {
        let name: Box<str> = "mail.example.com.".into();
        assert_eq!(
            borrowed_name::<str>(&name).as_deref(),
            Some("mail.example.com.")
        );
        assert_eq!(borrowed_name::<str>("").as_deref(), Some(""));
    }

    /// A source that knows nothing: every question is a cache miss.
    struct NoAnswers;

    impl DnsSource for NoAnswers {
        fn txt(&self, _: &str) -> Answer<Vec<u8>> {
            Answer::Unknown
        }
        fn a(&self, _: &str) -> Answer<Ipv4Addr> {
            Answer::Unknown
        }
        fn aaaa(&self, _: &str) -> Answer<Ipv6Addr> {
            Answer::Unknown
        }
        fn mx(&self, _: &str) -> Answer<(u16, String)> {
            Answer::Unknown
        }
        fn ptr(&self, _: IpAddr) -> Answer<String> {
            Answer::Unknown
        }
    }

    #[test]
    fn a_miss_is_a_temporary_error_offline() {
        let ip: IpAddr = "192.0.2.1".parse().expect("address");
        let dns = AuthDns::new(&NoAnswers, TxtKind::Spf).with_addresses(&[ip]);
        let params = mail_auth::spf::verify::SpfParameters::verify_mail_from(
            ip,
            "helo.example",
            "receiver.example",
            "user@example.com",
        );
        let output = futures_lite::future::block_on(
            offline_authenticator().verify_spf(dns.parameters(params)),
        );
        assert_eq!(output.result(), mail_auth::SpfResult::TempError);
        assert_eq!(dns.misses(), ["TXT example.com."]);
        let dns = AuthDns::new(&NoAnswers, TxtKind::Dmarc);
        let _ = ResolverCache::<Box<str>, Txt>::get::<str>(&dns, "_dmarc.example.com.");
        assert_eq!(dns.misses(), ["TXT _dmarc.example.com."]);
    }

    /// A source with one SPF record and nothing else (every other name does not exist).
    struct OneRecord(&'static str, Vec<(&'static str, Ipv4Addr)>);

    impl DnsSource for OneRecord {
        fn txt(&self, name: &str) -> Answer<Vec<u8>> {
            if name == "e.example." {
                Answer::Records(vec![self.0.as_bytes().to_vec()])
            } else {
                Answer::NxDomain
            }
        }
        fn a(&self, name: &str) -> Answer<Ipv4Addr> {
            match self.1.iter().find(|(n, _)| *n == name) {
                Some((_, a)) => Answer::Records(vec![*a]),
                None => Answer::NxDomain,
            }
        }
        fn aaaa(&self, _: &str) -> Answer<Ipv6Addr> {
            Answer::NxDomain
        }
        fn mx(&self, _: &str) -> Answer<(u16, String)> {
            Answer::NxDomain
        }
        fn ptr(&self, _: IpAddr) -> Answer<String> {
            Answer::NxDomain
        }
    }

    /// `exists:` matches only names that have an A record, through the caches too.
    #[test]
    fn exists_needs_an_address() {
        let ip: IpAddr = "192.0.2.1".parse().expect("address");
        let record = "v=spf1 exists:%{i}.ok.example -all";
        let cases = [
            (
                vec![("192.0.2.1.ok.example.", Ipv4Addr::new(127, 0, 0, 2))],
                "pass",
            ),
            (
                vec![("192.0.2.9.ok.example.", Ipv4Addr::new(127, 0, 0, 2))],
                "fail",
            ),
            (vec![], "fail"),
        ];
        for (addresses, want) in cases {
            let source = OneRecord(record, addresses.clone());
            let dns = AuthDns::new(&source, TxtKind::Spf).with_addresses(&[ip]);
            let params = mail_auth::spf::verify::SpfParameters::verify_mail_from(
                ip,
                "helo.example",
                "receiver.example",
                "user@e.example",
            );
            let output = futures_lite::future::block_on(
                offline_authenticator().verify_spf(dns.parameters(params)),
            );
            assert_eq!(spf_word(output.result()), want, "{addresses:?}");
        }
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("192.0.2.1".parse().expect("address")),
            "1.2.0.192.in-addr.arpa."
        );
        assert_eq!(
            reverse_name("2001:db8::1".parse().expect("address")),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
        );
    }
}

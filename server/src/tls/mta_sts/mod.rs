//! MTA-STS ([RFC 8461]): which MX hosts of a recipient domain may receive its mail, and
//! whether TLS with a valid certificate is required to reach them.
//!
//! [`MtaSts::lookup`] follows RFC 8461 5.1 for one domain:
//!
//! 1. Ask for the `_mta-sts.<domain>` TXT record through our [`Resolver`] and take its `id`
//!    ([`policy::txt_id`]). No record, or no usable one: the domain publishes no policy now.
//! 2. A cached policy that has not outlived its `max_age`, fetched under that same `id`, is
//!    used as it is; it is fetched again only once it is older than [`REFRESH_AFTER`], so an
//!    unchanged policy is renewed long before it expires.
//! 3. Otherwise (no cached policy, or a new `id`) fetch
//!    `https://mta-sts.<domain>/.well-known/mta-sts.txt` ([`fetch`]), parse it
//!    ([`policy::parse_policy`]), cache it and save the cache.
//! 4. Whatever fails (DNS, the TXT record, the fetch, the policy text), a cached policy that
//!    has not expired is still returned: "the absence of a usable TXT record is not by itself
//!    sufficient to remove a sender's previously cached policy" (3.1), and an attacker who
//!    blocks the policy host cannot switch a known policy off. Without one, the domain is
//!    treated as having no policy, as 3.3 requires when no policy can be fetched.
//!
//! What the caller does with the answer (RFC 8461 4 and 5): with a [`Mode::Enforce`] policy,
//! deliver only to MX hosts that [`Policy::allows_mx`] and only over TLS with a certificate
//! valid for the MX host, and defer otherwise; with [`Mode::Testing`], deliver as without a
//! policy (report failures once TLS-RPT exists); [`Mode::None`] is no policy.
//! [`Lookup::problem`] says what went wrong on the way, for the caller's log line.
//!
//! # The cache file
//!
//! Policies live in memory and in `<data_dir>/mta-sts` (the caller names it), so a restart
//! keeps enforcing what was learnt. Text, one policy a line, `#` comments:
//!
//! ```text
//! <domain> <id> <fetched, Unix seconds> <mode> <max_age seconds> [<mx pattern>...]
//! example.org 20260101T00 1795000000 enforce 604800 mx1.example.org *.mail.example.org
//! ```
//!
//! Loaded when [`MtaSts::new`] runs (bad lines are reported with file and line and skipped),
//! rewritten whole after each newly fetched policy (temporary file, fsync, rename), expired
//! entries left out.
//!
//! A fetch that fails (or gives an invalid policy) is not tried again for the same domain
//! and `id` within [`RETRY_AFTER`]: while a policy host is down, deliveries to its domain do
//! not each wait for the timeout. (The MTA-STS drafts suggested five minutes per `id`.)
//!
//! Not done: the in-memory cache has no limit beyond the domains mail goes to; concurrent
//! lookups of one domain may fetch twice.
//!
//! [RFC 8461]: https://www.rfc-editor.org/rfc/rfc8461

pub mod fetch;
pub mod policy;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::dns::{DnsError, Resolver};
use crate::tls::memory::BadLine;
pub use fetch::FetchError;
pub use policy::{Mode, Policy, SyntaxError};

/// The name of the cache file in the data directory.
pub const FILE_NAME: &str = "mta-sts";
/// The longest a policy fetch may take, DNS included (RFC 8461 3.3 suggests a minute).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// A cached policy whose `id` has not changed is fetched again once it is this old.
pub const REFRESH_AFTER: Duration = Duration::from_secs(24 * 3600);
/// After a failed fetch, the same domain and `id` are not fetched again for this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(5 * 60);

/// MTA-STS policies: discovery, fetching, cache. Share it behind an `Arc`.
#[derive(Debug)]
pub struct MtaSts {
    fetcher: fetch::Fetcher,
    timeout: Duration,
    store: Arc<Store>,
    /// The last failed fetch of each domain: the `id` it was for, and when.
    failed: Mutex<HashMap<String, (String, SystemTime)>>,
}

/// The answer of [`MtaSts::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The policy to apply, fresh or cached; `None`: the domain has no (known) policy.
    pub policy: Option<Policy>,
    /// What went wrong on the way, if anything (the policy may still come from the cache).
    pub problem: Option<StsError>,
}

/// What went wrong while looking for a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StsError {
    /// The domain is not a name we can look up.
    #[error("{0:?} is not a domain name")]
    InvalidDomain(String),
    /// The TXT lookup failed for now.
    #[error("_mta-sts TXT lookup: {0}")]
    Dns(DnsError),
    /// The TXT records hold no usable MTA-STS record.
    #[error("_mta-sts TXT record: {0}")]
    Txt(SyntaxError),
    /// The policy could not be fetched.
    #[error("policy fetch: {0}")]
    Fetch(FetchError),
    /// Not fetched: a fetch for this `id` failed less than [`RETRY_AFTER`] ago.
    #[error("policy fetch for id {0} failed recently; not tried again yet")]
    RecentlyFailed(String),
    /// The fetched policy is not valid.
    #[error("policy text: {0}")]
    Policy(SyntaxError),
    /// The policy was fetched but the cache file could not be written.
    #[error("{file}: cannot save the MTA-STS cache: {reason}")]
    Save {
        /// The cache file.
        file: PathBuf,
        /// The I/O error.
        reason: String,
    },
}

/// Why [`MtaSts::new`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The cache file exists but cannot be read.
    #[error("{}: {source}", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An extra trusted root is not a usable CA certificate.
    #[error("extra trusted root #{index}: {reason}")]
    Root {
        /// Its position in the list given, from 0.
        index: usize,
        /// What rustls said.
        reason: String,
    },
    /// The TLS client configuration could not be built (a bug).
    #[error("TLS client setup: {0}")]
    Tls(String),
}

/// The cache, in memory and on disk.
#[derive(Debug)]
struct Store {
    path: PathBuf,
    state: Mutex<StoreState>,
    /// Serialises file writes; holds the version last written.
    written: Mutex<u64>,
}

#[derive(Debug, Default)]
struct StoreState {
    entries: HashMap<String, Entry>,
    /// Bumped on each change, so a writer can tell whether the file is behind.
    version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    policy: Policy,
    /// When it was fetched: it expires `policy.max_age` later.
    fetched: SystemTime,
}

impl MtaSts {
    /// Policies checked against the web PKI roots (`webpki-roots`) plus `extra_roots` (an
    /// operator's private CA), cached in `cache_path` (loaded now: its bad lines are
    /// returned for the caller to log). HTTPS on port 443, [`DEFAULT_TIMEOUT`].
    pub fn new(
        resolver: Arc<Resolver>,
        extra_roots: Vec<CertificateDer<'static>>,
        cache_path: &Path,
    ) -> Result<(MtaSts, Vec<BadLine>), OpenError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for (index, root) in extra_roots.into_iter().enumerate() {
            roots.add(root).map_err(|e| OpenError::Root {
                index,
                reason: e.to_string(),
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| OpenError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (store, bad) = Store::load(cache_path).map_err(|source| OpenError::Cache {
            path: cache_path.to_path_buf(),
            source,
        })?;
        let sts = MtaSts {
            fetcher: fetch::Fetcher {
                resolver,
                tls: Arc::new(tls),
                port: 443,
            },
            timeout: DEFAULT_TIMEOUT,
            store: Arc::new(store),
            failed: Mutex::new(HashMap::new()),
        };
        Ok((sts, bad))
    }

    /// Policies fetched only on demand ([`MtaSts::fetch_now`]), with no cache file: for
    /// checks of a domain's own setup (`postern doctor`), which must not touch the running
    /// server's cache.
    pub fn uncached(
        resolver: Arc<Resolver>,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Result<MtaSts, OpenError> {
        // A path that cannot exist: nothing is read, and fetch_now never saves.
        let (sts, _) = MtaSts::new(resolver, extra_roots, Path::new(""))?;
        Ok(sts)
    }

    /// Fetches and parses the policy of `domain` for the TXT record's `id` now, bounded by
    /// the timeout, without the cache (neither read nor written).
    pub async fn fetch_now(&self, domain: &str, id: &str) -> Result<Policy, StsError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let fetched = futures_lite::future::or(self.fetcher.fetch(&domain), async {
            async_io::Timer::after(self.timeout).await;
            Err(FetchError::Timeout)
        })
        .await;
        match fetched {
            Ok(body) => policy::parse_policy(&body, id).map_err(StsError::Policy),
            Err(e) => Err(StsError::Fetch(e)),
        }
    }

    /// Fetches policies from this port instead of 443 (tests).
    pub fn with_port(mut self, port: u16) -> Self {
        self.fetcher.port = port;
        self
    }

    /// Bounds each fetch (DNS, connection, TLS, HTTP) by `timeout` instead of
    /// [`DEFAULT_TIMEOUT`] (the tests' short timeouts).
    #[cfg(test)]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The policy to apply to mail for `domain` at `now`, or `None` when it has none. See
    /// [`MtaSts::lookup`] for what went wrong on the way.
    #[cfg(test)]
    pub async fn policy(&self, domain: &str, now: SystemTime) -> Option<Policy> {
        self.lookup(domain, now).await.policy
    }

    /// The policy to apply to mail for `domain` (an ASCII domain, A-labels for IDNs) at
    /// `now`, and any problem met, following the steps in the module documentation.
    pub async fn lookup(&self, domain: &str, now: SystemTime) -> Lookup {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || !domain.bytes().all(|b| b.is_ascii_graphic()) {
            return Lookup {
                policy: None,
                problem: Some(StsError::InvalidDomain(domain)),
            };
        }
        let cached = self.store.get(&domain, now);
        let keep = |problem: Option<StsError>| Lookup {
            policy: cached.as_ref().map(|e| e.policy.clone()),
            problem,
        };
        let id = match self
            .fetcher
            .resolver
            .txt(&format!("_mta-sts.{domain}"))
            .await
        {
            Ok(records) => match policy::txt_id(&records) {
                Ok(id) => id,
                Err(e) => return keep(Some(StsError::Txt(e))),
            },
            Err(e) if e.is_not_found() => return keep(None),
            Err(e) => return keep(Some(StsError::Dns(e))),
        };
        if let Some(entry) = &cached
            && entry.policy.id == id
            && now.duration_since(entry.fetched).unwrap_or_default() < REFRESH_AFTER
        {
            return keep(None);
        }
        if self.failed_recently(&domain, &id, now) {
            return keep(Some(StsError::RecentlyFailed(id)));
        }
        let parsed = self.fetch_now(&domain, &id).await;
        self.note_failure(&domain, &id, now, parsed.is_err());
        let policy = match parsed {
            Ok(policy) => policy,
            Err(e) => return keep(Some(e)),
        };
        self.store.put(&domain, policy.clone(), now);
        let store = self.store.clone();
        let problem = smol::unblock(move || store.save())
            .await
            .err()
            .map(|e| StsError::Save {
                file: self.store.path.clone(),
                reason: e.to_string(),
            });
        Lookup {
            policy: Some(policy),
            problem,
        }
    }

    /// Whether a fetch of `domain` for `id` failed less than [`RETRY_AFTER`] before `now`.
    fn failed_recently(&self, domain: &str, id: &str, now: SystemTime) -> bool {
        self.lock_failed()
            .get(domain)
            .is_some_and(|(failed_id, at)| {
                failed_id == id && now.duration_since(*at).unwrap_or_default() < RETRY_AFTER
            })
    }

    /// Records the outcome of a fetch: a failure is remembered (old ones are dropped), a
    /// success forgets the domain's failure.
    fn note_failure(&self, domain: &str, id: &str, now: SystemTime, failed: bool) {
        let mut map = self.lock_failed();
        if failed {
            map.retain(|_, (_, at)| now.duration_since(*at).unwrap_or_default() < RETRY_AFTER);
            map.insert(domain.to_string(), (id.to_string(), now));
        } else {
            map.remove(domain);
        }
    }

    fn lock_failed(&self) -> MutexGuard<'_, HashMap<String, (String, SystemTime)>> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store {
    /// Reads `path` (missing: empty).
    fn load(path: &Path) -> io::Result<(Store, Vec<BadLine>)> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut entries = HashMap::new();
        let mut bad = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_entry(line) {
                Ok((domain, entry)) => {
                    entries.insert(domain, entry);
                }
                Err(reason) => bad.push(BadLine {
                    file: path.to_path_buf(),
                    line: i + 1,
                    reason,
                }),
            }
        }
        let store = Store {
            path: path.to_path_buf(),
            state: Mutex::new(StoreState {
                entries,
                version: 0,
            }),
            written: Mutex::new(0),
        };
        Ok((store, bad))
    }

    /// The entry for `domain` unless it has expired at `now`.
    fn get(&self, domain: &str, now: SystemTime) -> Option<Entry> {
        self.lock()
            .entries
            .get(domain)
            .filter(|e| e.fresh(now))
            .cloned()
    }

    /// Caches `policy`, fetched at `now`, and drops expired entries.
    fn put(&self, domain: &str, policy: Policy, now: SystemTime) {
        let mut state = self.lock();
        state.entries.retain(|_, e| e.fresh(now));
        state.entries.insert(
            domain.to_string(),
            Entry {
                policy,
                fetched: now,
            },
        );
        state.version += 1;
    }

    /// Writes the cache file unless a write since the last change already did (writers take
    /// turns and each writes the state current when its turn comes).
    fn save(&self) -> io::Result<()> {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let (version, text) = {
            let state = self.lock();
            if state.version <= *written {
                return Ok(());
            }
            (state.version, render(&state.entries))
        };
        crate::files::replace(&self.path, text.as_bytes(), 0o600, None)?;
        *written = version;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Entry {
    /// Whether the policy is still valid at `now` (RFC 8461 3.2: `max_age` after the fetch).
    fn fresh(&self, now: SystemTime) -> bool {
        self.fetched
            .checked_add(self.policy.max_age)
            .is_some_and(|expires| now < expires)
    }
}

/// The cache file's text, domains in name order.
fn render(entries: &HashMap<String, Entry>) -> String {
    let mut domains: Vec<(&String, &Entry)> = entries.iter().collect();
    domains.sort_by(|a, b| a.0.cmp(b.0));
    let mut text =
        String::from("# postern: MTA-STS policies: domain id fetched(unix) mode max_age mx...\n");
    for (domain, entry) in domains {
        let fetched = entry
            .fetched
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let p = &entry.policy;
        text.push_str(&format!(
            "{domain} {} {fetched} {} {}",
            p.id,
            p.mode,
            p.max_age.as_secs()
        ));
        for mx in &p.mx {
            text.push(' ');
            text.push_str(mx);
        }
        text.push('\n');
    }
    text
}

/// Parses one cache line. The values are checked as a fetched policy's are: the file is
/// ours, but a hand edit must not smuggle in a pattern that matches everything.
fn parse_entry(line: &str) -> Result<(String, Entry), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [domain, id, fetched, mode, max_age, mx @ ..] = words.as_slice() else {
        return Err(format!(
            "want `domain id fetched mode max_age mx...`, got {line:?}"
        ));
    };
    let fetched: u64 = fetched
        .parse()
        .map_err(|_| format!("fetched time {fetched:?} is not Unix seconds"))?;
    // Rebuild the policy text and parse it, so the cache obeys the same rules as a fetch.
    let mut text = format!("version: STSv1\nmode: {mode}\nmax_age: {max_age}\n");
    for pattern in mx {
        text.push_str(&format!("mx: {pattern}\n"));
    }
    let id_ok = (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric());
    if !id_ok {
        return Err(format!("id {id:?} is not 1 to 32 letters and digits"));
    }
    let policy = policy::parse_policy(text.as_bytes(), id).map_err(|e| e.0)?;
    let fetched = UNIX_EPOCH
        .checked_add(Duration::from_secs(fetched))
        .ok_or_else(|| format!("fetched time {fetched} is out of range"))?;
    let entry = Entry { policy, fetched };
    Ok((domain.to_ascii_lowercase(), entry))
}

//! AUTH: checking credentials against the user database, and the brute-force defence.
//!
//! [`Authenticator::login`] answers one SASL exchange (PLAIN or LOGIN, decoded by proto-core):
//! - the user name is normalised like every address ([`Address::parse`]);
//! - the password is checked with Argon2id on smol's blocking pool, never on the executor;
//!   a user that does not exist, has no password or is receive-only is checked against a
//!   dummy hash of the same cost, and every failure is the same 535 5.7.8, so neither the
//!   answer nor its timing tells whether a user exists
//!   ([RFC 4954 section 6](https://www.rfc-editor.org/rfc/rfc4954#section-6): 535 5.7.8
//!   "Authentication credentials invalid");
//! - a PLAIN authorization identity other than the user itself is refused (we let nobody act
//!   as someone else; [RFC 4616 section 2](https://www.rfc-editor.org/rfc/rfc4616#section-2):
//!   the server "MUST verify that the authentication identity ... is allowed to act as the
//!   authorization identity");
//! - failures are counted per client network (an IPv4 address, an IPv6 /64) and per user
//!   name. From `delay_after` failures of either on, each failed reply is delayed by `delay`
//!   (on a timer, not a thread). At `lockout_after` failures from one network, logins from
//!   that network are refused with 454 4.7.0 without checking the password, until `lockout`
//!   has passed since its last failure. A user name is never locked: guesses from elsewhere
//!   cannot lock the real user out, they only slow every guess for that name down. Attempts
//!   in flight count against the lockout, so concurrent connections get no more tries than
//!   sequential ones. Failures older than `lockout` are forgotten. A success clears the
//!   user's count (not the network's).
//!
//! Each hash costs about 19 MiB and some CPU time. They run on a few threads of their own
//! (one per CPU, at least two) that keep their hash memory from one login to the next and
//! give it back after 30 s without one: a flood of logins queues up instead of exhausting
//! memory or threads, the memory the hashes hold stays the same however many logins came
//! (hashing on a general blocking pool left ~19 MiB in the allocator of every thread that
//! ever hashed), and it is returned once the flood is over.
//!
//! Log lines name the client IP and the outcome, never the user name or the password.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use toml::Spanned;

use async_io::Timer;
use proto_core::{Reply, server::Credentials};

use crate::directory::users::{self, Address, UserDb};
use crate::log::{self, Event};

/// At most this many user names are tracked; beyond it, only client IPs are (so a flood of
/// made-up names cannot grow memory without bound).
const MAX_TRACKED_USERS: usize = 10_000;
/// Old entries are swept once the tables hold more than this many.
const SWEEP_ABOVE: usize = 1024;
/// At most this many client IPs are tracked.
const MAX_TRACKED_IPS: usize = 100_000;

/// `[auth]` in postern.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// Offer AUTH (under TLS) on the smtp listeners too, not only on submission(s).
    pub smtp_listener: bool,
    /// Allow AUTH without TLS on listeners bound to a loopback address (tests only).
    pub allow_plaintext_on_loopback: bool,
    /// Failures after which each failed reply is delayed.
    pub delay_after: u32,
    /// That delay.
    pub delay: Duration,
    /// Failures after which logins are refused for `lockout`.
    pub lockout_after: u32,
    /// How long a lockout lasts, and how long a failure is remembered.
    pub lockout: Duration,
    /// The shortest password `postern user add` and `user passwd` accept, in characters.
    pub min_password_length: usize,
}

/// The default [`AuthSettings::min_password_length`] (NIST SP 800-63B 5.1.1.2 asks for 8).
pub const MIN_PASSWORD_LENGTH: usize = 8;

/// Checks credentials and counts failures. One per server, shared by every connection.
#[derive(Debug)]
pub struct Authenticator {
    users: Arc<UserDb>,
    settings: AuthSettings,
    failures: Mutex<Failures>,
    /// The password checks, on their own threads.
    hashing: Hashers,
}

/// Failure counts, by client network and by user name.
#[derive(Debug, Default)]
struct Failures {
    by_ip: HashMap<IpAddr, Count>,
    by_user: HashMap<String, Count>,
}

/// Failures of one key, when the last one happened, and the attempts being checked now.
#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    last: Instant,
    in_flight: u32,
}

/// The network a client's failures are counted under: an IPv4 address, or the /64 of an
/// IPv6 address (one host usually has a whole /64).
fn network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
        v4 => v4,
    }
}

/// A login being checked: counted against its network's lockout until dropped.
struct Attempt<'a> {
    auth: &'a Authenticator,
    network: Option<IpAddr>,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(net) = self.network {
            let mut f = self.auth.failures.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = f.by_ip.get_mut(&net) {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
        }
    }
}

/// How long a hashing thread keeps its working memory without a check to run.
const IDLE_RELEASE: Duration = Duration::from_secs(30);

/// The threads that hash passwords, and the queue of checks waiting for one.
#[derive(Debug)]
struct Hashers {
    jobs: async_channel::Sender<Box<dyn FnOnce() + Send>>,
}

impl Hashers {
    /// `n` threads (at least one); they stop when the handle is dropped.
    fn start(n: usize) -> Hashers {
        let (jobs, queue) = async_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        for i in 0..n.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("postern-hash-{i}"))
                .spawn(move || {
                    loop {
                        let next = smol::block_on(smol::future::or(
                            async { Some(queue.recv().await) },
                            async {
                                Timer::after(IDLE_RELEASE).await;
                                None
                            },
                        ));
                        match next {
                            Some(Ok(job)) => job(),
                            Some(Err(_)) => break,
                            // Idle: a burst of logins is over; its memory goes back.
                            None => users::release_hash_memory(),
                        }
                    }
                });
            if let Err(e) = spawned {
                log::line(Event::Auth)
                    .text(
                        "problem",
                        format_args!("cannot start a hashing thread: {e}"),
                    )
                    .write();
            }
        }
        Hashers { jobs }
    }

    /// Runs `check` on a hashing thread and waits for its answer (`None`: no thread took it).
    async fn run<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (answer, rx) = async_channel::bounded(1);
        let job = Box::new(move || {
            let _ = answer.try_send(check());
        });
        self.jobs.send(job).await.ok()?;
        rx.recv().await.ok()
    }
}

impl Default for AuthSettings {
    fn default() -> AuthSettings {
        AuthSettings {
            smtp_listener: false,
            allow_plaintext_on_loopback: false,
            delay_after: 3,
            delay: Duration::from_secs(2),
            lockout_after: 10,
            lockout: Duration::from_secs(15 * 60),
            min_password_length: MIN_PASSWORD_LENGTH,
        }
    }
}

impl Authenticator {
    /// An authenticator over `users`.
    pub fn new(users: Arc<UserDb>, settings: AuthSettings) -> Authenticator {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Authenticator {
            users,
            settings,
            failures: Mutex::new(Failures::default()),
            hashing: Hashers::start(cpus.max(2)),
        }
    }

    /// Checks `credentials` from `client`: the user's address, or the reply to refuse with.
    /// `context` (the session, client and role) goes into the log line, after the user name
    /// tried.
    pub async fn login(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        credentials: Credentials,
        context: &log::Fields,
    ) -> Result<Address, Reply> {
        let client = client.map(|ip| ip.to_canonical());
        let name = user_key(&credentials.authcid);
        let Some(attempt) = self.begin(client, Instant::now()) else {
            log::line(Event::Auth)
                .and(context)
                .field("result", "locked")
                .text("reason", "too many failures from this client")
                .write();
            return Err(Reply::of(
                proto_core::ReplyCode::TEMP_AUTH_FAILURE,
                (4, 7, 0),
                "Too many failed logins, try again later",
            ));
        };

        let this = self.clone();
        let verified = self
            .hashing
            .run(move || this.verify(&credentials))
            .await
            .unwrap_or(Err(("no hashing thread", None)));
        match verified {
            Ok(address) => {
                drop(attempt);
                self.succeeded(&name);
                log::line(Event::Auth)
                    .field("user", &address)
                    .and(context)
                    .field("result", "ok")
                    .write();
                Ok(address)
            }
            Err((why, known)) => {
                let (count, locked_now) = self.failed(client, name, Instant::now());
                drop(attempt);
                // A user of ours is named; any other name is not written down (it may be a
                // password typed in the wrong field).
                let user = known.map_or_else(|| "unknown".to_string(), |a| a.to_string());
                log::line(Event::Auth)
                    .field("user", &user)
                    .and(context)
                    .field("result", "failed")
                    .text("reason", why)
                    .field("failures", count)
                    .field_opt("lockout", locked_now.then_some("start"))
                    .write();
                if count >= self.settings.delay_after {
                    Timer::after(self.settings.delay).await;
                }
                Err(Reply::of(
                    proto_core::ReplyCode::AUTH_INVALID,
                    (5, 7, 8),
                    "Authentication credentials invalid",
                ))
            }
        }
    }

    /// Checks the credentials (blocking: reads the users file, hashes). The error is a reason
    /// for the log, which must not reveal whether the user exists.
    /// The user's address, or why not and, when the name is one of our users, which.
    fn verify(
        &self,
        credentials: &Credentials,
    ) -> Result<Address, (&'static str, Option<Address>)> {
        // The dummy hash (argon2: ~19 MiB while it runs) is made on the first login, whoever
        // logs in, not at startup: idle memory stays small, and the first attempt costs the
        // same for a known and an unknown user.
        let _ = users::dummy_hash();
        let address = Address::parse(&credentials.authcid).ok();
        let user = address
            .as_ref()
            .and_then(|a| self.users.get(a).ok().flatten());
        let usable = user
            .as_ref()
            .filter(|u| !u.receive_only)
            .and_then(|u| u.password.as_deref());
        let right = users::verify_password(usable, &credentials.password);
        let authzid_ok = match (&credentials.authzid, &address) {
            (None, _) => true,
            (Some(z), Some(a)) => Address::parse(z).is_ok_and(|z| z == *a),
            (Some(_), None) => false,
        };
        let known = user.and(address.clone());
        match address {
            Some(a) if right && authzid_ok => Ok(a),
            _ if right => Err(("authorization identity is not the user", known)),
            _ => Err(("bad credentials", known)),
        }
    }

    /// Starts checking a login from `client`: `None` when its network is locked out (its
    /// failures and the attempts in flight reach the lockout), else the attempt, counted as
    /// in flight until dropped.
    fn begin(&self, client: Option<IpAddr>, now: Instant) -> Option<Attempt<'_>> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let s = &self.settings;
        // Sweeping is O(n): only when the tables have grown; stale counts are ignored anyway.
        if f.by_ip.len() + f.by_user.len() > SWEEP_ABOVE {
            f.expire(now, s.lockout);
        }
        let Some(net) = client.map(network) else {
            return Some(Attempt {
                auth: self,
                network: None,
            });
        };
        if f.by_ip.len() >= MAX_TRACKED_IPS && !f.by_ip.contains_key(&net) {
            return Some(Attempt {
                auth: self,
                network: None,
            });
        }
        let c = f.by_ip.entry(net).or_insert(Count::new(now));
        if now - c.last >= s.lockout {
            c.failures = 0;
        }
        if c.failures.saturating_add(c.in_flight) >= s.lockout_after {
            return None;
        }
        c.in_flight += 1;
        Some(Attempt {
            auth: self,
            network: Some(net),
        })
    }

    /// Counts a failure; returns the larger count and whether the client's network just
    /// reached the lockout.
    fn failed(&self, client: Option<IpAddr>, name: String, now: Instant) -> (u32, bool) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let keep = self.settings.lockout;
        let mut count = 0;
        let mut locked_now = false;
        if let Some(net) = client.map(network)
            && (f.by_ip.len() < MAX_TRACKED_IPS || f.by_ip.contains_key(&net))
        {
            let n = bump(f.by_ip.entry(net).or_insert(Count::new(now)), now, keep);
            locked_now = n == self.settings.lockout_after;
            count = n;
        }
        if f.by_user.len() < MAX_TRACKED_USERS || f.by_user.contains_key(&name) {
            count = count.max(bump(
                f.by_user.entry(name).or_insert(Count::new(now)),
                now,
                keep,
            ));
        }
        (count, locked_now)
    }

    /// Forgets the user's failures after a successful login.
    fn succeeded(&self, name: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        f.by_user.remove(name);
    }
}

impl Failures {
    /// Drops counts whose last failure is older than `keep`.
    fn expire(&mut self, now: Instant, keep: Duration) {
        self.by_ip
            .retain(|_, c| c.in_flight > 0 || now - c.last < keep);
        self.by_user.retain(|_, c| now - c.last < keep);
    }
}

impl Count {
    fn new(now: Instant) -> Count {
        Count {
            failures: 0,
            last: now,
            in_flight: 0,
        }
    }
}

/// Adds a failure, forgetting those older than `keep`; returns the new count.
fn bump(c: &mut Count, now: Instant, keep: Duration) -> u32 {
    if now - c.last >= keep {
        c.failures = 0;
    }
    c.failures = c.failures.saturating_add(1);
    c.last = now;
    c.failures
}

/// The key counting failures of a user name: the normalised address, or the name as given
/// (lower case, at most 255 bytes) when it is no address.
fn user_key(authcid: &str) -> String {
    match Address::parse(authcid) {
        Ok(a) => a.to_string(),
        Err(_) => authcid.to_lowercase().chars().take(255).collect(),
    }
}

/// `[auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub(crate) smtp_listener: Option<bool>,
    pub(crate) allow_plaintext_on_loopback: Option<bool>,
    pub(crate) delay_after_failures: Option<u32>,
    pub(crate) failure_delay_ms: Option<u64>,
    pub(crate) lockout_after_failures: Option<Spanned<u32>>,
    pub(crate) lockout_seconds: Option<u64>,
    pub(crate) min_password_length: Option<Spanned<usize>>,
}

/// `[auth]` of postern.toml.
pub(crate) fn parse_settings(
    raw: RawAuth,
    src: &crate::config::Source<'_>,
) -> Result<AuthSettings, crate::config::ConfigError> {
    let defaults = AuthSettings::default();
    let lockout_after = match raw.lockout_after_failures {
        Some(n) if *n.get_ref() == 0 => {
            return Err(src.error(
                Some(n.span()),
                "lockout_after_failures = 0 would refuse every login".into(),
                "give a number of failures, e.g. lockout_after_failures = 10",
            ));
        }
        Some(n) => n.into_inner(),
        None => defaults.lockout_after,
    };
    let min_password_length = match raw.min_password_length {
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > 1024 => {
            return Err(src.error(
                Some(n.span()),
                format!(
                    "min_password_length = {} is not a length from 1 to 1024",
                    n.get_ref()
                ),
                "give a length in characters, e.g. min_password_length = 12",
            ));
        }
        Some(n) => n.into_inner(),
        None => defaults.min_password_length,
    };
    Ok(AuthSettings {
        min_password_length,
        smtp_listener: raw.smtp_listener.unwrap_or(defaults.smtp_listener),
        allow_plaintext_on_loopback: raw
            .allow_plaintext_on_loopback
            .unwrap_or(defaults.allow_plaintext_on_loopback),
        delay_after: raw.delay_after_failures.unwrap_or(defaults.delay_after),
        delay: raw
            .failure_delay_ms
            .map_or(defaults.delay, Duration::from_millis),
        lockout_after,
        lockout: raw
            .lockout_seconds
            .map_or(defaults.lockout, Duration::from_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(lockout_after: u32) -> Authenticator {
        let tmp = std::env::temp_dir();
        Authenticator::new(
            Arc::new(UserDb::new(tmp.join("postern-no-such-dir"))),
            AuthSettings {
                lockout_after,
                lockout: Duration::from_secs(60),
                ..AuthSettings::default()
            },
        )
    }

    /// Whether a login from `ip` would be checked now (and forgets the attempt).
    fn may_try(a: &Authenticator, ip: &str, now: Instant) -> bool {
        a.begin(Some(ip.parse().expect("ip")), now).is_some()
    }

    #[test]
    fn a_client_network_is_locked_out_and_never_the_user() {
        let a = authenticator(3);
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        for i in 1..=3 {
            assert!(may_try(&a, "192.0.2.1", t0), "attempt {i}");
            let (count, now_locked) = a.failed(Some(ip), "alice@x".into(), t0);
            assert_eq!((count, now_locked), (i, i == 3));
        }
        // That client is locked out, for every user; alice from elsewhere is not.
        assert!(!may_try(&a, "192.0.2.1", t0));
        assert!(may_try(&a, "192.0.2.2", t0));
        // Guesses for one user from many networks lock none of them, nor the user.
        for i in 0..20 {
            let other = IpAddr::from([198, 51, 100, i]);
            a.failed(Some(other), "bob@x".into(), t0);
        }
        assert!(may_try(&a, "198.51.100.1", t0));
        assert!(may_try(&a, "203.0.113.9", t0));
        // An IPv6 client's whole /64 counts as one.
        for _ in 0..3 {
            a.failed(
                Some("2001:db8::1".parse().expect("ip")),
                "carol@x".into(),
                t0,
            );
        }
        assert!(!may_try(&a, "2001:db8::ffff:1", t0));
        assert!(may_try(&a, "2001:db8:0:1::1", t0));
        // The lockout ends `lockout` after the last failure, and old failures are forgotten.
        let later = t0 + Duration::from_secs(61);
        assert!(may_try(&a, "192.0.2.1", later));
        assert_eq!(a.failed(Some(ip), "alice@x".into(), later), (1, false));
    }

    /// Attempts being checked count: concurrent connections get no more tries than
    /// sequential ones.
    #[test]
    fn attempts_in_flight_count_against_the_lockout() {
        let a = authenticator(3);
        let t0 = Instant::now();
        let ip = Some("192.0.2.7".parse().expect("ip"));
        let started: Vec<_> = (0..5).filter_map(|_| a.begin(ip, t0)).collect();
        assert_eq!(started.len(), 3, "three checks at once, no more");
        drop(started);
        // Finished without failing (say, right passwords): the slots are free again.
        let again: Vec<_> = (0..5).filter_map(|_| a.begin(ip, t0)).collect();
        assert_eq!(again.len(), 3);
    }

    #[test]
    fn success_clears_the_user_only() {
        let a = authenticator(2);
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        a.failed(Some(ip), "alice@x".into(), t0);
        a.succeeded("alice@x");
        assert_eq!(a.failed(None, "alice@x".into(), t0), (1, false));
        a.failed(Some(ip), "alice@x".into(), t0);
        assert!(!may_try(&a, "192.0.2.1", t0));
    }

    #[test]
    fn user_keys_are_normalised() {
        assert_eq!(user_key("Alice@EXAMPLE.org"), "alice@example.org");
        assert_eq!(user_key("ALICE"), "alice");
        assert_eq!(user_key(&"x".repeat(1000)).len(), 255);
    }
}

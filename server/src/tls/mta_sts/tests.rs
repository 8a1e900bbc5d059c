//! MTA-STS against servers on loopback: the DNS test server (`dns/test_server.rs`) serving
//! `_mta-sts.example.test` TXT and `mta-sts.example.test` A 127.0.0.1, behind a small UDP
//! relay that can switch between two zones (to change the TXT id), and an HTTPS server
//! (rustls, blocking threads) whose certificate is signed by a test CA passed as an extra
//! root. Nothing here uses the system resolver or leaves loopback.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::*;
use crate::dns::ResolverConfig;

use crate::dns::test_server::TestServer;

const DOMAIN: &str = "example.test";
const HOST: &str = "mta-sts.example.test";

const ENFORCE: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.mail.example.test\r\nmax_age: 86400\r\n";

/// The zone: the TXT record with `id`, the policy host, a domain without MTA-STS.
fn zone(dir: &Path, name: &str, id: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "example.test. 3600 SOA ns.example.test. hostmaster.example.test. 1 7200 900 1209600 300\n\
         _mta-sts.example.test. 0 TXT \"v=STSv1; id={id};\"\n\
         mta-sts.example.test. 0 A 127.0.0.1\n\
         plain.example.test. 0 A 127.0.0.1\n"
    );
    std::fs::write(&path, text).expect("write zone");
    path
}

/// Relays UDP DNS queries to one of two servers, switchable while running.
struct DnsSwitch {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
}

impl DnsSwitch {
    fn start(first: SocketAddr) -> DnsSwitch {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind relay");
        let addr = socket.local_addr().expect("relay addr");
        let target = Arc::new(Mutex::new(first));
        let current = target.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0; 65_535];
            while let Ok((n, client)) = socket.recv_from(&mut buf) {
                let to = *current.lock().expect("relay lock");
                let Ok(up) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
                    continue;
                };
                let _ = up.set_read_timeout(Some(Duration::from_secs(2)));
                if up.send_to(&buf[..n], to).is_err() {
                    continue;
                }
                let mut answer = vec![0; 65_535];
                if let Ok(m) = up.recv(&mut answer) {
                    let _ = socket.send_to(&answer[..m], client);
                }
            }
        });
        DnsSwitch { addr, target }
    }

    fn switch_to(&self, server: SocketAddr) {
        *self.target.lock().expect("relay lock") = server;
    }
}

/// What the HTTPS server does with the next connections.
#[derive(Debug, Clone)]
enum Serve {
    /// Completes the handshake, reads the request, sends these bytes, closes cleanly.
    Respond(Vec<u8>),
    /// Holds the connection open without a word.
    Hang,
    /// Closes the connection at once, as a host that went away.
    Gone,
}

/// An HTTPS server on 127.0.0.1, one thread per connection.
struct Https {
    port: u16,
    serve: Arc<Mutex<Serve>>,
    connections: Arc<AtomicUsize>,
}

impl Https {
    fn start(config: Arc<ServerConfig>, serve: Serve) -> Https {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind https");
        let port = listener.local_addr().expect("https addr").port();
        let serve = Arc::new(Mutex::new(serve));
        let connections = Arc::new(AtomicUsize::new(0));
        let (current, count) = (serve.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let how = current.lock().expect("serve lock").clone();
                let config = config.clone();
                std::thread::spawn(move || handle(stream, config, how));
            }
        });
        Https {
            port,
            serve,
            connections,
        }
    }

    fn set(&self, serve: Serve) {
        *self.serve.lock().expect("serve lock") = serve;
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn handle(stream: TcpStream, config: Arc<ServerConfig>, how: Serve) {
    let bytes = match how {
        Serve::Gone => return,
        Serve::Hang => {
            std::thread::sleep(Duration::from_secs(10));
            return;
        }
        Serve::Respond(bytes) => bytes,
    };
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, stream);
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    if tls.write_all(&bytes).is_err() {
        return;
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
    while tls.conn.wants_write() {
        if tls.conn.write_tls(&mut tls.sock).is_err() {
            return;
        }
    }
}

/// A test CA, and a certificate for the policy host signed by it.
struct Pki {
    ca: CertificateDer<'static>,
    server: Arc<ServerConfig>,
}

fn ca() -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "postern test CA");
    (params, KeyPair::generate().expect("ca key"))
}

fn pki() -> Pki {
    let (params, key) = ca();
    let ca = params.self_signed(&key).expect("ca cert").der().clone();
    let issuer = Issuer::new(params, key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![HOST.to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert")
        .der()
        .clone();
    let key = PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("leaf key der");
    let server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf, ca.clone()], key)
            .expect("server config");
    Pki {
        ca,
        server: Arc::new(server),
    }
}

fn ok(body: &str) -> Serve {
    Serve::Respond(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// Everything one test needs, each test its own.
struct World {
    tmp: tempfile::TempDir,
    dns_one: TestServer,
    dns_two: TestServer,
    switch: DnsSwitch,
    https: Https,
    pki: Pki,
    resolver: Arc<Resolver>,
    now: SystemTime,
}

impl World {
    /// DNS answering id `one` (switchable to id `two`), HTTPS serving `serve`.
    fn new(serve: Serve) -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let start = |name: &str, id: &str| {
            TestServer::start(Ipv4Addr::LOCALHOST.into(), &zone(tmp.path(), name, id))
                .expect("dns server")
        };
        let (dns_one, dns_two) = (start("one.zone", "one"), start("two.zone", "two"));
        let switch = DnsSwitch::start(dns_one.addr);
        let resolver = Arc::new(Resolver::new(ResolverConfig {
            // Generous: the machine may be busy; no test waits for this to run out.
            timeout: Duration::from_secs(1),
            attempts: 2,
            cache_capacity: 0,
            ..ResolverConfig::new(vec![switch.addr])
        }));
        let pki = pki();
        let https = Https::start(pki.server.clone(), serve);
        World {
            tmp,
            dns_one,
            dns_two,
            switch,
            https,
            pki,
            resolver,
            now: SystemTime::now(),
        }
    }

    fn cache_path(&self) -> PathBuf {
        self.tmp.path().join(FILE_NAME)
    }

    /// An `MtaSts` trusting the test CA, fetching from the test server.
    fn sts(&self) -> MtaSts {
        let (sts, bad) = MtaSts::new(
            self.resolver.clone(),
            vec![self.pki.ca.clone()],
            &self.cache_path(),
        )
        .expect("new");
        assert!(bad.is_empty(), "{bad:?}");
        sts.with_port(self.https.port)
            .with_timeout(Duration::from_secs(5))
    }

    fn lookup(&self, sts: &MtaSts, after: Duration) -> Lookup {
        smol::block_on(sts.lookup(DOMAIN, self.now + after))
    }
}

fn fetch_error(lookup: &Lookup) -> &FetchError {
    match &lookup.problem {
        Some(StsError::Fetch(e)) => e,
        other => panic!("want a fetch error, got {other:?}"),
    }
}

#[test]
fn enforce_policy_fetched_cached_and_mx_matched() {
    let w = World::new(ok(ENFORCE));
    let sts = w.sts();
    let found = w.lookup(&sts, Duration::ZERO);
    assert_eq!(found.problem, None);
    let policy = found.policy.expect("policy");
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(policy.id, "one");
    assert_eq!(policy.max_age, Duration::from_secs(86400));
    assert_eq!(policy.mx, vec!["mx1.example.test", "*.mail.example.test"]);
    let cases = [
        ("mx1.example.test", true),
        ("MX1.example.test.", true),
        ("a.mail.example.test", true),
        ("mail.example.test", false),
        ("a.b.mail.example.test", false),
        ("mx2.example.test", false),
    ];
    for (host, allowed) in cases {
        assert_eq!(policy.allows_mx(host), allowed, "host {host:?}");
    }
    // Same id, within max_age: the cached policy, no new fetch.
    let again = w.lookup(&sts, Duration::from_secs(3600));
    assert_eq!(again.policy, Some(policy.clone()));
    assert_eq!(w.https.connections(), 1);
    assert_eq!(smol::block_on(sts.policy(DOMAIN, w.now)), Some(policy));
}

#[test]
fn mode_none_is_returned_as_such() {
    let w = World::new(ok("version: STSv1\nmode: none\nmax_age: 86400\n"));
    let found = w.lookup(&w.sts(), Duration::ZERO);
    assert_eq!(found.problem, None);
    let policy = found.policy.expect("policy");
    assert_eq!(policy.mode, Mode::None);
    assert!(policy.mx.is_empty() && !policy.allows_mx("mx1.example.test"));
}

#[test]
fn no_txt_record_no_policy_no_fetch() {
    let w = World::new(ok(ENFORCE));
    let sts = w.sts();
    let found = smol::block_on(sts.lookup("plain.example.test", w.now));
    assert_eq!(
        found,
        Lookup {
            policy: None,
            problem: None
        }
    );
    assert_eq!(w.https.connections(), 0);
}

#[test]
fn txt_id_change_refetches() {
    let w = World::new(ok(ENFORCE));
    let sts = w.sts();
    let first = w.lookup(&sts, Duration::ZERO).policy.expect("first");
    assert_eq!(first.id, "one");
    // The host now serves a new policy, but the id has not changed: not fetched.
    w.https.set(ok(
        "version: STSv1\nmode: testing\nmx: mx9.example.test\nmax_age: 600\n",
    ));
    let same = w.lookup(&sts, Duration::from_secs(60)).policy;
    assert_eq!(same, Some(first));
    assert_eq!(w.https.connections(), 1);
    // A new id: fetched at once.
    w.switch.switch_to(w.dns_two.addr);
    let found = w.lookup(&sts, Duration::from_secs(120));
    assert_eq!(found.problem, None);
    let second = found.policy.expect("second");
    assert_eq!(
        (second.id.as_str(), second.mode, second.mx.as_slice()),
        (
            "two",
            Mode::Testing,
            ["mx9.example.test".to_string()].as_slice()
        )
    );
    assert_eq!(w.https.connections(), 2);
    // Back to id one: a change again, so fetched again.
    w.switch.switch_to(w.dns_one.addr);
    assert_eq!(
        w.lookup(&sts, Duration::from_secs(180))
            .policy
            .map(|p| p.id),
        Some("one".to_string())
    );
    assert_eq!(w.https.connections(), 3);
}

#[test]
fn unchanged_policy_refreshed_after_a_day() {
    let week = ENFORCE.replace("max_age: 86400", "max_age: 604800");
    let w = World::new(ok(&week));
    let sts = w.sts();
    w.lookup(&sts, Duration::ZERO).policy.expect("first");
    w.https.set(Serve::Gone);
    // A day later, same id: fetched again; the host is gone, the cached policy stays.
    let later = w.lookup(&sts, REFRESH_AFTER + Duration::from_secs(1));
    assert!(
        matches!(later.problem, Some(StsError::Fetch(_))),
        "{later:?}"
    );
    assert_eq!(later.policy.map(|p| p.id), Some("one".to_string()));
    assert_eq!(w.https.connections(), 2);
}

#[test]
fn failed_fetch_not_retried_for_a_while() {
    let w = World::new(Serve::Gone);
    let sts = w.sts();
    let first = w.lookup(&sts, Duration::ZERO);
    assert!(
        matches!(first.problem, Some(StsError::Fetch(_))),
        "{first:?}"
    );
    assert_eq!(w.https.connections(), 1);
    // Soon after: not tried again.
    let soon = w.lookup(&sts, Duration::from_secs(60));
    assert_eq!(
        soon,
        Lookup {
            policy: None,
            problem: Some(StsError::RecentlyFailed("one".into()))
        }
    );
    assert_eq!(w.https.connections(), 1);
    // A new id is tried at once; once RETRY_AFTER has passed, so is the old one.
    w.https.set(ok(ENFORCE));
    w.switch.switch_to(w.dns_two.addr);
    assert_eq!(
        w.lookup(&sts, Duration::from_secs(61)).policy.map(|p| p.id),
        Some("two".to_string())
    );
    assert_eq!(w.https.connections(), 2);
    let (fresh, _) = MtaSts::new(
        w.resolver.clone(),
        vec![w.pki.ca.clone()],
        &w.tmp.path().join("other"),
    )
    .expect("new");
    let fresh = fresh.with_port(w.https.port);
    w.https.set(Serve::Gone);
    w.switch.switch_to(w.dns_one.addr);
    assert!(w.lookup(&fresh, Duration::ZERO).policy.is_none());
    w.https.set(ok(ENFORCE));
    let later = w.lookup(&fresh, RETRY_AFTER);
    assert_eq!(later.problem, None);
    assert_eq!(later.policy.map(|p| p.id), Some("one".to_string()));
    assert_eq!(w.https.connections(), 4);
}

#[test]
fn untrusted_certificate_gives_no_policy() {
    let w = World::new(ok(ENFORCE));
    // A second server whose leaf is signed by a CA nobody passed as a root.
    let other = pki();
    let rogue = Https::start(other.server.clone(), ok(ENFORCE));
    let (sts, _) =
        MtaSts::new(w.resolver.clone(), vec![w.pki.ca.clone()], &w.cache_path()).expect("new");
    let sts = sts.with_port(rogue.port);
    let found = w.lookup(&sts, Duration::ZERO);
    assert_eq!(found.policy, None);
    assert!(
        matches!(fetch_error(&found), FetchError::Tls { .. }),
        "{found:?}"
    );
    assert_eq!(rogue.connections(), 1);
}

#[test]
fn redirect_is_not_followed() {
    let w = World::new(Serve::Respond(
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://mta-sts.example.test/other.txt\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"
            .to_vec(),
    ));
    let found = w.lookup(&w.sts(), Duration::ZERO);
    assert_eq!(found.policy, None);
    assert_eq!(fetch_error(&found), &FetchError::Status(301));
    assert_eq!(w.https.connections(), 1, "nothing fetched after the 301");
}

#[test]
fn wrong_content_type_gives_no_policy() {
    let body = ENFORCE;
    let w = World::new(Serve::Respond(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    ));
    let found = w.lookup(&w.sts(), Duration::ZERO);
    assert_eq!(found.policy, None);
    assert_eq!(
        fetch_error(&found),
        &FetchError::ContentType("text/html".into())
    );
}

#[test]
fn oversized_body_gives_no_policy() {
    // A valid policy padded with an unknown field past the limit, sent without a length.
    let body = format!("{ENFORCE}padding: {}\r\n", "p".repeat(fetch::MAX_BODY));
    let w = World::new(Serve::Respond(
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}").into_bytes(),
    ));
    let found = w.lookup(&w.sts(), Duration::ZERO);
    assert_eq!(found.policy, None);
    assert_eq!(fetch_error(&found), &FetchError::TooLarge(fetch::MAX_BODY));
}

#[test]
fn invalid_policy_text_gives_no_policy() {
    let w = World::new(ok("version: STSv1\nmode: enforce\nmax_age: 86400\n"));
    let found = w.lookup(&w.sts(), Duration::ZERO);
    assert_eq!(found.policy, None);
    assert!(
        matches!(found.problem, Some(StsError::Policy(_))),
        "{found:?}"
    );
}

#[test]
fn silent_server_times_out() {
    let w = World::new(Serve::Hang);
    let sts = w.sts().with_timeout(Duration::from_millis(300));
    let found = w.lookup(&sts, Duration::ZERO);
    assert_eq!(found.policy, None);
    assert_eq!(fetch_error(&found), &FetchError::Timeout);
}

#[test]
fn cached_policy_used_when_the_server_goes_away() {
    let w = World::new(ok(ENFORCE));
    let sts = w.sts();
    let policy = w.lookup(&sts, Duration::ZERO).policy.expect("policy");
    w.https.set(Serve::Gone);
    // A new id asks for a fetch, which fails: the cached policy still applies.
    w.switch.switch_to(w.dns_two.addr);
    let found = w.lookup(&sts, Duration::from_secs(600));
    assert!(
        matches!(found.problem, Some(StsError::Fetch(_))),
        "{found:?}"
    );
    assert_eq!(found.policy, Some(policy.clone()));
    // So does a domain whose TXT record disappears or breaks (here: DNS unreachable).
    let (sts_no_dns, _) = {
        let resolver = Arc::new(Resolver::new(ResolverConfig {
            timeout: Duration::from_millis(100),
            attempts: 1,
            cache_capacity: 0,
            ..ResolverConfig::new(vec![])
        }));
        MtaSts::new(resolver, vec![w.pki.ca.clone()], &w.cache_path()).expect("new")
    };
    let found = smol::block_on(sts_no_dns.lookup(DOMAIN, w.now + Duration::from_secs(600)));
    assert!(matches!(found.problem, Some(StsError::Dns(_))), "{found:?}");
    assert_eq!(found.policy, Some(policy));
    // Past max_age it is gone.
    let expired = w.lookup(&sts, Duration::from_secs(86400 + 1));
    assert_eq!(expired.policy, None, "{expired:?}");
}

#[test]
fn persisted_cache_survives_a_new_instance() {
    let w = World::new(ok(ENFORCE));
    let policy = w.lookup(&w.sts(), Duration::ZERO).policy.expect("policy");
    w.https.set(Serve::Gone);
    // A restart: the policy comes from the file, without a fetch (same id).
    let restarted = w.sts();
    let found = w.lookup(&restarted, Duration::from_secs(60));
    assert_eq!(found.problem, None);
    assert_eq!(found.policy, Some(policy.clone()));
    assert_eq!(w.https.connections(), 1);
    // Bad lines in the file are reported and skipped; the rest loads.
    let path = w.cache_path();
    let text = std::fs::read_to_string(&path).expect("read cache");
    std::fs::write(
        &path,
        format!(
            "broken line\nother.test x1 1 enforce 600 *.*.other.test\n{text}\
             third.test id3 notanumber none 600\n"
        ),
    )
    .expect("write cache");
    let (edited, bad) =
        MtaSts::new(w.resolver.clone(), vec![w.pki.ca.clone()], &path).expect("new");
    let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
    assert_eq!(lines, vec![1, 2, 5], "{bad:?}");
    let edited = edited.with_port(w.https.port);
    let found = w.lookup(&edited, Duration::from_secs(60));
    assert_eq!(found.policy, Some(policy));
}

#[test]
fn bad_extra_root_is_refused() {
    let w = World::new(Serve::Gone);
    let err = MtaSts::new(
        w.resolver.clone(),
        vec![CertificateDer::from(b"not a certificate".to_vec())],
        &w.cache_path(),
    )
    .expect_err("bad root");
    assert!(matches!(err, OpenError::Root { index: 0, .. }), "{err}");
}

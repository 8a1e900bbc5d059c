//! Resolver tests against [`super::test_server`] on loopback, serving `testdata/test.zone`.
//! Nothing here reads /etc/resolv.conf or queries anything but the test server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::test_server::TestServer;
use super::*;

const ZONE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/dns/testdata/test.zone");

/// A clock the tests move by hand.
#[derive(Debug)]
struct ManualClock(Mutex<Instant>);

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(ManualClock(Mutex::new(Instant::now())))
    }
    fn advance(&self, by: Duration) {
        *self.0.lock().expect("clock lock") += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().expect("clock lock")
    }
}

fn server() -> TestServer {
    TestServer::start(Ipv4Addr::LOCALHOST.into(), Path::new(ZONE)).expect("start test server")
}

fn config(servers: Vec<SocketAddr>) -> ResolverConfig {
    ResolverConfig {
        timeout: Duration::from_millis(300),
        attempts: 2,
        ..ResolverConfig::new(servers)
    }
}

fn resolver(server: &TestServer) -> (Resolver, Arc<ManualClock>) {
    let clock = ManualClock::new();
    (
        Resolver::with_clock(config(vec![server.addr]), clock.clone()),
        clock,
    )
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("test name")
}

fn host(preference: u16, exchange: &str) -> MxHost {
    MxHost {
        preference,
        exchange: name(exchange),
    }
}

#[test]
fn mx_sorted_by_preference_stable_among_equals() {
    let s = server();
    let (r, _) = resolver(&s);
    let mx = smol::block_on(r.mx("example")).expect("mx");
    assert_eq!(
        mx,
        Mx::Hosts(vec![
            host(10, "mx1.example."),
            host(10, "mx1b.example."),
            host(20, "mx2.example."),
        ])
    );
}

#[test]
fn null_mx_is_its_own_result() {
    let s = server();
    let (r, _) = resolver(&s);
    assert_eq!(smol::block_on(r.mx("nullmx.example.")), Ok(Mx::Null));
}

#[test]
fn no_mx_is_nodata_not_nxdomain() {
    let s = server();
    let (r, _) = resolver(&s);
    let err = smol::block_on(r.mx("nomx.example")).expect_err("no MX");
    assert_eq!(
        err,
        DnsError::NoData {
            name: name("nomx.example."),
            rtype: RecordType::MX
        }
    );
    assert!(err.is_not_found() && !err.is_temporary());
    let err = smol::block_on(r.mx("absent.example")).expect_err("absent");
    assert_eq!(
        err,
        DnsError::NxDomain {
            name: name("absent.example.")
        }
    );
    assert!(err.is_not_found() && !err.is_temporary());
}

#[test]
fn a_and_aaaa() {
    let s = server();
    let (r, _) = resolver(&s);
    smol::block_on(async {
        assert_eq!(
            r.a("mx1.example").await,
            Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])
        );
        assert_eq!(
            r.a("MX2.Example.").await,
            Ok(vec![
                Ipv4Addr::new(192, 0, 2, 3),
                Ipv4Addr::new(192, 0, 2, 4)
            ])
        );
        assert_eq!(
            r.aaaa("mx1.example").await,
            Ok(vec!["2001:db8::1".parse::<Ipv6Addr>().expect("v6")])
        );
        assert!(matches!(
            r.aaaa("mx2.example").await,
            Err(DnsError::NoData { .. })
        ));
    });
}

#[test]
fn txt_strings_joined_per_record() {
    let s = server();
    let (r, _) = resolver(&s);
    smol::block_on(async {
        let long = r.txt("long.example").await.expect("long");
        let want = format!("v=DKIM1; k=rsa; p={}{}", "A".repeat(237), "B".repeat(100));
        assert_eq!(long, vec![want.into_bytes()]);
        let mut multi = r.txt("multi.example").await.expect("multi");
        multi.sort();
        assert_eq!(
            multi,
            vec![b"second record".to_vec(), b"v=spf1 -all".to_vec()]
        );
    });
}

#[test]
fn truncated_udp_answer_is_asked_again_over_tcp() {
    let s = server();
    let (r, _) = resolver(&s);
    let txt = smol::block_on(r.txt("big.example")).expect("big");
    let want: Vec<u8> = "CDE"
        .chars()
        .flat_map(|c| std::iter::repeat_n(c as u8, 250))
        .collect();
    assert_eq!(txt, vec![want]);
    assert_eq!(s.tcp_queries(), 1);
    assert_eq!(s.queries(), 2);
}

#[test]
fn cname_chain_followed() {
    let s = server();
    let (r, clock) = resolver(&s);
    let answer = smol::block_on(r.lookup(&name("alias.example."), RecordType::A)).expect("alias");
    assert_eq!(answer.name, name("mx1.example."));
    assert_eq!(
        answer.records,
        vec![RData::A(Ipv4Addr::new(192, 0, 2, 1).into())]
    );
    // The shortest TTL of the chain (alias2's 60 s) bounds the answer.
    assert_eq!(answer.valid_until, clock.now() + Duration::from_secs(60));
    assert_eq!(
        smol::block_on(r.lookup(&name("dangling.example."), RecordType::A)),
        Err(DnsError::NxDomain {
            name: name("gone.example.")
        })
    );
}

#[test]
fn cname_target_asked_when_the_answer_stops_at_the_cname() {
    let s = server();
    let (r, _) = resolver(&s);
    let answer =
        smol::block_on(r.lookup(&name("partial.example."), RecordType::A)).expect("partial");
    assert_eq!(answer.name, name("mx1.example."));
    assert_eq!(
        answer.records,
        vec![RData::A(Ipv4Addr::new(192, 0, 2, 1).into())]
    );
    assert_eq!(s.queries(), 2, "the CNAME, then its target");
}

#[test]
fn truncation_without_edns() {
    let s = server();
    let r = Resolver::with_clock(
        ResolverConfig {
            edns_payload: None,
            ..config(vec![s.addr])
        },
        ManualClock::new(),
    );
    assert_eq!(smol::block_on(r.txt("big.example")).map(|t| t.len()), Ok(1));
    assert_eq!(s.tcp_queries(), 1);
}

#[test]
fn cname_loop_is_an_error() {
    let s = server();
    let (r, _) = resolver(&s);
    let err = smol::block_on(r.a("loop1.example")).expect_err("loop");
    assert_eq!(
        err,
        DnsError::CnameChain {
            name: name("loop1.example.")
        }
    );
    assert!(err.is_temporary());
}

#[test]
fn ptr_lookup() {
    let s = server();
    let (r, _) = resolver(&s);
    let names = smol::block_on(r.ptr(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
    assert_eq!(names, Ok(vec![name("mx1.example.")]));
}

#[test]
fn verified_names_are_forward_confirmed() {
    let s = server();
    let (r, _) = resolver(&s);
    let name_of = |ip: [u8; 4]| smol::block_on(r.verified_name(IpAddr::V4(Ipv4Addr::from(ip))));
    assert_eq!(name_of([192, 0, 2, 1]), Some("mx1.example".to_string()));
    // Its PTR names mx1.example, which does not have this address.
    assert_eq!(name_of([192, 0, 2, 66]), None);
    // No PTR at all.
    assert_eq!(name_of([192, 0, 2, 77]), None);
}

#[test]
fn answers_with_the_wrong_id_or_question_are_ignored() {
    let s = server();
    let (r, _) = resolver(&s);
    assert_eq!(
        smol::block_on(r.a("spoofed.example")),
        Ok(vec![Ipv4Addr::new(192, 0, 2, 99)])
    );
}

#[test]
fn servfail_and_silence_are_temporary_after_every_attempt() {
    let s = server();
    let (r, _) = resolver(&s);
    let err = smol::block_on(r.a("servfail.example")).expect_err("servfail");
    assert!(
        matches!(
            &err,
            DnsError::Temporary {
                reason: TempReason::Server(ResponseCode::ServFail),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(s.queries(), 2, "one query per attempt");
    let started = Instant::now();
    let err = smol::block_on(r.a("drop.example")).expect_err("drop");
    assert!(
        matches!(
            &err,
            DnsError::Temporary {
                reason: TempReason::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(s.queries(), 4);
    // Temporary failures are not cached.
    assert!(smol::block_on(r.a("servfail.example")).is_err());
    assert_eq!(s.queries(), 6);
}

#[test]
fn dead_nameservers_then_a_working_one() {
    let s = server();
    // Nothing listens on this port: ICMP port unreachable, an immediate error.
    let closed = UdpSocket::bind("127.0.0.1:0")
        .and_then(|u| u.local_addr())
        .expect("closed port");
    // This one receives and never answers: the try times out.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("silent socket");
    let silent_addr = silent.local_addr().expect("silent addr");
    let r = Resolver::with_clock(
        config(vec![closed, silent_addr, s.addr]),
        ManualClock::new(),
    );
    let started = Instant::now();
    assert_eq!(
        smol::block_on(r.a("mx1.example")),
        Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])
    );
    // The silent server's try ran into its timeout before the working server was asked.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    let mut buf = [0; 512];
    silent.set_nonblocking(true).expect("nonblocking");
    assert!(silent.recv(&mut buf).is_ok(), "the silent server was asked");
    drop(silent);
}

#[test]
fn ipv6_server() {
    let Ok(s) = TestServer::start(Ipv6Addr::LOCALHOST.into(), Path::new(ZONE)) else {
        eprintln!("no ::1 here, skipped");
        return;
    };
    let (r, _) = resolver(&s);
    assert_eq!(
        smol::block_on(r.a("mx1.example")),
        Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])
    );
}

#[test]
fn cache_honours_ttl_on_the_injected_clock() {
    let s = server();
    let (r, clock) = resolver(&s);
    let want = Ok(vec![Ipv4Addr::new(192, 0, 2, 30)]);
    smol::block_on(async {
        assert_eq!(r.a("short.example").await, want);
        assert_eq!(r.a("SHORT.example.").await, want);
        assert_eq!(s.queries(), 1, "second lookup from the cache");
        clock.advance(Duration::from_secs(29));
        assert_eq!(r.a("short.example").await, want);
        assert_eq!(s.queries(), 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(r.a("short.example").await, want);
        assert_eq!(s.queries(), 2, "expired after its 30 s TTL");
    });
}

#[test]
fn cache_caps_ttls() {
    let s = server();
    let clock = ManualClock::new();
    let r = Resolver::with_clock(
        ResolverConfig {
            max_ttl: Duration::from_secs(10),
            ..config(vec![s.addr])
        },
        clock.clone(),
    );
    smol::block_on(async {
        r.a("mx1.example").await.expect("first");
        clock.advance(Duration::from_secs(9));
        r.a("mx1.example").await.expect("cached");
        assert_eq!(s.queries(), 1);
        clock.advance(Duration::from_secs(1));
        r.a("mx1.example").await.expect("again");
        assert_eq!(s.queries(), 2, "600 s TTL capped to 10 s");
    });
}

#[test]
fn negative_answers_cached_for_the_soa_minimum() {
    let s = server();
    let (r, clock) = resolver(&s);
    smol::block_on(async {
        assert!(matches!(
            r.a("absent.example").await,
            Err(DnsError::NxDomain { .. })
        ));
        assert!(matches!(
            r.mx("nomx.example").await,
            Err(DnsError::NoData { .. })
        ));
        assert!(matches!(
            r.a("absent.example").await,
            Err(DnsError::NxDomain { .. })
        ));
        assert!(matches!(
            r.mx("nomx.example").await,
            Err(DnsError::NoData { .. })
        ));
        assert_eq!(s.queries(), 2, "negative answers from the cache");
        // RFC 2308 5: min(SOA TTL 3600, MINIMUM 300).
        clock.advance(Duration::from_secs(299));
        assert!(r.a("absent.example").await.is_err());
        assert_eq!(s.queries(), 2);
        clock.advance(Duration::from_secs(1));
        assert!(r.a("absent.example").await.is_err());
        assert_eq!(s.queries(), 3);
        // Outside the zone: NXDOMAIN without an SOA, which must not be cached.
        assert!(r.a("absent.other.").await.is_err());
        assert!(r.a("absent.other.").await.is_err());
        assert_eq!(s.queries(), 5);
    });
}

#[test]
fn cache_is_bounded() {
    let s = server();
    let clock = ManualClock::new();
    let r = Resolver::with_clock(
        ResolverConfig {
            cache_capacity: 2,
            ..config(vec![s.addr])
        },
        clock,
    );
    smol::block_on(async {
        for host in ["mx1.example", "mx1b.example", "mx2.example", "nomx.example"] {
            r.a(host).await.expect("address");
        }
    });
    assert_eq!(r.lock_cache().len(), 2);
}

#[test]
fn no_nameserver_is_a_temporary_error() {
    let r = Resolver::new(config(vec![]));
    let err = smol::block_on(r.a("example")).expect_err("no servers");
    assert!(err.is_temporary(), "{err:?}");
}

#[test]
fn invalid_names_rejected() {
    let r = Resolver::new(config(vec![]));
    for bad in ["", "bücher.example", "a..b"] {
        assert!(
            matches!(smol::block_on(r.a(bad)), Err(DnsError::InvalidName(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn resolv_conf_parsing() {
    let text = "# comment\nsearch example.org\nnameserver 192.0.2.53\n\
                nameserver 2001:db8::53%eth0 ; zone dropped\nnameserver not-an-ip\n\
                options ndots:2 timeout:3 attempts:9 rotate\n";
    let c = ResolverConfig::from_resolv_conf(text);
    assert_eq!(
        c.nameservers,
        vec![
            "192.0.2.53:53".parse::<SocketAddr>().expect("v4"),
            "[2001:db8::53]:53".parse::<SocketAddr>().expect("v6"),
        ]
    );
    assert_eq!(c.timeout, Duration::from_secs(3));
    assert_eq!(c.attempts, 5, "clamped as glibc does");
    let empty = ResolverConfig::from_resolv_conf("search example.org\n");
    assert_eq!(
        empty.nameservers,
        vec![
            "127.0.0.1:53".parse::<SocketAddr>().expect("v4"),
            "[::1]:53".parse::<SocketAddr>().expect("v6"),
        ]
    );
    assert_eq!(empty.timeout, resolv_conf::DEFAULT_TIMEOUT);
    assert_eq!(empty.attempts, resolv_conf::DEFAULT_ATTEMPTS);
}

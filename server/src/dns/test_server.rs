//! A small authoritative DNS server for the tests: serves one zone file on loopback over UDP
//! and TCP, counts the queries it gets.
//!
//! The zone file has one record a line, `name TTL TYPE data`, names fully qualified, `#`
//! comments. Types: `A`, `AAAA`, `MX pref host.`, `CNAME host.`, `PTR host.`,
//! `TXT "string" "string" ...`, `SOA mname. rname. serial refresh retry expire minimum`.
//! Pseudo-types for misbehaviour (their TTL and data are ignored): `SERVFAIL` (answer
//! SERVFAIL), `DROP` (never answer), `WRONGID` (first send two forged answers the resolver
//! must ignore: one with another id, one with the right id for another question), `NOCHASE` (answer only the name's own CNAME, no SOA,
//! as a server without the target's data would: the resolver must ask about the target).
//!
//! Answers: the records of the asked type, CNAME chains followed inside the zone (up to ten
//! links), NXDOMAIN with the SOA for absent names, NODATA (NOERROR, no answer, the SOA) for
//! names without the type. UDP answers over 512 bytes go out truncated (TC, no records),
//! whatever EDNS size the query offers, so that the TCP fallback is exercised.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The largest UDP answer sent untruncated.
const UDP_LIMIT: usize = 512;

/// A running test server. Its threads live until the test process ends.
#[derive(Debug)]
pub struct TestServer {
    /// The address it answers on (UDP and TCP, same port).
    pub addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    ServFail,
    Drop,
    WrongId,
    NoChase,
}

#[derive(Debug, Default)]
struct Zone {
    records: Vec<Record>,
    behaviours: Vec<(Name, Behaviour)>,
}

impl TestServer {
    /// Serves the zone file at `path` on `ip` (127.0.0.1 or ::1), port chosen by the kernel.
    pub fn start(ip: IpAddr, path: &Path) -> std::io::Result<TestServer> {
        let text = std::fs::read_to_string(path)?;
        let zone = Arc::new(Zone::parse(&text));
        let (udp, tcp) = bind_pair(ip)?;
        let addr = udp.local_addr()?;
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        {
            let zone = zone.clone();
            let count = udp_queries.clone();
            std::thread::spawn(move || serve_udp(udp, &zone, &count));
        }
        {
            let count = tcp_queries.clone();
            std::thread::spawn(move || serve_tcp(tcp, zone, count));
        }
        Ok(TestServer {
            addr,
            udp_queries,
            tcp_queries,
        })
    }

    /// Queries received over UDP and TCP so far.
    pub fn queries(&self) -> usize {
        self.udp_queries.load(Ordering::SeqCst) + self.tcp_queries.load(Ordering::SeqCst)
    }

    /// Queries received over TCP so far.
    pub fn tcp_queries(&self) -> usize {
        self.tcp_queries.load(Ordering::SeqCst)
    }
}

/// A UDP socket and a TCP listener on the same port.
fn bind_pair(ip: IpAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind((ip, 0))?;
        match TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port")))
}

fn serve_udp(socket: UdpSocket, zone: &Zone, count: &AtomicUsize) {
    let mut buf = vec![0; 65_535];
    while let Ok((n, peer)) = socket.recv_from(&mut buf) {
        count.fetch_add(1, Ordering::SeqCst);
        let Ok(request) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(response) = zone.answer(&request) else {
            continue;
        };
        let Ok(mut bytes) = response.to_vec() else {
            continue;
        };
        if bytes.len() > UDP_LIMIT {
            let mut truncated = Message::response(response.metadata.id, OpCode::Query);
            truncated.metadata = response.metadata;
            truncated.metadata.truncation = true;
            truncated.add_queries(response.queries.clone());
            let Ok(b) = truncated.to_vec() else { continue };
            bytes = b;
        }
        if zone.behaviour(&request) == Some(Behaviour::WrongId) {
            for decoy in decoys(&response) {
                if let Ok(b) = decoy.to_vec() {
                    let _ = socket.send_to(&b, peer);
                }
            }
        }
        let _ = socket.send_to(&bytes, peer);
    }
}

fn serve_tcp(listener: TcpListener, zone: Arc<Zone>, count: Arc<AtomicUsize>) {
    for stream in listener.incoming().flatten() {
        let zone = zone.clone();
        let count = count.clone();
        std::thread::spawn(move || serve_tcp_conn(stream, &zone, &count));
    }
}

fn serve_tcp_conn(mut stream: TcpStream, zone: &Zone, count: &AtomicUsize) {
    loop {
        let mut len = [0; 2];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let mut buf = vec![0; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut buf).is_err() {
            return;
        }
        count.fetch_add(1, Ordering::SeqCst);
        let Ok(request) = Message::from_vec(&buf) else {
            return;
        };
        let Some(response) = zone.answer(&request) else {
            continue;
        };
        let Ok(bytes) = response.to_vec() else { return };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}

impl Zone {
    /// Parses the zone file format described in the module doc; panics on a bad line (the
    /// files are ours).
    fn parse(text: &str) -> Zone {
        let mut zone = Zone::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |what: &str| -> ! { panic!("zone line {}: {what}: {line:?}", i + 1) };
            let mut words = line.split_whitespace();
            let (Some(name), Some(ttl), Some(rtype)) = (words.next(), words.next(), words.next())
            else {
                bad("want name TTL TYPE data")
            };
            let data = line
                .split_whitespace()
                .skip(3)
                .collect::<Vec<_>>()
                .join(" ");
            let name = Name::from_ascii(name).unwrap_or_else(|_| bad("name"));
            let ttl: u32 = ttl.parse().unwrap_or_else(|_| bad("TTL"));
            let n = |s: &str| Name::from_ascii(s).unwrap_or_else(|_| bad("name in data"));
            let w: Vec<&str> = data.split_whitespace().collect();
            let num = |s: &str| -> i64 { s.parse().unwrap_or_else(|_| bad("number")) };
            let rdata = match rtype {
                "A" => RData::A(A(data.parse().unwrap_or_else(|_| bad("IPv4")))),
                "AAAA" => RData::AAAA(AAAA(data.parse().unwrap_or_else(|_| bad("IPv6")))),
                "MX" if w.len() == 2 => RData::MX(MX::new(num(w[0]) as u16, n(w[1]))),
                "CNAME" => RData::CNAME(CNAME(n(&data))),
                "PTR" => RData::PTR(PTR(n(&data))),
                "TXT" => RData::TXT(TXT::new(quoted_strings(&data))),
                "SOA" if w.len() == 7 => RData::SOA(SOA::new(
                    n(w[0]),
                    n(w[1]),
                    num(w[2]) as u32,
                    num(w[3]) as i32,
                    num(w[4]) as i32,
                    num(w[5]) as i32,
                    num(w[6]) as u32,
                )),
                "SERVFAIL" | "DROP" | "WRONGID" | "NOCHASE" => {
                    let b = match rtype {
                        "SERVFAIL" => Behaviour::ServFail,
                        "DROP" => Behaviour::Drop,
                        "NOCHASE" => Behaviour::NoChase,
                        _ => Behaviour::WrongId,
                    };
                    zone.behaviours.push((name, b));
                    continue;
                }
                _ => bad("unknown type or bad data"),
            };
            zone.records.push(Record::from_rdata(name, ttl, rdata));
        }
        zone
    }

    fn behaviour(&self, request: &Message) -> Option<Behaviour> {
        let q = request.queries.first()?;
        self.behaviours
            .iter()
            .find(|(n, _)| n == q.name())
            .map(|(_, b)| *b)
    }

    /// The response to `request`, or `None` to stay silent.
    fn answer(&self, request: &Message) -> Option<Message> {
        let q = request.queries.first()?;
        let mut response = Message::response(request.metadata.id, OpCode::Query);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        response.add_query(q.clone());
        match self.behaviour(request) {
            Some(Behaviour::Drop) => return None,
            Some(Behaviour::ServFail) => {
                response.metadata.response_code = ResponseCode::ServFail;
                return Some(response);
            }
            Some(Behaviour::WrongId | Behaviour::NoChase) | None => {}
        }
        let mut name = q.name().clone();
        for _ in 0..10 {
            let here: Vec<&Record> = self.records.iter().filter(|r| r.name == name).collect();
            if here.is_empty() {
                response.metadata.response_code = ResponseCode::NXDomain;
                self.add_soa(&mut response, &name);
                return Some(response);
            }
            let matching: Vec<Record> = here
                .iter()
                .filter(|r| r.record_type() == q.query_type())
                .map(|r| (*r).clone())
                .collect();
            if !matching.is_empty() {
                response.add_answers(matching);
                return Some(response);
            }
            match here.iter().find(|r| r.record_type() == RecordType::CNAME) {
                Some(cname) => {
                    response.add_answer((*cname).clone());
                    if self.behaviour(request) == Some(Behaviour::NoChase) {
                        return Some(response);
                    }
                    if let RData::CNAME(target) = &cname.data {
                        name = target.0.clone();
                    }
                }
                None => {
                    self.add_soa(&mut response, &name);
                    return Some(response);
                }
            }
        }
        Some(response)
    }

    fn add_soa(&self, response: &mut Message, name: &Name) {
        if let Some(soa) = self
            .records
            .iter()
            .find(|r| r.record_type() == RecordType::SOA && r.name.zone_of(name))
        {
            response.add_authority(soa.clone());
        }
    }
}

/// Forged answers carrying 192.0.2.66: one with another id, one with the right id for
/// another question.
fn decoys(response: &Message) -> [Message; 2] {
    let mut forged = response.clone();
    for answer in &mut forged.answers {
        answer.data = RData::A(A::new(192, 0, 2, 66));
    }
    let mut wrong_id = forged.clone();
    wrong_id.metadata.id ^= 0x5555;
    let mut wrong_question = forged;
    if let Some(q) = wrong_question.queries.first_mut() {
        q.set_name(Name::from_ascii("decoy.example.").unwrap_or_else(|_| Name::root()));
    }
    [wrong_id, wrong_question]
}

/// The `"..."` strings of a TXT line (no escapes).
fn quoted_strings(data: &str) -> Vec<String> {
    data.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

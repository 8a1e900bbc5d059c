//! One DNS exchange: UDP with a random id from a random port, TCP when truncated, servers
//! tried in order for `attempts` rounds, each try bounded by the timeout.

use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Instant;

use async_io::{Async, Timer};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};

use super::{ResolverConfig, TempReason};

/// The largest UDP response read (RFC 6891 payloads go up to 65535 in theory).
const UDP_BUFFER: usize = 65_535;

/// Asks `query` of the configured servers until one gives a usable answer (NOERROR or
/// NXDOMAIN). Returns the last problem met when none does.
pub(super) async fn exchange(
    config: &ResolverConfig,
    query: &Query,
) -> Result<Message, TempReason> {
    if config.nameservers.is_empty() {
        return Err(TempReason::NoServers);
    }
    let mut last = TempReason::Timeout;
    for _round in 0..config.attempts.max(1) {
        for &server in &config.nameservers {
            let deadline = Instant::now() + config.timeout;
            match try_server(config, server, query, deadline).await {
                Ok(response) => match response.metadata.response_code {
                    ResponseCode::NoError | ResponseCode::NXDomain => return Ok(response),
                    code => last = TempReason::Server(code),
                },
                Err(reason) => last = reason,
            }
        }
    }
    Err(last)
}

/// One try on one server: UDP, then TCP if the answer is truncated.
async fn try_server(
    config: &ResolverConfig,
    server: SocketAddr,
    query: &Query,
    deadline: Instant,
) -> Result<Message, TempReason> {
    let response = with_deadline(deadline, udp(config, server, query)).await?;
    if !response.metadata.truncation {
        return Ok(response);
    }
    // RFC 7766 5: "a resolver SHOULD retry the query over TCP" on truncation, with a fresh
    // deadline: the UDP try did get an answer.
    let deadline = Instant::now() + config.timeout;
    with_deadline(deadline, tcp(config, server, query)).await
}

async fn with_deadline<T>(
    deadline: Instant,
    f: impl Future<Output = Result<T, TempReason>>,
) -> Result<T, TempReason> {
    future::or(f, async {
        Timer::at(deadline).await;
        Err(TempReason::Timeout)
    })
    .await
}

fn request(config: &ResolverConfig, id: u16, query: &Query) -> Result<Vec<u8>, TempReason> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(query.clone());
    if let Some(payload) = config.edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload.max(512));
        msg.set_edns(edns);
    }
    msg.to_vec().map_err(|_| TempReason::Malformed)
}

/// Whether `response` answers our `id` and `query` (RFC 5452 9.1: id, question, and, by the
/// connected socket, the server's address and port).
fn matches(response: &Message, id: u16, query: &Query) -> bool {
    response.metadata.id == id
        && response.metadata.message_type == MessageType::Response
        && response.queries.len() == 1
        && response.queries[0].name() == query.name()
        && response.queries[0].query_type() == query.query_type()
        && response.queries[0].query_class() == query.query_class()
}

/// A query id from the operating system's CSPRNG: RFC 5452 9.2 asks for ids an attacker
/// cannot predict, which a fast userspace generator (fastrand) does not promise.
fn random_id() -> Result<u16, TempReason> {
    let mut id = [0; 2];
    getrandom::fill(&mut id).map_err(|e| TempReason::Io(e.to_string()))?;
    Ok(u16::from_ne_bytes(id))
}

fn io_error(e: io::Error) -> TempReason {
    TempReason::Io(e.to_string())
}

async fn udp(
    config: &ResolverConfig,
    server: SocketAddr,
    query: &Query,
) -> Result<Message, TempReason> {
    let id = random_id()?;
    let bytes = request(config, id, query)?;
    // Port 0: the kernel picks a random ephemeral source port per query (RFC 5452 9.2).
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = Async::<UdpSocket>::bind(local).map_err(io_error)?;
    // Connected: the kernel drops datagrams from any other address, and reports ICMP
    // "port unreachable" as an error instead of letting us wait for the timeout.
    socket.get_ref().connect(server).map_err(io_error)?;
    socket.send(&bytes).await.map_err(io_error)?;
    let mut buf = vec![0; UDP_BUFFER];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io_error)?;
        // Spoofed, stale or garbled datagrams are ignored; the deadline bounds the wait.
        if let Ok(response) = Message::from_vec(&buf[..n])
            && matches(&response, id, query)
        {
            return Ok(response);
        }
    }
}

async fn tcp(
    config: &ResolverConfig,
    server: SocketAddr,
    query: &Query,
) -> Result<Message, TempReason> {
    let id = random_id()?;
    let bytes = request(config, id, query)?;
    let len = u16::try_from(bytes.len()).map_err(|_| TempReason::Malformed)?;
    let mut stream = Async::<TcpStream>::connect(server)
        .await
        .map_err(io_error)?;
    // RFC 1035 4.2.2: each message is prefixed with a two byte length field.
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(io_error)?;
    let mut buf = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.map_err(io_error)?;
    let response = Message::from_vec(&buf).map_err(|_| TempReason::Malformed)?;
    if !matches(&response, id, query) {
        return Err(TempReason::Malformed);
    }
    Ok(response)
}

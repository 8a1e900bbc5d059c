//! Fetching `https://mta-sts.<domain>/.well-known/mta-sts.txt` ([RFC 8461 section 3.3]).
//!
//! The host's addresses come from our [`Resolver`] (A and AAAA, tried in that order until a
//! TCP connection opens), the TLS session from futures-rustls (ring provider, the web PKI
//! roots of `webpki-roots` plus the operator's extra roots, SNI and certificate name = the
//! host), the HTTP/1.1 exchange is one `GET` with `Connection: close`, and the response is
//! parsed by `httparse`. Accepted: status 200 with media type `text/plain` (parameters
//! ignored) and a body of at most [`MAX_BODY`] bytes, framed by `Content-Length`, chunked
//! transfer coding or the end of the TLS session (which must then end with close_notify, so
//! a cut connection is not taken for a short policy). Everything else fails the fetch,
//! including every 3xx: "HTTP 3xx redirects MUST NOT be followed" (3.3). No HTTP cache is
//! used ("HTTP caching ... MUST NOT be used", 3.3): each fetch is a new request.
//!
//! [RFC 8461 section 3.3]: https://www.rfc-editor.org/rfc/rfc8461#section-3.3

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;

use async_io::Async;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use futures_rustls::TlsConnector;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use crate::dns::{DnsError, Resolver};

/// The largest policy body accepted (RFC 8461 3.3 leaves the limit to the sender; 64 KiB is
/// far above any real policy).
pub const MAX_BODY: usize = 64 * 1024;
/// The largest response head (status line and header fields) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Header fields parsed at most.
const MAX_HEADERS: usize = 64;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// Why a policy could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The policy host's addresses could not be looked up.
    #[error("looking up {host}: {error}")]
    Dns {
        /// `mta-sts.<domain>`.
        host: String,
        /// The resolver's answer (boxed: a DNS error is large).
        error: Box<DnsError>,
    },
    /// The host name is not a valid TLS server name.
    #[error("{0:?} is not a valid server name")]
    BadName(String),
    /// No address accepted a TCP connection.
    #[error("cannot connect to {host}: {reason}")]
    Connect {
        /// `mta-sts.<domain>`.
        host: String,
        /// The last connection error.
        reason: String,
    },
    /// The TLS handshake failed (an untrusted or mismatched certificate, among others).
    #[error("TLS with {host} failed: {reason}")]
    Tls {
        /// `mta-sts.<domain>`.
        host: String,
        /// rustls' reason.
        reason: String,
    },
    /// Reading or writing the connection failed, or it ended too early.
    #[error("connection error: {0}")]
    Io(String),
    /// The response is not valid HTTP/1.x.
    #[error("malformed HTTP response: {0}")]
    Http(String),
    /// The status is not 200 (redirects included).
    #[error("HTTP status {0}, want 200")]
    Status(u16),
    /// The media type is not `text/plain` (or missing).
    #[error("content type {0:?}, want text/plain")]
    ContentType(String),
    /// The response head or body is over its limit.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// The whole fetch took longer than its timeout.
    #[error("no complete answer in time")]
    Timeout,
}

/// Everything a fetch needs, cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Fetcher {
    pub(super) resolver: Arc<Resolver>,
    pub(super) tls: Arc<ClientConfig>,
    pub(super) port: u16,
}

impl Fetcher {
    /// Fetches the policy body of `domain` (already checked and lower case). The caller bounds
    /// the time.
    pub(super) async fn fetch(&self, domain: &str) -> Result<Vec<u8>, FetchError> {
        let host = format!("mta-sts.{domain}");
        let name =
            ServerName::try_from(host.clone()).map_err(|_| FetchError::BadName(host.clone()))?;
        let stream = self.connect(&host).await?;
        let mut tls = TlsConnector::from(self.tls.clone())
            .connect(name, stream)
            .await
            .map_err(|e| FetchError::Tls {
                host: host.clone(),
                reason: e.to_string(),
            })?;
        let authority = if self.port == 443 {
            host.clone()
        } else {
            format!("{host}:{}", self.port)
        };
        let request = format!(
            "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {authority}\r\n\
             User-Agent: postern\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        tls.flush()
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        read_response(tls).await
    }

    /// A TCP connection to the first address of `host` that takes one.
    async fn connect(&self, host: &str) -> Result<Async<TcpStream>, FetchError> {
        let (v4, v6) =
            futures_lite::future::zip(self.resolver.a(host), self.resolver.aaaa(host)).await;
        let mut addresses: Vec<IpAddr> = Vec::new();
        let mut dns_error = None;
        match v4 {
            Ok(list) => addresses.extend(list.into_iter().map(IpAddr::V4)),
            Err(e) => dns_error = Some(e),
        }
        match v6 {
            Ok(list) => addresses.extend(list.into_iter().map(IpAddr::V6)),
            Err(e) => dns_error = dns_error.or(Some(e)),
        }
        if addresses.is_empty() {
            let error = dns_error.unwrap_or_else(|| DnsError::InvalidName(host.to_string()));
            return Err(FetchError::Dns {
                host: host.to_string(),
                error: Box::new(error),
            });
        }
        let mut last = String::new();
        for ip in addresses {
            match Async::<TcpStream>::connect(SocketAddr::new(ip, self.port)).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = format!("{ip}: {e}"),
            }
        }
        Err(FetchError::Connect {
            host: host.to_string(),
            reason: last,
        })
    }
}

/// Bytes read so far from the response, read on demand.
struct Incoming<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + Unpin> Incoming<S> {
    /// Reads more into `buf`; `Ok(false)` at a clean end of the stream.
    async fn more(&mut self) -> Result<bool, FetchError> {
        let mut chunk = [0; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) => Err(FetchError::Io(e.to_string())),
        }
    }

    /// Reads until `buf` holds at least `n` bytes; fails if the stream ends first.
    async fn fill(&mut self, n: usize) -> Result<(), FetchError> {
        while self.buf.len() < n {
            if !self.more().await? {
                return Err(FetchError::Io("the response ends early".into()));
            }
        }
        Ok(())
    }
}

/// How the body's end is known (RFC 9112 6.3).
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// Reads and checks the response; returns its body.
async fn read_response<S: AsyncRead + Unpin>(stream: S) -> Result<Vec<u8>, FetchError> {
    let mut incoming = Incoming {
        stream,
        buf: Vec::new(),
    };
    // The head: parse what has arrived, read more while it is incomplete.
    let (head_len, framing) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let window = &incoming.buf[..incoming.buf.len().min(MAX_HEAD)];
        match response.parse(window) {
            Ok(httparse::Status::Complete(n)) => break (n, check_head(&response)?),
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(FetchError::Http(e.to_string())),
        }
        if incoming.buf.len() >= MAX_HEAD {
            return Err(FetchError::TooLarge(MAX_HEAD));
        }
        if !incoming.more().await? {
            return Err(FetchError::Http(
                "the connection ends inside the head".into(),
            ));
        }
    };
    incoming.buf.drain(..head_len);
    match framing {
        Framing::Length(n) => {
            if n > MAX_BODY {
                return Err(FetchError::TooLarge(MAX_BODY));
            }
            incoming.fill(n).await?;
            incoming.buf.truncate(n);
            Ok(incoming.buf)
        }
        Framing::Close => {
            while incoming.more().await? {
                if incoming.buf.len() > MAX_BODY {
                    return Err(FetchError::TooLarge(MAX_BODY));
                }
            }
            Ok(incoming.buf)
        }
        Framing::Chunked => read_chunked(incoming).await,
    }
}

/// Checks the status and media type, and tells how the body is framed.
fn check_head(response: &httparse::Response<'_, '_>) -> Result<Framing, FetchError> {
    let code = response.code.unwrap_or(0);
    // RFC 8461 3.3: "Policies fetched via HTTPS are only valid if the HTTP response code is
    // 200 (OK)." 1xx interim answers are not expected (we send no Expect) and fail too.
    if code != 200 {
        return Err(FetchError::Status(code));
    }
    // RFC 8461 3.2: "senders SHOULD validate that the media type is "text/plain"";
    // "Additional "Content-Type" parameters are ignored."
    let content_type: Vec<String> = fields(response, "content-type").collect();
    let media = match content_type.as_slice() {
        [one] => one.split(';').next().unwrap_or("").trim().to_string(),
        [] => String::new(),
        _ => content_type.join(", "),
    };
    if !media.eq_ignore_ascii_case("text/plain") {
        return Err(FetchError::ContentType(media));
    }
    // RFC 9112 6.3: Transfer-Encoding wins over Content-Length; chunked must be the last
    // coding, and any other coding (gzip...) we do not decode.
    let codings: Vec<String> = fields(response, "transfer-encoding")
        .flat_map(|v| {
            v.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    if !codings.is_empty() {
        return if codings.iter().map(String::as_str).eq(["chunked"]) {
            Ok(Framing::Chunked)
        } else {
            Err(FetchError::Http(format!(
                "unsupported transfer coding {}",
                codings.join(", ")
            )))
        };
    }
    let lengths: Vec<String> = fields(response, "content-length").collect();
    match lengths.split_first() {
        None => Ok(Framing::Close),
        Some((first, rest)) => {
            if rest.iter().any(|l| l != first) || first.is_empty() {
                return Err(FetchError::Http("conflicting Content-Length".into()));
            }
            if !first.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FetchError::Http(format!("Content-Length {first:?}")));
            }
            // Too many digits to parse is too large anyway.
            first
                .parse::<usize>()
                .map(Framing::Length)
                .map_err(|_| FetchError::TooLarge(MAX_BODY))
        }
    }
}

/// The values of the header fields called `name`, trimmed.
fn fields<'a>(
    response: &'a httparse::Response<'_, '_>,
    name: &'a str,
) -> impl Iterator<Item = String> + 'a {
    response
        .headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
}

/// Decodes a chunked body (RFC 9112 7.1), chunk sizes parsed by httparse. Trailer fields
/// after the last chunk are not read: the body is complete by then.
async fn read_chunked<S: AsyncRead + Unpin>(
    mut incoming: Incoming<S>,
) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
    loop {
        let (line_len, size) = loop {
            match httparse::parse_chunk_size(&incoming.buf) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(FetchError::Http("bad chunk size line".into())),
            }
            if incoming.buf.len() > MAX_CHUNK_LINE {
                return Err(FetchError::Http("chunk size line too long".into()));
            }
            if !incoming.more().await? {
                return Err(FetchError::Io("the response ends inside a chunk".into()));
            }
        };
        if size == 0 {
            return Ok(body);
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > MAX_BODY - body.len() {
            return Err(FetchError::TooLarge(MAX_BODY));
        }
        incoming.fill(line_len + size + 2).await?;
        let data_end = line_len + size;
        if &incoming.buf[data_end..data_end + 2] != b"\r\n" {
            return Err(FetchError::Http("chunk not followed by CRLF".into()));
        }
        body.extend_from_slice(&incoming.buf[line_len..data_end]);
        incoming.buf.drain(..data_end + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(response: &[u8]) -> Result<Vec<u8>, FetchError> {
        smol::block_on(read_response(futures_lite::io::Cursor::new(
            response.to_vec(),
        )))
    }

    #[test]
    fn responses() {
        let ok = b"version: STSv1\n".to_vec();
        let big = "x".repeat(MAX_BODY + 1);
        let chunked_big = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            MAX_BODY,
            "y".repeat(MAX_BODY),
            1,
            "z"
        );
        let close_big = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{big}");
        let length_big = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        );
        let chunk_line_big = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n1;{}",
            "x".repeat(MAX_CHUNK_LINE)
        );
        let head_big = format!(
            "HTTP/1.1 200 OK\r\nX-Filler: {}\r\n\r\n",
            "f".repeat(MAX_HEAD)
        );
        type Case<'a> = (&'a [u8], Result<Vec<u8>, FetchError>);
        let cases: Vec<Case<'_>> = vec![
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\nversion: STSv1\nEXTRA",
                Ok(ok.clone()),
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-type: Text/Plain; charset=utf-8\r\n\r\nversion: STSv1\n",
                Ok(ok.clone()),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n8;ext=1\r\nversion:\r\n7\r\n STSv1\n\r\n0\r\n\r\n",
                Ok(ok.clone()),
            ),
            (
                b"HTTP/1.0 200 OK\nContent-Type: text/plain\n\nversion: STSv1\n",
                Ok(ok.clone()),
            ),
            (
                b"HTTP/1.1 301 Moved\r\nLocation: https://elsewhere/\r\nContent-Type: text/plain\r\n\r\n",
                Err(FetchError::Status(301)),
            ),
            (
                b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\n",
                Err(FetchError::Status(404)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nversion: STSv1\n",
                Err(FetchError::ContentType("text/html".into())),
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\nversion: STSv1\n",
                Err(FetchError::ContentType(String::new())),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\r\nshort",
                Err(FetchError::Io("the response ends early".into())),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nshort",
                Err(FetchError::Http("conflicting Content-Length".into())),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: gzip\r\n\r\n",
                Err(FetchError::Http("unsupported transfer coding gzip".into())),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                Err(FetchError::TooLarge(MAX_BODY)),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                Err(FetchError::Http("bad chunk size line".into())),
            ),
            (close_big.as_bytes(), Err(FetchError::TooLarge(MAX_BODY))),
            (length_big.as_bytes(), Err(FetchError::TooLarge(MAX_BODY))),
            (chunked_big.as_bytes(), Err(FetchError::TooLarge(MAX_BODY))),
            (head_big.as_bytes(), Err(FetchError::TooLarge(MAX_HEAD))),
            (
                chunk_line_big.as_bytes(),
                Err(FetchError::Http("chunk size line too long".into())),
            ),
            (b"SMTP/1.1 200 OK\r\n\r\n", Err(FetchError::Http("invalid HTTP version".into()))),
            (b"HTTP/1.1 200 OK\r\nContent-", Err(FetchError::Http("the connection ends inside the head".into()))),
        ];
        for (input, want) in cases {
            let got = read(input);
            assert_eq!(got, want, "response {:?}", String::from_utf8_lossy(input));
        }
    }
}

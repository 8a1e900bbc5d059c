//! `postern send-test --from ADDRESS --to ADDRESS`: a test message through the running
//! server, the way a user's mail program sends one, then followed to its end.
//!
//! It asks the server where it listens (control socket, `status`) and logs in on its
//! submission listener (STARTTLS; else submissions, implicit TLS; a wildcard address is
//! reached on loopback) as the `--from` user, asking for
//! the password on the terminal or reading it with `--password-stdin`, and submits a short
//! message. It prints the server's answer, then follows the message through the control
//! socket: each log line of it as it comes (`deferred`, `delivered ... relay=... tls=...
//! cert=... reply="..."`, `failed`, `dsn`), until it leaves the queue or `--wait` seconds
//! pass. Exit status 0 when every recipient was delivered.
//!
//! `--check-auth` then reads the copy delivered into a local Maildir and checks it the way a
//! receiver would (SPF of the sender for this server's address: `--ip`, else the hostname's
//! A and AAAA records; DKIM; DMARC; all through `[dns]`), printing the `Received-SPF` and
//! `Authentication-Results` fields it would add. Exit status 1 when DMARC would not pass.

use futures_lite::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use futures_lite::future;
use proto_core::client::{
    ClientConfig, ClientCredentials, ClientSession, MailJob, RecipientStatus, TlsPolicy,
};
use proto_core::{ForwardPath, ReversePath};
use runtime_smol::client::{ClientTls, deliver};

use crate::cli::SendTest;
use crate::config::{ConfigError, Role};
use crate::daemon::control;

/// What `send-test` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SendTestError {
    /// postern.toml does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An address does not parse.
    #[error("{0:?} is not an address: {1}")]
    Address(String, String),
    /// No submission listener.
    #[error("the server has no submission or submissions listener to send through")]
    NoListener,
    /// The password could not be read.
    #[error(transparent)]
    Password(#[from] crate::cli::user::UserCmdError),
    /// The submission did not go through.
    #[error("not submitted: {0}")]
    Submit(String),
    /// The message did not reach every recipient.
    #[error("{0}")]
    NotDelivered(String),
    /// The control socket could not be reached.
    #[error(transparent)]
    Ask(#[from] control::AskError),
    /// `--check-auth` could not check, or DMARC would not pass.
    #[error("{0}")]
    AuthCheck(String),
}

/// Runs `postern send-test` against the configuration directory `dir`.
pub fn run(dir: &Path, c: SendTest) -> Result<(), SendTestError> {
    let settings = crate::cli::settings_or_defaults(dir)?;
    let from = proto_core::Mailbox::parse(&c.from)
        .map_err(|e| SendTestError::Address(c.from.clone(), e.to_string()))?;
    let to: Vec<proto_core::Mailbox> =
        c.to.iter()
            .map(|t| {
                proto_core::Mailbox::parse(t)
                    .map_err(|e| SendTestError::Address(t.clone(), e.to_string()))
            })
            .collect::<Result<_, _>>()?;
    // Where the server really listens (a port 0 in postern.toml is the kernel's choice, and
    // socket activation replaces [listeners]); its status says.
    let answer = control::ask(&settings.data_dir, "status")?;
    let status: control::Status = serde_json::from_str(answer.trim())
        .map_err(|_| SendTestError::Submit(format!("the server answered {}", answer.trim())))?;
    let listening: Vec<(Role, SocketAddr)> = status
        .listeners
        .iter()
        .filter_map(|(role, addr)| {
            let role = [Role::Submission, Role::Submissions]
                .into_iter()
                .find(|r| r.name() == role)?;
            Some((role, addr.parse().ok()?))
        })
        .collect();
    let (role, addr) = listening
        .iter()
        .find(|(r, _)| *r == Role::Submission)
        .or_else(|| listening.first())
        .map(|(r, a)| (*r, reachable(*a)))
        .ok_or(SendTestError::NoListener)?;
    let password = crate::cli::user::read_password(c.password_stdin, "Password: ", "send-test")?;
    println!("submitting to {addr} ({}) as {from}", role.name());

    let now = SystemTime::now();
    let date = crate::reception::trace::rfc5322_date(now);
    let recipients: Vec<String> = to.iter().map(ToString::to_string).collect();
    let message = format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: postern send-test {date}\r\n\r\n\
         This message was sent by `postern send-test` to check that mail from {from}\r\n\
         reaches its recipients.\r\n",
        recipients
            .iter()
            .map(|r| format!("<{r}>"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut job = MailJob::new(
        ReversePath::Mailbox(from.clone()),
        to.iter().cloned().map(ForwardPath::Mailbox),
    );
    job.size = Some(message.len() as u64);
    let mut config = ClientConfig::new("send-test.localhost");
    config.tls = match role {
        Role::Submissions => TlsPolicy::Never,
        _ => TlsPolicy::Required,
    };
    config.auth = Some(ClientCredentials::new(from.to_string(), password));
    let factory = crate::tls::client::ClientTlsFactory::new(&[])
        .map_err(|e| SendTestError::Submit(e.to_string()))?;
    // Our own server, usually on loopback: any certificate is taken (and said whether it
    // verified).
    let connector = factory.lenient();
    let server_name = crate::tls::client::server_name(&settings.hostname)
        .ok_or_else(|| SendTestError::Submit(format!("{} is not a TLS name", settings.hostname)))?;
    let tls = ClientTls {
        connector: connector.connector.clone(),
        server_name: server_name.clone(),
        handshake_timeout: Duration::from_secs(30),
    };
    let mut session = ClientSession::new(std::sync::Arc::new(config), job, Instant::now());
    let mut bodies =
        move |_job: usize| -> std::io::Result<_> { Ok(Cursor::new(message.clone().into_bytes())) };
    let report = smol::block_on(async {
        let stream = async_io::Async::<std::net::TcpStream>::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let run = async {
            if role == Role::Submissions {
                let tls_stream = connector
                    .connector
                    .connect(server_name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                deliver(tls_stream, &mut session, None, &mut bodies)
                    .await
                    .map_err(|e| e.to_string())
            } else {
                deliver(stream, &mut session, Some(&tls), &mut bodies)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let limit = async {
            async_io::Timer::after(Duration::from_secs(120)).await;
            Err("no answer within 120 s".to_string())
        };
        future::or(run, limit).await
    })
    .map_err(SendTestError::Submit)?;
    let outcome = report
        .outcomes
        .into_iter()
        .next()
        .ok_or_else(|| SendTestError::Submit("the session ended without a result".into()))?;
    let mut id = None;
    for r in &outcome.recipients {
        match &r.status {
            RecipientStatus::Accepted(reply) => {
                let text = reply.to_string();
                println!("{}: {}", r.to, text.trim_end());
                id = text
                    .split("queued as ")
                    .nth(1)
                    .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string());
            }
            RecipientStatus::TemporaryFailure(why) | RecipientStatus::PermanentFailure(why) => {
                return Err(SendTestError::Submit(format!("{}: {why}", r.to)));
            }
            _ => return Err(SendTestError::Submit(format!("{}: no result", r.to))),
        }
    }
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        return Err(SendTestError::Submit("the server gave no queue id".into()));
    };
    println!("following {id} (at most {} s):", c.wait);
    let lines = follow(&settings.data_dir, &id, Duration::from_secs(c.wait))?;
    if c.check_auth {
        check_auth(&settings, &from, &lines, &c.ip)?;
    }
    Ok(())
}

/// The authserv-id of the results `--check-auth` prints: not ours, since they are what
/// another receiver would write.
const RECEIVER: &str = "receiver.example";

/// `--check-auth`: the copy delivered into a Maildir, checked as a receiver would check it
/// had this server sent it from each of `given` (else the hostname's addresses).
fn check_auth(
    settings: &crate::config::Settings,
    from: &proto_core::Mailbox,
    lines: &[String],
    given: &[IpAddr],
) -> Result<(), SendTestError> {
    let path = lines
        .iter()
        .filter(|l| l.contains(" delivered id="))
        .find_map(|l| crate::log::value(l, "path").map(str::to_string))
        .ok_or_else(|| {
            SendTestError::AuthCheck(
                "--check-auth needs a copy delivered into a Maildir of this server: send to \
                 one of its users"
                    .into(),
            )
        })?;
    let copy = std::fs::read(&path).map_err(|e| {
        SendTestError::AuthCheck(format!("cannot read the delivered copy {path}: {e}"))
    })?;
    let config = crate::dns::ResolverConfig::for_server(settings)
        .map_err(|e| SendTestError::AuthCheck(format!("cannot read the DNS configuration: {e}")))?;
    let resolver = std::sync::Arc::new(crate::dns::Resolver::new(config));
    let host = settings.hostname.clone();
    let inbound = crate::mailauth::Inbound::new(
        settings.dir.clone(),
        settings.checks.clone(),
        RECEIVER.into(),
        resolver.clone(),
    );
    let sender = from.to_string();
    let failing = smol::block_on(async {
        let mut ips = given.to_vec();
        if ips.is_empty() {
            if let Ok(v4) = resolver.a(&host).await {
                ips.extend(v4.into_iter().map(IpAddr::V4));
            }
            if let Ok(v6) = resolver.aaaa(&host).await {
                ips.extend(v6.into_iter().map(IpAddr::V6));
            }
        }
        if ips.is_empty() {
            return Err(SendTestError::AuthCheck(format!(
                "{host} has no A or AAAA record: give this server's public address with --ip"
            )));
        }
        let mut failing = Vec::new();
        for ip in ips {
            let (spf, _) = inbound.spf(ip, &host, &sender).await;
            let mut verifier = crate::mailauth::verify::Verifier::default();
            verifier.update(&copy);
            let report = inbound.check_message(verifier, &spf, None).await;
            println!("as a receiver would see it, sent from {ip} (HELO {host}):");
            for header in report.headers.split_inclusive("\r\n") {
                print!("  {}", header.replace("\r\n", "\n"));
            }
            if !report.summary.contains(" dmarc=pass") {
                failing.push(format!("{ip}: {}", report.summary));
            }
        }
        Ok(failing)
    })?;
    if failing.is_empty() {
        println!("DMARC passes");
        Ok(())
    } else {
        Err(SendTestError::AuthCheck(format!(
            "DMARC would not pass ({}): `postern doctor` says which record to fix",
            failing.join("; ")
        )))
    }
}

/// Prints the message's log lines as they come, until it leaves the queue. Returns them.
fn follow(data_dir: &Path, id: &str, wait: Duration) -> Result<Vec<String>, SendTestError> {
    let deadline = Instant::now() + wait;
    let mut shown = 0;
    loop {
        let answer = control::ask(data_dir, &format!("queue-history {id}"))?;
        let lines: Vec<String> = serde_json::from_str::<serde_json::Value>(answer.trim())
            .ok()
            .and_then(|v| v["lines"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|l| l.as_str().map(str::to_string))
            .collect();
        for line in &lines[shown.min(lines.len())..] {
            println!("  {line}");
        }
        shown = lines.len();
        if lines.iter().any(|l| l.contains(" removed id=")) {
            let failed = lines.iter().filter(|l| l.contains(" failed id=")).count();
            let delivered = lines
                .iter()
                .filter(|l| l.contains(" delivered id="))
                .count();
            return if failed > 0 {
                Err(SendTestError::NotDelivered(format!(
                    "{failed} recipient(s) failed; the sender gets a DSN"
                )))
            } else if delivered == 0 {
                Err(SendTestError::NotDelivered(
                    "removed from the queue without a delivery (postern queue remove?)".into(),
                ))
            } else {
                println!("delivered");
                Ok(lines)
            };
        }
        if Instant::now() >= deadline {
            return Err(SendTestError::NotDelivered(format!(
                "still queued after {} s: `postern queue show {id}` says where it stands",
                wait.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The address to connect to for a listener: a wildcard is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

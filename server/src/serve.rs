//! `postern serve`: set up, listen, accept, and stop on SIGTERM or SIGINT.
//!
//! Startup checks everything it can before accepting the first connection (configuration,
//! certificate, data directory, every listener's address) and refuses to start with a
//! [`ConfigError`] otherwise. Each listener has a role ([`Role`]) that sets the session's
//! configuration; each connection runs as its own task on smol's executor.
//!
//! Certificates are reloaded without a restart: `certs/` is polled every
//! `tls_reload_interval` (sizes, modification times and symlink targets), and SIGHUP reloads
//! too. New handshakes get the new certificates; established connections keep theirs. A broken
//! new file keeps the old certificates and logs the file and the reason.
//!
//! Connections are limited in total (`max_connections`) and per client IP address
//! (`max_connections_per_ip`); one over a limit is answered `421 4.7.0 <host> Too many
//! connections, try later` and closed (on the implicit-TLS port, closed: a plaintext reply
//! would be noise to a TLS client).
//!
//! On SIGTERM or SIGINT the listeners close at once, so no new connection is accepted; the
//! connections already open get `shutdown_grace` to finish, then the process exits. Nothing
//! acknowledged can be lost: a 250 is only sent once every copy is fsynced, and a transaction
//! cut off by the exit was never acknowledged (the client retries). (Configuration reloads and
//! systemd socket activation are later steps.)

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use async_signal::{Signal, Signals};
use futures_lite::io::AsyncWriteExt;
use futures_lite::{StreamExt, future};
use proto_core::{AuthPolicy, Config};
use runtime_smol::{Connection, TlsAcceptor, TlsMode};

use crate::config::{ConfigError, Listener, Role, Settings};
use crate::init;
use crate::limits::{ConnectionCounter, Permit};
use crate::log;
use crate::queue;
use crate::reception::{Reception, Shared};
use crate::recipients::Recipients;
use crate::tls::{self, Certificates, Snapshot};

/// A problem that stops `serve`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Something in the configuration, with its fix.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs the server from the configuration directory `dir` until SIGTERM or SIGINT.
pub fn serve(dir: &std::path::Path) -> Result<(), ServeError> {
    if init::create_default(dir)? {
        println!(
            "postern: created the default configuration in {} (postern.toml, a self-signed certificate, domains/localhost/)",
            dir.display()
        );
    }
    let settings = Settings::load(dir)?;
    let certs_snapshot = Snapshot::take(&settings.certs_dir());
    let store = tls::load(&settings)?;
    log::event("tls", format_args!("loaded {}", store.summary()));
    let certificates = Certificates::new(store);
    let acceptor = TlsAcceptor::from(certificates.server_config()?);

    std::fs::create_dir_all(settings.mail_dir()).map_err(|e| {
        settings.data_dir_error(format!(
            "cannot create {}: {e}",
            settings.mail_dir().display()
        ))
    })?;
    let leftovers = queue::prepare(&settings.spool_dir()).map_err(|e| {
        settings.data_dir_error(format!(
            "cannot prepare {}: {e}",
            settings.spool_dir().display()
        ))
    })?;
    if leftovers > 0 {
        log::event(
            "startup",
            format_args!("removed {leftovers} unacknowledged partial bodies from the spool"),
        );
    }

    let shared = Arc::new(Shared {
        hostname: settings.hostname.clone(),
        recipients: Recipients::new(
            settings.domains_dir(),
            settings.mail_dir(),
            settings.hostname.clone(),
        ),
        mail_dir: settings.mail_dir(),
        spool_dir: settings.spool_dir(),
    });

    let mut bound = Vec::new();
    for listener in &settings.listeners {
        let socket = bind(&settings, listener)?;
        let local = socket.get_ref().local_addr().unwrap_or(listener.addr);
        bound.push((listener.role, local, socket));
    }
    // Install the handlers before announcing, so a supervisor's early SIGTERM is handled.
    let mut signals =
        Signals::new([Signal::Term, Signal::Int, Signal::Hup]).map_err(ServeError::Signals)?;

    println!(
        "postern: {} serving; configuration {}, data {}",
        settings.hostname,
        settings.file.display(),
        settings.data_dir.display()
    );
    for (role, local, _) in &bound {
        println!("postern: listening on {local} ({})", role.name());
    }

    smol::block_on(async {
        let watcher = settings.tls_reload_interval.map(|interval| {
            smol::spawn(watch_certs(
                settings.clone(),
                certificates.clone(),
                certs_snapshot,
                interval,
            ))
        });
        let counter = ConnectionCounter::new();
        let tasks: Vec<_> = bound
            .into_iter()
            .map(|(role, _, socket)| {
                let connection = Arc::new(Connection::new(
                    Arc::new(session_config(&settings, role)),
                    tls_mode(role, &acceptor),
                ));
                smol::spawn(accept_loop(
                    socket,
                    role,
                    connection,
                    shared.clone(),
                    Admission {
                        counter: counter.clone(),
                        max_total: settings.max_connections,
                        max_per_ip: settings.max_connections_per_ip,
                    },
                ))
            })
            .collect();
        let name = loop {
            match signals.next().await {
                Some(Ok(Signal::Hup)) => {
                    log::event("reload", format_args!("SIGHUP received"));
                    reload_certs(&settings, &certificates);
                }
                Some(Ok(Signal::Int)) => break "SIGINT",
                _ => break "SIGTERM",
            }
        };
        if let Some(watcher) = watcher {
            watcher.cancel().await;
        }
        println!("postern: {name} received, stopping");
        // Cancelling the accept loops drops, and so closes, the listening sockets.
        for task in tasks {
            task.cancel().await;
        }
        drain(&counter, settings.shutdown_grace).await;
    });
    Ok(())
}

/// Waits until every connection is closed, or `grace` has passed.
async fn drain(counter: &ConnectionCounter, grace: Duration) {
    let deadline = Instant::now() + grace;
    let open = counter.open();
    if open > 0 {
        log::event(
            "shutdown",
            format_args!(
                "waiting up to {} s for {open} open connections",
                grace.as_secs()
            ),
        );
    }
    loop {
        let open = counter.open();
        if open == 0 {
            log::event("shutdown", format_args!("all connections closed"));
            return;
        }
        if Instant::now() >= deadline {
            log::event(
                "shutdown",
                format_args!("shutdown_grace over; closing {open} connections"),
            );
            return;
        }
        Timer::after(Duration::from_millis(50)).await;
    }
}

/// Polls `certs/` every `interval` and reloads the certificates when anything there changed.
async fn watch_certs(
    settings: Settings,
    certificates: Arc<Certificates>,
    mut last: Snapshot,
    interval: Duration,
) {
    let dir: PathBuf = settings.certs_dir();
    loop {
        Timer::after(interval).await;
        let now = Snapshot::take(&dir);
        if now != last {
            last = now;
            reload_certs(&settings, &certificates);
        }
    }
}

/// Loads `certs/` again and serves the result to new handshakes, or keeps the current
/// certificates and says why.
fn reload_certs(settings: &Settings, certificates: &Certificates) {
    match tls::load(settings) {
        Ok(store) => {
            log::event("tls", format_args!("reloaded {}", store.summary()));
            certificates.replace(store);
        }
        Err(e) => log::event(
            "tls",
            format_args!(
                "reload failed, keeping the current certificates: {}",
                e.to_string().replace('\n', " ")
            ),
        ),
    }
}

/// Binds one listener, or explains why not, pointing at its line.
fn bind(settings: &Settings, listener: &Listener) -> Result<Async<TcpListener>, ConfigError> {
    let error = |e: std::io::Error| {
        let fix = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "stop the program using it, or listen elsewhere".to_string()
            }
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need root or CAP_NET_BIND_SERVICE; or use a port above 1024"
                    .to_string()
            }
            std::io::ErrorKind::AddrNotAvailable => "use an address of this machine".to_string(),
            _ => "listen on another address".to_string(),
        };
        ConfigError {
            file: settings.file.clone(),
            line: Some(listener.line),
            message: format!(
                "cannot listen on {} ({}): {e}",
                listener.addr,
                listener.role.name()
            ),
            fix,
        }
    };
    let socket = TcpListener::bind(listener.addr).map_err(error)?;
    Async::new(socket).map_err(error)
}

/// The session configuration for a role.
fn session_config(settings: &Settings, role: Role) -> Config {
    let mut config = Config::new(settings.hostname.clone());
    config.limits.max_message_size = settings.max_message_size;
    config.extensions.starttls = role != Role::Submissions;
    config.auth = AuthPolicy::TlsOnly;
    config.require_auth = role.requires_auth();
    config
}

/// How a role uses TLS.
fn tls_mode(role: Role, acceptor: &TlsAcceptor) -> TlsMode {
    match role {
        Role::Smtp | Role::Submission => TlsMode::StartTls(acceptor.clone()),
        Role::Submissions => TlsMode::Implicit(acceptor.clone()),
    }
}

/// The limits a listener applies to new connections.
#[derive(Debug, Clone)]
struct Admission {
    counter: Arc<ConnectionCounter>,
    max_total: usize,
    max_per_ip: usize,
}

/// Accepts connections forever, one task each.
async fn accept_loop(
    socket: Async<TcpListener>,
    role: Role,
    connection: Arc<Connection>,
    shared: Arc<Shared>,
    admission: Admission,
) {
    loop {
        match socket.accept().await {
            Ok((stream, peer)) => {
                let permit = match admission.counter.admit(
                    peer.ip(),
                    admission.max_total,
                    admission.max_per_ip,
                ) {
                    Ok(permit) => permit,
                    Err(refusal) => {
                        log::event(
                            "connection",
                            format_args!(
                                "refused client={} role={} limit={}",
                                peer.ip().to_canonical(),
                                role.name(),
                                refusal.key()
                            ),
                        );
                        smol::spawn(too_many(stream, role, shared.hostname.clone())).detach();
                        continue;
                    }
                };
                let connection = connection.clone();
                let shared = shared.clone();
                smol::spawn(async move {
                    let _permit: Permit = permit;
                    let mut reception = Reception::new(shared, role);
                    if let Err(e) = connection.run_tcp(stream, &mut reception).await {
                        log_connection_error(peer, role, &e);
                    }
                })
                .detach();
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                log::event(
                    "connection",
                    format_args!("accept failed role={} error=\"{e}\"", role.name()),
                );
                Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers a connection over a limit with 421 and closes it. RFC 5321 section 3.1 lets a
/// server refuse a connection with 554 or 421 in place of the greeting; 421 says "try later".
/// The implicit-TLS port gets no plaintext reply, only the close.
async fn too_many(mut stream: Async<TcpStream>, role: Role, hostname: String) {
    if role != Role::Submissions {
        let reply = format!("421 4.7.0 {hostname} Too many connections, try later\r\n");
        let write = async {
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.flush().await;
        };
        let timeout = async {
            Timer::after(Duration::from_secs(5)).await;
        };
        future::or(write, timeout).await;
    }
}

fn log_connection_error(peer: SocketAddr, role: Role, e: &runtime_smol::Error) {
    log::event(
        "connection",
        format_args!(
            "client={} role={} error=\"{e}\"",
            peer.ip().to_canonical(),
            role.name()
        ),
    );
}

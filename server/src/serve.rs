//! `postern serve`: set up, listen, accept, and stop on SIGTERM or SIGINT.
//!
//! Startup checks everything it can before accepting the first connection (configuration,
//! certificate, data directory, every listener's address) and refuses to start with a
//! [`ConfigError`] otherwise. Each listener has a role ([`Role`]) that sets the session's
//! configuration; each connection runs as its own task on smol's executor.
//!
//! Before listening, the queue store at `<data_dir>/queue/` is opened (recovering from a crash
//! if needed), partial bodies of unacknowledged transactions are swept, the group committer
//! starts, and every message still queued goes to the delivery workers ([`crate::local`];
//! `POSTERN_DELIVERY_PAUSED=1` keeps them stopped, for tests).
//!
//! On SIGTERM or SIGINT the listeners close and the process exits, keeping the queue. Nothing
//! acknowledged can be lost: a 250 is only sent once the message is fsynced in the store.
//! (Waiting for transactions in flight,
//! SIGHUP reloads, connection limits and systemd socket activation are later steps.)

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use async_io::{Async, Timer};
use async_signal::{Signal, Signals};
use futures_lite::StreamExt;
use proto_core::{AuthPolicy, Config};
use runtime_smol::{Connection, TlsAcceptor, TlsMode};

use crate::commit::Committer;
use crate::config::{ConfigError, Listener, Role, Settings};
use crate::init;
use crate::local::{self, Local};
use crate::log;
use crate::queue::QueueId;
use crate::reception::{Reception, Shared};
use crate::recipients::Recipients;
use crate::store::Store;
use crate::tls;

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
    let tls_config = tls::load(&settings)?;
    let acceptor = TlsAcceptor::from(tls_config);

    std::fs::create_dir_all(settings.mail_dir()).map_err(|e| {
        settings.data_dir_error(format!(
            "cannot create {}: {e}",
            settings.mail_dir().display()
        ))
    })?;
    let (shared, local, local_ids) = open_queue(&settings)?;

    let mut bound = Vec::new();
    for listener in &settings.listeners {
        let socket = bind(&settings, listener)?;
        let local = socket.get_ref().local_addr().unwrap_or(listener.addr);
        bound.push((listener.role, local, socket));
    }
    // Install the handlers before announcing, so a supervisor's early SIGTERM is handled.
    let mut signals = Signals::new([Signal::Term, Signal::Int]).map_err(ServeError::Signals)?;

    println!(
        "postern: {} serving; configuration {}, data {}",
        settings.hostname,
        settings.file.display(),
        settings.data_dir.display()
    );
    for (role, local, _) in &bound {
        println!("postern: listening on {local} ({})", role.name());
    }

    let paused = local::paused();
    if paused {
        println!(
            "postern: delivery paused ({}=1): messages stay queued",
            local::PAUSE_VARIABLE
        );
    }

    smol::block_on(async {
        if !paused {
            local::start(local.clone(), local_ids.clone());
        }
        let tasks: Vec<_> = bound
            .into_iter()
            .map(|(role, _, socket)| {
                let connection = Arc::new(Connection::new(
                    Arc::new(session_config(&settings, role)),
                    tls_mode(role, &acceptor),
                ));
                smol::spawn(accept_loop(socket, role, connection, shared.clone()))
            })
            .collect();
        let signal = signals.next().await;
        let name = match signal {
            Some(Ok(Signal::Int)) => "SIGINT",
            _ => "SIGTERM",
        };
        println!("postern: {name} received, stopping");
        for task in tasks {
            task.cancel().await;
        }
    });
    // Deliveries still running are cut short: at worst a recipient is delivered again.
    let _ = shared.store.sync();
    Ok(())
}

/// What [`open_queue`] sets up: the sessions' share, the workers' share, and the ids to
/// deliver.
type Queue = (Arc<Shared>, Arc<Local>, async_channel::Receiver<QueueId>);

/// Opens the queue store, removes what unacknowledged transactions left, starts the
/// committer, and queues every message a previous run left for delivery.
fn open_queue(settings: &Settings) -> Result<Queue, ConfigError> {
    let dir = settings.queue_dir();
    let problem = |e: &dyn std::fmt::Display| {
        settings.data_dir_error(format!("cannot open the queue in {}: {e}", dir.display()))
    };
    let store = Store::open(&dir).map_err(|e| problem(&e))?;
    let swept = store.sweep().map_err(|e| problem(&e))?;
    if swept > 0 {
        log::event(
            "startup",
            format_args!("removed the partial bodies of {swept} unacknowledged messages"),
        );
    }
    let committer = Committer::start(store.clone()).map_err(|e| problem(&e))?;
    let (queue, ids) = async_channel::unbounded();
    let resumed = local::resume(&store, &queue).map_err(|e| problem(&e))?;
    if resumed > 0 {
        log::event(
            "startup",
            format_args!("{resumed} queued messages resume delivery"),
        );
    }
    let shared = Arc::new(Shared {
        recipients: Recipients::new(
            settings.domains_dir(),
            settings.mail_dir(),
            settings.hostname.clone(),
        ),
        store: store.clone(),
        committer: committer.clone(),
        queue: queue.clone(),
    });
    let local = Arc::new(Local {
        store,
        committer,
        mail_dir: settings.mail_dir(),
        hostname: settings.hostname.clone(),
        queue,
    });
    Ok((shared, local, ids))
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

/// Accepts connections forever, one task each.
async fn accept_loop(
    socket: Async<TcpListener>,
    role: Role,
    connection: Arc<Connection>,
    shared: Arc<Shared>,
) {
    loop {
        match socket.accept().await {
            Ok((stream, peer)) => {
                let connection = connection.clone();
                let shared = shared.clone();
                smol::spawn(async move {
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

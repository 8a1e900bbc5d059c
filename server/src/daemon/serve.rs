//! `postern serve`: set up, listen, accept, reload on SIGHUP, and stop on SIGTERM or SIGINT.
//!
//! Startup checks everything it can before accepting the first connection (configuration,
//! certificate, data directory, every listener's address) and refuses to start with a
//! [`ConfigError`] otherwise. Each listener has a role ([`Role`]) that sets the session's
//! configuration; each connection runs as its own task on smol's executor.
//!
//! Before listening, the queue store at `<data_dir>/queue/` is opened (recovering from a crash
//! if needed), partial bodies of unacknowledged transactions are swept, the group committer
//! starts, and every message still queued goes to the delivery workers ([`crate::deliver::local`];
//! `POSTERN_DELIVERY_PAUSED=1` keeps them stopped, for tests).
//!
//! Under systemd socket activation the listening sockets are the ones systemd passes, each
//! with its role, and `[listeners]` in `postern.toml` is not used; with `NOTIFY_SOCKET` set,
//! systemd is told when the server is ready and when it stops (see [`crate::daemon::systemd`]).
//!
//! SIGHUP reloads `postern.toml` and the certificates. What new connections use (limits,
//! timeouts, `max_message_size`, the host name, the local domains, certificates) takes effect
//! for connections accepted afterwards; open connections keep what they started with. What
//! cannot change while running (listeners, `data_dir`) is logged as "needs restart" and keeps
//! its old value. A configuration that fails to load, or that would leave the host name
//! without a certificate, is refused as a whole: the log names the file, the line and the
//! reason, and the old configuration keeps running.
//!
//! Certificates are also reloaded when `certs/` changes: it is polled every
//! `tls_reload_interval` (sizes, modification times and symlink targets). New handshakes get
//! the new certificates; established connections keep theirs. A broken new file keeps its
//! previous certificate and the log names the file and the reason (see [`crate::tls::certs`]).
//!
//! Connections are limited per kind of listener (`max_connections`, or `[listeners]
//! max_connections` per role: port 25 never takes the submission ports' slots) and per client
//! IP address (`max_connections_per_ip`, which loopback and trusted networks are exempt from;
//! see [`crate::daemon::limits`]); one over a limit is answered `421 4.7.0 <host> Too many
//! connections, try later` and closed (on the implicit-TLS port, closed: a plaintext reply
//! would be noise to a TLS client).
//!
//! On SIGTERM or SIGINT the listeners close at once, so no new connection is accepted; the
//! connections already open get `shutdown_grace` to finish (a second signal cuts the wait
//! short), then the process exits. Nothing acknowledged can be lost: a 250 is only sent once
//! every copy is fsynced, and a transaction cut off by the exit was never acknowledged (the
//! client retries). Sessions are told to finish (`Session::handle_shutdown`): an idle one is
//! answered `421 4.3.2` and closed at once, one inside a transaction finishes it first.
//!
//! SIGUSR1, SIGUSR2 and SIGALRM, whose default would end the process without a word, are
//! logged and ignored.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use async_signal::{Signal, Signals};
use futures_lite::io::AsyncWriteExt;
use futures_lite::{StreamExt, future};
use proto_core::{server::AuthPolicy, server::Config};
use runtime_smol::{Connection, Shutdown, TlsAcceptor, TlsMode};

use crate::config::init;
use crate::config::{ConfigError, HostName, Listener, Role, Settings};
use crate::daemon::control;
use crate::daemon::limits::{ConnectionCounter, PerIp, Permit};
use crate::daemon::systemd;
use crate::deliver::local::{self, Local};
use crate::deliver::smtp::{self, Outbound};
use crate::directory::aliases::Aliases;
use crate::directory::destinations;
use crate::directory::destinations::AliasCell;
use crate::directory::logins::Authenticator;
use crate::directory::recipients::Recipients;
use crate::directory::relay::Policy;
use crate::directory::users::UserDb;
use crate::dns::{Resolver, ResolverConfig};
use crate::log::{self, Event};
use crate::mailauth::Inbound;
use crate::queue::QueueId;
use crate::queue::bounce::Bouncer;
use crate::queue::commit::Committer;
use crate::queue::dispatch::Dispatch;
use crate::queue::recovery::{self, OpenError};
use crate::queue::space::Reserve;
use crate::queue::store::{Store, StoreError};
use crate::queue::timers::Timers;
use crate::reception::{Reception, Shared};
use crate::tls::certs::{self, Certificates, Snapshot};
use crate::tls::client::ClientTlsFactory;
use crate::tls::memory::{self, TlsMemory};
use crate::tls::mta_sts::{self, MtaSts};

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

/// What steers a running server from outside.
#[derive(Debug)]
pub enum Control {
    /// The process's signals: SIGHUP reloads, SIGTERM and SIGINT stop (what `postern serve`
    /// uses).
    Signals,
    /// Commands on a channel, for a server run inside another program (tests): no signal
    /// handler is installed. A closed channel stops the server.
    Channel(async_channel::Receiver<Command>),
}

/// A command for a server steered by [`Control::Channel`].
#[derive(Debug, Clone)]
pub enum Command {
    /// Read the configuration again, as SIGHUP does; then say so on the channel, if any.
    Reload(Option<async_channel::Sender<()>>),
    /// Stop, as SIGTERM does (a second one stops waiting for sessions).
    Stop,
}

/// The control source, once started.
enum Controls {
    Signals(Signals),
    Channel(async_channel::Receiver<Command>),
}

impl Controls {
    /// The next command, and what it came from (for the log).
    async fn next(&mut self) -> (Command, &'static str) {
        match self {
            Controls::Signals(signals) => loop {
                // The signals whose default would end the process without a word are caught
                // and ignored, with a line saying so (SIGQUIT keeps its core dump).
                let ignored = match signals.next().await {
                    Some(Ok(Signal::Hup)) => return (Command::Reload(None), "SIGHUP"),
                    Some(Ok(Signal::Int)) => return (Command::Stop, "SIGINT"),
                    Some(Ok(Signal::Usr1)) => "SIGUSR1",
                    Some(Ok(Signal::Usr2)) => "SIGUSR2",
                    Some(Ok(Signal::Alarm)) => "SIGALRM",
                    _ => return (Command::Stop, "SIGTERM"),
                };
                log::line(Event::Reload)
                    .text(
                        "msg",
                        format_args!(
                            "{ignored} received and ignored: SIGHUP reloads, SIGTERM stops"
                        ),
                    )
                    .write();
            },
            Controls::Channel(rx) => match rx.recv().await {
                Ok(command) => (command, "control command"),
                Err(_) => (Command::Stop, "closed control channel"),
            },
        }
    }
}

/// Runs the server from the configuration directory `dir` until SIGTERM or SIGINT.
pub fn serve(dir: &std::path::Path) -> Result<(), ServeError> {
    serve_with(dir, Control::Signals, None)
}

/// Runs the server from `dir`, steered by `control`. Once every listener is bound, their
/// roles and addresses go to `bound_to` (the kernel's port when the configuration says 0).
pub fn serve_with(
    dir: &std::path::Path,
    control: Control,
    bound_to: Option<async_channel::Sender<Vec<(Role, SocketAddr)>>>,
) -> Result<(), ServeError> {
    if init::create_default(dir)? {
        log::status(format_args!(
            "postern: created the default configuration in {} (postern.toml, a self-signed certificate, domains/localhost/)",
            dir.display()
        ));
    }
    let settings = Settings::load(dir)?;
    if settings.data_dir_line.is_none() && settings.data_dir == settings.dir {
        log::line(Event::Startup)
            .text(
                "msg",
                format!(
                    "state stays in the configuration directory {}, which holds a queue (the \
                     old default): set data_dir in postern.toml to keep them apart (README: \
                     Keep the configuration in git)",
                    settings.dir.display()
                ),
            )
            .write();
    }
    check_directory(&settings)?;
    // As ssh does for its keys, only louder than silence: secrets others can read.
    for loose in crate::config::check::loose_modes(&settings) {
        log::line(Event::Startup).text("warning", &loose).write();
    }
    let certs_snapshot = Snapshot::take(&settings.certs_dir());
    let store = certs::load(&settings)?;
    log::line(Event::Tls)
        .text("msg", format_args!("loaded {}", store.summary()))
        .write();
    let certificates = Certificates::new(store);
    let acceptor = TlsAcceptor::from(certificates.server_config()?);

    std::fs::create_dir_all(settings.mail_dir()).map_err(|e| {
        settings.data_dir_error(format!(
            "cannot create {}: {e}",
            settings.mail_dir().display()
        ))
    })?;
    let Queue {
        parts: queue,
        local: workers,
        local_ids: work,
        outbound,
        remote_ids: remote_work,
    } = open_queue(&settings)?;

    let mut bound = Vec::new();
    let activated = match systemd::activated_sockets()? {
        Some(sockets) => {
            log::status(format_args!(
                "postern: {} sockets from systemd (socket activation); [listeners] in {} is not used",
                sockets.len(),
                settings.file.display()
            ));
            for (role, socket) in sockets {
                let local = socket.get_ref().local_addr().map_err(|e| {
                    systemd::activation_error(format!(
                        "cannot read the address of the {} socket: {e}",
                        role.name()
                    ))
                })?;
                bound.push((role, local, socket));
            }
            true
        }
        None => {
            for listener in &settings.listeners {
                let socket = bind(&settings, listener)?;
                let local = socket.get_ref().local_addr().unwrap_or(listener.addr);
                bound.push((listener.role, local, socket));
            }
            false
        }
    };
    // Install the handlers before announcing, so a supervisor's early SIGTERM is handled.
    let mut controls = match control {
        Control::Signals => Controls::Signals(
            Signals::new([
                Signal::Term,
                Signal::Int,
                Signal::Hup,
                Signal::Usr1,
                Signal::Usr2,
                Signal::Alarm,
            ])
            .map_err(ServeError::Signals)?,
        ),
        Control::Channel(rx) => Controls::Channel(rx),
    };

    // Mail goes on without the control socket (a data_dir path too long for a socket's
    // name, say); only the commands that talk to the server need it, and they say so.
    let control_socket = match control::bind(&settings.data_dir) {
        Ok(socket) => Some(socket),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(settings
                .data_dir_error(format!(
                    "{e}: stop it first, or give this one another data_dir"
                ))
                .into());
        }
        Err(e) => {
            log::line(Event::Startup)
                .text(
                    "problem",
                    format_args!(
                        "cannot open the control socket {}: {e}; postern status and the queue \
                         commands will not reach this server",
                        control::socket_path(&settings.data_dir).display()
                    ),
                )
                .write();
            None
        }
    };
    let control_path = control::socket_path(&settings.data_dir);
    let metrics_socket = match settings.metrics_listen {
        Some(addr) => {
            let error = |e: std::io::Error| ConfigError {
                file: settings.file.clone(),
                line: None,
                message: format!("[metrics] cannot listen on {addr}: {e}"),
                fix: "use a free loopback port, or remove [metrics] listen".into(),
            };
            let socket = listen(addr, true).map_err(error)?;
            log::status(format_args!("postern: metrics on http://{addr}/metrics"));
            Some(Async::new(socket).map_err(error)?)
        }
        None => None,
    };
    log::status(format_args!(
        "postern: {} serving; configuration {}, data {}",
        settings.hostname,
        settings.file.display(),
        settings.data_dir.display()
    ));
    for (role, local, _) in &bound {
        log::status(format_args!(
            "postern: listening on {local} ({})",
            role.name()
        ));
    }
    systemd::notify("READY=1");
    if let Some(tx) = bound_to {
        let _ = tx.try_send(
            bound
                .iter()
                .map(|(role, local, _)| (*role, *local))
                .collect(),
        );
    }

    let counter = ConnectionCounter::new();
    let control_state = Arc::new(control::ControlState {
        store: queue.store.clone(),
        committer: queue.committer.clone(),
        dispatch: queue.dispatch.clone(),
        bouncer: workers.bouncer.clone(),
        counter: counter.clone(),
        started: std::time::SystemTime::now(),
        hostname: settings.hostname.clone(),
        listeners: bound
            .iter()
            .map(|(role, local, _)| (*role, *local))
            .collect(),
        certificates: certificates.clone(),
    });
    let shutdown = Shutdown::new();
    let runtime = Arc::new(Runtime {
        dir: dir.to_path_buf(),
        live: RwLock::new(Arc::new(Live::new(settings, &acceptor, &shutdown, &queue))),
        shutdown,
        queue,
        certificates,
        acceptor,
        counter,
        activated,
        outbound: outbound.clone(),
        local: workers.clone(),
    });
    let paused = local::paused();
    if paused {
        log::status(format_args!(
            "postern: delivery paused ({}=1): messages stay queued",
            local::PAUSE_VARIABLE
        ));
    }
    smol::block_on(async {
        if !paused {
            local::start(workers.clone(), work.clone());
            smtp::start(outbound.clone(), remote_work.clone());
        }
        let watcher = smol::spawn(watch_certs(runtime.clone(), certs_snapshot));
        let metrics_task = metrics_socket.map(|socket| {
            smol::spawn(crate::daemon::metrics::serve(socket, control_state.clone()))
        });
        let control_task =
            control_socket.map(|socket| smol::spawn(control::serve(socket, control_state)));
        let tasks: Vec<_> = bound
            .into_iter()
            .map(|(role, _, socket)| smol::spawn(accept_loop(socket, role, runtime.clone())))
            .collect();
        let name = loop {
            match controls.next().await {
                (Command::Reload(done), from) => {
                    log::line(Event::Reload)
                        .text("msg", format_args!("{from} received"))
                        .write();
                    runtime.reload();
                    if let Some(done) = done {
                        let _ = done.try_send(());
                    }
                }
                (Command::Stop, from) => break from,
            }
        };
        watcher.cancel().await;
        if let Some(task) = control_task {
            task.cancel().await;
        }
        if let Some(task) = metrics_task {
            task.cancel().await;
        }
        let _ = std::fs::remove_file(&control_path);
        log::status(format_args!("postern: {name} received, stopping"));
        systemd::notify("STOPPING=1");
        // Cancelling the accept loops drops, and so closes, the listening sockets.
        for task in tasks {
            task.cancel().await;
        }
        // Idle sessions close now with 421; sessions inside a transaction finish it first.
        runtime.shutdown.trigger();
        // A second SIGTERM or SIGINT ends the wait at once.
        let again = async {
            loop {
                if let (Command::Stop, _) = controls.next().await {
                    log::line(Event::Shutdown)
                        .text("msg", format_args!("second signal: not waiting any longer"))
                        .write();
                    return;
                }
            }
        };
        future::or(
            drain(&runtime.counter, runtime.live().settings.shutdown_grace),
            again,
        )
        .await;
    });
    // Deliveries still running are cut short: at worst a recipient is delivered again.
    let _ = runtime.queue.store.sync();
    Ok(())
}

/// The running server: what every accept loop and reload shares.
struct Runtime {
    /// The configuration directory.
    dir: PathBuf,
    /// What new connections use; replaced as a whole by a reload.
    live: RwLock<Arc<Live>>,
    /// The certificate resolver behind `acceptor`.
    certificates: Arc<Certificates>,
    /// The TLS acceptor; it stays, the certificates behind it change.
    acceptor: TlsAcceptor,
    /// The connections open now.
    counter: Arc<ConnectionCounter>,
    /// Triggered on SIGTERM: sessions finish their transaction and close.
    shutdown: Shutdown,
    /// The queue, opened once; every configuration shares it.
    queue: QueueParts,
    /// Whether the listeners came from systemd rather than `[listeners]`.
    activated: bool,
    /// Outbound delivery, which takes `[delivery]` and `[routes]` again on reload.
    outbound: Arc<Outbound>,
    /// Local delivery, which takes `[delivery] give_up_after` again on reload.
    local: Arc<Local>,
}

/// The configuration new connections get.
#[derive(Debug)]
struct Live {
    settings: Settings,
    shared: Arc<Shared>,
    /// One per role, in [`Role::index`] order, for listeners off and on loopback (AUTH over
    /// plaintext may be allowed on loopback only).
    connections: [[Arc<Connection>; 2]; 3],
}

impl Runtime {
    /// The current configuration.
    fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(live) => live.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// SIGHUP: reads `postern.toml` and `certs/` again and applies them to new connections, or
    /// keeps everything as it is and logs why.
    fn reload(&self) {
        let old = self.live();
        let refused = |e: ConfigError| {
            log::line(Event::Reload)
                .text(
                    "msg",
                    format_args!(
                        "refused, keeping the current configuration: {}",
                        e.to_string().replace("\n  fix: ", "; fix: ")
                    ),
                )
                .write();
        };
        let mut settings = match Settings::load(&self.dir) {
            Ok(settings) => settings,
            Err(e) => return refused(e),
        };
        let (store, problems) = match certs::reload(&settings, &self.certificates.current()) {
            Ok(loaded) => loaded,
            Err(e) => return refused(e),
        };
        let outbound_tls = match crate::tls::client::load_roots(&settings.delivery.extra_roots)
            .and_then(|roots| ClientTlsFactory::new(&roots))
        {
            Ok(tls) => tls,
            Err(e) => {
                return refused(ConfigError {
                    file: settings.file.clone(),
                    line: None,
                    message: format!("[delivery] tls_roots: {e}"),
                    fix: "give PEM files holding CA certificates".into(),
                });
            }
        };
        self.outbound
            .reload(settings.delivery.clone(), outbound_tls);
        self.local
            .set_schedule(local::schedule(settings.delivery.retry.max_lifetime));
        // Shared with outbound delivery and the bouncer.
        self.local.hostname.set(&settings.hostname);
        let addresses = |s: &Settings| -> Vec<(Role, SocketAddr)> {
            s.listeners.iter().map(|l| (l.role, l.addr)).collect()
        };
        // The live settings keep the addresses actually listened on, so a later reload that
        // restores them is no change.
        if !self.activated && addresses(&settings) != addresses(&old.settings) {
            log::line(Event::Reload)
                .text(
                    "msg",
                    format_args!(
                        "[listeners] changed in {}: needs restart; still listening on the old addresses",
                        settings.file.display()
                    ),
                )
                .write();
            settings.listeners = old.settings.listeners.clone();
        }
        if settings.mailboxes != old.settings.mailboxes {
            log::line(Event::Reload)
                .text(
                    "msg",
                    format_args!(
                        "[mailboxes] changed in {}: needs restart; local delivery keeps the old methods",
                        settings.file.display()
                    ),
                )
                .write();
        }
        if settings.data_dir != old.settings.data_dir {
            log::line(Event::Reload)
                .text(
                    "msg",
                    format_args!(
                        "data_dir changed in {}: needs restart; still using {}",
                        settings.file.display(),
                        old.settings.data_dir.display()
                    ),
                )
                .write();
            settings.data_dir = old.settings.data_dir.clone();
            settings.data_dir_line = old.settings.data_dir_line;
        }
        log_certs_reloaded(&store, &problems);
        self.certificates.replace(store);
        let live = Arc::new(Live::new(
            settings,
            &self.acceptor,
            &self.shutdown,
            &self.queue,
        ));
        log::line(Event::Reload)
            .text(
                "msg",
                format_args!(
                    "configuration reloaded from {}; new connections use it",
                    live.settings.file.display()
                ),
            )
            .write();
        match self.live.write() {
            Ok(mut current) => *current = live,
            Err(poisoned) => *poisoned.into_inner() = live,
        }
    }

    /// Loads `certs/` again and serves the result to new handshakes, or keeps the current
    /// certificates and says why.
    fn reload_certs(&self) {
        match certs::reload(&self.live().settings, &self.certificates.current()) {
            Ok((store, problems)) => {
                log_certs_reloaded(&store, &problems);
                self.certificates.replace(store);
            }
            Err(e) => log::line(Event::Tls)
                .text(
                    "msg",
                    format_args!(
                        "reload failed, keeping the current certificates: {}",
                        e.to_string().replace("\n  fix: ", "; fix: ")
                    ),
                )
                .write(),
        }
    }
}

/// At startup, every users, aliases and DKIM key file must read: a broken or unreadable one
/// stops the start with its file (and line) and the reason, as postern.toml does. While
/// running, a broken users or aliases file is logged and its last good version kept; starting
/// without it would refuse its mail for good, and a key the server cannot read answers every
/// submission of its domain 451.
fn check_directory(settings: &Settings) -> Result<(), ConfigError> {
    match crate::config::check::problems(settings)
        .errors
        .into_iter()
        .next()
    {
        Some(first) => Err(first),
        None => Ok(()),
    }
}

/// Logs a certificate reload: its problems (each file kept its previous certificate), then
/// `reloaded` only when there were none, else what is served now.
fn log_certs_reloaded(store: &certs::CertStore, problems: &[ConfigError]) {
    log_problems(problems);
    let msg = if problems.is_empty() {
        format!("reloaded {}", store.summary())
    } else {
        format!(
            "reload incomplete ({} kept the previous certificate); serving {}",
            problems.len(),
            store.summary()
        )
    };
    log::line(Event::Tls).text("msg", msg).write();
}

fn log_problems(problems: &[ConfigError]) {
    for e in problems {
        log::line(Event::Tls)
            .text(
                "msg",
                format_args!(
                    "reload: {}: {}; keeping its previous certificate, if any",
                    e.file.display(),
                    e.message
                ),
            )
            .write();
    }
}

impl Live {
    /// What new connections get under `settings`.
    fn new(
        settings: Settings,
        acceptor: &TlsAcceptor,
        shutdown: &Shutdown,
        queue: &QueueParts,
    ) -> Live {
        let users = queue.users.clone();
        let srs = Arc::new(srs(&queue.srs_key, &settings));
        // The same tables while the options stay (a file broken since keeps its last good
        // version); new options read the files again.
        let (current, _) = queue.aliases.get();
        let aliases = if *current.options() == settings.alias_options {
            current
        } else {
            Arc::new(Aliases::new(
                settings.domains_dir(),
                settings.alias_options.clone(),
            ))
        };
        // Reload logs what it finds.
        let _ = aliases.reload();
        queue.aliases.set(aliases.clone(), srs.clone());
        let shared = Arc::new(Shared {
            aliases,
            srs,
            auth: Arc::new(Authenticator::new(users.clone(), settings.auth.clone())),
            policy: Policy {
                grants: settings.grants.clone(),
                trusted_networks: settings.trusted_networks.clone(),
                header_from: settings.header_from,
            },
            allow_plaintext_on_loopback: settings.auth.allow_plaintext_on_loopback,
            recipients: Recipients::new(users, settings.mail_dir(), settings.hostname.clone()),
            store: queue.store.clone(),
            reserve: Reserve::new(settings.data_dir.clone(), settings.min_free_space),
            committer: queue.committer.clone(),
            dispatch: queue.dispatch.clone(),
            inbound: Arc::new(Inbound::new(
                settings.dir.clone(),
                settings.checks.clone(),
                settings.hostname.clone(),
                queue.resolver.clone(),
            )),
            report_addresses: settings.report_addresses.clone(),
            report_deliver: settings.report_deliver,
            data_dir: settings.data_dir.clone(),
        });
        let connections = [Role::Smtp, Role::Submission, Role::Submissions].map(|role| {
            [false, true].map(|loopback| {
                Arc::new(
                    Connection::new(
                        Arc::new(session_config(&settings, role, loopback)),
                        tls_mode(role, acceptor),
                    )
                    .with_shutdown(shutdown.clone())
                    .with_handshake_timeout(settings.tls_handshake_timeout),
                )
            })
        });
        Live {
            settings,
            shared,
            connections,
        }
    }

    fn connection(&self, role: Role, local: SocketAddr) -> Arc<Connection> {
        self.connections[role.index()][usize::from(local.ip().is_loopback())].clone()
    }
}

/// Waits until every connection is closed, or `grace` has passed.
async fn drain(counter: &ConnectionCounter, grace: Duration) {
    let deadline = Instant::now() + grace;
    let open = counter.open();
    if open > 0 {
        log::line(Event::Shutdown)
            .text(
                "msg",
                format_args!(
                    "waiting up to {} s for {open} open connections",
                    grace.as_secs()
                ),
            )
            .write();
    }
    loop {
        let open = counter.open();
        if open == 0 {
            log::line(Event::Shutdown)
                .text("msg", format_args!("all connections closed"))
                .write();
            return;
        }
        if Instant::now() >= deadline {
            log::line(Event::Shutdown)
                .text(
                    "msg",
                    format_args!("shutdown_grace over; closing {open} connections"),
                )
                .write();
            return;
        }
        Timer::after(Duration::from_millis(50)).await;
    }
}

/// Polls `certs/` every `tls_reload_interval` and reloads the certificates when anything
/// there changed. The interval is read again each time (SIGHUP may change it; 0 pauses).
async fn watch_certs(runtime: Arc<Runtime>, mut last: Snapshot) {
    loop {
        let settings = runtime.live().settings.clone();
        let Some(interval) = settings.tls_reload_interval else {
            Timer::after(Duration::from_secs(1)).await;
            continue;
        };
        Timer::after(interval).await;
        let now = Snapshot::take(&settings.certs_dir());
        if now != last {
            last = now;
            runtime.reload_certs();
        }
    }
}

/// The queue's handles for sessions, opened once at startup.
#[derive(Debug, Clone)]
struct QueueParts {
    store: Store,
    committer: Committer,
    /// Where queued messages go for delivery.
    dispatch: Dispatch,
    /// The SRS key (`<data_dir>/srs.key`).
    srs_key: Arc<Vec<u8>>,
    /// The DNS resolver, shared by outbound delivery and the checks on reception.
    resolver: Arc<Resolver>,
    /// The users of the local domains (re-read when their files change): one for sessions,
    /// logins and bounces alike.
    users: Arc<UserDb>,
    /// The aliases and SRS in force, for sessions and bounces alike.
    aliases: AliasCell,
}

/// SRS with the server's key and `settings`' maximum age.
fn srs(key: &[u8], settings: &Settings) -> proto_core::mail::Srs {
    proto_core::mail::Srs::new(key).with_max_age_days(settings.srs_max_age_days)
}

/// What [`open_queue`] sets up.
struct Queue {
    /// The sessions' handles.
    parts: QueueParts,
    /// The local workers' share, and the ids they take.
    local: Arc<Local>,
    local_ids: async_channel::Receiver<QueueId>,
    /// The outbound workers' share, and the ids they take.
    outbound: Arc<Outbound>,
    remote_ids: async_channel::Receiver<QueueId>,
}

/// Opens the queue store, removes what unacknowledged transactions left, starts the
/// committer, sets up local and outbound delivery, and queues every message a previous run
/// left for delivery.
fn open_queue(settings: &Settings) -> Result<Queue, ConfigError> {
    let dir = settings.queue_dir();
    let problem = |e: &dyn std::fmt::Display| {
        settings.data_dir_error(format!("cannot open the queue in {}: {e}", dir.display()))
    };
    let opened = recovery::open(&settings.data_dir).map_err(|e| {
        let mut error = problem(&e);
        // The hint that fits the cause: only a permission problem is about writability.
        match &e {
            OpenError::Store(s) if s.is_locked() => {
                error.fix = "another postern is running on this data_dir: stop it first, \
                    or give this one another data_dir"
                    .into();
            }
            OpenError::Store(s) if s.is_disk_full() => {
                error.fix = "free space on the file system holding data_dir".into();
            }
            OpenError::Store(s) if s.is_not_permitted() => {}
            OpenError::Store(StoreError::Fjall(fjall::Error::InvalidVersion(_)))
            | OpenError::Store(StoreError::Fjall(fjall::Error::Storage(
                fjall::LsmError::InvalidVersion(_),
            ))) => {
                error.fix = "the queue was written by another version of postern or fjall: \
                    run that version to empty it"
                    .into();
            }
            _ => {}
        }
        error
    })?;
    let store = opened.store;
    let swept = opened.swept;
    if swept > 0 {
        log::line(Event::Startup)
            .text(
                "msg",
                format_args!("removed the partial bodies of {swept} unacknowledged messages"),
            )
            .write();
    }
    let committer = Committer::start(store.clone()).map_err(|e| problem(&e))?;
    let (local_queue, local_ids) = async_channel::unbounded();
    let (remote_queue, remote_ids) = async_channel::unbounded();
    let dispatch = Dispatch::new(local_queue.clone(), remote_queue);
    let ids = store.ids().map_err(|e| problem(&e))?;
    for id in &ids {
        dispatch.both(id);
    }
    if !ids.is_empty() {
        log::line(Event::Startup)
            .text(
                "msg",
                format_args!("{} queued messages resume delivery", ids.len()),
            )
            .write();
    }
    let users = Arc::new(UserDb::new(settings.domains_dir()));
    let hostname = HostName::new(&settings.hostname);
    let key_path = settings.data_dir.join(destinations::SRS_KEY_FILE);
    let srs_key = destinations::load_or_create_key(&key_path).map_err(|e| {
        settings.data_dir_error(format!("cannot read or create {}: {e}", key_path.display()))
    })?;
    // Read by the first Live::new (which logs the problems); the sessions and the bouncer
    // share it from there.
    let aliases = AliasCell::new(
        Arc::new(Aliases::new(
            settings.domains_dir(),
            settings.alias_options.clone(),
        )),
        Arc::new(srs(&srs_key, settings)),
    );
    let bouncer = Bouncer {
        store: store.clone(),
        hostname: hostname.clone(),
        recipients: Recipients::new(
            users.clone(),
            settings.mail_dir(),
            settings.hostname.clone(),
        ),
        aliases: aliases.clone(),
    };
    let local = Arc::new(Local {
        store: store.clone(),
        committer: committer.clone(),
        mail_dir: settings.mail_dir(),
        hostname: hostname.clone(),
        timers: Timers::new(local_queue),
        bouncer: bouncer.clone(),
        dispatch: dispatch.clone(),
        mailboxes: settings.mailboxes.clone(),
        schedule: std::sync::RwLock::new(local::schedule(settings.delivery.retry.max_lifetime)),
        backlog: Default::default(),
    });
    let resolver = ResolverConfig::for_server(settings).map_err(|e| ConfigError {
        file: settings.file.clone(),
        line: None,
        message: format!("cannot read the DNS configuration: {e}"),
        fix: "set [dns] nameservers, or make /etc/resolv.conf readable".into(),
    })?;
    let roots_error = |e: crate::tls::client::TlsSetupError| ConfigError {
        file: settings.file.clone(),
        line: None,
        message: format!("[delivery] tls_roots: {e}"),
        fix: "give PEM files holding CA certificates".into(),
    };
    let roots =
        crate::tls::client::load_roots(&settings.delivery.extra_roots).map_err(roots_error)?;
    let tls = ClientTlsFactory::new(&roots).map_err(roots_error)?;
    let resolver = Arc::new(Resolver::new(resolver));
    let (tls_memory, bad) = TlsMemory::open(&settings.data_dir.join(memory::FILE_NAME))
        .map_err(|e| settings.data_dir_error(format!("cannot read the TLS policy memory: {e}")))?;
    for line in bad {
        log::line(Event::Config)
            .text("msg", format_args!("{line}; line skipped"))
            .write();
    }
    let mta_sts = if settings.delivery.mta_sts {
        let (sts, bad) = MtaSts::new(
            resolver.clone(),
            roots,
            &settings.data_dir.join(mta_sts::FILE_NAME),
        )
        .map_err(|e| settings.data_dir_error(format!("cannot set up MTA-STS: {e}")))?;
        for line in bad {
            log::line(Event::Config)
                .text("msg", format_args!("{line}; line skipped"))
                .write();
        }
        Some(sts.with_port(settings.delivery.mta_sts_port))
    } else {
        None
    };
    let outbound = Arc::new(Outbound::new(
        store.clone(),
        committer.clone(),
        resolver.clone(),
        settings.delivery.clone(),
        hostname,
        tls,
        bouncer,
        dispatch.clone(),
        tls_memory,
        mta_sts,
    ));
    let parts = QueueParts {
        store,
        committer,
        dispatch,
        srs_key: Arc::new(srs_key),
        resolver,
        users,
        aliases,
    };
    Ok(Queue {
        parts,
        local,
        local_ids,
        outbound,
        remote_ids,
    })
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
    // An IPv6 listener whose port is also listed on IPv4 takes IPv6 only, so the two can be
    // bound side by side; alone, it keeps the system's default (dual-stack on Linux), as
    // before.
    let v4_twin = settings
        .listeners
        .iter()
        .any(|l| l.addr.is_ipv4() && l.addr.port() == listener.addr.port());
    let socket = listen(listener.addr, v4_twin).map_err(error)?;
    Async::new(socket).map_err(error)
}

/// A listening socket on `addr`; an IPv6 one takes IPv6 only when `v6_only`.
fn listen(addr: SocketAddr, v6_only: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && v6_only {
        socket.set_only_v6(true)?;
    }
    // As std's TcpListener::bind does: a restart can bind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The session configuration for a role, on a loopback listener or not. AUTH is offered on
/// the submission ports, and on smtp only when `[auth] smtp_listener` says so; always under
/// TLS only, except on a loopback listener when `[auth] allow_plaintext_on_loopback` is set.
fn session_config(settings: &Settings, role: Role, loopback: bool) -> Config {
    let mut config = Config::new(settings.hostname.clone());
    config.limits.max_message_size = settings.max_message_size;
    config.timeouts = settings.timeouts;
    config.extensions.starttls = role != Role::Submissions;
    // BINARYMIME is not offered: a message to any address may go on to another server
    // (relayed, or forwarded by an alias), most of which (Postfix among them) do not take
    // binary bodies, and postern does not convert them. Without it, clients send 8BITMIME.
    config.extensions.binary_mime = false;
    config.auth = if role == Role::Smtp && !settings.auth.smtp_listener {
        AuthPolicy::Never
    } else if settings.auth.allow_plaintext_on_loopback && loopback {
        AuthPolicy::AllowPlaintext
    } else {
        AuthPolicy::TlsOnly
    };
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
async fn accept_loop(socket: Async<TcpListener>, role: Role, runtime: Arc<Runtime>) {
    let Ok(local) = socket.get_ref().local_addr() else {
        return;
    };
    loop {
        match socket.accept().await {
            Ok((stream, peer)) => {
                let live = runtime.live();
                let per_ip = if live.settings.exempt_from_per_ip(peer.ip()) {
                    PerIp::Exempt
                } else {
                    PerIp::AtMost(live.settings.max_connections_per_ip)
                };
                let permit = match runtime.counter.admit(
                    role,
                    peer.ip(),
                    live.settings.max_connections[role.index()],
                    per_ip,
                ) {
                    Ok(permit) => permit,
                    Err(refusal) => {
                        log::line(Event::Connection)
                            .field("result", "refused")
                            .field("client", peer.ip().to_canonical())
                            .field("role", role.name())
                            .field("limit", refusal.key())
                            .write();
                        smol::spawn(too_many(stream, role, live.settings.hostname.clone()))
                            .detach();
                        continue;
                    }
                };
                smol::spawn(async move {
                    let _permit: Permit = permit;
                    let connection = live.connection(role, local);
                    let mut reception = Reception::new(live.shared.clone(), role);
                    if let Err(e) = connection.run_tcp(stream, &mut reception).await {
                        log_connection_error(peer, role, reception.session_id(), &e);
                    }
                })
                .detach();
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                log::line(Event::Connection)
                    .field("role", role.name())
                    .text("error", format_args!("accept failed: {e}"))
                    .write();
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

fn log_connection_error(
    peer: SocketAddr,
    role: Role,
    session: &crate::queue::QueueId,
    e: &runtime_smol::Error,
) {
    log::line(Event::Connection)
        .field("session", session)
        .field("client", peer.ip().to_canonical())
        .field("role", role.name())
        .text("error", e)
        .write();
}

#[cfg(test)]
mod tests {
    use crate::config::Role;
    use crate::testkit::{Client, TestServer};

    /// The SIZE a fresh session's EHLO announces.
    fn size(addr: std::net::SocketAddr) -> String {
        let (mut c, _) = Client::connect(addr);
        c.send("EHLO client.test");
        c.transcript
            .iter()
            .find_map(|l| l.strip_prefix("250-SIZE ").or(l.strip_prefix("250 SIZE ")))
            .unwrap_or("none")
            .to_string()
    }

    /// A reload takes new settings for new sessions and keeps the listeners; a file that does
    /// not parse, or a host name without a certificate, leaves the running configuration.
    #[test]
    fn reload_takes_new_settings_and_keeps_the_old_on_errors() {
        let server = TestServer::builder()
            .config("max_message_size = 1048576")
            .start();
        let addr = server.addr(Role::Smtp);
        assert_eq!(size(addr), "1048576");
        let path = server.dir().join("postern.toml");
        let text = std::fs::read_to_string(&path).expect("read");
        let write = |t: &str| std::fs::write(&path, t).expect("write");
        write(&text.replace("1048576", "2097152"));
        server.reload();
        assert_eq!(size(addr), "2097152");
        for broken in [
            "hostname = [\n".to_string(),
            text.replace("hostname = \"localhost\"", "hostname = \"mx.test\"")
                .replace("1048576", "3145728"),
        ] {
            write(&broken);
            server.reload();
            assert_eq!(size(addr), "2097152", "after {broken:?}");
            let (_, greeting) = Client::connect(addr);
            assert!(greeting.starts_with("220 localhost "), "{greeting}");
        }
    }

    /// Stopping ends the server cleanly, and the port is closed afterwards.
    #[test]
    fn stop_closes_the_listeners() {
        let server = TestServer::builder().start();
        let addr = server.addr(Role::Submissions);
        assert_eq!(server.stop(), Ok(()));
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "still listening"
        );
    }
}

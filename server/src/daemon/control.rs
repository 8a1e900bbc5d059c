//! The control socket: how the command line talks to the running server.
//!
//! `<data_dir>/control.sock`, a Unix socket of mode 0600: only the user the server runs as
//! (and root) can connect, and the server checks the peer's user id too (SO_PEERCRED); it
//! is never a network port. One request per connection: a line
//! naming the command, answered with one JSON document, then the connection closes.
//!
//! - `queue-list`: every queued message ([`QueueEntry`]), oldest first;
//! - `status`: uptime, listeners, open sessions, queue counts ([`Status`]);
//! - `queue-retry <id>|all|domain <domain>`: the pending recipients chosen (not held ones)
//!   are due now, and the workers are told: `{"retried": [ids]}`;
//! - `queue-hold <id>` / `queue-release <id>`: its pending recipients wait until released
//!   (no attempt, no timer: [`HELD`]), or are due now: `{"held": id}` / `{"released": id}`;
//! - `queue-show <id>`: the message's entry, its header section and its log lines ([`Shown`]);
//! - `queue-history <id>`: the log lines of a message, also after it left the queue:
//!   `{"id": id, "lines": [...]}` ([`crate::log::history`]);
//! - `queue-remove <id>` / `queue-remove-silent <id>`: the message leaves the queue; its
//!   pending recipients fail with a DSN to the sender ("removed by the operator"), or, silent,
//!   without one: `{"removed": id, "bounced": n}`.
//!
//! An unknown command is answered `{"error": "..."}`. A request line longer than 1 KiB, or
//! slower than 5 s, is dropped.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_io::{Async, Timer};
use futures_lite::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, future, io::BufReader};
use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::daemon::limits::ConnectionCounter;
use crate::log::{self, Event};
use crate::queue::QueueId;
use crate::queue::bounce::Bouncer;
use crate::queue::commit::Committer;
use crate::queue::dispatch::Dispatch;
use crate::queue::settle::{Backlog, Fate, Recorder, Schedule, settle};
use crate::queue::store::{Address, Envelope, HELD, Owner, RecipientState, Store};
use proto_core::mail::DsnAction;

/// The socket's file name in the data directory.
pub const SOCKET_NAME: &str = "control.sock";

/// `<data_dir>/control.sock`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// The longest request line.
const MAX_REQUEST: u64 = 1024;

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One queued message, as `queue-list` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The queue id.
    pub id: String,
    /// When it was received (RFC 3339).
    pub received: String,
    /// Seconds since then.
    pub age_seconds: u64,
    /// The reverse path, `<...>`.
    pub from: String,
    /// Its size in bytes.
    pub size: u64,
    /// Each recipient.
    pub recipients: Vec<QueueRecipient>,
}

/// One recipient of a queued message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueRecipient {
    /// Where it goes.
    pub to: String,
    /// pending, delivered or failed.
    pub state: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The next attempt (RFC 3339), when pending and scheduled.
    pub next_attempt: Option<String>,
    /// What the last attempt ran into.
    pub last_error: Option<String>,
}

/// What `status` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Seconds since the server started.
    pub uptime_seconds: u64,
    /// The host name.
    pub hostname: String,
    /// Each listener: role and address.
    pub listeners: Vec<(String, String)>,
    /// Sessions open per role.
    pub sessions: Vec<(String, usize)>,
    /// Messages in the queue.
    pub queued_messages: usize,
    /// Their recipients not delivered yet.
    pub pending_recipients: usize,
    /// The age of the oldest message, in seconds.
    pub oldest_age_seconds: u64,
    /// Events of the last hour: received, rejected, delivered, deferred, failed, dsn,
    /// relayed_tls, relayed_plaintext ([`crate::log::stats`]).
    #[serde(default)]
    pub last_hour: Vec<(String, u64)>,
    /// The default certificate's file and when it expires (RFC 3339).
    #[serde(default)]
    pub certificate: Option<(String, String)>,
}

/// What `queue-show` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shown {
    /// The message as `queue-list` shows it.
    pub entry: QueueEntry,
    /// The header section as it will go out: the fields added at reception, then the stored
    /// ones (at most 64 KiB).
    pub headers: String,
    /// Its log lines so far (received, deferred, ...).
    #[serde(default)]
    pub history: Vec<String>,
}

/// How long `queue-remove` waits for a delivery under way to end (the CLI waits 30 s for
/// its answer).
const REMOVAL_WAIT: Duration = Duration::from_secs(20);

/// The most of a stored header section `queue-show` reads.
const MAX_SHOWN_HEADER: usize = 64 * 1024;

/// What the socket answers from.
#[derive(Debug)]
pub struct ControlState {
    /// The queue.
    pub store: Store,
    /// Makes the retry marks durable.
    pub committer: Committer,
    /// Tells the workers.
    pub dispatch: Dispatch,
    /// DSNs for `queue-remove`.
    pub bouncer: Bouncer,
    /// The connections.
    pub counter: Arc<ConnectionCounter>,
    /// When the server started.
    pub started: SystemTime,
    /// The host name at startup.
    pub hostname: String,
    /// The listening addresses.
    pub listeners: Vec<(Role, SocketAddr)>,
    /// The certificates served now.
    pub certificates: Arc<crate::tls::certs::Certificates>,
}

/// Binds `<data_dir>/control.sock`, mode 0600. A socket file left by a server that is gone
/// is replaced; one that answers belongs to a running server, which is an error.
pub fn bind(data_dir: &Path) -> io::Result<Async<UnixListener>> {
    let path = socket_path(data_dir);
    if path.exists() {
        if UnixStream::connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} answers: another postern runs here", path.display()),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Async::new(listener)
}

/// Answers requests on `listener` until the task is dropped.
pub async fn serve(listener: Async<UnixListener>, state: Arc<ControlState>) {
    super::answer_each("control", listener.incoming(), |stream| {
        let state = state.clone();
        async move {
            let _ = answer(stream, &state).await;
        }
    })
    .await;
}

/// The peer's user id when it is neither the server's user nor root (SO_PEERCRED), or when
/// it cannot be told (`u32::MAX`). The socket's mode keeps others out already; this holds
/// also when the mode was opened up, or in the moment between bind and chmod.
fn stranger(stream: &Async<UnixStream>) -> Option<u32> {
    let uid = match rustix::net::sockopt::socket_peercred(stream.get_ref()) {
        Ok(cred) => cred.uid.as_raw(),
        Err(_) => return Some(u32::MAX),
    };
    (uid != 0 && uid != rustix::process::geteuid().as_raw()).then_some(uid)
}

async fn answer(stream: Async<UnixStream>, state: &Arc<ControlState>) -> io::Result<()> {
    let mut reader = BufReader::new((&stream).take(MAX_REQUEST));
    let mut line = String::new();
    let read = async { reader.read_line(&mut line).await.map(Some) };
    let late = async {
        Timer::after(REQUEST_TIMEOUT).await;
        Ok(None)
    };
    // No line end within the limit or the time: dropped, never run cut short.
    if future::or(read, late).await?.is_none() || !line.ends_with('\n') {
        return Ok(());
    }
    let stranger = stranger(&stream);
    if let Some(uid) = stranger {
        log::line(Event::Connection)
            .field("role", "control")
            .text(
                "error",
                format_args!("refused a connection from user id {uid}: not the server's user"),
            )
            .write();
    }
    let reply = match line.trim() {
        _ if let Some(uid) = stranger => serde_json::to_string(&serde_json::json!({
            "error": format!("user id {uid} may not use this server's control socket (only its own user and root may)")
        })),
        "queue-list" => {
            let store = state.store.clone();
            let entries = smol::unblock(move || queue_list(&store)).await;
            match entries {
                Ok(entries) => serde_json::to_string(&entries),
                Err(e) => serde_json::to_string(&serde_json::json!({ "error": e })),
            }
        }
        "status" => {
            let store = state.store.clone();
            let entries = smol::unblock(move || queue_list(&store))
                .await
                .unwrap_or_default();
            serde_json::to_string(&status(state, &entries))
        }
        retry if retry.starts_with("queue-retry ") => {
            let which = Selection::parse(&retry["queue-retry ".len()..]);
            let state2 = state.clone();
            let done = smol::unblock(move || match which {
                Some(which) => self::retry(&state2, &which),
                None => Err("want an id, `all` or `domain <domain>`".to_string()),
            })
            .await;
            match done {
                Ok(ids) => serde_json::to_string(&serde_json::json!({ "retried": ids })),
                Err(e) => serde_json::to_string(&serde_json::json!({ "error": e })),
            }
        }
        show if show.starts_with("queue-show ") => {
            let id = show["queue-show ".len()..].trim().to_string();
            let store = state.store.clone();
            match smol::unblock(move || self::show(&store, &id)).await {
                Ok(shown) => serde_json::to_string(&shown),
                Err(e) => serde_json::to_string(&serde_json::json!({ "error": e })),
            }
        }
        hold if hold.starts_with("queue-hold ") || hold.starts_with("queue-release ") => {
            let (verb, id) = hold.split_once(' ').unwrap_or((hold, ""));
            let (hold, id) = (verb == "queue-hold", id.trim().to_string());
            let state2 = state.clone();
            match smol::unblock(move || self::hold(&state2, &id, hold)).await {
                Ok(id) => serde_json::to_string(&if verb == "queue-hold" {
                    serde_json::json!({ "held": id })
                } else {
                    serde_json::json!({ "released": id })
                }),
                Err(e) => serde_json::to_string(&serde_json::json!({ "error": e })),
            }
        }
        history if history.starts_with("queue-history ") => {
            let id = history["queue-history ".len()..]
                .trim()
                .to_ascii_uppercase();
            let lines = crate::log::history::of(&id);
            serde_json::to_string(&serde_json::json!({ "id": id, "lines": lines }))
        }
        remove if remove.starts_with("queue-remove") => {
            let (silent, id) = match remove.split_once(' ') {
                Some(("queue-remove", id)) => (false, id.trim().to_string()),
                Some(("queue-remove-silent", id)) => (true, id.trim().to_string()),
                _ => (false, String::new()),
            };
            let state2 = state.clone();
            match smol::unblock(move || self::remove(&state2, &id, silent)).await {
                Ok((id, bounced)) => {
                    serde_json::to_string(&serde_json::json!({ "removed": id, "bounced": bounced }))
                }
                Err(e) => serde_json::to_string(&serde_json::json!({ "error": e })),
            }
        }
        other => serde_json::to_string(&serde_json::json!({
            "error": format!("unknown command {other:?} (queue-list, queue-retry, status)")
        })),
    }
    .unwrap_or_else(|_| "{\"error\":\"cannot encode the answer\"}".into());
    let mut stream = stream;
    stream.write_all(reply.as_bytes()).await?;
    stream.write_all(b"\n").await?;
    stream.flush().await
}

/// Every queued message, oldest first. Blocking.
pub fn queue_list(store: &Store) -> Result<Vec<QueueEntry>, String> {
    let now = crate::queue::timers::unix_now();
    let mut entries = Vec::new();
    for id in store.ids().map_err(|e| e.to_string())? {
        if let Some(envelope) = store.envelope(&id).map_err(|e| e.to_string())? {
            entries.push(entry_of(&id, &envelope, now));
        }
    }
    entries.sort_by(|a, b| b.age_seconds.cmp(&a.age_seconds).then(a.id.cmp(&b.id)));
    Ok(entries)
}

/// How `queue-list` shows message `id` at `now`.
fn entry_of(id: &QueueId, envelope: &Envelope, now: u64) -> QueueEntry {
    let recipients = envelope
        .recipients
        .iter()
        .map(|r| QueueRecipient {
            to: format!("<{}>", r.address),
            state: match r.state {
                RecipientState::Pending if r.next_attempt == HELD => "held",
                RecipientState::Pending => "pending",
                RecipientState::Delivered => "delivered",
                RecipientState::Failed => "failed",
            }
            .into(),
            attempts: r.attempts,
            next_attempt: (r.state == RecipientState::Pending
                && r.next_attempt > 0
                && r.next_attempt != HELD)
                .then(|| rfc3339(r.next_attempt)),
            last_error: r.last_error.clone(),
        })
        .collect();
    QueueEntry {
        id: id.to_string(),
        received: rfc3339(envelope.received_at),
        age_seconds: now.saturating_sub(envelope.received_at),
        from: envelope.from.to_string(),
        size: envelope.size,
        recipients,
    }
}

/// A queue id as the operator typed it (either case).
fn queue_id(id: &str) -> Result<QueueId, String> {
    QueueId::parse(&id.trim().to_ascii_uppercase()).ok_or_else(|| format!("not a queue id: {id:?}"))
}

/// One message's entry and header section. Blocking.
fn show(store: &Store, id: &str) -> Result<Shown, String> {
    use std::io::Read;
    let qid = queue_id(id).map_err(|_| format!("no message {id} in the queue"))?;
    let envelope = store
        .envelope(&qid)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no message {id} in the queue"))?;
    let entry = entry_of(&qid, &envelope, crate::queue::timers::unix_now());
    let mut head = Vec::new();
    let mut body = store
        .body(&qid, envelope.chunks)
        .take(MAX_SHOWN_HEADER as u64);
    body.read_to_end(&mut head).map_err(|e| e.to_string())?;
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |i| i + 2);
    let mut headers = envelope.headers.clone();
    headers.push_str(&String::from_utf8_lossy(&head[..end]));
    let history = crate::log::history::of(&entry.id);
    Ok(Shown {
        entry,
        headers,
        history,
    })
}

/// Takes a message out of the queue: its pending recipients fail with a DSN (through the
/// same recording as a delivery's), or, `silent`, it is removed as it is. Returns its id and
/// how many recipients the DSN is about. Blocking.
fn remove(state: &ControlState, id: &str, silent: bool) -> Result<(String, usize), String> {
    let qid = queue_id(id)?;
    // No worker holds it from here on: a delivery under way could otherwise end as both
    // delivered and bounced.
    let _kept = state.dispatch.removal(&qid, REMOVAL_WAIT).ok_or_else(|| {
        format!(
            "{qid} is being delivered right now and the attempt is still going after {} s; \
             nothing was removed (try again once `postern queue show {qid}` shows its result)",
            REMOVAL_WAIT.as_secs()
        )
    })?;
    let envelope = state
        .store
        .envelope(&qid)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no message {id} in the queue"))?;
    if silent {
        state
            .store
            .remove(&qid, envelope.chunks)
            .map_err(|e| e.to_string())?;
        state.committer.sync_blocking().map_err(|e| e.to_string())?;
        log::line(Event::Removed)
            .field("id", &qid)
            .text("msg", "removed by the operator, without a DSN")
            .write();
        return Ok((qid.to_string(), 0));
    }
    let schedule = Schedule {
        retry: proto_core::mail::RetryPolicy::default(),
        delay_warning: None,
    };
    let backlog = Backlog::default();
    let recorder = Recorder {
        store: &state.store,
        committer: &state.committer,
        bouncer: &state.bouncer,
        dispatch: &state.dispatch,
        backlog: &backlog,
    };
    let now = crate::queue::timers::unix_now();
    let mut bounced = 0;
    for owner in [Owner::Local, Owner::Remote] {
        let fates: Vec<(usize, Fate)> = envelope
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == RecipientState::Pending && owner.owns(&r.address))
            .filter_map(|(i, r)| {
                let to = r.address.forward_path()?;
                // RFC 3463 5.0.0: other or undefined status; the text says what happened.
                Some((
                    i,
                    Fate::found(
                        to,
                        DsnAction::Failed,
                        (5, 0, 0),
                        "removed from the queue by the operator",
                    ),
                ))
            })
            .collect();
        if fates.is_empty() {
            continue;
        }
        bounced += fates.len();
        let settled = settle(&qid, &envelope, fates, now, &mut || 0.0, &schedule);
        recorder
            .record(owner, vec![settled])
            .map_err(|e| e.to_string())?;
    }
    if bounced == 0 {
        return Err(format!("no recipient of {id} is pending"));
    }
    Ok((qid.to_string(), bounced))
}

/// Holds (`hold`) or releases a message's pending recipients ([`Store::set_next_attempt`]);
/// a released one is due now. Blocking.
fn hold(state: &ControlState, id: &str, hold: bool) -> Result<String, String> {
    let qid = queue_id(id)?;
    if state
        .store
        .envelope(&qid)
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err(format!("no message {id} in the queue"));
    }
    // Release takes only held recipients; hold takes every pending one.
    let changed = state
        .store
        .set_next_attempt(&qid, if hold { HELD } else { 0 }, |r| {
            hold || r.next_attempt == HELD
        })
        .map_err(|e| e.to_string())?;
    if !changed {
        return Err(format!(
            "no recipient of {id} is {}",
            if hold { "pending" } else { "held" }
        ));
    }
    state.committer.sync_blocking().map_err(|e| e.to_string())?;
    if !hold {
        state.dispatch.both(&qid);
    }
    log::line(Event::Reload)
        .field("id", &qid)
        .text(
            "msg",
            if hold {
                "held by the operator"
            } else {
                "released by the operator"
            },
        )
        .write();
    Ok(qid.to_string())
}

/// Which messages `queue-retry` is about.
enum Selection {
    /// One message.
    Id(String),
    /// Every message.
    All,
    /// The recipients in one domain.
    Domain(String),
}

impl Selection {
    fn parse(text: &str) -> Option<Selection> {
        let text = text.trim();
        match text.split_once(' ') {
            // Compared with the recipients' domains in A-labels.
            Some(("domain", d)) if !d.trim().is_empty() => Some(Selection::Domain(
                proto_core::Domain::parse(d.trim())
                    .ok()
                    .and_then(|d| d.to_ascii().ok())
                    .unwrap_or_else(|| d.trim().to_ascii_lowercase()),
            )),
            None if text == "all" => Some(Selection::All),
            None if !text.is_empty() => Some(Selection::Id(text.to_string())),
            _ => None,
        }
    }

    fn takes(&self, id: &str, address: &Address) -> bool {
        match self {
            Selection::Id(want) => want.eq_ignore_ascii_case(id),
            Selection::All => true,
            Selection::Domain(want) => address.domain() == *want,
        }
    }
}

/// Makes the chosen pending recipients due now ([`Store::set_next_attempt`]: a worker's result
/// recorded meanwhile is kept), synced, then the workers are told. Blocking.
fn retry(state: &ControlState, which: &Selection) -> Result<Vec<String>, String> {
    let mut retried = Vec::new();
    for id in state.store.ids().map_err(|e| e.to_string())? {
        // A held recipient stays held: `queue release` lets it go.
        let changed = state
            .store
            .set_next_attempt(&id, 0, |r| {
                r.next_attempt != HELD && which.takes(id.as_str(), &r.address)
            })
            .map_err(|e| e.to_string())?;
        if changed {
            retried.push(id);
        }
    }
    if let Selection::Id(want) = which
        && retried.is_empty()
    {
        return Err(format!("no message {want} with a recipient pending"));
    }
    state.committer.sync_blocking().map_err(|e| e.to_string())?;
    for id in &retried {
        state.dispatch.both(id);
    }
    log::line(Event::Reload)
        .text(
            "msg",
            format_args!("queue retry: {} messages due now", retried.len()),
        )
        .write();
    Ok(retried.iter().map(ToString::to_string).collect())
}

/// The server's state now, with the queue `entries` (for `status` and the metrics page).
pub fn status(state: &ControlState, entries: &[QueueEntry]) -> Status {
    let roles = [Role::Smtp, Role::Submission, Role::Submissions];
    Status {
        uptime_seconds: state.started.elapsed().map_or(0, |d| d.as_secs()),
        hostname: state.hostname.clone(),
        listeners: state
            .listeners
            .iter()
            .map(|(role, addr)| (role.name().to_string(), addr.to_string()))
            .collect(),
        sessions: roles
            .iter()
            .map(|role| (role.name().to_string(), state.counter.open_on(*role)))
            .collect(),
        queued_messages: entries.len(),
        pending_recipients: entries
            .iter()
            .flat_map(|e| &e.recipients)
            .filter(|r| r.state == "pending")
            .count(),
        oldest_age_seconds: entries.first().map_or(0, |e| e.age_seconds),
        last_hour: crate::log::stats::last_hour()
            .into_iter()
            .map(|(name, n)| (name.to_string(), n))
            .collect(),
        certificate: state
            .certificates
            .current()
            .default_expiry()
            .map(|(chain, at)| {
                (
                    chain.display().to_string(),
                    crate::reception::trace::rfc3339(at),
                )
            }),
    }
}

fn rfc3339(unix: u64) -> String {
    crate::reception::trace::rfc3339(UNIX_EPOCH + Duration::from_secs(unix))
}

/// Asks the server of `data_dir` for `command`: its JSON answer. Blocking (the CLI's side).
pub fn ask(data_dir: &Path, command: &str) -> Result<String, AskError> {
    use std::io::{Read, Write};
    let path = socket_path(data_dir);
    let mut stream = UnixStream::connect(&path).map_err(|source| AskError {
        path: path.clone(),
        source,
    })?;
    let error = |source| AskError {
        path: path.clone(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(error)?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(error)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(error)?;
    Ok(answer)
}

/// The control socket could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot talk to the running server at {}: {source} (is `postern serve` running with this configuration, and are you its user or root?)", path.display())]
pub struct AskError {
    /// The socket.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

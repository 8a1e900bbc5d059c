//! The queue store: accepted messages in a fjall database at `<data_dir>/queue/`.
//!
//! Two keyspaces:
//! - `messages`: queue id (16 ASCII bytes) -> [`Envelope`], encoded by [`Envelope::encode`];
//! - `bodies`: queue id + chunk index (big-endian `u32`) -> one piece of the body as received
//!   (at most [`CHUNK_SIZE`] bytes). Key-value separation keeps these large values out of the
//!   LSM tree's blocks, and a small memtable bounds what a crash recovery replays into memory.
//!
//! The order of writes is what makes a message atomic. A session writes its chunks as they
//! arrive (no fsync), then the envelope, then asks the committer ([`crate::queue::commit`]) for one
//! `fsync` of the journal. fjall's journal is one log for all keyspaces, replayed as a prefix
//! after a crash (a rotation syncs the old journal first), so a recovered envelope always comes
//! with every chunk written before it. Chunks without an envelope belong to a transaction that
//! was never acknowledged: an aborted one removes its own at once; what a crash (or a session
//! cancelled in the middle of a chunk write) leaves, [`Store::sweep`] removes at startup.
//!
//! Every method blocks; call them from a blocking thread (`smol::unblock`), never from the
//! executor.
//!
//! # A failed write
//! fjall poisons its database when a journal write or fsync fails (a full disk, an I/O
//! error): every later write fails until it is opened again. The store notices the poisoning
//! on the write that failed, closes the database (once nobody holds its handles any more) and
//! opens it again on the next use, at most once a second: fjall's recovery keeps the journal's
//! valid prefix, so what was made durable stays, and the server takes mail again by itself
//! once the cause (say, the full disk) is gone. Each opening has a [`Store::generation`]:
//! writes made under one generation and made durable under another may be lost, so whoever
//! makes writes durable compares the generation before and after (the committer and
//! [`crate::queue::settle::Recorder`] do).
//!
//! # The envelope encoding
//! A version byte ([`ENVELOPE_VERSION`]), then the fields in a fixed order: integers
//! big-endian, strings as a `u32` length and UTF-8 bytes, options as a `0`/`1` tag then the
//! value, enums as one tag byte. A decoder refuses versions it does not know; a new version
//! adds fields at the end and keeps decoding the old ones.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};
use proto_core::{Body, ForwardPath, Mailbox, Notify, Ret, ReversePath};

use crate::queue::QueueId;
use crate::queue::ledger::Ledger;

/// The largest body chunk stored under one key.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// The envelope encoding this build writes. Version 1 lacks what version 2 adds at the end:
/// REQUIRETLS, and each recipient's next attempt time and last error.
pub const ENVELOPE_VERSION: u8 = 2;

/// The bodies keyspace's memtable limit: what a crash recovery may replay into memory, and
/// (twice: one memtable being flushed, one being filled) what a large body costs in memory
/// while it is received.
const BODIES_MEMTABLE: u64 = 1024 * 1024;

/// The messages keyspace's memtable limit (fjall's default, 64 MiB, would let envelopes,
/// delivery marks and removals pile up in memory under load).
const MESSAGES_MEMTABLE: u64 = 2 * 1024 * 1024;

/// fjall's block cache (default 32 MiB). Envelopes are read back soon after they are written,
/// mostly from the memtable; a small cache is enough.
const CACHE_SIZE: u64 = 2 * 1024 * 1024;

/// A problem with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// fjall failed (I/O, or a poisoned database after a failed fsync).
    #[error("queue store: {}", fjall_text(.0))]
    Fjall(#[from] fjall::Error),
    /// The database is closed after a failed write and could not be opened again yet.
    #[error("queue store unavailable after a failed write: {0}")]
    Unavailable(Arc<str>),
    /// The database was opened again between some writes and the fsync meant to make them
    /// durable: those writes may be lost, so they are not acknowledged.
    #[error("queue store was reopened after a failed write; the writes are not durable")]
    Reopened,
    /// fjall panicked while opening the database (it asserts on some damaged files).
    #[error("queue store: fjall stopped on a damaged file: {0}")]
    Panicked(String),
    /// A record could not be decoded.
    #[error("queue store: bad record for {id}: {why}")]
    Corrupt {
        /// The queue id, or the key as text.
        id: String,
        /// What was wrong.
        why: String,
    },
}

/// A queued recipient that is no address (a local user or alias stored in a form that does
/// not parse): it cannot be put in an SMTP or LMTP transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not an address")]
pub struct NotAnAddress(pub String);

/// Why a stored envelope could not be read: what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// fjall's error in words: an I/O error as the system says it ("No space left on device (os
/// error 28)"), not fjall's debug form.
fn fjall_text(e: &fjall::Error) -> String {
    match e {
        fjall::Error::Io(io) | fjall::Error::Storage(fjall::LsmError::Io(io)) => io.to_string(),
        fjall::Error::Poisoned => "poisoned by an earlier failed write".into(),
        other => other.to_string(),
    }
}

impl StoreError {
    /// Whether the error says that the store's files are damaged (checksums that do not
    /// match, a truncated, missing or unreadable file, a journal that does not replay), as
    /// opposed to a store that cannot be used for now (locked by another process, a full
    /// disk, no permission, a read-only file system) or written by another version.
    /// Only damage is worth moving the store aside for ([`crate::queue::recovery`]).
    pub fn is_damage(&self) -> bool {
        /// I/O errors that mean a file is shorter or other than it should be.
        fn io_damage(e: &io::Error) -> bool {
            matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::NotFound
            )
        }
        fn lsm_damage(e: &fjall::LsmError) -> bool {
            match e {
                fjall::LsmError::Io(e) => io_damage(e),
                fjall::LsmError::InvalidVersion(_) => false,
                // Unrecoverable (a table or blob file missing or truncated), checksum
                // mismatches, bad tags, trailers, headers, UTF-8, decompression.
                _ => true,
            }
        }
        match self {
            StoreError::Fjall(e) => match e {
                fjall::Error::Io(e) => io_damage(e),
                fjall::Error::Storage(e) => lsm_damage(e),
                fjall::Error::JournalRecovery(_)
                | fjall::Error::Decompress(_)
                | fjall::Error::InvalidTrailer
                | fjall::Error::InvalidTag(_)
                | fjall::Error::Unrecoverable => true,
                _ => false,
            },
            StoreError::Panicked(_) | StoreError::Corrupt { .. } => true,
            StoreError::Unavailable(_) | StoreError::Reopened => false,
        }
    }

    /// Whether another process holds the database open.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Fjall(fjall::Error::Locked))
    }

    /// Whether the cause is a missing permission or a read-only file system.
    pub fn is_not_permitted(&self) -> bool {
        fn denied(e: &io::Error) -> bool {
            e.kind() == io::ErrorKind::PermissionDenied
                || e.kind() == io::ErrorKind::ReadOnlyFilesystem
        }
        match self {
            StoreError::Fjall(fjall::Error::Io(e)) => denied(e),
            StoreError::Fjall(fjall::Error::Storage(fjall::LsmError::Io(e))) => denied(e),
            _ => false,
        }
    }

    /// Whether the cause is a full disk or an exhausted quota (ENOSPC, EDQUOT), as far as
    /// the error says: fjall reports the I/O error on the write that fails, and only
    /// "poisoned" afterwards (see [`crate::files::free_space`] for the check that does not
    /// depend on it).
    pub fn is_disk_full(&self) -> bool {
        fn full(e: &io::Error) -> bool {
            matches!(e.raw_os_error(), Some(28 | 122)) || e.kind() == io::ErrorKind::StorageFull
        }
        match self {
            StoreError::Fjall(fjall::Error::Io(e)) => full(e),
            StoreError::Fjall(fjall::Error::Storage(fjall::LsmError::Io(e))) => full(e),
            _ => false,
        }
    }
}

/// The open store. Cheap to clone (handles are reference-counted).
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// What every clone of a [`Store`] shares.
struct Shared {
    /// The database directory.
    dir: PathBuf,
    /// The open database, `None` once closed after a failed write (until opened again).
    open: RwLock<Option<Handles>>,
    /// Bumped each time the database is opened again.
    generation: AtomicU64,
    /// When the database was last opened, or an opening last tried: at most one try a second.
    last_try: Mutex<Option<Instant>>,
    /// Why the last opening failed.
    last_error: Mutex<Option<Arc<str>>>,
    /// Whether the last write that failed ran into a full disk (cleared by one that works).
    disk_full: std::sync::atomic::AtomicBool,
    /// Tests: every write fails as on a full disk ([`Store::fail_writes`]).
    fail_writes: std::sync::atomic::AtomicBool,
    /// Held while an envelope is read, changed and written back ([`Store::apply`]), so two
    /// workers changing different recipients of one message never lose each other's change.
    update: Mutex<()>,
    /// Where acknowledgements and removals are recorded, once attached.
    ledger: std::sync::OnceLock<Ledger>,
    /// New envelopes written since the last fsync, with the generation they were written in:
    /// the next [`Store::sync`] of that generation records them in the ledger.
    fresh: Mutex<Vec<(u64, QueueId)>>,
}

/// One opening of the database.
#[derive(Clone)]
struct Handles {
    db: Database,
    messages: Keyspace,
    bodies: Keyspace,
    /// The generation this opening is.
    generation: u64,
}

/// How long after a failed opening the next one may be tried.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// The [`Recipient::next_attempt`] of a recipient the operator holds (`postern queue hold`):
/// never due until released; no timer is set for it.
pub const HELD: u64 = u64::MAX;

/// What a delivery's `Received:` field may add to a message, at most: the SIZE declared to a
/// next hop counts it.
pub const RECEIVED_ALLOWANCE: u64 = 512;
/// Everything about a queued message except its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// MAIL's reverse path (stored as written in the protocol: `<a@b>` or `<>`).
    pub from: ReversePath,
    /// MAIL's `SMTPUTF8`.
    pub smtputf8: bool,
    /// MAIL's `BODY=`.
    pub body: Option<Body>,
    /// MAIL's `RET=` (RFC 3461).
    pub ret: Option<Ret>,
    /// MAIL's `ENVID=` (RFC 3461), xtext-decoded.
    pub envid: Option<String>,
    /// MAIL's `REQUIRETLS` (RFC 8689): relay only over verified TLS.
    pub requiretls: bool,
    /// Header fields added on reception, each ending in CRLF, put on top of the stored
    /// message (below the trace fields of each delivery): `Authentication-Results`,
    /// `Received-SPF`, `DKIM-Signature`, ARC sets. Empty when there are none.
    pub headers: String,
    /// When the message was accepted, in seconds since the Unix epoch.
    pub received_at: u64,
    /// What the `Received:` field says about the connection.
    pub trace: TraceRecord,
    /// The body's size in bytes.
    pub size: u64,
    /// How many chunks hold the body.
    pub chunks: u32,
    /// The recipients, each with its own state.
    pub recipients: Vec<Recipient>,
}

/// The connection facts a `Received:` field is built from at delivery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceRecord {
    /// The EHLO/HELO name.
    pub helo: String,
    /// The client's address literal.
    pub client: String,
    /// Whether the client used EHLO.
    pub esmtp: bool,
    /// TLS version and cipher, when TLS was active.
    pub tls: Option<(String, String)>,
    /// Whether the client authenticated.
    pub authenticated: bool,
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Where it goes.
    pub address: Address,
    /// RCPT's `ORCPT=`: address type and address (RFC 3461).
    pub orcpt: Option<(String, String)>,
    /// RCPT's `NOTIFY=` (RFC 3461).
    pub notify: Option<Notify>,
    /// How far delivery got.
    pub state: RecipientState,
    /// Delivery attempts that failed so far.
    pub attempts: u32,
    /// When to try next, in seconds since the Unix epoch (0: as soon as possible).
    pub next_attempt: u64,
    /// What the last failed attempt ran into, for the queue listing and the bounce.
    pub last_error: Option<String>,
    /// The reverse path to use for this recipient instead of the message's: the SRS address
    /// of a forwarded copy. `None`: the message's own.
    pub sender: Option<ReversePath>,
    /// Whether the sender was told that delivery is late (a delay warning went out).
    pub delay_warned: bool,
}

impl Recipient {
    /// A pending recipient, never tried.
    pub fn new(address: Address) -> Recipient {
        Recipient {
            address,
            orcpt: None,
            notify: None,
            state: RecipientState::Pending,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            sender: None,
            delay_warned: false,
        }
    }
}

/// Which worker a change comes from: each owns the recipients of one kind and changes only
/// those ([`Store::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The local delivery workers: [`Address::Local`] recipients.
    Local,
    /// The outbound workers: [`Address::Remote`] recipients.
    Remote,
}

impl Owner {
    /// Whether this owner delivers to `address`.
    pub fn owns(self, address: &Address) -> bool {
        matches!(
            (self, address),
            (Owner::Local, Address::Local { .. } | Address::Pipe { .. })
                | (Owner::Remote, Address::Remote(_))
        )
    }
}

/// What [`Store::apply`] left of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The message was not in the store (delivered and removed earlier).
    Gone,
    /// No recipient is pending any more: the message was removed.
    Removed,
    /// Recipients are still pending; the earliest next attempt of the caller's own, if any
    /// of them is pending.
    Pending(Option<u64>),
}

/// A recipient's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A mailbox of ours: delivered to `<mail_dir>/<domain>/<user>/`.
    Local {
        /// The domain (A-label form, lower case).
        domain: String,
        /// The user (lower case).
        user: String,
    },
    /// A mailbox elsewhere: outbound delivery.
    Remote(Mailbox),
    /// A command the message is piped to (a `| command` alias): local delivery.
    Pipe {
        /// The command line as the aliases file wrote it.
        command: String,
        /// The alias it belongs to (`user@domain`).
        alias: String,
    },
}

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientState {
    /// Not delivered yet.
    Pending,
    /// Delivered.
    Delivered,
    /// Given up on.
    Failed,
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovering from a crash if needed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let handles = Handles::open(dir, 0)?;
        Ok(Store {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                open: RwLock::new(Some(handles)),
                generation: AtomicU64::new(0),
                last_try: Mutex::new(None),
                last_error: Mutex::new(None),
                disk_full: std::sync::atomic::AtomicBool::new(false),
                fail_writes: std::sync::atomic::AtomicBool::new(false),
                update: Mutex::new(()),
                ledger: std::sync::OnceLock::new(),
                fresh: Mutex::new(Vec::new()),
            }),
        })
    }

    /// From now on, records durable envelopes and removals in `ledger`
    /// ([`crate::queue::ledger`]). A second ledger is ignored.
    pub fn attach_ledger(&self, ledger: Ledger) {
        let _ = self.shared.ledger.set(ledger);
    }

    /// Notes new envelopes written under `generation`, for the ledger.
    fn note_fresh(&self, generation: u64, ids: impl IntoIterator<Item = QueueId>) {
        if self.shared.ledger.get().is_some() {
            self.shared
                .fresh
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(ids.into_iter().map(|id| (generation, id)));
        }
    }

    /// Records in the ledger that `ids` left the queue.
    fn note_removed(&self, ids: &[QueueId]) {
        if let Some(ledger) = self.shared.ledger.get() {
            ledger.record('-', ids);
        }
    }

    /// Which opening of the database is in use: it changes when the store is opened again
    /// after a failed write (see the module doc).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Tests: from now on every write fails as on a full disk (`on`), or works again. The
    /// store layer that fails on demand, for the fault tests.
    #[doc(hidden)]
    pub fn fail_writes(&self, on: bool) {
        self.shared.fail_writes.store(on, Ordering::Release);
    }

    /// The handles for a write: [`Store::handles`], or the full disk [`Store::fail_writes`]
    /// asks for.
    fn for_write(&self) -> Result<Handles, StoreError> {
        if self.shared.fail_writes.load(Ordering::Acquire) {
            self.shared.disk_full.store(true, Ordering::Release);
            return Err(StoreError::Fjall(fjall::Error::Io(
                io::Error::from_raw_os_error(28),
            )));
        }
        self.handles()
    }

    /// Whether the last write that failed found the disk full, and no write has worked since.
    pub fn disk_full(&self) -> bool {
        self.shared.disk_full.load(Ordering::Acquire)
    }

    /// Whether the database is closed after a failed write, waiting to be opened again.
    pub fn is_closed(&self) -> bool {
        self.shared
            .open
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// The open database's handles, opening it again if it was closed after a failed write.
    fn handles(&self) -> Result<Handles, StoreError> {
        if let Some(h) = &*self
            .shared
            .open
            .read()
            .unwrap_or_else(PoisonError::into_inner)
        {
            return Ok(h.clone());
        }
        let mut open = self
            .shared
            .open
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = &*open {
            return Ok(h.clone());
        }
        let mut last_try = self
            .shared
            .last_try
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut last_error = self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last_try.is_some_and(|t| t.elapsed() < REOPEN_INTERVAL) {
            let why = last_error.clone().unwrap_or_else(|| "closed".into());
            return Err(StoreError::Unavailable(why));
        }
        *last_try = Some(Instant::now());
        let generation = self.generation() + 1;
        match Handles::open(&self.shared.dir, generation) {
            Ok(h) => {
                self.shared.generation.store(generation, Ordering::Release);
                *last_error = None;
                crate::log::line(crate::log::Event::Store)
                    .text(
                        "msg",
                        format_args!("reopened the queue store after a failed write"),
                    )
                    .write();
                *open = Some(h.clone());
                Ok(h)
            }
            Err(e) => {
                // Locked: a reader still holds the old opening; anything else is logged.
                let why: Arc<str> = e.to_string().into();
                if !matches!(e, StoreError::Fjall(fjall::Error::Locked)) {
                    crate::log::line(crate::log::Event::Store)
                        .text(
                            "problem",
                            format_args!("cannot open the queue store again: {why}"),
                        )
                        .write();
                }
                *last_error = Some(why.clone());
                Err(StoreError::Unavailable(why))
            }
        }
    }

    /// Passes on `result` of a write made with `h`; when the write failed and left the
    /// database poisoned, closes it so that the next use opens it again.
    fn wrote<T>(&self, h: &Handles, result: Result<T, fjall::Error>) -> Result<T, StoreError> {
        let e = match result {
            Ok(v) => {
                self.shared.disk_full.store(false, Ordering::Release);
                return Ok(v);
            }
            Err(e) => StoreError::from(e),
        };
        if e.is_disk_full() {
            self.shared.disk_full.store(true, Ordering::Release);
        }
        let poisoned = matches!(e, StoreError::Fjall(fjall::Error::Poisoned))
            || matches!(
                h.db.persist(PersistMode::Buffer),
                Err(fjall::Error::Poisoned)
            );
        if poisoned {
            let mut open = self
                .shared
                .open
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if open.as_ref().is_some_and(|o| o.generation == h.generation) {
                *open = None;
                crate::log::line(crate::log::Event::Store)
                    .text(
                        "problem",
                        format_args!(
                            "a write failed ({e}); the queue store is closed and opened again"
                        ),
                    )
                    .write();
            }
        }
        Err(e)
    }
}

impl Handles {
    /// Opens the database in `dir`.
    fn open(dir: &Path, generation: u64) -> Result<Handles, StoreError> {
        // Four background workers (fjall's default here is one per core, two): memtable
        // rotations wait in the same queue as flushes and compactions, and while they wait
        // the active memtable grows past its limit. With two workers busy compacting after a
        // load, a 100 MB body grew it by ~25 MB.
        let db = Database::builder(dir)
            .cache_size(CACHE_SIZE)
            .worker_threads(4)
            .open()?;
        let messages = db.keyspace("messages", || {
            KeyspaceCreateOptions::default().max_memtable_size(MESSAGES_MEMTABLE)
        })?;
        let bodies = db.keyspace("bodies", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(BODIES_MEMTABLE)
                .with_kv_separation(Some(KvSeparationOptions::default()))
        })?;
        Ok(Handles {
            db,
            messages,
            bodies,
            generation,
        })
    }
}

impl Store {
    /// Writes chunk `index` of `id`'s body (not synced).
    pub fn put_chunk(&self, id: &QueueId, index: u32, chunk: &[u8]) -> Result<(), StoreError> {
        let h = self.for_write()?;
        self.wrote(&h, h.bodies.insert(chunk_key(id, index), chunk))
    }

    /// Writes `id`'s envelope (not synced: ask the committer).
    pub fn put_envelope(&self, id: &QueueId, envelope: &Envelope) -> Result<(), StoreError> {
        let h = self.for_write()?;
        self.wrote(&h, h.messages.insert(id.as_str(), envelope.encode()))?;
        self.note_fresh(h.generation, [id.clone()]);
        Ok(())
    }

    /// `id`'s envelope, if it is queued.
    pub fn envelope(&self, id: &QueueId) -> Result<Option<Envelope>, StoreError> {
        let h = self.handles()?;
        h.envelope(id)
    }

    /// A reader over `id`'s body, fetching one chunk at a time.
    pub fn body(&self, id: &QueueId, chunks: u32) -> BodyReader {
        BodyReader {
            handles: self.handles(),
            id: id.clone(),
            chunks,
            next: 0,
            current: fjall::Slice::from(&b""[..]),
            offset: 0,
        }
    }

    /// Removes the first `chunks` chunks of `id` (an abandoned transaction; not synced).
    pub fn discard_chunks(&self, id: &QueueId, chunks: u32) -> Result<(), StoreError> {
        let h = self.for_write()?;
        let mut batch = h.db.batch();
        for i in 0..chunks {
            batch.remove(&h.bodies, chunk_key(id, i));
        }
        self.wrote(&h, batch.commit())
    }

    /// Removes a message, envelope and body, in one atomic batch (not synced: if the removal
    /// is lost in a crash, the message comes back with no pending recipient and is removed
    /// again).
    pub fn remove(&self, id: &QueueId, chunks: u32) -> Result<(), StoreError> {
        let h = self.for_write()?;
        let mut batch = h.db.batch();
        batch.remove(&h.messages, id.as_str());
        for i in 0..chunks {
            batch.remove(&h.bodies, chunk_key(id, i));
        }
        // Recorded before the removal is written: a crash in between leaves a message the
        // ledger calls finished (a loss of it would go unnoticed), never a delivered message
        // reported lost.
        self.note_removed(std::slice::from_ref(id));
        self.wrote(&h, batch.commit())
    }

    /// Records what a worker did, in one atomic batch (not synced: ask the committer).
    ///
    /// For each `(id, envelope)` in `changes`, the stored envelope is read again and the
    /// state, attempts, next attempt and last error of the recipients `owner` owns are copied
    /// from `envelope` (the others are left as stored: another worker may have changed
    /// them). A recipient held meanwhile (`postern queue hold`) that is still pending stays
    /// held. A message with no recipient pending any more is removed, envelope and body.
    /// `new` messages (bounces; their chunks already written) are added in the same batch, so
    /// a recipient is never marked failed without its bounce being queued.
    pub fn apply(
        &self,
        changes: &[(QueueId, Envelope)],
        owner: Owner,
        new: &[(QueueId, Envelope)],
    ) -> Result<Vec<Applied>, StoreError> {
        let _guard = self.updating();
        let h = self.for_write()?;
        let mut batch = h.db.batch();
        let mut applied = Vec::with_capacity(changes.len());
        let mut removed = Vec::new();
        for (id, changed) in changes {
            let Some(mut stored) = h.envelope(id)? else {
                applied.push(Applied::Gone);
                continue;
            };
            for (theirs, ours) in stored.recipients.iter_mut().zip(&changed.recipients) {
                if owner.owns(&theirs.address) && theirs.address == ours.address {
                    // A hold made while the worker tried it outlasts the worker's deferral.
                    let held = theirs.next_attempt == HELD && ours.state == RecipientState::Pending;
                    theirs.state = ours.state;
                    theirs.attempts = ours.attempts;
                    if !held {
                        theirs.next_attempt = ours.next_attempt;
                    }
                    theirs.last_error.clone_from(&ours.last_error);
                    theirs.delay_warned = ours.delay_warned;
                }
            }
            if stored.pending() {
                batch.insert(&h.messages, id.as_str(), stored.encode());
                applied.push(Applied::Pending(stored.next_attempt(owner)));
            } else {
                batch.remove(&h.messages, id.as_str());
                for i in 0..stored.chunks {
                    batch.remove(&h.bodies, chunk_key(id, i));
                }
                removed.push(id.clone());
                applied.push(Applied::Removed);
            }
        }
        for (id, envelope) in new {
            batch.insert(&h.messages, id.as_str(), envelope.encode());
        }
        // Before the removals are written, as in [`Store::remove`].
        self.note_removed(&removed);
        self.wrote(&h, batch.commit())?;
        self.note_fresh(h.generation, new.iter().map(|(id, _)| id.clone()));
        Ok(applied)
    }

    /// The lock under which recorded results and the operator's changes read and write a
    /// stored envelope: neither overwrites the other with an older copy.
    fn updating(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared
            .update
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the next attempt of the recipients of `id` that are pending in the stored copy
    /// and that `chosen` picks (`postern queue retry`, `hold`, `release`), under the same lock
    /// as [`Store::apply`]: a worker's result recorded meanwhile is kept, never overwritten
    /// with an older copy. Returns whether `chosen` picked any pending recipient (one already
    /// at `next` included); only a change is written (not synced: ask the committer).
    pub fn set_next_attempt(
        &self,
        id: &QueueId,
        next: u64,
        chosen: impl Fn(&Recipient) -> bool,
    ) -> Result<bool, StoreError> {
        let _guard = self.updating();
        let h = self.for_write()?;
        let Some(mut stored) = h.envelope(id)? else {
            return Ok(false);
        };
        let (mut matched, mut changed) = (false, false);
        for r in &mut stored.recipients {
            if r.state == RecipientState::Pending && chosen(r) {
                matched = true;
                changed |= r.next_attempt != next;
                r.next_attempt = next;
            }
        }
        if changed {
            let mut batch = h.db.batch();
            batch.insert(&h.messages, id.as_str(), stored.encode());
            self.wrote(&h, batch.commit())?;
        }
        Ok(matched)
    }

    /// Makes every write so far durable: one fsync of the journal. The new envelopes written
    /// before it (in this opening of the database) are then recorded in the ledger.
    pub fn sync(&self) -> Result<(), StoreError> {
        let h = self.for_write()?;
        let fresh = match self.shared.ledger.get() {
            Some(_) => std::mem::take(
                &mut *self
                    .shared
                    .fresh
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            ),
            None => Vec::new(),
        };
        self.wrote(&h, h.db.persist(PersistMode::SyncAll))?;
        if let Some(ledger) = self.shared.ledger.get() {
            // Writes of an earlier opening may be lost: never claim them.
            let durable: Vec<QueueId> = fresh
                .into_iter()
                .filter(|(g, _)| *g == h.generation)
                .map(|(_, id)| id)
                .collect();
            ledger.record('+', &durable);
        }
        Ok(())
    }

    /// Every queued message's id, in id (= time) order.
    pub fn ids(&self) -> Result<Vec<QueueId>, StoreError> {
        let h = self.handles()?;
        let mut ids = Vec::new();
        for guard in h.messages.iter() {
            let key = guard.key()?;
            ids.push(parse_id(&key)?);
        }
        Ok(ids)
    }

    /// Removes body chunks that have no envelope (transactions that were never acknowledged).
    /// Run at startup, before sessions write. Returns how many messages' chunks went.
    pub fn sweep(&self) -> Result<usize, StoreError> {
        let h = self.for_write()?;
        let mut orphans: Vec<(QueueId, u32)> = Vec::new();
        for guard in h.bodies.iter() {
            let key = guard.key()?;
            if key.len() != 20 {
                return Err(StoreError::Corrupt {
                    id: String::from_utf8_lossy(&key).into_owned(),
                    why: "a body key is not 20 bytes".into(),
                });
            }
            let id = parse_id(&key[..16])?;
            if let Some((last, n)) = orphans.last_mut()
                && *last == id
            {
                *n += 1;
                continue;
            }
            if !h.messages.contains_key(id.as_str())? {
                orphans.push((id, 1));
            }
        }
        let count = orphans.len();
        let mut batch = h.db.batch();
        for (id, _) in &orphans {
            // Chunk indexes are dense from 0, but a crash may have lost some: remove by prefix.
            for guard in h.bodies.prefix(id.as_str()) {
                batch.remove(&h.bodies, guard.key()?);
            }
        }
        self.wrote(&h, batch.commit())?;
        self.sync()?;
        Ok(count)
    }
}

impl Handles {
    /// `id`'s envelope in this opening, if it is queued.
    fn envelope(&self, id: &QueueId) -> Result<Option<Envelope>, StoreError> {
        match self.messages.get(id.as_str())? {
            Some(bytes) => Envelope::decode(&bytes)
                .map(Some)
                .map_err(|why| StoreError::Corrupt {
                    id: id.to_string(),
                    why: why.to_string(),
                }),
            None => Ok(None),
        }
    }
}

/// Raw access for the salvage of a damaged store ([`crate::queue::recovery`]): keys as
/// stored, routed by their shape (16 bytes: an envelope; 20: a body chunk).
impl Store {
    /// Every key of the envelopes (`bodies` false) or of the body chunks, in order; and why
    /// the listing stopped early, if it did (a damaged table).
    pub(crate) fn salvage_keys(&self, bodies: bool) -> (Vec<Vec<u8>>, Option<StoreError>) {
        let h = match self.handles() {
            Ok(h) => h,
            Err(e) => return (Vec::new(), Some(e)),
        };
        let ks = if bodies { &h.bodies } else { &h.messages };
        let mut keys = Vec::new();
        for guard in ks.iter() {
            match guard.key() {
                Ok(k) => keys.push(k.to_vec()),
                Err(e) => return (keys, Some(e.into())),
            }
        }
        (keys, None)
    }

    /// The value stored under `key` (see [`Store::salvage_keys`]).
    pub(crate) fn salvage_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let h = self.handles()?;
        let ks = if key.len() == 20 {
            &h.bodies
        } else {
            &h.messages
        };
        Ok(ks.get(key)?.map(|v| v.to_vec()))
    }

    /// Writes `value` under `key`, or removes the key (`None`); keys of another shape are
    /// ignored. Not synced.
    pub(crate) fn salvage_put(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        let h = self.for_write()?;
        let ks = match key.len() {
            16 => &h.messages,
            20 => &h.bodies,
            _ => return Ok(()),
        };
        let result = match value {
            Some(v) => ks.insert(key, v),
            None => ks.remove(key),
        };
        self.wrote(&h, result)
    }

    /// Removes `id`'s envelope and every body chunk it has. Not synced.
    pub(crate) fn purge(&self, id: &QueueId) -> Result<(), StoreError> {
        let h = self.for_write()?;
        let mut batch = h.db.batch();
        batch.remove(&h.messages, id.as_str());
        for guard in h.bodies.prefix(id.as_str()) {
            batch.remove(&h.bodies, guard.key()?);
        }
        self.wrote(&h, batch.commit())
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Reads a stored body chunk by chunk: at most one chunk in memory.
pub struct BodyReader {
    /// The opening the body is read from (it keeps that opening alive while reading).
    handles: Result<Handles, StoreError>,
    id: QueueId,
    chunks: u32,
    next: u32,
    current: fjall::Slice,
    offset: usize,
}

impl std::fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyReader")
            .field("id", &self.id)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            if self.next == self.chunks {
                return Ok(0);
            }
            let key = chunk_key(&self.id, self.next);
            let bodies = match &self.handles {
                Ok(h) => &h.bodies,
                Err(e) => return Err(io::Error::other(e.to_string())),
            };
            self.current = bodies.get(key).map_err(io::Error::other)?.ok_or_else(|| {
                io::Error::other(format!("chunk {} of {} is missing", self.next, self.id))
            })?;
            self.offset = 0;
            self.next += 1;
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

impl Envelope {
    /// Whether any recipient still waits for delivery.
    pub fn pending(&self) -> bool {
        self.recipients
            .iter()
            .any(|r| r.state == RecipientState::Pending)
    }

    /// The client job that delivers this message to its recipients `indexes`, which share a
    /// reverse path (the first one's own, if it has one, else the message's); MAIL
    /// parameters as received. The error names a local recipient that is no address.
    pub fn mail_job(&self, indexes: &[usize]) -> Result<proto_core::client::MailJob, NotAnAddress> {
        let from = indexes
            .first()
            .and_then(|&i| self.recipients[i].sender.as_ref())
            .unwrap_or(&self.from)
            .clone();
        let mut job = proto_core::client::MailJob::new(from, std::iter::empty());
        for &i in indexes {
            let r = &self.recipients[i];
            let to = r
                .address
                .forward_path()
                .ok_or_else(|| NotAnAddress(r.address.to_string()))?;
            let mut j = proto_core::client::JobRecipient::new(to);
            j.notify = r.notify;
            j.orcpt = r
                .orcpt
                .as_ref()
                .map(|(t, a)| proto_core::OriginalRecipient {
                    addr_type: t.clone(),
                    address: a.clone(),
                });
            job.recipients.push(j);
        }
        // RFC 1870: the size as sent, which adds to the stored body the fields added at
        // reception (signatures, results) and the Received field of the delivery.
        job.size = Some(self.size + self.headers.len() as u64 + RECEIVED_ALLOWANCE);
        job.body = self.body;
        job.smtputf8 = self.smtputf8;
        job.requiretls = self.requiretls;
        job.ret = self.ret;
        job.envid.clone_from(&self.envid);
        Ok(job)
    }

    /// When the message was received, as a time.
    pub fn received_time(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.received_at)
    }

    /// Whether any recipient `owner` delivers to still waits for delivery.
    pub fn pending_for(&self, owner: Owner) -> bool {
        self.recipients
            .iter()
            .any(|r| r.state == RecipientState::Pending && owner.owns(&r.address))
    }

    /// The earliest next attempt among the pending recipients `owner` delivers to.
    pub fn next_attempt(&self, owner: Owner) -> Option<u64> {
        self.recipients
            .iter()
            .filter(|r| r.state == RecipientState::Pending && owner.owns(&r.address))
            .map(|r| r.next_attempt)
            .min()
    }

    /// The stored form (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(256));
        w.u8(ENVELOPE_VERSION);
        w.str(&self.from.to_string());
        w.bool(self.smtputf8);
        w.u8(match self.body {
            None => 0,
            Some(Body::SevenBit) => 1,
            Some(Body::EightBitMime) => 2,
            Some(Body::BinaryMime) => 3,
            // proto-core may add body types; store them as "not given" rather than fail.
            Some(_) => 0,
        });
        w.u8(match self.ret {
            Some(Ret::Full) => 1,
            Some(Ret::Headers) => 2,
            _ => 0,
        });
        w.opt_str(self.envid.as_deref());
        w.u64(self.received_at);
        w.str(&self.trace.helo);
        w.str(&self.trace.client);
        w.bool(self.trace.esmtp);
        match &self.trace.tls {
            Some((version, cipher)) => {
                w.u8(1);
                w.str(version);
                w.str(cipher);
            }
            None => w.u8(0),
        }
        w.bool(self.trace.authenticated);
        w.u64(self.size);
        w.u32(self.chunks);
        w.u32(self.recipients.len() as u32);
        for r in &self.recipients {
            match &r.address {
                Address::Local { domain, user } => {
                    w.u8(1);
                    w.str(domain);
                    w.str(user);
                }
                Address::Remote(a) => {
                    w.u8(2);
                    w.str(&a.to_string());
                }
                Address::Pipe { command, alias } => {
                    w.u8(3);
                    w.str(command);
                    w.str(alias);
                }
            }
            match &r.orcpt {
                Some((t, a)) => {
                    w.u8(1);
                    w.str(t);
                    w.str(a);
                }
                None => w.u8(0),
            }
            match r.notify {
                None => w.u8(0),
                Some(Notify::Never) => w.u8(1),
                Some(Notify::On {
                    success,
                    failure,
                    delay,
                }) => {
                    w.u8(2);
                    w.bool(success);
                    w.bool(failure);
                    w.bool(delay);
                }
                Some(_) => w.u8(0),
            }
            w.u8(match r.state {
                RecipientState::Pending => 0,
                RecipientState::Delivered => 1,
                RecipientState::Failed => 2,
            });
            w.u32(r.attempts);
        }
        // Version 2.
        w.bool(self.requiretls);
        w.str(&self.headers);
        for r in &self.recipients {
            w.u64(r.next_attempt);
            w.opt_str(r.last_error.as_deref());
            w.opt_str(r.sender.as_ref().map(ToString::to_string).as_deref());
            w.bool(r.delay_warned);
        }
        w.0
    }

    /// Decodes [`Envelope::encode`]'s output; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if !(1..=ENVELOPE_VERSION).contains(&version) {
            return Err(DecodeError(format!("unknown envelope version {version}")));
        }
        let from = reverse_path(&r.str()?)?;
        let smtputf8 = r.bool()?;
        let body = match r.u8()? {
            0 => None,
            1 => Some(Body::SevenBit),
            2 => Some(Body::EightBitMime),
            3 => Some(Body::BinaryMime),
            t => return Err(DecodeError(format!("bad BODY tag {t}"))),
        };
        let ret = match r.u8()? {
            0 => None,
            1 => Some(Ret::Full),
            2 => Some(Ret::Headers),
            t => return Err(DecodeError(format!("bad RET tag {t}"))),
        };
        let envid = r.opt_str()?;
        let received_at = r.u64()?;
        let helo = r.str()?;
        let client = r.str()?;
        let esmtp = r.bool()?;
        let tls = match r.u8()? {
            0 => None,
            1 => Some((r.str()?, r.str()?)),
            t => return Err(DecodeError(format!("bad TLS tag {t}"))),
        };
        let authenticated = r.bool()?;
        let size = r.u64()?;
        let chunks = r.u32()?;
        let count = r.u32()?;
        let mut recipients = Vec::new();
        for _ in 0..count {
            let address = match r.u8()? {
                1 => Address::Local {
                    domain: r.str()?,
                    user: r.str()?,
                },
                2 => Address::Remote(mailbox(&r.str()?)?),
                3 => Address::Pipe {
                    command: r.str()?,
                    alias: r.str()?,
                },
                t => return Err(DecodeError(format!("bad address tag {t}"))),
            };
            let orcpt = match r.u8()? {
                0 => None,
                1 => Some((r.str()?, r.str()?)),
                t => return Err(DecodeError(format!("bad ORCPT tag {t}"))),
            };
            let notify = match r.u8()? {
                0 => None,
                1 => Some(Notify::Never),
                2 => Some(Notify::On {
                    success: r.bool()?,
                    failure: r.bool()?,
                    delay: r.bool()?,
                }),
                t => return Err(DecodeError(format!("bad NOTIFY tag {t}"))),
            };
            let state = match r.u8()? {
                0 => RecipientState::Pending,
                1 => RecipientState::Delivered,
                2 => RecipientState::Failed,
                t => return Err(DecodeError(format!("bad state tag {t}"))),
            };
            let attempts = r.u32()?;
            recipients.push(Recipient {
                address,
                orcpt,
                notify,
                state,
                attempts,
                next_attempt: 0,
                last_error: None,
                sender: None,
                delay_warned: false,
            });
        }
        let mut requiretls = false;
        let mut headers = String::new();
        if version >= 2 {
            requiretls = r.bool()?;
            headers = r.str()?;
            for recipient in &mut recipients {
                recipient.next_attempt = r.u64()?;
                recipient.last_error = r.opt_str()?;
                recipient.sender = r.opt_str()?.as_deref().map(reverse_path).transpose()?;
                recipient.delay_warned = r.bool()?;
            }
        }
        if !r.0.is_empty() {
            return Err(DecodeError(format!(
                "{} bytes after the envelope",
                r.0.len()
            )));
        }
        Ok(Envelope {
            from,
            smtputf8,
            body,
            ret,
            envid,
            requiretls,
            headers,
            received_at,
            trace: TraceRecord {
                helo,
                client,
                esmtp,
                tls,
                authenticated,
            },
            size,
            chunks,
            recipients,
        })
    }
}

/// The domain of a mailbox, lower case, A-labels (an address literal as written).
pub fn ascii_domain(mailbox: &Mailbox) -> String {
    let domain = mailbox.domain();
    domain
        .to_ascii()
        .unwrap_or_else(|_| domain.as_str().to_ascii_lowercase())
}

impl Address {
    /// The recipient's domain, lower case ([`ascii_domain`] for a remote one; for a pipe, the
    /// alias's).
    pub fn domain(&self) -> String {
        match self {
            Address::Local { domain, .. } => domain.to_ascii_lowercase(),
            Address::Remote(m) => ascii_domain(m),
            Address::Pipe { alias, .. } => alias
                .rsplit_once('@')
                .map_or_else(String::new, |(_, d)| d.to_ascii_lowercase()),
        }
    }

    /// The forward path this recipient was accepted as (for a pipe: the alias it came from).
    /// `None` only for a local user or alias the store holds in a form that is no address.
    pub fn forward_path(&self) -> Option<ForwardPath> {
        match self {
            Address::Remote(m) => Some(ForwardPath::Mailbox(m.clone())),
            Address::Local { domain, user } => Mailbox::parse(&format!("{user}@{domain}"))
                .ok()
                .map(ForwardPath::Mailbox),
            Address::Pipe { alias, .. } => Mailbox::parse(alias).ok().map(ForwardPath::Mailbox),
        }
    }
}

/// A stored reverse path: the decoder refuses one that does not parse (the message is then
/// reported as damaged and kept), never reads it as `<>`.
fn reverse_path(text: &str) -> Result<ReversePath, DecodeError> {
    ReversePath::parse(text).map_err(|e| DecodeError(format!("bad reverse path {text:?}: {e}")))
}

/// A stored remote mailbox, refused like [`reverse_path`].
fn mailbox(text: &str) -> Result<Mailbox, DecodeError> {
    Mailbox::parse(text).map_err(|e| DecodeError(format!("bad recipient {text:?}: {e}")))
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Local { domain, user } => write!(f, "{user}@{domain}"),
            Address::Remote(a) => write!(f, "{a}"),
            Address::Pipe { command, alias } => write!(f, "|{command}| ({alias})"),
        }
    }
}

/// The key of chunk `index` of `id`.
fn chunk_key(id: &QueueId, index: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(id.as_str().as_bytes());
    key[16..].copy_from_slice(&index.to_be_bytes());
    key
}

/// A queue id from a key.
fn parse_id(bytes: &[u8]) -> Result<QueueId, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(QueueId::parse)
        .ok_or_else(|| StoreError::Corrupt {
            id: String::from_utf8_lossy(bytes).into_owned(),
            why: "not a queue id".into(),
        })
}

/// Appends encoded fields.
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
}

/// Takes encoded fields from the front.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError(format!("bad boolean {b}"))),
        }
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError("a string is not UTF-8".into()))
    }
    fn opt_str(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            t => Err(DecodeError(format!("bad option tag {t}"))),
        }
    }
}

#[cfg(test)]
impl Envelope {
    /// An envelope without MAIL parameters or trace facts, for tests.
    pub(crate) fn plain(
        from: &str,
        size: u64,
        chunks: u32,
        recipients: Vec<Recipient>,
    ) -> Envelope {
        Envelope {
            from: ReversePath::parse(from).expect("a reverse path"),
            smtputf8: false,
            body: None,
            ret: None,
            envid: None,
            requiretls: false,
            headers: String::new(),
            received_at: 0,
            trace: TraceRecord::default(),
            size,
            chunks,
            recipients,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Envelope {
        Envelope {
            from: proto_core::ReversePath::parse("<bob@example.net>").expect("path"),
            smtputf8: true,
            body: Some(Body::EightBitMime),
            ret: Some(Ret::Headers),
            envid: Some("env-1".into()),
            requiretls: true,
            headers: "Authentication-Results: mx.example.org; spf=pass\r\n".into(),
            received_at: 1_780_000_000,
            trace: TraceRecord {
                helo: "client.test".into(),
                client: "[127.0.0.1]".into(),
                esmtp: true,
                tls: Some(("TLSv1.3".into(), "TLS_AES_256_GCM_SHA384".into())),
                authenticated: false,
            },
            size: 12345,
            chunks: 1,
            recipients: vec![
                Recipient {
                    address: Address::Local {
                        domain: "example.org".into(),
                        user: "alice".into(),
                    },
                    orcpt: Some(("rfc822".into(), "Alice@example.org".into())),
                    notify: Some(Notify::On {
                        success: true,
                        failure: false,
                        delay: true,
                    }),
                    state: RecipientState::Pending,
                    attempts: 0,
                    next_attempt: 0,
                    last_error: None,
                    sender: None,
                    delay_warned: false,
                },
                Recipient {
                    address: Address::Pipe {
                        command: "/usr/bin/procmail -d eve".into(),
                        alias: "eve@example.org".into(),
                    },
                    orcpt: None,
                    notify: None,
                    state: RecipientState::Pending,
                    attempts: 1,
                    next_attempt: 1_780_000_600,
                    last_error: Some("exit 75".into()),
                    sender: None,
                    delay_warned: false,
                },
                Recipient {
                    address: Address::Remote("carol@elsewhere.test".parse().expect("mailbox")),
                    orcpt: None,
                    notify: Some(Notify::Never),
                    state: RecipientState::Delivered,
                    attempts: 3,
                    next_attempt: 1_780_000_600,
                    last_error: Some("451 4.7.1 greylisted".into()),
                    sender: Some(
                        proto_core::ReversePath::parse("<SRS0=HHH=TT=example.net=bob@example.org>")
                            .expect("path"),
                    ),
                    delay_warned: true,
                },
                Recipient {
                    address: Address::Local {
                        domain: "example.org".into(),
                        user: "dave".into(),
                    },
                    orcpt: None,
                    notify: None,
                    state: RecipientState::Failed,
                    attempts: 7,
                    next_attempt: 1_780_000_600,
                    last_error: Some("451 4.7.1 greylisted".into()),
                    sender: None,
                    delay_warned: false,
                },
            ],
        }
    }

    #[test]
    fn envelopes_round_trip() {
        let plain = Envelope::plain("<>", 0, 0, vec![]);
        for e in [sample(), plain] {
            let bytes = e.encode();
            assert_eq!(bytes[0], ENVELOPE_VERSION);
            assert_eq!(Envelope::decode(&bytes).as_ref(), Ok(&e), "input {e:?}");
        }
    }

    /// A queue written by a version-1 build is still read: the fields version 2 added take
    /// their defaults.
    #[test]
    fn version_one_envelopes_still_decode() {
        let mut e = sample();
        let v2 = e.encode();
        // Version 1 is version 2 without its tail: REQUIRETLS, then per recipient a u64 and
        // an optional string.
        let tail: usize = 1
            + 4
            + e.headers.len()
            + e.recipients
                .iter()
                .map(|r| {
                    8 + 1
                        + r.last_error.as_ref().map_or(0, |t| 4 + t.len())
                        + 1
                        + r.sender.as_ref().map_or(0, |t| 4 + t.to_string().len())
                        + 1
                })
                .sum::<usize>();
        let mut v1 = v2[..v2.len() - tail].to_vec();
        v1[0] = 1;
        e.requiretls = false;
        e.headers.clear();
        for r in &mut e.recipients {
            r.next_attempt = 0;
            r.last_error = None;
            r.sender = None;
            r.delay_warned = false;
        }
        assert_eq!(Envelope::decode(&v1), Ok(e));
    }

    /// Two workers change different recipients of one message from the copies they read:
    /// neither change is lost, and the message goes once nothing is pending.
    #[test]
    fn apply_merges_each_owners_recipients() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("open");
        let id = QueueId::new();
        store.put_chunk(&id, 0, b"body\r\n").expect("chunk");
        let local = Recipient::new(Address::Local {
            domain: "example.org".into(),
            user: "alice".into(),
        });
        let remote = Recipient::new(Address::Remote(
            "bob@elsewhere.test".parse().expect("mailbox"),
        ));
        let envelope = Envelope::plain("<s@example.org>", 6, 1, vec![local, remote]);
        store.put_envelope(&id, &envelope).expect("put");

        // Both read the same copy; the outbound worker defers bob, the local one delivers
        // alice; the outbound change lands first.
        let mut outbound = envelope.clone();
        outbound.recipients[1].attempts = 1;
        outbound.recipients[1].next_attempt = 500;
        outbound.recipients[1].last_error = Some("451 try later".into());
        // A worker's view of a recipient it does not own is ignored.
        outbound.recipients[0].state = RecipientState::Failed;
        let mut local_view = envelope.clone();
        local_view.recipients[0].state = RecipientState::Delivered;

        let applied = store
            .apply(&[(id.clone(), outbound)], Owner::Remote, &[])
            .expect("apply");
        assert_eq!(applied, vec![Applied::Pending(Some(500))]);
        let applied = store
            .apply(&[(id.clone(), local_view)], Owner::Local, &[])
            .expect("apply");
        assert_eq!(applied, vec![Applied::Pending(None)]);
        let stored = store.envelope(&id).expect("read").expect("queued");
        assert_eq!(stored.recipients[0].state, RecipientState::Delivered);
        assert_eq!(stored.recipients[1].state, RecipientState::Pending);
        assert_eq!(stored.recipients[1].next_attempt, 500);
        assert_eq!(
            stored.recipients[1].last_error.as_deref(),
            Some("451 try later")
        );

        // bob fails for good and his bounce is queued in the same batch: the message goes.
        let mut failed = stored.clone();
        failed.recipients[1].state = RecipientState::Failed;
        let bounce_id = QueueId::new();
        let bounce = Envelope::plain(
            "<>",
            0,
            0,
            vec![Recipient::new(Address::Local {
                domain: "example.org".into(),
                user: "s".into(),
            })],
        );
        let applied = store
            .apply(
                &[(id.clone(), failed.clone())],
                Owner::Remote,
                &[(bounce_id.clone(), bounce.clone())],
            )
            .expect("apply");
        assert_eq!(applied, vec![Applied::Removed]);
        assert_eq!(store.envelope(&id).expect("read"), None);
        assert_eq!(store.envelope(&bounce_id).expect("read"), Some(bounce));
        let mut rest = Vec::new();
        store
            .body(&id, 1)
            .read_to_end(&mut rest)
            .expect_err("body removed");
        // Applying to a message that is gone changes nothing.
        let applied = store
            .apply(&[(id, failed)], Owner::Remote, &[])
            .expect("apply");
        assert_eq!(applied, vec![Applied::Gone]);
    }

    #[test]
    fn bad_envelopes_are_refused() {
        let good = sample().encode();
        let mut wrong_version = good.clone();
        wrong_version[0] = 99;
        let mut trailing = good.clone();
        trailing.push(0);
        // The reverse path and a remote recipient are stored as text: text that is no
        // address is refused, never read as `<>` (which would send no bounce).
        let bad_from = replace_once(&good, b"<bob@example.net>", b"<bob example.net>");
        let bad_remote = replace_once(&good, b"carol@elsewhere.test", b"carol@elsewhere..tes");
        let bad_sender = replace_once(&good, b"<SRS0=HHH", b"<SRS0 HHH");
        let cases: [(&[u8], &str); 7] = [
            (&[], "truncated"),
            (&good[..good.len() - 1], "truncated"),
            (&wrong_version, "version 99"),
            (&trailing, "after the envelope"),
            (&bad_from, "bad reverse path \"<bob example.net>\""),
            (&bad_remote, "bad recipient \"carol@elsewhere..tes\""),
            (&bad_sender, "bad reverse path \"<SRS0 HHH"),
        ];
        for (bytes, want) in cases {
            let e = Envelope::decode(bytes).expect_err("must fail");
            assert!(e.to_string().contains(want), "input {bytes:?}: {e}");
        }
    }

    /// `bytes` with the one occurrence of `from` replaced by `to` (same length).
    fn replace_once(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .expect("present");
        let mut out = bytes.to_vec();
        out[at..at + to.len()].copy_from_slice(to);
        out
    }

    /// A stored envelope that no longer decodes is reported as damaged, with its id, and
    /// stays in the store: nothing is dropped or rewritten.
    #[test]
    fn a_damaged_envelope_is_reported_and_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("open");
        let id = QueueId::new();
        let good = sample().encode();
        let damaged = replace_once(&good, b"<bob@example.net>", b"<bob example.net>");
        store
            .handles()
            .expect("open")
            .messages
            .insert(id.as_str(), damaged.as_slice())
            .expect("insert");
        match store.envelope(&id) {
            Err(StoreError::Corrupt { id: named, why }) => {
                assert_eq!(named, id.to_string());
                assert!(why.contains("bad reverse path"), "{why}");
            }
            other => panic!("want Corrupt, got {other:?}"),
        }
        assert_eq!(store.ids().expect("ids"), vec![id], "the record is kept");
    }

    /// Damage is told apart from a store that cannot be used for now: only damage makes the
    /// startup move the store aside.
    #[test]
    fn damage_is_told_from_other_open_failures() {
        use fjall::{Error as F, LsmError as L};
        let io = |kind: io::ErrorKind| io::Error::from(kind);
        let cases: Vec<(StoreError, bool)> = vec![
            (
                F::JournalRecovery(fjall::JournalRecoveryError::ChecksumMismatch).into(),
                true,
            ),
            (F::Storage(L::Unrecoverable).into(), true),
            (F::Storage(L::InvalidHeader("Block")).into(), true),
            (
                F::Storage(L::Io(io(io::ErrorKind::UnexpectedEof))).into(),
                true,
            ),
            (F::Io(io(io::ErrorKind::NotFound)).into(), true),
            (F::InvalidTrailer.into(), true),
            (StoreError::Panicked("assertion failed".into()), true),
            (F::Locked.into(), false),
            (F::Io(io(io::ErrorKind::PermissionDenied)).into(), false),
            (F::Io(io::Error::from_raw_os_error(28)).into(), false),
            (
                F::Storage(L::Io(io(io::ErrorKind::ReadOnlyFilesystem))).into(),
                false,
            ),
            (F::Storage(L::InvalidVersion(9)).into(), false),
            (F::Poisoned.into(), false),
            (StoreError::Reopened, false),
        ];
        for (e, damage) in cases {
            assert_eq!(e.is_damage(), damage, "input {e:?}");
        }
        assert!(StoreError::from(F::Locked).is_locked());
        assert!(StoreError::from(F::Io(io(io::ErrorKind::PermissionDenied))).is_not_permitted());
    }

    /// With a ledger attached, a synced envelope is recorded as acknowledged and a removal as
    /// finished; an envelope not synced yet is not claimed.
    #[test]
    fn the_ledger_records_durable_envelopes_and_removals() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(crate::queue::ledger::FILE_NAME);
        let store = Store::open(&tmp.path().join("queue")).expect("open");
        store.attach_ledger(Ledger::open(&path).expect("ledger"));
        let (a, b) = (QueueId::new(), QueueId::new());
        store.put_chunk(&a, 0, b"x").expect("chunk");
        store
            .put_envelope(&a, &Envelope::plain("<>", 1, 1, vec![]))
            .expect("put");
        let unfinished = || Ledger::unfinished(&path).expect("read");
        assert!(unfinished().is_empty(), "not durable yet");
        store.sync().expect("sync");
        assert_eq!(unfinished(), [a.clone()].into());
        store
            .put_envelope(&b, &Envelope::plain("<>", 0, 0, vec![]))
            .expect("put");
        store.remove(&a, 1).expect("remove");
        store.sync().expect("sync");
        assert_eq!(unfinished(), [b].into());
    }

    #[test]
    fn bodies_stream_back_and_orphans_are_swept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("open");
        let kept = QueueId::new();
        let orphan = QueueId::new();
        let body: Vec<u8> = (0..(CHUNK_SIZE * 2 + 100))
            .map(|i| (i % 251) as u8)
            .collect();
        let pieces: Vec<&[u8]> = body.chunks(CHUNK_SIZE).collect();
        for (i, c) in pieces.iter().enumerate() {
            store.put_chunk(&kept, i as u32, c).expect("chunk");
            store.put_chunk(&orphan, i as u32, c).expect("chunk");
        }
        let mut e = sample();
        e.chunks = pieces.len() as u32;
        store.put_envelope(&kept, &e).expect("envelope");
        store.sync().expect("sync");
        assert_eq!(store.sweep().expect("sweep"), 1);
        assert_eq!(store.ids().expect("ids"), vec![kept.clone()]);
        let mut back = Vec::new();
        store
            .body(&kept, e.chunks)
            .read_to_end(&mut back)
            .expect("read");
        assert_eq!(back, body);
        let mut gone = Vec::new();
        assert!(store.body(&orphan, 1).read_to_end(&mut gone).is_err());
        store.remove(&kept, e.chunks).expect("remove");
        assert!(store.ids().expect("ids").is_empty());
        assert_eq!(store.handles().expect("open").bodies.iter().count(), 0);
    }

    /// `queue hold` while a worker tries the message: the worker's deferral keeps the hold,
    /// its delivery ends it; `retry` picks a recipient already due, and never a finished one.
    #[test]
    fn a_hold_outlasts_a_deferral_recorded_after_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("open");
        let id = QueueId::new();
        store.put_chunk(&id, 0, b"body\r\n").expect("chunk");
        let remote = |who: &str| {
            Recipient::new(Address::Remote(
                format!("{who}@elsewhere.test").parse().expect("mailbox"),
            ))
        };
        let envelope = Envelope::plain("<s@example.org>", 6, 1, vec![remote("a"), remote("b")]);
        store.put_envelope(&id, &envelope).expect("put");
        // Due now already: still picked.
        assert!(store.set_next_attempt(&id, 0, |_| true).expect("retry"));

        // The worker read its copy; then the operator held the message.
        let mut worker = envelope.clone();
        assert!(store.set_next_attempt(&id, HELD, |_| true).expect("hold"));
        worker.recipients[0].attempts = 1;
        worker.recipients[0].next_attempt = 900;
        worker.recipients[1].state = RecipientState::Delivered;
        let applied = store
            .apply(&[(id.clone(), worker)], Owner::Remote, &[])
            .expect("apply");
        assert_eq!(applied, vec![Applied::Pending(Some(HELD))]);
        let stored = store.envelope(&id).expect("read").expect("queued");
        assert_eq!(stored.recipients[0].next_attempt, HELD);
        assert_eq!(stored.recipients[0].attempts, 1);
        assert_eq!(stored.recipients[1].state, RecipientState::Delivered);
        // A delivered recipient is not pending: a retry picks only the held one.
        assert!(
            store
                .set_next_attempt(&id, 0, |r| r.address == stored.recipients[1].address)
                .is_ok_and(|picked| !picked)
        );
    }
}

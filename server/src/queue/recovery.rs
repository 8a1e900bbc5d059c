//! Opening the queue at startup, and what happens when it is damaged.
//!
//! [`open`] opens `<data_dir>/queue` as the store ([`crate::queue::store`]) and the
//! acknowledgement ledger ([`crate::queue::ledger`]) beside it. Three outcomes:
//! - the store opens and holds every message the ledger says was acknowledged and not
//!   finished: nothing to say;
//! - the store opens but acknowledged messages are missing (fjall cannot notice a journal cut
//!   at a batch boundary): they are reported as lost, nothing is moved;
//! - the store is damaged: a journal that does not read in the middle (checked here before
//!   fjall opens it, since fjall's replay would cut it there, in place, and say nothing), or
//!   an opening that fails with damage ([`StoreError::is_damage`]). Then the store is renamed
//!   `<data_dir>/queue.damaged-<unix time>` (never deleted), a fresh store is created, and
//!   every message that reads completely from the old one (an envelope that decodes and all
//!   its body chunks) is copied into it; what does not is reported.
//!
//! Other failures (another process holds the store, no permission, a full disk) are returned
//! as they are: nothing is moved.
//!
//! # Reading a damaged store
//! 1. Its tables: a scratch copy without the journals (hard links, or copies across file
//!    systems) is opened with fjall. If that fails, again without one keyspace's folder, then
//!    without any table: what a keyspace that does not open held is read from the journals
//!    only, and its files are searched for queue ids to name what was lost.
//! 2. Its journals, read here ([`crate::queue::journal`]) in order, every batch that reads
//!    applied on top of the tables (replaying a batch the tables already hold changes
//!    nothing: writes are whole values and removals). Damaged ranges are searched for ids.
//! 3. Each envelope of the result is checked (it decodes, every chunk is there and readable);
//!    one that is not is removed and reported lost, with its id.
//!
//! A batch lost in the damage may have been a removal or a delivery mark: that message comes
//! back and may be delivered twice, as after a crash.
//!
//! # The report
//! Every recovery writes a plain-text report beside the data (`<data_dir>/queue.damaged-<t>.report`,
//! or `queue.lost-<t>.report` when nothing was moved), logs one `recovery` line (and one
//! `damaged` line per lost id), and `postern queue recovery` lists the reports
//! ([`Report::parse`] reads them back). The report is written last: a damaged store without
//! one is a salvage that did not finish, started again at the next startup.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::log::{self, Event};
use crate::queue::QueueId;
use crate::queue::journal::{self, Item};
use crate::queue::ledger::{self, Ledger};
use crate::queue::store::{Envelope, Store, StoreError};

/// The store's folder in the data directory.
pub const QUEUE_DIR: &str = "queue";

/// The prefix of a damaged store moved aside: `queue.damaged-<unix time>`.
pub const DAMAGED_PREFIX: &str = "queue.damaged-";

/// The prefix of the report of losses found without damage: `queue.lost-<unix time>.report`.
pub const LOST_PREFIX: &str = "queue.lost-";

/// The ending of a report file.
pub const REPORT_SUFFIX: &str = ".report";

/// The open queue.
#[derive(Debug)]
pub struct Opened {
    /// The store, with the ledger attached.
    pub store: Store,
    /// Partial bodies removed at startup (transactions never acknowledged).
    pub swept: usize,
    /// What this startup recovered and lost, if anything.
    pub report: Option<Report>,
}

/// Why the queue could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store refused to open for a reason that is no damage (see [`StoreError::is_damage`]).
    #[error("{0}")]
    Store(StoreError),
    /// A file or folder of the data directory could not be read, moved or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What one recovery found: the content of a report file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// What was wrong.
    pub cause: String,
    /// Where the damaged store was moved, `None` when it was not (losses found without damage).
    pub moved_to: Option<PathBuf>,
    /// How many messages are in the queue after the recovery.
    pub recovered: usize,
    /// The lost messages, with what is known of why.
    pub lost: Vec<(QueueId, String)>,
    /// Ids seen in damaged bytes that could not be read back, whose fate is not known
    /// (there was no ledger to tell whether they were acknowledged and not finished).
    pub possibly_lost: Vec<QueueId>,
    /// How many lost messages have no known id (only when nothing names them).
    pub notes: Vec<String>,
}

/// Opens the queue of `data_dir`, recovering what can be from a damaged store.
pub fn open(data_dir: &Path) -> Result<Opened, OpenError> {
    let dir = data_dir.join(QUEUE_DIR);
    let ledger_path = data_dir.join(ledger::FILE_NAME);
    let had_ledger = ledger_path.exists();
    let unfinished = Ledger::unfinished(&ledger_path).map_err(|source| OpenError::Io {
        what: format!("cannot read {}", ledger_path.display()),
        source,
    })?;
    // A salvage that did not finish (no report yet) starts again.
    if !dir.join("version").exists()
        && let Some(old) = unfinished_salvage(data_dir)
    {
        let at = now();
        let cause = "a salvage of this damaged store did not finish; started again".to_string();
        return salvage_into_fresh(data_dir, &old, at, cause, &unfinished, had_ledger);
    }
    let cause = match check(&dir)? {
        Some(cause) => cause,
        None => match open_store(&dir).and_then(usable) {
            Ok((store, swept, ids)) => {
                let lost: Vec<(QueueId, String)> = unfinished
                    .iter()
                    .filter(|id| ids.binary_search(id).is_err())
                    .map(|id| {
                        (
                            id.clone(),
                            "acknowledged, not in the store: its journal lost the end (after a power loss, a message delivered just before it may be named too: look for its delivered line in the log)".into(),
                        )
                    })
                    .collect();
                attach(&store, &ledger_path, &ids)?;
                let report = (!lost.is_empty()).then(|| Report {
                    at: now(),
                    cause: "acknowledged messages are missing from the queue store".into(),
                    moved_to: None,
                    recovered: ids.len(),
                    lost,
                    possibly_lost: Vec::new(),
                    notes: Vec::new(),
                });
                if let Some(r) = &report {
                    let path = data_dir.join(format!("{LOST_PREFIX}{}{REPORT_SUFFIX}", r.at));
                    publish(r, &path)?;
                }
                return Ok(Opened {
                    store,
                    swept,
                    report,
                });
            }
            Err(e) if e.is_damage() => e.to_string(),
            Err(e) => return Err(OpenError::Store(e)),
        },
    };
    let at = now();
    let mut moved = data_dir.join(format!("{DAMAGED_PREFIX}{at}"));
    let mut n = 1;
    while moved.exists() {
        n += 1;
        moved = data_dir.join(format!("{DAMAGED_PREFIX}{at}-{n}"));
    }
    fs::rename(&dir, &moved).map_err(|source| OpenError::Io {
        what: format!("cannot move {} to {}", dir.display(), moved.display()),
        source,
    })?;
    salvage_into_fresh(data_dir, &moved, at, cause, &unfinished, had_ledger)
}

/// Whether the store in `dir` is damaged in a way only this module notices: a journal that
/// does not read in the middle. Refuses a store another process holds.
fn check(dir: &Path) -> Result<Option<String>, OpenError> {
    if !dir.join("version").exists() {
        return Ok(None);
    }
    // Another postern on this data directory: leave its store alone (fjall's own lock file).
    if let Ok(lock) = fs::File::open(dir.join("lock"))
        && let Err(fs::TryLockError::WouldBlock) = lock.try_lock()
    {
        return Err(OpenError::Store(StoreError::Fjall(fjall::Error::Locked)));
    }
    for (_, path) in journals(dir).map_err(|source| OpenError::Io {
        what: format!("cannot list {}", dir.display()),
        source,
    })? {
        let bytes = fs::read(&path).map_err(|source| OpenError::Io {
            what: format!("cannot read {}", path.display()),
            source,
        })?;
        let scan = journal::scan(&bytes, |_| {});
        if let Some(first) = scan.damaged.first() {
            return Ok(Some(format!(
                "journal {} does not read from byte {} to {} ({} damaged ranges)",
                path.display(),
                first.start,
                first.end,
                scan.damaged.len()
            )));
        }
    }
    Ok(None)
}

/// Opens the store in `dir`; a panic in fjall is damage too.
fn open_store(dir: &Path) -> Result<Store, StoreError> {
    match catch_unwind(|| Store::open(dir)) {
        Ok(r) => r,
        Err(panic) => Err(StoreError::Panicked(panic_text(&panic))),
    }
}

/// The open store after its startup work (orphaned partial bodies swept), and the ids it
/// holds: listing them reads every table of the envelopes, which finds damage there.
fn usable(store: Store) -> Result<(Store, usize, Vec<QueueId>), StoreError> {
    let swept = store.sweep()?;
    let ids = store.ids()?;
    Ok((store, swept, ids))
}

/// Rewrites the ledger with `ids` and attaches it to `store`.
fn attach(store: &Store, path: &Path, ids: &[QueueId]) -> Result<(), OpenError> {
    let io = |source| OpenError::Io {
        what: format!("cannot write {}", path.display()),
        source,
    };
    Ledger::rewrite(path, ids).map_err(io)?;
    store.attach_ledger(Ledger::open(path).map_err(io)?);
    Ok(())
}

/// Creates a fresh store, copies what reads from the damaged store `old` into it, and
/// reports.
fn salvage_into_fresh(
    data_dir: &Path,
    old: &Path,
    at: u64,
    cause: String,
    unfinished: &BTreeSet<QueueId>,
    had_ledger: bool,
) -> Result<Opened, OpenError> {
    let dir = data_dir.join(QUEUE_DIR);
    let building = data_dir.join(format!("queue.building-{at}"));
    let scratch = data_dir.join(format!("queue.scratch-{at}"));
    let io = |what: String| move |source| OpenError::Io { what, source };
    for d in [&building, &scratch] {
        if d.exists() {
            fs::remove_dir_all(d).map_err(io(format!("cannot remove {}", d.display())))?;
        }
    }
    let salvaged = {
        let fresh = Store::open(&building).map_err(OpenError::Store)?;
        let s = salvage(old, &fresh, &scratch);
        fresh.sync().map_err(OpenError::Store)?;
        s
    };
    let _ = fs::remove_dir_all(&scratch);
    let mut salvaged = salvaged.map_err(io(format!("cannot read {}", old.display())))?;
    // Only a store nobody holds can be renamed: the fresh one is closed above.
    if dir.exists() {
        // An empty store created by a startup after an unfinished salvage.
        fs::remove_dir_all(&dir).map_err(io(format!("cannot remove {}", dir.display())))?;
    }
    fs::rename(&building, &dir).map_err(io(format!(
        "cannot move {} to {}",
        building.display(),
        dir.display()
    )))?;
    let store = Store::open(&dir).map_err(OpenError::Store)?;
    let swept = store.sweep().map_err(OpenError::Store)?;
    let ids = store.ids().map_err(OpenError::Store)?;
    for id in unfinished {
        if ids.binary_search(id).is_err() && !salvaged.lost.iter().any(|(l, _)| l == id) {
            salvaged.lost.push((
                id.clone(),
                "acknowledged, not found in what could be read".into(),
            ));
        }
    }
    salvaged.lost.sort();
    let possibly_lost = if had_ledger {
        Vec::new()
    } else {
        salvaged
            .seen
            .iter()
            .filter(|id| {
                ids.binary_search(id).is_err() && !salvaged.lost.iter().any(|(l, _)| l == *id)
            })
            .cloned()
            .collect()
    };
    attach(&store, &data_dir.join(ledger::FILE_NAME), &ids)?;
    let report = Report {
        at,
        cause,
        moved_to: Some(old.to_path_buf()),
        recovered: ids.len(),
        lost: salvaged.lost,
        possibly_lost,
        notes: salvaged.notes,
    };
    publish(&report, &report_path(old))?;
    Ok(Opened {
        store,
        swept,
        report: Some(report),
    })
}

/// The report file of the damaged store moved to `moved`.
fn report_path(moved: &Path) -> PathBuf {
    let mut name = moved.as_os_str().to_os_string();
    name.push(REPORT_SUFFIX);
    PathBuf::from(name)
}

/// A damaged store moved aside whose salvage has no report yet, if any.
fn unfinished_salvage(data_dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(data_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(DAMAGED_PREFIX))
                && !report_path(p).exists()
        })
        .collect();
    found.sort();
    found.pop()
}

/// Writes the report file, then logs it.
fn publish(report: &Report, path: &Path) -> Result<(), OpenError> {
    crate::files::replace(path, report.to_text().as_bytes(), 0o600, None).map_err(|source| {
        OpenError::Io {
            what: format!("cannot write {}", path.display()),
            source,
        }
    })?;
    for (id, why) in &report.lost {
        log::line(Event::Damaged)
            .field("id", id)
            .text("reason", format_args!("lost from the queue store: {why}"))
            .write();
    }
    const SHOWN: usize = 50;
    let mut ids: Vec<&str> = report
        .lost
        .iter()
        .take(SHOWN)
        .map(|(id, _)| id.as_str())
        .collect();
    let more = report.lost.len().saturating_sub(SHOWN);
    let more_text = format!("+{more}");
    if more > 0 {
        ids.push(&more_text);
    }
    let moved = match &report.moved_to {
        Some(p) => p.display().to_string(),
        None => "none".into(),
    };
    log::line(Event::Recovery)
        .field("recovered", report.recovered)
        .field("lost", report.lost.len())
        .field(
            "lost_ids",
            if ids.is_empty() {
                "-".to_string()
            } else {
                ids.join(",")
            },
        )
        .field("possibly_lost", report.possibly_lost.len())
        .text("moved_to", moved)
        .text("report", path.display())
        .text("cause", &report.cause)
        .write();
    Ok(())
}

/// What [`salvage`] found.
#[derive(Debug, Default)]
struct Salvaged {
    /// Lost messages with their id and why.
    lost: Vec<(QueueId, String)>,
    /// Ids seen in damaged bytes.
    seen: BTreeSet<QueueId>,
    /// What else the operator should know (a keyspace read from the journals only).
    notes: Vec<String>,
}

/// Copies every message that reads completely from the damaged store `old` into `fresh`,
/// using `scratch` for a copy of its tables. Nothing in `old` is written.
fn salvage(old: &Path, fresh: &Store, scratch: &Path) -> io::Result<Salvaged> {
    let mut out = Salvaged::default();
    // Keys whose value a table held but could not give: lost unless a journal writes them.
    let mut unreadable: BTreeSet<Vec<u8>> = BTreeSet::new();
    let put =
        |key: &[u8], value: Option<&[u8]>| fresh.salvage_put(key, value).map_err(io::Error::other);

    // 1. The tables, through fjall.
    let folders = keyspace_folders(old)?;
    let mut attempts: Vec<Vec<PathBuf>> = vec![Vec::new()];
    attempts.extend(folders.iter().map(|f| vec![f.clone()]));
    attempts.push(folders.clone());
    for skip in attempts {
        if scratch.exists() {
            fs::remove_dir_all(scratch)?;
        }
        link_tree(old, scratch, &skip)?;
        let Ok(tables) = open_store(scratch) else {
            continue;
        };
        for folder in &skip {
            out.notes.push(format!(
                "the tables in {} do not open: what they held was read from the journals only",
                folder.display()
            ));
            scan_ids_in_files(folder, &mut out.seen)?;
        }
        for bodies in [false, true] {
            let (keys, stopped) = tables.salvage_keys(bodies);
            if let Some(e) = stopped {
                out.notes.push(format!(
                    "listing the {} stopped: {e}",
                    if bodies { "bodies" } else { "envelopes" }
                ));
            }
            for key in keys {
                match tables.salvage_get(&key) {
                    Ok(Some(v)) => put(&key, Some(&v))?,
                    Ok(None) => {}
                    Err(_) => {
                        unreadable.insert(key);
                    }
                }
            }
        }
        break;
    }
    if scratch.exists() {
        fs::remove_dir_all(scratch)?;
    }

    // 2. The journals, every batch that reads, in order.
    for (_, path) in journals(old)? {
        let bytes = fs::read(&path)?;
        let mut failed = None;
        let scan = journal::scan(&bytes, |batch| {
            for item in batch.items {
                if let Item::Write {
                    keyspace,
                    key,
                    value,
                } = item
                    && keyspace != 0
                    && failed.is_none()
                {
                    unreadable.remove(key);
                    if let Err(e) = put(key, value.as_deref()) {
                        failed = Some(e);
                    }
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        for range in &scan.damaged {
            ids_in(
                &bytes[range.start as usize..range.end as usize],
                &mut out.seen,
            );
        }
        if scan.is_damaged() {
            out.notes.push(format!(
                "{}: {} batches read, {} damaged ranges skipped",
                path.display(),
                scan.batches,
                scan.damaged.len()
            ));
        }
    }

    // 3. Each envelope: it decodes and its chunks are all there.
    let unreadable_ids: BTreeSet<QueueId> = unreadable
        .iter()
        .filter_map(|k| id_of(k.get(..16)?))
        .collect();
    let (keys, stopped) = fresh.salvage_keys(false);
    if let Some(e) = stopped {
        return Err(io::Error::other(e));
    }
    for key in keys {
        let Some(id) = id_of(&key) else { continue };
        let why = match fresh.salvage_get(&key).map_err(io::Error::other)? {
            None => continue,
            Some(bytes) => match Envelope::decode(&bytes) {
                Err(e) => Some(format!("its envelope does not decode: {e}")),
                Ok(e) => missing_chunk(fresh, &id, e.chunks)?
                    .map(|i| {
                        if unreadable_ids.contains(&id) {
                            format!("chunk {i} of its body does not read")
                        } else {
                            format!("chunk {i} of its body is missing")
                        }
                    })
                    .or_else(|| {
                        unreadable_ids
                            .contains(&id)
                            .then(|| "part of its body does not read".to_string())
                    }),
            },
        };
        if let Some(why) = why {
            fresh.purge(&id).map_err(io::Error::other)?;
            out.lost.push((id, why));
        }
    }
    // Envelopes that a table held but could not give.
    for key in unreadable.iter().filter(|k| k.len() == 16) {
        if let Some(id) = id_of(key) {
            out.lost.push((id, "its envelope does not read".into()));
        }
    }
    // Bodies without an envelope: a transaction never acknowledged, or a lost envelope.
    let (body_keys, _) = fresh.salvage_keys(true);
    for key in body_keys {
        if let Some(id) = key.get(..16).and_then(id_of)
            && fresh
                .salvage_get(id.as_str().as_bytes())
                .map_err(io::Error::other)?
                .is_none()
        {
            out.seen.insert(id);
        }
    }
    Ok(out)
}

/// The first of `id`'s `chunks` chunks that `store` does not hold.
fn missing_chunk(store: &Store, id: &QueueId, chunks: u32) -> io::Result<Option<u32>> {
    for i in 0..chunks {
        let mut key = id.as_str().as_bytes().to_vec();
        key.extend_from_slice(&i.to_be_bytes());
        if store.salvage_get(&key).map_err(io::Error::other)?.is_none() {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// A queue id from stored key bytes.
fn id_of(bytes: &[u8]) -> Option<QueueId> {
    std::str::from_utf8(bytes).ok().and_then(QueueId::parse)
}

/// The journal files of the store in `dir`, in fjall's order (by number).
fn journals(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(n) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The keyspace folders of the store in `dir` (fjall's `keyspaces/<n>`, the meta keyspace 0
/// left out).
fn keyspace_folders(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir.join("keyspaces")) else {
        return Ok(out);
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "0") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Mirrors the tree `from` into `to` with hard links (copies where links fail), leaving out
/// journals, the lock file and the folders `skip`. fjall never rewrites a table or blob file
/// in place, so the links leave `from` as it was.
fn link_tree(from: &Path, to: &Path, skip: &[PathBuf]) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if skip.contains(&path) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type()?.is_dir() {
            link_tree(&path, &target, skip)?;
        } else if name != "lock"
            && path.extension().is_none_or(|e| e != "jnl")
            && fs::hard_link(&path, &target).is_err()
        {
            fs::copy(&path, &target)?;
        }
    }
    Ok(())
}

/// Adds the queue ids found in the files under `dir` to `seen`.
fn scan_ids_in_files(dir: &Path, seen: &mut BTreeSet<QueueId>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            scan_ids_in_files(&entry.path(), seen)?;
        } else if let Ok(bytes) = fs::read(entry.path()) {
            ids_in(&bytes, seen);
        }
    }
    Ok(())
}

/// Adds to `seen` every queue id in `bytes`: 16 upper-case hex digits, not part of a longer
/// run, whose time part is a plausible time (2020 to a day from now), so that hex text in
/// a message body is seldom taken for one.
pub fn ids_in(bytes: &[u8], seen: &mut BTreeSet<QueueId>) {
    let hex = |b: u8| matches!(b, b'0'..=b'9' | b'A'..=b'F');
    let earliest: u64 = 1_577_836_800 * 1_000_000;
    let latest = (now() + 86_400) * 1_000_000;
    let mut i = 0;
    while i < bytes.len() {
        if !hex(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && hex(bytes[i]) {
            i += 1;
        }
        // A run of exactly 16, or the first 16 of a key followed by a chunk index that
        // happens to be hex text: take the run's first 16 when it starts an id.
        if i - start >= 16
            && let Some(id) = id_of(&bytes[start..start + 16])
            && u64::from_str_radix(&id.as_str()[..14], 16)
                .is_ok_and(|t| (earliest..latest).contains(&t))
        {
            seen.insert(id);
        }
    }
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A panic's message.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

impl Report {
    /// The report as the text of its file (see [`Report::parse`]).
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut t = String::from("# postern queue recovery report\n");
        let when =
            crate::reception::trace::rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(self.at));
        let _ = writeln!(t, "time: {} {when}", self.at);
        let _ = writeln!(t, "cause: {}", one_line(&self.cause));
        match &self.moved_to {
            Some(p) => {
                let _ = writeln!(t, "moved to: {}", p.display());
            }
            None => t.push_str("moved to: -\n"),
        }
        let _ = writeln!(t, "recovered: {}", self.recovered);
        let _ = writeln!(t, "lost: {}", self.lost.len());
        for (id, why) in &self.lost {
            let _ = writeln!(t, "lost id: {id} {}", one_line(why));
        }
        for id in &self.possibly_lost {
            let _ = writeln!(t, "possibly lost id: {id}");
        }
        for note in &self.notes {
            let _ = writeln!(t, "note: {}", one_line(note));
        }
        t
    }

    /// Reads a report file's text back; `None` if it is no report.
    pub fn parse(text: &str) -> Option<Report> {
        let mut lines = text.lines();
        if lines.next()? != "# postern queue recovery report" {
            return None;
        }
        let mut r = Report {
            at: 0,
            cause: String::new(),
            moved_to: None,
            recovered: 0,
            lost: Vec::new(),
            possibly_lost: Vec::new(),
            notes: Vec::new(),
        };
        for line in lines {
            let (key, value) = line.split_once(": ")?;
            match key {
                "time" => r.at = value.split(' ').next()?.parse().ok()?,
                "cause" => r.cause = value.to_string(),
                "moved to" if value != "-" => r.moved_to = Some(PathBuf::from(value)),
                "recovered" => r.recovered = value.parse().ok()?,
                "lost id" => {
                    let (id, why) = value.split_once(' ').unwrap_or((value, ""));
                    r.lost.push((QueueId::parse(id)?, why.to_string()));
                }
                "possibly lost id" => r.possibly_lost.push(QueueId::parse(value)?),
                "note" => r.notes.push(value.to_string()),
                _ => {}
            }
        }
        Some(r)
    }

    /// Every report in `data_dir`, oldest first, with its file.
    pub fn all(data_dir: &Path) -> io::Result<Vec<(PathBuf, Report)>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(data_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            let is_report = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                (n.starts_with(DAMAGED_PREFIX) || n.starts_with(LOST_PREFIX))
                    && n.ends_with(REPORT_SUFFIX)
            });
            if is_report && let Some(r) = Report::parse(&fs::read_to_string(&path)?) {
                out.push((path, r));
            }
        }
        out.sort_by(|a, b| (a.1.at, &a.0).cmp(&(b.1.at, &b.0)));
        Ok(out)
    }
}

/// `text` on one line.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n']).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::store::{Address, Recipient};

    fn envelope(chunks: u32) -> Envelope {
        Envelope::plain(
            "<s@example.org>",
            10,
            chunks,
            vec![Recipient::new(Address::Local {
                domain: "example.org".into(),
                user: "alice".into(),
            })],
        )
    }

    /// `n` messages of `chunks` chunks of `size` bytes in the queue of `data_dir`, written
    /// as the server does (through the ledger), each synced; their ids.
    fn fill(data_dir: &Path, n: usize, chunks: u32, size: usize) -> Vec<QueueId> {
        let opened = open(data_dir).expect("open");
        let store = opened.store;
        let mut ids = Vec::new();
        for m in 0..n {
            let id = QueueId::new();
            for c in 0..chunks {
                store
                    .put_chunk(&id, c, &vec![b'a' + (m % 26) as u8; size])
                    .expect("chunk");
            }
            store
                .put_envelope(&id, &envelope(chunks))
                .expect("envelope");
            store.sync().expect("sync");
            ids.push(id);
        }
        ids
    }

    fn journal_of(data_dir: &Path) -> PathBuf {
        journals(&data_dir.join(QUEUE_DIR))
            .expect("list")
            .pop()
            .expect("a journal")
            .1
    }

    /// The byte where the journal's batches end.
    fn data_end(bytes: &[u8]) -> usize {
        journal::scan(bytes, |_| {}).end as usize
    }

    #[test]
    fn a_cut_journal_tail_names_the_lost_messages() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ids = fill(tmp.path(), 20, 1, 100);
        let path = journal_of(tmp.path());
        let bytes = fs::read(&path).expect("read");
        // Cut after the 17th message's batches: three acknowledged messages go.
        let mut ends = Vec::new();
        journal::scan(&bytes, |b| ends.push(b.offset));
        let keep = ends[ends.len() - 6] as usize;
        fs::write(&path, &bytes[..keep]).expect("cut");

        let opened = open(tmp.path()).expect("open");
        let report = opened.report.expect("a report");
        assert_eq!(report.moved_to, None);
        let lost: Vec<QueueId> = report.lost.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(lost, ids[17..].to_vec());
        assert_eq!(report.recovered, 17);
        let all = Report::all(tmp.path()).expect("reports");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1, report);
        drop(opened.store);
        // Reported once: the next start has nothing to say.
        assert!(open(tmp.path()).expect("open").report.is_none());
    }

    #[test]
    fn bad_bytes_mid_journal_move_the_store_aside_and_keep_the_rest() {
        for fill_byte in [0x00u8, 0xA5] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let ids = fill(tmp.path(), 40, 1, 300);
            let path = journal_of(tmp.path());
            let mut bytes = fs::read(&path).expect("read");
            let end = data_end(&bytes);
            bytes[end / 2..end / 2 + 200].fill(fill_byte);
            fs::write(&path, &bytes).expect("damage");

            let opened = open(tmp.path()).expect("open");
            let report = opened.report.clone().expect("a report");
            let moved = report.moved_to.clone().expect("moved");
            assert!(moved.join("version").exists(), "the old store is kept");
            assert_eq!(
                fs::read(moved.join(path.file_name().expect("name"))).expect("kept"),
                bytes
            );
            let present = opened.store.ids().expect("ids");
            let lost: Vec<QueueId> = report.lost.iter().map(|(id, _)| id.clone()).collect();
            assert!(
                !lost.is_empty() && lost.len() < 5,
                "fill {fill_byte:#x}: {report:?}"
            );
            let mut all: Vec<QueueId> = present.iter().chain(&lost).cloned().collect();
            all.sort();
            assert_eq!(
                all, ids,
                "fill {fill_byte:#x}: every message recovered or named"
            );
            for id in &present {
                let e = opened.store.envelope(id).expect("read").expect("there");
                let mut body = Vec::new();
                io::Read::read_to_end(&mut opened.store.body(id, e.chunks), &mut body)
                    .expect("body");
                assert_eq!(body.len(), 300);
            }
        }
    }

    #[test]
    fn a_truncated_table_is_salvaged_from_the_journal() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Large bodies: the bodies keyspace flushes tables and blob files.
        let ids = fill(tmp.path(), 12, 8, 64 * 1024);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let tables: Vec<PathBuf> = fs::read_dir(tmp.path().join("queue/keyspaces"))
            .expect("keyspaces")
            .flat_map(|k| {
                fs::read_dir(k.expect("k").path().join("tables"))
                    .into_iter()
                    .flatten()
            })
            .map(|t| t.expect("t").path())
            .filter(|t| !t.starts_with(tmp.path().join("queue/keyspaces/0")))
            .collect();
        let table = tables.first().expect("a table");
        let len = fs::metadata(table).expect("meta").len();
        fs::OpenOptions::new()
            .write(true)
            .open(table)
            .expect("open")
            .set_len(len / 2)
            .expect("truncate");
        let opened = open(tmp.path()).expect("open");
        let report = opened.report.expect("a report");
        assert!(report.moved_to.is_some());
        let present = opened.store.ids().expect("ids");
        let mut all: Vec<QueueId> = present
            .iter()
            .chain(report.lost.iter().map(|(id, _)| id))
            .cloned()
            .collect();
        all.sort();
        assert_eq!(all, ids, "{report:?}");
    }

    #[test]
    fn ids_are_found_in_raw_bytes() {
        let id = QueueId::new();
        let mut bytes = b"xx".to_vec();
        bytes.extend_from_slice(id.as_str().as_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 1]);
        // Hex text that is no plausible id, and one too long.
        bytes.extend_from_slice(b" 0000000000000001 FFFFFFFFFFFFFFFF ");
        bytes.extend_from_slice(b"0123456789ABCDEF0123456789ABCDEF");
        let mut seen = BTreeSet::new();
        ids_in(&bytes, &mut seen);
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![id]);
    }

    #[test]
    fn reports_read_back() {
        let r = Report {
            at: 1_780_000_000,
            cause: "journal x does not read\nfrom byte 4".into(),
            moved_to: Some(PathBuf::from("/var/lib/postern/queue.damaged-1780000000")),
            recovered: 45,
            lost: vec![(
                QueueId::parse("0123456789ABCD00").expect("id"),
                "chunk 0 of its body is missing".into(),
            )],
            possibly_lost: vec![QueueId::parse("0123456789ABCD01").expect("id")],
            notes: vec!["a note".into()],
        };
        let mut back = Report::parse(&r.to_text()).expect("parses");
        assert_eq!(back.cause, "journal x does not read from byte 4");
        back.cause = r.cause.clone();
        assert_eq!(back, r);
        assert_eq!(Report::parse("something else"), None);
    }
}

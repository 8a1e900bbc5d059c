//! The acknowledgement ledger: which queue ids were answered 250 and not finished yet, kept
//! beside the store (`<data_dir>/queue.ledger`), so that acknowledged messages the store lost
//! are noticed and named.
//!
//! fjall cannot notice some losses: a journal whose tail was cut at a batch boundary reads as
//! a shorter, healthy journal. The ledger is a second, independent witness. One line per
//! event, appended with one `write` call per batch of events:
//! - `+ID`: the store made `ID`'s envelope durable (written by [`crate::queue::store::Store::sync`]
//!   after its fsync returned, so after a crash of the process the ledger never claims more
//!   than the journal holds; the ledger is not fsynced itself, which costs nothing on the
//!   path to the 250);
//! - `-ID`: the message left the queue (delivered, bounced, or removed).
//!
//! At startup, the ids with a `+` and no `-` that the store does not hold are reported as
//! lost ([`crate::queue::recovery`]), and the file is rewritten with the ids the store holds.
//! While running, the file is compacted (rewritten with its unfinished ids) once it passes
//! [`COMPACT_AT`] bytes. A line that does not read (a torn last line) is skipped.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::queue::QueueId;

/// The ledger's name in the data directory.
pub const FILE_NAME: &str = "queue.ledger";

/// The size past which the running server compacts the file.
pub const COMPACT_AT: u64 = 8 * 1024 * 1024;

/// The open ledger, appended to by the store.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl Ledger {
    /// Opens `path` for appending (creating it), after [`Ledger::rewrite`] at startup.
    pub fn open(path: &Path) -> io::Result<Ledger> {
        Ok(Ledger {
            path: path.to_path_buf(),
            file: Mutex::new(Some(append(path)?)),
        })
    }

    /// The unfinished ids of the ledger at `path`: `+` without `-`. A missing file is empty.
    pub fn unfinished(path: &Path) -> io::Result<BTreeSet<QueueId>> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(e),
        };
        Ok(parse(&text))
    }

    /// Replaces the ledger at `path` with `+` lines for `ids` (atomically).
    pub fn rewrite<'a>(path: &Path, ids: impl IntoIterator<Item = &'a QueueId>) -> io::Result<()> {
        let mut text = String::new();
        for id in ids {
            text.push('+');
            text.push_str(id.as_str());
            text.push('\n');
        }
        crate::files::replace(path, text.as_bytes(), 0o600, None)
    }

    /// Records that `ids` were made durable (`+`) or left the queue (`-`). A failure is
    /// logged once per kind and never fails the caller: the ledger only helps to notice a loss.
    pub fn record(&self, sign: char, ids: &[QueueId]) {
        if ids.is_empty() {
            return;
        }
        let mut text = String::with_capacity(ids.len() * 18);
        for id in ids {
            text.push(sign);
            text.push_str(id.as_str());
            text.push('\n');
        }
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(f) = file.as_mut() else {
            return;
        };
        let written = f.write_all(text.as_bytes()).and_then(|()| f.metadata());
        match written {
            Ok(meta) if meta.len() > COMPACT_AT => {
                if let Err(e) = self.compact(&mut file) {
                    problem(&self.path, &e);
                }
            }
            Ok(_) => {}
            Err(e) => {
                // Stop writing rather than log every batch; the next start rewrites it.
                problem(&self.path, &e);
                *file = None;
            }
        }
    }

    /// Rewrites the file with its unfinished ids and appends to the new one.
    fn compact(&self, file: &mut Option<File>) -> io::Result<()> {
        let ids = Ledger::unfinished(&self.path)?;
        Ledger::rewrite(&self.path, &ids)?;
        *file = Some(append(&self.path)?);
        Ok(())
    }
}

/// Opens `path` to append, creating it.
fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The unfinished ids of ledger text (order-independent: a `-` wins over any `+`).
fn parse(text: &[u8]) -> BTreeSet<QueueId> {
    let mut plus = BTreeSet::new();
    let mut minus = BTreeSet::new();
    for line in text.split(|&b| b == b'\n') {
        let Some((&sign, id)) = line.split_first() else {
            continue;
        };
        let Some(id) = std::str::from_utf8(id).ok().and_then(QueueId::parse) else {
            continue;
        };
        match sign {
            b'+' => {
                plus.insert(id);
            }
            b'-' => {
                minus.insert(id);
            }
            _ => {}
        }
    }
    plus.retain(|id| !minus.contains(id));
    plus
}

/// Logs a ledger problem.
fn problem(path: &Path, e: &io::Error) {
    crate::log::line(crate::log::Event::Store)
        .text(
            "problem",
            format_args!(
                "cannot write the acknowledgement ledger {}: {e}",
                path.display()
            ),
        )
        .write();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> QueueId {
        QueueId::parse(s).expect("an id")
    }

    #[test]
    fn unfinished_ids_are_plus_without_minus() {
        let cases: [(&str, &[&str]); 5] = [
            ("", &[]),
            ("+0000000000000001\n", &["0000000000000001"]),
            ("+0000000000000001\n-0000000000000001\n", &[]),
            // Order does not matter; a torn or foreign line is skipped.
            (
                "-0000000000000001\n+0000000000000001\n+0000000000000002\n+00000000000",
                &["0000000000000002"],
            ),
            ("junk\n+not an id here!\n*0000000000000003\n", &[]),
        ];
        for (text, want) in cases {
            let got: Vec<String> = parse(text.as_bytes())
                .iter()
                .map(|i| i.to_string())
                .collect();
            assert_eq!(got, want, "input {text:?}");
        }
    }

    #[test]
    fn records_append_and_rewrite_compacts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(FILE_NAME);
        assert!(Ledger::unfinished(&path).expect("read").is_empty());
        let ledger = Ledger::open(&path).expect("open");
        let (a, b, c) = (
            id("00000000000000AA"),
            id("00000000000000BB"),
            id("00000000000000CC"),
        );
        ledger.record('+', &[a.clone(), b.clone()]);
        ledger.record('-', std::slice::from_ref(&a));
        ledger.record('+', std::slice::from_ref(&c));
        let want: BTreeSet<QueueId> = [b.clone(), c.clone()].into();
        assert_eq!(Ledger::unfinished(&path).expect("read"), want);
        Ledger::rewrite(&path, [&c]).expect("rewrite");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "+00000000000000CC\n"
        );
        let mut file = ledger.file.lock().expect("lock");
        ledger.compact(&mut file).expect("compact");
        assert_eq!(Ledger::unfinished(&path).expect("read"), [c].into());
    }
}

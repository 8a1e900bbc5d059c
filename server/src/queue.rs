//! Queue ids and the spool: where a message body is written while it arrives.
//!
//! Each transaction gets a [`QueueId`] when its MAIL is accepted; every log line about the
//! message carries it. The body is streamed chunk by chunk into `<data_dir>/queue/tmp/<id>`
//! (blocking writes run on smol's thread pool), so memory stays flat whatever the size.
//! Files left there by a crash were never acknowledged and are removed at startup.
//!
//! This first slice delivers straight from the spool before answering 250. The durable queue
//! (a fjall store with group commit, so one fsync acknowledges the messages of all sessions)
//! replaces it next.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Identifies one message in logs: 16 upper-case hex digits (microseconds since the epoch, then
/// a per-process counter), so ids sort by time and do not repeat across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

/// A message body being received into a file.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    failure: Option<String>,
}

impl QueueId {
    /// A fresh id.
    pub fn new() -> QueueId {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff;
        QueueId(format!("{:014X}{n:02X}", micros & 0xff_ffff_ffff_ffff))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Spool {
    /// Creates `<dir>/<id>`. A failure is remembered and reported by [`Spool::finish`].
    pub async fn create(dir: &Path, id: &QueueId) -> Spool {
        let path = dir.join(id.as_str());
        let p = path.clone();
        let opened = smol::unblock(move || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)
        })
        .await;
        match opened {
            Ok(file) => Spool {
                path,
                file: Some(file),
                size: 0,
                failure: None,
            },
            Err(e) => Spool {
                failure: Some(format!("cannot create {}: {e}", path.display())),
                path,
                file: None,
                size: 0,
            },
        }
    }

    /// Appends a chunk. After a failure, chunks are dropped.
    pub async fn write(&mut self, chunk: Vec<u8>) {
        let Some(mut file) = self.file.take() else {
            return;
        };
        let len = chunk.len() as u64;
        let (file, result) = smol::unblock(move || {
            let r = file.write_all(&chunk);
            (file, r)
        })
        .await;
        match result {
            Ok(()) => {
                self.size += len;
                self.file = Some(file);
            }
            Err(e) => self.failure = Some(format!("cannot write {}: {e}", self.path.display())),
        }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The whole body is written: its path, or why it could not be stored.
    pub fn finish(&mut self) -> Result<&Path, String> {
        match (&self.failure, &self.file) {
            (Some(f), _) => Err(f.clone()),
            (None, Some(_)) => Ok(&self.path),
            (None, None) => Err("the spool file is gone".into()),
        }
    }

    /// Removes the file (the message was delivered or abandoned).
    pub async fn discard(mut self) {
        self.file = None;
        let path = std::mem::take(&mut self.path);
        let _ = smol::unblock(move || fs::remove_file(path)).await;
    }
}

/// Creates the spool directory and removes what a previous run left in it (bodies that were
/// never acknowledged). Returns how many were removed.
pub fn prepare(dir: &Path) -> io::Result<usize> {
    fs::create_dir_all(dir)?;
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_sort_by_time() {
        let ids: Vec<QueueId> = (0..200).map(|_| QueueId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(ids.iter().all(|id| id.as_str().len() == 16));
    }

    #[test]
    fn spool_streams_and_discards() {
        let tmp = tempfile::tempdir().expect("tempdir");
        smol::block_on(async {
            let id = QueueId::new();
            let mut spool = Spool::create(tmp.path(), &id).await;
            spool.write(b"Subject: a\r\n\r\n".to_vec()).await;
            spool.write(b"body\r\n".to_vec()).await;
            assert_eq!(spool.size(), 20);
            let path = spool.finish().expect("stored").to_path_buf();
            assert_eq!(
                fs::read(&path).expect("read"),
                b"Subject: a\r\n\r\nbody\r\n"
            );
            spool.discard().await;
            assert!(!path.exists());
        });
        fs::write(tmp.path().join("leftover"), b"x").expect("write");
        assert_eq!(prepare(tmp.path()).expect("prepare"), 1);
    }
}

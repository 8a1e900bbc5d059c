//! Local delivery into Maildir.
//!
//! A copy for one mailbox is written to `<maildir>/tmp/<unique>`, fsynced, renamed into
//! `<maildir>/new/`, and `new/` is fsynced, so a message in `new/` is complete and survives a
//! crash (the Maildir protocol: <https://cr.yp.to/proto/maildir.html>). The last step is
//! separate ([`deliver_unsynced`], then [`sync_new`]), so that a worker delivering many copies
//! into one Maildir fsyncs `new/` once for all of them; a copy counts as delivered only after
//! that. Directories created on the way are fsynced into their parents too. The copy starts with the trace fields
//! (`Return-Path:`, `Delivered-To:`, `Received:`), then the body as received (CRLF line ends).
//!
//! Everything here blocks; callers run it on a blocking thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Delivers `header` followed by what `body` reads into the Maildir at `maildir`, creating it
/// if needed, up to the rename into `new/`: the file is complete and fsynced, but its name in
/// `new/` may not survive a crash until [`sync_new`] returns for this Maildir. `host` goes into
/// the file name. Returns the path of the file in `new/`. The body is copied through a small
/// buffer, so its size does not matter.
pub fn deliver_unsynced(
    maildir: &Path,
    host: &str,
    header: &[u8],
    body: &mut dyn Read,
) -> io::Result<PathBuf> {
    ensure_maildir(maildir)?;
    let name = unique_name(host);
    let tmp = maildir.join("tmp").join(&name);
    let new = maildir.join("new").join(&name);
    let written = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        out.write_all(header)?;
        io::copy(body, &mut out)?;
        out.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &new)?;
    Ok(new)
}

/// Makes the names renamed into `maildir`'s `new/` durable.
pub fn sync_new(maildir: &Path) -> io::Result<()> {
    sync_dir(&maildir.join("new"))
}

/// Creates `maildir` and its `tmp`, `new` and `cur` if missing, fsyncing each parent of a
/// directory it created.
fn ensure_maildir(maildir: &Path) -> io::Result<()> {
    if maildir.join("new").is_dir() && maildir.join("tmp").is_dir() {
        return Ok(());
    }
    create_synced(maildir)?;
    for sub in ["tmp", "new", "cur"] {
        create_synced(&maildir.join(sub))?;
    }
    Ok(())
}

/// `mkdir -p` that fsyncs the parent of every directory it creates.
fn create_synced(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_synced(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Makes a directory's entries durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A Maildir file name: `<secs>.M<micros>P<pid>Q<n>.<host>`, unique on this host.
fn unique_name(host: &str) -> String {
    static DELIVERIES: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    // The Maildir convention: '/' and ':' in the host name are escaped as octal.
    let host = host.replace('/', "\\057").replace(':', "\\072");
    format!(
        "{}.M{}P{}Q{n}.{host}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_into_new_with_the_header_first() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let body: &[u8] = b"Subject: hi\r\n\r\ntext\r\n";
        let maildir = tmp.path().join("mail/example.org/alice");
        let a = deliver_unsynced(
            &maildir,
            "mx",
            b"Delivered-To: alice@example.org\r\n",
            &mut &body[..],
        )
        .expect("deliver");
        let b = deliver_unsynced(&maildir, "mx", b"X: 2\r\n", &mut &body[..]).expect("deliver");
        sync_new(&maildir).expect("fsync new/");
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(maildir.join("new").as_path()));
        assert_eq!(
            fs::read(&a).expect("read"),
            b"Delivered-To: alice@example.org\r\nSubject: hi\r\n\r\ntext\r\n"
        );
        assert!(maildir.join("cur").is_dir());
        assert_eq!(fs::read_dir(maildir.join("tmp")).expect("tmp").count(), 0);
    }
}

//! Local delivery into Maildir.
//!
//! A copy for one mailbox is written to `<maildir>/tmp/<unique>` ([`write_tmp`]), made
//! durable, renamed into `<maildir>/new/` ([`publish`]), and the rename made durable, so a
//! message in `new/` is complete and survives a crash (the Maildir protocol:
//! <https://cr.yp.to/proto/maildir.html>). The two syncs are one syncfs(2) each per file
//! system for a whole batch of copies ([`sync_fs`]), not an fsync per file and per `new/`:
//! each fsync costs the disk a cache flush. A copy counts as delivered only after the second. Directories created on the way are fsynced into their parents too. The copy starts with the trace fields
//! (`Return-Path:`, `Delivered-To:`, `Received:`), then the body as received (CRLF line ends).
//!
//! Everything here blocks; callers run it on a blocking thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A copy written into a Maildir's `tmp/`, not yet durable nor visible ([`write_tmp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// Where it is now: `<maildir>/tmp/<name>`.
    pub tmp: PathBuf,
    /// Where [`publish`] puts it: `<maildir>/new/<name>`.
    pub new: PathBuf,
}

/// Writes `header` followed by what `body` reads into `<maildir>/tmp/`, creating the Maildir
/// if needed, without syncing: the caller makes a whole batch durable with one [`sync_fs`]
/// per file system, then [`publish`]es each copy and syncs again. `host` goes into the file
/// name. The body is copied through a small buffer, so its size does not matter. A failed
/// write leaves nothing behind.
pub fn write_tmp(
    maildir: &Path,
    host: &str,
    header: &[u8],
    body: &mut dyn Read,
) -> io::Result<Staged> {
    ensure_maildir(maildir)?;
    let name = unique_name(host);
    let staged = Staged {
        tmp: maildir.join("tmp").join(&name),
        new: maildir.join("new").join(&name),
    };
    let written = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged.tmp)?;
        out.write_all(header)?;
        io::copy(body, &mut out)?;
        out.flush()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&staged.tmp);
        return Err(e);
    }
    Ok(staged)
}

/// Moves a synced copy from `tmp/` into `new/`, where mail readers see it. The name is
/// durable after the next [`sync_fs`] of its file system.
pub fn publish(staged: &Staged) -> io::Result<()> {
    fs::rename(&staged.tmp, &staged.new)
}

/// Makes everything written on the file system holding `dir` durable (syncfs(2)): the data
/// and names of every copy of a batch in one call, where fsyncing each file and each `new/`
/// would cost a disk cache flush apiece.
pub fn sync_fs(dir: &Path) -> io::Result<()> {
    let file = File::open(dir)?;
    rustix::fs::syncfs(&file)?;
    Ok(())
}

/// The file system `dir` is on (its device number), to sync each file system once.
pub fn device_of(dir: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(dir)?.dev())
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
    fn copies_reach_new_with_the_header_first_only_once_published() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let body: &[u8] = b"Subject: hi\r\n\r\ntext\r\n";
        let maildir = tmp.path().join("mail/example.org/alice");
        let a = write_tmp(
            &maildir,
            "mx",
            b"Delivered-To: alice@example.org\r\n",
            &mut &body[..],
        )
        .expect("write");
        let b = write_tmp(&maildir, "mx", b"X: 2\r\n", &mut &body[..]).expect("write");
        assert_ne!(a, b);
        // Not visible before it is published.
        assert_eq!(fs::read_dir(maildir.join("new")).expect("new").count(), 0);
        sync_fs(&maildir).expect("syncfs");
        for staged in [&a, &b] {
            publish(staged).expect("publish");
        }
        sync_fs(&maildir).expect("syncfs");
        assert_eq!(a.new.parent(), Some(maildir.join("new").as_path()));
        assert_eq!(
            fs::read(&a.new).expect("read"),
            b"Delivered-To: alice@example.org\r\nSubject: hi\r\n\r\ntext\r\n"
        );
        assert!(maildir.join("cur").is_dir());
        assert_eq!(fs::read_dir(maildir.join("tmp")).expect("tmp").count(), 0);
        assert_eq!(
            device_of(&maildir).expect("dev"),
            device_of(tmp.path()).expect("dev")
        );
    }
}

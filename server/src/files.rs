//! Replacing a file atomically, for the files postern writes itself (users files, the TLS
//! policy memory, the MTA-STS cache, the SRS key): readers see the old file or the new one,
//! never a part, and a crash leaves one of the two. How to tell that a file changed (its
//! [`Stamp`]), who owns the directory a file goes into, and how much room a file system has
//! left.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What tells two versions of a file apart: (inode, size, mtime in ns). A rewrite is a
/// rename, so the inode changes even within one mtime tick.
pub type Stamp = (u64, u64, i128);

/// The [`Stamp`] of `path`; `None` when there is no file.
pub fn stamp(path: &Path) -> io::Result<Option<Stamp>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.ino(),
            m.size(),
            i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The owner and group of the directory holding `path`: what a file the CLI writes there gets,
/// so that the server's user can read it when the CLI runs as root.
pub fn dir_owner(path: &Path) -> Option<(u32, u32)> {
    fs::metadata(parent_dir(path))
        .ok()
        .map(|m| (m.uid(), m.gid()))
}

/// Replaces `path` with `bytes`: a temporary file beside it with `mode` (and `owner`, uid and
/// gid, when given and we may give files away), fsync, rename, fsync of the directory. The
/// temporary file goes when anything fails.
pub fn replace(path: &Path, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have taken bits away.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            // Only root may give a file away; anyone else keeps it (a no-op when it is theirs).
            let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The bytes an unprivileged process may still write on the file system that holds `path`
/// (statvfs: available blocks times the fragment size).
pub fn free_space(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_with_the_mode_given() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("f");
        replace(&path, b"one", 0o600, None).expect("write");
        replace(&path, b"two", 0o640, None).expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = fs::read_dir(tmp.path()).expect("dir").collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }

    #[test]
    fn free_space_is_what_df_reports() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let free = free_space(tmp.path()).expect("statvfs");
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(tmp.path())
            .output()
            .expect("df");
        let text = String::from_utf8_lossy(&out.stdout);
        let df: u64 = text
            .lines()
            .nth(1)
            .expect("a line")
            .trim()
            .parse()
            .expect("number");
        // Other processes write meanwhile: within 64 MiB.
        assert!(free.abs_diff(df) < 64 << 20, "statvfs {free}, df {df}");
        assert!(free_space(&tmp.path().join("missing")).is_err());
    }
}

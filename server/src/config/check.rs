//! The configuration directory beyond postern.toml: every users, aliases and DKIM key file of
//! every domain, read as `serve` would read them. [`problems`] finds them all (for
//! `postern config check`); `serve` refuses to start on the first.

use std::path::PathBuf;

use crate::config::{ConfigError, Settings};
use crate::directory::aliases::Aliases;
use crate::directory::users::{UserDb, UserDbError};
use crate::mailauth::dkim::{DkimError, DkimKeys};

/// What the check found: errors (the server would not start) and warnings (it would, and
/// log them).
#[derive(Debug, Default)]
pub struct Findings {
    /// Problems `serve` refuses to start with.
    pub errors: Vec<ConfigError>,
    /// Problems it logs and lives with (an aliases key given twice...).
    pub warnings: Vec<String>,
}

/// The domain directories under `domains/` ([`crate::directory::domain_names`]); an
/// unreadable `domains/` lists none.
fn domain_names(settings: &Settings) -> Vec<String> {
    crate::directory::domain_names(&settings.domains_dir()).unwrap_or_default()
}

/// Reads every users, aliases and DKIM key file under `settings`' `domains/`.
pub fn problems(settings: &Settings) -> Findings {
    let mut found = Findings::default();
    let fix = |what: &str| {
        format!(
            "correct the line or remove it, then start again (while the server runs, a broken \
             {what} file is only logged and its last good version kept)"
        )
    };
    let unreadable_fix = "make it readable by the user running postern (see README, systemd: \
        files the CLI writes as root get the owner of their directory), or move it away";
    let users = UserDb::new(settings.domains_dir());
    for domain in domain_names(settings) {
        match users.list(Some(&domain)) {
            Ok(_) => {}
            Err(UserDbError::Malformed { path, line, reason }) => {
                found.errors.push(ConfigError {
                    file: path,
                    line: Some(line),
                    message: reason,
                    fix: fix("users"),
                });
            }
            Err(UserDbError::Io { path, source }) => found.errors.push(ConfigError {
                file: path,
                line: None,
                message: format!("cannot read it: {source}"),
                fix: unreadable_fix.into(),
            }),
            // Not a domain name: the server ignores the directory.
            Err(e) => found.warnings.push(format!(
                "{}: {e}; not a local domain",
                settings.domains_dir().join(&domain).display()
            )),
        }
        let key_problem = |file: PathBuf, message: String| ConfigError {
            file,
            line: None,
            message,
            fix: unreadable_fix.into(),
        };
        match DkimKeys::load(&settings.dir, &domain) {
            Err(DkimError::Io { path, source }) => found
                .errors
                .push(key_problem(path, format!("cannot read it: {source}"))),
            Err(DkimError::BadKey { path, reason }) => {
                found.errors.push(key_problem(path, reason));
            }
            _ => {}
        }
    }
    let aliases = Aliases::new(settings.domains_dir(), settings.alias_options.clone());
    for p in aliases.load_quietly() {
        if p.refused {
            found.errors.push(ConfigError {
                file: p.path,
                line: p.line.filter(|&l| l > 0),
                message: p.reason,
                fix: fix("aliases"),
            });
        } else {
            found.warnings.push(p.to_string());
        }
    }
    found
}

/// A secret file that others (not its owner or group) may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LooseMode {
    /// The file.
    pub path: PathBuf,
    /// Its permission bits now.
    pub mode: u32,
}

impl LooseMode {
    /// The bits it should have: the same, less everything for others.
    pub fn wanted(&self) -> u32 {
        self.mode & 0o770
    }
}

impl std::fmt::Display for LooseMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is readable by every user of this machine (mode {:04o}); it should be {:04o}: \
             postern config check --fix-modes",
            self.path.display(),
            self.mode,
            self.wanted()
        )
    }
}

/// The secret files others may read or write: each domain's users file and DKIM private
/// keys, and the private keys under `certs/` (`privkey.pem`, `*.key`). A fresh `git clone`
/// leaves them 0644. Symbolic links (to /etc/letsencrypt) are followed for the check.
pub fn loose_modes(settings: &Settings) -> Vec<LooseMode> {
    use std::os::unix::fs::PermissionsExt;
    let mut secrets = Vec::new();
    for domain in domain_names(settings) {
        let dir = settings.domains_dir().join(&domain);
        secrets.push(dir.join(crate::directory::users::USERS_FILE));
        let keys = std::fs::read_dir(dir.join("dkim")).into_iter().flatten();
        secrets.extend(
            keys.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pem")),
        );
    }
    let certs = std::fs::read_dir(settings.certs_dir())
        .into_iter()
        .flatten();
    for entry in certs.filter_map(Result::ok) {
        let files = std::fs::read_dir(entry.path()).into_iter().flatten();
        secrets.extend(files.filter_map(Result::ok).map(|e| e.path()).filter(|p| {
            p.file_name().is_some_and(|n| n == "privkey.pem")
                || p.extension().is_some_and(|x| x == "key")
        }));
    }
    secrets.sort();
    secrets
        .into_iter()
        .filter_map(|path| {
            let mode = std::fs::metadata(&path).ok()?.permissions().mode() & 0o7777;
            (mode & 0o007 != 0).then_some(LooseMode { path, mode })
        })
        .collect()
}

/// Takes the others' bits off each file of `loose` that is not a symbolic link (a link's
/// target belongs to whoever made it: certbot, acme.sh). Returns what was changed.
///
/// The file is opened without following a link and changed through that descriptor, so a
/// link put in its place after the check is never followed.
pub fn fix_modes(loose: &[LooseMode]) -> std::io::Result<Vec<PathBuf>> {
    use rustix::fs::{Mode, OFlags};
    let mut fixed = Vec::new();
    for l in loose {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(&l.path, flags, Mode::empty()) {
            Ok(fd) => fd,
            // ELOOP: a symbolic link.
            Err(rustix::io::Errno::LOOP) => continue,
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            continue;
        }
        let mode = st.st_mode & 0o7777;
        if mode & 0o007 != 0 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o770))?;
            fixed.push(l.path.clone());
        }
    }
    Ok(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777
    }

    /// A loose file is fixed through its own descriptor; a link in its place is not
    /// followed, and its target keeps its mode.
    #[test]
    fn fixing_modes_never_follows_a_link() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (file, target, link) = (
            tmp.path().join("users"),
            tmp.path().join("elsewhere"),
            tmp.path().join("key.pem"),
        );
        for path in [&file, &target] {
            std::fs::write(path, "x").expect("write");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        std::os::unix::fs::symlink(&target, &link).expect("link");
        let loose: Vec<LooseMode> = [&file, &link]
            .into_iter()
            .map(|p| LooseMode {
                path: p.clone(),
                mode: 0o644,
            })
            .collect();
        assert_eq!(fix_modes(&loose).expect("fix"), vec![file.clone()]);
        assert_eq!(mode(&file), 0o640);
        assert_eq!(mode(&target), 0o644);
    }
}

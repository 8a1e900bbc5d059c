//! The user database: `domains/<domain>/users`, and the one way addresses are normalised.
//!
//! # The file
//!
//! One text file per local domain, `domains/<domain>/users`, one user per line, so that the
//! configuration directory can live in git and a change is a one-line diff:
//!
//! ```text
//! # comments start with '#'; blank lines are ignored
//! alice@example.org $argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g...
//! info@example.org  -  receive-only
//! bob
//! ```
//!
//! Fields are separated by spaces or tabs:
//! 1. the address: `user@<domain>` (the domain must be the directory's, in any case or IDNA
//!    form), or just `user`;
//! 2. the password as a PHC string (`$argon2id$...`, written by `postern user add`), or `-`
//!    (or nothing) for a mailbox that receives mail but cannot log in;
//! 3. flags: `receive-only` (the user cannot authenticate, so cannot send).
//!
//! A line that cannot be understood is reported with its line number; the server skips it
//! (and logs it), the `user` commands refuse to rewrite the file until it is fixed.
//!
//! The file is rewritten atomically (a temporary file in the same directory, fsync, rename,
//! fsync of the directory) under an exclusive lock on the domain directory, so a reader never
//! sees half a file and two `user` commands never lose each other's change. The server
//! re-reads a file whenever its size, modification time or inode changed, at each lookup:
//! a change is seen by the next RCPT or login, without a restart.
//!
//! # Addresses
//!
//! [`Address::parse`] / [`Address::from_mailbox`] is the single normalisation used by the CLI,
//! AUTH and recipient lookup: the domain is IDNA-processed (UTS #46, which also folds case) and
//! kept in Unicode form (its A-label form compares equal); the local part is lower-cased and
//! put in Unicode NFC. Lower-casing the local part is a deliberate choice: RFC 5321 lets the
//! receiving host decide, and users expect `Alice@` and `alice@` to be one mailbox.
//!
//! `postern user add` refuses a `+` in the local part: `alice+anything@` is a subaddress of
//! `alice@` ([RFC 5233](https://www.rfc-editor.org/rfc/rfc5233)), delivered to alice and
//! usable by alice as a sender. (A `+` written into the file by hand is accepted as is.)
//!
//! A user's local part must be usable as a Maildir directory name and must not look like a
//! route: letters and digits (any script), `.`, `-`, `_`, `+`, not starting or ending with a
//! dot, no `..`. So `%`, `!`, `@`, quotes and spaces never name a user here.
//!
//! # Passwords
//!
//! Argon2id ([RFC 9106](https://www.rfc-editor.org/rfc/rfc9106)) with the `argon2` crate's
//! defaults (m=19456 KiB, t=2, p=1, the OWASP recommendation) and a random 16-byte salt, stored
//! as a PHC string. [`verify_password`] for a user that does not exist checks against a dummy
//! hash with the same parameters, so the time taken does not tell whether the user exists.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use proto_core::{Domain, Mailbox};
use unicode_normalization::UnicodeNormalization;

/// The users file's name inside a domain directory.
pub const USERS_FILE: &str = "users";

/// The flag of a user who cannot authenticate.
const RECEIVE_ONLY: &str = "receive-only";

/// A normalised address: lower-case NFC local part, lower-case Unicode domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    local: String,
    domain: String,
    ascii_domain: String,
}

/// One user of the database.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The address.
    pub address: Address,
    /// The password as a PHC string; `None` for a mailbox without a login.
    pub password: Option<String>,
    /// Whether the user may only receive (no AUTH).
    pub receive_only: bool,
}

/// What went wrong with the user database. Every variant names the problem and what it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserDbError {
    /// Not a usable address.
    #[error("malformed address {input:?}: {reason}")]
    BadAddress {
        /// What was given.
        input: String,
        /// Why it is refused.
        reason: String,
    },
    /// The domain has no directory.
    #[error("unknown domain {domain}: there is no directory {}; create it to make the domain local", dir.display())]
    UnknownDomain {
        /// The domain.
        domain: String,
        /// The directory that would make it local.
        dir: PathBuf,
    },
    /// The user is there already.
    #[error("user {0} already exists")]
    Duplicate(Address),
    /// No such user.
    #[error("no user {0}")]
    NoSuchUser(Address),
    /// An empty password.
    #[error("empty password: a password must not be empty")]
    EmptyPassword,
    /// A line of a users file that cannot be understood.
    #[error("{}, line {line}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Hashing failed (should not happen with valid parameters).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// The users of all local domains, read from `domains/`, cached per file and re-read when the
/// file changes.
#[derive(Debug)]
pub struct UserDb {
    domains_dir: PathBuf,
    cache: Mutex<HashMap<PathBuf, Arc<Cached>>>,
}

/// A parsed users file and what identified its version.
#[derive(Debug)]
struct Cached {
    stamp: crate::files::Stamp,
    users: Vec<User>,
}

/// A users file as lines, for rewriting it with comments and order kept.
#[derive(Debug)]
struct UsersFile {
    path: PathBuf,
    lines: Vec<String>,
    /// Parsed users with the index of their line.
    users: Vec<(usize, User)>,
}

impl Address {
    /// Parses and normalises `user@domain` (an SMTP mailbox, quotes allowed).
    pub fn parse(input: &str) -> Result<Address, UserDbError> {
        let bad = |reason: String| UserDbError::BadAddress {
            input: input.to_string(),
            reason,
        };
        if !input.contains('@') {
            return Err(bad("expected user@domain".into()));
        }
        let mailbox = Mailbox::parse(input.trim()).map_err(|e| bad(e.to_string()))?;
        Address::from_mailbox(&mailbox).map_err(|reason| bad(reason.to_string()))
    }

    /// Normalises a parsed mailbox. The error says why it cannot be one of our users' addresses
    /// (it can still be a valid address elsewhere).
    pub fn from_mailbox(mailbox: &Mailbox) -> Result<Address, &'static str> {
        let (unicode, ascii) = domain_forms(mailbox.domain())?;
        let local = normalize_local(mailbox.local_part().as_str());
        check_local(&local)?;
        Ok(Address {
            local,
            domain: unicode,
            ascii_domain: ascii,
        })
    }

    /// The local part (normalised).
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain in Unicode form, lower case.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The domain in A-label form, lower case.
    pub fn ascii_domain(&self) -> &str {
        &self.ascii_domain
    }

    /// The address without its subaddress (`alice+news@x` is `alice@x`, RFC 5233), if it
    /// has one.
    pub fn base(&self) -> Option<Address> {
        let (base, _) = self.local.split_once('+')?;
        Address::with_local(base, self).ok()
    }

    /// The same user in another domain (same normalisation), e.g. for a line without `@`.
    fn with_local(local: &str, domain: &Address) -> Result<Address, &'static str> {
        let local = normalize_local(local);
        check_local(&local)?;
        Ok(Address {
            local,
            domain: domain.domain.clone(),
            ascii_domain: domain.ascii_domain.clone(),
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("address", &self.address)
            .field("password", &self.password.as_ref().map(|_| "<hash>"))
            .field("receive_only", &self.receive_only)
            .finish()
    }
}

impl User {
    /// The line that stores this user.
    fn line(&self) -> String {
        let mut line = format!(
            "{} {}",
            self.address,
            self.password.as_deref().unwrap_or("-")
        );
        if self.receive_only {
            line.push(' ');
            line.push_str(RECEIVE_ONLY);
        }
        line
    }
}

impl UserDb {
    /// The database under `domains_dir` (`<config>/domains`).
    pub fn new(domains_dir: PathBuf) -> UserDb {
        UserDb {
            domains_dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The directory of a local domain given in any form (Unicode or A-label, any case), if
    /// the domain is local: `domains/<unicode>/` or `domains/<a-label>/`.
    pub fn domain_dir(&self, domain: &Address) -> Option<PathBuf> {
        self.dir_of(domain.domain(), domain.ascii_domain())
    }

    /// Whether `domain` (A-label or Unicode, any case) is one of ours. Address literals never
    /// are.
    pub fn is_local_domain(&self, domain: &Domain) -> bool {
        domain_forms(domain)
            .ok()
            .and_then(|(unicode, ascii)| self.dir_of(&unicode, &ascii))
            .is_some()
    }

    /// `domains/<unicode>/` or `domains/<ascii>/`, whichever exists.
    fn dir_of(&self, unicode: &str, ascii: &str) -> Option<PathBuf> {
        [unicode, ascii]
            .into_iter()
            .filter(|name| safe_component(name))
            .map(|name| self.domains_dir.join(name))
            .find(|dir| dir.is_dir())
    }

    /// The user with this address, if any. Reads the users file when it changed since the last
    /// call; lines that cannot be parsed are skipped (and logged when the file is read).
    pub fn get(&self, address: &Address) -> Result<Option<User>, UserDbError> {
        let Some(dir) = self.domain_dir(address) else {
            return Ok(None);
        };
        let users = self.cached(&dir.join(USERS_FILE), address)?;
        Ok(users.users.iter().find(|u| u.address == *address).cloned())
    }

    /// Every user of `domain`, or of every local domain.
    pub fn list(&self, domain: Option<&str>) -> Result<Vec<User>, UserDbError> {
        let dirs: Vec<PathBuf> = match domain {
            Some(d) => {
                let probe = Address::parse(&format!("postmaster@{d}"))?;
                vec![self.require_domain(&probe)?]
            }
            None => {
                let mut dirs: Vec<PathBuf> = fs::read_dir(&self.domains_dir)
                    .map_err(|source| UserDbError::Io {
                        path: self.domains_dir.clone(),
                        source,
                    })?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect();
                dirs.sort();
                dirs
            }
        };
        let mut users = Vec::new();
        for dir in dirs {
            let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Ok(probe) = Address::parse(&format!("postmaster@{name}")) else {
                continue;
            };
            let file = UsersFile::read(&dir.join(USERS_FILE), &probe, true)?;
            users.extend(file.users.into_iter().map(|(_, u)| u));
        }
        Ok(users)
    }

    /// Adds a user. Refuses a duplicate, an unknown domain, or a users file with errors.
    pub fn add(&self, user: User) -> Result<(), UserDbError> {
        if user.address.base().is_some() {
            return Err(UserDbError::BadAddress {
                input: user.address.to_string(),
                reason: "'+' starts a subaddress (alice+news@ is delivered to alice@); \
                         a user name cannot contain it"
                    .into(),
            });
        }
        self.edit(&user.address.clone(), |file| {
            if file.find(&user.address).is_some() {
                return Err(UserDbError::Duplicate(user.address.clone()));
            }
            file.lines.push(user.line());
            Ok(())
        })
    }

    /// Removes a user.
    pub fn remove(&self, address: &Address) -> Result<(), UserDbError> {
        self.edit(address, |file| {
            let i = file
                .find(address)
                .ok_or_else(|| UserDbError::NoSuchUser(address.clone()))?;
            file.lines.remove(i);
            Ok(())
        })
    }

    /// Replaces a user's password hash. A receive-only user becomes a sending user: a password
    /// is for logging in. Returns whether the user was receive-only.
    pub fn set_password(&self, address: &Address, phc: String) -> Result<bool, UserDbError> {
        let mut was_receive_only = false;
        self.edit(address, |file| {
            let i = file
                .find(address)
                .ok_or_else(|| UserDbError::NoSuchUser(address.clone()))?;
            let mut user = file
                .users
                .iter()
                .find(|(line, _)| *line == i)
                .map(|(_, u)| u.clone())
                .ok_or_else(|| UserDbError::NoSuchUser(address.clone()))?;
            user.password = Some(phc);
            was_receive_only = std::mem::take(&mut user.receive_only);
            file.lines[i] = user.line();
            Ok(())
        })?;
        Ok(was_receive_only)
    }

    /// The domain's directory, or [`UserDbError::UnknownDomain`].
    fn require_domain(&self, address: &Address) -> Result<PathBuf, UserDbError> {
        self.domain_dir(address)
            .ok_or_else(|| UserDbError::UnknownDomain {
                domain: address.domain().to_string(),
                dir: self.domains_dir.join(address.domain()),
            })
    }

    /// Reads the users file of `address`'s domain under a lock, applies `change`, and writes it
    /// back atomically. Nothing is written when `change` or the reading fails.
    fn edit(
        &self,
        address: &Address,
        change: impl FnOnce(&mut UsersFile) -> Result<(), UserDbError>,
    ) -> Result<(), UserDbError> {
        let dir = self.require_domain(address)?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| UserDbError::Io { path, source }
        };
        let lock = File::open(&dir).map_err(io(&dir))?;
        lock.lock().map_err(io(&dir))?;
        let path = dir.join(USERS_FILE);
        let mut file = UsersFile::read(&path, address, true)?;
        change(&mut file)?;
        write_atomically(&path, &file.text()).map_err(io(&path))
    }

    /// The parsed file at `path`, from the cache when its stamp is unchanged.
    fn cached(&self, path: &Path, domain: &Address) -> Result<Arc<Cached>, UserDbError> {
        let stamp = match crate::files::stamp(path) {
            Ok(stamp) => stamp.unwrap_or((0, 0, 0)),
            Err(source) => {
                return Err(UserDbError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(path)
            && c.stamp == stamp
        {
            return Ok(c.clone());
        }
        let file = UsersFile::read(path, domain, false)?;
        let fresh = Arc::new(Cached {
            stamp,
            users: file.users.into_iter().map(|(_, u)| u).collect(),
        });
        cache.insert(path.to_path_buf(), fresh.clone());
        Ok(fresh)
    }
}

impl UsersFile {
    /// Reads `path` (missing = empty) for the domain of `domain`. With `strict`, a malformed
    /// line is an error; otherwise it is logged and skipped.
    fn read(path: &Path, domain: &Address, strict: bool) -> Result<UsersFile, UserDbError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(UserDbError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut file = UsersFile {
            path: path.to_path_buf(),
            lines: text.lines().map(str::to_string).collect(),
            users: Vec::new(),
        };
        for (i, line) in file.lines.iter().enumerate() {
            match parse_line(line, domain) {
                Ok(None) => {}
                Ok(Some(user)) => {
                    if file.users.iter().any(|(_, u)| u.address == user.address) {
                        let reason = format!("{} is listed twice", user.address);
                        file.malformed(i, reason, strict)?;
                    } else {
                        file.users.push((i, user));
                    }
                }
                Err(reason) => file.malformed(i, reason, strict)?,
            }
        }
        Ok(file)
    }

    /// Reports a bad line: an error when strict, else a log line.
    fn malformed(&self, index: usize, reason: String, strict: bool) -> Result<(), UserDbError> {
        let e = UserDbError::Malformed {
            path: self.path.clone(),
            line: index + 1,
            reason,
        };
        if strict {
            return Err(e);
        }
        crate::log::line(crate::log::Event::Config)
            .text("msg", format_args!("skipped: {e}"))
            .write();
        Ok(())
    }

    /// The index of the line holding `address`.
    fn find(&self, address: &Address) -> Option<usize> {
        self.users
            .iter()
            .find(|(_, u)| u.address == *address)
            .map(|(i, _)| *i)
    }

    /// The file's new text.
    fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text
    }
}

/// Hashes `password` with Argon2id, default parameters and a fresh salt; a PHC string.
pub fn hash_password(password: &str) -> Result<String, UserDbError> {
    if password.is_empty() {
        return Err(UserDbError::EmptyPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserDbError::Hash(e.to_string()))
}

/// Whether `password` matches the user's hash. For `None` (no such user, or no password) the
/// password is checked against a dummy hash of the same cost, and the answer is `false`.
/// Blocking and slow on purpose: call it off the async executor.
pub fn verify_password(phc: Option<&str>, password: &str) -> bool {
    let dummy = dummy_hash();
    let (hash, real) = match phc.and_then(|p| PasswordHash::new(p).ok()) {
        Some(h) => (h, true),
        None => match PasswordHash::new(dummy) {
            Ok(h) => (h, false),
            Err(_) => return false,
        },
    };
    verify_with_reused_memory(&hash, password.as_bytes()) && real
}

thread_local! {
    /// The Argon2 working memory of this thread, kept from one check to the next: a hash
    /// costs ~19 MiB, and memory freed by a thread tends to stay in its allocator's arena, so
    /// reusing one buffer keeps what a thread holds at one hash's worth.
    static HASH_MEMORY: std::cell::RefCell<Vec<argon2::Block>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A reservation this large is always mapped on its own by the system allocator.
const OWN_MAPPING: usize = 33 << 20;

/// Gives this thread's hash working memory back (to the allocator, and so to the system: a
/// block this large is mapped on its own). The next check allocates it again.
pub fn release_hash_memory() {
    HASH_MEMORY.with(|memory| drop(memory.take()));
}

/// Whether `password` hashes to `hash` (constant-time comparison), with this thread's
/// reused working memory.
fn verify_with_reused_memory(hash: &PasswordHash<'_>, password: &[u8]) -> bool {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let Ok(version) = hash
        .version
        .map(argon2::Version::try_from)
        .transpose()
        .map(Option::unwrap_or_default)
    else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let hashed = HASH_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() != blocks {
            *memory = Vec::new();
            // Reserved larger than glibc's largest mmap threshold (32 MiB), so the buffer is
            // a mapping of its own that freeing gives back to the system (a smaller one can
            // land in the thread's arena and stay resident there); only the blocks the hash
            // touches (~19 MiB) are ever resident.
            memory.reserve_exact(blocks.max(OWN_MAPPING / std::mem::size_of::<argon2::Block>()));
            memory.resize(blocks, argon2::Block::default());
        }
        argon
            .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..])
            .is_ok()
    });
    // `Output`'s equality is constant-time.
    hashed && argon2::password_hash::Output::new(&out).is_ok_and(|o| o == *expected)
}

/// The hash unknown users are checked against: a random password, hashed once per process.
pub fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        // The dummy only has to cost as much as a real check: `verify_password` answers
        // false for it whatever the password. Its password is random all the same.
        let password = SaltString::generate(&mut OsRng);
        hash_password(password.as_str()).unwrap_or_default()
    })
}

/// A domain name's Unicode and A-label forms, both lower case. Literals are refused.
fn domain_forms(domain: &Domain) -> Result<(String, String), &'static str> {
    match domain {
        Domain::Name(_) => Ok((
            domain.to_unicode(),
            domain.to_ascii().map_err(|_| "the domain fails IDNA")?,
        )),
        _ => Err("an address literal is not a domain of ours"),
    }
}

/// Lower case, then NFC.
fn normalize_local(local: &str) -> String {
    local.to_lowercase().nfc().collect()
}

/// Whether a normalised local part can name a user here (see the module doc).
fn check_local(local: &str) -> Result<(), &'static str> {
    if local.is_empty() {
        return Err("the local part is empty");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("the local part must not start or end with a dot, or hold two in a row");
    }
    if !local
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
    {
        return Err(
            "a user's local part may hold only letters, digits, '.', '-', '_' and '+' (no '%', '!', '@', quotes or spaces)",
        );
    }
    if local.len() > 64 {
        return Err("the local part is longer than 64 octets");
    }
    Ok(())
}

/// Whether `name` is safe as one path component (a domain directory name).
fn safe_component(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0'])
}

/// Parses one line of a users file of `domain`'s directory: `None` for a blank or comment line.
fn parse_line(line: &str, domain: &Address) -> Result<Option<User>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut fields = line.split_whitespace();
    let addr = fields.next().unwrap_or_default();
    let address = if addr.contains('@') {
        let a = Address::parse(addr).map_err(|e| e.to_string())?;
        if a.ascii_domain() != domain.ascii_domain() {
            return Err(format!(
                "{a} is not in the domain {} of this file",
                domain.domain()
            ));
        }
        a
    } else {
        Address::with_local(addr, domain).map_err(|r| format!("malformed user {addr:?}: {r}"))?
    };
    let password = match fields.next() {
        None | Some("-") => None,
        Some(phc) => {
            PasswordHash::new(phc)
                .map_err(|e| format!("the password of {address} is not a PHC string: {e}"))?;
            Some(phc.to_string())
        }
    };
    let mut receive_only = false;
    for flag in fields {
        match flag {
            RECEIVE_ONLY => receive_only = true,
            _ => return Err(format!("unknown flag {flag:?} (known: {RECEIVE_ONLY})")),
        }
    }
    Ok(Some(User {
        address,
        password,
        receive_only,
    }))
}

/// Replaces `path` with `text` atomically ([`crate::files::replace`]). An existing file's
/// mode and owner are kept; a new one is 0640 and owned like its directory (when we may
/// chown: `postern user` run as root for a server that runs as another user must leave a file
/// that server can read).
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let (mode, owner) = match fs::metadata(path) {
        Ok(m) => (m.permissions().mode() & 0o7777, Some((m.uid(), m.gid()))),
        Err(_) => (0o640, crate::files::dir_owner(path)),
    };
    crate::files::replace(path, text.as_bytes(), mode, owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_normalise_one_way() {
        let cases = [
            ("alice@example.org", "alice@example.org"),
            ("Alice@EXAMPLE.org", "alice@example.org"),
            ("\"alice\"@example.org", "alice@example.org"),
            ("josé@bücher.example", "josé@bücher.example"),
            // NFD é (e + combining acute) is NFC é.
            ("jose\u{301}@bücher.example", "josé@bücher.example"),
            ("josé@xn--bcher-kva.example", "josé@bücher.example"),
            ("JOSÉ@XN--BCHER-KVA.EXAMPLE", "josé@bücher.example"),
            // UTS #46 maps full-width letters.
            ("bob@ｅｘａｍｐｌｅ.org", "bob@example.org"),
        ];
        for (input, want) in cases {
            let a = Address::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(a.to_string(), want, "input {input}");
        }
        assert_eq!(
            Address::parse("a@bücher.example")
                .map(|a| a.ascii_domain().to_string())
                .ok(),
            Some("xn--bcher-kva.example".to_string())
        );
        for bad in [
            "alice",
            "alice@",
            "@example.org",
            "user%other@example.org",
            "other!user@example.org",
            "\"user@other\"@example.org",
            "user@other@example.org",
            "a b@example.org",
            ".alice@example.org",
            "al..ice@example.org",
            "alice@example.org.",
            "alice@[127.0.0.1]",
            "alice@[IPv6:::1]",
            "../etc@example.org",
        ] {
            assert!(
                Address::parse(bad).is_err(),
                "input {bad} should be refused"
            );
        }
    }

    #[test]
    fn unknown_users_cost_a_real_check() {
        // Unknown users are checked against the dummy hash: the same algorithm, version and
        // cost parameters as a real user's, so the work (and so the time) is the same. Speed
        // itself is a benchmark's business, not a test's.
        let real_phc = hash_password("pw").expect("hash");
        let real = PasswordHash::new(&real_phc).expect("real PHC");
        let dummy = PasswordHash::new(dummy_hash()).expect("dummy PHC");
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert_ne!(dummy.salt, real.salt);
        // And such a check never succeeds, whatever the guess.
        assert!(!verify_password(None, "guess"));
        assert!(!verify_password(Some("not a PHC string"), "guess"));
        assert!(verify_password(Some(&real_phc), "pw"));
    }

    /// Hashes made elsewhere, with other costs and algorithms, verify with the reused memory
    /// (it is resized to each hash's cost), and only for the right password.
    #[test]
    fn hashes_of_other_costs_verify_on_one_thread() {
        use argon2::{Algorithm, Params, Version};
        let salt = SaltString::encode_b64(b"sixteen byte slt").expect("salt");
        for (algorithm, m_cost, t_cost) in [
            (Algorithm::Argon2id, 8, 1),
            (Algorithm::Argon2i, 64, 2),
            (Algorithm::Argon2d, 4096, 1),
            (Algorithm::Argon2id, 8, 1),
        ] {
            let params = Params::new(m_cost, t_cost, 1, None).expect("params");
            let phc = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"right", &salt)
                .expect("hash")
                .to_string();
            assert!(verify_password(Some(&phc), "right"), "{phc}");
            assert!(!verify_password(Some(&phc), "wrong"), "{phc}");
        }
    }

    #[test]
    fn lines_parse() {
        let domain = Address::parse("postmaster@example.org").expect("domain");
        let phc = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        let ok = [
            ("# comment", None),
            ("   ", None),
            ("alice", Some(("alice@example.org", false, false))),
            ("Bob@Example.ORG", Some(("bob@example.org", false, false))),
            (
                &format!("carol@example.org {phc}") as &str,
                Some(("carol@example.org", true, false)),
            ),
            (
                "info@example.org\t-\treceive-only",
                Some(("info@example.org", false, true)),
            ),
        ];
        for (line, want) in ok {
            let got = parse_line(line, &domain).unwrap_or_else(|e| panic!("{line}: {e}"));
            let got = got.map(|u| (u.address.to_string(), u.password.is_some(), u.receive_only));
            let want = want.map(|(a, p, r)| (a.to_string(), p, r));
            assert_eq!(got, want, "line {line:?}");
        }
        for bad in [
            "eve@other.org",
            "alice@example.org notaphc",
            "alice@example.org - sendonly",
            "a%b",
        ] {
            assert!(parse_line(bad, &domain).is_err(), "line {bad:?}");
        }
    }

    #[test]
    fn add_remove_passwd_and_reload() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let domains = tmp.path().join("domains");
        fs::create_dir_all(domains.join("example.org")).expect("mkdir");
        fs::write(domains.join("example.org/users"), "# ours\nold\n").expect("write");
        let db = UserDb::new(domains.clone());
        let alice = Address::parse("Alice@Example.org").expect("addr");
        let hash = hash_password("s3cret").expect("hash");
        db.add(User {
            address: alice.clone(),
            password: Some(hash.clone()),
            receive_only: false,
        })
        .expect("add");
        let text = fs::read_to_string(domains.join("example.org/users")).expect("read");
        assert_eq!(text, format!("# ours\nold\nalice@example.org {hash}\n"));
        let got = db.get(&alice).expect("get").expect("alice exists");
        assert!(verify_password(got.password.as_deref(), "s3cret"));
        assert!(!verify_password(got.password.as_deref(), "S3cret"));
        assert!(!verify_password(None, "s3cret"));

        let dup = db.add(User {
            address: alice.clone(),
            password: None,
            receive_only: true,
        });
        assert!(matches!(dup, Err(UserDbError::Duplicate(_))), "{dup:?}");

        db.set_password(&alice, hash_password("other").expect("hash"))
            .expect("passwd");
        let got = db.get(&alice).expect("get").expect("alice exists");
        assert!(verify_password(got.password.as_deref(), "other"));

        db.remove(&alice).expect("remove");
        assert!(db.get(&alice).expect("get").is_none());
        assert_eq!(
            fs::read_to_string(domains.join("example.org/users")).expect("read"),
            "# ours\nold\n"
        );
        // An edit by hand is seen at the next lookup.
        fs::write(domains.join("example.org/users"), "alice - receive-only\n").expect("write");
        let got = db.get(&alice).expect("get").expect("alice is back");
        assert!(got.receive_only);

        let unknown = db.remove(&Address::parse("x@nowhere.example").expect("addr"));
        assert!(
            matches!(unknown, Err(UserDbError::UnknownDomain { .. })),
            "{unknown:?}"
        );
    }
}

//! TLS policy memory: the best TLS level each recipient domain has shown, so that outbound
//! delivery never goes back to a weaker one (the idea of chasquid's domaininfo).
//!
//! Levels are ordered [`Level::Plaintext`] < [`Level::Tls`] (encrypted, certificate not
//! verified) < [`Level::Verified`] (encrypted, certificate valid for the MX host). After each
//! delivery, the outbound worker calls [`TlsMemory::record`] with the level the connection
//! reached; before each delivery it asks [`TlsMemory::required`] for the level the
//! connection must reach at least. A connection that cannot reach it is a temporary failure
//! (the message is deferred, not sent in a weaker way): an attacker who strips STARTTLS or
//! swaps the certificate delays mail instead of reading it.
//!
//! Levels only ever rise on their own. To let a domain go back (it really lost its
//! certificate), the operator runs `postern tls forget DOMAIN` ([`forget`]), which removes its
//! line; `postern tls list` shows what is remembered. The running server sees the file change
//! within a second ([`CHECK_INTERVAL`]) and takes it as it is; the server and the command
//! line take turns on a lock of the data directory, so neither overwrites the other's change.
//!
//! # The file
//!
//! `<data_dir>/tls-domains`, text, one domain a line: `<domain> <level>`, the domain in
//! lower case ASCII (A-labels for IDNs), the level one of `plaintext`, `tls`, `verified`.
//! Blank lines and lines starting with `#` are ignored. A bad line is reported (file and line
//! number) and skipped; the other lines still load. A domain listed twice keeps its highest
//! level. The file is rewritten whole each time a level rises: a temporary file beside it,
//! fsync, rename, fsync of the directory, so a crash leaves the old file or the new one.
//!
//! ```text
//! # postern: best TLS level seen per recipient domain
//! example.org verified
//! legacy.example tls
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often the server looks whether the file was changed by someone else, at most.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The file's version ([`crate::files::Stamp`]); `None`: no file.
type Stamp = Option<crate::files::Stamp>;

/// The name of the file in the data directory.
pub const FILE_NAME: &str = "tls-domains";

/// The longest domain name accepted (RFC 1035 2.3.4: 255 octets on the wire, 253 as text).
const MAX_DOMAIN: usize = 253;

/// How secure a connection to a domain's MX was, from worst to best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Level {
    /// No TLS: the message went in the clear.
    Plaintext,
    /// TLS, but the certificate was not verified (self-signed, expired, another name).
    Tls,
    /// TLS with a certificate valid for the MX host, chaining to a trusted root.
    Verified,
}

/// The remembered levels of all domains, shared by the delivery workers.
///
/// [`TlsMemory::required`] takes a lock only for a map lookup. [`TlsMemory::record`] writes
/// the file (fsync) when a level rises, which is rare: from async code, call it through
/// `smol::unblock` or accept a short stall.
#[derive(Debug)]
pub struct TlsMemory {
    path: PathBuf,
    state: Mutex<State>,
    /// Serialises reading and writing the file; what it was when last read or written.
    file: Mutex<FileState>,
}

#[derive(Debug, Default)]
struct State {
    levels: HashMap<String, Level>,
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    checked: Instant,
}

/// A line of a state file that could not be read, skipped at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The file.
    pub file: PathBuf,
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Why [`TlsMemory::record`] refused a domain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The domain cannot be written as one word of the file.
    #[error("{0:?} is not a domain name that can be remembered")]
    InvalidDomain(String),
    /// The level was raised in memory but the file could not be written: it holds until the
    /// next successful write or a restart.
    #[error("{}: cannot save the TLS level: {source}", path.display())]
    Save {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl Level {
    /// The word used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Plaintext => "plaintext",
            Level::Tls => "tls",
            Level::Verified => "verified",
        }
    }
}

impl TlsMemory {
    /// Loads `path` (a missing file is an empty memory). Bad lines are skipped and returned,
    /// for the caller to log; an unreadable file is an error.
    pub fn open(path: &Path) -> io::Result<(TlsMemory, Vec<BadLine>)> {
        let stamp = crate::files::stamp(path)?;
        let (levels, bad) = read(path)?;
        let memory = TlsMemory {
            path: path.to_path_buf(),
            state: Mutex::new(State { levels }),
            file: Mutex::new(FileState {
                stamp,
                checked: Instant::now(),
            }),
        };
        Ok((memory, bad))
    }

    /// The level the next delivery to `domain` must reach: the best one it has shown
    /// ([`Level::Plaintext`] for a domain never seen). Looks at the file first when
    /// [`CHECK_INTERVAL`] has passed (a `postern tls forget` since).
    pub fn required(&self, domain: &str) -> Level {
        if let Ok(mut file) = self.file.try_lock()
            && file.checked.elapsed() >= CHECK_INTERVAL
        {
            self.refresh(&mut file);
        }
        let domain = normalise(domain);
        self.lock_state()
            .levels
            .get(&domain)
            .copied()
            .unwrap_or(Level::Plaintext)
    }

    /// Every remembered domain and its level, in name order.
    pub fn levels(&self) -> Vec<(String, Level)> {
        let mut all: Vec<(String, Level)> = self
            .lock_state()
            .levels
            .iter()
            .map(|(d, l)| (d.clone(), *l))
            .collect();
        all.sort();
        all
    }

    /// Takes the file as it is now if someone else changed it. Problems are logged; the
    /// levels in memory stay when the file cannot be read.
    fn refresh(&self, file: &mut FileState) {
        file.checked = Instant::now();
        let now = match crate::files::stamp(&self.path) {
            Ok(now) => now,
            Err(_) => return,
        };
        if now == file.stamp {
            return;
        }
        match read(&self.path) {
            Ok((levels, bad)) => {
                for line in bad {
                    crate::log::line(crate::log::Event::Config)
                        .text("msg", format_args!("{line}; line skipped"))
                        .write();
                }
                self.lock_state().levels = levels;
                file.stamp = now;
            }
            Err(e) => crate::log::line(crate::log::Event::Config)
                .text(
                    "msg",
                    format_args!("{}: {e}; keeping the levels known", self.path.display()),
                )
                .write(),
        }
    }

    /// Notes that a delivery to `domain` reached `level`. Raises the remembered level when
    /// `level` is better, and then saves the file before returning; a lower or equal level
    /// changes nothing. Returns whether the level rose.
    pub fn record(&self, domain: &str, level: Level) -> Result<bool, RecordError> {
        let domain = normalise(domain);
        if !valid_domain(&domain) {
            return Err(RecordError::InvalidDomain(domain));
        }
        let known = self.lock_state().levels.get(&domain).copied();
        if known.is_some_and(|k| k >= level) || (known.is_none() && level == Level::Plaintext) {
            return Ok(false);
        }
        // A raise: under the file's turn and the directory's lock, take in any change made
        // meanwhile (a forget), raise, write.
        let save_error = |source| RecordError::Save {
            path: self.path.clone(),
            source,
        };
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let lock = lock_dir(&self.path);
        self.refresh(&mut file);
        let text = {
            let mut state = self.lock_state();
            let known = state.levels.get(&domain).copied();
            if known.is_some_and(|k| k >= level) {
                return Ok(false);
            }
            state.levels.insert(domain, level);
            render(&state.levels)
        };
        // The stamp is taken while the directory is still locked: a forget waiting for the
        // lock changes the file after, and is seen as someone else's change.
        let written = lock.and_then(|_held| {
            let done = crate::files::replace(
                &self.path,
                text.as_bytes(),
                0o600,
                crate::files::dir_owner(&self.path),
            );
            // Our own write is no change to take in later, whether it landed or not.
            file.stamp = crate::files::stamp(&self.path).unwrap_or(file.stamp);
            done
        });
        written.map_err(save_error)?;
        Ok(true)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plaintext" => Ok(Level::Plaintext),
            "tls" => Ok(Level::Tls),
            "verified" => Ok(Level::Verified),
            other => Err(format!(
                "unknown level {other:?} (want plaintext, tls or verified)"
            )),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// Removes `domain` from the file at `path` (the running server follows within a second).
/// Returns the level it had, `None` when it was not remembered (the file is then left alone).
pub fn forget(path: &Path, domain: &str) -> io::Result<Option<Level>> {
    let domain = normalise(domain);
    let _held = lock_dir(path)?;
    let (mut levels, _) = read(path)?;
    let Some(level) = levels.remove(&domain) else {
        return Ok(None);
    };
    // Owned like the data directory: `postern tls forget` run as root must leave a file the
    // server's user can read.
    crate::files::replace(
        path,
        render(&levels).as_bytes(),
        0o600,
        crate::files::dir_owner(path),
    )?;
    Ok(Some(level))
}

/// The levels in the file at `path` (missing: none), and its bad lines.
fn read(path: &Path) -> io::Result<(HashMap<String, Level>, Vec<BadLine>)> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut levels: HashMap<String, Level> = HashMap::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok((domain, level)) => {
                let known = levels.entry(domain).or_insert(level);
                *known = (*known).max(level);
            }
            Err(reason) => bad.push(BadLine {
                file: path.to_path_buf(),
                line: i + 1,
                reason,
            }),
        }
    }
    Ok((levels, bad))
}

/// An exclusive lock of the directory holding `path`, held while the returned file is open:
/// the server and `postern tls forget` take turns.
fn lock_dir(path: &Path) -> io::Result<fs::File> {
    let handle = fs::File::open(crate::files::parent_dir(path))?;
    handle.lock()?;
    Ok(handle)
}

/// A domain as stored: lower case, no trailing dot.
fn normalise(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `domain` (normalised) fits in the file: printable ASCII without spaces, not
/// starting with `#`, not too long.
fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= MAX_DOMAIN
        && !domain.starts_with('#')
        && domain.bytes().all(|b| b.is_ascii_graphic())
}

/// Parses `<domain> <level>`.
fn parse_line(line: &str) -> Result<(String, Level), String> {
    let mut words = line.split_whitespace();
    let (Some(domain), Some(level), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("want `<domain> <level>`, got {line:?}"));
    };
    let domain = normalise(domain);
    if !valid_domain(&domain) {
        return Err(format!("{domain:?} is not a domain name"));
    }
    Ok((domain, level.parse()?))
}

/// The file's text: a header, then the domains in name order (stable diffs for operators).
fn render(levels: &HashMap<String, Level>) -> String {
    let mut domains: Vec<(&String, &Level)> = levels.iter().collect();
    domains.sort();
    let mut text = String::from("# postern: best TLS level seen per recipient domain\n");
    for (domain, level) in domains {
        text.push_str(&format!("{domain} {level}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> (TlsMemory, Vec<BadLine>) {
        TlsMemory::open(path).expect("open")
    }

    #[test]
    fn levels_are_ordered() {
        assert!(Level::Plaintext < Level::Tls && Level::Tls < Level::Verified);
        for level in [Level::Plaintext, Level::Tls, Level::Verified] {
            assert_eq!(level.as_str().parse::<Level>(), Ok(level), "{level}");
        }
    }

    #[test]
    fn unknown_domains_require_nothing_and_missing_file_is_empty() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (memory, bad) = open(&tmp.path().join(FILE_NAME));
        assert!(bad.is_empty());
        assert_eq!(memory.required("example.org"), Level::Plaintext);
        assert!(!tmp.path().join(FILE_NAME).exists(), "open writes nothing");
    }

    #[test]
    fn levels_only_rise() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (memory, _) = open(&tmp.path().join(FILE_NAME));
        // (recorded level, rose?, required afterwards)
        let steps = [
            (Level::Plaintext, false, Level::Plaintext),
            (Level::Tls, true, Level::Tls),
            (Level::Plaintext, false, Level::Tls),
            (Level::Verified, true, Level::Verified),
            (Level::Tls, false, Level::Verified),
            (Level::Verified, false, Level::Verified),
        ];
        for (i, (level, rose, required)) in steps.into_iter().enumerate() {
            assert_eq!(
                memory.record("Example.ORG.", level).expect("record"),
                rose,
                "step {i}: record {level}"
            );
            assert_eq!(memory.required("example.org"), required, "step {i}");
        }
        assert_eq!(memory.required("other.example"), Level::Plaintext);
    }

    #[test]
    fn persisted_across_reopen_without_downgrade() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(FILE_NAME);
        {
            let (memory, _) = open(&path);
            memory.record("a.example", Level::Verified).expect("a");
            memory.record("b.example", Level::Tls).expect("b");
            memory
                .record("a.example", Level::Plaintext)
                .expect("a again");
        }
        let (memory, bad) = open(&path);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(memory.required("a.example"), Level::Verified);
        assert_eq!(memory.required("b.example"), Level::Tls);
        assert!(!memory.record("a.example", Level::Tls).expect("a"));
        memory.record("b.example", Level::Verified).expect("b up");
        drop(memory);
        let (memory, _) = open(&path);
        assert_eq!(memory.required("b.example"), Level::Verified);
        let text = fs::read_to_string(&path).expect("read");
        assert!(
            text.ends_with("a.example verified\nb.example verified\n"),
            "{text}"
        );
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(FILE_NAME)]);
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(FILE_NAME);
        let text = "# comment\n\
                    good.example verified\n\
                    \n\
                    broken.example\n\
                    odd.example excellent\n\
                    too.many words here\n\
                    twice.example tls\n\
                    twice.example verified\n\
                    twice.example plaintext\n\
                    Upper.Example. tls\n";
        fs::write(&path, text).expect("write");
        let (memory, bad) = open(&path);
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![4, 5, 6], "{bad:?}");
        let shown = bad[1].to_string();
        assert!(
            shown.starts_with(&format!("{}:5: ", path.display())) && shown.contains("excellent"),
            "{shown}"
        );
        assert_eq!(memory.required("good.example"), Level::Verified);
        assert_eq!(memory.required("twice.example"), Level::Verified);
        assert_eq!(memory.required("upper.example"), Level::Tls);
        assert_eq!(memory.required("broken.example"), Level::Plaintext);
    }

    #[test]
    fn domains_that_would_break_the_file_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (memory, _) = open(&tmp.path().join(FILE_NAME));
        let long = format!("{}.example", "a".repeat(MAX_DOMAIN));
        for domain in ["", ".", "two words", "#hash", "new\nline", &long] {
            assert!(
                matches!(
                    memory.record(domain, Level::Tls),
                    Err(RecordError::InvalidDomain(_))
                ),
                "{domain:?}"
            );
        }
        assert!(!tmp.path().join(FILE_NAME).exists());
    }

    #[test]
    fn a_failed_save_keeps_the_level_in_memory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("missing-dir").join(FILE_NAME);
        let (memory, _) = open(&path);
        assert!(matches!(
            memory.record("example.org", Level::Verified),
            Err(RecordError::Save { .. })
        ));
        assert_eq!(memory.required("example.org"), Level::Verified);
    }

    #[test]
    fn a_forgotten_domain_is_dropped_by_the_running_memory_too() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(FILE_NAME);
        let (memory, _) = open(&path);
        memory.record("a.example", Level::Verified).expect("a");
        memory.record("b.example", Level::Tls).expect("b");
        assert_eq!(
            forget(&path, "A.Example.").expect("forget"),
            Some(Level::Verified)
        );
        assert_eq!(forget(&path, "never.example").expect("forget"), None);
        // The running memory takes the file in at its next look (a second at most)...
        std::thread::sleep(CHECK_INTERVAL);
        assert_eq!(memory.required("a.example"), Level::Plaintext);
        assert_eq!(memory.required("b.example"), Level::Tls);
        // ...and a later raise of another domain does not bring it back.
        memory.record("c.example", Level::Tls).expect("c");
        let text = fs::read_to_string(&path).expect("read");
        assert!(!text.contains("a.example"), "{text}");
        assert!(text.contains("b.example tls\nc.example tls\n"), "{text}");
        assert_eq!(
            memory.levels(),
            vec![
                ("b.example".into(), Level::Tls),
                ("c.example".into(), Level::Tls)
            ]
        );
    }

    #[test]
    fn a_raise_takes_in_a_forget_made_just_before() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(FILE_NAME);
        let (memory, _) = open(&path);
        memory.record("a.example", Level::Tls).expect("a");
        forget(&path, "a.example").expect("forget");
        // No wait: the raise itself looks at the file first.
        memory.record("b.example", Level::Tls).expect("b");
        let text = fs::read_to_string(&path).expect("read");
        assert!(!text.contains("a.example"), "{text}");
        assert_eq!(memory.required("a.example"), Level::Plaintext);
    }

    #[test]
    fn concurrent_raises_all_reach_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(FILE_NAME);
        let (memory, _) = open(&path);
        let memory = std::sync::Arc::new(memory);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let memory = memory.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        memory
                            .record(&format!("d{t}-{i}.example"), Level::Tls)
                            .expect("record");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let (reopened, bad) = open(&path);
        assert!(bad.is_empty());
        for t in 0..4 {
            for i in 0..10 {
                assert_eq!(reopened.required(&format!("d{t}-{i}.example")), Level::Tls);
            }
        }
    }
}

//! Aliases: `domains/<domain>/aliases`, read, watched and resolved.
//!
//! The file format and the resolution rules are documented in proto-core's alias module
//! (`proto_core::mail::AliasTable`, `proto_core::mail::resolve`); this module only does the I/O around
//! them:
//!
//! - Every directory under `domains/` is a local domain; its `aliases` file is optional (no
//!   file is an empty table). Files larger than [`MAX_FILE_SIZE`] are refused.
//! - Changes are picked up without a restart: [`Aliases::tables`] (and so
//!   [`Aliases::resolve`]) looks at the files again when at least [`CHECK_INTERVAL`] has passed
//!   since the last look, and re-reads a file only when its inode, size or modification time
//!   changed (an editor's rename counts). [`Aliases::reload`] looks at once, e.g. on SIGHUP.
//!   So an edited file is in force at most a second after it is saved.
//! - A file that cannot be parsed keeps the domain's previous table (an empty one if there
//!   never was a good one) and is logged once per version, naming the file, the line and the
//!   reason: `config aliases: /etc/postern/domains/example.org/aliases, line 3: missing ':'
//!   ...; keeping the previous table`. Duplicate keys are logged as warnings.
//!
//! "Does this user exist" comes from the caller ([`Aliases::resolve`] takes the callback): the
//! server and `postern alias resolve` both ask
//! [`crate::directory::recipients::Recipients::user_exists`], so they agree.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use toml::Spanned;

use proto_core::{
    Mailbox, mail::AliasError, mail::AliasOptions, mail::AliasTable, mail::AliasTables,
    mail::Resolved, mail::UserExists,
};

/// The aliases file's name inside a domain directory.
pub const ALIASES_FILE: &str = "aliases";

/// The largest aliases file read: 4 MiB (some 100,000 aliases).
pub const MAX_FILE_SIZE: u64 = 4 * 1024 * 1024;

/// How often the files are looked at, at most.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The alias tables of every local domain, kept up to date with the files.
#[derive(Debug)]
pub struct Aliases {
    domains_dir: PathBuf,
    options: AliasOptions,
    check_interval: Duration,
    state: Mutex<State>,
}

/// What was read, and when we last looked.
#[derive(Debug, Default)]
struct State {
    tables: Arc<AliasTables>,
    /// By domain directory name.
    files: BTreeMap<String, FileState>,
    checked: Option<Instant>,
}

/// One domain's file: the version last looked at, and the table in force.
#[derive(Debug)]
struct FileState {
    path: PathBuf,
    /// `None`: there is no file.
    stamp: Option<crate::files::Stamp>,
    table: AliasTable,
}

/// A problem with an aliases file: the file, the line when there is one, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// The 1-based line, if the problem is on one.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
    /// Whether the file was refused (a warning leaves it in force).
    pub refused: bool,
}

impl Aliases {
    /// How addresses are cleaned, and the limits of a resolution.
    pub fn options(&self) -> &AliasOptions {
        &self.options
    }

    /// The aliases of the domains under `domains_dir` (`<config>/domains`), cleaned with
    /// `options`. Nothing is read until the first lookup or [`Aliases::reload`].
    pub fn new(domains_dir: PathBuf, options: AliasOptions) -> Aliases {
        Aliases {
            domains_dir,
            options,
            check_interval: CHECK_INTERVAL,
            state: Mutex::new(State::default()),
        }
    }

    /// Looks at the files at most once per `interval` (tests use zero: at every lookup).
    #[cfg(test)]
    pub fn with_check_interval(mut self, interval: Duration) -> Aliases {
        self.check_interval = interval;
        self
    }

    /// The tables in force, after looking at the files if [`CHECK_INTERVAL`] has passed.
    /// Problems are logged.
    pub fn tables(&self) -> Arc<AliasTables> {
        let mut state = self.lock();
        let due = state
            .checked
            .is_none_or(|t| t.elapsed() >= self.check_interval);
        if due {
            for p in self.refresh(&mut state) {
                log_problem(&p);
            }
        }
        state.tables.clone()
    }

    /// Looks at every file now, and returns the problems found in files that changed since
    /// the last look (they are logged too). Call it on SIGHUP, or once at startup to report.
    pub fn reload(&self) -> Vec<Problem> {
        let mut state = self.lock();
        let problems = self.refresh(&mut state);
        for p in &problems {
            log_problem(p);
        }
        problems
    }

    /// Like [`Aliases::reload`] without logging: for the command line, which prints them.
    pub fn load_quietly(&self) -> Vec<Problem> {
        let mut state = self.lock();
        self.refresh(&mut state)
    }

    /// The aliases file of a local domain (any form), if the domain is local.
    pub fn file_of(&self, domain: &str) -> Option<PathBuf> {
        let state = self.lock();
        let table = state.tables.get(domain)?;
        state
            .files
            .values()
            .find(|f| f.table.domain() == table.domain())
            .map(|f| f.path.clone())
    }

    /// Where a message to `address` goes: see `proto_core::mail::resolve`. `exists` says whether a
    /// user exists: [`crate::directory::recipients::Recipients::user_exists`], for the server
    /// and the command line alike.
    pub fn resolve(
        &self,
        address: &Mailbox,
        exists: UserExists<'_>,
    ) -> Result<Vec<Resolved>, AliasError> {
        let tables = self.tables();
        proto_core::mail::resolve(address, &tables, exists, &self.options)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the files that changed, and rebuilds the tables. Returns the problems of the
    /// files read (unchanged files are not read, so an old problem is not repeated).
    fn refresh(&self, state: &mut State) -> Vec<Problem> {
        state.checked = Some(Instant::now());
        let mut problems = Vec::new();
        let names = match crate::directory::domain_names(&self.domains_dir) {
            Ok(names) => names,
            Err(e) => {
                // Keep what we have: a transient error must not drop every alias.
                problems.push(Problem {
                    path: self.domains_dir.clone(),
                    line: None,
                    reason: e.to_string(),
                    refused: true,
                });
                return problems;
            }
        };
        let mut files = BTreeMap::new();
        for name in names {
            let path = self.domains_dir.join(&name).join(ALIASES_FILE);
            let previous = state.files.remove(&name);
            let stamp = crate::files::stamp(&path).ok().flatten();
            if let Some(prev) = previous.as_ref().filter(|p| p.stamp == stamp) {
                files.insert(name, clone_state(prev));
                continue;
            }
            let fallback = || {
                previous
                    .as_ref()
                    .map(|p| p.table.clone())
                    .unwrap_or_else(|| AliasTable::empty(&name))
            };
            let table = match self.read(&name, &path, stamp.is_some()) {
                Ok((table, warnings)) => {
                    problems.extend(warnings.into_iter().map(|w| Problem {
                        path: path.clone(),
                        line: Some(w.line),
                        reason: w.reason,
                        refused: false,
                    }));
                    table
                }
                Err(p) => {
                    problems.push(p);
                    fallback()
                }
            };
            files.insert(name, FileState { path, stamp, table });
        }
        let mut tables = AliasTables::new();
        for f in files.values() {
            tables.insert(f.table.clone());
        }
        state.files = files;
        state.tables = Arc::new(tables);
        problems
    }

    /// Reads and parses one file (`exists`: whether there is one to read).
    fn read(
        &self,
        domain: &str,
        path: &Path,
        exists: bool,
    ) -> Result<(AliasTable, Vec<proto_core::mail::AliasWarning>), Problem> {
        let refused = |line: Option<usize>, reason: String| Problem {
            path: path.to_path_buf(),
            line,
            reason,
            refused: true,
        };
        let text = if exists {
            read_limited(path).map_err(|e| refused(None, e.to_string()))?
        } else {
            String::new()
        };
        AliasTable::parse(domain, &text, &self.options).map_err(|e| {
            // Line 0: the directory name is not a domain.
            let line = (e.line > 0).then_some(e.line);
            refused(line, e.reason)
        })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Logs a problem once.
fn log_problem(p: &Problem) {
    let what = if p.refused {
        "; keeping the previous table"
    } else {
        " (warning)"
    };
    crate::log::line(crate::log::Event::Config)
        .text("msg", format_args!("aliases: {p}{what}"))
        .write();
}

/// Reads a file of at most [`MAX_FILE_SIZE`] octets as UTF-8.
fn read_limited(path: &Path) -> io::Result<String> {
    let file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(io::Error::other(format!(
            "larger than {MAX_FILE_SIZE} octets; refused"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 (octet {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// A copy of a file's state (the table is cloned: tables are small, refreshes rare).
fn clone_state(f: &FileState) -> FileState {
    FileState {
        path: f.path.clone(),
        stamp: f.stamp,
        table: f.table.clone(),
    }
}

/// `[aliases]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAliases {
    pub(crate) drop_characters: Option<String>,
    pub(crate) suffix_separators: Option<Spanned<String>>,
    pub(crate) srs_max_age_days: Option<Spanned<u16>>,
}

/// `[aliases]` of postern.toml: the resolution options and the SRS age limit in days.
pub(crate) fn parse_settings(
    raw: RawAliases,
    src: &crate::config::Source<'_>,
) -> Result<(proto_core::mail::AliasOptions, u16), crate::config::ConfigError> {
    let mut alias_options = proto_core::mail::AliasOptions::default();
    if let Some(d) = raw.drop_characters {
        alias_options.drop_characters = d;
    }
    if let Some(sep) = raw.suffix_separators {
        if sep
            .get_ref()
            .chars()
            .any(|c| c.is_alphanumeric() || c == '@')
        {
            return Err(src.error(
                Some(sep.span()),
                format!(
                    "suffix_separators = {:?} holds letters, digits or @",
                    sep.get_ref()
                ),
                "give punctuation only, e.g. suffix_separators = \"+\" or \"+-\"",
            ));
        }
        alias_options.suffix_separators = sep.into_inner();
    }
    let srs_max_age_days = match raw.srs_max_age_days {
        Some(d) if *d.get_ref() == 0 || *d.get_ref() > 1000 => {
            return Err(src.error(
                Some(d.span()),
                format!("srs_max_age_days = {} is out of range", d.get_ref()),
                "give a number of days from 1 to 1000, e.g. 21",
            ));
        }
        Some(d) => d.into_inner(),
        None => crate::config::DEFAULT_SRS_MAX_AGE_DAYS,
    };
    Ok((alias_options, srs_max_age_days))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(aliases: &Aliases, address: &str) -> Result<Vec<String>, AliasError> {
        let m = Mailbox::parse(address).expect("address");
        let exists = |_: &str, user: &str| -> Result<bool, String> { Ok(user == "alice") };
        aliases
            .resolve(&m, &exists)
            .map(|r| r.iter().map(|r| r.destination.to_string()).collect())
    }

    #[test]
    fn changes_are_picked_up_and_broken_files_keep_the_previous_table() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let domains = tmp.path().join("domains");
        fs::create_dir_all(domains.join("example.org")).expect("mkdir");
        fs::create_dir_all(domains.join("other.example")).expect("mkdir");
        let file = domains.join("example.org").join(ALIASES_FILE);
        fs::write(&file, "sales: alice\n").expect("write");
        let aliases = Aliases::new(domains.clone(), AliasOptions::default())
            .with_check_interval(Duration::ZERO);
        assert_eq!(aliases.reload(), vec![]);
        assert_eq!(
            resolve(&aliases, "sales@example.org"),
            Ok(vec!["local alice@example.org".to_string()])
        );
        // A domain without a file is local, with no aliases.
        assert_eq!(
            resolve(&aliases, "bob@other.example"),
            Ok(vec!["unknown bob@other.example".to_string()])
        );

        // An edit is seen at the next lookup, without a restart.
        fs::write(&file, "sales: alice, ext@remote.example\n").expect("write");
        assert_eq!(
            resolve(&aliases, "sales@example.org"),
            Ok(vec![
                "local alice@example.org".to_string(),
                "remote ext@remote.example".to_string()
            ])
        );

        // A broken file: reported with its line, the previous table stays.
        fs::write(&file, "# ok\nsales alice\n").expect("write");
        let problems = aliases.reload();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].line, Some(2));
        assert!(problems[0].refused);
        let shown = problems[0].to_string();
        assert!(
            shown.starts_with(&format!("{}, line 2: missing ':'", file.display())),
            "{shown}"
        );
        assert_eq!(
            resolve(&aliases, "sales@example.org"),
            Ok(vec![
                "local alice@example.org".to_string(),
                "remote ext@remote.example".to_string()
            ])
        );
        // Reported once per version, not at every look.
        assert_eq!(aliases.reload(), vec![]);

        // Fixed: in force again. Removed: no aliases.
        fs::write(&file, "info: alice\n").expect("write");
        assert_eq!(
            resolve(&aliases, "info@example.org"),
            Ok(vec!["local alice@example.org".to_string()])
        );
        fs::remove_file(&file).expect("rm");
        assert_eq!(
            resolve(&aliases, "info@example.org"),
            Ok(vec!["unknown info@example.org".to_string()])
        );
        assert_eq!(aliases.file_of("EXAMPLE.org"), Some(file.clone()));
        assert_eq!(aliases.file_of("nowhere.example"), None);

        // Too large: refused like a broken file.
        fs::write(&file, "a: alice\n").expect("write");
        aliases.reload();
        let big = "# padding\n".repeat((MAX_FILE_SIZE / 10 + 1) as usize);
        fs::write(&file, big).expect("write");
        let problems = aliases.reload();
        assert!(problems[0].reason.contains("larger than"), "{problems:?}");
        assert_eq!(
            resolve(&aliases, "a@example.org"),
            Ok(vec!["local alice@example.org".to_string()])
        );
    }

    #[test]
    fn looks_at_most_once_per_interval() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let domains = tmp.path().join("domains");
        fs::create_dir_all(domains.join("example.org")).expect("mkdir");
        let file = domains.join("example.org").join(ALIASES_FILE);
        fs::write(&file, "a: alice\n").expect("write");
        // An interval no test run reaches: only reload() looks again.
        let aliases = Aliases::new(domains, AliasOptions::default())
            .with_check_interval(Duration::from_secs(3600));
        assert_eq!(resolve(&aliases, "a@example.org").map(|v| v.len()), Ok(1));
        // A different size: a same-size rewrite within one mtime tick would look unchanged.
        fs::write(&file, "bb: alice\n").expect("write");
        assert_eq!(
            resolve(&aliases, "bb@example.org"),
            Ok(vec!["unknown bb@example.org".to_string()])
        );
        aliases.reload();
        assert_eq!(
            resolve(&aliases, "bb@example.org"),
            Ok(vec!["local alice@example.org".to_string()])
        );
    }
}

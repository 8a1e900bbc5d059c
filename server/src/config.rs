//! `postern.toml`: parsing, validation and the settings derived from it.
//!
//! The file format is documented in the generated default (see [`crate::init`]), which is the
//! reference: every key appears there with a comment. Unknown keys are errors, so a typo never
//! silently falls back to a default. Every problem found at startup is a [`ConfigError`] that
//! names the file, the line when there is one, and the fix.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use proto_core::Domain;
use serde::Deserialize;
use toml::Spanned;

/// The configuration file's name inside the configuration directory.
pub const FILE_NAME: &str = "postern.toml";

/// The default largest message: 50 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50 * 1024 * 1024;

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Port 25: mail for local domains from anyone; STARTTLS offered, AUTH only under TLS.
    Smtp,
    /// Port 587 (RFC 6409): STARTTLS, AUTH required before MAIL.
    Submission,
    /// Port 465 (RFC 8314): implicit TLS, AUTH required before MAIL.
    Submissions,
}

/// A listener: an address and its role, with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// What it is for.
    pub role: Role,
    /// Where to listen.
    pub addr: SocketAddr,
    /// The line of `postern.toml` that asked for it.
    pub line: usize,
}

/// Everything `serve` needs, resolved: paths are absolute or relative to the working directory.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration directory.
    pub dir: PathBuf,
    /// The configuration file.
    pub file: PathBuf,
    /// Our host name.
    pub hostname: String,
    /// Where mail and the queue live.
    pub data_dir: PathBuf,
    /// The line of `data_dir` in the file, when it is there.
    pub data_dir_line: Option<usize>,
    /// The largest message accepted.
    pub max_message_size: u64,
    /// Where to listen.
    pub listeners: Vec<Listener>,
}

/// A problem that keeps postern from starting: where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file at fault (or the directory).
    pub file: PathBuf,
    /// The line in it, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    hostname: Option<Spanned<String>>,
    data_dir: Option<Spanned<PathBuf>>,
    max_message_size: Option<Spanned<u64>>,
    #[serde(default)]
    listeners: RawListeners,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListeners {
    #[serde(default)]
    smtp: Vec<Spanned<SocketAddr>>,
    #[serde(default)]
    submission: Vec<Spanned<SocketAddr>>,
    #[serde(default)]
    submissions: Vec<Spanned<SocketAddr>>,
}

impl Role {
    /// The role's name, as in `[listeners]`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Smtp => "smtp",
            Role::Submission => "submission",
            Role::Submissions => "submissions",
        }
    }

    /// Whether MAIL needs a successful AUTH first.
    pub fn requires_auth(self) -> bool {
        matches!(self, Role::Submission | Role::Submissions)
    }
}

impl Settings {
    /// Reads and checks `<dir>/postern.toml`.
    pub fn load(dir: &Path) -> Result<Settings, ConfigError> {
        let file = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&file).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            message: format!("cannot read it: {e}"),
            fix: "make it readable by the user running postern, or point -C at another directory"
                .into(),
        })?;
        Settings::parse(dir, &file, &text)
    }

    /// Checks the text of a configuration file read from `file` in `dir`.
    pub fn parse(dir: &Path, file: &Path, text: &str) -> Result<Settings, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, &s));
            ConfigError {
                file: file.to_path_buf(),
                line,
                message: e.message().trim().to_string(),
                fix: fix_for(e.message()),
            }
        })?;
        let at = |span: Range<usize>| Some(line_of(text, &span));
        let error = |line, message: String, fix: &str| ConfigError {
            file: file.to_path_buf(),
            line,
            message,
            fix: fix.to_string(),
        };

        let hostname = match raw.hostname {
            Some(h) => {
                let line = at(h.span());
                let name = h.into_inner();
                match Domain::parse(&name) {
                    Ok(Domain::Name(_)) => name.to_ascii_lowercase(),
                    _ => {
                        return Err(error(
                            line,
                            format!("hostname {name:?} is not a domain name"),
                            "write this server's fully qualified name, e.g. hostname = \"mx.example.org\"",
                        ));
                    }
                }
            }
            None => "localhost".to_string(),
        };

        let (data_dir, data_dir_line) = match raw.data_dir {
            Some(d) => {
                let line = at(d.span());
                (d.into_inner(), line)
            }
            None => (PathBuf::from("."), None),
        };
        // Joined, with `.` components dropped (`postern-data/.` is `postern-data`).
        let data_dir: PathBuf = dir.join(data_dir).components().collect();

        let max_message_size = match raw.max_message_size {
            Some(m) if *m.get_ref() < 1024 => {
                return Err(error(
                    at(m.span()),
                    format!(
                        "max_message_size = {} is too small to carry any message",
                        m.get_ref()
                    ),
                    "give the size in bytes, e.g. max_message_size = 52428800 (50 MiB)",
                ));
            }
            Some(m) => m.into_inner(),
            None => DEFAULT_MAX_MESSAGE_SIZE,
        };

        let mut listeners = Vec::new();
        for (role, addrs) in [
            (Role::Smtp, raw.listeners.smtp),
            (Role::Submission, raw.listeners.submission),
            (Role::Submissions, raw.listeners.submissions),
        ] {
            for a in addrs {
                let line = line_of(text, &a.span());
                listeners.push(Listener {
                    role,
                    addr: a.into_inner(),
                    line,
                });
            }
        }
        for (i, l) in listeners.iter().enumerate() {
            if l.addr.port() != 0
                && let Some(first) = listeners[..i].iter().find(|o| o.addr == l.addr)
            {
                return Err(error(
                    Some(l.line),
                    format!("{} is listed twice (also on line {})", l.addr, first.line),
                    "give each address to one role only",
                ));
            }
        }
        if listeners.is_empty() {
            return Err(error(
                None,
                "no listeners: there is nothing to serve".into(),
                "add addresses under [listeners], e.g. smtp = [\"0.0.0.0:25\"]",
            ));
        }

        Ok(Settings {
            dir: dir.to_path_buf(),
            file: file.to_path_buf(),
            hostname,
            data_dir,
            data_dir_line,
            max_message_size,
            listeners,
        })
    }

    /// Where Maildirs live: `<data_dir>/mail`.
    pub fn mail_dir(&self) -> PathBuf {
        self.data_dir.join("mail")
    }

    /// The queue store (a fjall database): `<data_dir>/queue`.
    pub fn queue_dir(&self) -> PathBuf {
        self.data_dir.join("queue")
    }

    /// Where local domains are declared: `<dir>/domains`.
    pub fn domains_dir(&self) -> PathBuf {
        self.dir.join("domains")
    }

    /// Where certificates are: `<dir>/certs`.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// A problem with the data directory, pointing at the `data_dir` line.
    pub fn data_dir_error(&self, message: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.data_dir_line,
            message,
            fix: "make data_dir writable by the user running postern, or set data_dir to another directory".into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        write!(f, ": {}\n  fix: {}", self.message, self.fix)
    }
}

impl std::error::Error for ConfigError {}

/// The 1-based line holding the start of `span`.
fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A fix for a TOML or schema error, from its message.
fn fix_for(message: &str) -> String {
    if message.contains("unknown field") {
        "remove the key or correct its spelling; every key is described in the comments of the default postern.toml".into()
    } else if message.contains("socket address") {
        "write an address with a port, e.g. \"0.0.0.0:25\" or \"[::]:25\"".into()
    } else if message.contains("invalid type") {
        "give the value the type shown in the default postern.toml (strings in quotes, sizes as plain numbers, listeners as lists)".into()
    } else {
        "correct the TOML syntax at that line (https://toml.io)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(Path::new("/c"), Path::new("/c/postern.toml"), text)
    }

    #[test]
    fn the_default_file_parses() {
        let s = parse(crate::init::DEFAULT_CONFIG).expect("default parses");
        assert_eq!(s.hostname, "localhost");
        assert_eq!(s.data_dir, Path::new("/c"));
        assert_eq!(s.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
        let roles: Vec<_> = s
            .listeners
            .iter()
            .map(|l| (l.role, l.addr.to_string()))
            .collect();
        assert_eq!(
            roles,
            [
                (Role::Smtp, "127.0.0.1:2525".to_string()),
                (Role::Submission, "127.0.0.1:2587".to_string()),
                (Role::Submissions, "127.0.0.1:2465".to_string()),
            ]
        );
    }

    #[test]
    fn errors_name_the_line_and_the_fix() {
        let cases = [
            (
                "hostname = \"a\"\nsmtp = [\"127.0.0.1:25\"]\n",
                2,
                "unknown field",
                "spelling",
            ),
            (
                "[listeners]\n\nsmtp = [\"127.0.0.1\"]\n",
                3,
                "socket address",
                "with a port",
            ),
            (
                "hostname = \"not a host\"\n[listeners]\nsmtp = [\"[::1]:25\"]\n",
                1,
                "not a domain",
                "hostname =",
            ),
            ("max_message_size = \"big\"\n", 1, "invalid type", "type"),
            (
                "[listeners]\nsmtp = [\"[::1]:25\"]\nsubmission = [\"[::1]:25\"]\n",
                3,
                "listed twice",
                "one role",
            ),
            ("hostname = [\n", 1, "unclosed array", "TOML syntax"),
        ];
        for (text, line, message, fix) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, Some(line), "input {text:?}: {e}");
            assert!(e.message.contains(message), "input {text:?}: {e}");
            assert!(e.fix.contains(fix), "input {text:?}: {e}");
            assert!(
                e.to_string().starts_with("/c/postern.toml, line "),
                "input {text:?}: {e}"
            );
        }
    }

    #[test]
    fn no_listener_is_an_error() {
        let e = parse("hostname = \"mx.example.org\"\n").expect_err("no listeners");
        assert!(e.message.contains("no listeners"), "{e}");
    }
}

//! The test kit (feature `testkit`, for tests only): a whole server started in the test's own
//! process, on a temporary configuration directory, in a few lines.
//!
//! ```no_run
//! # use postern::testkit::TestServer;
//! # use postern::config::Role;
//! let server = TestServer::builder()
//!     .user("alice@example.org", "pw")
//!     .start();
//! let smtp = server.addr(Role::Smtp); // 127.0.0.1, a port the kernel chose
//! // ... talk SMTP to it, then look at server.inbox("example.org", "alice").
//! ```
//!
//! The server gets: `hostname = "localhost"`, every listener on `127.0.0.1:0`, a self-signed
//! certificate for `localhost`, the users asked for (their domains become local domains),
//! the offline DNS ([`OFFLINE_DNS`]: a closed loopback port, so nothing reaches the
//! system's resolver) unless the extra configuration has a `[dns]` table, and whatever
//! [`Builder::config`] adds. It runs [`crate::daemon::serve::serve_with`] on its own thread,
//! steered by a channel instead of signals; dropping the [`TestServer`] stops it and waits for
//! it. Its log lines go to the test's standard error. What only the binary shows (the command
//! line, exit statuses, signals) stays with the end-to-end tests under `tests/`.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Role;
use crate::daemon::serve::{Command, Control, serve_with};
use crate::directory::users::{Address, User, UserDb, hash_password};

/// A `[dns]` table whose name server is a closed loopback port: every lookup fails at once as
/// a temporary error, and nothing reaches the system's resolver (the checks on the smtp
/// listeners look up SPF and DMARC records).
pub const OFFLINE_DNS: &str = "[dns]\nnameservers = [\"127.0.0.1:9\"]\n";

/// `config` with [`OFFLINE_DNS`] added when it has no `[dns]` table.
pub fn with_offline_dns(config: &str) -> String {
    if config.contains("[dns]") {
        config.to_string()
    } else {
        format!("{config}\n{OFFLINE_DNS}")
    }
}

/// The messages in the Maildir `new/` of `user@domain` under the configuration directory
/// `root` (with `data_dir = "data"`), oldest name first.
pub fn maildir_messages(root: &Path, domain: &str, user: &str) -> Vec<String> {
    let new = root.join("data/mail").join(domain).join(user).join("new");
    let mut names: Vec<PathBuf> = fs::read_dir(&new)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|p| fs::read_to_string(p).expect("read a delivered message"))
        .collect()
}

/// How to set a [`TestServer`] up.
#[derive(Debug, Default)]
pub struct Builder {
    users: Vec<(String, String)>,
    config: String,
}

impl Builder {
    /// A user `address` with `password` (its domain becomes a local domain).
    pub fn user(mut self, address: &str, password: &str) -> Builder {
        self.users.push((address.to_string(), password.to_string()));
        self
    }

    /// Top-level keys and tables added to `postern.toml` (before `[listeners]`).
    pub fn config(mut self, text: &str) -> Builder {
        self.config.push_str(text);
        self.config.push('\n');
        self
    }

    /// Writes the configuration directory and starts the server; returns once it listens.
    /// Panics (the test fails) when it cannot start, with the reason.
    pub fn start(self) -> TestServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path();
        fs::write(
            root.join("postern.toml"),
            format!(
                "hostname = \"localhost\"\ndata_dir = \"data\"\n{}\n\
                 [listeners]\nsmtp = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]\n\
                 submissions = [\"127.0.0.1:0\"]\n",
                with_offline_dns(&self.config)
            ),
        )
        .expect("write postern.toml");
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a self-signed certificate");
        let certs = root.join("certs/localhost");
        fs::create_dir_all(&certs).expect("mkdir certs");
        fs::write(certs.join("fullchain.pem"), pair.cert.pem()).expect("write certificate");
        fs::write(certs.join("privkey.pem"), pair.signing_key.serialize_pem()).expect("write key");
        let users = UserDb::new(root.join("domains"));
        for (address, password) in &self.users {
            let address = Address::parse(address).expect("a user address");
            fs::create_dir_all(root.join("domains").join(address.domain())).expect("mkdir domain");
            let user = User {
                address,
                password: Some(hash_password(password).expect("hash")),
                receive_only: false,
            };
            users.add(user).expect("add the user");
        }

        let (commands, control) = async_channel::unbounded();
        let (bound_tx, bound_rx) = async_channel::bounded(1);
        let config_dir: PathBuf = root.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("postern-testkit".into())
            .spawn(move || {
                serve_with(&config_dir, Control::Channel(control), Some(bound_tx))
                    .map_err(|e| e.to_string())
            })
            .expect("spawn the server thread");
        let addrs = match bound_rx.recv_blocking() {
            Ok(addrs) => addrs,
            Err(_) => {
                let why = match thread.join() {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => "it stopped at once".to_string(),
                    Err(_) => "it panicked".to_string(),
                };
                panic!("the test server did not start: {why}");
            }
        };
        TestServer {
            dir,
            addrs,
            commands,
            thread: Some(thread),
        }
    }
}

/// A server running in this process; stopped when dropped.
#[derive(Debug)]
pub struct TestServer {
    dir: tempfile::TempDir,
    addrs: Vec<(Role, SocketAddr)>,
    commands: async_channel::Sender<Command>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl TestServer {
    /// How to set one up.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The address of the listener for `role`.
    pub fn addr(&self, role: Role) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {} listener", role.name()))
    }

    /// The configuration directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Reads the configuration again, as SIGHUP does; returns once the reload has run (taken
    /// or refused).
    pub fn reload(&self) {
        let (done, ran) = async_channel::bounded(1);
        self.commands
            .send_blocking(Command::Reload(Some(done)))
            .expect("the server is running");
        ran.recv_blocking().expect("the reload ran");
    }

    /// The messages in `user@domain`'s Maildir `new/`, oldest name first.
    pub fn inbox(&self, domain: &str, user: &str) -> Vec<String> {
        maildir_messages(self.dir(), domain, user)
    }

    /// Waits (at most `secs`) until `user@domain` has `n` messages, and returns them.
    pub fn wait_inbox(&self, domain: &str, user: &str, n: usize, secs: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let inbox = self.inbox(domain, user);
            if inbox.len() >= n {
                return inbox;
            }
            assert!(
                Instant::now() < deadline,
                "{user}@{domain}: {} of {n} messages after {secs} s",
                inbox.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server and waits for it: what it returned.
    pub fn stop(mut self) -> Result<(), String> {
        self.halt()
    }

    fn halt(&mut self) -> Result<(), String> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.commands.send_blocking(Command::Stop);
        thread
            .join()
            .unwrap_or_else(|_| Err("the server thread panicked".into()))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// A plain-text SMTP client for tests: one line out, one reply in (its last line returned,
/// all lines kept in [`Client::transcript`]).
#[derive(Debug)]
pub struct Client {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
    /// Everything read so far.
    pub transcript: Vec<String>,
}

impl Client {
    /// Connects to `addr` and reads the greeting.
    pub fn connect(addr: SocketAddr) -> (Client, String) {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let writer = stream.try_clone().expect("clone");
        let mut client = Client {
            reader: std::io::BufReader::new(stream),
            writer,
            transcript: Vec::new(),
        };
        let greeting = client.reply();
        (client, greeting)
    }

    /// Sends `line` (CRLF added) and returns the reply's last line.
    pub fn send(&mut self, line: &str) -> String {
        use std::io::Write;
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        self.reply()
    }

    /// Sends `bytes` as they are (no CRLF added, no reply read).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.writer.write_all(bytes).expect("write");
    }

    /// Reads one reply (every line of a multi-line one); returns its last line.
    pub fn reply(&mut self) -> String {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read a reply");
            assert!(n > 0, "connection closed; so far: {:?}", self.transcript);
            let line = line.trim_end().to_string();
            self.transcript.push(line.clone());
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }
}

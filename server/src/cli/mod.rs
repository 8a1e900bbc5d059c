#![allow(rustdoc::invalid_html_tags)] // the `<domain>`s are argh's help text, shown as written
//! The command line: `postern [-C DIR] <subcommand>`.
//!
//! Every subcommand finds its configuration directory the same way: `-C DIR` if given, else
//! `/etc/postern` if it exists, else `./postern-data`.

pub mod alias;
pub mod config;
pub mod dkim;
pub mod doctor;
pub mod init;
pub mod queue;
pub mod reports;
pub mod send_test;
pub mod tls;
pub mod user;

use std::path::{Path, PathBuf};

use argh::FromArgs;

use crate::mailauth::dkim::KeyAlgorithm;

/// The system-wide configuration directory, used when it exists.
const SYSTEM_DIR: &str = crate::config::SYSTEM_CONFIG_DIR;
/// The directory used when neither `-C` nor the system directory is there.
const LOCAL_DIR: &str = "postern-data";

/// postern: a small, careful SMTP server for your own domains.
#[derive(Debug, FromArgs)]
pub struct Cli {
    /// configuration directory (default: /etc/postern if it exists, else ./postern-data)
    #[argh(option, short = 'C')]
    pub config_dir: Option<PathBuf>,

    #[argh(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, FromArgs)]
#[argh(subcommand)]
pub enum Command {
    /// Run the SMTP server.
    Serve(Serve),
    /// Manage the users of the local domains.
    User(User),
    /// Inspect the aliases of the local domains.
    Alias(Alias),
    /// DKIM keys, records and signatures.
    Dkim(Dkim),
    /// The queue: what startup recovered from a damaged store.
    Queue(Queue),
    /// The TLS levels remembered per recipient domain.
    Tls(Tls),
    /// Check the configuration directory.
    Config(Config),
    /// Set up a configuration directory for a real domain.
    Init(Init),
    /// Check the DNS records of the local domains.
    Doctor(Doctor),
    /// The running server's state.
    Status(Status),
    /// Send a test message through the running server and follow it.
    SendTest(SendTest),
    /// The DMARC and TLS reports received about the local domains.
    Reports(Reports),
}

/// the DMARC aggregate and TLS reports received at [reports] addresses: per reporting
/// organisation and source address, what passed and what failed, and why
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "reports")]
pub struct Reports {
    /// only reports about this domain
    #[argh(positional)]
    pub domain: Option<String>,
    /// only reports received in this span: 7d, 24h, 30m or seconds (default 7d)
    #[argh(option, default = "String::from(\"7d\")")]
    pub since: String,
    /// print JSON
    #[argh(switch)]
    pub json: bool,
    /// do not look up the sources' reverse names
    #[argh(switch)]
    pub no_dns: bool,
}

/// send a test message through the running server's submission port (AUTH as --from) and
/// follow it in the queue until it is delivered or bounced
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "send-test")]
pub struct SendTest {
    /// the sender: a user of this server (logs in as it)
    #[argh(option)]
    pub from: String,
    /// a recipient (repeat for more)
    #[argh(option)]
    pub to: Vec<String>,
    /// read the password from the first line of standard input
    #[argh(switch)]
    pub password_stdin: bool,
    /// how long to follow the message, in seconds (default 120)
    #[argh(option, default = "120")]
    pub wait: u64,
    /// once a copy is delivered into a local Maildir, check it as a receiver would (SPF for
    /// this server's address, DKIM, DMARC, through the server's resolver) and print the
    /// Authentication-Results it would add; exit 1 when DMARC would not pass
    #[argh(switch)]
    pub check_auth: bool,
    /// the server's public address for --check-auth's SPF (repeat for more; default: the
    /// hostname's A and AAAA records)
    #[argh(option)]
    pub ip: Vec<std::net::IpAddr>,
}

/// the running server: uptime, listeners, open sessions, queue size (through its control
/// socket)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "status")]
pub struct Status {
    /// print it as JSON
    #[argh(switch)]
    pub json: bool,
}

/// run the SMTP server on the configured listeners (creates the default configuration on
/// first run)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "serve")]
pub struct Serve {}

/// manage users (domains/<domain>/users): add, remove, list, passwd, check
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "user")]
pub struct User {
    #[argh(subcommand)]
    pub command: UserCommand,
}

/// A user command.
#[derive(Debug, FromArgs)]
#[argh(subcommand)]
pub enum UserCommand {
    /// Add a user.
    Add(UserAdd),
    /// Remove a user.
    Remove(UserRemove),
    /// List users.
    List(UserList),
    /// Change a password.
    Passwd(UserPasswd),
    /// Check a password.
    Check(UserCheck),
}

/// add a user; the password is asked on the terminal (twice, without echo) unless
/// --password-stdin or --receive-only
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "add")]
pub struct UserAdd {
    /// the user's address, user@domain; domains/<domain>/ must exist
    #[argh(positional)]
    pub address: String,
    /// a mailbox that receives mail but cannot log in or send (no password)
    #[argh(switch)]
    pub receive_only: bool,
    /// read the password from the first line of standard input
    #[argh(switch)]
    pub password_stdin: bool,
}

/// remove a user (the Maildir is kept)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "remove")]
pub struct UserRemove {
    /// the user's address
    #[argh(positional)]
    pub address: String,
}

/// list the users of one local domain, or of all of them
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "list")]
pub struct UserList {
    /// only this domain
    #[argh(positional)]
    pub domain: Option<String>,
}

/// set a user's password (asked on the terminal twice, without echo, unless --password-stdin)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "passwd")]
pub struct UserPasswd {
    /// the user's address
    #[argh(positional)]
    pub address: String,
    /// read the password from the first line of standard input
    #[argh(switch)]
    pub password_stdin: bool,
}

/// check a user's password: exit status 0 if it is right, 1 otherwise
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "check")]
pub struct UserCheck {
    /// the user's address
    #[argh(positional)]
    pub address: String,
    /// read the password from the first line of standard input
    #[argh(switch)]
    pub password_stdin: bool,
}

/// inspect aliases (domains/<domain>/aliases)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "alias")]
pub struct Alias {
    #[argh(subcommand)]
    pub command: AliasCommand,
}

/// An alias command.
#[derive(Debug, FromArgs)]
#[argh(subcommand)]
pub enum AliasCommand {
    /// Resolve an address.
    Resolve(AliasResolve),
}

/// print where a message to ADDRESS would go, and why: each destination, then the steps
/// that lead to it. Exit status 0 if it can be delivered somewhere, 1 otherwise.
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "resolve")]
pub struct AliasResolve {
    /// the address, user@domain
    #[argh(positional)]
    pub address: String,
    /// characters removed from the local part before lookup (default: the aliases table of
    /// postern.toml, else ".")
    #[argh(option)]
    pub drop_characters: Option<String>,
    /// characters that start a suffix, removed with the rest of the local part (default:
    /// the aliases table of postern.toml, else "+")
    #[argh(option)]
    pub suffix_separators: Option<String>,
}

/// the queue: what is queued now (list), what startup recovered from a damaged queue store
/// (recovery)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "queue")]
pub struct Queue {
    #[argh(subcommand)]
    pub command: QueueCommand,
}

/// A queue command.
#[derive(Debug, FromArgs)]
#[argh(subcommand)]
pub enum QueueCommand {
    /// Past recoveries of the queue store.
    Recovery(QueueRecovery),
    /// What is queued now.
    List(QueueList),
    /// Deliver now.
    Retry(QueueRetry),
    /// One message in full.
    Show(QueueShow),
    /// Take a message out of the queue.
    Remove(QueueRemove),
    /// Keep a message from being delivered.
    Hold(QueueHold),
    /// Let a held message go.
    Release(QueueRelease),
}

/// hold a message: no delivery attempt until it is released (asks the running server)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "hold")]
pub struct QueueHold {
    /// the queue id
    #[argh(positional)]
    pub id: String,
}

/// release a held message: it is delivered now (asks the running server)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "release")]
pub struct QueueRelease {
    /// the queue id
    #[argh(positional)]
    pub id: String,
}

/// show one queued message: its envelope, each recipient's state and its header section as
/// it will go out (asks the running server)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "show")]
pub struct QueueShow {
    /// the queue id
    #[argh(positional)]
    pub id: String,
}

/// take a message out of the queue: its pending recipients fail and the sender gets a DSN
/// (unless --silent) (asks the running server)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "remove")]
pub struct QueueRemove {
    /// the queue id
    #[argh(positional)]
    pub id: String,
    /// remove it without telling the sender
    #[argh(switch)]
    pub silent: bool,
}

/// make pending recipients due now and deliver them: one message (ID), --all, or those of
/// --domain D (asks the running server)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "retry")]
pub struct QueueRetry {
    /// the queue id
    #[argh(positional)]
    pub id: Option<String>,
    /// every queued message
    #[argh(switch)]
    pub all: bool,
    /// the recipients in this domain
    #[argh(option)]
    pub domain: Option<String>,
}

/// list the messages queued now, oldest first, with each recipient's state, attempts, next
/// attempt and last error (asks the running server, through its control socket)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "list")]
pub struct QueueList {
    /// print the list as JSON
    #[argh(switch)]
    pub json: bool,
}

/// list the queue recoveries: when, how many messages were recovered and lost (with their
/// ids), where the damaged store was moved; reads the reports in data_dir, never the store
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "recovery")]
pub struct QueueRecovery {}

/// check, through the configured DNS resolvers, what the world sees of this server: MX, the hostname's addresses,
/// PTR (FCrDNS), SPF, DKIM, DMARC, TLS-RPT, MTA-STS, the certificate; each finding ok,
/// warning or error with the record to publish; exit status 1 on an error
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "doctor")]
pub struct Doctor {
    /// only this local domain
    #[argh(positional)]
    pub domain: Option<String>,
    /// this server's public address (repeat for IPv4 and IPv6; default: the smtp listeners'
    /// own addresses when they are not wildcards)
    #[argh(option)]
    pub ip: Vec<std::net::IpAddr>,
    /// print the findings as JSON
    #[argh(switch)]
    pub json: bool,
}

/// set up the configuration directory (-C, e.g. /etc/postern) for DOMAIN on a real server:
/// postern.toml with the standard ports on every address, domains/DOMAIN/, an RSA and an
/// Ed25519 DKIM key, a .gitignore; then print every DNS record to publish
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "init")]
pub struct Init {
    /// the mail domain, e.g. example.org
    #[argh(positional)]
    pub domain: String,
    /// this server's name (its MX host; default: mx.DOMAIN)
    #[argh(option)]
    pub hostname: Option<String>,
    /// this server's public IPv4 address, for the A record and the PTR to ask for
    #[argh(option)]
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// this server's public IPv6 address, for the AAAA record and the PTR to ask for
    #[argh(option)]
    pub ipv6: Option<std::net::Ipv6Addr>,
}

/// the configuration directory: check it (postern.toml, every domain's users, aliases and
/// DKIM keys, the certificates) without starting anything
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "config")]
pub struct Config {
    #[argh(subcommand)]
    pub command: ConfigCommand,
}

/// A config command.
#[derive(Debug, FromArgs)]
#[argh(subcommand)]
pub enum ConfigCommand {
    /// Check everything serve reads.
    Check(ConfigCheck),
    /// Print the configuration as serve reads it.
    Show(ConfigShow),
}

/// read everything `serve` reads at startup and report every problem with its file and line;
/// exit status 0 when serve would start, 1 when not
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "check")]
pub struct ConfigCheck {
    /// take the read and write rights of other users off the secret files (users files,
    /// DKIM and TLS private keys), as after a git clone
    #[argh(switch)]
    pub fix_modes: bool,
}

/// print postern.toml as serve reads it: every key with its value, the defaults marked
/// `# default`, data_dir resolved; the output is itself a valid postern.toml and holds no
/// password
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "show")]
pub struct ConfigShow {}

/// the TLS level each recipient domain has shown (data_dir/tls-domains), which outbound
/// delivery never goes below: list it, or forget a domain that really lost its TLS
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "tls")]
pub struct Tls {
    #[argh(subcommand)]
    pub command: TlsCommand,
}

/// A tls command.
#[derive(Debug, FromArgs)]
#[argh(subcommand)]
pub enum TlsCommand {
    /// List the remembered levels.
    List(TlsList),
    /// Forget a domain's level.
    Forget(TlsForget),
}

/// list each remembered domain and its level (plaintext, tls, verified)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "list")]
pub struct TlsList {}

/// forget DOMAIN's level: the next delivery uses whatever TLS the domain offers (the running
/// server follows within a second)
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "forget")]
pub struct TlsForget {
    /// the recipient domain
    #[argh(positional)]
    pub domain: String,
}

/// DKIM: make keys (keygen), print their DNS records (dns), sign or verify a message by hand
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "dkim")]
pub struct Dkim {
    #[argh(subcommand)]
    pub command: DkimCommand,
}

/// A DKIM command.
#[derive(Debug, FromArgs)]
#[argh(subcommand)]
pub enum DkimCommand {
    /// Generate a key.
    Keygen(DkimKeygen),
    /// Print the DNS records of a domain's keys.
    Dns(DkimDns),
    /// Sign a message.
    Sign(DkimSign),
    /// Verify a message's signatures.
    Verify(DkimVerify),
}

/// generate a signing key for a local domain in domains/DOMAIN/dkim/SELECTOR.pem (mode 0600,
/// never overwriting one) and print the DNS record to publish
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "keygen")]
pub struct DkimKeygen {
    /// the local domain; domains/DOMAIN/ must exist
    #[argh(positional)]
    pub domain: String,
    /// the selector (default: rsa-YYYYMM or ed-YYYYMM, this month)
    #[argh(option)]
    pub selector: Option<String>,
    /// the key type: rsa2048 (default: every verifier knows it), rsa3072 or ed25519
    #[argh(option, default = "KeyAlgorithm::Rsa2048")]
    pub algo: KeyAlgorithm,
}

/// print the DNS records (zone-file lines) of every key of a local domain
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "dns")]
pub struct DkimDns {
    /// the local domain
    #[argh(positional)]
    pub domain: String,
}

/// sign a message file with every key of its From domain (or --domain) and print it, the
/// signatures at the top, on standard output
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "sign")]
pub struct DkimSign {
    /// the message (LF line ends are read as CRLF)
    #[argh(positional)]
    pub file: PathBuf,
    /// sign for this local domain instead of the From address's
    #[argh(option)]
    pub domain: Option<String>,
}

/// verify the DKIM signatures of a message file, asking the nameservers of postern.toml's
/// dns table (else those of /etc/resolv.conf); exit status 0 only if there is at least one
/// signature and all pass
#[derive(Debug, FromArgs)]
#[argh(subcommand, name = "verify")]
pub struct DkimVerify {
    /// the message (LF line ends are read as CRLF)
    #[argh(positional)]
    pub file: PathBuf,
}

impl Cli {
    /// The configuration directory this invocation uses.
    pub fn config_dir(&self) -> PathBuf {
        match &self.config_dir {
            Some(dir) => dir.clone(),
            None if Path::new(SYSTEM_DIR).is_dir() => PathBuf::from(SYSTEM_DIR),
            None => PathBuf::from(LOCAL_DIR),
        }
    }
}

/// postern.toml of `dir` as the server reads it, or the defaults when there is no file (a
/// command such as `user add` works in a directory that has only `domains/`).
pub fn settings_or_defaults(
    dir: &Path,
) -> Result<crate::config::Settings, crate::config::ConfigError> {
    use crate::config::{FILE_NAME, Settings};
    let file = dir.join(FILE_NAME);
    match Settings::load(dir) {
        // The defaults (a listener only because a configuration must have one).
        Err(_) if !file.exists() => {
            Settings::parse(dir, &file, "[listeners]\nsmtp = [\"127.0.0.1:25\"]\n")
        }
        read => read,
    }
}
